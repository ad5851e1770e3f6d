//! The config file is input like any other: a FIFO swapped in at its path,
//! or a huge, deeply nested file, is rejected with a clear reason while
//! traffic goes on undelayed, and a good file afterwards still applies.
//! (Today's failure: a FIFO froze every request until restart while
//! `/live` and `/ready` said 200.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use remora_e2e::http_apps::{HttpClient, CONFIG_UPDATES};
use remora_e2e::mesh_config::{
    config_dump, round_robin, route, vip, wait_version, web, Match, Standalone,
};
use remora_e2e::metrics::Metrics;

fn config(version: &str, apps: &remora_e2e::mesh_config::Apps) -> remora_api::MeshConfig {
    web(
        version,
        vec![route().name("all").matching(Match::prefix("/")).to("a")],
        BTreeMap::from([("a".to_owned(), round_robin(&[apps.addr("a")]))]),
    )
}

/// Requests in a loop until stopped: what failed, and the slowest answer.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>, Duration)>,
}

impl Load {
    fn start(t: &Standalone) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut client = HttpClient::new(&t.client, vip());
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut sent, mut failures, mut slowest) = (0, Vec::new(), Duration::ZERO);
            let give_up = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::SeqCst) && Instant::now() < give_up {
                let started = Instant::now();
                match client.get("/").await {
                    Ok(reply) if reply.status == 200 => {}
                    Ok(reply) => failures.push(format!("{} {:?}", reply.status, reply.body)),
                    Err(e) => failures.push(e.to_string()),
                }
                slowest = slowest.max(started.elapsed());
                sent += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (sent, failures, slowest)
        });
        Load { stop, task }
    }

    async fn finish(self) -> (usize, Vec<String>, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the load stops")
            .expect("the load task panicked")
    }
}

async fn wait_rejected(t: &Standalone, before: &Metrics, what: &str) -> Metrics {
    let after = t
        .proxy
        .wait_metrics(what, |m| {
            m.since(before, CONFIG_UPDATES, &[("result", "rejected")]) >= 1.0
        })
        .await;
    assert_eq!(
        after.since(before, CONFIG_UPDATES, &[("result", "rejected")]),
        1.0,
        "{what}: exactly one rejection\n{after}"
    );
    after
}

#[tokio::test]
async fn a_fifo_at_the_config_path_is_refused_and_traffic_never_waits() {
    let t = Standalone::start("source_fifo", &["a"], |apps| config("v1", apps)).await;
    let load = Load::start(&t);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Swap the file for a FIFO that nobody writes: a blocking open or read
    // of it would never return.
    let before = t.proxy.metrics().await;
    let fifo = t.file.path().with_extension("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
    std::fs::rename(&fifo, t.file.path()).expect("rename the FIFO over the config");
    wait_rejected(&t, &before, "the FIFO rejected").await;
    let dump = config_dump(&t.proxy).await;
    assert_eq!(dump.version, "v1", "the last good config stays");
    let error = dump.last_error.unwrap_or_default();
    assert!(error.contains("a FIFO, not a regular file"), "{error}");
    let ready = t.proxy.get("/ready").await.expect("GET /ready");
    assert_eq!(ready.status, 200, "a rejected file is no reason to restart");

    // And the source is not wedged: a good file afterwards applies.
    std::fs::remove_file(t.file.path()).expect("remove the FIFO");
    t.file.write(&config("v2", &t.apps));
    wait_version(&t.proxy, "v2").await;

    let (sent, failures, slowest) = load.finish().await;
    assert!(sent > 20, "the load ran ({sent} requests)");
    assert_eq!(failures, Vec::<String>::new(), "no request failed");
    assert!(
        slowest < Duration::from_millis(500),
        "no request waited on the FIFO (slowest {slowest:?})"
    );
}

#[tokio::test]
async fn a_huge_nested_config_is_rejected_without_stalling_traffic() {
    let t = Standalone::start("source_nested", &["a"], |apps| config("v1", apps)).await;
    let load = Load::start(&t);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 200 KB of nested flow sequences.
    let depth = 100_000;
    let nested = format!(
        "version: x\nhttp: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let before = t.proxy.metrics().await;
    let written = Instant::now();
    t.file.write_text(&nested);
    wait_rejected(&t, &before, "the nested YAML rejected").await;
    let took = written.elapsed();
    let dump = config_dump(&t.proxy).await;
    assert_eq!(dump.version, "v1", "the last good config stays");
    let error = dump.last_error.unwrap_or_default();
    assert!(error.contains("http: expected mapping"), "{error}");
    assert!(
        took < Duration::from_secs(2),
        "the bounded parser refuses it at once, not after the parse timeout ({took:?})"
    );

    // Over the size limit (16 MiB): refused before parsing.
    let before = t.proxy.metrics().await;
    let huge = format!("version: y\n# {}\n", "x".repeat(17 * 1024 * 1024));
    t.file.write_text(&huge);
    wait_rejected(&t, &before, "the 17 MiB file rejected").await;
    let error = config_dump(&t.proxy).await.last_error.unwrap_or_default();
    assert!(error.contains("larger than 16777216 bytes"), "{error}");

    let (sent, failures, slowest) = load.finish().await;
    assert!(sent > 20, "the load ran ({sent} requests)");
    assert_eq!(failures, Vec::<String>::new(), "no request failed");
    assert!(
        slowest < Duration::from_millis(500),
        "no request waited on the config (slowest {slowest:?}; the nested file took {took:?})"
    );
}
