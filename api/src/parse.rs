//! Bounded parsing: bytes in, a [`MeshConfig`] out, at a cost the caller caps.
//!
//! This module owns the way from text to the model: telling JSON from YAML,
//! the [`ParseLimits`] (size, nesting depth, node count, YAML aliases) and
//! their checks, and turning each parser's errors into a [`ConfigError`]
//! that names the field, or the limit, at fault. Size is checked before any
//! parsing; JSON's depth and node count by one cheap pass over the bytes
//! before serde_json runs; YAML's by serde-saphyr's budget while it reads,
//! so a hostile document stops at the limit rather than at its end. What a
//! parsed config must satisfy beyond its shape is `validate`'s business.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;

use crate::error::{ConfigError, LimitError};
use crate::mesh::MeshConfig;

/// What parsing one config may cost. Each limit, when passed, rejects the
/// config with a [`LimitError`] that names it; nothing is built from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest config, in bytes. Default 16 MiB.
    pub max_bytes: usize,
    /// Deepest nesting of maps and lists. A valid mesh config nests about
    /// 15 deep. Default 64.
    pub max_depth: usize,
    /// Most nodes (maps, lists and values, keys included, YAML aliases
    /// counted as what they expand to). A 10,000-service config has about
    /// 300,000. Default 1,000,000.
    pub max_nodes: usize,
    /// Most YAML aliases (`*name`) and anchors (`&name`). Generated configs
    /// use none. Default 1,000.
    pub max_aliases: usize,
    /// Most nodes that YAML aliases may expand to, all aliases together:
    /// expansion is work the text does not show (a billion laughs). Default
    /// 100,000.
    pub max_alias_nodes: usize,
}

impl ParseLimits {
    /// The defaults, as a constant.
    pub const DEFAULT: Self = Self {
        max_bytes: 16 * 1024 * 1024,
        max_depth: 64,
        max_nodes: 1_000_000,
        max_aliases: 1_000,
        max_alias_nodes: 100_000,
    };
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// JSON if the first byte that is not whitespace is `{`, else YAML.
pub(crate) fn parse(bytes: &[u8], limits: &ParseLimits) -> Result<MeshConfig, ConfigError> {
    check_size(bytes, limits)?;
    let config = if looks_like_json(bytes) {
        json(bytes, limits)?
    } else {
        yaml(bytes, limits)?
    };
    config.validate()?;
    Ok(config)
}

pub(crate) fn check_size(bytes: &[u8], limits: &ParseLimits) -> Result<(), LimitError> {
    if bytes.len() > limits.max_bytes {
        return Err(LimitError::Size {
            size: bytes.len(),
            max: limits.max_bytes,
        });
    }
    Ok(())
}

fn looks_like_json(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

pub(crate) fn json(bytes: &[u8], limits: &ParseLimits) -> Result<MeshConfig, ConfigError> {
    json_shape(bytes, limits)?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let config: MeshConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::syntax(map_path(&path).to_owned(), e.into_inner().to_string())
    })?;
    de.end()
        .map_err(|e| ConfigError::syntax(".".to_owned(), e.to_string()))?;
    Ok(config)
}

/// One pass over JSON text that counts nesting and nodes the way YAML's
/// budget does (every map, list, key and value), without building
/// anything, and stops at the first limit passed. It trusts nothing: text
/// that is not JSON comes out with some count and serde_json rejects it.
fn json_shape(bytes: &[u8], limits: &ParseLimits) -> Result<(), LimitError> {
    let mut depth = 0usize;
    let mut nodes = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    // Inside a number, `true`, `false` or `null`.
    let mut in_bare = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                in_bare = false;
                nodes += 1;
            }
            b'{' | b'[' => {
                in_bare = false;
                nodes += 1;
                depth += 1;
                if depth > limits.max_depth {
                    return Err(LimitError::Depth {
                        max: limits.max_depth,
                    });
                }
            }
            b'}' | b']' => {
                in_bare = false;
                depth = depth.saturating_sub(1);
            }
            b',' | b':' | b' ' | b'\t' | b'\n' | b'\r' => in_bare = false,
            _ if !in_bare => {
                in_bare = true;
                nodes += 1;
            }
            _ => {}
        }
        if nodes > limits.max_nodes {
            return Err(LimitError::Nodes {
                max: limits.max_nodes,
            });
        }
    }
    Ok(())
}

pub(crate) fn yaml(bytes: &[u8], limits: &ParseLimits) -> Result<MeshConfig, ConfigError> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: limits.max_depth,
            // Flow collections (`[[[...`) are counted by the scanner, which
            // runs ahead of the budget; it gets the same depth.
            flow_nesting_limit: limits.max_depth,
            max_nodes: limits.max_nodes,
            // Every node is at most a start and an end event; aliases and
            // the stream and document markers are the rest.
            max_events: limits
                .max_nodes
                .saturating_mul(2)
                .saturating_add(limits.max_aliases)
                .saturating_add(16),
            max_aliases: limits.max_aliases,
            max_anchors: limits.max_aliases,
            max_total_scalar_bytes: limits.max_bytes,
            // Amplification is bounded by max_alias_nodes; a ratio of
            // aliases to anchors would also reject one anchor reused by
            // many services, which is fine.
            enforce_alias_anchor_ratio: false,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: limits.max_alias_nodes,
            max_replay_stack_depth: limits.max_depth,
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        with_snippet: false,
    };
    // serde_path_to_error sees the path; the closure must hand back the
    // parser's own error type, so the path travels beside it.
    let mut path = None;
    let parsed = serde_saphyr::with_deserializer_from_slice_with_options(bytes, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = Some(e.path().to_string());
            e.into_inner()
        })
    });
    parsed.map_err(|e| yaml_error(path.as_deref().unwrap_or("."), &e, limits))
}

/// The innermost error: aliases and snippets wrap the one that happened.
fn original(mut e: &serde_saphyr::Error) -> &serde_saphyr::Error {
    use serde_saphyr::Error as E;
    loop {
        match e {
            E::WithSnippet { error, .. } | E::AliasError { error, .. } => e = error,
            _ => return e,
        }
    }
}

fn yaml_error(path: &str, e: &serde_saphyr::Error, limits: &ParseLimits) -> ConfigError {
    use serde_saphyr::Error as E;
    let at = e
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
        .unwrap_or_default();
    let limit = match original(e) {
        E::Budget { breach, .. } => match breach {
            BudgetBreach::Depth { .. } => Some(LimitError::Depth {
                max: limits.max_depth,
            }),
            BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => Some(LimitError::Nodes {
                max: limits.max_nodes,
            }),
            BudgetBreach::Aliases { .. } | BudgetBreach::Anchors { .. } => {
                Some(LimitError::Aliases {
                    max: limits.max_aliases,
                })
            }
            BudgetBreach::ScalarBytes { .. } | BudgetBreach::InputBytes { .. } => {
                Some(LimitError::Size {
                    size: limits.max_bytes.saturating_add(1),
                    max: limits.max_bytes,
                })
            }
            _ => None,
        },
        E::AliasReplayLimitExceeded { .. } | E::AliasReplayCounterOverflow { .. } => {
            Some(LimitError::AliasExpansion {
                max: limits.max_alias_nodes,
            })
        }
        E::AliasReplayStackDepthExceeded { .. } => Some(LimitError::Depth {
            max: limits.max_depth,
        }),
        E::ExternalMessage { source, .. } => match source.as_ref() {
            serde_saphyr::ExternalMessageSource::Parser(scan)
                if matches!(
                    scan.kind(),
                    serde_saphyr::granit_parser::ErrorKind::RecursionLimitExceeded
                ) =>
            {
                Some(LimitError::Depth {
                    max: limits.max_depth,
                })
            }
            _ => None,
        },
        _ => None,
    };
    if let Some(limit) = limit {
        return limit.into();
    }
    let message = match original(e) {
        E::DuplicateMappingKey { key, .. } => {
            return ConfigError::syntax(
                map_path(path).to_owned(),
                format!(
                    "{}{at}",
                    duplicate_key(key.as_deref().unwrap_or("(a complex key)"))
                ),
            );
        }
        E::InvalidScalar { ty, .. } => format!("{}{at}", expected_scalar(ty)),
        E::InvalidUtf8Input => "the config is not UTF-8 text".to_owned(),
        other => {
            // The parser appends " at line L, column C" itself.
            other.to_string()
        }
    };
    ConfigError::syntax(map_path(path).to_owned(), message)
}

/// serde_path_to_error names a map key it was reading `?`: the error is
/// the map's, so the path is the map's (`.` for the top).
fn map_path(path: &str) -> &str {
    path.strip_suffix(".?")
        .or_else(|| path.strip_suffix('?'))
        .filter(|p| !p.is_empty())
        .unwrap_or(if path == "?" { "." } else { path })
}

/// What a scalar of the named Rust type must look like, for operators.
fn expected_scalar(ty: &str) -> String {
    let range = match ty {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number from 0",
        "floating point" | "f32" | "f64" => "a number such as 0.2",
        "boolean" | "bool" => "true or false",
        _ => return format!("invalid value: expected {ty}"),
    };
    format!("invalid value: must be {range}")
}

/// The message for a key given twice in one map, from either format.
fn duplicate_key(key: &str) -> String {
    format!("{key:?} appears twice: each key and each backend name must be unique")
}

/// `#[serde(deserialize_with = "crate::parse::unique_keys")]` for maps by
/// name: a key given twice is an error, never last-one-wins. YAML's parser
/// catches it first; JSON's leaves it to this.
pub(crate) fn unique_keys<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct UniqueKeys<V>(PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueKeys<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of names")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(duplicate_key(&key)));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }

    d.deserialize_map(UniqueKeys(PhantomData))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Nests 5 deep (top, backends, web, endpoints, the endpoint) and has
    /// 12 nodes (3 maps and a list above, 8 keys and values).
    const SMALL_YAML: &str =
        "version: v1\nbackends: {web: {endpoints: [{address: '10.0.0.1:80'}]}}\n";
    const SMALL_JSON: &str =
        r#"{"version": "v1", "backends": {"web": {"endpoints": [{"address": "10.0.0.1:80"}]}}}"#;

    fn limit(text: &str, limits: &ParseLimits) -> LimitError {
        match MeshConfig::parse(text.as_bytes(), limits) {
            Err(ConfigError::Limit(e)) => e,
            other => panic!("expected a limit error, got {other:?}"),
        }
    }

    fn syntax(text: &str) -> (String, String) {
        match MeshConfig::parse(text.as_bytes(), &ParseLimits::DEFAULT) {
            Err(ConfigError::Syntax { path, message }) => (path, message),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn json_is_told_from_yaml_by_its_first_character() {
        for text in [SMALL_JSON, &format!(" \n\t{SMALL_JSON}"), SMALL_YAML] {
            let config = MeshConfig::parse(text.as_bytes(), &ParseLimits::DEFAULT)
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(config.backends["web"].endpoints.len(), 1);
        }
        let bom = [b"\xef\xbb\xbf".as_slice(), SMALL_JSON.as_bytes()].concat();
        assert!(looks_like_json(&bom));
        // YAML flow style starts with `{` too, and is JSON's superset: it
        // goes to the JSON parser, which says what is wrong.
        let (path, message) = syntax("{version: v1}");
        assert_eq!(path, ".");
        assert!(message.contains("key must be a string"), "{message}");
    }

    #[test]
    fn parse_validates() {
        let text = SMALL_YAML.replace("10.0.0.1:80", "0.0.0.0:80");
        let err = MeshConfig::parse(text.as_bytes(), &ParseLimits::DEFAULT).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
        assert_eq!(err.path(), "backends.web.endpoints[0].address");
    }

    #[test]
    fn size_is_checked_before_parsing() {
        let limits = ParseLimits {
            max_bytes: SMALL_YAML.len() - 1,
            ..ParseLimits::DEFAULT
        };
        let err = limit(SMALL_YAML, &limits);
        assert_eq!(
            err,
            LimitError::Size {
                size: SMALL_YAML.len(),
                max: SMALL_YAML.len() - 1
            }
        );
        let want = format!(
            "config is {} bytes, over the limit of {} bytes",
            SMALL_YAML.len(),
            SMALL_YAML.len() - 1
        );
        assert!(err.to_string().starts_with(&want), "{err}");
        // Exactly at the limit is fine, and so is the same check on JSON.
        let limits = ParseLimits {
            max_bytes: SMALL_YAML.len(),
            ..ParseLimits::DEFAULT
        };
        assert!(MeshConfig::parse(SMALL_YAML.as_bytes(), &limits).is_ok());
        let err = MeshConfig::from_json_slice(&vec![b' '; 16 * 1024 * 1024 + 1]).unwrap_err();
        assert!(
            matches!(err, ConfigError::Limit(LimitError::Size { .. })),
            "{err}"
        );
    }

    /// Both formats count depth and nodes alike, and the limit is the
    /// largest value accepted.
    #[test]
    fn depth_and_nodes_count_alike_in_both_formats() {
        for text in [SMALL_YAML, SMALL_JSON] {
            let exact = ParseLimits {
                max_depth: 5,
                max_nodes: 12,
                ..ParseLimits::DEFAULT
            };
            assert!(MeshConfig::parse(text.as_bytes(), &exact).is_ok(), "{text}");
            let shallow = ParseLimits {
                max_depth: 4,
                ..exact
            };
            assert_eq!(
                limit(text, &shallow),
                LimitError::Depth { max: 4 },
                "{text}"
            );
            let few = ParseLimits {
                max_nodes: 11,
                ..exact
            };
            assert_eq!(limit(text, &few), LimitError::Nodes { max: 11 }, "{text}");
        }
        assert_eq!(
            LimitError::Depth { max: 64 }.to_string(),
            "config nests deeper than 64 levels: a mesh config needs about 15; look for runaway nesting"
        );
        assert!(LimitError::Nodes { max: 1_000_000 }
            .to_string()
            .starts_with("config has more than 1000000 nodes"));
    }

    /// 200 KB of nesting, in every shape YAML and JSON allow, is rejected
    /// in well under a second, not the 35 s serde_yaml took. YAML is read
    /// as a stream, so the first value that cannot fit the model stops it
    /// (before the depth limit, which needs nesting the model would take);
    /// JSON stops at the depth limit, before serde_json starts.
    #[test]
    fn deep_nesting_is_rejected_fast() {
        let n = 100_000;
        let mut block_maps = String::from("version: v1\noutbound:\n");
        let mut level = 1;
        while block_maps.len() < 200_000 {
            block_maps.push_str(&" ".repeat(level));
            block_maps.push_str("a:\n");
            level += 1;
        }
        let shapes = [
            (
                "YAML flow",
                format!("version: v1\nbackends: {}", "[".repeat(2 * n)),
            ),
            (
                "YAML block sequences",
                format!("version: v1\nbackends:\n{}x\n", "- ".repeat(n)),
            ),
            ("YAML block maps", block_maps),
            (
                "JSON",
                format!("{{\"version\": \"v1\", \"backends\": {}", "[".repeat(2 * n)),
            ),
        ];
        for (shape, text) in shapes {
            assert!(text.len() >= 200_000, "{shape}: {} bytes", text.len());
            let start = Instant::now();
            let err = MeshConfig::parse(text.as_bytes(), &ParseLimits::DEFAULT).unwrap_err();
            let took = start.elapsed();
            if shape == "JSON" {
                assert_eq!(err, ConfigError::Limit(LimitError::Depth { max: 64 }));
            } else {
                assert!(
                    matches!(err, ConfigError::Syntax { .. } | ConfigError::Limit(_)),
                    "{shape}: {err}"
                );
            }
            assert!(took < Duration::from_millis(200), "{shape} took {took:?}");
        }
    }

    #[test]
    fn aliases_are_counted() {
        let hostnames = std::iter::once("&h web".to_owned())
            .chain((0..1_000).map(|_| "*h".to_owned()))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "version: v1\noutbound: {{services: [{{name: web, hostnames: [{hostnames}], ports: [{{port: 80}}]}}]}}\n"
        );
        // 1,000 aliases are allowed (and name one host 1,001 times, which
        // validation has its own word on); 1,001 are not.
        assert!(!matches!(
            MeshConfig::parse(text.as_bytes(), &ParseLimits::DEFAULT),
            Err(ConfigError::Limit(_))
        ));
        let text = text.replace("*h]", "*h, *h]");
        let err = limit(&text, &ParseLimits::DEFAULT);
        assert_eq!(err, LimitError::Aliases { max: 1_000 });
        assert_eq!(
            err.to_string(),
            "config uses more than 1000 YAML aliases or anchors: write the values out, or send JSON"
        );
    }

    /// A billion laughs that fits the model: one backend of 1,000 endpoints,
    /// aliased by 999 more backends, would be a million endpoints from 40 KB.
    #[test]
    fn aliases_cannot_amplify() {
        let endpoints = (0..1_000)
            .map(|i| format!("{{address: '10.0.{}.{}:80'}}", i / 250, i % 250 + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = format!("version: v1\nbackends:\n  b0: &big {{endpoints: [{endpoints}]}}\n");
        for i in 1..1_000 {
            text.push_str(&format!("  b{i}: *big\n"));
        }
        let start = Instant::now();
        let err = limit(&text, &ParseLimits::DEFAULT);
        let took = start.elapsed();
        assert_eq!(err, LimitError::AliasExpansion { max: 100_000 });
        assert_eq!(
            err.to_string(),
            "YAML aliases in the config expand to more than 100000 nodes: write the values out, or send JSON"
        );
        // A tenth of a large honest config's work, in debug builds too.
        assert!(took < Duration::from_secs(3), "took {took:?}");
        // The limit is the caller's.
        let limits = ParseLimits {
            max_alias_nodes: 10_000,
            ..ParseLimits::DEFAULT
        };
        assert_eq!(
            limit(&text, &limits),
            LimitError::AliasExpansion { max: 10_000 }
        );
    }

    /// The classic: ten anchors, each ten of the one before. Every field
    /// it can sit in has a type, so it stops at once.
    #[test]
    fn classic_billion_laughs_stops_at_once() {
        let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        let names: Vec<char> = "abcdefghij".chars().collect();
        for pair in names.windows(2) {
            let (prev, name) = (pair[0], pair[1]);
            let refs = vec![format!("*{prev}"); 10].join(", ");
            laughs.push_str(&format!("  {name}: &{name} [{refs}]\n"));
        }
        let text = format!("version: v1\nbackends:\n  {laughs}");
        let start = Instant::now();
        let err = MeshConfig::parse(text.as_bytes(), &ParseLimits::DEFAULT).unwrap_err();
        assert!(took_less_than(start, Duration::from_millis(200)));
        assert!(
            matches!(err, ConfigError::Syntax { .. } | ConfigError::Limit(_)),
            "{err}"
        );
    }

    fn took_less_than(start: Instant, max: Duration) -> bool {
        let took = start.elapsed();
        assert!(took < max, "took {took:?}");
        true
    }

    #[test]
    fn a_key_given_twice_is_an_error_in_both_formats() {
        let yaml =
            "version: v1\nbackends:\n  web: {endpoints: [{address: '10.0.0.1:80'}]}\n  web: {}\n";
        let (path, message) = syntax(yaml);
        assert_eq!(path, "backends");
        assert!(
            message.starts_with(
                "\"web\" appears twice: each key and each backend name must be unique (line 4"
            ),
            "{message}"
        );
        let json = r#"{"version": "v1", "backends": {"web": {"endpoints": [{"address": "10.0.0.1:80"}]}, "web": {}}}"#;
        assert_eq!(
            syntax(json),
            (
                "backends".to_owned(),
                "\"web\" appears twice: each key and each backend name must be unique at line 1 column 88"
                    .to_owned()
            )
        );
        // Fields of a struct too.
        let (path, message) = syntax("version: v1\nversion: v2\n");
        assert_eq!(path, ".");
        assert!(
            message.starts_with("\"version\" appears twice"),
            "{message}"
        );
        let (path, message) = syntax(r#"{"version": "v1", "version": "v2"}"#);
        assert_eq!(path, ".");
        assert!(
            message.starts_with("duplicate field `version`"),
            "{message}"
        );
    }

    #[test]
    fn not_one_utf8_yaml_document() {
        let (path, message) = syntax("version: v1\n---\nversion: v2\n");
        assert_eq!(path, ".");
        assert!(message.contains("multiple YAML documents"), "{message}");
        let err = MeshConfig::parse(b"version: \xff\xfe\n", &ParseLimits::DEFAULT).unwrap_err();
        assert_eq!(err.to_string(), ".: the config is not UTF-8 text");
    }

    #[test]
    fn numbers_out_of_their_type_say_what_fits() {
        let (path, message) = syntax(
            "version: v1\noutbound: {services: [{name: a, hostnames: [a], ports: [{port: 70000}]}]}",
        );
        assert_eq!(path, "outbound.services[0].ports[0].port");
        assert!(
            message.starts_with("invalid value: must be a whole number from 0 to 65535 (line 2"),
            "{message}"
        );
    }
}
