//! Bad and unusual input: garbage is forwarded as opaque bytes, servers that
//! speak first get their banner through, resets and refused upstreams are
//! counted, and the proxy keeps serving through all of it.

use std::time::{Duration, Instant};

use remora_e2e::metrics::{CLOSED, DETECT_TIMEOUTS, ERRORS, OPENED};
use remora_e2e::{
    assert_closed_without_data, exchange, within, Pod, ProxyHandle, TestNet, OUTBOUND, WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BANNER: &[u8] = b"220 b.example ESMTP ready\r\n";
const OUTBOUND_OPAQUE: &[(&str, &str)] = &[("direction", "outbound"), ("protocol", "opaque")];

/// The proxy is up and still carries an ordinary echo to `target`.
async fn assert_still_serving(client: &Pod, target: std::net::SocketAddr, proxy: &mut ProxyHandle) {
    proxy.assert_up().await;
    let mut stream = client
        .connect(target)
        .await
        .expect("connect after the bad input");
    let reply = within(
        WAIT,
        "the echo",
        exchange(&mut stream, b"\x00still serving"),
    )
    .await
    .expect("echo");
    assert_eq!(reply, b"\x00still serving", "echo after the bad input");
}

#[tokio::test]
async fn garbage_bytes_are_forwarded_as_opaque() {
    let net = TestNet::new("bad_garbage");
    let a = net.pod("a");
    let b = net.pod("b");
    let _app = b.spawn_echo_server(8080);
    let mut proxy_a = a.mesh().await;
    let mut proxy_b = b.mesh().await;
    let before = proxy_a.metrics().await;

    let garbage = vec![0xff; 1024];
    let mut stream = a
        .connect(b.addr4(8080))
        .await
        .expect("a connects to b:8080");
    let reply = within(WAIT, "the echo", exchange(&mut stream, &garbage))
        .await
        .expect("echo garbage");
    assert_eq!(reply, garbage, "1 KiB of 0xff echoed intact");
    drop(stream);

    let after = proxy_a
        .wait_metrics("the connection closed", |m| {
            m.since(&before, CLOSED, OUTBOUND) >= 1.0
        })
        .await;
    assert_eq!(
        after.since(&before, OPENED, OUTBOUND_OPAQUE),
        1.0,
        "counted as opaque\n{after}"
    );
    proxy_b.assert_up().await;
    assert_still_serving(&a, b.addr4(8080), &mut proxy_a).await;
}

/// Connects, sends nothing, and returns how long the banner took to arrive.
async fn time_to_banner(client: &Pod, target: std::net::SocketAddr) -> Duration {
    let started = Instant::now();
    let mut stream = client
        .connect(target)
        .await
        .expect("connect to the banner server");
    let mut banner = vec![0; BANNER.len()];
    within(WAIT, "the server's banner", stream.read_exact(&mut banner))
        .await
        .expect("read the banner");
    let elapsed = started.elapsed();
    assert_eq!(banner, BANNER, "banner intact");
    // The connection still works both ways after the banner.
    let reply = within(WAIT, "the echo", exchange(&mut stream, b"EHLO a\r\n"))
        .await
        .expect("echo");
    assert_eq!(reply, b"EHLO a\r\n");
    elapsed
}

#[tokio::test]
async fn server_first_banner_arrives_after_the_detect_timeout() {
    let net = TestNet::new("bad_banner");
    let a = net.pod("a");
    let b = net.pod("b");
    let _app = b.spawn_banner_server(8080, BANNER);
    let proxy = a.mesh_with(&[], &["--detect-timeout", "1s"]).await;
    let before = proxy.metrics().await;

    let elapsed = time_to_banner(&a, b.addr4(8080)).await;
    assert!(
        elapsed >= Duration::from_millis(900),
        "banner after {elapsed:?}: the proxy should wait for the 1 s detect timeout"
    );
    let after = proxy.metrics().await;
    assert_eq!(
        after.since(&before, DETECT_TIMEOUTS, OUTBOUND),
        1.0,
        "one detect timeout\n{after}"
    );
    assert_eq!(
        after.since(&before, OPENED, OUTBOUND_OPAQUE),
        1.0,
        "treated as opaque\n{after}"
    );
}

#[tokio::test]
async fn server_first_banner_on_an_opaque_port_arrives_immediately() {
    let net = TestNet::new("bad_banner_opaque");
    let a = net.pod("a");
    let b = net.pod("b");
    let _app = b.spawn_banner_server(3306, BANNER);
    let proxy = a.mesh_with(&[], &["--detect-timeout", "3s"]).await;
    let before = proxy.metrics().await;

    let elapsed = time_to_banner(&a, b.addr4(3306)).await;
    assert!(
        elapsed < Duration::from_millis(1500),
        "banner on opaque port 3306 took {elapsed:?}: it must skip the 3 s detection"
    );
    let after = proxy.metrics().await;
    assert_eq!(
        after.since(&before, DETECT_TIMEOUTS, OUTBOUND),
        0.0,
        "no detect timeout\n{after}"
    );
    assert_eq!(
        after.since(&before, OPENED, OUTBOUND_OPAQUE),
        1.0,
        "counted as opaque\n{after}"
    );
}

#[tokio::test]
async fn client_reset_mid_stream_is_counted_and_the_proxy_keeps_serving() {
    let net = TestNet::new("bad_reset");
    let a = net.pod("a");
    let b = net.pod("b");
    let _app = b.spawn_echo_server(8080);
    let mut proxy = a.mesh().await;
    let before = proxy.metrics().await;

    let mut stream = a
        .connect(b.addr4(8080))
        .await
        .expect("a connects to b:8080");
    let reply = within(WAIT, "the echo", exchange(&mut stream, &[0u8; 1024]))
        .await
        .expect("echo");
    assert_eq!(reply, [0u8; 1024]);
    stream.set_zero_linger().expect("SO_LINGER 0");
    drop(stream); // sends RST

    let io_errors = &[("direction", "outbound"), ("reason", "io")];
    let after = proxy
        .wait_metrics("an outbound io error and the connection closed", |m| {
            m.since(&before, ERRORS, io_errors) >= 1.0 && m.since(&before, CLOSED, OUTBOUND) >= 1.0
        })
        .await;
    assert_eq!(
        after.since(&before, ERRORS, io_errors),
        1.0,
        "one io error for one reset\n{after}"
    );
    assert_still_serving(&a, b.addr4(8080), &mut proxy).await;
}

#[tokio::test]
async fn refused_destination_closes_the_client_cleanly_and_is_counted() {
    let net = TestNet::new("bad_refused");
    let a = net.pod("a");
    let b = net.pod("b");
    let _app = b.spawn_echo_server(8080);
    let mut proxy = a.mesh().await;
    let before = proxy.metrics().await;
    let connect_errors = &[("direction", "outbound"), ("reason", "connect")];

    // Nothing listens on b:9. The client sends nothing: it must see EOF.
    let mut silent = a
        .connect(b.addr4(9))
        .await
        .expect("the proxy accepts the connection to b:9");
    let reset =
        assert_closed_without_data(&mut silent, "silent client to a refused destination").await;
    assert!(
        !reset,
        "silent client to a refused destination got a reset, not a clean close"
    );
    proxy
        .wait_metrics("a connect error", |m| {
            m.since(&before, ERRORS, connect_errors) >= 1.0
        })
        .await;

    // A client that already sent bytes: closed without data (EOF or reset).
    let mut talker = a
        .connect(b.addr4(9))
        .await
        .expect("the proxy accepts the connection to b:9");
    let _ = talker.write_all(b"\x00hello?").await;
    assert_closed_without_data(&mut talker, "talking client to a refused destination").await;
    let after = proxy
        .wait_metrics("a second connect error", |m| {
            m.since(&before, ERRORS, connect_errors) >= 2.0
        })
        .await;
    assert_eq!(
        after.since(&before, ERRORS, connect_errors),
        2.0,
        "one connect error per connection\n{after}"
    );
    assert_still_serving(&a, b.addr4(8080), &mut proxy).await;
}
