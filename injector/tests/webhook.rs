//! The webhook over real HTTPS: the server runs in-process on loopback with a
//! generated certificate, and a hyper client over rustls that trusts exactly
//! that certificate sends AdmissionReview v1 bodies in the shape the API
//! server sends. One test runs the real binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use remora_injector::config::Limits;
use remora_injector::server::Server;
use remora_injector::{tls, Settings};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

struct Webhook {
    addr: SocketAddr,
    cert_pem: String,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start(limits: Limits) -> Webhook {
    start_with(limits, tokio::sync::watch::channel(true).1).await
}

/// The registry main builds after deciding on native sidecars (here: the
/// flag said false).
fn metrics() -> prometheus::Registry {
    let registry = prometheus::Registry::new();
    remora_injector::native_sidecar::register_gauge(
        &registry,
        &remora_injector::native_sidecar::Decision::Configured(false),
    )
    .expect("one gauge");
    registry
}

/// `/metrics` with the gauge at `value`.
fn gauge(value: u8) -> String {
    format!(
        "# HELP remora_injector_native_sidecar 1 when the proxy is injected as a native sidecar, \
         0 as a regular container\n# TYPE remora_injector_native_sidecar gauge\n\
         remora_injector_native_sidecar {value}\n"
    )
}

/// The labels of a meshed namespace (what `/inject` assumes).
fn meshed() -> std::collections::BTreeMap<String, String> {
    [("remora.dev/inject".to_owned(), "enabled".to_owned())].into()
}

async fn start_with(limits: Limits, ready: tokio::sync::watch::Receiver<bool>) -> Webhook {
    let tls = tls::generate(&["localhost".to_owned()]).expect("certificate");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = Arc::new(Server {
        settings: Settings::default(),
        limits,
        tls: tls.config,
        ready,
        metrics: metrics(),
    });
    tokio::spawn(server.run(listener, stopped));
    Webhook {
        addr,
        cert_pem: tls.cert_pem,
        _stop: stop,
    }
}

/// A TLS connection that trusts only `cert_pem`, offering `alpn`.
async fn connect(addr: SocketAddr, cert_pem: &str, alpn: &[u8]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.expect("PEM")).expect("trusted");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the webhook's certificate")
}

/// Sends one HTTP/1.1 request; returns status and body.
async fn call(hook: &Webhook, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
    let tls = connect(hook.addr, &hook.cert_pem, b"http/1.1").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// An AdmissionReview as the API server sends it for a pod CREATE.
fn review(uid: &str, pod: Value) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "5a2b9d7e-0f43-4c1e-8a51-7a4f3b9c2d10",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    serde_saphyr::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("YAML")
}

fn golden(name: &str) -> Value {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden")).expect("JSON")
}

async fn post(hook: &Webhook, path: &str, body: &Value) -> Value {
    let (status, body) = call(hook, "POST", path, serde_json::to_vec(body).expect("JSON")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let reply: Value = serde_json::from_slice(&body).expect("an AdmissionReview");
    assert_eq!(reply["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(reply["kind"], "AdmissionReview");
    reply["response"].clone()
}

#[tokio::test]
async fn allowed_with_a_json_patch() {
    let hook = start(Limits::default()).await;
    let pod = fixture("deployment-probes");
    let response = post(&hook, "/inject", &review("4f1c-a", pod.clone())).await;
    assert_eq!(response["uid"], "4f1c-a");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("patch"))
        .expect("base64");
    let patch: Value = serde_json::from_slice(&patch).expect("JSON patch");
    assert_eq!(patch, golden("deployment-probes.patch.json"));
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("a JSON patch");
    let mut patched = pod;
    json_patch::patch(&mut patched, &patch).expect("applies");
    assert_eq!(patched, golden("deployment-probes.pod.json"));
    assert_eq!(response.get("warnings"), None);
}

#[tokio::test]
async fn skipped_pods_are_allowed_without_a_patch() {
    let hook = start(Limits::default()).await;
    let mut disabled = fixture("plain-pod");
    disabled["metadata"]["annotations"] = json!({"remora.dev/inject": "disabled"});
    let cases = [
        ("/inject", disabled),
        ("/inject", fixture("host-network")),
        ("/inject", golden("plain-pod.pod.json")),
        // Not opted in: the namespace lacks the label and the pod does not ask.
        ("/inject/pod-opt-in", fixture("plain-pod")),
    ];
    for (path, pod) in cases {
        let response = post(&hook, path, &review("u-skip", pod)).await;
        assert_eq!(
            response,
            json!({"uid": "u-skip", "allowed": true}),
            "{path}"
        );
    }
    // The pod asks for itself where the namespace does not.
    let mut asks = fixture("plain-pod");
    asks["metadata"]["annotations"] = json!({"remora.dev/inject": "enabled"});
    let response = post(&hook, "/inject/pod-opt-in", &review("u-ask", asks)).await;
    assert_eq!(response["patchType"], "JSONPatch");
}

#[tokio::test]
async fn denied_with_the_reason() {
    let hook = start(Limits::default()).await;
    let mut bad = fixture("plain-pod");
    bad["metadata"]["annotations"] = json!({"remora.dev/exclude-inbound-ports": "70000"});
    let response = post(&hook, "/inject", &review("u-bad", bad)).await;
    assert_eq!(
        response,
        json!({"uid": "u-bad", "allowed": false, "status": {"code": 400, "reason": "BadRequest",
            "message": "annotation remora.dev/exclude-inbound-ports: `70000`: port 70000 is out of range; use 1-65535"}})
    );
}

#[tokio::test]
async fn malformed_reviews_get_an_answer_that_says_why() {
    let hook = start(Limits::default()).await;
    let pod = fixture("plain-pod");
    let message = |response: &Value| {
        assert_eq!(response["allowed"], false, "{response}");
        assert_eq!(response["status"]["code"], 400);
        response["status"]["message"]
            .as_str()
            .expect("message")
            .to_owned()
    };

    let mut old = review("u-1", pod.clone());
    old["apiVersion"] = json!("admission.k8s.io/v1beta1");
    assert_eq!(
        message(&post(&hook, "/inject", &old).await),
        "the injector speaks AdmissionReview admission.k8s.io/v1, and this is AdmissionReview \
         admission.k8s.io/v1beta1; set admissionReviewVersions: [v1] in the webhook configuration"
    );

    let mut deployment = review(
        "u-2",
        json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
    );
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    assert_eq!(
        message(&post(&hook, "/inject", &deployment).await),
        "the injector handles v1 Pods only, and this is apps/v1 Deployment; limit the webhook's \
         rules to pods"
    );

    let mut no_object = review("u-3", pod.clone());
    no_object["request"]
        .as_object_mut()
        .expect("request")
        .remove("object");
    assert_eq!(
        message(&post(&hook, "/inject", &no_object).await),
        "the CREATE review has no request.object"
    );

    let mut no_kind = review("u-4", pod.clone());
    no_kind["request"]
        .as_object_mut()
        .expect("request")
        .remove("kind");
    assert!(message(&post(&hook, "/inject", &no_kind).await)
        .starts_with("the review's request cannot be read: missing field `kind`"));

    let garbage = review("u-5", json!({"spec": {"containers": 7}}));
    assert!(message(&post(&hook, "/inject", &garbage).await)
        .starts_with("the object is not a Pod the injector can read: "));

    // An UPDATE or a subresource cannot change containers: allowed untouched.
    let mut update = review("u-6", pod.clone());
    update["request"]["operation"] = json!("UPDATE");
    assert_eq!(
        post(&hook, "/inject", &update).await,
        json!({"uid": "u-6", "allowed": true})
    );

    // No uid to answer to: a plain 400, never a 500.
    let (status, body) = call(&hook, "POST", "/inject", b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).starts_with("the body is not JSON"));
    let (status, body) = call(&hook, "POST", "/inject", br#"{"request": {}}"#.to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "the body has no request.uid to answer to; send an AdmissionReview admission.k8s.io/v1\n"
    );
}

#[tokio::test]
async fn ready_waits_for_the_ca_bundle_when_the_injector_keeps_it() {
    let (ready, ready_rx) = tokio::sync::watch::channel(false);
    let hook = start_with(Limits::default(), ready_rx).await;
    assert_eq!(
        call(&hook, "GET", "/ready", vec![]).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from(
                "the webhook configuration's caBundle does not trust this certificate yet\n"
            )
        )
    );
    assert_eq!(
        call(&hook, "GET", "/live", vec![]).await,
        (StatusCode::OK, Bytes::from("ok\n"))
    );
    ready.send_replace(true);
    assert_eq!(
        call(&hook, "GET", "/ready", vec![]).await,
        (StatusCode::OK, Bytes::from("ok\n"))
    );
}

#[tokio::test]
async fn paths_and_methods() {
    let hook = start(Limits::default()).await;
    for path in ["/live", "/ready"] {
        assert_eq!(
            call(&hook, "GET", path, vec![]).await,
            (StatusCode::OK, Bytes::from("ok\n"))
        );
    }
    assert_eq!(
        call(&hook, "GET", "/inject", vec![]).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        call(&hook, "GET", "/metrics", vec![]).await,
        (StatusCode::OK, Bytes::from(gauge(0)))
    );
    assert_eq!(
        call(&hook, "POST", "/metrics", vec![]).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        call(&hook, "POST", "/mutate", vec![]).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn oversize_bodies_are_refused_before_they_are_read() {
    let hook = start(Limits::default()).await;
    // Declared too large: refused on the header.
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let (status, body) = call(&hook, "POST", "/inject", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "the AdmissionReview is larger than 4194304 bytes (--max-body-bytes)\n"
    );
    // Exactly at the limit is read (and is not JSON).
    let (status, _) = call(&hook, "POST", "/inject", vec![b' '; 4 * 1024 * 1024]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Chunked, with no length: refused once the limit is crossed.
    let tls = connect(hook.addr, &hook.cert_pem, b"http/1.1").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let chunks = (0..5).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![
            b' ';
            1024 * 1024
        ])))
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let request = Request::post("/inject")
        .header("host", "localhost")
        .body(body)
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

fn short_timeout() -> Limits {
    Limits {
        body_timeout: Duration::from_millis(300),
        ..Limits::default()
    }
}

/// Reads until the server closes; fails if it has not within 5s.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(stream, &mut out),
    )
    .await;
    assert!(
        read.is_ok(),
        "the server did not close the connection by itself"
    );
    (out, started.elapsed())
}

#[tokio::test]
async fn a_slow_body_times_out() {
    let hook = start(short_timeout()).await;
    let mut tls = connect(hook.addr, &hook.cert_pem, b"http/1.1").await;
    tls.write_all(
        b"POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n{\"request\":",
    )
    .await
    .expect("write");
    let (reply, elapsed) = read_until_closed(&mut tls).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("the body did not arrive within 300ms (--body-timeout)\n"),
        "{text}"
    );
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn http2_is_offered() {
    let hook = start(Limits::default()).await;
    let tls = connect(hook.addr, &hook.cert_pem, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let body = serde_json::to_vec(&review("u-h2", fixture("job"))).expect("JSON");
    let request = Request::post("https://localhost/inject")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let reply: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(reply["response"]["patchType"], "JSONPatch");
}

/// The real binary with `flags`, without any Kubernetes API (no in-cluster
/// environment, a KUBECONFIG that does not exist): a generated certificate
/// written with --write-cert, /ready, /metrics and one injection over HTTPS
/// with that certificate trusted. Returns the metrics and the patch.
async fn run_binary(name: &str, flags: &[&str]) -> (String, Value) {
    let dir = std::env::temp_dir().join(format!(
        "remora-injector-test-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cert = dir.join("cert.pem");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_remora-injector"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--dns-names",
            "localhost",
        ])
        .args(flags)
        .arg("--write-cert")
        .arg(&cert)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("REMORA_INJECTOR_NATIVE_SIDECAR")
        .env("KUBECONFIG", dir.join("no-kubeconfig"))
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    loop {
        if cert.exists() && TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the injector did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hook = Webhook {
        addr,
        cert_pem: std::fs::read_to_string(&cert).expect("cert"),
        _stop: tokio::sync::watch::channel(false).0,
    };
    assert_eq!(
        call(&hook, "GET", "/ready", vec![]).await,
        (StatusCode::OK, Bytes::from("ok\n"))
    );
    let (status, metrics) = call(&hook, "GET", "/metrics", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let response = post(&hook, "/inject", &review("u-bin", fixture("plain-pod"))).await;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("patch"))
        .expect("base64");
    child.kill().await.expect("stopped");
    let _ = std::fs::remove_dir_all(&dir);
    (
        String::from_utf8(metrics.to_vec()).expect("UTF-8"),
        serde_json::from_slice(&patch).expect("JSON"),
    )
}

/// `--native-sidecar true`: the golden native-sidecar patch, gauge 1.
#[tokio::test]
async fn the_binary_serves_with_a_generated_certificate() {
    let (metrics, patch) = run_binary("native", &["--native-sidecar", "true"]).await;
    assert_eq!(patch, golden("plain-pod.patch.json"));
    assert_eq!(metrics, gauge(1));
}

/// The default, `auto`, with no API server to ask: the regular-container
/// patch (what the pure function gives with `native_sidecar: false`), gauge 0.
#[tokio::test]
async fn the_binary_falls_back_to_a_regular_container_without_an_api() {
    let (metrics, patch) = run_binary("auto", &[]).await;
    let regular = Settings {
        native_sidecar: false,
        ..Settings::default()
    };
    let expected = match remora_injector::inject(&fixture("plain-pod"), &meshed(), &regular) {
        Ok(remora_injector::Decision::Inject(injection)) => injection.patch,
        other => panic!("{other:?}"),
    };
    assert_eq!(patch, serde_json::to_value(expected).expect("JSON"));
    assert_ne!(patch, golden("plain-pod.patch.json"));
    assert_eq!(metrics, gauge(0));
}

/// A client that connects and says nothing (no ClientHello) is dropped at
/// the timeout rather than holding a connection slot for ever.
#[tokio::test]
async fn a_silent_client_is_dropped() {
    let hook = start(short_timeout()).await;
    let mut tcp = TcpStream::connect(hook.addr).await.expect("connect");
    let (buf, elapsed) = read_until_closed(&mut tcp).await;
    assert_eq!(buf.len(), 0);
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
}
