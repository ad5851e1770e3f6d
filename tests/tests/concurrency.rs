//! Concurrency: 1,000 connections open at once through one proxy all get
//! their own bytes back, and the proxy accounts for every one of them.

use std::sync::Arc;
use std::time::Duration;

use remora_e2e::metrics::{ACTIVE, CLOSED, OPENED};
use remora_e2e::{assert_closed_without_data, exchange, within, TestNet, OUTBOUND, WAIT};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Barrier, Semaphore};

const CONNECTIONS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections_through_one_proxy_all_echo() {
    let net = TestNet::new("concurrency_1000");
    let a = net.pod("a");
    let b = net.pod("b");
    let app = b.spawn_echo_server(8080);
    // One worker, as a sidecar usually runs: the current-thread runtime.
    let proxy = a.mesh_with(&[], &["--workers", "1"]).await;
    let before = proxy.metrics().await;

    let target = b.addr4(8080);
    // Throttles only the connect phase; every connection stays open until all are.
    let connecting = Arc::new(Semaphore::new(100));
    let all_open = Arc::new(Barrier::new(CONNECTIONS + 1));
    let release = Arc::new(Barrier::new(CONNECTIONS + 1));
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let socket = a.socket_for(target);
        let (connecting, all_open, release) =
            (connecting.clone(), all_open.clone(), release.clone());
        tasks.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await.expect("semaphore open");
            let mut stream = within(WAIT, "connect", socket.connect(target))
                .await
                .unwrap_or_else(|e| panic!("connection {i}: connect: {e}"));
            let message = format!("\x00connection {i:04} says hello, padded to 64 bytes.....");
            let reply = within(WAIT, "echo", exchange(&mut stream, message.as_bytes()))
                .await
                .unwrap_or_else(|e| panic!("connection {i}: echo: {e}"));
            assert_eq!(
                reply,
                message.as_bytes(),
                "connection {i} got its own bytes back"
            );
            drop(permit);
            all_open.wait().await;
            release.wait().await;
            stream.shutdown().await.expect("shutdown");
            assert_closed_without_data(&mut stream, &format!("connection {i}")).await;
        }));
    }
    let limit = Duration::from_secs(120);
    within(limit, "all 1,000 connections to echo", all_open.wait()).await;
    let open = proxy
        .wait_metrics("1,000 active outbound connections", |m| {
            m.get(ACTIVE, OUTBOUND) >= CONNECTIONS as f64
        })
        .await;
    assert_eq!(
        open.get(ACTIVE, OUTBOUND),
        CONNECTIONS as f64,
        "active outbound gauge\n{open}"
    );
    within(limit, "release", release.wait()).await;
    for task in tasks {
        within(limit, "a connection to finish", task)
            .await
            .expect("connection task");
    }

    let after = proxy
        .wait_metrics("1,000 outbound connections closed", |m| {
            m.since(&before, CLOSED, OUTBOUND) >= CONNECTIONS as f64
        })
        .await;
    assert_eq!(
        after.since(&before, OPENED, OUTBOUND),
        CONNECTIONS as f64,
        "opened\n{after}"
    );
    assert_eq!(
        after.since(&before, CLOSED, OUTBOUND),
        CONNECTIONS as f64,
        "closed\n{after}"
    );
    assert_eq!(
        after.get(ACTIVE, OUTBOUND),
        0.0,
        "nothing left active\n{after}"
    );
    assert_eq!(
        app.accepted(),
        CONNECTIONS,
        "the app accepted each connection once"
    );
}
