//! Kubernetes resource quantities (`100m`, `128Mi`, `1e3`): enough of their
//! grammar to reject a bad `remora.dev/proxy-*` annotation before the API
//! server does, and to compare a request with its limit.
//!
//! The text given is kept as it is; Kubernetes canonicalises it itself.

use std::fmt;

/// A non-negative quantity: the text as written and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    text: String,
    value: f64,
}

/// Why a quantity was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error("not a Kubernetes quantity; use e.g. 128Mi, 1Gi, 100m or 2")]
    Syntax,
    #[error("a resource quantity cannot be negative")]
    Negative,
}

const SUFFIXES: &[(&str, f64)] = &[
    ("Ki", 1024.0),
    ("Mi", 1_048_576.0),
    ("Gi", 1_073_741_824.0),
    ("Ti", 1_099_511_627_776.0),
    ("Pi", 1_125_899_906_842_624.0),
    ("Ei", 1_152_921_504_606_846_976.0),
    ("n", 1e-9),
    ("u", 1e-6),
    ("m", 1e-3),
    ("", 1.0),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
    ("T", 1e12),
    ("P", 1e15),
    ("E", 1e18),
];

impl Quantity {
    /// Parses `<number><suffix>`: a decimal number, then a binary (Ki..Ei),
    /// decimal (n, u, m, k..E) or exponent (`e3`, `E-2`) suffix.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let text = text.trim();
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(split);
        let digits = number.chars().filter(char::is_ascii_digit).count();
        if digits == 0 || number.matches('.').count() > 1 || number.len() > 32 {
            return Err(QuantityError::Syntax);
        }
        let number: f64 = number.parse().map_err(|_| QuantityError::Syntax)?;
        let multiplier = match SUFFIXES.iter().find(|(s, _)| *s == suffix) {
            Some((_, m)) => *m,
            None => exponent(suffix)?,
        };
        if negative && number != 0.0 {
            return Err(QuantityError::Negative);
        }
        Ok(Quantity {
            text: text.to_owned(),
            value: number * multiplier,
        })
    }

    /// The value in base units (cores, bytes).
    pub fn value(&self) -> f64 {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// `e<int>` or `E<int>`, within what Kubernetes can store.
fn exponent(suffix: &str) -> Result<f64, QuantityError> {
    let digits = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))
        .ok_or(QuantityError::Syntax)?;
    let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
    if unsigned.is_empty() || unsigned.len() > 2 || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::Syntax);
    }
    let exp: i32 = digits.parse().map_err(|_| QuantityError::Syntax)?;
    Ok(10f64.powi(exp))
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let cases = [
            ("100m", 0.1),
            ("2", 2.0),
            ("1.5", 1.5),
            (".5", 0.5),
            ("128Mi", 134_217_728.0),
            ("1Gi", 1_073_741_824.0),
            ("1G", 1e9),
            ("1e3", 1000.0),
            ("5E-1", 0.5),
            ("+1k", 1000.0),
            ("0", 0.0),
        ];
        for (text, value) in cases {
            let q = Quantity::parse(text).expect(text);
            assert!((q.value() - value).abs() < 1e-9, "{text}: {}", q.value());
            assert_eq!(q.as_str(), text);
        }
    }

    #[test]
    fn refused() {
        for text in [
            "", "lots", "1.2.3", "Mi", "1MB", "1 Mi", "1e", "1e999", "1ki", ".",
        ] {
            assert_eq!(Quantity::parse(text), Err(QuantityError::Syntax), "{text}");
        }
        assert_eq!(Quantity::parse("-1"), Err(QuantityError::Negative));
    }
}
