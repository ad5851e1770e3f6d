//! limit-count and limit-req with `policy: redis` across a fleet: two
//! client pods, each with its own sidecar, share one limit (and one leaky
//! bucket) in a real Redis server (Debian's `redis-server`, installed by
//! scripts/deps.sh, run by this test in a pod of its own and stopped by
//! it); then Redis is stopped and requests follow `allow_degradation`
//! without waiting past `redis_timeout`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use remora_e2e::http_apps::{send_many, HttpClient, Outcome, Req};
use remora_e2e::mesh_config::{route, vip, wait_version, web, ConfigFile, Match};
use remora_e2e::TestNet;
use serde_json::json;

/// redis-server in `pod`, killed on drop.
struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn admitted(outcomes: &[Outcome]) -> usize {
    outcomes
        .iter()
        .filter(|(i, o)| {
            o.as_ref()
                .unwrap_or_else(|e| panic!("request {i}: {e}"))
                .status
                == 200
        })
        .count()
}

#[tokio::test]
async fn two_sidecars_share_one_limit_and_one_bucket_in_redis_and_degrade_as_configured() {
    let net = TestNet::new("plug_redis");
    let a = net.pod("a");
    let b = net.pod("b");
    let srv = net.pod("srv");
    let store = net.pod("redis");
    let app = srv.spawn_http_app(8081, "app");
    let redis = Redis(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                store.namespace(),
                "redis-server",
                "--port",
                "6379",
            ])
            .args([
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/deps.sh installs it)"),
    );
    let host = store.ip4().to_string();
    remora_e2e::http_apps::eventually(Duration::from_secs(5), "redis-server listening", || async {
        store
            .connect(store.addr4(6379))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;

    let limit = |degrade: bool| {
        json!({"count": 10, "time_window": 60, "key_type": "constant", "key": "all",
               "policy": "redis", "redis_host": host, "redis_timeout": 300,
               "allow_degradation": degrade, "rejected_code": 429})
    };
    // A bucket that barely leaks (one request per 1,000 s): 1 + burst
    // requests pass, in all.
    let bucket = |degrade: bool| {
        json!({"rate": 0.001, "burst": 9, "nodelay": true, "key_type": "constant", "key": "all",
               "policy": "redis", "redis_host": host, "redis_timeout": 300,
               "allow_degradation": degrade, "rejected_code": 429})
    };
    let config = web(
        "r1",
        vec![
            route()
                .name("req-open")
                .matching(Match::prefix("/req-open"))
                .plugin("limit-req", bucket(true))
                .to("app"),
            route()
                .name("req-closed")
                .matching(Match::prefix("/req-closed"))
                .plugin("limit-req", bucket(false))
                .to("app"),
            // Two per second, one more may queue: the second request at
            // once waits half a second.
            route()
                .name("req-delay")
                .matching(Match::prefix("/req-delay"))
                .plugin(
                    "limit-req",
                    json!({"rate": 2, "burst": 1, "key_type": "constant", "key": "all",
                           "policy": "redis", "redis_host": host, "rejected_code": 429}),
                )
                .to("app"),
            route()
                .name("open")
                .matching(Match::prefix("/open"))
                .plugin("limit-count", limit(true))
                .to("app"),
            route()
                .name("closed")
                .plugin("limit-count", limit(false))
                .to("app"),
        ],
        std::collections::BTreeMap::from([(
            "app".to_owned(),
            remora_e2e::mesh_config::round_robin(&[app.addr()]),
        )]),
    );
    let file = ConfigFile::new("plug_redis");
    file.write(&config);
    let proxy_a = a.mesh_with(&[], &file.proxy_args()).await;
    let proxy_b = b.mesh_with(&[], &file.proxy_args()).await;
    wait_version(&proxy_a, "r1").await;
    wait_version(&proxy_b, "r1").await;

    // 4 connections from each pod at once, 12 requests each: 10 in all.
    let (from_a, from_b) = tokio::join!(
        send_many(&a, vip(), 12, 4, |_| Req::get("/closed")),
        send_many(&b, vip(), 12, 4, |_| Req::get("/closed")),
    );
    assert_eq!(
        admitted(&from_a) + admitted(&from_b),
        10,
        "one limit for both sidecars"
    );
    assert_eq!(app.received(), 10);
    let mut c = HttpClient::new(&a, vip());
    let over = c.get("/closed").await.expect("request");
    assert_eq!(
        (
            over.status,
            over.header("x-ratelimit-limit"),
            over.header("x-ratelimit-remaining")
        ),
        (429, Some("10"), Some("0"))
    );

    // limit-req: the same across both sidecars, 10 of 24 in all.
    let (from_a, from_b) = tokio::join!(
        send_many(&a, vip(), 12, 4, |_| Req::get("/req-closed")),
        send_many(&b, vip(), 12, 4, |_| Req::get("/req-closed")),
    );
    assert_eq!(
        admitted(&from_a) + admitted(&from_b),
        10,
        "one bucket for both sidecars"
    );
    assert_eq!(app.received(), 20);
    let over = c.get("/req-closed").await.expect("request");
    assert_eq!(over.status, 429);
    // One request through A, then one through B: B's waits for A's to
    // leak out of the shared bucket (0.5 s at 2 per second).
    let first = c.get("/req-delay").await.expect("request");
    assert_eq!(first.status, 200);
    let mut c_b = HttpClient::new(&b, vip());
    let started = Instant::now();
    let second = c_b.get("/req-delay").await.expect("request");
    let waited = started.elapsed();
    assert_eq!(second.status, 200);
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(1500),
        "B's request waited {waited:?}, not the half second A's left in the bucket"
    );
    assert_eq!(app.received(), 22);

    drop(redis);
    let started = Instant::now();
    let closed = c.get("/closed").await.expect("request");
    let took = started.elapsed();
    assert_eq!(
        (closed.status, closed.body.as_str()),
        (500, "{\"error_msg\":\"failed to limit count\"}\n"),
        "without allow_degradation"
    );
    assert!(
        took < Duration::from_millis(800),
        "waited {took:?} past redis_timeout (300 ms)"
    );
    let started = Instant::now();
    let open = c.get("/open").await.expect("request");
    assert_eq!(open.status, 200, "allow_degradation admits");
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let closed = c.get("/req-closed").await.expect("request");
    let took = started.elapsed();
    assert_eq!(
        (closed.status, closed.body.as_str()),
        (500, "{\"error_msg\":\"failed to limit req\"}\n"),
        "limit-req without allow_degradation"
    );
    assert!(
        took < Duration::from_millis(800),
        "waited {took:?} past redis_timeout (300 ms)"
    );
    let open = c.get("/req-open").await.expect("request");
    assert_eq!(open.status, 200, "limit-req's allow_degradation admits");
    assert_eq!(app.received(), 24, "the open routes' two");
    let metrics = proxy_a.metrics().await;
    assert_eq!(
        metrics.get("remora_plugin_degraded_total", &[("plugin", "limit-count")]),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metrics.get("remora_plugin_degraded_total", &[("plugin", "limit-req")]),
        2.0,
        "{metrics}"
    );
}
