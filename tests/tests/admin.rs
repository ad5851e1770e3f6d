//! The admin port (15020) as a pod sees it: `/config_dump` and
//! `POST /drain` answer localhost only, also when a request reaches the
//! admin port through the inbound sidecar; `/live`, `/ready` and `/metrics`
//! answer other pods (kubelet, Prometheus). `/config_dump` answers with a
//! summary, one resource by name, or the whole thing streamed; stalled full
//! dumps are bounded in number and hold up neither the summary, nor probes,
//! nor traffic.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use remora_e2e::http_apps::{CONFIG_UPDATES, OUTLIER_EJECTIONS};
use remora_e2e::mesh_config::{
    host_service, round_robin, route, web, Match, Standalone, SERVICE, VIP,
};
use remora_e2e::metrics::OPENED;
use remora_e2e::{within, HttpResponse, Metrics, Pod, TestNet, INBOUND, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN_PORT: u16 = 15020;

fn refused(path: &str) -> String {
    format!(
        "{path} answers on localhost only; ask from inside the pod, e.g. \
         `kubectl exec` then `curl localhost:15020{path}`\n"
    )
}

async fn ask(pod: &Pod, method: &str, addr: SocketAddr, path: &str) -> HttpResponse {
    pod.http(method, addr, path)
        .await
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path} from pod {}: {e}", pod.name()))
}

fn parse(what: &str, response: &HttpResponse) -> Value {
    assert_eq!(response.status, 200, "{what}: {}", response.body);
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{what} is not JSON ({e}): {}", response.body))
}

#[tokio::test]
async fn config_dump_and_drain_answer_localhost_only_and_probes_answer_anyone() {
    let t = Standalone::start("admin_local_only", &["v1"], |apps| {
        web("v1", vec![route().to("v1")], apps.one_backend_each())
    })
    .await;
    let other = t.net.pod("other");
    let admin = t.client.addr4(ADMIN_PORT);

    for path in [
        "/config_dump",
        "/config_dump?full=1",
        "/config_dump?backend=v1",
        "/config_dump?nonsense",
    ] {
        let response = ask(&other, "GET", admin, path).await;
        assert_eq!(
            (response.status, response.body.as_str()),
            (403, refused("/config_dump").as_str()),
            "GET {path} from another pod"
        );
    }
    let response = ask(&other, "POST", admin, "/drain").await;
    assert_eq!(
        (response.status, response.body.as_str()),
        (403, refused("/drain").as_str()),
        "POST /drain from another pod"
    );

    // What kubelet and Prometheus need still answers them.
    let live = ask(&other, "GET", admin, "/live").await;
    assert_eq!((live.status, live.body.as_str()), (200, "live\n"));
    let ready = ask(&other, "GET", admin, "/ready").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "ready\n"),
        "not drained"
    );
    let scrape = ask(&other, "GET", admin, "/metrics").await;
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    let metrics = Metrics::parse(&scrape.body);
    assert_eq!(
        metrics.get(CONFIG_UPDATES, &[("result", "applied")]),
        1.0,
        "{metrics}"
    );

    // From inside the pod the dump answers.
    let dump = parse(
        "/config_dump from localhost",
        &t.proxy.get("/config_dump").await.expect("GET"),
    );
    assert_eq!(dump["version"], "v1");
    assert_eq!(dump["counts"]["backends"], 1);
}

/// With `--admin-addr` moved to 15030 and remora-init left excluding
/// 15020, another pod's request to 15030 is captured: the inbound sidecar
/// forwards it to the admin port from 127.0.0.6, a loopback address. It is
/// still not from localhost.
#[tokio::test]
async fn a_request_captured_on_its_way_to_the_admin_port_is_not_localhost() {
    let net = TestNet::new("admin_captured");
    let a = net.pod("a");
    let other = net.pod("other");
    let proxy = a.mesh_with(&[], &["--admin-addr", "0.0.0.0:15030"]).await;
    let admin = a.addr4(15030);

    let before = proxy.metrics().await;
    let ready = ask(&other, "GET", admin, "/ready").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    let dump = ask(&other, "GET", admin, "/config_dump").await;
    assert_eq!((dump.status, dump.body), (403, refused("/config_dump")));
    let drain = ask(&other, "POST", admin, "/drain").await;
    assert_eq!((drain.status, drain.body), (403, refused("/drain")));
    let after = proxy.metrics().await;
    assert_eq!(
        after.since(&before, OPENED, INBOUND),
        3.0,
        "all three requests came through the inbound listener\n{after}"
    );
    assert_eq!(proxy.ready_status().await, 200, "the proxy did not drain");
}

#[tokio::test]
async fn the_summary_and_by_name_answers_tell_exact_values() {
    let t = Standalone::start("admin_by_name", &["v1", "v2"], |apps| {
        let v1 = apps.addr("v1");
        // Nothing listens there: the first request to it ejects it.
        let dead = SocketAddr::new(v1.ip(), 9999);
        let mut pool = round_robin(&[v1, dead]);
        pool.outlier_detection.consecutive_connect_failures = 1;
        pool.outlier_detection.base_ejection_time = Duration::from_secs(300);
        let mut config = web(
            "v1",
            vec![
                route().matching(Match::prefix("/v2")).to("v2"),
                route().to("pool"),
            ],
            BTreeMap::from([
                ("pool".to_owned(), pool),
                ("v2".to_owned(), round_robin(&[apps.addr("v2")])),
            ]),
        );
        config.outbound.services.push(host_service(
            "other.default",
            &["other.default"],
            8080,
            vec![route().to("v2").build()],
        ));
        config
    })
    .await;
    let v1 = t.apps.addr("v1");
    let dead = SocketAddr::new(v1.ip(), 9999);

    let before = t.proxy.metrics().await;
    let mut client = t.http();
    for _ in 0..4 {
        client.get("/").await.expect("GET /");
    }
    t.proxy
        .wait_metrics("the dead endpoint ejected", |m| {
            m.since(&before, OUTLIER_EJECTIONS, &[("backend", "pool")]) == 1.0
        })
        .await;

    let summary = parse(
        "/config_dump",
        &t.proxy.get("/config_dump").await.expect("GET"),
    );
    assert_eq!(
        summary,
        json!({
            "version": "v1",
            "lastError": null,
            "counts": {
                "services": 2, "ports": 2, "routes": 3, "backends": 2, "endpoints": 3,
                "ejectedEndpoints": 1, "unhealthyEndpoints": 0,
            },
            "backendsOutOfRotation": [
                {"name": "pool", "endpoints": 2, "ejected": 1, "unhealthy": 0},
            ],
            "backendsOutOfRotationTruncated": false,
            "more": "GET /config_dump?backend=NAME or ?service=NAME for one resource, \
                     ?full=1 for everything (streamed)",
        })
    );

    let pool = parse(
        "?backend=pool",
        &t.proxy.get("/config_dump?backend=pool").await.expect("GET"),
    );
    assert_eq!(pool["version"], "v1");
    assert_eq!(pool["backend"]["name"], "pool");
    assert_eq!(pool["backend"]["ejectedNow"], 1);
    assert_eq!(pool["backend"]["ejectionsTotal"], 1);
    let endpoints: Vec<(String, bool)> = pool["backend"]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap_or("?").to_owned(),
                e["ejected"] == true,
            )
        })
        .collect();
    assert_eq!(
        endpoints,
        [(v1.to_string(), false), (dead.to_string(), true)],
        "{pool}"
    );
    let v2 = parse(
        "?backend=v2",
        &t.proxy.get("/config_dump?backend=v2").await.expect("GET"),
    );
    assert_eq!(
        v2["backend"]["endpoints"][0]["address"],
        t.apps.addr("v2").to_string()
    );

    let service = parse(
        "?service=",
        &t.proxy
            .get(&format!("/config_dump?service={SERVICE}"))
            .await
            .expect("GET"),
    );
    assert_eq!(service["service"]["name"], SERVICE);
    assert_eq!(service["service"]["addresses"], json!([VIP.to_string()]));
    assert_eq!(
        service["service"]["ports"][0]["routes"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    for (path, status, body) in [
        (
            "/config_dump?backend=v3",
            404,
            "no backend named \"v3\" in config version \"v1\"; \
             GET /config_dump?full=1 lists them all\n",
        ),
        (
            "/config_dump?service=nowhere.default",
            404,
            "no service named \"nowhere.default\" in config version \"v1\"; \
             GET /config_dump?full=1 lists them all\n",
        ),
        (
            "/config_dump?colour=red",
            400,
            "unknown parameter \"colour\"; use backend=NAME, service=NAME or full=1\n",
        ),
        (
            "/config_dump?full=yes",
            400,
            "full=\"yes\" is not understood; use full=1\n",
        ),
    ] {
        let response = t.proxy.get(path).await.expect("GET");
        assert_eq!(
            (response.status, response.body.as_str()),
            (status, body),
            "{path}"
        );
    }

    let full = t.proxy.get("/config_dump?full=1").await.expect("GET");
    assert_eq!(full.header("transfer-encoding"), Some("chunked"));
    let full = parse("?full=1", &full);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(t.file.path()).expect("config file"))
            .expect("JSON");
    assert_eq!(full["config"], written, "the config in force, as loaded");
    assert_eq!(full["backends"]["pool"]["ejectedNow"], 1);
}

/// Sends `GET /config_dump?full=1` on a raw connection and reads only the
/// response head, then leaves the body unread.
async fn stalled_full_dump(pod: &Pod) -> TcpStream {
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT));
    let mut stream = pod.connect(admin).await.expect("connect to the admin port");
    stream
        .write_all(b"GET /config_dump?full=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    within(WAIT, "the full dump's response head", async {
        while !head.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.expect("read the head");
            assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
    })
    .await;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(
        head.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{head}"
    );
    stream
}

/// Backends in the big config: its full dump (about 500 bytes a backend)
/// is far more than the socket buffers of a reader that stopped reading.
const BIG: usize = 20_000;

#[tokio::test]
async fn stalled_full_dumps_are_bounded_and_hold_up_nothing() {
    let t = Standalone::start("admin_stalled_dump", &["v1"], |apps| {
        let mut backends = apps.one_backend_each();
        let ip = apps.addr("v1").ip();
        for i in 0..BIG {
            let port = 10_000 + i as u16;
            backends.insert(
                format!("idle-{i:05}"),
                round_robin(&[SocketAddr::new(ip, port)]),
            );
        }
        web("big", vec![route().to("v1")], backends)
    })
    .await;
    let other = t.net.pod("other");

    let held = [
        stalled_full_dump(&t.client).await,
        stalled_full_dump(&t.client).await,
    ];
    let third = t.proxy.get("/config_dump?full=1").await.expect("GET");
    assert_eq!(
        (
            third.status,
            third.body.as_str(),
            third.header("retry-after")
        ),
        (
            503,
            "2 full dumps are being served already; retry once they finish\n",
            Some("1")
        )
    );
    // Everything else goes on.
    let summary = parse(
        "/config_dump",
        &t.proxy.get("/config_dump").await.expect("GET"),
    );
    assert_eq!(summary["counts"]["backends"], BIG + 1);
    assert_eq!(summary["counts"]["endpoints"], BIG + 1);
    let ready = ask(&other, "GET", t.client.addr4(ADMIN_PORT), "/ready").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    let mut client = t.http();
    for i in 0..5 {
        let reply = client.get("/").await.expect("GET / while dumps stall");
        assert_eq!((reply.status, reply.pod()), (200, "v1"), "request {i}");
    }

    // Once the stalled readers go, a full dump is served whole.
    drop(held);
    let dump = within(WAIT, "a full dump after the stalled ones closed", async {
        loop {
            let response = t.proxy.get("/config_dump?full=1").await.expect("GET");
            if response.status != 503 {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let dump = parse("?full=1", &dump);
    assert_eq!(dump["version"], "big");
    assert_eq!(
        dump["config"]["backends"].as_object().map(|b| b.len()),
        Some(BIG + 1)
    );
    assert_eq!(dump["backends"].as_object().map(|b| b.len()), Some(BIG + 1));
    assert_eq!(
        dump["backends"]["idle-19999"]["endpoints"][0]["address"],
        SocketAddr::new(t.apps.addr("v1").ip(), 10_000 + 19_999).to_string()
    );
}
