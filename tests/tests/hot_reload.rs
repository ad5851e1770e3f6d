//! Hot reload of the standalone config file: rewriting it changes routes and
//! endpoints within moments while traffic keeps flowing without a single
//! failed request, and an invalid file is rejected with the path of the bad
//! field while the last good config stays in force.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use remora_api::MeshConfig;
use remora_e2e::http_apps::{HttpClient, CONFIG_UPDATES};
use remora_e2e::mesh_config::{
    config_dump, round_robin, route, vip, wait_version, web, Apps, ConfigFile, Match, Standalone,
};
use remora_e2e::{TestNet, WAIT};

/// `/flip` goes to backend `flip`; `/pool` is balanced over `pool`.
fn config(version: &str, apps: &Apps, flip: &str, pool: &[&str]) -> MeshConfig {
    let mut backends = BTreeMap::new();
    for name in ["a", "b"] {
        backends.insert(name.to_owned(), round_robin(&[apps.addr(name)]));
    }
    let pool: Vec<SocketAddr> = pool.iter().map(|n| apps.addr(n)).collect();
    backends.insert("pool".to_owned(), round_robin(&pool));
    web(
        version,
        vec![
            route()
                .name("flip")
                .matching(Match::prefix("/flip"))
                .to(flip),
            route()
                .name("pool")
                .matching(Match::prefix("/pool"))
                .to("pool"),
        ],
        backends,
    )
}

/// Sends `GET path`; an error or a non-200 is recorded as a failure.
async fn get(client: &mut HttpClient, path: &str, failures: &Mutex<Vec<String>>) -> String {
    match client.get(path).await {
        Ok(reply) if reply.status == 200 => reply.body,
        Ok(reply) => {
            let failure = format!(
                "GET {path}: {} {:?} {:?}",
                reply.status,
                reply.remora_error(),
                reply.body
            );
            failures.lock().expect("failures poisoned").push(failure);
            String::new()
        }
        Err(e) => {
            failures
                .lock()
                .expect("failures poisoned")
                .push(format!("GET {path}: {e}"));
            String::new()
        }
    }
}

/// Sends `GET path` until `done(body)` holds, failing the test after 3 s.
async fn probe_until(
    probe: &mut HttpClient,
    path: &str,
    failures: &Mutex<Vec<String>>,
    what: &str,
    mut done: impl FnMut(&str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let body = get(probe, path, failures).await;
        if !body.is_empty() && done(&body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not in effect after 3 s; GET {path} last answered by {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn twenty_rewrites_under_load_take_effect_and_lose_no_request() {
    let t = Standalone::start("reload_under_load", &["a", "b", "c1", "c2"], |apps| {
        config("v0", apps, "a", &["c1"])
    })
    .await;
    let before = t.proxy.metrics().await;
    let failures = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));

    // Background clients keep requests flowing on both routes throughout,
    // over kept-alive connections, and check each answer is plausible.
    let load: Vec<_> = (0..2)
        .map(|_| {
            let mut client = HttpClient::new(&t.client, vip());
            let (failures, stop, sent) = (failures.clone(), stop.clone(), sent.clone());
            tokio::spawn(async move {
                let give_up = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < give_up {
                    for (path, valid) in [("/flip", ["a", "b"]), ("/pool", ["c1", "c2"])] {
                        let body = get(&mut client, path, &failures).await;
                        if !body.is_empty() && !valid.contains(&body.as_str()) {
                            failures
                                .lock()
                                .expect("failures poisoned")
                                .push(format!("GET {path} answered by {body}"));
                        }
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();

    // Alternate route changes (flip /flip between a and b) with endpoint
    // changes (add c2, drop c1, add c1, drop c2, ...).
    let pools: [&[&str]; 4] = [&["c1", "c2"], &["c2"], &["c1", "c2"], &["c1"]];
    let mut flip = "a";
    let mut pool: &[&str] = &["c1"];
    let mut probe = HttpClient::new(&t.client, vip());
    let started = Instant::now();
    for i in 1..=20 {
        let version = format!("v{i}");
        let (mut added, mut removed) = (None, None);
        if i % 2 == 1 {
            flip = if flip == "a" { "b" } else { "a" };
        } else {
            let next = pools[(i / 2 - 1) % pools.len()];
            added = next.iter().copied().find(|e| !pool.contains(e));
            removed = pool.iter().copied().find(|e| !next.contains(e));
            pool = next;
        }
        t.file.write(&config(&version, &t.apps, flip, pool));
        let what = format!("{version}: /flip -> {flip}, /pool over {pool:?}");
        match (added, removed) {
            (None, None) => {
                probe_until(&mut probe, "/flip", &failures, &what, |body| body == flip).await;
            }
            // An endpoint was added: it starts answering.
            (Some(added), _) => {
                probe_until(&mut probe, "/pool", &failures, &what, |body| body == added).await;
            }
            // An endpoint was removed: ten answers in a row avoid it.
            (None, Some(removed)) => {
                let mut streak = 0;
                probe_until(&mut probe, "/pool", &failures, &what, |body| {
                    streak = if body == removed { 0 } else { streak + 1 };
                    streak >= 10
                })
                .await;
            }
        }
        // And /config_dump agrees about what is in force.
        wait_version(&t.proxy, &version).await;
    }
    let reload_time = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for task in load {
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("background clients stop")
            .expect("background client panicked");
    }

    let failures = failures.lock().expect("failures poisoned").clone();
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of ~{sent} requests failed during 20 reloads in {reload_time:?}; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(sent >= 20, "the background load ran ({sent} requests)");
    let after = t
        .proxy
        .wait_metrics("20 applied updates", |m| {
            m.since(&before, CONFIG_UPDATES, &[("result", "applied")]) >= 20.0
        })
        .await;
    assert_eq!(
        after.since(&before, CONFIG_UPDATES, &[("result", "applied")]),
        20.0,
        "one applied update per rewrite\n{after}"
    );
    assert_eq!(
        after.since(&before, CONFIG_UPDATES, &[("result", "rejected")]),
        0.0,
        "{after}"
    );
}

#[tokio::test]
async fn an_invalid_file_is_rejected_and_the_last_good_config_stays() {
    let t = Standalone::start("reload_invalid", &["a", "b", "c1"], |apps| {
        config("v1", apps, "a", &["c1"])
    })
    .await;
    let mut client = t.http();

    // Each bad file would also send /flip to b, if it were applied.
    let mut unknown_field = serde_json::to_value(config("v2", &t.apps, "b", &["c1"])).unwrap();
    unknown_field["outbound"]["services"][0]["ports"][0]["routes"][0]["timeout"] =
        serde_json::json!("1s");
    let mut missing_backend = config("v3", &t.apps, "b", &["c1"]);
    missing_backend.outbound.services[0].ports[0].routes[0].backend_refs[0].name =
        "nowhere".to_owned();
    let missing_backend = serde_json::to_value(missing_backend).unwrap();
    let cases = [
        (
            "an unknown field",
            unknown_field,
            "outbound.services[0].ports[0].routes[0].timeout",
        ),
        (
            "a backendRef to a missing backend",
            missing_backend,
            "outbound.services[0].ports[0].routes[0].backendRefs[0].name",
        ),
    ];
    for (what, bad, field) in cases {
        let before = t.proxy.metrics().await;
        t.file.write_json(&bad);
        let after = t
            .proxy
            .wait_metrics(&format!("the file with {what} rejected"), |m| {
                m.since(&before, CONFIG_UPDATES, &[("result", "rejected")]) >= 1.0
            })
            .await;
        assert_eq!(
            after.since(&before, CONFIG_UPDATES, &[("result", "rejected")]),
            1.0,
            "{what}: one rejection\n{after}"
        );
        assert_eq!(
            after.since(&before, CONFIG_UPDATES, &[("result", "applied")]),
            0.0,
            "{what}: nothing applied\n{after}"
        );
        let dump = config_dump(&t.proxy).await;
        assert_eq!(dump.version, "v1", "{what}: the last good version stays");
        let error = dump.last_error.unwrap_or_default();
        assert!(
            error.contains(field),
            "{what}: lastError must name {field}; got {error:?}"
        );
        for _ in 0..5 {
            let reply = client.get("/flip").await.expect("GET /flip");
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (200, "a"),
                "{what}: traffic follows the last good config"
            );
        }
    }

    // A good file afterwards is applied and clears the error.
    t.file.write(&config("v4", &t.apps, "b", &["c1"]));
    let dump = wait_version(&t.proxy, "v4").await;
    assert_eq!(dump.last_error, None, "a good config clears lastError");
    let reply = client.get("/flip").await.expect("GET /flip");
    assert_eq!((reply.status, reply.body.as_str()), (200, "b"));
}

/// An authorization policy with no rule would match nothing (or, read the
/// other way, everything): a proxy refuses to start on it, naming the field.
#[tokio::test]
async fn a_proxy_refuses_to_start_on_an_authorization_policy_without_rules() {
    let net = TestNet::new("reload_authz_start");
    let pod = net.pod("a");
    let file = ConfigFile::new("reload_authz_start");
    file.write_json(&serde_json::json!({
        "version": "authz-v1",
        "inbound": { "authorization": { "policies": [{ "name": "p", "action": "allow", "rules": [] }] } }
    }));
    let mut proxy = pod.spawn_proxy(&file.proxy_args());
    let status = proxy.wait_exit(WAIT).await.unwrap_or_else(|| {
        panic!(
            "the proxy is still running on a policy without rules; its log:\n{}",
            proxy.log()
        )
    });
    let log = proxy.log();
    assert!(
        !status.success(),
        "the proxy exited with {status} on an invalid config; its log:\n{log}"
    );
    assert!(
        log.contains("inbound.authorization.policies[0].rules"),
        "the proxy's error must name the field; its log:\n{log}"
    );
}

/// Reloading a running proxy to an authorization policy with a malformed
/// identity pattern is rejected like any invalid config: the previous one
/// stays in force.
#[tokio::test]
async fn a_reload_to_a_malformed_authorization_is_rejected_and_the_last_good_config_stays() {
    let t = Standalone::start("reload_authz", &["a", "b", "c1"], |apps| {
        config("v1", apps, "a", &["c1"])
    })
    .await;
    let mut client = t.http();
    assert_eq!(client.get("/flip").await.expect("GET /flip").body, "a");

    // Applied, this would also send /flip to b.
    let mut bad = serde_json::to_value(config("v2", &t.apps, "b", &["c1"])).unwrap();
    bad["inbound"] = serde_json::json!({ "authorization": { "policies": [{
        "name": "p", "action": "deny",
        "rules": [{ "identities": ["spiffe://cluster.local/ns/*/sa/x"] }]
    }] } });
    let before = t.proxy.metrics().await;
    t.file.write_json(&bad);
    let after = t
        .proxy
        .wait_metrics("the malformed config rejected", |m| {
            m.since(&before, CONFIG_UPDATES, &[("result", "rejected")]) >= 1.0
        })
        .await;
    assert_eq!(
        after.since(&before, CONFIG_UPDATES, &[("result", "rejected")]),
        1.0,
        "one rejection\n{after}"
    );
    assert_eq!(
        after.since(&before, CONFIG_UPDATES, &[("result", "applied")]),
        0.0,
        "nothing applied\n{after}"
    );
    let dump = config_dump(&t.proxy).await;
    assert_eq!(dump.version, "v1", "the last good version stays");
    let error = dump.last_error.unwrap_or_default();
    assert!(
        error.contains("inbound.authorization.policies[0].rules[0].identities[0]"),
        "lastError must name the field; got {error:?}"
    );
    for _ in 0..5 {
        let reply = client.get("/flip").await.expect("GET /flip");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "a"),
            "traffic follows the last good config"
        );
    }
}
