//! The runtime: compile errors, merge and priority order, consumer merge,
//! early responses, and the response phases.

use serde_json::json;

use super::testing::{body_text, request};
use super::*;

fn config(value: serde_json::Value) -> MeshConfig {
    MeshConfig::from_json(&value.to_string()).expect("valid mesh config")
}

fn layer(at: &str, plugins: serde_json::Value) -> Vec<Entry> {
    let plugins: Plugins = serde_json::from_value(plugins).expect("a plugins map");
    compile_layer(at, &plugins, &testing::env()).expect("compiles")
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn chains_run_by_apisix_priority_and_the_later_layer_wins() {
    let service = layer(
        "s",
        json!({"limit-count": {"count": 1, "time_window": 60}, "prometheus": {}}),
    );
    let route = layer(
        "r",
        json!({"limit-count": {"count": 5, "time_window": 60}, "request-id": {}, "key-auth": {}}),
    );
    let chain = chain_of(&service, &route);
    assert_eq!(
        chain.names().collect::<Vec<_>>(),
        ["request-id", "key-auth", "limit-count", "prometheus"]
    );
    // The route's limit-count is the one in the chain.
    let limit = chain
        .0
        .iter()
        .find(|e| e.name == "limit-count")
        .expect("there");
    assert!(
        format!("{:?}", limit.plugin).contains("count: 5"),
        "{limit:?}"
    );
    // The service's prometheus is shared, not copied.
    let shared = chain
        .0
        .iter()
        .find(|e| e.name == "prometheus")
        .expect("there");
    assert!(Arc::ptr_eq(&shared.plugin, &service[1].plugin));
}

#[test]
fn unknown_plugins_and_bad_fields_are_named_with_their_path() {
    let env = testing::env();
    let plugins: Plugins = serde_json::from_value(json!({"key-oauth": {}})).expect("map");
    let e = compile_layer("outbound.services[0].plugins", &plugins, &env).expect_err("unknown");
    assert!(
        e.to_string().starts_with(
            "outbound.services[0].plugins.key-oauth: unknown plugin \"key-oauth\"; known plugins: "
        ) && e
            .to_string()
            .contains(", key-auth, limit-conn, limit-count, limit-req, "),
        "{e}"
    );
    let plugins: Plugins =
        serde_json::from_value(json!({"limit-count": {"count": "x", "time_window": 1}}))
            .expect("map");
    let e = compile_layer("r.plugins", &plugins, &env).expect_err("wrong type");
    assert_eq!(
        e.to_string(),
        "r.plugins.limit-count.count: plugin limit-count: invalid type: string \"x\", expected u64"
    );
    let plugins: Plugins =
        serde_json::from_value(json!({"limit-count": {"time_window": 1}})).expect("map");
    let e = compile_layer("r.plugins", &plugins, &env).expect_err("missing");
    assert_eq!(
        e.to_string(),
        "r.plugins.limit-count: plugin limit-count: missing field `count`"
    );
    let e = compile(
        &config(
            json!({"version": "v", "consumers": [{"username": "a", "plugins": {"key-auth": {}}}]}),
        ),
        &env,
    )
    .expect_err("a credential needs its key");
    assert_eq!(
        e.to_string(),
        "consumers[0].plugins.key-auth: plugin key-auth: missing field `key`"
    );
    let e = compile(
        &config(json!({"version": "v", "globalRules": [{"id": "g", "plugins": {"nope": {}}}]})),
        &env,
    )
    .expect_err("unknown in a global rule");
    assert!(
        e.to_string()
            .starts_with("globalRules[0].plugins.nope: unknown plugin"),
        "{e}"
    );
    let e = compile(
        &config(json!({"version": "v", "inbound": {"ports": [{"port": 80, "routes": [{"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "plugins": {"key-auth": {"header": 1}}}]}]}})),
        &env,
    )
    .expect_err("inbound route");
    assert_eq!(
        e.to_string(),
        "inbound.ports[0].routes[0].plugins.key-auth.header: plugin key-auth: invalid type: integer `1`, expected a string"
    );
}

/// key-auth on the route, limit-count on the consumer: the consumer's
/// plugins join after authentication and the app sees the consumer.
#[test]
fn consumers_authenticate_and_their_plugins_merge_in() {
    let compiled = compile(
        &config(json!({"version": "v", "consumers": [
            {"username": "jack", "plugins": {"key-auth": {"key": "k1"}, "limit-count": {"count": 1, "time_window": 60, "rejected_code": 429}}},
            {"username": "rose", "plugins": {"key-auth": {"key": "k2"}}}
        ]})),
        &testing::env(),
    )
    .expect("compiles");
    let chain = chain_of(&[], &layer("r", json!({"key-auth": {}})));
    let run = |key: &str| {
        block_on(async {
            let mut ctx = testing::ctx(&compiled);
            let mut req = request("/", &[("apikey", key), ("x-remora-consumer", "forged")]);
            let early = ctx.enter(&chain, &mut req).await;
            let seen = req
                .headers
                .get("x-remora-consumer")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            (
                early.map(|r| r.status().as_u16()),
                seen,
                ctx.chain.names().collect::<Vec<_>>(),
            )
        })
    };
    assert_eq!(
        run("k1"),
        (None, Some("jack".into()), vec!["key-auth", "limit-count"])
    );
    assert_eq!(run("k1").0, Some(429), "jack's own limit");
    assert_eq!(run("k2"), (None, Some("rose".into()), vec!["key-auth"]));
    assert_eq!(run("k3").0, Some(401));
}

#[test]
fn global_rules_run_first_and_an_early_response_still_gets_response_phases() {
    let compiled = compile(
        &config(json!({"version": "v", "globalRules": [
            {"id": "ids", "plugins": {"request-id": {"algorithm": "range_id", "range_id": {"char_set": "aaaaaa", "length": 6}}}},
            {"id": "limits", "plugins": {"limit-count": {"count": 1, "time_window": 60, "key_type": "constant", "rejected_msg": "global"}}}
        ]})),
        &testing::env(),
    )
    .expect("compiles");
    // The route's own limit would allow more; the global one runs first.
    let chain = chain_of(
        &[],
        &layer("r", json!({"limit-count": {"count": 9, "time_window": 60}})),
    );
    let run = || {
        block_on(async {
            let mut ctx = testing::ctx(&compiled);
            let mut req = request("/", &[]);
            let response = match ctx.enter(&chain, &mut req).await {
                Some(r) => r,
                None => http::Response::new(crate::body::empty()),
            };
            let response = ctx.respond(response);
            let header = |n: &str| {
                response
                    .headers()
                    .get(n)
                    .map(|v| v.to_str().unwrap_or("").to_owned())
            };
            let got = (
                response.status().as_u16(),
                header("x-request-id"),
                header("x-ratelimit-limit"),
                header("x-ratelimit-remaining"),
            );
            (got, response)
        })
    };
    let first = run();
    assert_eq!(
        first.0,
        (
            200,
            Some("aaaaaa".into()),
            Some("9".into()),
            Some("8".into())
        ),
        "the route's limit-count sets the headers last"
    );
    let (got, response) = run();
    let second = (got, body_text(response));
    assert_eq!(
        second,
        (
            (
                503,
                Some("aaaaaa".into()),
                Some("1".into()),
                Some("0".into())
            ),
            "{\"error_msg\":\"global\"}\n".into()
        )
    );
}

#[test]
fn inbound_routes_pick_their_chain_and_unmatched_requests_get_the_ports() {
    let compiled = compile(
        &config(json!({"version": "v", "inbound": {"ports": [{"port": 8080,
            "plugins": {"request-id": {}},
            "routes": [{"name": "admin", "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}], "plugins": {"key-auth": {}}}]
        }]}})),
        &testing::env(),
    )
    .expect("compiles");
    let port = compiled.inbound_port(8080).expect("port with plugins");
    let (chain, route) = port.select(&request("/admin/x", &[]));
    assert_eq!(
        (chain.names().collect::<Vec<_>>(), &*route),
        (vec!["request-id", "key-auth"], "admin")
    );
    let (chain, route) = port.select(&request("/public", &[]));
    assert_eq!(
        (chain.names().collect::<Vec<_>>(), &*route),
        (vec!["request-id"], "")
    );
    assert!(compiled.inbound_port(9090).is_none());
}

#[test]
fn every_plugin_has_a_schema_and_a_unique_name() {
    let schemas = schemas();
    assert_eq!(schemas.len(), REGISTRY.len(), "names are unique");
    for (name, schema) in schemas {
        assert_eq!(schema["type"], "object", "{name}: {schema}");
    }
    let limit = &(limit_count::DESCRIPTOR.schema)();
    assert_eq!(limit["properties"]["count"]["minimum"], 1);
    assert_eq!(limit["properties"]["rejected_code"]["maximum"], 599);
    assert_eq!(limit["required"], json!(["count", "time_window"]));
}

/// Every plugin has a page in docs/plugins/, and each YAML block on it is
/// a complete mesh config that the proxy takes, with the plugin in it.
#[tokio::test]
async fn every_plugin_page_has_a_config_that_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/plugins");
    let mut pages = 0;
    for d in REGISTRY {
        let path = dir.join(format!("{}.md", d.name));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}: every plugin needs a page", path.display()));
        let blocks: Vec<&str> = text
            .split("```yaml\n")
            .skip(1)
            .filter_map(|rest| rest.split("\n```").next())
            .collect();
        assert!(!blocks.is_empty(), "{}: no yaml block", path.display());
        for (i, yaml) in blocks.iter().enumerate() {
            let at = format!("{} (yaml block {})", path.display(), i + 1);
            let config = MeshConfig::from_yaml(yaml).unwrap_or_else(|e| panic!("{at}: {e}"));
            let json = serde_json::to_string(&config).expect("serializes");
            assert!(
                json.contains(&format!("\"{}\":", d.name)),
                "{at}: the example does not use {}",
                d.name
            );
            let state = crate::state::State::new(
                Arc::new(crate::config::defaults()),
                crate::metrics::Metrics::new(),
            );
            state.apply(config).unwrap_or_else(|e| panic!("{at}: {e}"));
        }
        pages += 1;
    }
    let on_disk = std::fs::read_dir(&dir).expect("docs/plugins").count();
    assert_eq!(
        on_disk, pages,
        "a page for a plugin the proxy does not know"
    );
}

/// Each plugin's JSON Schema is committed under proxy/schema/plugins/ for
/// editors and the control plane; a test keeps the files current.
/// Regenerate with `UPDATE_SCHEMA=1 cargo test -p remora-proxy plugins`.
#[test]
fn committed_plugin_schemas_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/plugins");
    let update = std::env::var_os("UPDATE_SCHEMA").is_some();
    if update {
        std::fs::create_dir_all(&dir).expect("schema dir");
    }
    for d in REGISTRY {
        let mut schema = json!({ "config": (d.schema)() });
        if let Some((_, consumer)) = d.credential {
            schema["consumer"] = consumer();
        }
        let mut text = serde_json::to_string_pretty(&schema).expect("serializes");
        text.push('\n');
        let path = dir.join(format!("{}.schema.json", d.name));
        if update {
            std::fs::write(&path, &text).expect("writes");
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is stale: run UPDATE_SCHEMA=1 cargo test -p remora-proxy plugins and commit it",
            path.display()
        );
    }
    let files = std::fs::read_dir(&dir).map(Iterator::count).unwrap_or(0);
    assert_eq!(
        files,
        REGISTRY.len(),
        "a schema for a plugin the proxy does not know"
    );
}

#[test]
fn a_check_names_the_field_and_leaves_the_hosts_files_alone() {
    let check = PluginCheck::new(["default/web:80".to_owned()], ["jack".to_owned()]);
    let layer = |v: serde_json::Value| -> Plugins { serde_json::from_value(v).unwrap() };
    assert_eq!(
        check.plugins(
            "spec.plugins",
            &layer(json!({"limit-count": {"count": 0, "time_window": 60}}))
        ),
        Err("spec.plugins.limit-count.count: plugin limit-count: 0 is out of range: 1 to 1000000000".to_owned())
    );
    let err = check
        .plugins("spec.plugins", &layer(json!({"no-such": {}})))
        .unwrap_err();
    assert!(
        err.starts_with("spec.plugins.no-such: unknown plugin \"no-such\""),
        "{err}"
    );
    // A log file only the proxy's host has: not opened, not refused.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent").join("access.log");
    assert_eq!(
        check.plugins(
            "spec.plugins",
            &layer(json!({"file-logger": {"path": path}, "http-logger": {"uri": "http://127.0.0.1:9/logs"}}))
        ),
        Ok(())
    );
    assert!(!path.exists());
    assert_eq!(
        check.plugins(
            "spec.plugins",
            &layer(json!({"file-logger": {"path": "relative.log"}}))
        ),
        Err("spec.plugins.file-logger.path: plugin file-logger: \"relative.log\" is not an absolute path".to_owned())
    );
    let consumer = remora_api::Consumer {
        username: "jack".into(),
        desc: None,
        plugins: layer(json!({"key-auth": {}})),
    };
    let err = check.consumer("spec", &consumer).unwrap_err();
    assert!(err.starts_with("spec.plugins.key-auth"), "{err}");
}

#[tokio::test]
async fn a_logged_body_dropped_midway_queues_one_entry_with_what_was_sent() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("access.log");
    let compiled = compile(
        &config(json!({"version": "v", "globalRules": [
            {"id": "log", "plugins": {"file-logger": {
                "path": path.to_str(),
                "log_format": {"b": "$body_bytes_sent", "s": "$status"}
            }}}
        ]})),
        &testing::env(),
    )
    .expect("compiles");
    let chain = chain_of(&[], &layer("r", json!({})));
    let mut ctx = testing::ctx(&compiled);
    let mut req = request("/", &[]);
    assert!(ctx.enter(&chain, &mut req).await.is_none());
    let frames =
        futures_util::stream::iter(["0123456789", "abc", "never"].map(|s| {
            Ok::<_, crate::error::BoxError>(http_body::Frame::data(bytes::Bytes::from(s)))
        }));
    let source = http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(frames));
    let response = ctx.respond(http::Response::new(source));
    let mut body = response.into_body();
    for _ in 0..2 {
        http_body_util::BodyExt::frame(&mut body)
            .await
            .expect("frame")
            .expect("data");
    }
    assert!(
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .is_empty(),
        "not before the body is over"
    );
    drop(body);
    for _ in 0..200 {
        if !std::fs::read_to_string(&path)
            .unwrap_or_default()
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(
        std::fs::read_to_string(&path).expect("written"),
        "{\"b\":\"13\",\"s\":\"200\"}\n",
        "exactly one line, with the 13 bytes sent"
    );
}
