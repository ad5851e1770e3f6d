//! The inbound proxy reuses its connections to the app: a pooled HTTP/1
//! connection goes back to the pool when the response body ends, not when
//! the client's connection closes, so many clients one after another are
//! served over one or two app connections.

use remora_e2e::http_apps::{HttpClient, REQUESTS};
use remora_e2e::metrics::OPENED;
use remora_e2e::{TestNet, INBOUND};

#[tokio::test]
async fn fifty_clients_in_turn_reach_the_app_over_at_most_two_pooled_connections() {
    let net = TestNet::new("inbound_pool");
    let a = net.pod("a");
    let b = net.pod("b");
    let app = b.spawn_http_app(8080, "pooled");
    let _proxy_a = a.mesh().await;
    let proxy_b = b.mesh().await;
    let before = proxy_b.metrics().await;

    const REQUESTS_SENT: usize = 50;
    // Every request on its own client connection, and every client kept
    // open until the end: an upstream connection that went back to the
    // pool only when its client left would be needed 50 times over.
    let mut clients = Vec::new();
    for i in 0..REQUESTS_SENT {
        let mut client = HttpClient::new(&a, b.addr4(8080));
        let reply = client
            .get(&format!("/r/{i}"))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "pooled"),
            "request {i}"
        );
        assert_eq!(client.connects(), 1, "request {i} on its own connection");
        clients.push(client);
    }

    let after = proxy_b
        .wait_metrics("50 inbound requests", |m| {
            m.since(&before, REQUESTS, INBOUND) >= REQUESTS_SENT as f64
        })
        .await;
    assert_eq!(
        after.since(
            &before,
            OPENED,
            &[("direction", "inbound"), ("protocol", "http1")]
        ),
        REQUESTS_SENT as f64,
        "b's proxy accepted one HTTP/1 connection per client\n{after}"
    );
    assert_eq!(
        app.received(),
        REQUESTS_SENT,
        "every request reached the app"
    );
    let peers = app.peers();
    assert!(
        peers.iter().all(|p| p.ip().to_string() == "127.0.0.6"),
        "the app is reached only through b's inbound proxy: {peers:?}"
    );
    assert!(
        peers.len() <= 2,
        "the app accepted {} connections for {REQUESTS_SENT} sequential requests; \
         the inbound proxy should reuse its pooled connection; the first: {:?}",
        peers.len(),
        &peers[..peers.len().min(5)]
    );
    drop(clients);
}
