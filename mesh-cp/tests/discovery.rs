//! The discovery service against a real remora-cp over TLS 1.3 with a real
//! tonic client: full state first, then changes, one push per subscription
//! for a burst, unsubscribe, NACKs counted, unknown destinations answered,
//! the subscription limit, the client certificate's identity, and a proxy
//! that stops reading while another keeps getting its pushes.

mod support;

use std::sync::Arc;
use std::time::Duration;

use remora_cp::config::{Cli, Config};
use remora_cp::discovery::view_file;
use remora_cp::proto::discovery::discovery_client::DiscoveryClient;
use remora_cp::proto::discovery::{
    self as pb, discovery_request::Kind, push::State, resource, DiscoveryRequest,
};
use remora_cp::view::MeshView;
use remora_cp::Running;
use support::*;
use tokio::sync::{mpsc, watch};

/// `reviews` endpoints of service shop/reviews (10.96.0.10:9080) and one
/// endpoint of shop/ratings (10.96.0.11:9080), at `version`.
fn view(version: u64, reviews: &[&str], ratings: &str) -> MeshView {
    let endpoints = reviews
        .iter()
        .map(|e| format!("{{address: \"{e}\"}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"
version: {version}
destinations:
  shop/reviews:
    service:
      name: reviews.shop
      addresses: [10.96.0.10]
      hostnames: [reviews.shop.svc.cluster.local]
      ports: [{{port: 9080, backendRefs: [{{name: reviews}}]}}]
    backends:
      reviews: {{endpoints: [{endpoints}]}}
  shop/ratings:
    service:
      name: ratings.shop
      addresses: [10.96.0.11]
      ports: [{{port: 9080, backendRefs: [{{name: ratings}}]}}]
    backends:
      ratings: {{endpoints: [{{address: "{ratings}"}}]}}
workloads:
  default/web-1:
    identity: {WEB}
    inbound: {{mode: strict}}
"#
    );
    view_file::parse(&text).unwrap().0
}

struct Cp {
    _scratch: Scratch,
    running: Running,
    root: String,
    view: watch::Sender<Arc<MeshView>>,
}

async fn cp(extra: &[&str]) -> Cp {
    let scratch = Scratch::new();
    let cli = <Cli as clap::Parser>::try_parse_from(scratch.args(extra)).unwrap();
    let (tx, rx) = watch::channel(Arc::new(view(1, &["10.1.0.5:9080"], "10.1.0.9:9080")));
    let running = remora_cp::start_with_view(Config::from_args(cli.serve).unwrap(), rx)
        .await
        .unwrap();
    let root = read(&scratch.path("state/root-cert.pem"));
    Cp {
        _scratch: scratch,
        running,
        root,
        view: tx,
    }
}

/// A proxy's end of one stream.
struct Proxy {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<pb::DiscoveryResponse>,
}

fn addr(ip: &str, port: u32) -> pb::Resource {
    pb::Resource {
        kind: Some(resource::Kind::Address(pb::Address {
            ip: ip.into(),
            port,
        })),
    }
}

fn msg(kind: Kind) -> DiscoveryRequest {
    DiscoveryRequest { kind: Some(kind) }
}

async fn open(
    cp: &Cp,
    identity: Option<tonic::transport::Identity>,
    pod: &str,
    namespace: &str,
) -> Result<Proxy, tonic::Status> {
    let channel = channel(&cp.running, &cp.root, identity).await;
    let (tx, rx) = mpsc::channel(64);
    tx.send(msg(Kind::Hello(pb::Hello {
        pod: pod.into(),
        namespace: namespace.into(),
    })))
    .await
    .unwrap();
    let rx = DiscoveryClient::new(channel)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Proxy { tx, rx })
}

impl Proxy {
    async fn send(&self, kind: Kind) {
        self.tx.send(msg(kind)).await.unwrap();
    }

    async fn subscribe(&self, r: pb::Resource) {
        self.send(Kind::Subscribe(pb::Subscribe { resource: Some(r) }))
            .await
    }

    async fn push(&mut self) -> pb::Push {
        let m = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a push within 5 s")
            .unwrap()
            .expect("the stream open");
        let Some(pb::discovery_response::Kind::Push(p)) = m.kind else {
            panic!("{m:?}")
        };
        p
    }

    /// Nothing arrives for 300 ms.
    async fn quiet(&mut self) {
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await {
            panic!("expected no push, got {m:?}");
        }
    }

    /// The globals and inbound pushes every stream starts with.
    async fn initial(&mut self) -> (pb::Push, pb::Push) {
        let a = self.push().await;
        let b = self.push().await;
        (a, b)
    }
}

fn json(p: &pb::Push) -> serde_json::Value {
    match &p.state {
        Some(State::Json(j)) => serde_json::from_str(j).unwrap(),
        other => panic!("expected JSON, got {other:?}"),
    }
}

fn endpoints(p: &pb::Push) -> Vec<String> {
    json(p)["backends"]["reviews"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_owned())
        .collect()
}

async fn metrics(cp: &Cp) -> String {
    admin_get(&cp.running, "/metrics").await.1
}

const NACKS: &str = "remora_cp_discovery_nacks_total{resource=\"destination\"}";

#[tokio::test]
async fn full_state_first_then_one_push_per_subscription_for_a_burst() {
    let cp = cp(&[]).await;
    let mut proxy = open(&cp, None, "web-1", "default").await.unwrap();
    let (globals, inbound) = proxy.initial().await;
    assert_eq!(
        globals.resource.as_ref().unwrap().kind,
        Some(resource::Kind::Globals(pb::Empty {}))
    );
    assert_eq!(json(&globals)["http"]["maxHeaders"], 100);
    assert_eq!(json(&inbound)["identity"], WEB);
    assert_eq!(json(&inbound)["inbound"]["mode"], "strict");
    assert_eq!((globals.nonce, inbound.nonce, inbound.version), (1, 2, 1));

    proxy.subscribe(addr("10.96.0.10", 9080)).await;
    let full = proxy.push().await;
    assert_eq!((full.nonce, full.version), (3, 1));
    assert_eq!(json(&full)["key"], "shop/reviews");
    assert_eq!(endpoints(&full), ["10.1.0.5:9080"]);
    assert_eq!(
        metric(&metrics(&cp).await, "remora_cp_discovery_streams"),
        1
    );

    // A change to a destination it did not subscribe to pushes nothing.
    cp.view
        .send_replace(Arc::new(view(2, &["10.1.0.5:9080"], "10.1.0.10:9080")));
    proxy.quiet().await;

    // Five changes at once: one push, the newest state, only this destination.
    for v in 3..=7u64 {
        let eps: Vec<String> = (5..v + 3).map(|i| format!("10.1.0.{i}:9080")).collect();
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        cp.view
            .send_replace(Arc::new(view(v, &eps, "10.1.0.10:9080")));
    }
    let change = proxy.push().await;
    assert_eq!((change.nonce, change.version), (4, 7));
    assert_eq!(change.resource, Some(addr("10.96.0.10", 9080)));
    assert_eq!(endpoints(&change).len(), 5);
    proxy.quiet().await;

    // An endpoint removed arrives too.
    cp.view
        .send_replace(Arc::new(view(8, &["10.1.0.6:9080"], "10.1.0.10:9080")));
    assert_eq!(endpoints(&proxy.push().await), ["10.1.0.6:9080"]);

    drop(proxy);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        metric(&metrics(&cp).await, "remora_cp_discovery_streams"),
        0
    );
    cp.running.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_stops_the_pushes_and_a_nack_is_counted() {
    let cp = cp(&[]).await;
    let mut proxy = open(&cp, None, "web-1", "default").await.unwrap();
    proxy.initial().await;
    proxy.subscribe(addr("10.96.0.10", 9080)).await;
    let full = proxy.push().await;
    proxy
        .send(Kind::Ack(pb::Ack {
            nonce: full.nonce,
            accepted: false,
            message: "backends.reviews: no endpoints I like".into(),
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(metric(&metrics(&cp).await, NACKS), 1);
    // A NACK for no push in flight is not counted.
    proxy
        .send(Kind::Ack(pb::Ack {
            nonce: 999,
            accepted: false,
            message: "made up".into(),
        }))
        .await;
    proxy
        .send(Kind::Unsubscribe(pb::Unsubscribe {
            resource: Some(addr("10.96.0.10", 9080)),
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    cp.view
        .send_replace(Arc::new(view(2, &["10.1.0.7:9080"], "10.1.0.9:9080")));
    proxy.quiet().await;
    assert_eq!(metric(&metrics(&cp).await, NACKS), 1);
    // Counted once: a second Unsubscribe of it drops nothing.
    proxy
        .send(Kind::Unsubscribe(pb::Unsubscribe {
            resource: Some(addr("10.96.0.10", 9080)),
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        metric(
            &metrics(&cp).await,
            "remora_cp_discovery_unsubscribes_total"
        ),
        1
    );
    cp.running.shutdown().await;
}

#[tokio::test]
async fn an_unknown_destination_is_answered_not_found() {
    let cp = cp(&[]).await;
    let mut proxy = open(&cp, None, "web-1", "default").await.unwrap();
    proxy.initial().await;
    proxy.subscribe(addr("10.96.0.99", 80)).await;
    assert_eq!(
        proxy.push().await.state,
        Some(State::NotFound(
            "no service has address 10.96.0.99:80".into()
        ))
    );
    // A host name subscription resolves like the address does.
    proxy
        .subscribe(pb::Resource {
            kind: Some(resource::Kind::Host(pb::Host {
                name: "Reviews.Shop.svc.cluster.local".into(),
                port: 9080,
            })),
        })
        .await;
    assert_eq!(json(&proxy.push().await)["key"], "shop/reviews");
    // A workload without inbound config hears so.
    let mut other = open(&cp, None, "db-1", "prod").await.unwrap();
    let (_, inbound) = other.initial().await;
    assert_eq!(
        inbound.state,
        Some(State::NotFound("no workload prod/db-1".into()))
    );
    cp.running.shutdown().await;
}

#[tokio::test]
async fn hostile_streams_are_refused_or_bounded() {
    let cp = cp(&["--discovery-max-subscriptions", "2"]).await;
    let mut proxy = open(&cp, None, "web-1", "default").await.unwrap();
    proxy.initial().await;
    proxy.subscribe(addr("10.96.0.10", 9080)).await;
    proxy.subscribe(addr("10.96.0.11", 9080)).await;
    proxy.push().await;
    proxy.push().await;
    proxy.subscribe(addr("10.96.0.12", 9080)).await;
    assert_eq!(
        proxy.push().await.state,
        Some(State::NotFound(
            "this stream holds 2 subscriptions, the most remora-cp allows".into()
        ))
    );
    // A garbage address closes the stream with the reason.
    proxy.subscribe(addr("10.96.0.300", 80)).await;
    let status = tokio::time::timeout(Duration::from_secs(5), proxy.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "address \"10.96.0.300\" is not an IPv4 or IPv6 address"
    );
    // A bad pod name is refused at Hello.
    let status = open(&cp, None, "Web_1", "default").await.err().unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // The flag has a range.
    let scratch = Scratch::new();
    let cli = <Cli as clap::Parser>::try_parse_from(
        scratch.args(&["--discovery-max-subscriptions", "0"]),
    )
    .unwrap();
    assert_eq!(
        Config::from_args(cli.serve).unwrap_err().to_string(),
        "--discovery-max-subscriptions 0 is outside 1..=65536"
    );
    cp.running.shutdown().await;
}

#[tokio::test]
async fn the_client_certificates_identity_must_match_the_hello() {
    let cp = cp(&[]).await;
    let mut certs = client(&cp.running, &cp.root).await;
    let (key, csr_pem) = csr(|p| p.subject_alt_names = vec![uri_san(WEB)]);
    let issued = issue(&mut certs, request(&csr_pem, "token-web")).await;
    let chain = std::iter::once(issued.leaf_pem.clone())
        .chain(issued.chain_pem.clone())
        .collect::<Vec<_>>()
        .join("");
    let id = || tonic::transport::Identity::from_pem(&chain, key.serialize_pem());
    // WEB is default/web: a Hello from namespace prod is refused.
    let status = open(&cp, Some(id()), "web-1", "prod").await.err().unwrap();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "the client certificate is for namespace \"default\", but Hello says \"prod\""
    );
    let mut proxy = open(&cp, Some(id()), "web-1", "default").await.unwrap();
    let (_, inbound) = proxy.initial().await;
    assert_eq!(json(&inbound)["identity"], WEB);
    cp.running.shutdown().await;
}

#[tokio::test]
async fn a_proxy_that_stops_reading_does_not_hold_up_another() {
    let cp = cp(&[]).await;
    let big = |v: u64| {
        let eps: Vec<String> = (0..400)
            .map(|i| format!("10.2.{}.{}:{}", i / 200, i % 200, 9000 + v))
            .collect();
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        view(v, &eps, "10.1.0.9:9080")
    };
    let stuck = open(&cp, None, "web-1", "default").await.unwrap();
    stuck.subscribe(addr("10.96.0.10", 9080)).await;
    let mut reader = open(&cp, None, "web-2", "default").await.unwrap();
    reader.initial().await;
    reader.subscribe(addr("10.96.0.10", 9080)).await;
    reader.push().await;
    // Each push is ~12 KB: 40 of them are far past the stuck stream's
    // HTTP/2 window and its buffer.
    for v in 2..=41 {
        cp.view.send_replace(Arc::new(big(v)));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut last = reader.push().await;
    while last.version != 41 {
        last = reader.push().await;
    }
    assert_eq!(endpoints(&last)[0], "10.2.0.0:9041");
    drop(stuck);
    cp.running.shutdown().await;
}

#[tokio::test]
async fn a_view_file_reload_pushes_the_change_and_a_bad_one_keeps_the_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("view.yaml");
    let text = |eps: &str| {
        format!(
            "version: 1\ndestinations:\n  shop/reviews:\n    service: {{name: reviews.shop, addresses: [10.96.0.10], ports: [{{port: 9080, backendRefs: [{{name: reviews}}]}}]}}\n    backends:\n      reviews: {{endpoints: [{eps}]}}\n"
        )
    };
    std::fs::write(&path, text("{address: \"10.1.0.5:9080\"}")).unwrap();
    let scratch = Scratch::new();
    let cli = <Cli as clap::Parser>::try_parse_from(
        scratch.args(&["--view-file", path.to_str().unwrap()]),
    )
    .unwrap();
    let running = remora_cp::start(Config::from_args(cli.serve).unwrap())
        .await
        .unwrap();
    let root = read(&scratch.path("state/root-cert.pem"));
    let (view, _) = watch::channel(Arc::new(MeshView::default()));
    let cp = Cp {
        _scratch: scratch,
        running,
        root,
        view,
    };
    let mut proxy = open(&cp, None, "web-1", "default").await.unwrap();
    proxy.initial().await;
    proxy.subscribe(addr("10.96.0.10", 9080)).await;
    assert_eq!(endpoints(&proxy.push().await), ["10.1.0.5:9080"]);

    let hangup = || nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    // An endpoint that is not an address: refused, nothing pushed.
    std::fs::write(&path, text("{address: \"nowhere\"}")).unwrap();
    hangup();
    proxy.quiet().await;
    std::fs::write(&path, text("{address: \"10.1.0.6:9080\"}")).unwrap();
    hangup();
    assert_eq!(endpoints(&proxy.push().await), ["10.1.0.6:9080"]);
    cp.running.shutdown().await;
}
