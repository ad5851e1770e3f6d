//! The caBundle sync against a mock API server (a `tower_test` pair behind
//! a real `kube::Client`) that answers as a kube-apiserver (v1.35) does:
//! the chart's MutatingWebhookConfiguration, a 200 patch echo, 409 and
//! 500 failures. Paused time makes every retry land at an exact instant.

use http::Response;
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::SendResponse;

use super::*;
use crate::kube_mock::{self, failure, next, respond, ApiHandle};
const PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/remora-injector";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn cert() -> String {
    crate::tls::generate(&["remora-injector.remora-system.svc".to_owned()])
        .unwrap()
        .cert_pem
}

/// The chart's webhook configuration, with `bundle` (PEM) in both entries.
fn config(rv: &str, bundle: Option<&str>) -> Value {
    let hook = |name: &str, path: &str| {
        let mut client = json!({"service": {"namespace": "remora-system", "name": "remora-injector", "path": path, "port": 443}});
        if let Some(b) = bundle {
            client["caBundle"] = json!(B64.encode(b));
        }
        json!({
            "name": name,
            "clientConfig": client,
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "namespaceSelector": {"matchExpressions": [{"key": "remora.dev/inject", "operator": "In", "values": ["enabled"]}]},
            "objectSelector": {},
            "sideEffects": "None",
            "timeoutSeconds": 10,
            "admissionReviewVersions": ["v1"],
            "reinvocationPolicy": "Never"
        })
    };
    json!({
        "kind": "MutatingWebhookConfiguration",
        "apiVersion": "admissionregistration.k8s.io/v1",
        "metadata": {
            "name": "remora-injector",
            "uid": "0d6f3a1e-2b4c-4e8f-9a7d-5c3b1e0f2a4d",
            "resourceVersion": rv,
            "generation": 1,
            "creationTimestamp": "2026-12-02T09:00:00Z",
            "labels": {"app.kubernetes.io/name": "remora-injector", "app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": "remora", "meta.helm.sh/release-namespace": "remora-system"}
        },
        "webhooks": [hook("namespace.inject.remora.dev", "/inject"), hook("pod.inject.remora.dev", "/inject/pod-opt-in")]
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    failure(
        code,
        reason,
        message,
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "remora-injector",
    )
}

async fn get(handle: &mut ApiHandle, code: u16, body: Value) {
    let (req, send) = next(handle).await;
    assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", PATH));
    respond(send, code, body);
}

/// The patch the sync must send: both webhooks get `bundle`.
fn patch_of(rv: &str, bundle: &str) -> Value {
    let ca = B64.encode(bundle);
    json!({
        "metadata": {"resourceVersion": rv},
        "webhooks": [
            {"name": "namespace.inject.remora.dev", "clientConfig": {"caBundle": ca}},
            {"name": "pod.inject.remora.dev", "clientConfig": {"caBundle": ca}},
        ]
    })
}

async fn expect_patch(handle: &mut ApiHandle, body: &Value) -> SendResponse<Response<Body>> {
    let (req, send) = next(handle).await;
    assert_eq!((req.method.as_str(), req.path.as_str()), ("PATCH", PATH));
    assert_eq!(req.query, "&fieldManager=remora-injector");
    assert_eq!(req.content_type, "application/strategic-merge-patch+json");
    assert_eq!(&req.body, body);
    send
}

struct Running {
    handle: ApiHandle,
    cert: watch::Sender<String>,
    ready: watch::Receiver<bool>,
    _stop: watch::Sender<bool>,
}

fn start(pem: &str) -> Running {
    let (client, handle) = kube_mock::client();
    let (cert, cert_rx) = watch::channel(pem.to_owned());
    let (stop, stop_rx) = watch::channel(false);
    let (ready_tx, ready) = watch::channel(false);
    tokio::spawn(
        Syncer::new(client, "remora-injector", Duration::from_secs(60))
            .run(cert_rx, stop_rx, ready_tx),
    );
    Running {
        handle,
        cert,
        ready,
        _stop: stop,
    }
}

#[tokio::test(start_paused = true)]
async fn at_start_both_webhooks_get_the_certificate_and_a_resync_finds_it_there() {
    let pem = cert();
    let mut r = start(&pem);
    let begin = tokio::time::Instant::now();
    get(&mut r.handle, 200, config("4711", None)).await;
    let send = expect_patch(&mut r.handle, &patch_of("4711", &pem)).await;
    assert!(!*r.ready.borrow(), "ready before the caBundle trusts it");
    respond(send, 200, config("4712", Some(&pem)));
    r.ready.wait_for(|ready| *ready).await.unwrap();
    // A minute later: it trusts the certificate, nothing is patched.
    get(&mut r.handle, 200, config("4712", Some(&pem))).await;
    assert_eq!(begin.elapsed(), Duration::from_secs(60));
    get(&mut r.handle, 200, config("4712", Some(&pem))).await;
    assert_eq!(begin.elapsed(), Duration::from_secs(120));
}

#[tokio::test(start_paused = true)]
async fn a_new_certificate_goes_first_and_the_previous_one_stays_trusted() {
    let (old, new) = (cert(), cert());
    let mut r = start(&old);
    get(&mut r.handle, 200, config("10", Some(&old))).await;
    r.cert.send(new.clone()).unwrap();
    get(&mut r.handle, 200, config("10", Some(&old))).await;
    let send = expect_patch(&mut r.handle, &patch_of("10", &format!("{new}{old}"))).await;
    respond(send, 200, config("11", Some(&format!("{new}{old}"))));
}

#[tokio::test(start_paused = true)]
async fn a_conflict_rereads_and_patches_the_newer_object() {
    let pem = cert();
    let mut r = start(&pem);
    get(&mut r.handle, 200, config("20", None)).await;
    let send = expect_patch(&mut r.handle, &patch_of("20", &pem)).await;
    respond(
        send,
        409,
        status(409, "Conflict", "Operation cannot be fulfilled on mutatingwebhookconfigurations.admissionregistration.k8s.io \"remora-injector\": the object has been modified; please apply your changes to the latest version and try again"),
    );
    let begin = tokio::time::Instant::now();
    get(&mut r.handle, 200, config("21", None)).await;
    assert_eq!(
        begin.elapsed(),
        Duration::ZERO,
        "a conflict rereads at once"
    );
    let send = expect_patch(&mut r.handle, &patch_of("21", &pem)).await;
    respond(send, 200, config("22", Some(&pem)));
}

#[tokio::test(start_paused = true)]
async fn failures_retry_with_back_off() {
    let pem = cert();
    let mut r = start(&pem);
    let begin = tokio::time::Instant::now();
    get(&mut r.handle, 404, status(404, "NotFound", "mutatingwebhookconfigurations.admissionregistration.k8s.io \"remora-injector\" not found")).await;
    for at in [500, 1500] {
        assert!(!*r.ready.borrow());
        let (req, send) = next(&mut r.handle).await;
        assert_eq!(req.method, "GET");
        assert_eq!(begin.elapsed(), Duration::from_millis(at));
        respond(
            send,
            500,
            status(500, "InternalError", "etcdserver: request timed out"),
        );
    }
    get(&mut r.handle, 200, config("30", None)).await;
    assert_eq!(begin.elapsed(), Duration::from_millis(3500));
    let send = expect_patch(&mut r.handle, &patch_of("30", &pem)).await;
    respond(send, 200, config("31", Some(&pem)));
}

#[tokio::test]
async fn errors_say_what_to_do() {
    let (client, mut handle) = kube_mock::client();
    let syncer = Syncer::new(client, "remora-injector", Duration::from_secs(60));
    assert_eq!(
        syncer
            .sync_once("not a certificate")
            .await
            .unwrap_err()
            .to_string(),
        "the served certificate is not PEM: no CERTIFICATE block"
    );
    let pem = cert();
    let answer = tokio::spawn(async move {
        get(&mut handle, 404, status(404, "NotFound", "not found")).await;
    });
    assert_eq!(
        syncer.sync_once(&pem).await.unwrap_err().to_string(),
        "MutatingWebhookConfiguration remora-injector does not exist; install it (the chart does) or fix --webhook-config-name"
    );
    answer.await.unwrap();
}

#[test]
fn the_bundle_keeps_ours_first_and_at_most_four() {
    let certs: Vec<String> = (0..6).map(|_| cert()).collect();
    let der = |pem: &str| certificates(pem.as_bytes());
    let ours = der(&certs[0]);
    // Empty, or garbage: ours alone.
    assert_eq!(next_bundle(b"", &ours), Some(certs[0].clone()));
    assert_eq!(
        next_bundle(b"not pem at all", &ours),
        Some(certs[0].clone())
    );
    // Already there, anywhere: nothing to do.
    let held = format!("{}{}", certs[1], certs[0]);
    assert_eq!(next_bundle(held.as_bytes(), &ours), None);
    // Five others: ours and the first three of them.
    let others: String = certs[1..].concat();
    assert_eq!(
        next_bundle(others.as_bytes(), &ours),
        Some(certs[..4].concat())
    );
    assert_eq!(der(&certs[..4].concat()).len(), KEEP);
}
