//! What APISIX's limit plugins (limit-count, limit-req, limit-conn) share:
//! how a request's key is made (`key_type`, `key`) and how a rejection
//! looks (`rejected_code`, `rejected_msg`); and `redis`, the store that
//! `policy: redis` puts limit-count's counters and limit-req's buckets in.

use std::borrow::Cow;

use http::{request, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::vars::{Template, Var};
use super::{in_range, json_response, Ctx, Fault};
use crate::body::{empty, Body};

pub(crate) mod redis;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum KeyType {
    #[default]
    Var,
    VarCombination,
    Constant,
}

/// How a request's key is made, compiled.
#[derive(Debug)]
pub(crate) enum Key {
    Var(Var),
    Combination(Template),
    Constant,
}

impl Key {
    pub(crate) fn compile(key_type: KeyType, key: &str) -> Result<Self, Fault> {
        match key_type {
            KeyType::Constant => Ok(Key::Constant),
            KeyType::Var => Var::parse(key).map(Key::Var).ok_or_else(|| {
                Fault::new(
                    "key",
                    format!("{key:?} is not a variable this proxy knows (remote_addr, consumer_name, http_<header>, arg_<name>, ...)"),
                )
            }),
            KeyType::VarCombination => {
                let template = Template::compile("key", key)?;
                if template.vars() == 0 {
                    return Err(Fault::new(
                        "key",
                        "a var_combination names variables with `$`, e.g. \"$remote_addr $consumer_name\"",
                    ));
                }
                Ok(Key::Combination(template))
            }
        }
    }

    /// The request's key; the client address when its variables are all
    /// empty, as in APISIX.
    pub(crate) fn of<'r>(&self, ctx: &'r Ctx<'_>, req: &'r request::Parts) -> Cow<'r, str> {
        let key = match self {
            Key::Constant => Some(Cow::Borrowed("")),
            Key::Var(var) => var.value(ctx, req),
            Key::Combination(template) => {
                let (key, resolved) = template.render(ctx, req);
                (resolved > 0).then_some(Cow::Owned(key))
            }
        };
        key.unwrap_or_else(|| Cow::Owned(ctx.remote_addr.ip().to_string()))
    }
}

/// A limit's rejection: `rejected_code`, and `{"error_msg": rejected_msg}`
/// when a message is set (an empty body otherwise).
#[derive(Debug)]
pub(crate) struct Rejection {
    status: StatusCode,
    body: Option<String>,
}

impl Rejection {
    pub(crate) fn compile(code: u16, message: Option<&str>) -> Result<Self, Fault> {
        in_range("rejected_code", code, 200..=599)?;
        if message == Some("") {
            return Err(Fault::new("rejected_msg", "must not be empty"));
        }
        Ok(Rejection {
            status: StatusCode::from_u16(code)
                .map_err(|_| Fault::new("rejected_code", "not a status code"))?,
            body: message.map(|m| serde_json::json!({ "error_msg": m }).to_string() + "\n"),
        })
    }

    pub(crate) fn response(&self) -> Response<Body> {
        match &self.body {
            Some(body) => json_response(self.status, body.clone()),
            None => {
                let mut r = Response::new(empty());
                *r.status_mut() = self.status;
                r
            }
        }
    }
}

pub(crate) fn default_key() -> String {
    "remote_addr".to_owned()
}

pub(crate) fn default_rejected_code() -> u16 {
    503
}
