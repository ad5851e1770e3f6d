//! Traffic and transformation plugins through real sidecars: limit-count
//! admits exactly `count` per window under 8 concurrent connections (both
//! directions), fault-injection aborts and delays, proxy-rewrite changes
//! what the app receives, response-rewrite what the client receives.

use std::time::{Duration, Instant};

use remora_e2e::http_apps::{send_many, HttpClient, Req};
use remora_e2e::mesh_config::{route, vip, web, InboundStandalone, Match, Standalone};
use serde_json::json;

/// How many of `outcomes` got each status, in order of status.
fn tally(outcomes: &[remora_e2e::http_apps::Outcome]) -> Vec<(u16, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for (i, outcome) in outcomes {
        let reply = outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        *counts.entry(reply.status).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

#[tokio::test]
async fn limit_count_admits_exactly_count_under_eight_connections() {
    let t = Standalone::start("plug_limit_conc", &["app"], |apps| {
        web(
            "v1",
            vec![route()
                .plugin(
                    "limit-count",
                    json!({"count": 50, "time_window": 60, "key_type": "var", "key": "http_x_user", "rejected_code": 429, "rejected_msg": "over quota"}),
                )
                .to("app")],
            apps.one_backend_each(),
        )
    })
    .await;
    let outcomes = send_many(&t.client, vip(), 200, 8, |_| {
        Req::get("/").header("x-user", "u1")
    })
    .await;
    assert_eq!(tally(&outcomes), [(200, 50), (429, 150)]);
    assert_eq!(t.apps.get("app").received(), 50);
    let rejected = outcomes
        .iter()
        .filter_map(|(_, o)| o.as_ref().ok())
        .find(|r| r.status == 429)
        .expect("a rejection");
    assert_eq!(rejected.body, "{\"error_msg\":\"over quota\"}\n");
    assert_eq!(rejected.header("x-ratelimit-limit"), Some("50"));
    assert_eq!(rejected.header("x-ratelimit-remaining"), Some("0"));
    let reset: u64 = rejected
        .header("x-ratelimit-reset")
        .and_then(|r| r.parse().ok())
        .expect("a reset");
    assert!((55..=60).contains(&reset), "reset {reset}");
    // Another key has its own window.
    let mut c = t.http();
    let other = c
        .send(&Req::get("/").header("x-user", "u2"))
        .await
        .expect("request");
    assert_eq!(
        (other.status, other.header("x-ratelimit-remaining")),
        (200, Some("49"))
    );
}

#[tokio::test]
async fn limit_count_on_an_inbound_port_counts_per_window() {
    let t = InboundStandalone::start(
        "plug_limit_in",
        json!([{
            "port": 8080,
            "plugins": {"limit-count": {"count": 30, "time_window": 2, "key_type": "constant"}}
        }]),
        json!([]),
    )
    .await;
    let started = Instant::now();
    let first = send_many(&t.client, t.app_addr(), 100, 8, |_| Req::get("/")).await;
    assert!(started.elapsed() < Duration::from_secs(2), "one window");
    assert_eq!(tally(&first), [(200, 30), (503, 70)]);
    tokio::time::sleep(
        Duration::from_secs(2).saturating_sub(started.elapsed()) + Duration::from_millis(100),
    )
    .await;
    let second = send_many(&t.client, t.app_addr(), 40, 8, |_| Req::get("/")).await;
    assert_eq!(tally(&second), [(200, 30), (503, 10)], "the next window");
    assert_eq!(t.app.received(), 60);
}

#[tokio::test]
async fn fault_injection_aborts_matching_requests_and_delays_others() {
    let t = Standalone::start("plug_fault", &["app"], |apps| {
        web(
            "v1",
            vec![
                route()
                    .matching(Match::prefix("/abort"))
                    .plugin(
                        "fault-injection",
                        json!({"abort": {"http_status": 418, "body": "fault for $arg_who", "vars": [[["arg_who", "==", "jack"]]]}}),
                    )
                    .to("app"),
                route()
                    .plugin("fault-injection", json!({"delay": {"duration": 0.4}}))
                    .to("app"),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    let aborted = c.get("/abort?who=jack").await.expect("request");
    assert_eq!(
        (aborted.status, aborted.body.as_str()),
        (418, "fault for jack")
    );
    let passed = c.get("/abort?who=rose").await.expect("request");
    assert_eq!((passed.status, passed.body.as_str()), (200, "app"));
    let started = Instant::now();
    let delayed = c.get("/slow").await.expect("request");
    let took = started.elapsed();
    assert_eq!(delayed.status, 200);
    assert!(
        (Duration::from_millis(400)..Duration::from_millis(1500)).contains(&took),
        "delayed {took:?}"
    );
    assert_eq!(t.apps.get("app").received(), 2);
}

#[tokio::test]
async fn proxy_rewrite_changes_what_the_app_receives() {
    let t = Standalone::start("plug_proxy_rewrite", &["app"], |apps| {
        web(
            "v1",
            vec![
                route()
                    .matching(Match::prefix("/api"))
                    .plugin(
                        "proxy-rewrite",
                        json!({
                            "regex_uri": ["^/api/v1/(.*)", "/internal/$1"],
                            "host": "backend.internal",
                            "method": "POST",
                            "headers": {"set": {"x-caller": "$remote_addr"}, "remove": ["x-debug"]}
                        }),
                    )
                    .to("app"),
                route()
                    .plugin("proxy-rewrite", json!({"uri": "/fixed"}))
                    .to("app"),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    let reply = c
        .send(&Req::get("/api/v1/users?page=2").header("x-debug", "1"))
        .await
        .expect("request");
    assert_eq!(reply.status, 200);
    let seen = t.apps.get("app").last_request().expect("seen");
    assert_eq!(seen.path, "/internal/users?page=2");
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.header_values("host"), ["backend.internal"]);
    assert_eq!(seen.header_values("x-caller"), [t.client.ip4().to_string()]);
    assert_eq!(seen.header_values("x-debug"), Vec::<String>::new());
    c.get("/anything?q=1").await.expect("request");
    let seen = t.apps.get("app").last_request().expect("seen");
    assert_eq!(seen.path, "/fixed?q=1");
}

#[tokio::test]
async fn response_rewrite_changes_what_the_client_receives() {
    let t = Standalone::start("plug_resp_rewrite", &["app", "down"], |apps| {
        web(
            "v1",
            vec![
                route()
                    .matching(Match::prefix("/down"))
                    .plugin(
                        "response-rewrite",
                        json!({"status_code": 200, "body": "{\"fallback\":true}", "vars": [["status", ">=", 500]],
                               "headers": {"set": {"content-type": "application/json"}}}),
                    )
                    .to("down"),
                route()
                    .plugin("response-rewrite", json!({"headers": {"add": ["x-served-by: remora"], "remove": ["x-pod"]}}))
                    .to("app"),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    t.apps.get("down").fail_with(503);
    let mut c: HttpClient = t.http();
    let down = c.get("/down").await.expect("request");
    assert_eq!(
        (down.status, down.body.as_str(), down.header("content-type")),
        (200, "{\"fallback\":true}", Some("application/json"))
    );
    let ok = c.get("/ok").await.expect("request");
    assert_eq!(
        (
            ok.status,
            ok.body.as_str(),
            ok.header("x-served-by"),
            ok.header("x-pod")
        ),
        (200, "app", Some("remora"), None)
    );
}

/// limit-req with `rate: 5, burst: 5` and `nodelay`: a burst of 30 at once
/// admits exactly 6 (one, plus the burst); after a second, 5 more have
/// leaked out.
#[tokio::test]
async fn limit_req_admits_rate_plus_burst() {
    let t = Standalone::start("plug_limit_req", &["app"], |apps| {
        web(
            "v1",
            vec![route()
                .plugin(
                    "limit-req",
                    json!({"rate": 5, "burst": 5, "nodelay": true, "key_type": "constant", "key": "", "rejected_code": 429}),
                )
                .to("app")],
            apps.one_backend_each(),
        )
    })
    .await;
    let started = Instant::now();
    let burst = send_many(&t.client, vip(), 30, 8, |_| Req::get("/")).await;
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(tally(&burst), [(200, 6), (429, 24)]);
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(started.elapsed())).await;
    let later = send_many(&t.client, vip(), 10, 1, |_| Req::get("/")).await;
    assert_eq!(tally(&later), [(200, 5), (429, 5)]);
}

/// limit-conn with `conn: 2, burst: 0` on an app that takes 300 ms: of 6
/// concurrent requests exactly 2 are in flight at once and 4 are refused;
/// once they finish, the slots are free again.
#[tokio::test]
async fn limit_conn_caps_requests_in_flight() {
    let t = Standalone::start("plug_limit_conn", &["slow"], |apps| {
        web(
            "v1",
            vec![route()
                .plugin(
                    "limit-conn",
                    json!({"conn": 2, "burst": 0, "default_conn_delay": 0.1, "key_type": "constant", "key": ""}),
                )
                .to("slow")],
            apps.one_backend_each(),
        )
    })
    .await;
    t.apps.get("slow").set_delay(Duration::from_millis(300));
    let first = send_many(&t.client, vip(), 6, 6, |_| Req::get("/")).await;
    assert_eq!(tally(&first), [(200, 2), (503, 4)]);
    let second = send_many(&t.client, vip(), 2, 2, |_| Req::get("/")).await;
    assert_eq!(tally(&second), [(200, 2)], "the slots came back");
}

/// api-breaker: three 500s trip it, the break response comes without
/// calling the app for 2 s, and once the app is healthy again three 200s
/// close it.
#[tokio::test]
async fn api_breaker_trips_and_recovers() {
    let t = Standalone::start("plug_api_breaker", &["flaky"], |apps| {
        web(
            "v1",
            vec![route()
                .plugin(
                    "api-breaker",
                    json!({"break_response_code": 502, "break_response_body": "broken",
                           "unhealthy": {"http_statuses": [500], "failures": 3},
                           "healthy": {"successes": 3}}),
                )
                .to("flaky")],
            apps.one_backend_each(),
        )
    })
    .await;
    let app = t.apps.get("flaky");
    app.fail_with(500);
    let mut c = t.http();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(c.get("/").await.expect("request").status);
    }
    assert_eq!(statuses, [500, 500, 500, 502, 502]);
    assert_eq!(app.received(), 3, "open: the app is not called");
    let broken = c.get("/").await.expect("request");
    assert_eq!((broken.status, broken.body.as_str()), (502, "broken"));
    app.recover();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(c.get("/").await.expect("request").status);
    }
    assert_eq!(statuses, [200, 200, 200], "half-open, then closed");
    // Closed and reset: two failures do not trip it.
    app.fail_with(500);
    for _ in 0..2 {
        assert_eq!(c.get("/").await.expect("request").status, 500);
    }
    app.recover();
    assert_eq!(c.get("/").await.expect("request").status, 200);
    assert_eq!(app.received(), 9);
}
