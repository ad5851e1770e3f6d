//! Resilience on the outbound HTTP path: retries and outlier detection hide
//! an endpoint that dies mid-run, a request timeout answers 504 on time, a
//! retry budget caps the retries a failing backend gets, and a circuit
//! breaker fails requests fast once a backend has too many in flight.
//!
//! Upstream attempts are counted by the apps themselves, so the tests see
//! what a backend would see, not just what the proxy reports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use remora_e2e::http_apps::{send_many, HttpClient, Req, HTTP_ERRORS, OUTLIER_EJECTIONS, RETRIES};
use remora_e2e::mesh_config::{
    backend_dump, round_robin, route, vip, wait_version, web, ConfigFile, Match, Standalone,
};
use remora_e2e::{round_trip, within, TestNet, WAIT};
use serde_json::json;

#[tokio::test]
async fn retries_and_outlier_detection_hide_an_endpoint_killed_mid_run() {
    let mut t = Standalone::start("res_killed_endpoint", &["e1", "e2", "e3"], |apps| {
        let mut pool = round_robin(&[apps.addr("e1"), apps.addr("e2"), apps.addr("e3")]);
        pool.outlier_detection.consecutive_connect_failures = 2;
        pool.outlier_detection.interval = Duration::from_secs(1);
        pool.outlier_detection.base_ejection_time = Duration::from_secs(30);
        web(
            "v1",
            vec![route()
                .name("pool")
                .retry(2, &[502, 503, 504], Duration::from_millis(5))
                .to("pool")],
            BTreeMap::from([("pool".to_owned(), pool)]),
        )
    })
    .await;
    let before = t.proxy.metrics().await;
    const TOTAL: usize = 1000;
    const KILL_AFTER: usize = 200;
    let client = t.client.clone();
    let apps = &mut t.apps;
    let (results, killed_at) = tokio::join!(
        send_many(&client, vip(), TOTAL, 4, |_| Req::get("/")),
        async {
            let deadline = Instant::now() + Duration::from_secs(10);
            while apps.total_received() < KILL_AFTER && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let at = apps.total_received();
            // Refuses new connections and drops open ones, as a crash does.
            apps.get_mut("e2").stop().await;
            at
        }
    );
    assert!(
        (KILL_AFTER..TOTAL).contains(&killed_at),
        "e2 must die mid-run (after {killed_at} of {TOTAL} requests)"
    );
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(i, r)| match r {
            Ok(reply) if reply.status == 200 => None,
            Ok(reply) => Some(format!(
                "request {i}: {} {:?} {:?}",
                reply.status,
                reply.remora_error(),
                reply.body
            )),
            Err(e) => Some(format!("request {i}: {e}")),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {TOTAL} requests failed after e2 was killed at request ~{killed_at}; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(results.len(), TOTAL);
    let after = t
        .proxy
        .wait_metrics("e2's ejection counted", |m| {
            m.since(&before, OUTLIER_EJECTIONS, &[("backend", "pool")]) >= 1.0
        })
        .await;
    assert!(
        after.since(&before, OUTLIER_EJECTIONS, &[("backend", "pool")]) >= 1.0,
        "{after}"
    );
}

#[tokio::test]
async fn a_request_timeout_answers_504_after_half_a_second() {
    let t = Standalone::start("res_timeout", &["slow"], |apps| {
        web(
            "v1",
            vec![route()
                .name("slow")
                .request_timeout(Duration::from_millis(500))
                .to("slow")],
            apps.one_backend_each(),
        )
    })
    .await;
    t.apps.get("slow").set_delay(Duration::from_secs(2));
    let before = t.proxy.metrics().await;
    let start = Instant::now();
    let reply = t.http().get("/").await.expect("GET / on a slow backend");
    let elapsed = start.elapsed();
    assert_eq!(
        (reply.status, reply.remora_error()),
        (504, "timeout"),
        "body {:?}",
        reply.body
    );
    // Correctness, not speed: the timeout fired, and not the backend's 2 s.
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(1500),
        "504 after {elapsed:?}; want about 500 ms"
    );
    assert_eq!(t.apps.get("slow").received(), 1, "no retry was configured");
    let after = t
        .proxy
        .wait_metrics("the timeout counted", |m| {
            m.since(&before, HTTP_ERRORS, &[("reason", "timeout")]) >= 1.0
        })
        .await;
    assert_eq!(
        after.since(
            &before,
            HTTP_ERRORS,
            &[("direction", "outbound"), ("reason", "timeout")]
        ),
        1.0,
        "{after}"
    );
}

#[tokio::test]
async fn a_retry_budget_caps_retries_to_a_backend_that_always_fails() {
    // Two backends that always answer 503, behind routes that retry 503 up
    // to 5 times. `tight` has a small budget; `loose` has one so large that
    // it never binds, which shows what the retries would be without it.
    let t = Standalone::start("res_retry_budget", &["tight", "loose"], |apps| {
        let mut backends = apps.one_backend_each();
        for (name, backend) in backends.iter_mut() {
            // Ejecting the only endpoint would turn 503s into no_endpoints
            // answers without upstream attempts: keep it in.
            backend.outlier_detection.max_ejection_percent = 0;
            if name == "tight" {
                backend.retry_budget.ratio = 0.1;
                backend.retry_budget.min_retries_per_second = 1;
            } else {
                backend.retry_budget.ratio = 1000.0;
                backend.retry_budget.min_retries_per_second = 1000;
            }
            backend.retry_budget.ttl = Duration::from_secs(10);
        }
        web(
            "v1",
            vec![
                route()
                    .name("tight")
                    .matching(Match::prefix("/tight"))
                    .retry(5, &[503], Duration::from_millis(1))
                    .to("tight"),
                route()
                    .name("loose")
                    .matching(Match::prefix("/loose"))
                    .retry(5, &[503], Duration::from_millis(1))
                    .to("loose"),
            ],
            backends,
        )
    })
    .await;
    t.apps.get("tight").fail_with(503);
    t.apps.get("loose").fail_with(503);
    let mut c = t.http();

    // Without a binding budget, every request is tried 1 + 5 times.
    for _ in 0..20 {
        let reply = c.get("/loose").await.expect("GET /loose");
        assert_eq!(reply.status, 503, "the backend's own answer comes back");
    }
    assert_eq!(
        t.apps.get("loose").received(),
        20 * 6,
        "upstream attempts with retries unconstrained"
    );

    let before = t.proxy.metrics().await;
    const REQUESTS: usize = 100;
    let start = Instant::now();
    for _ in 0..REQUESTS {
        let reply = c.get("/tight").await.expect("GET /tight");
        assert_eq!(reply.status, 503, "the backend's own answer comes back");
    }
    let elapsed = start.elapsed();
    let attempts = t.apps.get("tight").received();
    // A sound upper bound: one attempt per request, plus ratio x requests
    // deposited in the budget, plus minRetriesPerSecond for every second of
    // the window (the ttl, or the run if longer, plus one for rounding).
    let window_secs = 10u64.max(elapsed.as_secs() + 1) + 1;
    let bound = REQUESTS + REQUESTS / 10 + window_secs as usize;
    assert!(
        attempts <= bound,
        "{attempts} upstream attempts for {REQUESTS} requests in {elapsed:?}; the budget allows at most {bound} (unconstrained: {})",
        REQUESTS * 6
    );
    assert!(
        attempts > REQUESTS,
        "{attempts} upstream attempts: minRetriesPerSecond allows some retries"
    );
    let after = t
        .proxy
        .wait_metrics("the retries counted", |m| {
            m.since(&before, RETRIES, &[("backend", "tight")]) >= (attempts - REQUESTS) as f64
        })
        .await;
    assert_eq!(
        after.since(
            &before,
            RETRIES,
            &[("route", "tight"), ("backend", "tight")]
        ),
        (attempts - REQUESTS) as f64,
        "retries counted = upstream attempts beyond the first\n{after}"
    );
}

/// Which circuit-breaker limit a test sets to one.
enum Limit {
    Connections,
    Requests,
}

/// A service whose one backend, `slow`, answers after 1.5 s and whose
/// circuit breaker allows one `limit`.
async fn slow_backend_limited_to_one(test: &str, limit: Limit) -> Standalone {
    let t = Standalone::start(test, &["slow"], |apps| {
        let mut backends = apps.one_backend_each();
        let slow = backends.get_mut("slow").expect("slow backend");
        match limit {
            Limit::Connections => slow.circuit_breaker.max_connections = 1,
            Limit::Requests => slow.circuit_breaker.max_requests = 1,
        }
        web("v1", vec![route().name("slow").to("slow")], backends)
    })
    .await;
    t.apps.get("slow").set_delay(Duration::from_millis(1500));
    t
}

/// Waits (at most 5 s) until a request is inside `app`.
async fn first_request_arrived(app: &remora_e2e::http_apps::HttpApp) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.in_flight() < 1 {
        assert!(Instant::now() < deadline, "the first request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn max_connections_caps_upstream_connections_and_pooled_ones_are_reused() {
    let t = slow_backend_limited_to_one("res_max_connections", Limit::Connections).await;
    let app = t.apps.get("slow");
    let before = t.proxy.metrics().await;

    let mut first_client = t.http();
    let first = first_client.get("/first");
    let second = async {
        // The first request holds the backend's only allowed connection;
        // a second one at the same time would need another.
        first_request_arrived(app).await;
        t.http().send(&Req::get("/second")).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.expect("the first request").status, 200);
    let second = second.expect("the second request");
    assert_eq!(
        (second.status, second.remora_error()),
        (503, "circuit_open"),
        "body {:?}",
        second.body
    );
    assert!(second.elapsed < Duration::from_millis(1000), "failed fast");

    // Sequential requests reuse the one pooled connection: never refused.
    app.set_delay(Duration::ZERO);
    for i in 0..20 {
        let reply = t.http().get("/again").await.expect("GET /again");
        assert_eq!(reply.status, 200, "request {i} after the slow one");
    }
    assert_eq!(
        app.received(),
        21,
        "every request but the refused one reached the app"
    );
    let after = t.proxy.metrics().await;
    assert_eq!(
        after.since(&before, HTTP_ERRORS, &[("reason", "circuit_open")]),
        1.0,
        "{after}"
    );
}

#[tokio::test]
async fn a_circuit_breaker_fails_requests_beyond_max_requests_fast() {
    let t = slow_backend_limited_to_one("res_circuit_breaker", Limit::Requests).await;
    let app = t.apps.get("slow");
    let before = t.proxy.metrics().await;

    let mut first_client = t.http();
    let first = first_client.get("/first");
    let overflow = async {
        // Wait until the first request is inside the backend, then pile on.
        first_request_arrived(app).await;
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let mut client: HttpClient = t.http();
                tokio::spawn(async move { client.send(&Req::get("/more")).await })
            })
            .collect();
        let mut replies = Vec::new();
        for task in tasks {
            replies.push(task.await.expect("overflow client panicked"));
        }
        replies
    };
    let (first, overflow) = tokio::join!(first, overflow);
    let first = first.expect("the first request");
    assert_eq!(
        (first.status, first.body.as_str()),
        (200, "slow"),
        "the request inside the limit completes"
    );
    for (i, reply) in overflow.into_iter().enumerate() {
        let reply = reply.unwrap_or_else(|e| panic!("overflow request {i}: {e}"));
        assert_eq!(
            (reply.status, reply.remora_error()),
            (503, "circuit_open"),
            "overflow request {i}: body {:?}",
            reply.body
        );
        assert!(
            reply.elapsed < Duration::from_millis(1000),
            "overflow request {i} waited {:?} instead of failing fast",
            reply.elapsed
        );
    }
    assert_eq!(app.received(), 1, "only the first request reached the app");
    let after = t
        .proxy
        .wait_metrics("circuit_open counted", |m| {
            m.since(&before, HTTP_ERRORS, &[("reason", "circuit_open")]) >= 5.0
        })
        .await;
    assert_eq!(
        after.since(&before, HTTP_ERRORS, &[("reason", "circuit_open")]),
        5.0,
        "{after}"
    );

    // With nothing in flight the breaker lets requests through again.
    app.set_delay(Duration::ZERO);
    let reply = t.http().get("/again").await.expect("GET /again");
    assert_eq!((reply.status, reply.body.as_str()), (200, "slow"));
}

#[tokio::test]
async fn proxy_made_errors_have_their_status_and_reason() {
    let t = Standalone::start("res_error_reasons", &["dropper"], |apps| {
        let mut backends = apps.one_backend_each();
        // Nothing listens on port 9 of the server pod: connections are refused.
        let refused = std::net::SocketAddr::new(apps.addr("dropper").ip(), 9);
        backends.insert("refused".to_owned(), round_robin(&[refused]));
        backends.insert("empty".to_owned(), round_robin(&[]));
        web(
            "v1",
            vec![
                route().matching(Match::prefix("/drop")).to("dropper"),
                route().matching(Match::prefix("/refused")).to("refused"),
                route().matching(Match::prefix("/empty")).to("empty"),
                // No backendRefs and no redirect: Gateway API says 500.
                route().matching(Match::prefix("/nowhere")),
            ],
            backends,
        )
    })
    .await;
    // The app reads each request, then drops the connection unanswered.
    t.apps.get("dropper").close_on_request();
    let before = t.proxy.metrics().await;
    for (path, status, reason) in [
        ("/drop", 502, "upstream"),
        ("/refused", 502, "connect"),
        ("/empty", 503, "no_endpoints"),
        ("/nowhere", 500, "no_backend"),
    ] {
        // A fresh client each time: an error may close the connection.
        let reply = t
            .http()
            .get(path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(
            (reply.status, reply.remora_error()),
            (status, reason),
            "GET {path}: body {:?}",
            reply.body
        );
        assert!(!reply.body.is_empty(), "GET {path}: a short text body");
    }
    assert_eq!(
        t.apps.get("dropper").received(),
        1,
        "no retry was configured"
    );
    let after = t
        .proxy
        .wait_metrics("four errors counted", |m| {
            m.since(&before, HTTP_ERRORS, &[("direction", "outbound")]) >= 4.0
        })
        .await;
    for reason in ["upstream", "connect", "no_endpoints", "no_backend"] {
        assert_eq!(
            after.since(
                &before,
                HTTP_ERRORS,
                &[("direction", "outbound"), ("reason", reason)]
            ),
            1.0,
            "{reason} counted once\n{after}"
        );
    }
}

/// A `tcp` service port balances connections over its backend, and outlier
/// detection ejects an endpoint that refuses them: after the first refused
/// connection every later one reaches the live endpoint, the ejection is
/// counted, and `/config_dump` shows the endpoint ejected.
#[tokio::test]
async fn a_tcp_service_port_ejects_an_endpoint_that_refuses_connections() {
    const TCP_VIP: &str = "10.96.0.50:5000";
    let net = TestNet::new("res_tcp_eject");
    let client = net.pod("client");
    let server = net.pod("srv");
    let live = server.spawn_echo_server(9001);
    let dead = server.spawn_echo_server(9002);
    let (live_addr, dead_addr) = (server.addr4(9001), server.addr4(9002));
    let vip: SocketAddr = TCP_VIP.parse().expect("TCP_VIP");
    let file = ConfigFile::new("res_tcp_eject");
    file.write_json(&json!({
        "version": "tcp-v1",
        "outbound": { "services": [{
            "name": "echo-tcp.default",
            "addresses": [vip.ip().to_string()],
            "ports": [{ "port": vip.port(), "protocol": "tcp", "backendRefs": [{ "name": "echo" }] }],
        }]},
        "backends": { "echo": {
            "endpoints": [
                { "address": live_addr.to_string() },
                { "address": dead_addr.to_string() },
            ],
            "loadBalancer": "roundRobin",
            "outlierDetection": {
                "consecutiveConnectFailures": 1,
                "interval": "1s",
                "baseEjectionTime": "1m",
            },
        }},
    }));
    let proxy = client.mesh_with(&[], &file.proxy_args()).await;
    wait_version(&proxy, "tcp-v1").await;

    // Both endpoints answer before one dies: the service works as balanced.
    for i in 0..4 {
        let mut stream = client.connect(vip).await.expect("connect to the tcp VIP");
        let payload = format!("warm-up {i}");
        let reply = within(
            WAIT,
            "a warm-up echo",
            round_trip(&mut stream, payload.as_bytes()),
        )
        .await
        .unwrap_or_else(|e| panic!("warm-up echo {i}: {e}"));
        assert_eq!(reply, payload.as_bytes(), "warm-up echo {i}");
    }
    assert!(
        !live.peers().is_empty() && !dead.peers().is_empty(),
        "round robin spread the warm-up over both endpoints: live {:?}, dead {:?}",
        live.peers(),
        dead.peers()
    );

    drop(dead); // Its listeners close: connections to it are refused.
    let deadline = Instant::now() + WAIT;
    while server.connect(dead_addr).await.is_ok() {
        assert!(Instant::now() < deadline, "{dead_addr} still accepts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = proxy.metrics().await;
    const CONNECTIONS: usize = 20;
    let mut outcomes = Vec::new();
    for i in 0..CONNECTIONS {
        let payload = format!("connection {i}");
        let outcome = match client.connect(vip).await {
            Ok(mut stream) => {
                match within(WAIT, "an echo", round_trip(&mut stream, payload.as_bytes())).await {
                    Ok(reply) if reply == payload.as_bytes() => Ok(()),
                    Ok(reply) => Err(format!("got {:?}", String::from_utf8_lossy(&reply))),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(format!("connect: {e}")),
        };
        outcomes.push(outcome);
    }
    let failed: Vec<usize> = (0..CONNECTIONS).filter(|i| outcomes[*i].is_err()).collect();
    assert!(
        failed.len() == 1 && failed[0] < 2,
        "with consecutiveConnectFailures 1, one connection to the refusing endpoint \
         (among the first two) fails and every later one echoes; failed: {:?}",
        failed
            .iter()
            .map(|i| format!("#{i}: {:?}", outcomes[*i]))
            .collect::<Vec<_>>()
    );

    let after = proxy
        .wait_metrics("the ejection counted", |m| {
            m.since(&before, OUTLIER_EJECTIONS, &[("backend", "echo")]) >= 1.0
        })
        .await;
    assert!(
        after.since(&before, OUTLIER_EJECTIONS, &[("backend", "echo")]) >= 1.0,
        "{after}"
    );
    let dump = backend_dump(&proxy, "echo").await;
    let endpoints = dump["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("/config_dump?backend=echo has no endpoints: {dump}"))
        .clone();
    let ejected = |addr: SocketAddr| {
        endpoints
            .iter()
            .find(|e| e["address"] == addr.to_string())
            .unwrap_or_else(|| panic!("{addr} missing from /config_dump: {endpoints:?}"))["ejected"]
            .clone()
    };
    assert_eq!(
        ejected(dead_addr),
        json!(true),
        "the refusing endpoint: {endpoints:?}"
    );
    assert_eq!(
        ejected(live_addr),
        json!(false),
        "the live endpoint: {endpoints:?}"
    );
}

#[tokio::test]
async fn active_health_checks_take_a_failing_endpoint_out_and_bring_it_back() {
    let t = Standalone::start("res_health_checks", &["ok", "sick"], |apps| {
        let mut pool = round_robin(&[apps.addr("ok"), apps.addr("sick")]);
        // Outlier detection off: only the health checks may take it out.
        pool.outlier_detection.max_ejection_percent = 0;
        pool.health_check = Some(
            serde_json::from_value(json!({
                "path": "/healthz",
                "interval": "100ms",
                "timeout": "100ms",
                "healthyThreshold": 1,
                "unhealthyThreshold": 2,
            }))
            .expect("a health check"),
        );
        web(
            "v1",
            vec![route().name("pool").to("pool")],
            BTreeMap::from([("pool".to_owned(), pool)]),
        )
    })
    .await;
    let sick = t.apps.get("sick");
    sick.fail_with(503);

    // The checker probes /healthz; two failures mark the endpoint down.
    let endpoint_healthy = |backend: &serde_json::Value, addr: SocketAddr| {
        backend["endpoints"]
            .as_array()
            .and_then(|eps| eps.iter().find(|e| e["address"] == addr.to_string()))
            .and_then(|e| e["healthy"].as_bool())
    };
    let sick_addr = t.apps.addr("sick");
    within(WAIT, "sick marked unhealthy", async {
        while endpoint_healthy(&backend_dump(&t.proxy, "pool").await, sick_addr) != Some(false) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        sick.requests().iter().any(|r| r.path == "/healthz"),
        "the endpoint was probed at /healthz"
    );

    // Round robin now sends every request to the healthy endpoint.
    let mut client = t.http();
    for i in 0..40 {
        let reply = client.get("/work").await.expect("GET /work");
        assert_eq!((reply.status, reply.pod()), (200, "ok"), "request {i}");
    }
    let work_at_sick = sick.requests().iter().filter(|r| r.path == "/work").count();
    assert_eq!(work_at_sick, 0, "no request reached the unhealthy endpoint");

    // Recovered: one good probe brings it back into rotation.
    sick.recover();
    within(WAIT, "sick back in rotation", async {
        loop {
            let reply = client.get("/work").await.expect("GET /work");
            if reply.pod() == "sick" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
