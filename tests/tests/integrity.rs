//! Byte integrity through two proxies: 100 MB each way arrive with the same
//! SHA-256, and a half-closed client still reads the server's whole reply.

use std::time::Duration;

use remora_e2e::metrics::{CLOSED, OPENED, RECEIVED_BYTES, SENT_BYTES};
use remora_e2e::{round_trip, within, TestNet, INBOUND, OUTBOUND, WAIT};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOTAL: usize = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// Deterministic pseudo-random bytes (xorshift64), so nothing compresses
/// or lines up by accident.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for word in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_echo_through_two_proxies_with_the_same_sha256() {
    let net = TestNet::new("integrity_100mb");
    let a = net.pod("a");
    let b = net.pod("b");
    let _app = b.spawn_echo_server(8080);
    let proxy_a = a.mesh().await;
    // One worker on the server side: the current-thread runtime carries it too.
    let proxy_b = b.mesh_with(&[], &["--workers", "1"]).await;
    let (a0, b0) = (proxy_a.metrics().await, proxy_b.metrics().await);

    let stream = a
        .connect(b.addr4(8080))
        .await
        .expect("a connects to b:8080");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut buf = vec![0; CHUNK];
        for _ in 0..TOTAL / CHUNK {
            fill(&mut state, &mut buf);
            hash.update(&buf);
            write.write_all(&buf).await?;
        }
        write.shutdown().await?;
        std::io::Result::Ok(hash.finalize())
    });
    let reader = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut buf = vec![0; CHUNK];
        let mut total = 0;
        loop {
            let n = read.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n;
            hash.update(&buf[..n]);
        }
        std::io::Result::Ok((total, hash.finalize()))
    });
    let limit = Duration::from_secs(180);
    let sent = within(limit, "100 MB written", writer)
        .await
        .unwrap()
        .expect("write 100 MB");
    let (received, echoed) = within(limit, "100 MB echoed", reader)
        .await
        .unwrap()
        .expect("read the echo");
    assert_eq!(received, TOTAL, "bytes echoed back");
    assert_eq!(
        echoed, sent,
        "SHA-256 of the echo equals SHA-256 of what was sent"
    );

    let total = TOTAL as f64;
    let a1 = proxy_a
        .wait_metrics("the outbound connection closed", |m| {
            m.since(&a0, CLOSED, OUTBOUND) >= 1.0
        })
        .await;
    let b1 = proxy_b
        .wait_metrics("the inbound connection closed", |m| {
            m.since(&b0, CLOSED, INBOUND) >= 1.0
        })
        .await;
    assert_eq!(
        a1.since(&a0, RECEIVED_BYTES, OUTBOUND),
        total,
        "a's proxy: bytes from the app\n{a1}"
    );
    assert_eq!(
        a1.since(&a0, SENT_BYTES, OUTBOUND),
        total,
        "a's proxy: bytes to the app\n{a1}"
    );
    assert_eq!(
        b1.since(&b0, RECEIVED_BYTES, INBOUND),
        total,
        "b's proxy: bytes from a\n{b1}"
    );
    assert_eq!(
        b1.since(&b0, SENT_BYTES, INBOUND),
        total,
        "b's proxy: bytes to a\n{b1}"
    );
}

/// Reads the whole request until EOF, then answers with how much it read
/// followed by 64 KiB, then closes.
async fn reply_after_eof(mut stream: TcpStream) {
    let mut request = Vec::new();
    if stream.read_to_end(&mut request).await.is_err() {
        return;
    }
    let _ = stream.write_all(&reply_for(request.len())).await;
    let _ = stream.shutdown().await;
}

fn reply_for(len: usize) -> Vec<u8> {
    let mut reply = format!("\x00read {len} bytes\n").into_bytes();
    reply.extend((0..64 * 1024u32).map(|i| (i % 241) as u8));
    reply
}

#[tokio::test]
async fn half_closed_client_still_reads_the_whole_reply() {
    let net = TestNet::new("integrity_halfclose");
    let a = net.pod("a");
    let b = net.pod("b");
    let app = b.spawn_server(8080, reply_after_eof);
    let proxy_a = a.mesh().await;
    let _proxy_b = b.mesh().await;
    let before = proxy_a.metrics().await;

    let request = vec![0u8; 10 * 1024];
    let mut stream = a
        .connect(b.addr4(8080))
        .await
        .expect("a connects to b:8080");
    // Writes, shuts down the write side, then reads until the server closes.
    let reply = within(
        WAIT,
        "the reply after half-close",
        round_trip(&mut stream, &request),
    )
    .await
    .expect("half-close then read the reply");
    assert_eq!(reply.len(), reply_for(request.len()).len(), "reply length");
    assert!(
        reply == reply_for(request.len()),
        "the server read the whole request and its reply arrived whole"
    );
    let after = proxy_a.metrics().await;
    assert_eq!(
        after.since(&before, OPENED, OUTBOUND),
        1.0,
        "went through a's proxy\n{after}"
    );
    let peers: Vec<String> = app.peers().iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(peers, ["127.0.0.6"], "went through b's proxy");
}
