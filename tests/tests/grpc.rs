//! gRPC through the mesh: a real tonic client in pod `a` calls a service
//! virtual address that a's mesh config declares with `protocol: grpc`; a's
//! proxy routes it to the tonic server in pod `b`, through b's proxy. Unary
//! replies, a 100-message bidirectional stream and error statuses (which
//! travel in HTTP/2 trailers) arrive as the app sent them, and both proxies
//! count the calls.

use std::net::SocketAddr;

use remora_e2e::grpc_apps::pb::echo_client::EchoClient;
use remora_e2e::grpc_apps::pb::{ChatMessage, SayRequest};
use remora_e2e::http_apps::{REQUESTS, RETRIES};
use remora_e2e::mesh_config::ConfigFile;
use remora_e2e::metrics::OPENED;
use remora_e2e::{within, GrpcApp, Pod, ProxyHandle, TestNet, INBOUND, WAIT};
use serde_json::json;
use tonic::transport::Channel;
use tonic::Code;

/// The echo service's virtual address: nothing owns it, so only a's
/// outbound capture and mesh config can get a call there.
const VIP: &str = "10.96.0.20:50051";
const APP_PORT: u16 = 50051;
const SERVICE: &str = "echo.default";

fn vip() -> SocketAddr {
    VIP.parse().expect("VIP")
}

/// Pod `a` (client, meshed with a config naming the echo service) and pod
/// `b` (the tonic echo app, meshed with defaults).
struct GrpcMesh {
    a: Pod,
    app: GrpcApp,
    proxy_a: ProxyHandle,
    proxy_b: ProxyHandle,
    _config: ConfigFile,
    _net: TestNet,
}

impl GrpcMesh {
    async fn new(test: &str) -> GrpcMesh {
        let net = TestNet::new(test);
        let a = net.pod("a");
        let b = net.pod("b");
        let app = b.spawn_grpc_echo_server(APP_PORT);
        let config = ConfigFile::new(test);
        config.write_json(&json!({
            "version": "grpc-e2e",
            "outbound": { "services": [{
                "name": SERVICE,
                "addresses": [vip().ip().to_string()],
                "ports": [{
                    "port": vip().port(),
                    "name": "grpc",
                    "protocol": "grpc",
                    "backendRefs": [{ "name": "echo" }],
                }],
            }]},
            "backends": {
                "echo": { "endpoints": [{ "address": b.addr4(APP_PORT).to_string() }] },
            },
        }));
        let proxy_a = a.mesh_with(&[], &config.proxy_args()).await;
        let proxy_b = b.mesh().await;
        GrpcMesh {
            a,
            app,
            proxy_a,
            proxy_b,
            _config: config,
            _net: net,
        }
    }

    /// A tonic client on one connection from a to the service VIP.
    async fn client(&self) -> EchoClient<Channel> {
        let channel = within(WAIT, "the gRPC connection", self.a.grpc_channel(vip()))
            .await
            .unwrap_or_else(|e| panic!("connect a gRPC channel from a to {VIP}: {e:?}"));
        EchoClient::new(channel)
    }
}

fn say(text: &str) -> SayRequest {
    SayRequest {
        text: text.to_string(),
        fail_with: 0,
    }
}

fn chat(seq: u32, text: String) -> ChatMessage {
    ChatMessage {
        seq,
        text,
        fail_with: 0,
    }
}

#[tokio::test]
async fn unary_call_to_a_grpc_service_vip_is_answered_and_counted_by_both_proxies() {
    let mesh = GrpcMesh::new("grpc_unary").await;
    let (a0, b0) = (mesh.proxy_a.metrics().await, mesh.proxy_b.metrics().await);
    let mut client = mesh.client().await;

    let reply = within(WAIT, "Say", client.say(say("hello over the mesh")))
        .await
        .unwrap_or_else(|status| panic!("Say through both proxies: {status:?}"))
        .into_inner();
    assert_eq!(reply.text, "hello over the mesh", "unary reply content");
    assert_eq!(
        reply.peer, "127.0.0.6",
        "b's app is called by b's inbound proxy, not straight from a"
    );
    assert_eq!(
        mesh.app.peers().len(),
        1,
        "the app answered exactly one call"
    );

    let outbound_ok = &[
        ("direction", "outbound"),
        ("service", SERVICE),
        ("backend", "echo"),
        ("status", "200"),
    ];
    let a1 = mesh
        .proxy_a
        .wait_metrics("the outbound gRPC request", |m| {
            m.since(&a0, REQUESTS, outbound_ok) >= 1.0
        })
        .await;
    let b1 = mesh
        .proxy_b
        .wait_metrics("the inbound gRPC request", |m| {
            m.since(&b0, REQUESTS, INBOUND) >= 1.0
        })
        .await;
    assert_eq!(
        a1.since(&a0, REQUESTS, outbound_ok),
        1.0,
        "a's proxy: one outbound request to {SERVICE} via backend echo, status 200\n{a1}"
    );
    assert_eq!(
        b1.since(&b0, REQUESTS, INBOUND),
        1.0,
        "b's proxy: one inbound request\n{b1}"
    );
    assert_eq!(
        a1.since(
            &a0,
            OPENED,
            &[("direction", "outbound"), ("protocol", "h2")]
        ),
        1.0,
        "a's proxy: the tonic channel is one outbound connection detected as h2\n{a1}"
    );
    assert!(
        b1.since(&b0, OPENED, &[("direction", "inbound"), ("protocol", "h2")]) >= 1.0,
        "b's proxy: a's proxy reaches it over h2\n{b1}"
    );
}

#[tokio::test]
async fn bidirectional_stream_of_100_messages_echoes_all_in_order() {
    let mesh = GrpcMesh::new("grpc_bidi").await;
    let a0 = mesh.proxy_a.metrics().await;
    let mut client = mesh.client().await;

    let sent: Vec<ChatMessage> = (0..100).map(|i| chat(i, format!("message {i}"))).collect();
    let outgoing = tokio_stream::iter(sent.clone());
    let received = within(WAIT, "the 100-message chat", async {
        let mut replies = client.chat(outgoing).await?.into_inner();
        let mut received = Vec::new();
        while let Some(message) = replies.message().await? {
            received.push(message);
        }
        Ok::<_, tonic::Status>(received)
    })
    .await
    .unwrap_or_else(|status| panic!("Chat through both proxies: {status:?}"));
    assert_eq!(received.len(), 100, "every message echoed");
    assert_eq!(received, sent, "echoed in order, content intact");

    let outbound = &[("direction", "outbound"), ("service", SERVICE)];
    let a1 = mesh
        .proxy_a
        .wait_metrics("the streaming request counted", |m| {
            m.since(&a0, REQUESTS, outbound) >= 1.0
        })
        .await;
    assert_eq!(
        a1.since(&a0, REQUESTS, outbound),
        1.0,
        "a whole stream is one request\n{a1}"
    );
}

#[tokio::test]
async fn grpc_error_statuses_reach_the_client_with_code_and_message() {
    let mesh = GrpcMesh::new("grpc_status").await;
    let mut client = mesh.client().await;

    // Trailers-only response: the status is in the response's only HEADERS.
    let status = within(
        WAIT,
        "a failing Say",
        client.say(SayRequest {
            text: "x".to_string(),
            fail_with: Code::NotFound as i32,
        }),
    )
    .await
    .expect_err("the app returned NOT_FOUND");
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "x"),
        "status from the app: {status:?}"
    );

    // A status after data: it can only travel in the trailers that follow
    // the DATA frames, so this fails if the proxy drops trailers.
    let mut messages: Vec<ChatMessage> = (0..3).map(|i| chat(i, format!("before {i}"))).collect();
    messages.push(ChatMessage {
        seq: 3,
        text: "stopped after 3".to_string(),
        fail_with: Code::Aborted as i32,
    });
    let (received, status) = within(WAIT, "a chat that ends in ABORTED", async {
        let mut replies = client
            .chat(tokio_stream::iter(messages.clone()))
            .await
            .unwrap_or_else(|status| panic!("start Chat: {status:?}"))
            .into_inner();
        let mut received = Vec::new();
        loop {
            match replies.message().await {
                Ok(Some(message)) => received.push(message),
                Ok(None) => return (received, None),
                Err(status) => return (received, Some(status)),
            }
        }
    })
    .await;
    assert_eq!(received, messages[..3], "the replies before the status");
    let status = status.expect("the stream must end with the app's ABORTED status, not OK");
    assert_eq!(
        (status.code(), status.message()),
        (Code::Aborted, "stopped after 3"),
        "status in trailers: {status:?}"
    );

    // The channel is still good after both errors.
    let reply = within(WAIT, "Say after the errors", client.say(say("still here")))
        .await
        .unwrap_or_else(|status| panic!("Say after the errors: {status:?}"));
    assert_eq!(reply.into_inner().text, "still here");
}

/// A route with `retry: {attempts: 2, grpcCodes: [unavailable]}` on a
/// `protocol: grpc` port: the app answers UNAVAILABLE to the first attempt
/// of every call, and the client still sees OK. tonic sends its request
/// messages without a content-length, so this holds only if the proxy
/// buffers such bodies to send them again.
#[tokio::test]
async fn unavailable_is_retried_on_a_grpc_route_with_the_whole_request_message() {
    let net = TestNet::new("grpc_retry");
    let a = net.pod("a");
    let b = net.pod("b");
    let app = b.spawn_grpc_flaky_server(APP_PORT, 1, Code::Unavailable);
    let config = ConfigFile::new("grpc_retry");
    config.write_json(&json!({
        "version": "grpc-retry",
        "outbound": { "services": [{
            "name": SERVICE,
            "addresses": [vip().ip().to_string()],
            "ports": [{
                "port": vip().port(),
                "name": "grpc",
                "protocol": "grpc",
                "routes": [{
                    "name": "say-retry",
                    "backendRefs": [{ "name": "echo" }],
                    "retry": { "attempts": 2, "backoff": "10ms", "grpcCodes": ["unavailable"] },
                }],
            }],
        }]},
        "backends": {
            "echo": {
                "endpoints": [{ "address": b.addr4(APP_PORT).to_string() }],
                // Neither the budget nor ejection may get in the way of the
                // retries this test counts.
                "retryBudget": { "minRetriesPerSecond": 1000 },
                "outlierDetection": { "maxEjectionPercent": 0 },
            },
        },
    }));
    let proxy_a = a.mesh_with(&[], &config.proxy_args()).await;
    let _proxy_b = b.mesh().await;
    let before = proxy_a.metrics().await;
    let channel = within(WAIT, "the gRPC connection", a.grpc_channel(vip()))
        .await
        .unwrap_or_else(|e| panic!("connect a gRPC channel from a to {VIP}: {e:?}"));
    let mut client = EchoClient::new(channel);

    const CALLS: usize = 5;
    let texts: Vec<String> = (0..CALLS)
        .map(|i| format!("call {i}: {}", "x".repeat(100 * (i + 1))))
        .collect();
    for text in &texts {
        let reply = within(WAIT, "Say", client.say(say(text)))
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "Say({:?}) must succeed on the retry, got {status:?}; attempts seen: {:?}",
                    &text[..7],
                    app.attempts()
                )
            })
            .into_inner();
        assert_eq!(&reply.text, text, "the reply echoes the whole message");
    }
    let expected: std::collections::BTreeMap<String, u32> =
        texts.iter().map(|t| (t.clone(), 2)).collect();
    assert_eq!(
        app.attempts(),
        expected,
        "the app saw exactly two attempts of each call, each with the whole message"
    );

    let labels = &[
        ("service", SERVICE),
        ("route", "say-retry"),
        ("backend", "echo"),
    ];
    let after = proxy_a
        .wait_metrics("the retries counted", |m| {
            m.since(&before, RETRIES, labels) >= CALLS as f64
        })
        .await;
    assert_eq!(
        after.since(&before, RETRIES, labels),
        CALLS as f64,
        "one retry per call\n{after}"
    );
    assert_eq!(
        after.since(
            &before,
            REQUESTS,
            &[
                ("direction", "outbound"),
                ("service", SERVICE),
                ("status", "200")
            ]
        ),
        CALLS as f64,
        "each call is one request answered 200\n{after}"
    );
}
