//! `request-id`: gives every request an id, in a request header for the app
//! and (by default) in the response, as APISIX's plugin of that name.
//!
//! A request that already carries the header keeps its id. Ids are UUID v4
//! (`algorithm: uuid`, the default), nanoid (21 characters of the URL-safe
//! alphabet), or `range_id` (`length` characters of `char_set`).

use std::sync::Arc;

use http::{request, HeaderName, HeaderValue};
use rand::Rng;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{in_range, parse, Ctx, Descriptor, Env, Fault, Flow, Plugin};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("request-id", 12015, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default = "default_header")]
    header_name: String,
    /// Also put the id on the response (unless the app set one).
    #[serde(default = "yes")]
    include_in_response: bool,
    #[serde(default)]
    algorithm: Algorithm,
    #[serde(default)]
    range_id: RangeId,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Algorithm {
    #[default]
    Uuid,
    Nanoid,
    RangeId,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RangeId {
    /// The characters an id is drawn from; at least 6, ASCII.
    #[serde(default = "default_char_set")]
    char_set: String,
    /// 6 to 128.
    #[serde(default = "default_length")]
    #[schemars(range(min = 6, max = 128))]
    length: u32,
}

impl Default for RangeId {
    fn default() -> Self {
        RangeId {
            char_set: default_char_set(),
            length: default_length(),
        }
    }
}

fn default_header() -> String {
    "X-Request-Id".to_owned()
}

fn yes() -> bool {
    true
}

fn default_char_set() -> String {
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".to_owned()
}

fn default_length() -> u32 {
    16
}

const NANOID_ALPHABET: &[u8; 64] =
    b"useandom-26T198340PX75pxJACKVERYMINDBUSHWOLF_GQZbfghjklqvwyzrict";

#[derive(Debug)]
struct RequestId {
    header: HeaderName,
    include_in_response: bool,
    algorithm: Algorithm,
    char_set: Vec<u8>,
    length: usize,
}

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    let header = super::header_name("header_name", &config.header_name)?;
    in_range("range_id.length", config.range_id.length, 6..=128)?;
    let char_set = config.range_id.char_set.into_bytes();
    let printable = char_set.iter().all(|b| b.is_ascii_graphic());
    if char_set.len() < 6 || !printable {
        return Err(Fault::new(
            "range_id.char_set",
            "needs at least 6 characters, printable ASCII",
        ));
    }
    Ok(Arc::new(RequestId {
        header,
        include_in_response: config.include_in_response,
        algorithm: config.algorithm,
        char_set,
        length: config.range_id.length as usize,
    }))
}

impl RequestId {
    /// A new id, made on the stack: one allocation per request, the
    /// header value's own.
    fn generate(&self) -> HeaderValue {
        let mut rng = rand::rng();
        let mut buf = [0u8; 128];
        let id: &[u8] = match self.algorithm {
            Algorithm::Uuid => uuid::Builder::from_random_bytes(rng.random())
                .into_uuid()
                .hyphenated()
                .encode_lower(&mut buf[..uuid::fmt::Hyphenated::LENGTH])
                .as_bytes(),
            Algorithm::Nanoid => {
                for b in &mut buf[..21] {
                    *b = NANOID_ALPHABET[rng.random_range(0..64)];
                }
                &buf[..21]
            }
            Algorithm::RangeId => {
                // `length` is at most 128 (checked at load).
                let n = self.length.min(buf.len());
                for b in &mut buf[..n] {
                    *b = self.char_set[rng.random_range(0..self.char_set.len())];
                }
                &buf[..n]
            }
        };
        // Every byte is printable ASCII (the alphabets are checked at
        // load), so the value is always valid.
        super::unindexed(HeaderValue::from_bytes(id).unwrap_or(HeaderValue::from_static("-")))
    }
}

impl Plugin for RequestId {
    fn rewrite(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let value = match req.headers.get(&self.header) {
            Some(existing) => existing.clone(),
            None => {
                let value = self.generate();
                req.headers.insert(self.header.clone(), value.clone());
                value
            }
        };
        if self.include_in_response {
            ctx.default_response_header(self.header.clone(), value);
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{consumers, ctx, env, request};
    use super::*;

    fn generated(config: serde_json::Value) -> String {
        let p = compile(&config, &env()).expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let mut req = request("/", &[]);
        assert!(matches!(p.rewrite(&mut ctx, &mut req), Flow::Continue));
        let name = config["header_name"].as_str().unwrap_or("x-request-id");
        req.headers[name].to_str().unwrap().to_owned()
    }

    #[test]
    fn generated_ids_stay_out_of_hpack_tables_both_ways() {
        let p = compile(&serde_json::json!({}), &env()).expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let mut req = request("/", &[]);
        assert!(matches!(p.rewrite(&mut ctx, &mut req), Flow::Continue));
        assert!(req.headers["x-request-id"].is_sensitive(), "upstream");
        let (name, sent, _) = &ctx.response_headers[0];
        assert_eq!(name, "x-request-id");
        assert_eq!(sent, &req.headers["x-request-id"]);
        assert!(sent.is_sensitive(), "downstream");
    }

    #[test]
    fn ids_have_each_algorithms_shape() {
        let id = generated(serde_json::json!({}));
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4', "version 4: {id}");
        assert_eq!(id.matches('-').count(), 4);
        assert_ne!(id, generated(serde_json::json!({})));
        let id = generated(serde_json::json!({"algorithm": "nanoid"}));
        assert_eq!(id.len(), 21);
        assert!(id.bytes().all(|b| NANOID_ALPHABET.contains(&b)), "{id}");
        let id = generated(
            serde_json::json!({"algorithm": "range_id", "range_id": {"char_set": "abcdef", "length": 8}, "header_name": "x-id"}),
        );
        assert_eq!(id.len(), 8);
        assert!(id.bytes().all(|b| b"abcdef".contains(&b)), "{id}");
    }

    #[test]
    fn a_client_id_is_kept_and_echoed() {
        let p = compile(&serde_json::json!({}), &env()).expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let mut req = request("/", &[("x-request-id", "abc")]);
        p.rewrite(&mut ctx, &mut req);
        assert_eq!(req.headers["x-request-id"], "abc");
        let queued: Vec<_> = ctx
            .response_headers
            .iter()
            .map(|(n, v, r)| (n.as_str(), v.to_str().unwrap(), *r))
            .collect();
        assert_eq!(
            queued,
            [("x-request-id", "abc", false)],
            "echoed unless the app set one"
        );
        let quiet =
            compile(&serde_json::json!({"include_in_response": false}), &env()).expect("valid");
        let mut ctx = super::super::testing::ctx(&compiled);
        quiet.rewrite(&mut ctx, &mut req);
        assert!(ctx.response_headers.is_empty());
    }

    #[test]
    fn bad_configs_name_their_field() {
        for (config, field) in [
            (serde_json::json!({"header_name": "a b"}), ".header_name"),
            (serde_json::json!({"algorithm": "snowflake"}), ".algorithm"),
            (
                serde_json::json!({"range_id": {"length": 5}}),
                ".range_id.length",
            ),
            (
                serde_json::json!({"range_id": {"length": 129}}),
                ".range_id.length",
            ),
            (
                serde_json::json!({"range_id": {"length": -1}}),
                ".range_id.length",
            ),
            (
                serde_json::json!({"range_id": {"char_set": "abc"}}),
                ".range_id.char_set",
            ),
            (
                serde_json::json!({"include_in_response": "yes"}),
                ".include_in_response",
            ),
        ] {
            let fault = compile(&config, &env()).expect_err("rejected");
            assert_eq!(fault.field, field, "{config}: {}", fault.message);
        }
    }
}
