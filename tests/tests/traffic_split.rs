//! Traffic splitting: weighted `backendRefs` split requests exactly by
//! their weights (every `total weight` consecutive requests of a route),
//! and a header-matched canary route takes exactly the flagged requests
//! while the split route takes the rest.

use std::collections::BTreeMap;

use remora_e2e::http_apps::{send_many, Outcome, Req, REQUESTS};
use remora_e2e::mesh_config::{route, vip, web, Match, Standalone, SERVICE};

/// Counts successful responses by the app that answered, failing the test on
/// any error or non-200 response.
fn tally(results: Vec<Outcome>) -> BTreeMap<String, usize> {
    let mut by_app = BTreeMap::new();
    for (i, result) in results {
        let reply = result.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            reply.status,
            200,
            "request {i}: {:?} {:?}",
            reply.remora_error(),
            reply.body
        );
        *by_app.entry(reply.body).or_insert(0) += 1;
    }
    by_app
}

#[tokio::test]
async fn a_90_10_split_over_2000_requests_is_exactly_1800_200() {
    let t = Standalone::start("split_90_10", &["v1", "v2"], |apps| {
        web(
            "v1",
            vec![route()
                .name("split")
                .to_weighted("v1", 90)
                .to_weighted("v2", 10)],
            apps.one_backend_each(),
        )
    })
    .await;
    let before = t.proxy.metrics().await;
    const TOTAL: usize = 2000;
    let results = send_many(&t.client, vip(), TOTAL, 8, |_| Req::get("/")).await;
    let by_app = tally(results);
    let v1 = by_app.get("v1").copied().unwrap_or(0);
    let v2 = by_app.get("v2").copied().unwrap_or(0);
    assert_eq!(
        v1 + v2,
        TOTAL,
        "every response came from v1 or v2: {by_app:?}"
    );
    // The split is exact: 2,000 is 20 rounds of the total weight 100, even
    // with 8 requests in flight at once.
    assert_eq!((v1, v2), (1800, 200), "{by_app:?}");
    // What the apps received matches what the client saw: no hidden retries.
    assert_eq!(t.apps.received(), by_app, "requests received by each app");
    let after = t
        .proxy
        .wait_metrics("2,000 requests counted", |m| {
            m.since(&before, REQUESTS, &[("route", "split")]) >= TOTAL as f64
        })
        .await;
    for (backend, count) in [("v1", v1), ("v2", v2)] {
        let labels = [
            ("direction", "outbound"),
            ("service", SERVICE),
            ("route", "split"),
            ("backend", backend),
            ("status", "200"),
        ];
        assert_eq!(
            after.since(&before, REQUESTS, &labels),
            count as f64,
            "requests counted for backend {backend}\n{after}"
        );
    }
}

#[tokio::test]
async fn a_header_matched_canary_gets_every_flagged_request_and_no_other() {
    let t = Standalone::start("split_canary", &["v1", "v2"], |apps| {
        web(
            "v1",
            vec![
                route()
                    .name("canary")
                    .matching(Match::prefix("/").header("x-canary", "true"))
                    .to("v2"),
                // Even unflagged traffic would put 10% on v2 if the split
                // leaked into the canary decision: keep it all on v1.
                route()
                    .name("stable")
                    .to_weighted("v1", 1)
                    .to_weighted("v2", 0),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    const TOTAL: usize = 400;
    let results = send_many(&t.client, vip(), TOTAL, 4, |i| {
        if i % 2 == 0 {
            Req::get(&format!("/item/{i}")).header("x-canary", "true")
        } else {
            // Near misses stay stable.
            let value = ["false", "TRUE", "yes", "truer"][i / 2 % 4];
            Req::get(&format!("/item/{i}")).header("x-canary", value)
        }
    })
    .await;
    assert_eq!(results.len(), TOTAL);
    for (i, result) in results {
        let reply = result.unwrap_or_else(|e| panic!("request {i}: {e}"));
        let want = if i % 2 == 0 { "v2" } else { "v1" };
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, want),
            "request {i} ({}flagged)",
            if i % 2 == 0 { "" } else { "not " }
        );
    }
    assert_eq!(t.apps.get("v2").received(), TOTAL / 2);
    assert_eq!(t.apps.get("v1").received(), TOTAL / 2);
}
