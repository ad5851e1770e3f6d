//! Load balancing over a backend's endpoints: round robin spreads requests
//! evenly, and a consistent hash keeps each key on one endpoint, moving only
//! about a quarter of the keys when a fourth endpoint joins by config reload.

use std::collections::BTreeMap;

use remora_api::MeshConfig;
use remora_e2e::http_apps::{send_many, HttpClient, Req};
use remora_e2e::mesh_config::{backend, hash_on_header, round_robin, route, vip, web, Standalone};

#[tokio::test]
async fn round_robin_spreads_evenly_over_three_endpoints() {
    let t = Standalone::start("lb_round_robin", &["e1", "e2", "e3"], |apps| {
        let pool = round_robin(&[apps.addr("e1"), apps.addr("e2"), apps.addr("e3")]);
        web(
            "v1",
            vec![route().to("pool")],
            BTreeMap::from([("pool".to_owned(), pool)]),
        )
    })
    .await;
    const TOTAL: usize = 600;
    let results = send_many(&t.client, vip(), TOTAL, 4, |_| Req::get("/")).await;
    let mut by_app: BTreeMap<String, usize> = BTreeMap::new();
    for (i, result) in results {
        let reply = result.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(reply.status, 200, "request {i}: {:?}", reply.body);
        *by_app.entry(reply.body).or_default() += 1;
    }
    // Round robin is deterministic: 200 each, give or take the interleaving
    // of four concurrent clients. Random choice would miss this band often
    // (its standard deviation here is about 11.5).
    for app in ["e1", "e2", "e3"] {
        let n = by_app.get(app).copied().unwrap_or(0);
        assert!(
            (190..=210).contains(&n),
            "{app} answered {n} of {TOTAL}; want 200 +/- 10: {by_app:?}"
        );
    }
    assert_eq!(t.apps.received(), by_app, "no hidden retries");
}

/// Which app answers each of `keys` (sent as `x-user`), asking each key
/// `times` times over fresh connections and failing if a key ever moves.
async fn placement(t: &Standalone, keys: &[String], times: usize) -> BTreeMap<String, String> {
    let mut placed = BTreeMap::new();
    for round in 0..times {
        // A new connection per round: stickiness must come from the key,
        // not from connection reuse.
        let mut client = HttpClient::new(&t.client, vip());
        for key in keys {
            let reply = client
                .send(&Req::get("/").header("x-user", key))
                .await
                .unwrap_or_else(|e| panic!("key {key}: {e}"));
            assert_eq!(reply.status, 200, "key {key}: {:?}", reply.body);
            let previous = placed.insert(key.clone(), reply.body.clone());
            if let Some(previous) = previous {
                assert_eq!(
                    previous, reply.body,
                    "key {key} moved from {previous} to {} in round {round} with no config change",
                    reply.body
                );
            }
        }
    }
    placed
}

fn hashed(version: &str, endpoints: &[std::net::SocketAddr]) -> MeshConfig {
    let mut pool = backend(endpoints);
    pool.load_balancer = hash_on_header("x-user");
    web(
        version,
        vec![route().to("pool")],
        BTreeMap::from([("pool".to_owned(), pool)]),
    )
}

#[tokio::test]
async fn consistent_hash_keeps_keys_and_moves_about_a_quarter_to_a_new_endpoint() {
    let t = Standalone::start("lb_consistent_hash", &["e1", "e2", "e3", "e4"], |apps| {
        hashed("v1", &[apps.addr("e1"), apps.addr("e2"), apps.addr("e3")])
    })
    .await;
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let before = placement(&t, &keys, 3).await;
    let mut per_app: BTreeMap<&str, usize> = BTreeMap::new();
    for app in before.values() {
        *per_app.entry(app.as_str()).or_default() += 1;
    }
    assert_eq!(per_app.get("e4"), None, "e4 is not an endpoint yet");
    for app in ["e1", "e2", "e3"] {
        let n = per_app.get(app).copied().unwrap_or(0);
        assert!(
            n >= 20,
            "{app} holds {n} of 200 keys; a ring hash should give each endpoint a fair share: {per_app:?}"
        );
    }

    // Scale up to four endpoints by rewriting the config file.
    t.apply(&hashed(
        "v2",
        &[
            t.apps.addr("e1"),
            t.apps.addr("e2"),
            t.apps.addr("e3"),
            t.apps.addr("e4"),
        ],
    ))
    .await;
    let after = placement(&t, &keys, 2).await;
    let moved: Vec<&String> = keys.iter().filter(|k| before[*k] != after[*k]).collect();
    for key in &moved {
        assert_eq!(
            after[*key], "e4",
            "key {key} moved from {} to {}: keys may only move to the new endpoint",
            before[*key], after[*key]
        );
    }
    // Ideally a quarter (50 keys) moves; modulo hashing would move ~75%.
    let share = moved.len() as f64 / keys.len() as f64;
    assert!(
        (0.10..=0.45).contains(&share),
        "{} of {} keys moved ({:.0}%); want about a quarter",
        moved.len(),
        keys.len(),
        share * 100.0
    );
}
