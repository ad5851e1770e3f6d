//! `basic-auth`: authenticates a consumer by HTTP Basic credentials
//! (`Authorization: Basic base64(user:password)`), as APISIX's plugin of
//! that name.
//!
//! Consumers carry `basic-auth: {username, password}`, filed by username at
//! config load. Rejections are APISIX's 401s: "Missing authorization in
//! request" (with `WWW-Authenticate: Basic realm='.'`), "Invalid
//! authorization in request" for a header that is not Basic credentials,
//! and "Invalid user authorization" for an unknown user or a wrong
//! password. `hide_credentials` removes the header before the request goes
//! on.

use std::sync::Arc;

use base64::Engine;
use http::{header, request, HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::anonymous::Anonymous;
use super::{parse, reject, Consumer, Consumers, Ctx, Descriptor, Env, Fault, Flow, Plugin};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("basic-auth", 2520, super::schema_of::<Config>, compile)
        .auth(file_credential, super::schema_of::<Credential>);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Remove `Authorization` before the request goes on.
    #[serde(default)]
    hide_credentials: bool,
    /// The consumer (a `consumers[].username`) a request without a valid
    /// credential runs as; unset, it gets 401.
    #[serde(default)]
    anonymous_consumer: Option<String>,
}

/// The consumer side: `consumers[].plugins.basic-auth`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credential {
    /// Unique among consumers; 1 to 256 bytes, no `:`.
    username: String,
    /// 1 to 1024 bytes.
    password: String,
}

/// The basic-auth users, by username.
pub(crate) type Users = std::collections::HashMap<String, (String, Arc<Consumer>)>;

#[derive(Debug)]
struct BasicAuth {
    hide_credentials: bool,
    anonymous: Anonymous,
}

fn compile(value: &serde_json::Value, env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    Ok(Arc::new(BasicAuth {
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
    if c.username.is_empty() || c.username.len() > 256 || c.username.contains(':') {
        return Err(Fault::new("username", "must be 1 to 256 bytes without `:`"));
    }
    if c.password.is_empty() || c.password.len() > 1024 {
        return Err(Fault::new("password", "must be 1 to 1024 bytes"));
    }
    if let Some((_, other)) = consumers.basic_auth.get(&c.username) {
        return Err(Fault::new(
            "username",
            format!("{:?} is already consumer {:?}'s", c.username, &*other.name),
        ));
    }
    consumers
        .basic_auth
        .insert(c.username, (c.password, consumer.clone()));
    Ok(())
}

const MISSING: &str = "Missing authorization in request";
const MALFORMED: &str = "Invalid authorization in request";
const INVALID: &str = "Invalid user authorization";

/// `user:password` from an `Authorization: Basic ...` value.
fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl Plugin for BasicAuth {
    fn rewrite(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let Some(value) = req.headers.get(header::AUTHORIZATION) else {
            let mut r = reject(StatusCode::UNAUTHORIZED, MISSING);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm='.'"),
            );
            return self.anonymous.or_refuse(ctx, r);
        };
        let Some((user, password)) = credentials(value) else {
            return self
                .anonymous
                .or_refuse(ctx, reject(StatusCode::UNAUTHORIZED, MALFORMED));
        };
        let consumer = match ctx.consumers().basic_auth.get(&user) {
            // Constant time: how long a wrong password takes says nothing
            // about how much of it was right.
            Some((expected, consumer))
                if bool::from(subtle::ConstantTimeEq::ct_eq(
                    expected.as_bytes(),
                    password.as_bytes(),
                )) =>
            {
                consumer.clone()
            }
            _ => {
                return self
                    .anonymous
                    .or_refuse(ctx, reject(StatusCode::UNAUTHORIZED, INVALID))
            }
        };
        ctx.consumer = Some(consumer);
        if self.hide_credentials {
            req.headers.remove(header::AUTHORIZATION);
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_faults, body_text, consumers, request, run_rewrite};
    use super::*;

    fn basic(user_password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
    }

    #[test]
    fn good_credentials_name_the_consumer_and_bad_ones_get_apisix_401s() {
        let compiled = consumers(&[(
            "jack",
            serde_json::json!({"basic-auth": {"username": "jack", "password": "s3cr:et"}}),
        )]);
        let p = compile(
            &serde_json::json!({"hide_credentials": true}),
            &super::super::testing::env(),
        )
        .expect("valid");
        let mut req = request("/", &[("authorization", &basic("jack:s3cr:et"))]);
        let (flow, consumer) = run_rewrite(&p, &compiled, &mut req);
        assert!(matches!(flow, Flow::Continue), "{flow:?}");
        assert_eq!(consumer.as_deref(), Some("jack"));
        assert!(!req.headers.contains_key("authorization"), "hidden");

        for (value, message) in [
            (None, MISSING),
            (Some("Bearer x".to_owned()), MALFORMED),
            (Some("Basic !!!".to_owned()), MALFORMED),
            (Some(basic("no-colon")), MALFORMED),
            (Some(basic("jack:wrong")), INVALID),
            (Some(basic("jack:s3cr")), INVALID),
            (Some(basic("rose:s3cr:et")), INVALID),
            (Some(basic(":")), INVALID),
        ] {
            let headers: Vec<(&str, &str)> = value
                .iter()
                .map(|v| ("authorization", v.as_str()))
                .collect();
            let mut req = request("/", &headers);
            let (flow, consumer) = run_rewrite(&p, &compiled, &mut req);
            let Flow::Respond(r) = flow else {
                panic!("{value:?}: {flow:?}")
            };
            assert_eq!(r.status(), 401);
            let challenge = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            assert_eq!(challenge.is_some(), value.is_none(), "{value:?}");
            assert_eq!(
                body_text(r),
                format!("{{\"message\":\"{message}\"}}\n"),
                "{value:?}"
            );
            assert_eq!(consumer, None);
        }
    }

    #[test]
    fn bad_configs_and_credentials_name_their_field() {
        assert_faults(
            compile,
            &[
                (
                    serde_json::json!({"hide_credentials": "yes"}),
                    ".hide_credentials",
                    "invalid type",
                ),
                (
                    serde_json::json!({"username": "a"}),
                    ".username",
                    "unknown field",
                ),
            ],
        );
        super::super::testing::assert_credential_faults(
            file_credential,
            &[
                (
                    serde_json::json!({"username": "u"}),
                    "",
                    "missing field `password`",
                ),
                (
                    serde_json::json!({"username": "u:v", "password": "p"}),
                    ".username",
                    "without `:`",
                ),
                (
                    serde_json::json!({"username": "", "password": "p"}),
                    ".username",
                    "1 to 256",
                ),
                (
                    serde_json::json!({"username": "u", "password": ""}),
                    ".password",
                    "1 to 1024",
                ),
            ],
        );
        let mut table = Consumers::default();
        let a = super::super::testing::consumer("a");
        file_credential(
            &serde_json::json!({"username": "u", "password": "p"}),
            &a,
            &mut table,
        )
        .expect("first");
        let fault = file_credential(
            &serde_json::json!({"username": "u", "password": "q"}),
            &a,
            &mut table,
        )
        .expect_err("twice");
        assert!(
            fault.message.contains("already consumer"),
            "{}",
            fault.message
        );
    }
}
