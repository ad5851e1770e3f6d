//! Errors from loading and validating a mesh config.
//!
//! Every error names the path of the field at fault, in the form the config
//! is written (`outbound.services[1].ports[0].routes[2]`, `backends.reviews`),
//! so an operator can find it and a control plane can report it back.

use std::fmt;

/// Why a config was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text does not fit the model: bad YAML or JSON, an unknown field,
    /// a wrong type, or a value that does not parse (a duration, an address).
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    /// The text fits the model, but some values break its rules.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

impl ConfigError {
    pub(crate) fn syntax(path: String, message: String) -> Self {
        Self::Syntax { path, message }
    }

    /// The path of the first offending field, `.` for the whole document.
    pub fn path(&self) -> &str {
        match self {
            Self::Syntax { path, .. } => path,
            Self::Invalid(e) => e.first().path.as_str(),
        }
    }
}

/// One rule broken by one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    /// E.g. `backends.reviews-v2.endpoints[0].weight`.
    pub path: String,
    /// What is wrong and what would be right.
    pub message: String,
}

/// Every rule a config breaks, in document order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    first: FieldError,
    rest: Vec<FieldError>,
}

impl ValidationError {
    /// `None` when there is nothing to report.
    pub(crate) fn from_errors(errors: Vec<FieldError>) -> Option<Self> {
        let mut errors = errors.into_iter();
        let first = errors.next()?;
        Some(Self {
            first,
            rest: errors.collect(),
        })
    }

    /// The first problem found.
    pub fn first(&self) -> &FieldError {
        &self.first
    }

    /// All problems found, first first.
    pub fn errors(&self) -> impl Iterator<Item = &FieldError> {
        std::iter::once(&self.first).chain(&self.rest)
    }

    /// How many problems were found.
    pub fn len(&self) -> usize {
        1 + self.rest.len()
    }

    /// Always false; there for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.first)?;
        for e in &self.rest {
            write!(f, "; {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}
