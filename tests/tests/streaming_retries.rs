//! Retries and timeouts as Gateway API says, without buffering: a route
//! with a retry policy streams the request body to the first attempt at
//! once (an interactive gRPC stream works, an upload is seen before its
//! last byte), a connection reset before the response head is retried, a
//! `0s` timeout is no timeout, and a wildcard host name routes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use remora_api::Retry;
use remora_e2e::grpc_apps::pb::echo_client::EchoClient;
use remora_e2e::grpc_apps::pb::ChatMessage;
use remora_e2e::http_apps::{HttpClient, Req, RETRIES};
use remora_e2e::mesh_config::{
    host_service, round_robin, route, vip, web, ConfigFile, Standalone, FIRST_APP_PORT,
};
use remora_e2e::{within, TestNet, WAIT};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Retries on connection errors only (no status codes), twice.
fn retry_stanza() -> Retry {
    Retry {
        attempts: 2,
        backoff: Some(Duration::from_millis(5)),
        codes: Vec::new(),
        grpc_codes: Vec::new(),
        on_connect_failure: true,
    }
}

#[tokio::test]
async fn an_interactive_grpc_stream_works_on_a_route_with_retries() {
    const VIP: &str = "10.96.0.20:50051";
    let net = TestNet::new("stream_retry_bidi");
    let a = net.pod("a");
    let b = net.pod("b");
    let _app = b.spawn_grpc_echo_server(50051);
    let config = ConfigFile::new("stream_retry_bidi");
    config.write_json(&json!({
        "version": "bidi-retry",
        "outbound": { "services": [{
            "name": "echo.default",
            "addresses": ["10.96.0.20"],
            "ports": [{
                "port": 50051,
                "protocol": "grpc",
                "routes": [{
                    "name": "chat",
                    "backendRefs": [{ "name": "echo" }],
                    "retry": { "attempts": 2, "grpcCodes": ["unavailable"] },
                }],
            }],
        }]},
        "backends": { "echo": { "endpoints": [{ "address": b.addr4(50051).to_string() }] } },
    }));
    let _proxy_a = a.mesh_with(&[], &config.proxy_args()).await;
    let _proxy_b = b.mesh().await;
    let vip: SocketAddr = VIP.parse().expect("VIP");
    let channel = within(WAIT, "the gRPC connection", a.grpc_channel(vip))
        .await
        .expect("gRPC channel");
    let mut client = EchoClient::new(channel);

    // Lock-step: each message is sent only after the previous one's echo
    // came back. A proxy that waits for the end of the request stream
    // before sending anything never answers the first.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let outgoing = tokio_stream::wrappers::ReceiverStream::new(rx);
    let message = |seq: u32| ChatMessage {
        seq,
        text: format!("turn {seq}"),
        fail_with: 0,
    };
    tx.send(message(0)).await.expect("first message");
    let mut replies = within(WAIT, "the chat to start", client.chat(outgoing))
        .await
        .expect("Chat")
        .into_inner();
    for seq in 0..10u32 {
        let reply = within(
            Duration::from_secs(5),
            &format!("the echo of turn {seq} before the stream ends"),
            replies.message(),
        )
        .await
        .expect("a reply")
        .expect("not the end");
        assert_eq!(
            (reply.seq, reply.text.as_str()),
            (seq, format!("turn {seq}").as_str())
        );
        if seq < 9 {
            tx.send(message(seq + 1)).await.expect("next message");
        }
    }
    drop(tx);
    let end = within(WAIT, "the end of the stream", replies.message())
        .await
        .expect("a clean end");
    assert!(end.is_none());
}

/// Answers as soon as the first chunk of the request body has arrived,
/// with that chunk, before the client has sent the rest.
async fn first_chunk_app(stream: tokio::net::TcpStream) {
    let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async {
        let mut body = req.into_body();
        let first = match body.frame().await {
            Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
            _ => bytes::Bytes::new(),
        };
        // Keep reading in the background so the connection stays sane.
        tokio::spawn(async move { while body.frame().await.is_some() {} });
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(first)))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

#[tokio::test]
async fn an_upload_on_a_retry_route_reaches_the_app_before_its_last_byte() {
    let t = Standalone::start("stream_retry_upload", &["placeholder"], |apps| {
        web(
            "v1",
            vec![route().name("up").to("placeholder")],
            apps.one_backend_each(),
        )
    })
    .await;
    let app = t.server.spawn_server(FIRST_APP_PORT + 1, first_chunk_app);
    let mut config = web(
        "v2",
        vec![route().name("up").to("first")],
        BTreeMap::from([(
            "first".to_owned(),
            round_robin(&[t.server.addr4(app.port())]),
        )]),
    );
    config.outbound.services[0].ports[0].routes[0].retry = Some(retry_stanza());
    t.apply(&config).await;

    let mut stream = t.client.connect(vip()).await.expect("connect");
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        )
        .await
        .expect("head and first chunk");
    // The rest of the body is not sent until the answer is in.
    let mut answer = Vec::new();
    within(
        Duration::from_secs(5),
        "the answer to the first chunk",
        async {
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&answer).ends_with("first") {
                let n = stream.read(&mut buf).await.expect("read");
                assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&buf[..n]);
            }
        },
    )
    .await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    stream.write_all(b"0\r\n\r\n").await.expect("end of body");
}

/// Sends `POST /` with a small body over a fresh connection and returns the
/// status and body.
async fn post(t: &Standalone, body: &str) -> (u16, String) {
    let mut stream = t.client.connect(vip()).await.expect("connect");
    let request = format!(
        "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    within(WAIT, "the POST answer", stream.read_to_end(&mut answer))
        .await
        .expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[tokio::test]
async fn a_connection_reset_before_the_response_head_is_retried_even_for_post() {
    let t = Standalone::start("stream_retry_reset", &["broken", "good"], |apps| {
        let mut config = web(
            "v1",
            vec![route().name("pool").to("pool")],
            BTreeMap::from([(
                "pool".to_owned(),
                round_robin(&[apps.addr("broken"), apps.addr("good")]),
            )]),
        );
        config.outbound.services[0].ports[0].routes[0].retry = Some(retry_stanza());
        let pool = config.backends.get_mut("pool").expect("pool");
        pool.retry_budget.min_retries_per_second = 1000;
        pool.outlier_detection.max_ejection_percent = 0;
        config
    })
    .await;
    t.apps.get("broken").close_on_request();
    let before = t.proxy.metrics().await;
    for i in 0..10 {
        let (status, body) = post(&t, &format!("payload {i}")).await;
        assert_eq!((status, body.as_str()), (200, "good"), "POST {i}");
    }
    // Every attempt the broken app reset was retried once, onto the good
    // one, which answered all ten.
    let broken = t.apps.get("broken").received();
    assert_eq!(t.apps.get("good").received(), 10);
    assert!(
        broken > 0,
        "round robin sent first attempts to the broken app"
    );
    let after = t.proxy.metrics().await;
    assert_eq!(
        after.since(&before, RETRIES, &[("route", "pool")]),
        broken as f64,
        "one retry per reset attempt\n{after}"
    );
}

#[tokio::test]
async fn without_a_retry_stanza_a_reset_is_not_retried() {
    let t = Standalone::start("stream_noretry_reset", &["broken"], |apps| {
        web(
            "v1",
            vec![route().name("one").to("broken")],
            BTreeMap::from([("broken".to_owned(), round_robin(&[apps.addr("broken")]))]),
        )
    })
    .await;
    t.apps.get("broken").close_on_request();
    let (status, _) = post(&t, "once").await;
    assert_eq!(status, 502);
    assert_eq!(t.apps.get("broken").received(), 1, "sent exactly once");
}

#[tokio::test]
async fn a_zero_second_timeout_disables_the_timeout() {
    let t = Standalone::start("timeout_zero", &["slow"], |apps| {
        let mut config = web(
            "v1",
            vec![route().name("slow").to("slow")],
            BTreeMap::from([("slow".to_owned(), round_robin(&[apps.addr("slow")]))]),
        );
        let timeouts = &mut config.outbound.services[0].ports[0].routes[0].timeouts;
        timeouts.request = Some(Duration::ZERO);
        timeouts.backend_request = Some(Duration::ZERO);
        config
    })
    .await;
    t.apps.get("slow").set_delay(Duration::from_millis(300));
    let mut client = t.http();
    let reply = client.get("/").await.expect("GET");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "slow"),
        "0s means no timeout, not an instant 504: {:?}",
        reply.remora_error()
    );
}

#[tokio::test]
async fn a_wildcard_host_name_routes_one_or_more_labels() {
    let t = Standalone::start("wildcard_host", &["any", "api"], |apps| {
        let mut config = web("v1", Vec::new(), apps.one_backend_each());
        config.outbound.services = vec![
            host_service(
                "any.example",
                &["*.example.com"],
                80,
                vec![route().to("any").build()],
            ),
            host_service(
                "api.example",
                &["*.api.example.com"],
                80,
                vec![route().to("api").build()],
            ),
        ];
        config
    })
    .await;
    // Any address on port 80: the host name decides.
    let target: SocketAddr = "10.96.0.99:80".parse().expect("addr");
    let mut client = HttpClient::new(&t.client, target);
    for (host, expected) in [
        ("www.example.com", "any"),
        ("a.b.example.com", "any"),
        ("v1.api.example.com", "api"),
    ] {
        let reply = client.send(&Req::get("/").host(host)).await.expect("GET");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, expected),
            "Host: {host}"
        );
    }
}
