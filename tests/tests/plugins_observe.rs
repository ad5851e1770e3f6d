//! The observability plugins through real sidecars: `opentelemetry` spans
//! arrive at an OTLP/HTTP collector the test runs, with one trace id from
//! the client app through both sidecars to the server app, with the
//! `additional_attributes` asked for; samplers export exactly what they
//! decide; `http-logger` delivers one entry per request (exactly the
//! `log_format` fields when one is set) and, with its endpoint hanging, drops and counts exactly what its buffer
//! cannot hold while requests succeed; `file-logger` writes one line per
//! request and follows rotation; invalid configs are rejected naming the
//! plugin and field; APISIX's series of a removed route are dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use remora_e2e::http_apps::{eventually, HttpClient, Req};
use remora_e2e::mesh_config::{
    mesh, round_robin, route, service, vip, wait_version, web, ConfigFile, InboundStandalone,
    Match, Standalone, SERVICE, VIP, VIP_PORT,
};
use remora_e2e::{Pod, TestNet};
use serde_json::{json, Value};

const COLLECTOR_PORT: u16 = 4318;
const SINK_PORT: u16 = 9080;
const DROPPED: &str = "remora_plugin_dropped_total";

/// What an HTTP endpoint the test runs received: each request's path and
/// body, and how many connections it accepted. A hanging one accepts
/// connections and never answers.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Bytes)>>>, Arc<AtomicUsize>);

impl Received {
    fn bodies(&self) -> Vec<(String, Bytes)> {
        self.0.lock().unwrap().clone()
    }

    fn accepted(&self) -> usize {
        self.1.load(Ordering::SeqCst)
    }

    /// Every span of every export, in arrival order.
    fn spans(&self) -> Vec<Span> {
        self.bodies()
            .iter()
            .flat_map(|(path, body)| {
                assert_eq!(path, "/v1/traces");
                let request = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
                request
                    .resource_spans
                    .into_iter()
                    .flat_map(|r| r.scope_spans)
                    .flat_map(|s| s.spans)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every log entry of every batch (JSON arrays).
    fn entries(&self) -> Vec<Value> {
        self.bodies()
            .iter()
            .flat_map(|(_, body)| serde_json::from_slice::<Vec<Value>>(body).unwrap())
            .collect()
    }
}

fn serve(pod: &Pod, port: u16, hang: bool) -> Received {
    let received = Received::default();
    let listener = pod.listen_tcp(port);
    let kept = received.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            kept.1.fetch_add(1, Ordering::SeqCst);
            if hang {
                held.push(stream);
                continue;
            }
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let kept = kept.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await?.to_bytes();
                        kept.0.lock().unwrap().push((path, body));
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    received
}

/// `config` with `plugins` on its outbound service.
fn on_service(mut config: remora_api::MeshConfig, plugins: Value) -> remora_api::MeshConfig {
    config.outbound.services[0].plugins = serde_json::from_value(plugins).unwrap();
    config
}

/// The length of a response head as http1 writes it: status line, the
/// entry's headers, blank line.
fn head_len(status: &str, headers: &Value) -> u64 {
    let headers: u64 = headers
        .as_object()
        .expect("headers")
        .iter()
        .map(|(n, v)| (n.len() + 2 + v.as_str().expect("text").len() + 2) as u64)
        .sum();
    ("HTTP/1.1 ".len() + status.len() + 2) as u64 + headers + 2
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

/// Waits until `count()` reaches `want`, then a little longer, and returns
/// what it is then (so that one too many shows).
async fn settle(want: usize, what: &str, count: impl Fn() -> usize) -> usize {
    eventually(Duration::from_secs(10), what, || async {
        let n = count();
        if n >= want {
            Ok(())
        } else {
            Err(format!("{n} of {want}"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    count()
}

fn otel(sampler: Value, collector: SocketAddr) -> Value {
    json!({
        "sampler": sampler,
        "collector": {"address": collector.to_string()},
        "batch_span_processor": {"inactive_timeout": 0.05, "max_export_batch_size": 64}
    })
}

const CLIENT: i32 = 3;
const SERVER: i32 = 2;

#[tokio::test]
async fn opentelemetry_keeps_one_trace_id_across_both_sidecars() {
    let net = TestNet::new("plug_otel_hops");
    let client = net.pod("client");
    let server = net.pod("srv");
    let obs = net.pod("obs");
    let collector = serve(&obs, COLLECTOR_PORT, false);
    let collector_addr = obs.addr4(COLLECTOR_PORT);
    let app = server.spawn_http_app(8080, "traced");

    // The server sidecar follows the client's decision.
    let server_file = ConfigFile::new("plug_otel_hops_srv");
    server_file.write_json(&json!({
        "version": "srv-v1",
        "inbound": {"ports": [{"port": 8080, "plugins": {
            "opentelemetry": otel(json!({"name": "parent_base"}), collector_addr)
        }}]}
    }));
    let server_proxy = server.mesh_with(&[], &server_file.proxy_args()).await;
    wait_version(&server_proxy, "srv-v1").await;

    let mut config = mesh("v1");
    config.outbound.services.push(service(
        SERVICE,
        VIP,
        VIP_PORT,
        vec![route()
            .name("traced")
            .plugin(
                "opentelemetry",
                otel(json!({"name": "always_on"}), collector_addr),
            )
            .to("app")
            .build()],
    ));
    config.backends = BTreeMap::from([("app".to_owned(), round_robin(&[app.addr()]))]);
    let file = ConfigFile::new("plug_otel_hops");
    file.write(&config);
    let client_proxy = client.mesh_with(&[], &file.proxy_args()).await;
    wait_version(&client_proxy, "v1").await;

    let incoming = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming_parent = "00f067aa0ba902b7";
    let mut c = HttpClient::new(&client, vip());
    for req in [
        Req::get("/hello?x=1").host("web.default"),
        Req::get("/hello").header(
            "traceparent",
            &format!("00-{incoming}-{incoming_parent}-01"),
        ),
        // Malformed: upper-case hex.
        Req::get("/hello").header(
            "traceparent",
            &format!("00-{}-{incoming_parent}-01", incoming.to_uppercase()),
        ),
    ] {
        assert_eq!(c.send(&req).await.unwrap().status, 200);
    }
    let n = settle(6, "six spans", || collector.spans().len()).await;
    assert_eq!(n, 6, "one client and one server span per request");
    let spans = collector.spans();
    let seen = app.requests();
    assert_eq!(seen.len(), 3);

    for (i, request) in seen.iter().enumerate() {
        let sent = request.header_values("traceparent");
        assert_eq!(sent.len(), 1, "{sent:?}");
        let parts: Vec<&str> = sent[0].split('-').collect();
        assert_eq!(
            (parts.len(), parts[0], parts[3]),
            (4, "00", "01"),
            "{sent:?}"
        );
        let trace = parts[1];
        let of_trace: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace).collect();
        assert_eq!(of_trace.len(), 2, "request {i}: both hops in trace {trace}");
        let client_span = of_trace
            .iter()
            .find(|s| s.kind == CLIENT)
            .expect("client span");
        let server_span = of_trace
            .iter()
            .find(|s| s.kind == SERVER)
            .expect("server span");
        assert_eq!(
            server_span.parent_span_id, client_span.span_id,
            "request {i}: the server span's parent is the client span"
        );
        assert_eq!(
            parts[2],
            hex(&server_span.span_id),
            "request {i}: the app's parent is the server span"
        );
        match i {
            1 => {
                assert_eq!(trace, incoming, "a valid traceparent is continued");
                assert_eq!(hex(&client_span.parent_span_id), incoming_parent);
            }
            _ => {
                assert_ne!(trace, incoming);
                assert!(client_span.parent_span_id.is_empty(), "request {i}: a root");
            }
        }
        for (key, want) in [
            ("http.request.method", "GET"),
            ("url.path", "/hello"),
            ("http.response.status_code", "200"),
            ("remora.route", "traced"),
            ("remora.service", SERVICE),
            ("remora.direction", "outbound"),
        ] {
            assert_eq!(attribute(client_span, key).as_deref(), Some(want), "{key}");
        }
        assert_eq!(
            attribute(server_span, "remora.direction").as_deref(),
            Some("inbound")
        );
        assert_eq!(
            attribute(server_span, "url.path").as_deref(),
            Some("/hello")
        );
        assert_eq!(client_span.name, "GET traced");
    }
    let first = spans.iter().find(|s| s.kind == CLIENT).unwrap();
    assert_eq!(
        attribute(first, "server.address").as_deref(),
        Some("web.default"),
        "the host the app addressed, without port"
    );
    // Nothing was dropped on either side.
    for proxy in [&client_proxy, &server_proxy] {
        assert_eq!(
            proxy
                .metrics()
                .await
                .get(DROPPED, &[("plugin", "opentelemetry")]),
            0.0
        );
    }
}

#[tokio::test]
async fn samplers_export_exactly_what_they_decide() {
    let t = Standalone::start("plug_otel_samplers", &["app"], |apps| {
        let collector = SocketAddr::new(apps.addr("app").ip(), COLLECTOR_PORT);
        let with = |path: &str, sampler: Value| {
            route()
                .name(path.trim_start_matches('/'))
                .matching(Match::prefix(path))
                .plugin("opentelemetry", otel(sampler, collector))
                .to("app")
        };
        web(
            "v1",
            vec![
                with("/off", json!({"name": "always_off"})),
                with(
                    "/ratio0",
                    json!({"name": "trace_id_ratio", "options": {"fraction": 0}}),
                ),
                with(
                    "/ratio1",
                    json!({"name": "trace_id_ratio", "options": {"fraction": 1}}),
                ),
                with("/root-off", json!({"name": "parent_base"})),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    let collector = serve(&t.server, COLLECTOR_PORT, false);
    let mut c = t.http();
    let sampled_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for path in ["/off", "/ratio0", "/ratio1", "/root-off"] {
        for _ in 0..5 {
            assert_eq!(c.get(path).await.unwrap().status, 200);
        }
    }
    // parent_base follows a sampled parent.
    let followed = Req::get("/root-off").header("traceparent", sampled_parent);
    assert_eq!(c.send(&followed).await.unwrap().status, 200);

    let n = settle(6, "six spans", || collector.spans().len()).await;
    assert_eq!(n, 6);
    let routes: Vec<String> = collector
        .spans()
        .iter()
        .map(|s| attribute(s, "remora.route").unwrap_or_default())
        .collect();
    let count = |r: &str| routes.iter().filter(|x| *x == r).count();
    assert_eq!(
        (
            count("off"),
            count("ratio0"),
            count("ratio1"),
            count("root-off")
        ),
        (0, 0, 5, 1),
        "{routes:?}"
    );
    // Unsampled hops still propagate, with the flag off.
    let seen = t.apps.get("app").requests();
    let off = seen[0].header_values("traceparent");
    assert!(off.len() == 1 && off[0].ends_with("-00"), "{off:?}");
}

#[tokio::test]
async fn http_logger_delivers_one_entry_per_request() {
    let t = Standalone::start("plug_http_logger", &["app"], |apps| {
        let sink = SocketAddr::new(apps.addr("app").ip(), SINK_PORT);
        let logger = json!({
            "uri": format!("http://{sink}/logs"),
            "batch_max_size": 2,
            "inactive_timeout": 1
        });
        let config = web(
            "v1",
            vec![
                route()
                    .name("private")
                    .matching(Match::prefix("/private"))
                    .plugin("key-auth", json!({}))
                    .to("app"),
                route().name("orders").to("app"),
            ],
            apps.one_backend_each(),
        );
        on_service(config, json!({"http-logger": logger}))
    })
    .await;
    let sink = serve(&t.server, SINK_PORT, false);
    let mut c = t.http();
    for id in 0..4 {
        let req = Req::get(&format!("/orders?id={id}"))
            .header("x-user", "u7")
            .header("authorization", "Bearer never-logged");
        assert_eq!(c.send(&req).await.unwrap().status, 200);
    }
    assert_eq!(c.get("/private").await.unwrap().status, 401);

    let n = settle(5, "five entries", || sink.entries().len()).await;
    assert_eq!(n, 5, "exactly one entry per request");
    let entries = sink.entries();
    let app = t.apps.addr("app").to_string();
    let client_ip = t.client.ip4().to_string();
    for (i, e) in entries[..4].iter().enumerate() {
        assert_eq!(e["request"]["method"], "GET");
        assert_eq!(e["request"]["uri"], format!("/orders?id={i}"));
        assert_eq!(e["request"]["querystring"], json!({"id": i.to_string()}));
        assert_eq!(e["request"]["headers"]["x-user"], "u7");
        assert_eq!(e["request"]["headers"].get("authorization"), None);
        assert_eq!(e["response"]["status"], 200);
        assert_eq!(e["response"]["headers"]["x-pod"], "app");
        // The app's body "app" and the head as the entry shows it.
        assert_eq!(
            e["response"]["size"],
            head_len("200 OK", &e["response"]["headers"]) + 3
        );
        assert_eq!(e["upstream"], app.as_str());
        assert_eq!(
            (&e["route_id"], &e["service_id"]),
            (&json!("orders"), &json!(SERVICE))
        );
        assert_eq!(e["client_ip"], client_ip.as_str());
        assert!(e["latency"].as_f64().unwrap() >= 0.0);
    }
    let refused = &entries[4];
    assert_eq!(
        (
            &refused["request"]["uri"],
            &refused["response"]["status"],
            refused.get("upstream"),
            &refused["route_id"]
        ),
        (&json!("/private"), &json!(401), None, &json!("private")),
        "a request a plugin ended early is logged too"
    );
    let batches = sink.bodies().len();
    assert_eq!(
        batches, 3,
        "two full batches and one after inactive_timeout"
    );
}

#[tokio::test]
async fn http_logger_drops_and_counts_what_a_hanging_endpoint_leaves_no_room_for() {
    let t = Standalone::start("plug_http_logger_down", &["app"], |apps| {
        let sink = SocketAddr::new(apps.addr("app").ip(), SINK_PORT);
        web(
            "v1",
            vec![route()
                .plugin(
                    "http-logger",
                    json!({
                        "uri": format!("http://{sink}/logs"),
                        "timeout": 30,
                        "batch_max_size": 1,
                        "max_pending_entries": 3
                    }),
                )
                .to("app")],
            apps.one_backend_each(),
        )
    })
    .await;
    let hanging = serve(&t.server, SINK_PORT, true);
    let mut c = t.http();
    for i in 0..10 {
        let reply = tokio::time::timeout(Duration::from_secs(2), c.get("/"))
            .await
            .expect("the endpoint never slows a request")
            .unwrap();
        assert_eq!(reply.status, 200);
        if i == 0 {
            // Once the sender connects, it has taken the first entry off
            // the queue; until then that entry holds one of the queue's
            // three places, and a seventh would be dropped.
            eventually(
                Duration::from_secs(10),
                "the first entry in flight",
                || async {
                    match hanging.accepted() {
                        0 => Err("no connection to the endpoint yet".to_owned()),
                        _ => Ok(()),
                    }
                },
            )
            .await;
        }
    }
    // One entry in flight (hanging), three queued, six dropped.
    let m = t
        .proxy
        .wait_metrics("six dropped", |m| {
            m.get(
                DROPPED,
                &[("plugin", "http-logger"), ("reason", "queue_full")],
            ) >= 6.0
        })
        .await;
    assert_eq!(
        m.get(
            DROPPED,
            &[("plugin", "http-logger"), ("reason", "queue_full")]
        ),
        6.0,
        "{m}"
    );
    assert_eq!(
        m.get(
            DROPPED,
            &[("plugin", "http-logger"), ("reason", "undelivered")]
        ),
        0.0
    );
    assert_eq!(t.apps.get("app").received(), 10);
}

#[tokio::test]
async fn http_logger_counts_batches_a_refusing_endpoint_never_took() {
    let t = Standalone::start("plug_http_logger_refused", &["app"], |apps| {
        // Nothing listens there.
        let sink = SocketAddr::new(apps.addr("app").ip(), SINK_PORT);
        web(
            "v1",
            vec![route()
                .plugin(
                    "http-logger",
                    json!({"uri": format!("http://{sink}/logs"), "batch_max_size": 1}),
                )
                .to("app")],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    for _ in 0..4 {
        assert_eq!(c.get("/").await.unwrap().status, 200);
    }
    let undelivered = [("plugin", "http-logger"), ("reason", "undelivered")];
    let m = t
        .proxy
        .wait_metrics("four undelivered", |m| m.get(DROPPED, &undelivered) >= 4.0)
        .await;
    assert_eq!(m.get(DROPPED, &undelivered), 4.0, "{m}");
}

#[tokio::test]
async fn file_logger_writes_one_line_per_request_and_follows_rotation() {
    let dir = std::env::temp_dir().join("remora-e2e-file-logger");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The proxy runs as uid 1337.
    std::process::Command::new("chmod")
        .args(["0777", dir.to_str().unwrap()])
        .status()
        .unwrap();
    let path = dir.join("access.log");
    let t = InboundStandalone::start(
        "plug_file_logger",
        json!([{"port": 8080, "plugins": {"file-logger": {"path": path.to_str()}}}]),
        json!([]),
    )
    .await;
    let mut c = HttpClient::new(&t.client, t.app_addr());
    for i in 0..3 {
        assert_eq!(c.get(&format!("/items/{i}")).await.unwrap().status, 200);
    }
    // Whole lines only: the logger may be writing the next one.
    let lines = |p: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let n = settle(3, "three lines", || lines(&path).len()).await;
    assert_eq!(n, 3);
    let client_ip = t.client.ip4().to_string();
    for (i, line) in lines(&path).iter().enumerate() {
        assert_eq!(line["request"]["uri"], format!("/items/{i}"));
        assert_eq!(line["response"]["status"], 200);
        let body = t.app.name().len() as u64;
        assert_eq!(
            line["response"]["size"],
            head_len("200 OK", &line["response"]["headers"]) + body
        );
        assert_eq!(line["client_ip"], client_ip.as_str());
        assert_eq!(line["upstream"], t.app_addr().to_string());
    }
    // logrotate renames the file: the next line starts a new one.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    assert_eq!(c.get("/after").await.unwrap().status, 200);
    let n = settle(1, "a line in the new file", || lines(&path).len()).await;
    assert_eq!(n, 1);
    assert_eq!(lines(&path)[0]["request"]["uri"], "/after");
    assert_eq!(lines(&rotated).len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn invalid_observability_configs_are_rejected_naming_plugin_and_field() {
    let t = Standalone::start("plug_observe_invalid", &["app"], |apps| {
        web("good", vec![route().to("app")], apps.one_backend_each())
    })
    .await;
    let at = "outbound.services[0].ports[0].routes[0].plugins";
    let cases = [
        (
            "opentelemetry",
            json!({"collector": {"address": "c:4318"}, "sampler": {"name": "trace_id_ratio", "options": {"fraction": 2}}}),
            format!("{at}.opentelemetry.sampler.options.fraction: plugin opentelemetry: 2 is out of range: 0 to 1"),
        ),
        (
            "opentelemetry",
            json!({"sampler": {"name": "always_on"}}),
            format!("{at}.opentelemetry: plugin opentelemetry: missing field `collector`"),
        ),
        (
            "http-logger",
            json!({"uri": "http://sink/logs", "batch_max_size": 0}),
            format!("{at}.http-logger.batch_max_size: plugin http-logger: 0 is out of range: 1 to 100000"),
        ),
        (
            "http-logger",
            json!({"uri": "https://sink/logs"}),
            format!("{at}.http-logger.uri: plugin http-logger: scheme \"https\" is not supported"),
        ),
        (
            "file-logger",
            json!({"path": "relative.log"}),
            format!("{at}.file-logger.path: plugin file-logger: \"relative.log\" is not an absolute path"),
        ),
    ];
    let mut c = t.http();
    for (i, (name, plugin, error)) in cases.into_iter().enumerate() {
        let config = web(
            &format!("bad-{i}"),
            vec![route().plugin(name, plugin).to("app")],
            t.apps.one_backend_each(),
        );
        t.file.write(&config);
        let dump = eventually(Duration::from_secs(5), "the rejection", || async {
            let dump = remora_e2e::mesh_config::config_dump(&t.proxy).await;
            match &dump.last_error {
                Some(e) if e.starts_with(&error) => Ok(dump),
                other => Err(format!("lastError {other:?}, want {error}")),
            }
        })
        .await;
        assert_eq!(dump.version, "good", "the last good config stays");
        assert_eq!(c.get("/").await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn apisix_series_of_a_removed_route_are_dropped() {
    let routes = |both: bool| {
        let mut list = vec![route()
            .name("kept")
            .matching(Match::prefix("/kept"))
            .plugin("prometheus", json!({}))
            .to("app")];
        if both {
            list.push(
                route()
                    .name("gone")
                    .matching(Match::prefix("/gone"))
                    .plugin("prometheus", json!({}))
                    .to("app"),
            );
        }
        list
    };
    let t = Standalone::start("plug_prom_removed", &["app"], |apps| {
        web("v1", routes(true), apps.one_backend_each())
    })
    .await;
    let mut c = t.http();
    for path in ["/kept", "/gone", "/gone"] {
        assert_eq!(c.get(path).await.unwrap().status, 200);
    }
    let status = |route: &'static str| [("route", route), ("code", "200")];
    let m = t.proxy.metrics().await;
    assert_eq!(m.get("apisix_http_status", &status("kept")), 1.0, "{m}");
    assert_eq!(m.get("apisix_http_status", &status("gone")), 2.0, "{m}");

    t.apply(&web("v2", routes(false), t.apps.one_backend_each()))
        .await;
    let m = t.proxy.metrics().await;
    assert_eq!(m.get("apisix_http_status", &status("kept")), 1.0, "{m}");
    let gone = m
        .samples()
        .iter()
        .filter(|s| s.name.starts_with("apisix_"))
        .any(|s| s.labels.iter().any(|(k, v)| k == "route" && v == "gone"));
    assert!(!gone, "the removed route's APISIX series are gone\n{m}");
}

#[tokio::test]
async fn http_logger_log_format_entry_is_exactly_its_fields() {
    let t = Standalone::start("plug_http_logger_fmt", &["app"], |apps| {
        let sink = SocketAddr::new(apps.addr("app").ip(), SINK_PORT);
        let logger = json!({
            "uri": format!("http://{sink}/logs"),
            "batch_max_size": 1,
            "log_format": {
                "client": "$remote_addr",
                "method": "$request_method",
                "uri": "$request_uri",
                "path": "$uri",
                "status": "$status",
                "upstream": "$upstream_addr",
                "user": "$http_x_user",
                "tenant": "$http_x_tenant",
                "pod": "$sent_http_x_pod",
                "route": "$route_id",
                "body_sent": "$body_bytes_sent",
                "typo": "$remote_adr",
                "env": "production",
                "shard": 3
            }
        });
        let config = web(
            "v1",
            vec![route().name("orders").to("app")],
            apps.one_backend_each(),
        );
        on_service(config, json!({"http-logger": logger}))
    })
    .await;
    let sink = serve(&t.server, SINK_PORT, false);
    let mut c = t.http();
    let req = Req::get("/orders?id=7").header("x-user", "u7");
    assert_eq!(c.send(&req).await.unwrap().status, 200);

    let n = settle(1, "one entry", || sink.entries().len()).await;
    assert_eq!(n, 1);
    assert_eq!(
        sink.entries()[0],
        json!({
            "client": t.client.ip4().to_string(),
            "method": "GET",
            "uri": "/orders?id=7",
            "path": "/orders",
            "status": "200",
            "upstream": t.apps.addr("app").to_string(),
            "user": "u7",
            "pod": "app",
            "route": "orders",
            "body_sent": "3",
            "env": "production",
            "shard": 3
        }),
        "exactly the format's fields; an absent header and an unknown variable are left out"
    );
    // A HEAD response sends its head only.
    let head = Req::new(http::Method::HEAD, "/orders?id=8");
    let reply = c.send(&head).await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, ""));
    let n = settle(2, "two entries", || sink.entries().len()).await;
    assert_eq!(n, 2);
    let e = &sink.entries()[1];
    assert_eq!(
        (&e["method"], &e["body_sent"]),
        (&json!("HEAD"), &json!("0"))
    );
}

#[tokio::test]
async fn opentelemetry_spans_carry_the_additional_attributes() {
    let t = Standalone::start("plug_otel_additional", &["app"], |apps| {
        let collector = SocketAddr::new(apps.addr("app").ip(), COLLECTOR_PORT);
        let mut config = otel(json!({"name": "always_on"}), collector);
        config["additional_attributes"] = json!(["http_x_tenant", "$request_method", "arg_none"]);
        config["additional_header_prefix_attributes"] = json!(["x-my-*"]);
        web(
            "v1",
            vec![route()
                .name("orders")
                .plugin("opentelemetry", config)
                .to("app")],
            apps.one_backend_each(),
        )
    })
    .await;
    let collector = serve(&t.server, COLLECTOR_PORT, false);
    let mut c = t.http();
    let req = Req::get("/orders")
        .header("x-tenant", "acme")
        .header("x-my-a", "1")
        .header("x-my-b", "2")
        .header("x-other", "no");
    assert_eq!(c.send(&req).await.unwrap().status, 200);

    let n = settle(1, "one span", || collector.spans().len()).await;
    assert_eq!(n, 1);
    let span = &collector.spans()[0];
    let keys = [
        "http_x_tenant",
        "request_method",
        "arg_none",
        "x-my-a",
        "x-my-b",
        "x-other",
    ];
    let got: Vec<Option<String>> = keys.iter().map(|k| attribute(span, k)).collect();
    assert_eq!(
        got,
        [
            Some("acme".into()),
            Some("GET".into()),
            None,
            Some("1".into()),
            Some("2".into()),
            None
        ]
    );
    assert_eq!(attribute(span, "remora.route").as_deref(), Some("orders"));
}
