//! `referer-restriction`: allows or refuses requests by the host of their
//! `Referer`, as APISIX's plugin of that name.
//!
//! Exactly one of `whitelist` and `blacklist`; each entry a host, or a
//! wildcard `*.example.com` that matches any host ending in
//! `.example.com`. Hosts compare without case and without port. A request
//! without a `Referer`, or with one that has no host (garbage, a relative
//! URL), is refused unless `bypass_missing`. A refused request gets 403
//! with `{"message": message}`, by default "Your referer host is not
//! allowed". The lists are lowercased and split into exact and suffix
//! tables at config load.

use std::collections::HashSet;
use std::sync::Arc;

use http::{header, request, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{parse, reject, Ctx, Descriptor, Env, Fault, Flow, Plugin};

pub(super) const DESCRIPTOR: Descriptor = Descriptor::new(
    "referer-restriction",
    2990,
    super::schema_of::<Config>,
    compile,
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Hosts (or `*.suffix` wildcards) allowed; every other referer is
    /// refused.
    #[serde(default)]
    whitelist: Option<Vec<String>>,
    /// Hosts (or `*.suffix` wildcards) refused; every other referer passes.
    #[serde(default)]
    blacklist: Option<Vec<String>>,
    /// Let requests without a (usable) `Referer` through.
    #[serde(default)]
    bypass_missing: bool,
    /// 1 to 1024 characters.
    #[serde(default = "default_message")]
    message: String,
}

fn default_message() -> String {
    "Your referer host is not allowed".to_owned()
}

/// The most hosts one list may hold.
const MAX_HOSTS: usize = 4096;

#[derive(Debug)]
struct RefererRestriction {
    exact: HashSet<String>,
    /// `.example.com` for `*.example.com`.
    suffixes: Vec<String>,
    /// Whether the listed hosts are the allowed ones.
    allow: bool,
    bypass_missing: bool,
    message: String,
}

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    Ok(Arc::new(build(parse(value)?)?))
}

fn build(config: Config) -> Result<RefererRestriction, Fault> {
    let (field, list, allow) = match (config.whitelist, config.blacklist) {
        (Some(list), None) => ("whitelist", list, true),
        (None, Some(list)) => ("blacklist", list, false),
        _ => {
            return Err(Fault::new(
                "",
                "needs exactly one of whitelist and blacklist",
            ))
        }
    };
    if list.is_empty() || list.len() > MAX_HOSTS {
        return Err(Fault::new(
            field,
            format!("must list 1 to {MAX_HOSTS} hosts"),
        ));
    }
    let mut exact = HashSet::new();
    let mut suffixes = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let (wild, host) = match entry.strip_prefix('*') {
            Some(rest) => (true, rest),
            None => (false, entry.as_str()),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
        if !valid || (wild && !host.starts_with('.')) {
            return Err(Fault::new(
                &at,
                format!("{entry:?} is not a host or a *.suffix wildcard"),
            ));
        }
        let host = host.to_ascii_lowercase();
        if wild {
            suffixes.push(host);
        } else {
            exact.insert(host);
        }
    }
    if config.message.is_empty() || config.message.len() > 1024 {
        return Err(Fault::new("message", "must be 1 to 1024 characters"));
    }
    Ok(RefererRestriction {
        exact,
        suffixes,
        allow,
        bypass_missing: config.bypass_missing,
        message: config.message,
    })
}

/// The lowercased host of a `Referer` value, without port; `None` when it
/// has none (`/relative`, garbage).
fn referer_host(referer: &str) -> Option<String> {
    let (_, rest) = referer.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        &authority[..v6.find(']')? + 2]
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

impl RefererRestriction {
    /// Whether a request with this `Referer` (if any) may pass.
    fn allows(&self, referer: Option<&[u8]>) -> bool {
        let host = referer
            .and_then(|r| std::str::from_utf8(r).ok())
            .and_then(referer_host);
        let Some(host) = host else {
            return self.bypass_missing;
        };
        let listed =
            self.exact.contains(&host) || self.suffixes.iter().any(|s| host.ends_with(s.as_str()));
        listed == self.allow
    }
}

impl Plugin for RefererRestriction {
    fn access(&self, _ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let referer = req.headers.get(header::REFERER).map(|v| v.as_bytes());
        if self.allows(referer) {
            Flow::Continue
        } else {
            Flow::Respond(reject(StatusCode::FORBIDDEN, &self.message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_faults, body_text, consumers, ctx, env, request};
    use super::*;

    fn restriction(config: serde_json::Value) -> RefererRestriction {
        build(parse(&config).expect("parses")).expect("builds")
    }

    #[test]
    fn hosts_and_wildcards_match_without_case_or_port() {
        let white = restriction(serde_json::json!({"whitelist": ["app.example", "*.Trusted.io"]}));
        for (referer, allowed) in [
            (Some("https://app.example/page"), true),
            (Some("http://APP.example:8443/x?y"), true),
            (Some("https://user:pw@app.example/"), true),
            (Some("https://a.trusted.io"), true),
            (Some("https://a.b.trusted.io/x"), true),
            (Some("https://trusted.io/"), false),
            (Some("https://eviltrusted.io/"), false),
            (Some("https://app.example.evil/"), false),
            (Some("/relative/path"), false),
            (Some("garbage"), false),
            (Some("https:///nohost"), false),
            (None, false),
        ] {
            assert_eq!(
                white.allows(referer.map(str::as_bytes)),
                allowed,
                "{referer:?}"
            );
        }
        assert!(
            !white.allows(Some(b"https://app.example\xff/")),
            "not UTF-8"
        );
        let black = restriction(
            serde_json::json!({"blacklist": ["evil.example", "[::1]"], "bypass_missing": true}),
        );
        assert!(!black.allows(Some(b"http://evil.example/")));
        assert!(!black.allows(Some(b"http://[::1]:80/")));
        assert!(black.allows(Some(b"http://good.example/")));
        assert!(black.allows(None), "bypass_missing");
        assert!(black.allows(Some(b"nonsense")), "no host counts as missing");
    }

    #[test]
    fn a_refused_request_gets_403_and_the_message() {
        let p = compile(
            &serde_json::json!({"whitelist": ["app.example"], "message": "go away"}),
            &env(),
        )
        .expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let mut req = request("/", &[("referer", "https://other.example/")]);
        let Flow::Respond(r) = p.access(&mut ctx, &mut req) else {
            panic!("other.example is not listed")
        };
        assert_eq!(r.status(), 403);
        assert_eq!(body_text(r), "{\"message\":\"go away\"}\n");
        let mut req = request("/", &[("referer", "https://app.example/")]);
        assert!(matches!(p.access(&mut ctx, &mut req), Flow::Continue));
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (serde_json::json!({}), "", "exactly one"),
                (
                    serde_json::json!({"whitelist": ["a"], "blacklist": ["b"]}),
                    "",
                    "exactly one",
                ),
                (
                    serde_json::json!({"whitelist": []}),
                    ".whitelist",
                    "1 to 4096",
                ),
                (
                    serde_json::json!({"blacklist": ["ok.example", "bad host"]}),
                    ".blacklist[1]",
                    "not a host",
                ),
                (
                    serde_json::json!({"whitelist": ["*example.com"]}),
                    ".whitelist[0]",
                    "not a host",
                ),
                (
                    serde_json::json!({"whitelist": ["a"], "message": ""}),
                    ".message",
                    "1 to 1024",
                ),
                (
                    serde_json::json!({"whitelist": ["a"], "bypass_missing": "yes"}),
                    ".bypass_missing",
                    "invalid type",
                ),
            ],
        );
    }
}
