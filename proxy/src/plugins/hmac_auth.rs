//! `hmac-auth`: authenticates a consumer by an HMAC signature over parts of
//! the request, as APISIX's plugin of that name (3.x, after
//! draft-cavage-http-signatures).
//!
//! The client sends `Authorization: Signature keyId="..",algorithm="..",
//! headers="@request-target date",signature="<base64>"`. The signing string
//! is the key id, then one line per listed header in the order listed
//! (`@request-target` is `METHOD /path?query`, any other is `name: value`),
//! each line ending in `\n`. Consumers' `hmac-auth: {key_id, secret_key}` are
//! filed at config load into ready HMAC keys; a request costs one lookup and
//! one HMAC, compared in constant time. The `Date` header must lie within
//! `clock_skew` seconds of the proxy's clock, so a replay that comes too late
//! is refused. Every refusal is APISIX's 401
//! `{"message":"client request can't be validated"}`; the reason is logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use http::{header, request, StatusCode};
use ring::hmac;
use schemars::JsonSchema;
use serde::Deserialize;

use super::anonymous::Anonymous;
use super::{
    in_range, parse, reject, Consumer, Consumers, Ctx, Descriptor, Env, Fault, Flow, Plugin,
};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("hmac-auth", 2530, super::schema_of::<Config>, compile)
        .auth(file_credential, super::schema_of::<Credential>);

/// An HMAC algorithm, by APISIX's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub(crate) enum Algorithm {
    #[serde(rename = "hmac-sha1")]
    Sha1,
    #[serde(rename = "hmac-sha256")]
    Sha256,
    #[serde(rename = "hmac-sha512")]
    Sha512,
}

impl Algorithm {
    const ALL: [Algorithm; 3] = [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512];

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "hmac-sha1" => Some(Algorithm::Sha1),
            "hmac-sha256" => Some(Algorithm::Sha256),
            "hmac-sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    fn ring(self) -> hmac::Algorithm {
        match self {
            Algorithm::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Algorithm::Sha256 => hmac::HMAC_SHA256,
            Algorithm::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The route, service or port side.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The algorithms a client may sign with; default all three.
    #[serde(default = "all_algorithms")]
    allowed_algorithms: Vec<Algorithm>,
    /// Seconds the `Date` header may differ from the proxy's clock, 1 to
    /// 604800.
    #[serde(default = "default_clock_skew")]
    clock_skew: u64,
    /// Headers every signature must cover (names, any case).
    #[serde(default)]
    signed_headers: Vec<String>,
    /// APISIX checks a `Digest` of the body; Remora's `rewrite` runs before
    /// the body is read, so only `false` is accepted.
    #[serde(default)]
    validate_request_body: bool,
    /// Remove `Authorization` before the request goes on.
    #[serde(default)]
    hide_credentials: bool,
    /// The consumer (a `consumers[].username`) a request without a valid
    /// credential runs as; unset, it gets 401.
    #[serde(default)]
    anonymous_consumer: Option<String>,
}

fn all_algorithms() -> Vec<Algorithm> {
    Algorithm::ALL.to_vec()
}

fn default_clock_skew() -> u64 {
    300
}

/// The consumer side: `consumers[].plugins.hmac-auth`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credential {
    /// The `keyId` clients send, unique among consumers; 1 to 256 bytes.
    key_id: String,
    /// The shared secret; 1 to 256 bytes.
    secret_key: String,
}

/// Every consumer's keys by `keyId`, one per algorithm.
pub(crate) type Keys = HashMap<String, (Arc<Consumer>, [hmac::Key; 3])>;

#[derive(Debug)]
struct HmacAuth {
    allowed: [bool; 3],
    clock_skew: Duration,
    /// Lowercase.
    signed_headers: Vec<String>,
    hide_credentials: bool,
    anonymous: Anonymous,
}

fn compile(value: &serde_json::Value, env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    if config.allowed_algorithms.is_empty() {
        return Err(Fault::new("allowed_algorithms", "must name at least one"));
    }
    in_range("clock_skew", config.clock_skew, 1..=604_800)?;
    if config.validate_request_body {
        return Err(Fault::new(
            "validate_request_body",
            "is not supported: the body is not read before authentication",
        ));
    }
    let mut signed_headers = Vec::with_capacity(config.signed_headers.len());
    for (i, name) in config.signed_headers.iter().enumerate() {
        if name.is_empty() || name.len() > 50 {
            return Err(Fault::new(
                &format!("signed_headers[{i}]"),
                "must be 1 to 50 bytes",
            ));
        }
        signed_headers.push(name.to_ascii_lowercase());
    }
    let mut allowed = [false; 3];
    for a in &config.allowed_algorithms {
        allowed[a.index()] = true;
    }
    Ok(Arc::new(HmacAuth {
        allowed,
        clock_skew: Duration::from_secs(config.clock_skew),
        signed_headers,
        hide_credentials: config.hide_credentials,
        anonymous: Anonymous::compile(config.anonymous_consumer, env)?,
    }))
}

fn file_credential(
    value: &serde_json::Value,
    consumer: &Arc<Consumer>,
    consumers: &mut Consumers,
) -> Result<(), Fault> {
    let c: Credential = parse(value)?;
    if c.key_id.is_empty() || c.key_id.len() > 256 {
        return Err(Fault::new("key_id", "must be 1 to 256 bytes"));
    }
    if c.secret_key.is_empty() || c.secret_key.len() > 256 {
        return Err(Fault::new("secret_key", "must be 1 to 256 bytes"));
    }
    if let Some((other, _)) = consumers.hmac.get(&c.key_id) {
        return Err(Fault::new(
            "key_id",
            format!("the same key_id is already consumer {:?}'s", &*other.name),
        ));
    }
    let secret = c.secret_key.as_bytes();
    let keys = Algorithm::ALL.map(|a| hmac::Key::new(a.ring(), secret));
    consumers.hmac.insert(c.key_id, (consumer.clone(), keys));
    Ok(())
}

/// The fields of a `Signature` authorization.
#[derive(Debug, Default, PartialEq, Eq)]
struct Params<'a> {
    key_id: &'a str,
    algorithm: &'a str,
    signature: &'a str,
    headers: Vec<&'a str>,
}

/// Parses `Signature keyId="..",algorithm="..",headers="..",signature=".."`.
fn params(authorization: &str) -> Result<Params<'_>, &'static str> {
    let rest = authorization
        .strip_prefix("Signature")
        .ok_or("Authorization header does not start with 'Signature'")?;
    let mut p = Params::default();
    for field in rest.split(',') {
        let Some((name, value)) = field.trim().split_once('=') else {
            continue;
        };
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        match name {
            "keyId" => p.key_id = value,
            "algorithm" => p.algorithm = value,
            "signature" => p.signature = value,
            "headers" => p.headers = value.split(' ').filter(|h| !h.is_empty()).collect(),
            _ => {}
        }
    }
    if p.key_id.is_empty() {
        return Err("keyId missing");
    }
    if p.algorithm.is_empty() {
        return Err("algorithm missing");
    }
    if p.signature.is_empty() {
        return Err("signature missing");
    }
    Ok(p)
}

/// APISIX's signing string for these params and this request.
fn signing_string(p: &Params<'_>, req: &request::Parts) -> Vec<u8> {
    let mut s = Vec::with_capacity(128);
    s.extend_from_slice(p.key_id.as_bytes());
    s.push(b'\n');
    for h in &p.headers {
        if h.eq_ignore_ascii_case("@request-target") {
            let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            s.extend_from_slice(req.method.as_str().as_bytes());
            s.push(b' ');
            s.extend_from_slice(target.as_bytes());
            s.push(b'\n');
        } else if let Some(value) = req.headers.get(*h) {
            s.extend_from_slice(h.as_bytes());
            s.extend_from_slice(b": ");
            s.extend_from_slice(value.as_bytes());
            s.push(b'\n');
        }
    }
    s
}

impl HmacAuth {
    /// The consumer the request is signed by, or why it is not.
    fn verify(
        &self,
        consumers: &Consumers,
        req: &request::Parts,
        now: SystemTime,
    ) -> Result<Arc<Consumer>, &'static str> {
        let authorization = req
            .headers
            .get(header::AUTHORIZATION)
            .ok_or("missing Authorization header")?
            .to_str()
            .map_err(|_| "Authorization header is not text")?;
        let p = params(authorization)?;
        let algorithm = Algorithm::from_name(p.algorithm).ok_or("algorithm not supported")?;
        if !self.allowed[algorithm.index()] {
            return Err("algorithm not allowed");
        }
        let (consumer, keys) = consumers.hmac.get(p.key_id).ok_or("Invalid keyId")?;
        let date = req
            .headers
            .get(header::DATE)
            .ok_or("Date header missing. failed to validate clock skew")?;
        let sent = date
            .to_str()
            .ok()
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .ok_or("Invalid GMT format time")?;
        let skew = now.duration_since(sent).unwrap_or_else(|e| e.duration());
        if skew > self.clock_skew {
            return Err("Clock skew exceeded");
        }
        for wanted in &self.signed_headers {
            if !p.headers.iter().any(|h| h.eq_ignore_ascii_case(wanted)) {
                return Err("a header the route requires is not signed");
            }
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(p.signature)
            .map_err(|_| "signature is not base64")?;
        hmac::verify(
            &keys[algorithm.index()],
            &signing_string(&p, req),
            &signature,
        )
        .map_err(|_| "Invalid signature")?;
        Ok(consumer.clone())
    }
}

impl Plugin for HmacAuth {
    fn rewrite(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        match self.verify(ctx.consumers(), req, SystemTime::now()) {
            Ok(consumer) => {
                ctx.consumer = Some(consumer);
                if self.hide_credentials {
                    req.headers.remove(header::AUTHORIZATION);
                }
                Flow::Continue
            }
            Err(reason) => {
                tracing::info!(reason, "hmac-auth: client request can't be validated");
                self.anonymous
                    .or_refuse(ctx, reject(StatusCode::UNAUTHORIZED, REFUSED))
            }
        }
    }
}

const REFUSED: &str = "client request can't be validated";

#[cfg(test)]
mod tests {
    use super::super::testing::{consumers, request, run_rewrite};
    use super::*;

    const SECRET: &str = "my-secret-key";

    fn plugin(config: serde_json::Value) -> Arc<dyn Plugin> {
        compile(&config, &super::super::testing::env()).expect("valid")
    }

    fn table() -> super::super::Compiled {
        consumers(&[(
            "jack",
            serde_json::json!({"hmac-auth": {"key_id": "jack-key", "secret_key": SECRET}}),
        )])
    }

    fn sign(algorithm: Algorithm, secret: &str, text: &str) -> String {
        let key = hmac::Key::new(algorithm.ring(), secret.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, text.as_bytes()))
    }

    fn signed(
        path: &str,
        date: &str,
        extra: &[(&str, &str)],
        authorization: &str,
    ) -> request::Parts {
        let mut headers = vec![("date", date), ("authorization", authorization)];
        headers.extend_from_slice(extra);
        request(path, &headers)
    }

    fn now_date() -> String {
        httpdate::fmt_http_date(SystemTime::now())
    }

    /// A request signed as APISIX's documentation shows, with a custom header.
    fn good(date: &str, algorithm: &str, a: Algorithm) -> request::Parts {
        let text = format!("jack-key\nGET /x?b=2&a=1\ndate: {date}\nx-custom-a: v\n");
        let auth = format!(
            "Signature keyId=\"jack-key\",algorithm=\"{algorithm}\",headers=\"@request-target date x-custom-a\",signature=\"{}\"",
            sign(a, SECRET, &text)
        );
        signed("/x?b=2&a=1", date, &[("x-custom-a", "v")], &auth)
    }

    #[test]
    fn the_signing_string_is_apisixs() {
        let req = request(
            "/a/b?q=1",
            &[("date", "Tue, 19 Jan 2038 03:14:07 GMT"), ("x-h", "v")],
        );
        let p = Params {
            key_id: "k",
            algorithm: "hmac-sha256",
            signature: "s",
            headers: vec!["@request-target", "date", "x-h", "x-absent"],
        };
        assert_eq!(
            String::from_utf8(signing_string(&p, &req)).expect("utf8"),
            "k\nGET /a/b?q=1\ndate: Tue, 19 Jan 2038 03:14:07 GMT\nx-h: v\n"
        );
    }

    #[test]
    fn each_algorithm_signs_and_names_the_consumer() {
        let p = plugin(serde_json::json!({"hide_credentials": true}));
        let t = table();
        for (name, a) in [
            ("hmac-sha1", Algorithm::Sha1),
            ("hmac-sha256", Algorithm::Sha256),
            ("hmac-sha512", Algorithm::Sha512),
        ] {
            let mut req = good(&now_date(), name, a);
            let (flow, consumer) = run_rewrite(&p, &t, &mut req);
            assert!(matches!(flow, Flow::Continue), "{name}: {flow:?}");
            assert_eq!(consumer.as_deref(), Some("jack"));
            assert!(!req.headers.contains_key("authorization"), "hidden");
        }
    }

    #[test]
    fn wrong_missing_and_tampered_signatures_get_apisixs_401() {
        let p = plugin(serde_json::json!({"allowed_algorithms": ["hmac-sha256"]}));
        let t = table();
        let date = now_date();
        let mut tampered = good(&date, "hmac-sha256", Algorithm::Sha256);
        tampered
            .headers
            .insert("x-custom-a", "w".parse().expect("value"));
        let mut other_path = good(&date, "hmac-sha256", Algorithm::Sha256);
        other_path.uri = "/x?b=2&a=2".parse().expect("uri");
        let wrong_secret = format!(
            "Signature keyId=\"jack-key\",algorithm=\"hmac-sha256\",headers=\"date\",signature=\"{}\"",
            sign(Algorithm::Sha256, "nope", &format!("jack-key\ndate: {date}\n"))
        );
        let cases: Vec<(&str, request::Parts)> = vec![
            ("no authorization", request("/x", &[("date", &date)])),
            ("basic", signed("/x", &date, &[], "Basic amFjazpwdw==")),
            ("empty", signed("/x", &date, &[], "Signature ")),
            (
                "unknown key",
                signed(
                    "/x",
                    &date,
                    &[],
                    "Signature keyId=\"rose\",algorithm=\"hmac-sha256\",signature=\"AA==\"",
                ),
            ),
            ("not allowed", good(&date, "hmac-sha512", Algorithm::Sha512)),
            (
                "unknown algorithm",
                signed(
                    "/x",
                    &date,
                    &[],
                    "Signature keyId=\"jack-key\",algorithm=\"md5\",signature=\"AA==\"",
                ),
            ),
            (
                "not base64",
                signed(
                    "/x",
                    &date,
                    &[],
                    "Signature keyId=\"jack-key\",algorithm=\"hmac-sha256\",signature=\"%%%\"",
                ),
            ),
            ("tampered header", tampered),
            ("other query", other_path),
            ("wrong secret", signed("/x", &date, &[], &wrong_secret)),
        ];
        for (what, mut req) in cases {
            let (flow, consumer) = run_rewrite(&p, &t, &mut req);
            let Flow::Respond(r) = flow else {
                panic!("{what}: {flow:?}")
            };
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(
                super::super::testing::body_text(r),
                "{\"message\":\"client request can't be validated\"}\n",
                "{what}"
            );
            assert_eq!(consumer, None, "{what}");
        }
    }

    #[test]
    fn a_replay_past_the_clock_skew_is_refused() {
        let p = HmacAuth {
            allowed: [true; 3],
            clock_skew: Duration::from_secs(10),
            signed_headers: Vec::new(),
            hide_credentials: false,
            anonymous: Anonymous::default(),
        };
        let t = table();
        let sent = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let req = good(
            &httpdate::fmt_http_date(sent),
            "hmac-sha256",
            Algorithm::Sha256,
        );
        let at = |s: u64| p.verify(&t.consumers, &req, sent + Duration::from_secs(s));
        assert_eq!(at(10).map(|c| c.name.to_string()), Ok("jack".into()));
        assert_eq!(at(11).map(|_| ()), Err("Clock skew exceeded"));
        let early = p.verify(&t.consumers, &req, sent - Duration::from_secs(11));
        assert_eq!(
            early.map(|_| ()),
            Err("Clock skew exceeded"),
            "from the future"
        );
        let mut no_date = good("x", "hmac-sha256", Algorithm::Sha256);
        no_date.headers.remove("date");
        assert_eq!(
            p.verify(&t.consumers, &no_date, sent).map(|_| ()),
            Err("Date header missing. failed to validate clock skew")
        );
        let bad_date = good("yesterday", "hmac-sha256", Algorithm::Sha256);
        assert_eq!(
            p.verify(&t.consumers, &bad_date, sent).map(|_| ()),
            Err("Invalid GMT format time")
        );
    }

    #[test]
    fn the_route_can_require_headers_in_the_signature() {
        let p = plugin(serde_json::json!({"signed_headers": ["X-Custom-A"]}));
        let t = table();
        let date = now_date();
        let mut req = good(&date, "hmac-sha256", Algorithm::Sha256);
        assert!(matches!(run_rewrite(&p, &t, &mut req).0, Flow::Continue));
        let text = format!("jack-key\ndate: {date}\n");
        let auth = format!(
            "Signature keyId=\"jack-key\",algorithm=\"hmac-sha256\",headers=\"date\",signature=\"{}\"",
            sign(Algorithm::Sha256, SECRET, &text)
        );
        let mut req = signed("/x", &date, &[("x-custom-a", "v")], &auth);
        assert!(matches!(run_rewrite(&p, &t, &mut req).0, Flow::Respond(_)));
        let open = plugin(serde_json::json!({}));
        let mut req = signed("/x", &date, &[("x-custom-a", "v")], &auth);
        assert!(matches!(run_rewrite(&open, &t, &mut req).0, Flow::Continue));
    }

    #[test]
    fn params_parse_and_hostile_headers_are_refused() {
        assert_eq!(
            params(
                "Signature keyId=\"k\",algorithm=\"hmac-sha1\",headers=\"a  b\",signature=\"s=\""
            ),
            Ok(Params {
                key_id: "k",
                algorithm: "hmac-sha1",
                signature: "s=",
                headers: vec!["a", "b"],
            })
        );
        for (text, reason) in [
            ("", "Authorization header does not start with 'Signature'"),
            ("Signature", "keyId missing"),
            ("Signature keyId=\"k\"", "algorithm missing"),
            ("Signature keyId=\"k\",algorithm=\"x\"", "signature missing"),
            ("Signature ,,,=,==", "keyId missing"),
        ] {
            assert_eq!(params(text), Err(reason), "{text:?}");
        }
    }

    #[test]
    fn bad_configs_name_their_field() {
        super::super::testing::assert_faults(
            compile,
            &[
                (
                    serde_json::json!({"clock_skew": 0}),
                    ".clock_skew",
                    "out of range",
                ),
                (
                    serde_json::json!({"clock_skew": -1}),
                    ".clock_skew",
                    "invalid value",
                ),
                (
                    serde_json::json!({"clock_skew": 604_801}),
                    ".clock_skew",
                    "out of range",
                ),
                (
                    serde_json::json!({"allowed_algorithms": ["md5"]}),
                    ".allowed_algorithms[0]",
                    "unknown variant",
                ),
                (
                    serde_json::json!({"allowed_algorithms": []}),
                    ".allowed_algorithms",
                    "at least one",
                ),
                (
                    serde_json::json!({"signed_headers": [""]}),
                    ".signed_headers[0]",
                    "1 to 50 bytes",
                ),
                (
                    serde_json::json!({"validate_request_body": true}),
                    ".validate_request_body",
                    "not supported",
                ),
                (
                    serde_json::json!({"key_id": "x"}),
                    ".key_id",
                    "unknown field",
                ),
            ],
        );
    }

    #[test]
    fn bad_credentials_name_their_field() {
        super::super::testing::assert_credential_faults(
            file_credential,
            &[
                (
                    serde_json::json!({"key_id": "k"}),
                    "",
                    "missing field `secret_key`",
                ),
                (
                    serde_json::json!({"key_id": "", "secret_key": "s"}),
                    ".key_id",
                    "1 to 256",
                ),
                (
                    serde_json::json!({"key_id": "k", "secret_key": "s".repeat(257)}),
                    ".secret_key",
                    "1 to 256",
                ),
                (
                    serde_json::json!({"access_key": "k"}),
                    ".access_key",
                    "unknown field",
                ),
            ],
        );
        let mut t = Consumers::default();
        let a = super::super::testing::consumer("a");
        let b = super::super::testing::consumer("b");
        let c = serde_json::json!({"key_id": "k", "secret_key": "s"});
        file_credential(&c, &a, &mut t).expect("first");
        let fault = file_credential(&c, &b, &mut t).expect_err("second");
        assert_eq!(fault.field, ".key_id");
        assert!(
            fault.message.contains("consumer \"a\""),
            "{}",
            fault.message
        );
    }
}
