//! Errors from loading and validating a mesh config.
//!
//! Every error names the path of the field at fault, in the form the config
//! is written (`outbound.services[1].ports[0].routes[2]`, `backends.reviews`),
//! so an operator can find it and a control plane can report it back; a
//! config past a parse limit names the limit instead.

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
    /// The text passes a [`crate::ParseLimits`] limit; it was not read to
    /// the end and nothing was built from it.
    #[error(transparent)]
    Limit(#[from] LimitError),
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
            Self::Limit(_) => ".",
        }
    }
}

/// Which parse limit a config passed. Each message names the limit and its
/// value, so an operator can tell a runaway generator from a limit set too
/// low.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("config is {size} bytes, over the limit of {max} bytes: send only what this proxy needs, or raise the size limit")]
    Size { size: usize, max: usize },
    #[error("config nests deeper than {max} levels: a mesh config needs about 15; look for runaway nesting")]
    Depth { max: usize },
    #[error("config has more than {max} nodes (maps, lists and values, aliases expanded): send only what this proxy needs, or raise the node limit")]
    Nodes { max: usize },
    #[error(
        "config uses more than {max} YAML aliases or anchors: write the values out, or send JSON"
    )]
    Aliases { max: usize },
    #[error("YAML aliases in the config expand to more than {max} nodes: write the values out, or send JSON")]
    AliasExpansion { max: usize },
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
