//! Gateway API durations (GEP-2257): parsing, formatting, serde and schema.
//!
//! Every duration in the mesh config is written the way Gateway API writes
//! `timeouts.request`: one to four components, each one to five decimal
//! digits followed by `h`, `m`, `s` or `ms` (`"500ms"`, `"10s"`, `"1h30m"`).
//! Components add up, as Go's `time.ParseDuration` adds them. This module
//! owns that format and nothing else; which durations are allowed where is
//! `validate`'s business.
//!
//! Fields hold a plain [`std::time::Duration`]; the proxy never re-parses.

use std::borrow::Cow;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

/// The largest duration GEP-2257 can write: `99999h59m59s999ms`.
pub const MAX_DURATION: Duration = Duration::from_millis(99_999 * 3_600_000 + 3_599_999);

/// The regular expression GEP-2257 gives for the format.
const PATTERN: &str = "^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// Why a string is not a Gateway API duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a Gateway API duration: write 1 to 4 components such as \"500ms\", \"10s\" or \"1m30s\" (units h, m, s, ms; no spaces, signs or fractions)")]
    Syntax(String),
    #[error("a component of {0:?} has more than 5 digits: use a larger unit")]
    TooManyDigits(String),
    #[error("{0:?} has more than 4 components")]
    TooManyComponents(String),
    #[error("{0:?} is longer than 99999h59m59s999ms, the longest Gateway API duration")]
    TooLong(String),
}

/// Parses a GEP-2257 duration such as `"1m30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(s.to_owned());
    if s.is_empty() {
        return Err(syntax());
    }
    let bytes = s.as_bytes();
    let mut total_ms: u64 = 0;
    let mut components = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() {
            return Err(syntax());
        }
        if digits.len() > 5 {
            return Err(DurationError::TooManyDigits(s.to_owned()));
        }
        let unit_ms: u64 = match (bytes.get(i), bytes.get(i + 1)) {
            (Some(b'm'), Some(b's')) => {
                i += 2;
                1
            }
            (Some(b'h'), _) => {
                i += 1;
                3_600_000
            }
            (Some(b'm'), _) => {
                i += 1;
                60_000
            }
            (Some(b's'), _) => {
                i += 1;
                1_000
            }
            _ => return Err(syntax()),
        };
        components += 1;
        if components > 4 {
            return Err(DurationError::TooManyComponents(s.to_owned()));
        }
        // At most 5 digits, so this cannot fail; keep it total anyway.
        let value: u64 = digits.parse().map_err(|_| syntax())?;
        total_ms += value * unit_ms;
    }
    let total = Duration::from_millis(total_ms);
    // Four components can add up past what one formatted duration can say
    // (`99999h99999m`), and then nothing formats it back.
    if total > MAX_DURATION {
        return Err(DurationError::TooLong(s.to_owned()));
    }
    Ok(total)
}

/// Formats a duration the way GEP-2257 asks: greatest unit first, each unit
/// once, zero as `"0s"`. Sub-millisecond precision is truncated and values
/// above [`MAX_DURATION`] are clamped to it, since neither can be written.
pub fn format_duration(d: Duration) -> String {
    let ms = d.min(MAX_DURATION).as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1_000, rest % 1_000);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if value > 0 {
            out.push_str(&value.to_string());
            out.push_str(unit);
        }
    }
    out
}

/// The JSON Schema of a duration string; fields name it with
/// `#[schemars(with = "GatewayDuration")]`.
#[derive(Debug)]
pub(crate) struct GatewayDuration;

impl JsonSchema for GatewayDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": PATTERN,
            "description": "A Gateway API duration (GEP-2257), e.g. \"500ms\", \"10s\", \"1m30s\".",
        })
    }
}

/// `#[serde(with = "crate::duration::serde_duration")]` for `Duration` fields.
pub(crate) mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "crate::duration::serde_opt_duration")]` for
/// `Option<Duration>` fields (pair it with `#[serde(default)]`).
pub mod serde_opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gep_2257_examples() {
        let cases = [
            ("0s", 0),
            ("500ms", 500),
            ("10s", 10_000),
            ("1h", 3_600_000),
            ("1h5m", 3_900_000),
            ("1h30m30s500ms", 5_430_500),
            ("01h", 3_600_000),
            ("00060m", 3_600_000),
            ("1s1s", 2_000),
        ];
        for (s, ms) in cases {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
    }

    #[test]
    fn rejects_what_gep_2257_rejects() {
        for s in [
            "", "1", "s", "1.5s", "-1s", "1us", "1d", " 1s", "1s ", "1 s", "1S",
        ] {
            assert!(
                matches!(parse_duration(s), Err(DurationError::Syntax(_))),
                "{s:?}"
            );
        }
        assert!(matches!(
            parse_duration("100000ms"),
            Err(DurationError::TooManyDigits(_))
        ));
        assert!(matches!(
            parse_duration("1h1m1s1ms1ms"),
            Err(DurationError::TooManyComponents(_))
        ));
    }

    #[test]
    fn nothing_longer_than_max_duration_parses() {
        assert_eq!(parse_duration("99999h59m59s999ms"), Ok(MAX_DURATION));
        for s in ["99999h60m", "99999h99999m99999s99999ms", "99999h3600s"] {
            assert_eq!(
                parse_duration(s),
                Err(DurationError::TooLong(s.to_owned())),
                "{s}"
            );
        }
    }

    #[test]
    fn formats_greatest_unit_first() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(
            format_duration(Duration::from_millis(5_430_500)),
            "1h30m30s500ms"
        );
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(
            format_duration(Duration::from_secs(u64::MAX)),
            "99999h59m59s999ms"
        );
    }

    #[test]
    fn format_then_parse_is_identity_to_the_millisecond() {
        for ms in [0, 1, 999, 1_000, 59_999, 3_600_001, 86_400_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
