//! `jwt-auth`: authenticates a consumer by a JSON Web Token, as APISIX's
//! plugin of that name.
//!
//! The token comes from the `header` (default `authorization`, an optional
//! `Bearer ` prefix), else the `query` parameter (default `jwt`), else the
//! `cookie` (default `jwt`). Its `key_claim_name` claim (default `key`)
//! names the consumer whose `jwt-auth` credential verifies it: `HS256` or
//! `HS512` with `secret` (`base64_secret` for a base64 one), `RS256` or
//! `ES256` with `public_key` (PEM). The token's `alg` must be the
//! consumer's. `exp` and `nbf`, when present, are checked with the
//! consumer's `lifetime_grace_period` seconds of clock skew allowed. Keys
//! are parsed at config load. A verified token is remembered (up to 4,096
//! tokens, per consumer set) so that the signature of a token is checked
//! once; its `exp` and `nbf` are checked on every request. Rejections are
//! APISIX's 401s: "Missing JWT token in request", "JWT token invalid",
//! "missing user key in JWT token", "Invalid user key in JWT token",
//! "failed to verify jwt".

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::{header, request, HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use schemars::JsonSchema;
use serde::Deserialize;

use super::anonymous::Anonymous;
use super::vars::{query_arg, remove_query_arg};
use super::{
    header_name, in_range, parse, reject, Consumer, Consumers, Ctx, Descriptor, Env, Fault, Flow,
    Plugin,
};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("jwt-auth", 2510, super::schema_of::<Config>, compile)
        .auth(file_credential, super::schema_of::<Credential>);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default = "default_jwt")]
    query: String,
    #[serde(default = "default_jwt")]
    cookie: String,
    /// Remove the token from the request before it goes on.
    #[serde(default)]
    hide_credentials: bool,
    /// The consumer (a `consumers[].username`) a request without a valid
    /// credential runs as; unset, it gets 401.
    #[serde(default)]
    anonymous_consumer: Option<String>,
    /// The claim that names the consumer's credential.
    #[serde(default = "default_claim")]
    key_claim_name: String,
}

fn default_header() -> String {
    "authorization".to_owned()
}

fn default_jwt() -> String {
    "jwt".to_owned()
}

fn default_claim() -> String {
    "key".to_owned()
}

/// The consumer side: `consumers[].plugins.jwt-auth`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credential {
    /// Unique among consumers; tokens name it in their key claim.
    key: String,
    /// For HS256 and HS512.
    #[serde(default)]
    secret: Option<String>,
    /// PEM, for RS256 and ES256.
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    algorithm: Alg,
    /// The secret is base64.
    #[serde(default)]
    base64_secret: bool,
    /// Seconds of clock skew allowed on `exp` and `nbf`, 0 to 3600.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    lifetime_grace_period: u64,
    /// APISIX's lifetime of tokens it signs; accepted and unused here (this
    /// proxy signs no tokens). 1 to 31,536,000.
    #[serde(default = "default_exp")]
    #[schemars(range(min = 1, max = 31_536_000))]
    exp: u64,
}

fn default_exp() -> u64 {
    86_400
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
enum Alg {
    #[default]
    HS256,
    HS512,
    RS256,
    ES256,
}

impl Alg {
    fn algorithm(self) -> Algorithm {
        match self {
            Alg::HS256 => Algorithm::HS256,
            Alg::HS512 => Algorithm::HS512,
            Alg::RS256 => Algorithm::RS256,
            Alg::ES256 => Algorithm::ES256,
        }
    }
}

/// One consumer's verifying key.
pub(crate) struct Key {
    consumer: Arc<Consumer>,
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("consumer", &self.consumer.name)
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

/// Every consumer's JWT key by its `key`, and the tokens already verified.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    by_key: HashMap<String, Key>,
    /// Verified tokens: the consumer, and the claims still to check.
    verified: Mutex<HashMap<String, Verified>>,
}

#[derive(Debug, Clone)]
struct Verified {
    claim: Arc<str>,
    consumer: Arc<Consumer>,
    exp: Option<u64>,
    nbf: Option<u64>,
    leeway: u64,
}

const MAX_VERIFIED: usize = 4096;

fn file_credential(
    value: &serde_json::Value,
    consumer: &Arc<Consumer>,
    consumers: &mut Consumers,
) -> Result<(), Fault> {
    let c: Credential = parse(value)?;
    if c.key.is_empty() || c.key.len() > 1024 {
        return Err(Fault::new("key", "must be 1 to 1024 bytes"));
    }
    in_range("lifetime_grace_period", c.lifetime_grace_period, 0..=3600)?;
    in_range("exp", c.exp, 1..=31_536_000)?;
    let key = match c.algorithm {
        Alg::HS256 | Alg::HS512 => {
            let secret = c
                .secret
                .as_deref()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Fault::new("secret", format!("{:?} needs a secret", c.algorithm)))?;
            if c.base64_secret {
                DecodingKey::from_base64_secret(secret)
                    .map_err(|e| Fault::new("secret", format!("is not base64: {e}")))?
            } else {
                DecodingKey::from_secret(secret.as_bytes())
            }
        }
        Alg::RS256 | Alg::ES256 => {
            let pem = c.public_key.as_deref().ok_or_else(|| {
                Fault::new(
                    "public_key",
                    format!("{:?} needs a PEM public key", c.algorithm),
                )
            })?;
            let parsed = match c.algorithm {
                Alg::RS256 => DecodingKey::from_rsa_pem(pem.as_bytes()),
                _ => DecodingKey::from_ec_pem(pem.as_bytes()),
            };
            parsed.map_err(|e| {
                Fault::new(
                    "public_key",
                    format!("is not a {:?} PEM public key: {e}", c.algorithm),
                )
            })?
        }
    };
    let mut validation = Validation::new(c.algorithm.algorithm());
    validation.leeway = c.lifetime_grace_period;
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    if let Some(other) = consumers.jwt.by_key.get(&c.key) {
        return Err(Fault::new(
            "key",
            format!(
                "{:?} is already consumer {:?}'s",
                c.key, &*other.consumer.name
            ),
        ));
    }
    consumers.jwt.by_key.insert(
        c.key,
        Key {
            consumer: consumer.clone(),
            key,
            validation,
        },
    );
    Ok(())
}

#[derive(Debug)]
struct JwtAuth {
    header: HeaderName,
    query: String,
    cookie: String,
    hide_credentials: bool,
    anonymous: Anonymous,
    claim: Arc<str>,
}

fn compile(value: &serde_json::Value, env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    for (field, text) in [
        ("query", &config.query),
        ("cookie", &config.cookie),
        ("key_claim_name", &config.key_claim_name),
    ] {
        if text.is_empty() {
            return Err(Fault::new(field, "must not be empty"));
        }
    }
    Ok(Arc::new(JwtAuth {
        header: header_name("header", &config.header)?,
        query: config.query,
        cookie: config.cookie,
        hide_credentials: config.hide_credentials,
        anonymous: Anonymous::compile(config.anonymous_consumer, env)?,
        claim: Arc::from(config.key_claim_name),
    }))
}

const MISSING: &str = "Missing JWT token in request";
const MALFORMED: &str = "JWT token invalid";
const NO_KEY: &str = "missing user key in JWT token";
const UNKNOWN_KEY: &str = "Invalid user key in JWT token";
const FAILED: &str = "failed to verify jwt";

/// Where the token was found, to hide it.
#[derive(Debug, Clone, Copy)]
enum Source {
    Header,
    Query,
    Cookie,
}

fn remove_cookie(req: &mut request::Parts, name: &str) {
    let kept: Vec<String> = req
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| pair.split_once('=').is_none_or(|(k, _)| k != name))
        .map(str::to_owned)
        .collect();
    req.headers.remove(header::COOKIE);
    if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
        if !kept.is_empty() {
            req.headers.insert(header::COOKIE, value);
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The key claim of an unverified token, to pick the verifying key.
fn key_claim(token: &str, claim: &str) -> Result<Option<String>, ()> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| ())?;
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| ())?;
    Ok(claims
        .get(claim)
        .and_then(|v| v.as_str())
        .map(str::to_owned))
}

static VERIFIED_HITS: AtomicU64 = AtomicU64::new(0);

impl JwtAuth {
    fn token<'r>(&self, req: &'r request::Parts) -> Option<(std::borrow::Cow<'r, str>, Source)> {
        if let Some(value) = req.headers.get(&self.header).and_then(|v| v.to_str().ok()) {
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .unwrap_or(value);
            return Some((token.into(), Source::Header));
        }
        if let Some(token) = query_arg(&req.uri, &self.query) {
            return Some((token, Source::Query));
        }
        super::vars::cookie(req, &self.cookie).map(|t| (t.into(), Source::Cookie))
    }

    /// The consumer `token` authenticates, or APISIX's message why not.
    fn verify(&self, keys: &Keys, token: &str) -> Result<Arc<Consumer>, &'static str> {
        let now = now();
        let cached = keys
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .filter(|v| *v.claim == *self.claim)
            .cloned();
        if let Some(v) = cached {
            VERIFIED_HITS.fetch_add(1, Ordering::Relaxed);
            let expired = v.exp.is_some_and(|exp| exp.saturating_add(v.leeway) < now);
            let early = v.nbf.is_some_and(|nbf| nbf > now.saturating_add(v.leeway));
            return if expired || early {
                Err(FAILED)
            } else {
                Ok(v.consumer)
            };
        }
        let user = key_claim(token, &self.claim).map_err(|()| MALFORMED)?;
        let user = user.ok_or(NO_KEY)?;
        let key = keys.by_key.get(&user).ok_or(UNKNOWN_KEY)?;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &key.validation)
            .map_err(|e| {
                tracing::debug!(error = %e, consumer = &*key.consumer.name, "JWT rejected");
                FAILED
            })?;
        let number = |name: &str| data.claims.get(name).and_then(serde_json::Value::as_u64);
        let mut verified = keys.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        verified.insert(
            token.to_owned(),
            Verified {
                claim: self.claim.clone(),
                consumer: key.consumer.clone(),
                exp: number("exp"),
                nbf: number("nbf"),
                leeway: key.validation.leeway,
            },
        );
        Ok(key.consumer.clone())
    }
}

impl Plugin for JwtAuth {
    fn rewrite(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let Some((token, source)) = self.token(req) else {
            return self
                .anonymous
                .or_refuse(ctx, reject(StatusCode::UNAUTHORIZED, MISSING));
        };
        let consumer = match self.verify(&ctx.consumers().jwt, &token) {
            Ok(consumer) => consumer,
            Err(message) => {
                return self
                    .anonymous
                    .or_refuse(ctx, reject(StatusCode::UNAUTHORIZED, message))
            }
        };
        ctx.consumer = Some(consumer);
        if self.hide_credentials {
            match source {
                Source::Header => {
                    req.headers.remove(&self.header);
                }
                Source::Query => remove_query_arg(&mut req.uri, &self.query),
                Source::Cookie => remove_cookie(req, &self.cookie),
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_faults, body_text, consumers, request, run_rewrite};
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const RSA_PRIVATE: &str = include_str!("testdata/rsa_private.pem");
    const RSA_PUBLIC: &str = include_str!("testdata/rsa_public.pem");
    const EC_PRIVATE: &str = include_str!("testdata/ec_private.pem");
    const EC_PUBLIC: &str = include_str!("testdata/ec_public.pem");

    fn sign(alg: Algorithm, claims: serde_json::Value) -> String {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
            _ => EncodingKey::from_secret(b"hs-secret"),
        };
        encode(&Header::new(alg), &claims, &key).unwrap()
    }

    fn compiled() -> super::super::Compiled {
        consumers(&[
            (
                "hs",
                serde_json::json!({"jwt-auth": {"key": "hs-key", "secret": "hs-secret", "lifetime_grace_period": 5}}),
            ),
            (
                "rs",
                serde_json::json!({"jwt-auth": {"key": "rs-key", "algorithm": "RS256", "public_key": RSA_PUBLIC}}),
            ),
            (
                "es",
                serde_json::json!({"jwt-auth": {"key": "es-key", "algorithm": "ES256", "public_key": EC_PUBLIC}}),
            ),
        ])
    }

    fn check(config: serde_json::Value, req: &mut request::Parts) -> Result<String, (u16, String)> {
        let p = compile(&config, &super::super::testing::env()).expect("valid");
        let (flow, consumer) = run_rewrite(&p, &compiled(), req);
        match flow {
            Flow::Continue => Ok(consumer.unwrap_or_default()),
            Flow::Respond(r) => Err((r.status().as_u16(), body_text(r))),
            Flow::Wait(_) | Flow::ContinueWith(_) => Err((0, String::new())),
        }
    }

    fn message(text: &str) -> (u16, String) {
        (401, format!("{{\"message\":\"{text}\"}}\n"))
    }

    #[test]
    fn each_algorithm_verifies_its_consumers_tokens() {
        let later = now() + 600;
        for (alg, key, consumer) in [
            (Algorithm::HS256, "hs-key", "hs"),
            (Algorithm::RS256, "rs-key", "rs"),
            (Algorithm::ES256, "es-key", "es"),
        ] {
            let token = sign(alg, serde_json::json!({"key": key, "exp": later}));
            let bearer = format!("Bearer {token}");
            let mut req = request("/", &[("authorization", &bearer)]);
            assert_eq!(
                check(serde_json::json!({}), &mut req),
                Ok(consumer.into()),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn tokens_come_from_header_query_or_cookie_and_can_be_hidden() {
        let token = sign(Algorithm::HS256, serde_json::json!({"key": "hs-key"}));
        let hide = serde_json::json!({"hide_credentials": true});
        let mut req = request(&format!("/p?a=1&jwt={token}"), &[]);
        assert_eq!(check(hide.clone(), &mut req), Ok("hs".into()));
        assert_eq!(req.uri, "/p?a=1");
        let cookie = format!("a=1; jwt={token}; b=2");
        let mut req = request("/", &[("cookie", &cookie)]);
        assert_eq!(check(hide.clone(), &mut req), Ok("hs".into()));
        assert_eq!(req.headers["cookie"], "a=1; b=2");
        let mut req = request("/", &[("x-token", &token)]);
        assert_eq!(
            check(
                serde_json::json!({"header": "x-token", "hide_credentials": true}),
                &mut req
            ),
            Ok("hs".into())
        );
        assert!(!req.headers.contains_key("x-token"));
    }

    #[test]
    fn expired_early_forged_and_unknown_tokens_get_apisix_401s() {
        let now = now();
        let none = serde_json::json!({});
        let cases = [
            (None, MISSING),
            (Some("not-a-jwt".to_owned()), MALFORMED),
            (Some("a.b.c".to_owned()), MALFORMED),
            (
                Some(sign(Algorithm::HS256, serde_json::json!({"sub": "x"}))),
                NO_KEY,
            ),
            (
                Some(sign(Algorithm::HS256, serde_json::json!({"key": "who"}))),
                UNKNOWN_KEY,
            ),
            // Expired beyond the 5 s grace, and not yet valid beyond it.
            (
                Some(sign(
                    Algorithm::HS256,
                    serde_json::json!({"key": "hs-key", "exp": now - 60}),
                )),
                FAILED,
            ),
            (
                Some(sign(
                    Algorithm::HS256,
                    serde_json::json!({"key": "hs-key", "nbf": now + 60}),
                )),
                FAILED,
            ),
            // Signed by another key, or with another algorithm than the
            // consumer's (an HS256 token for the RS256 consumer).
            (Some(forge(serde_json::json!({"key": "hs-key"}))), FAILED),
            (
                Some(sign(Algorithm::HS256, serde_json::json!({"key": "rs-key"}))),
                FAILED,
            ),
            (
                Some(sign(Algorithm::RS256, serde_json::json!({"key": "es-key"}))),
                FAILED,
            ),
        ];
        for (token, text) in cases {
            let headers: Vec<(&str, &str)> = token
                .iter()
                .map(|t| ("authorization", t.as_str()))
                .collect();
            let mut req = request("/", &headers);
            assert_eq!(
                check(none.clone(), &mut req),
                Err(message(text)),
                "{token:?}"
            );
        }
        // Within the grace period: accepted.
        let skewed = sign(
            Algorithm::HS256,
            serde_json::json!({"key": "hs-key", "exp": now - 2, "nbf": now + 2}),
        );
        let mut req = request("/", &[("authorization", &skewed)]);
        assert_eq!(check(none, &mut req), Ok("hs".into()));
    }

    fn forge(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap()
    }

    #[test]
    fn a_verified_token_is_remembered_but_its_expiry_still_checked() {
        let compiled = compiled();
        let p = JwtAuth {
            header: header::AUTHORIZATION,
            query: "jwt".into(),
            cookie: "jwt".into(),
            hide_credentials: false,
            anonymous: Anonymous::default(),
            claim: Arc::from("key"),
        };
        let keys = &compiled.consumers.jwt;
        let token = sign(
            Algorithm::RS256,
            serde_json::json!({"key": "rs-key", "exp": now() + 600}),
        );
        let before = VERIFIED_HITS.load(Ordering::Relaxed);
        assert_eq!(
            p.verify(keys, &token).map(|c| c.name.to_string()),
            Ok("rs".into())
        );
        assert_eq!(
            p.verify(keys, &token).map(|c| c.name.to_string()),
            Ok("rs".into())
        );
        assert!(
            VERIFIED_HITS.load(Ordering::Relaxed) > before,
            "the second was a hit"
        );
        // An entry whose token has since expired is refused.
        keys.verified.lock().unwrap().get_mut(&token).unwrap().exp = Some(now() - 10);
        assert_eq!(
            p.verify(keys, &token).map(|c| c.name.to_string()),
            Err(FAILED)
        );
        // Another route reading another claim does not reuse the entry.
        let other = JwtAuth {
            claim: Arc::from("sub"),
            ..p
        };
        assert_eq!(
            other.verify(keys, &token).map(|c| c.name.to_string()),
            Err(NO_KEY)
        );
    }

    #[test]
    fn bad_configs_and_credentials_name_their_field() {
        assert_faults(
            compile,
            &[
                (
                    serde_json::json!({"header": "a b"}),
                    ".header",
                    "not a header name",
                ),
                (
                    serde_json::json!({"query": ""}),
                    ".query",
                    "must not be empty",
                ),
                (
                    serde_json::json!({"key_claim_name": ""}),
                    ".key_claim_name",
                    "must not be empty",
                ),
                (
                    serde_json::json!({"secret": "s"}),
                    ".secret",
                    "unknown field",
                ),
            ],
        );
        super::super::testing::assert_credential_faults(
            file_credential,
            &[
                (serde_json::json!({}), "", "missing field `key`"),
                (serde_json::json!({"key": "k"}), ".secret", "needs a secret"),
                (
                    serde_json::json!({"key": "k", "secret": "s", "algorithm": "none"}),
                    ".algorithm",
                    "unknown variant",
                ),
                (
                    serde_json::json!({"key": "k", "algorithm": "RS256"}),
                    ".public_key",
                    "needs a PEM",
                ),
                (
                    serde_json::json!({"key": "k", "algorithm": "RS256", "public_key": "junk"}),
                    ".public_key",
                    "not a RS256 PEM",
                ),
                (
                    serde_json::json!({"key": "k", "algorithm": "ES256", "public_key": RSA_PUBLIC}),
                    ".public_key",
                    "not a ES256 PEM",
                ),
                (
                    serde_json::json!({"key": "k", "secret": "%%%", "base64_secret": true}),
                    ".secret",
                    "not base64",
                ),
                (
                    serde_json::json!({"key": "k", "secret": "s", "lifetime_grace_period": 3601}),
                    ".lifetime_grace_period",
                    "out of range",
                ),
                (
                    serde_json::json!({"key": "k", "secret": "s", "exp": 0}),
                    ".exp",
                    "out of range",
                ),
                (
                    serde_json::json!({"key": "", "secret": "s"}),
                    ".key",
                    "1 to 1024",
                ),
            ],
        );
    }
}
