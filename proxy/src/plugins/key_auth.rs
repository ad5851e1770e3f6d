//! `key-auth`: authenticates a consumer by an API key in a header or the
//! query string, as APISIX's plugin of that name.
//!
//! The route config says where the key is (`header`, default `apikey`;
//! `query`, default `apikey`; the header wins) and whether to remove it
//! before the request goes on (`hide_credentials`). Each consumer's
//! `key-auth: {key: ...}` is filed in a table at config load, so a request
//! costs one hash lookup. Rejections are APISIX's: 401 with
//! `{"message":"Missing API key in request"}` or `"Invalid API key in request"`.

use std::sync::Arc;

use http::{request, HeaderName, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::anonymous::Anonymous;
use super::{
    header_name, parse, reject, Consumer, Consumers, Ctx, Descriptor, Env, Fault, Flow, Plugin,
};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("key-auth", 2500, super::schema_of::<Config>, compile)
        .auth(file_credential, super::schema_of::<Credential>);

/// The route, service or port side.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The request header that carries the key.
    #[serde(default = "default_name")]
    header: String,
    /// The query parameter that carries the key, if the header is absent.
    #[serde(default = "default_name")]
    query: String,
    /// Remove the key from the request before it goes on.
    #[serde(default)]
    hide_credentials: bool,
    /// The consumer (a `consumers[].username`) a request without a valid
    /// credential runs as; unset, it gets 401.
    #[serde(default)]
    anonymous_consumer: Option<String>,
}

fn default_name() -> String {
    "apikey".to_owned()
}

/// The consumer side: `consumers[].plugins.key-auth`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credential {
    /// The consumer's key, unique among consumers; 1 to 4096 bytes.
    key: String,
}

#[derive(Debug)]
struct KeyAuth {
    header: HeaderName,
    query: String,
    hide_credentials: bool,
    anonymous: Anonymous,
}

fn compile(value: &serde_json::Value, env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    let header = header_name("header", &config.header)?;
    if config.query.is_empty() {
        return Err(Fault::new("query", "must not be empty"));
    }
    Ok(Arc::new(KeyAuth {
        header,
        query: config.query,
        hide_credentials: config.hide_credentials,
        anonymous: Anonymous::compile(config.anonymous_consumer, env)?,
    }))
}

fn file_credential(
    value: &serde_json::Value,
    consumer: &Arc<Consumer>,
    consumers: &mut Consumers,
) -> Result<(), Fault> {
    let credential: Credential = parse(value)?;
    if credential.key.is_empty() || credential.key.len() > 4096 {
        return Err(Fault::new("key", "must be 1 to 4096 bytes"));
    }
    if let Some(other) = consumers.key_auth.get(&credential.key) {
        return Err(Fault::new(
            "key",
            format!("the same key is already consumer {:?}'s", &*other.name),
        ));
    }
    consumers.key_auth.insert(credential.key, consumer.clone());
    Ok(())
}

impl Plugin for KeyAuth {
    fn rewrite(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let from_header = req.headers.get(&self.header).map(|v| v.as_bytes());
        let found = match from_header {
            Some(key) => ctx
                .consumers()
                .key_auth
                .get(std::str::from_utf8(key).unwrap_or("")),
            None => match super::vars::query_arg(&req.uri, &self.query) {
                Some(key) => ctx.consumers().key_auth.get(key.as_ref()),
                None => {
                    return self
                        .anonymous
                        .or_refuse(ctx, reject(StatusCode::UNAUTHORIZED, MISSING))
                }
            },
        };
        let Some(consumer) = found.cloned() else {
            return self
                .anonymous
                .or_refuse(ctx, reject(StatusCode::UNAUTHORIZED, INVALID));
        };
        ctx.consumer = Some(consumer);
        if self.hide_credentials {
            if from_header.is_some() {
                req.headers.remove(&self.header);
            } else {
                super::vars::remove_query_arg(&mut req.uri, &self.query);
            }
        }
        Flow::Continue
    }
}

const MISSING: &str = "Missing API key in request";
const INVALID: &str = "Invalid API key in request";

#[cfg(test)]
mod tests {
    use super::super::testing::{consumers, request, run_rewrite};
    use super::*;

    fn plugin(config: serde_json::Value) -> Arc<dyn Plugin> {
        compile(&config, &super::super::testing::env()).expect("valid")
    }

    #[test]
    fn a_known_key_in_the_header_names_the_consumer() {
        let consumers = consumers(&[("jack", serde_json::json!({"key-auth": {"key": "k-jack"}}))]);
        let p = plugin(serde_json::json!({}));
        let mut req = request("/x", &[("apikey", "k-jack")]);
        let (flow, consumer) = run_rewrite(&p, &consumers, &mut req);
        assert!(matches!(flow, Flow::Continue), "{flow:?}");
        assert_eq!(consumer.as_deref(), Some("jack"));
        assert_eq!(
            req.headers["apikey"], "k-jack",
            "kept without hide_credentials"
        );
    }

    #[test]
    fn missing_and_wrong_keys_get_apisix_401s() {
        let consumers = consumers(&[("jack", serde_json::json!({"key-auth": {"key": "k-jack"}}))]);
        let p = plugin(serde_json::json!({}));
        for (req, message) in [
            (request("/x", &[]), MISSING),
            (request("/x", &[("apikey", "nope")]), INVALID),
            (request("/x", &[("apikey", "")]), INVALID),
            (request("/x", &[("apikey", "K-JACK")]), INVALID),
            (request("/x?apikey=nope", &[]), INVALID),
            (request("/x", &[("other", "k-jack")]), MISSING),
        ] {
            let mut req = req;
            let (flow, consumer) = run_rewrite(&p, &consumers, &mut req);
            let Flow::Respond(r) = flow else {
                panic!("{message}: {flow:?}")
            };
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(
                super::super::testing::body_text(r),
                format!("{{\"message\":\"{message}\"}}\n")
            );
            assert_eq!(consumer, None);
        }
    }

    #[test]
    fn the_query_is_read_when_the_header_is_absent_and_hidden_on_request() {
        let consumers = consumers(&[("jack", serde_json::json!({"key-auth": {"key": "a b&c"}}))]);
        let p =
            plugin(serde_json::json!({"header": "x-key", "query": "k", "hide_credentials": true}));
        let mut req = request("/x?a=1&k=a%20b%26c&z=2", &[]);
        let (flow, consumer) = run_rewrite(&p, &consumers, &mut req);
        assert!(matches!(flow, Flow::Continue), "{flow:?}");
        assert_eq!(consumer.as_deref(), Some("jack"));
        assert_eq!(req.uri, "/x?a=1&z=2");
        let mut req = request("/x", &[("x-key", "a b&c")]);
        let (_, consumer) = run_rewrite(&p, &consumers, &mut req);
        assert_eq!(consumer.as_deref(), Some("jack"));
        assert!(!req.headers.contains_key("x-key"), "hidden");
    }

    #[test]
    fn bad_configs_name_their_field() {
        super::super::testing::assert_faults(
            compile,
            &[
                (serde_json::json!({"header": 5}), ".header", "invalid type"),
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
                    serde_json::json!({"key": "x"}),
                    ".key",
                    "unknown field `key`",
                ),
                (serde_json::json!("x"), "", "invalid type"),
            ],
        );
    }

    #[test]
    fn two_consumers_with_one_key_are_refused() {
        let mut table = Consumers::default();
        let a = super::super::testing::consumer("a");
        let b = super::super::testing::consumer("b");
        file_credential(&serde_json::json!({"key": "same"}), &a, &mut table).expect("first");
        let fault = file_credential(&serde_json::json!({"key": "same"}), &b, &mut table)
            .expect_err("second");
        assert_eq!(fault.field, ".key");
        assert!(
            fault.message.contains("consumer \"a\""),
            "{}",
            fault.message
        );
        let fault = file_credential(&serde_json::json!({}), &b, &mut table).expect_err("no key");
        assert!(
            fault.message.contains("missing field `key`"),
            "{}",
            fault.message
        );
        let fault =
            file_credential(&serde_json::json!({"key": ""}), &b, &mut table).expect_err("empty");
        assert_eq!(fault.field, ".key");
    }
}
