//! Helpers for the plugins' unit tests: a compile environment, consumers,
//! requests, and running one phase without a proxy.

use std::sync::Arc;

use http::{request, Request, Response};
use http_body_util::BodyExt;

use super::{Compiled, Consumer, Ctx, Env, Flow, Plugin};
use crate::body::Body;
use crate::direction::Direction;
use crate::metrics::Metrics;

pub(crate) fn env() -> Env {
    Env::new(&Metrics::new())
}

/// An environment for a config that defines these backends and consumers.
pub(crate) fn env_naming(backends: &[&str], consumers: &[&str]) -> Env {
    env().with_names(super::Names {
        backends: backends.iter().map(|b| (*b).to_owned()).collect(),
        consumers: consumers.iter().map(|c| (*c).to_owned()).collect(),
    })
}

/// Compiled plugin state with these consumers (name, plugins).
pub(crate) fn consumers(list: &[(&str, serde_json::Value)]) -> Compiled {
    let consumers: Vec<serde_json::Value> = list
        .iter()
        .map(|(name, plugins)| serde_json::json!({"username": name, "plugins": plugins}))
        .collect();
    let config = remora_api::MeshConfig::from_json(
        &serde_json::json!({"version": "t", "consumers": consumers}).to_string(),
    )
    .expect("valid config");
    super::compile(&config, &env()).expect("compiles")
}

pub(crate) fn consumer(name: &str) -> Arc<Consumer> {
    Arc::new(Consumer {
        name: Arc::from(name),
        header: http::HeaderValue::from_str(name).expect("header value"),
        plugins: Vec::new(),
    })
}

pub(crate) fn request(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut builder = Request::builder().uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("request").into_parts().0
}

pub(crate) fn ctx(compiled: &Compiled) -> Ctx<'_> {
    Ctx::new(
        Direction::Inbound,
        "10.0.0.7:40000".parse().expect("addr"),
        compiled,
    )
}

/// Runs `rewrite` once; the flow and the consumer it left.
pub(crate) fn run_rewrite(
    plugin: &Arc<dyn Plugin>,
    compiled: &Compiled,
    req: &mut request::Parts,
) -> (Flow, Option<String>) {
    let mut ctx = ctx(compiled);
    let flow = plugin.rewrite(&mut ctx, req);
    (flow, ctx.consumer_name().map(str::to_owned))
}

pub(crate) fn body_text(response: Response<Body>) -> String {
    let body = response.into_body();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let bytes = rt
        .block_on(body.collect())
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Each config is rejected by `compile` naming `field` with a message that
/// contains the text given.
pub(crate) fn assert_faults(compile: super::CompileFn, cases: &[(serde_json::Value, &str, &str)]) {
    let env = env();
    for (config, field, message) in cases {
        let fault = match compile(config, &env) {
            Ok(_) => panic!("{config}: accepted"),
            Err(fault) => fault,
        };
        assert_eq!(fault.field, *field, "{config}: {}", fault.message);
        assert!(
            fault.message.contains(message),
            "{config}: {}",
            fault.message
        );
    }
}

/// Each consumer credential is refused by `file` naming `field` with a
/// message that contains the text given.
pub(crate) fn assert_credential_faults(
    file: super::CredentialFn,
    cases: &[(serde_json::Value, &str, &str)],
) {
    let mut table = super::Consumers::default();
    let owner = consumer("owner");
    for (value, field, message) in cases {
        let fault = match file(value, &owner, &mut table) {
            Ok(()) => panic!("{value}: accepted"),
            Err(fault) => fault,
        };
        assert_eq!(fault.field, *field, "{value}: {}", fault.message);
        assert!(
            fault.message.contains(message),
            "{value}: {}",
            fault.message
        );
    }
}
