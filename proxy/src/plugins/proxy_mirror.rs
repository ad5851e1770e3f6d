//! `proxy-mirror`: sends a copy of sampled requests to another server and
//! drops its answers, as APISIX's plugin of that name.
//!
//! `host` is `http://<ip>[:port]`; the copy goes there in plaintext
//! HTTP/1.1 with the original's method, headers and body, and a path from
//! `path` and `path_concat_mode` (`replace`: `path` instead of the
//! original's; `prefix`: `path` before it; the query is kept either way).
//! `sample_ratio` (0.00001 to 1) of the requests are mirrored, counted
//! exactly: of every 100000 requests, `sample_ratio * 100000` are.
//!
//! The plugin only says where a copy goes (`rewrite`); the outbound HTTP
//! path sends it with the route-filter mirrors' machinery: after the
//! request phases, from a bounded copy of the body (a body over the cap is
//! not mirrored), in a task of its own with a timeout, so the mirror never
//! delays or fails the main request. Inbound it does nothing. Hostnames
//! and `https` are refused at load: the proxy does not resolve names for
//! mirrors.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::request;
use http::uri::{PathAndQuery, Uri};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{parse, Ctx, Descriptor, Env, Fault, Flow, Plugin};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("proxy-mirror", 1010, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// `http://<ip>[:port]`, the server the copies go to.
    host: String,
    /// The copy's path (`/shadow`); unset, the original's.
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    path_concat_mode: ConcatMode,
    /// The share of requests mirrored, 0.00001 to 1.
    #[serde(default = "default_ratio")]
    #[schemars(range(min = 0.00001, max = 1))]
    sample_ratio: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum ConcatMode {
    /// `path` instead of the original path.
    #[default]
    Replace,
    /// `path` followed by the original path.
    Prefix,
}

fn default_ratio() -> f64 {
    1.0
}

/// Sampling counts in parts of this.
const PARTS: u64 = 100_000;

/// Where one route's copies go, and which requests are copied.
#[derive(Debug)]
pub(crate) struct MirrorTarget {
    addr: SocketAddr,
    path: Option<String>,
    mode: ConcatMode,
    /// Requests mirrored per [`PARTS`].
    parts: u64,
    /// Requests seen, for the sampler.
    seen: AtomicU64,
}

impl MirrorTarget {
    /// The server the copies go to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether to mirror the next request: exactly `parts` of every
    /// [`PARTS`], spread evenly.
    pub(crate) fn sample(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) % PARTS;
        (n + 1) * self.parts / PARTS > n * self.parts / PARTS
    }

    /// The copy's URI for a request to `original`.
    pub(crate) fn uri(&self, original: &Uri) -> Uri {
        let Some(path) = &self.path else {
            return original.clone();
        };
        let mut text = match self.mode {
            ConcatMode::Replace => path.clone(),
            ConcatMode::Prefix => format!("{}{}", path.trim_end_matches('/'), original.path()),
        };
        if let Some(query) = original.query() {
            text.push('?');
            text.push_str(query);
        }
        text.parse::<PathAndQuery>()
            .map(Uri::from)
            .unwrap_or_else(|_| original.clone())
    }
}

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    Ok(Arc::new(ProxyMirror(Arc::new(build(parse(value)?)?))))
}

fn build(config: Config) -> Result<MirrorTarget, Fault> {
    let addr = mirror_addr(&config.host).ok_or_else(|| {
        Fault::new(
            "host",
            format!(
                "{:?} is not http://<ip>[:port] (no path; hostnames and https are not supported)",
                config.host
            ),
        )
    })?;
    if let Some(path) = &config.path {
        let valid = path.starts_with('/')
            && path.len() <= 2048
            && !path.contains(['?', '&', '#'])
            && path.parse::<PathAndQuery>().is_ok();
        if !valid {
            return Err(Fault::new(
                "path",
                format!("{path:?} is not a path (starts with /, no query)"),
            ));
        }
    }
    if !(0.00001..=1.0).contains(&config.sample_ratio) {
        return Err(Fault::new(
            "sample_ratio",
            format!("{} is out of range: 0.00001 to 1", config.sample_ratio),
        ));
    }
    // Rounded to whole parts; at least one, as the range says.
    let parts = ((config.sample_ratio * PARTS as f64).round() as u64).clamp(1, PARTS);
    Ok(MirrorTarget {
        addr,
        path: config.path,
        mode: config.path_concat_mode,
        parts,
        seen: AtomicU64::new(0),
    })
}

/// `http://10.0.0.5:8080` or `http://[fd00::5]` as an address.
fn mirror_addr(host: &str) -> Option<SocketAddr> {
    let authority = host.strip_prefix("http://")?;
    if authority.contains(['/', '?', '#', '@']) {
        return None;
    }
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip = authority
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(authority);
    ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 80))
}

#[derive(Debug)]
struct ProxyMirror(Arc<MirrorTarget>);

impl Plugin for ProxyMirror {
    fn rewrite(&self, ctx: &mut Ctx<'_>, _req: &mut request::Parts) -> Flow {
        ctx.mirror = Some(self.0.clone());
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::assert_faults;
    use super::*;

    fn target(config: serde_json::Value) -> MirrorTarget {
        build(parse(&config).expect("parses")).expect("builds")
    }

    #[test]
    fn hosts_and_paths_make_the_copys_address_and_uri() {
        let t = target(serde_json::json!({"host": "http://10.0.0.9:9797", "path": "/shadow"}));
        assert_eq!(t.addr(), "10.0.0.9:9797".parse().unwrap());
        let original: Uri = "/orders/7?x=1".parse().unwrap();
        assert_eq!(t.uri(&original), "/shadow?x=1");
        let t = target(
            serde_json::json!({"host": "http://[fd00::9]", "path": "/shadow/", "path_concat_mode": "prefix"}),
        );
        assert_eq!(t.addr(), "[fd00::9]:80".parse().unwrap());
        assert_eq!(t.uri(&original), "/shadow/orders/7?x=1");
        let t = target(serde_json::json!({"host": "http://10.0.0.9"}));
        assert_eq!(t.addr(), "10.0.0.9:80".parse().unwrap());
        assert_eq!(t.uri(&original), "/orders/7?x=1", "no path: the original");
    }

    #[test]
    fn the_sampler_takes_exactly_the_ratio() {
        for (ratio, n, expected) in [
            (1.0, 100, 100),
            (0.5, 100, 50),
            (0.25, 100, 25),
            (0.3, 1000, 300),
        ] {
            let t = target(serde_json::json!({"host": "http://10.0.0.9", "sample_ratio": ratio}));
            let taken = (0..n).filter(|_| t.sample()).count();
            assert_eq!(taken, expected, "{ratio}");
        }
        let t = target(serde_json::json!({"host": "http://10.0.0.9", "sample_ratio": 0.5}));
        let firsts: Vec<bool> = (0..4).map(|_| t.sample()).collect();
        assert_eq!(firsts, [false, true, false, true], "spread evenly");
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (serde_json::json!({}), "", "missing field `host`"),
                (
                    serde_json::json!({"host": "https://10.0.0.1"}),
                    ".host",
                    "not http://<ip>[:port]",
                ),
                (
                    serde_json::json!({"host": "http://shadow.default.svc:80"}),
                    ".host",
                    "hostnames",
                ),
                (
                    serde_json::json!({"host": "http://10.0.0.1:80/path"}),
                    ".host",
                    "no path",
                ),
                (
                    serde_json::json!({"host": "http://10.0.0.1", "path": "shadow"}),
                    ".path",
                    "not a path",
                ),
                (
                    serde_json::json!({"host": "http://10.0.0.1", "path": "/a?b=1"}),
                    ".path",
                    "not a path",
                ),
                (
                    serde_json::json!({"host": "http://10.0.0.1", "path_concat_mode": "append"}),
                    ".path_concat_mode",
                    "unknown variant",
                ),
                (
                    serde_json::json!({"host": "http://10.0.0.1", "sample_ratio": 0}),
                    ".sample_ratio",
                    "out of range",
                ),
                (
                    serde_json::json!({"host": "http://10.0.0.1", "sample_ratio": 1.5}),
                    ".sample_ratio",
                    "out of range",
                ),
            ],
        );
    }
}
