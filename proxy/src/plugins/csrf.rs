//! `csrf`: double-submit-cookie protection, as APISIX's plugin of that
//! name.
//!
//! Every response gets a fresh token in a cookie (`Set-Cookie:
//! <name>=<token>;path=/;Expires=<now + expires>`). A request with an
//! unsafe method (anything but GET, HEAD and OPTIONS) must send the same
//! token back in header `<name>` and in cookie `<name>`, and the token must
//! carry a valid signature that has not expired; otherwise it gets 401 with
//! APISIX's `{"error_msg": ...}`: "no csrf token in headers", "no csrf
//! cookie", "csrf token mismatch", or "Failed to verify the csrf token
//! signature".
//!
//! The token is `<random>.<expiry>.<signature>`: 128 random bits in hex,
//! the Unix second it expires, and HMAC-SHA256 over both with `key`
//! (base64url). The signature is checked in constant time (ring). Unlike
//! APISIX's (a SHA-256 of a JSON object with the key inside, whose expiry
//! is never checked), an expired token is refused; tokens are not
//! interchangeable with APISIX's.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{header, request, response, HeaderName, HeaderValue, Method, StatusCode};
use rand::RngCore;
use ring::hmac;
use schemars::JsonSchema;
use serde::Deserialize;

use super::Plugin;
use super::{header_name, in_range, json_response, parse, Ctx, Descriptor, Env, Fault, Flow};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("csrf", 2980, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The secret the tokens are signed with; 1 to 4096 bytes.
    key: String,
    /// Seconds a token is good for, 1 to 31536000 (a year).
    #[serde(default = "default_expires")]
    #[schemars(range(min = 1, max = 31_536_000))]
    expires: u64,
    /// The cookie and the request header that carry the token.
    #[serde(default = "default_name")]
    name: String,
}

fn default_expires() -> u64 {
    7200
}

fn default_name() -> String {
    "apisix-csrf-token".to_owned()
}

/// Longer tokens are not ours: refused without looking further.
const MAX_TOKEN: usize = 256;

struct Csrf {
    key: hmac::Key,
    expires: Duration,
    header: HeaderName,
    name: String,
}

impl std::fmt::Debug for Csrf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Csrf")
            .field("expires", &self.expires)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    Ok(Arc::new(build(parse(value)?)?))
}

fn build(config: Config) -> Result<Csrf, Fault> {
    if config.key.is_empty() || config.key.len() > 4096 {
        return Err(Fault::new("key", "must be 1 to 4096 bytes"));
    }
    in_range("expires", config.expires, 1..=31_536_000)?;
    let header = header_name("name", &config.name)?;
    Ok(Csrf {
        key: hmac::Key::new(hmac::HMAC_SHA256, config.key.as_bytes()),
        expires: Duration::from_secs(config.expires),
        header,
        name: config.name,
    })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Csrf {
    /// A new token, good until `now + expires`.
    fn token(&self, now: SystemTime) -> String {
        let mut random = [0u8; 16];
        rand::rng().fill_bytes(&mut random);
        let mut text = String::with_capacity(96);
        for b in random {
            text.push_str(&format!("{b:02x}"));
        }
        text.push('.');
        text.push_str(&unix(now + self.expires).to_string());
        let tag = hmac::sign(&self.key, text.as_bytes());
        text.push('.');
        text.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
        text
    }

    /// Whether `token` is ours and unexpired at `now`.
    fn verify(&self, token: &str, now: SystemTime) -> bool {
        if token.len() > MAX_TOKEN {
            return false;
        }
        let Some((signed, tag)) = token.rsplit_once('.') else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        if hmac::verify(&self.key, signed.as_bytes(), &tag).is_err() {
            return false;
        }
        signed
            .split_once('.')
            .and_then(|(_, expiry)| expiry.parse::<u64>().ok())
            .is_some_and(|expiry| unix(now) < expiry)
    }

    /// Why an unsafe request is refused, if it is.
    fn refusal(&self, req: &request::Parts, now: SystemTime) -> Option<&'static str> {
        let from_header = req
            .headers
            .get(&self.header)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty());
        let Some(from_header) = from_header else {
            return Some("no csrf token in headers");
        };
        let Some(from_cookie) = super::vars::cookie(req, &self.name) else {
            return Some("no csrf cookie");
        };
        if from_header != from_cookie.as_bytes() {
            return Some("csrf token mismatch");
        }
        if !self.verify(from_cookie, now) {
            return Some("Failed to verify the csrf token signature");
        }
        None
    }
}

impl Plugin for Csrf {
    fn access(&self, _ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        if matches!(req.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Flow::Continue;
        }
        match self.refusal(req, SystemTime::now()) {
            None => Flow::Continue,
            Some(why) => Flow::Respond(json_response(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "error_msg": why }).to_string() + "\n",
            )),
        }
    }

    fn header_filter(&self, _ctx: &mut Ctx<'_>, res: &mut response::Parts) {
        let now = SystemTime::now();
        let cookie = format!(
            "{}={};path=/;Expires={}",
            self.name,
            self.token(now),
            httpdate::fmt_http_date(now + self.expires)
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            res.headers.append(header::SET_COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_faults, body_text, consumers, ctx, env, request};
    use super::*;

    fn csrf() -> Csrf {
        build(parse(&serde_json::json!({"key": "s3cret", "expires": 60})).expect("parses"))
            .expect("builds")
    }

    #[test]
    fn tokens_verify_until_they_expire_and_only_with_the_key() {
        let c = csrf();
        let now = SystemTime::now();
        let token = c.token(now);
        assert_eq!(token.split('.').count(), 3, "{token}");
        assert!(c.verify(&token, now));
        assert!(c.verify(&token, now + Duration::from_secs(59)));
        assert!(!c.verify(&token, now + Duration::from_secs(61)), "expired");
        assert_ne!(token, c.token(now), "fresh randomness each time");
        let other =
            build(parse(&serde_json::json!({"key": "other"})).expect("parses")).expect("builds");
        assert!(!other.verify(&token, now), "another key");
        // A later expiry with the old signature does not verify.
        let (random, rest) = token.split_once('.').expect("three parts");
        let (_, tag) = rest.split_once('.').expect("three parts");
        let forged = format!("{random}.99999999999.{tag}");
        assert!(!c.verify(&forged, now));
        for garbage in ["", ".", "..", "a.b.c", "a.b.!!!", &"x".repeat(10_000)] {
            assert!(!c.verify(garbage, now), "{garbage:.20}");
        }
    }

    #[test]
    fn unsafe_methods_need_the_same_signed_token_in_header_and_cookie() {
        let c = csrf();
        let now = SystemTime::now();
        let token = c.token(now);
        let cookie = format!("a=1; apisix-csrf-token={token}");
        let post = |headers: &[(&str, &str)]| {
            let mut req = request("/", headers);
            req.method = Method::POST;
            c.refusal(&req, now)
        };
        assert_eq!(post(&[]), Some("no csrf token in headers"));
        assert_eq!(
            post(&[("apisix-csrf-token", "")]),
            Some("no csrf token in headers")
        );
        assert_eq!(
            post(&[("apisix-csrf-token", &token)]),
            Some("no csrf cookie")
        );
        assert_eq!(
            post(&[("apisix-csrf-token", "x"), ("cookie", &cookie)]),
            Some("csrf token mismatch")
        );
        assert_eq!(
            post(&[
                ("apisix-csrf-token", "x.1.y"),
                ("cookie", "apisix-csrf-token=x.1.y")
            ]),
            Some("Failed to verify the csrf token signature")
        );
        assert_eq!(
            post(&[("apisix-csrf-token", &token), ("cookie", &cookie)]),
            None
        );
    }

    #[test]
    fn safe_methods_pass_and_every_response_gets_a_cookie() {
        let p = compile(&serde_json::json!({"key": "k", "name": "xsrf"}), &env()).expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let mut get = request("/", &[]);
        assert!(matches!(p.access(&mut ctx, &mut get), Flow::Continue));
        let mut put = request("/", &[]);
        put.method = Method::PUT;
        let Flow::Respond(r) = p.access(&mut ctx, &mut put) else {
            panic!("no token")
        };
        assert_eq!(r.status(), 401);
        assert_eq!(
            body_text(r),
            "{\"error_msg\":\"no csrf token in headers\"}\n"
        );
        let (mut head, ()) = http::Response::new(()).into_parts();
        p.header_filter(&mut ctx, &mut head);
        let cookie = head.headers[header::SET_COOKIE].to_str().expect("text");
        assert!(cookie.starts_with("xsrf="), "{cookie}");
        assert!(cookie.contains(";path=/;Expires="), "{cookie}");
        assert!(cookie.ends_with(" GMT"), "{cookie}");
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (serde_json::json!({}), "", "missing field `key`"),
                (serde_json::json!({"key": ""}), ".key", "1 to 4096"),
                (
                    serde_json::json!({"key": "k", "expires": 0}),
                    ".expires",
                    "out of range",
                ),
                (
                    serde_json::json!({"key": "k", "expires": -1}),
                    ".expires",
                    "invalid value",
                ),
                (
                    serde_json::json!({"key": "k", "name": "a;b"}),
                    ".name",
                    "not a header name",
                ),
            ],
        );
    }
}
