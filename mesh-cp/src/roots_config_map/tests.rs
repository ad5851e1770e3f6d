//! The trust roots ConfigMap writer against a mock API server that answers
//! as a kube-apiserver (v1.35) does: the ConfigMap list (items without
//! apiVersion and kind), watch events as newline-delimited JSON, a create's
//! 201 echoing the object, a merge patch's 200, `Status` failures (409
//! AlreadyExists, 500); on paused time.

use std::sync::Mutex;

use http::{Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower_test::mock::SendResponse;

use super::*;
use crate::translate::Store;
use remora_injector::kube_mock::{
    self as mock_api, failure, internal_error, next, respond, ApiHandle, Received,
};

const ROOT_A: &str = "-----BEGIN CERTIFICATE-----\nMIIBfTCCASOgAwIBAgIUQm9vdEFyb290QQ==\n-----END CERTIFICATE-----\n";
const ROOT_B: &str = "-----BEGIN CERTIFICATE-----\nMIIBfjCCASSgAwIBAgIUQm9vdEJyb290Qg==\n-----END CERTIFICATE-----\n";
const LIST_QUERY: &str = "&fieldSelector=metadata.name%3Dremora-ca-roots&limit=500";

fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "resourceVersion": "100", "uid": format!("uid-{name}"),
                     "creationTimestamp": "2026-11-01T08:00:00Z",
                     "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]}
    })
}

fn snapshot(objects: &[Value]) -> Arc<Snapshot> {
    let mut store = Store::default();
    for object in objects {
        store.insert(object.clone()).unwrap();
    }
    Arc::new(Snapshot {
        version: 1,
        store: Arc::new(store),
        problems: Arc::default(),
    })
}

/// A ConfigMap as the API server stores it.
fn stored(ns: &str, rv: &str, roots: &str, labelled: bool) -> Value {
    let mut cm = json!({
        "metadata": {"name": "remora-ca-roots", "namespace": ns, "resourceVersion": rv,
                     "uid": format!("cm-{ns}"), "creationTimestamp": "2026-12-01T09:00:00Z"},
        "data": {"roots.pem": roots}
    });
    if labelled {
        cm["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "remora-cp"});
    }
    cm
}

fn list(items: &[Value]) -> Value {
    json!({"kind": "ConfigMapList", "apiVersion": "v1",
           "metadata": {"resourceVersion": "5000"}, "items": items})
}

fn event(kind: &str, object: &Value) -> Value {
    let mut object = object.clone();
    object["apiVersion"] = json!("v1");
    object["kind"] = json!("ConfigMap");
    json!({"type": kind, "object": object})
}

/// What a create sends for namespace `ns`.
fn create_body(ns: &str, roots: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "remora-ca-roots", "namespace": ns,
                     "labels": {"app.kubernetes.io/managed-by": "remora-cp"}},
        "data": {"roots.pem": roots}
    })
}

fn patch_body(roots: &str) -> Value {
    json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "remora-cp"}},
           "data": {"roots.pem": roots}})
}

type Pending = (Received, SendResponse<Response<Body>>);

/// What the mock API server does with ConfigMap lists and watches: the
/// list answers `list`; a watch waits for events the test sends.
#[derive(Default)]
struct Server {
    list: Value,
    lists: Vec<String>,
}

struct Harness {
    /// Writes and reads of one ConfigMap, in order, to answer by hand.
    requests: mpsc::UnboundedReceiver<Pending>,
    events: mpsc::UnboundedSender<Vec<Value>>,
    server: Arc<Mutex<Server>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    roots: watch::Sender<String>,
    leader: watch::Sender<bool>,
    writes: IntCounterVec,
    watch_errors: IntCounterVec,
    _drain: watch::Sender<bool>,
}

fn answer_watch(send: SendResponse<Response<Body>>, events: &[Value]) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    send.send_response(
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::from(body.into_bytes()))
            .unwrap(),
    );
}

/// Routes the mock's requests: lists and watches of ConfigMaps are the
/// informer's and answered here; everything else goes to the test.
fn serve(
    mut handle: ApiHandle,
    server: Arc<Mutex<Server>>,
    mut events: mpsc::UnboundedReceiver<Vec<Value>>,
    requests: mpsc::UnboundedSender<Pending>,
) {
    tokio::spawn(async move {
        let mut watching: Option<SendResponse<Response<Body>>> = None;
        let mut queued: Vec<Vec<Value>> = Vec::new();
        loop {
            if let Some(send) = watching.take() {
                if queued.is_empty() {
                    watching = Some(send);
                } else {
                    answer_watch(send, &queued.remove(0));
                }
            }
            tokio::select! {
                batch = events.recv() => match batch {
                    Some(batch) => queued.push(batch),
                    None => return,
                },
                (req, send) = next(&mut handle) => {
                    if req.method == "GET" && req.path == "/api/v1/configmaps" {
                        if req.query.contains("watch=true") {
                            watching = Some(send);
                        } else {
                            let body = {
                                let mut s = server.lock().unwrap();
                                s.lists.push(req.query.clone());
                                s.list.clone()
                            };
                            respond(send, 200, body);
                        }
                    } else if requests.send((req, send)).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

fn harness(namespaces: &[&str], live: &[Value], leading: bool, writes_per_second: u32) -> Harness {
    let (client, handle) = mock_api::client();
    let counter = |name: &str, label: &str| {
        IntCounterVec::new(prometheus::Opts::new(name, "test"), &[label]).unwrap()
    };
    let writes = counter("remora_cp_roots_config_map_writes_total", "result");
    let watch_errors = counter("remora_cp_kubernetes_watch_errors_total", "kind");
    let server = Arc::new(Mutex::new(Server {
        list: list(live),
        lists: Vec::new(),
    }));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (requests_tx, requests) = mpsc::unbounded_channel();
    serve(handle, server.clone(), events_rx, requests_tx);
    let objects: Vec<Value> = namespaces.iter().map(|n| namespace(n)).collect();
    let (snapshots, snapshots_rx) = watch::channel(snapshot(&objects));
    let (roots, roots_rx) = watch::channel(ROOT_A.to_owned());
    let (leader, leader_rx) = watch::channel(leading);
    let (drain, drain_rx) = watch::channel(false);
    let settings = Settings {
        writes_per_second,
        ..Settings::default()
    };
    let writer = Writer::new(client, settings, writes.clone(), watch_errors.clone());
    tokio::spawn(writer.run(snapshots_rx, roots_rx, leader_rx, drain_rx));
    Harness {
        requests,
        events: events_tx,
        server,
        snapshots,
        roots,
        leader,
        writes,
        watch_errors,
        _drain: drain,
    }
}

impl Harness {
    fn count(&self, result: &str) -> u64 {
        self.writes.with_label_values(&[result]).get()
    }

    async fn next(&mut self) -> Pending {
        self.requests.recv().await.expect("a request")
    }

    /// No write or read reaches the API server within `secs`.
    async fn quiet_for(&mut self, secs: u64) {
        let got = tokio::time::timeout(Duration::from_secs(secs), self.requests.recv()).await;
        assert!(
            got.is_err(),
            "an unexpected request: {:?}",
            got.map(|r| r.map(|(req, _)| (req.method, req.path, req.body)))
        );
    }

    fn namespaces(&self, names: &[&str]) {
        let objects: Vec<Value> = names.iter().map(|n| namespace(n)).collect();
        self.snapshots.send(snapshot(&objects)).unwrap();
    }
}

/// The object the API server returns for a create: the body plus what it sets.
fn created(body: &Value, rv: &str) -> Value {
    let mut out = body.clone();
    let ns = out["metadata"]["namespace"].as_str().unwrap().to_owned();
    out["metadata"]["resourceVersion"] = json!(rv);
    out["metadata"]["uid"] = json!(format!("cm-{ns}"));
    out["metadata"]["creationTimestamp"] = json!("2026-12-02T13:00:00Z");
    out
}

const POST_SHOP: &str = "/api/v1/namespaces/shop/configmaps";

#[tokio::test(start_paused = true)]
async fn a_namespace_without_the_config_map_gets_it_created() {
    let mut h = harness(&["shop"], &[], true, 20);
    let (req, send) = h.next().await;
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, POST_SHOP);
    assert_eq!(req.query, "&fieldManager=remora-cp");
    assert_eq!(req.content_type, "application/json");
    assert_eq!(req.body, create_body("shop", ROOT_A));
    let object = created(&req.body, "5001");
    respond(send, 201, object.clone());
    h.quiet_for(5).await;
    assert_eq!(h.count("created"), 1);
    // One list of that name in every namespace, not a GET per namespace.
    assert_eq!(h.server.lock().unwrap().lists, vec![LIST_QUERY.to_owned()]);
    // The watch then shows it: nothing more to write.
    h.events.send(vec![event("ADDED", &object)]).unwrap();
    h.quiet_for(60).await;
    assert_eq!(h.count("created"), 1);
    assert_eq!(h.count("patched"), 0);
}

#[tokio::test(start_paused = true)]
async fn the_right_roots_get_no_write_and_other_roots_or_a_missing_label_are_patched() {
    let live = [
        stored("billing", "4001", ROOT_B, true),
        stored("payments", "4002", ROOT_A, false),
        stored("shop", "4003", ROOT_A, true),
    ];
    let mut h = harness(&["billing", "payments", "shop"], &live, true, 20);
    for ns in ["billing", "payments"] {
        let (req, send) = h.next().await;
        assert_eq!(req.method, "PATCH");
        assert_eq!(
            req.path,
            format!("/api/v1/namespaces/{ns}/configmaps/remora-ca-roots")
        );
        assert_eq!(req.query, "&fieldManager=remora-cp");
        assert_eq!(req.content_type, "application/merge-patch+json");
        assert_eq!(req.body, patch_body(ROOT_A));
        respond(send, 200, stored(ns, "5002", ROOT_A, true));
    }
    h.quiet_for(60).await;
    assert_eq!((h.count("patched"), h.count("created")), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_namespace_that_appears_later_gets_one_and_deleted_or_file_only_ones_do_not() {
    let mut h = harness(&["shop"], &[stored("shop", "4003", ROOT_A, true)], true, 20);
    h.quiet_for(10).await;
    // A namespace being deleted, and one only in the file layer, get none.
    let mut terminating = namespace("old");
    terminating["metadata"]["deletionTimestamp"] = json!("2026-12-02T12:59:00Z");
    let mut file_only = namespace("local");
    file_only["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    h.snapshots
        .send(snapshot(&[
            namespace("shop"),
            terminating.clone(),
            file_only.clone(),
        ]))
        .unwrap();
    h.quiet_for(10).await;
    h.snapshots
        .send(snapshot(&[
            namespace("shop"),
            namespace("web"),
            terminating,
            file_only,
        ]))
        .unwrap();
    let (req, send) = h.next().await;
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/api/v1/namespaces/web/configmaps")
    );
    assert_eq!(req.body, create_body("web", ROOT_A));
    respond(send, 201, created(&req.body, "5004"));
    h.quiet_for(30).await;
    assert_eq!(h.count("created"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_bundle_change_patches_every_namespace_at_the_paced_rate() {
    let live = [
        stored("billing", "4001", ROOT_A, true),
        stored("shop", "4003", ROOT_A, true),
    ];
    let mut h = harness(&["billing", "shop"], &live, true, 2);
    h.quiet_for(10).await;
    // A rotation's step 1: the next root joins the bundle.
    let both = format!("{ROOT_A}{ROOT_B}");
    h.roots.send(both.clone()).unwrap();
    let start = Instant::now();
    for (ns, at) in [("billing", 200), ("shop", 700)] {
        let (req, send) = h.next().await;
        assert_eq!(start.elapsed(), Duration::from_millis(at), "{ns}");
        assert_eq!(req.method, "PATCH");
        assert_eq!(
            req.path,
            format!("/api/v1/namespaces/{ns}/configmaps/remora-ca-roots")
        );
        assert_eq!(req.body, patch_body(&both));
        respond(send, 200, stored(ns, "6000", &both, true));
    }
    h.quiet_for(60).await;
    assert_eq!(h.count("patched"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_does_not_lead_writes_nothing_until_it_leads() {
    let mut h = harness(&["shop"], &[], false, 20);
    h.quiet_for(60).await;
    assert_eq!(h.count("created"), 0);
    // It keeps the list warm meanwhile, so leading diffs at once.
    assert_eq!(h.server.lock().unwrap().lists.len(), 1);
    h.leader.send(true).unwrap();
    let (req, send) = h.next().await;
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", POST_SHOP)
    );
    respond(send, 201, created(&req.body, "5001"));
    h.quiet_for(10).await;
    // Stepping down stops it: a new namespace waits for the next leader.
    h.leader.send(false).unwrap();
    h.namespaces(&["shop", "web"]);
    h.quiet_for(60).await;
    assert_eq!(h.count("created"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_create_that_finds_one_there_reads_it_again_and_patches_it() {
    let mut h = harness(&["shop"], &[], true, 20);
    let (req, send) = h.next().await;
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", POST_SHOP)
    );
    respond(
        send,
        409,
        failure(
            409,
            "AlreadyExists",
            "configmaps \"remora-ca-roots\" already exists",
            "",
            "configmaps",
            "remora-ca-roots",
        ),
    );
    let (req, send) = h.next().await;
    assert_eq!(
        (req.method.as_str(), req.path.as_str(), &req.body),
        (
            "GET",
            "/api/v1/namespaces/shop/configmaps/remora-ca-roots",
            &Value::Null
        )
    );
    // Someone made it by hand, with the old instructions.
    let mut by_hand = stored("shop", "4100", ROOT_B, false);
    by_hand["apiVersion"] = json!("v1");
    by_hand["kind"] = json!("ConfigMap");
    respond(send, 200, by_hand);
    let (req, send) = h.next().await;
    assert_eq!(req.method, "PATCH");
    assert_eq!(
        req.path,
        "/api/v1/namespaces/shop/configmaps/remora-ca-roots"
    );
    assert_eq!(req.body, patch_body(ROOT_A));
    respond(send, 200, stored("shop", "4101", ROOT_A, true));
    h.quiet_for(60).await;
    assert_eq!(
        (h.count("conflict"), h.count("patched"), h.count("created")),
        (1, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_retried_with_back_off() {
    let mut h = harness(&["shop"], &[], true, 20);
    let start = Instant::now();
    for (n, at) in [(1, 0), (2, 1000), (3, 3000)] {
        let (req, send) = h.next().await;
        assert_eq!(start.elapsed(), Duration::from_millis(at), "try {n}");
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", POST_SHOP)
        );
        respond(send, 500, internal_error());
    }
    let (req, send) = h.next().await;
    assert_eq!(start.elapsed(), Duration::from_millis(7000));
    assert_eq!(req.body, create_body("shop", ROOT_A));
    respond(send, 201, created(&req.body, "5001"));
    h.quiet_for(60).await;
    assert_eq!((h.count("error"), h.count("created")), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn an_edit_by_someone_else_is_put_back_and_a_deleted_one_is_made_again() {
    let live = stored("shop", "4003", ROOT_A, true);
    let mut h = harness(&["shop"], std::slice::from_ref(&live), true, 20);
    h.quiet_for(10).await;
    let edited = stored("shop", "4200", "not a certificate\n", true);
    h.events.send(vec![event("MODIFIED", &edited)]).unwrap();
    let (req, send) = h.next().await;
    assert_eq!(req.method, "PATCH");
    assert_eq!(req.body, patch_body(ROOT_A));
    let restored = stored("shop", "4201", ROOT_A, true);
    respond(send, 200, restored.clone());
    h.events.send(vec![event("MODIFIED", &restored)]).unwrap();
    h.quiet_for(10).await;
    h.events.send(vec![event("DELETED", &restored)]).unwrap();
    let (req, send) = h.next().await;
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", POST_SHOP)
    );
    assert_eq!(req.body, create_body("shop", ROOT_A));
    respond(send, 201, created(&req.body, "4300"));
    h.quiet_for(60).await;
    assert_eq!((h.count("patched"), h.count("created")), (1, 1));
    assert_eq!(h.watch_errors.with_label_values(&["ConfigMap"]).get(), 0);
}

#[test]
fn the_bundle_is_every_root_each_ending_in_a_newline() {
    let roots = [ROOT_A.trim_end().to_owned(), ROOT_B.to_owned()];
    assert_eq!(bundle_pem(&roots), format!("{ROOT_A}{ROOT_B}"));
}

#[test]
fn a_config_map_is_read_as_a_digest_and_our_label() {
    let cm: ConfigMap = serde_json::from_value(stored("shop", "1", ROOT_A, true)).unwrap();
    assert_eq!(
        Live::of(&cm),
        Live {
            roots: Some(digest(ROOT_A)),
            managed: true
        }
    );
    let mut other = stored("shop", "1", ROOT_A, false);
    other["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "helm"});
    other["data"] = json!({"ca.crt": ROOT_A});
    let cm: ConfigMap = serde_json::from_value(other).unwrap();
    assert_eq!(
        Live::of(&cm),
        Live {
            roots: None,
            managed: false
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_namespace_the_api_server_no_longer_has_waits_for_the_next_store() {
    let mut h = harness(&["gone"], &[], true, 20);
    let (req, send) = h.next().await;
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/api/v1/namespaces/gone/configmaps")
    );
    respond(
        send,
        404,
        failure(
            404,
            "NotFound",
            "namespaces \"gone\" not found",
            "",
            "namespaces",
            "gone",
        ),
    );
    h.quiet_for(60).await;
    assert_eq!((h.count("not_found"), h.count("error")), (1, 0));
    // A patch whose ConfigMap was deleted meanwhile creates it again.
    h.namespaces(&["shop"]);
    let (req, send) = h.next().await;
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", POST_SHOP)
    );
    respond(send, 201, created(&req.body, "5001"));
    h.events
        .send(vec![event(
            "MODIFIED",
            &stored("shop", "5002", ROOT_B, true),
        )])
        .unwrap();
    let (req, send) = h.next().await;
    assert_eq!(req.method, "PATCH");
    respond(
        send,
        404,
        failure(
            404,
            "NotFound",
            "configmaps \"remora-ca-roots\" not found",
            "",
            "configmaps",
            "remora-ca-roots",
        ),
    );
    let (req, send) = h.next().await;
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", POST_SHOP)
    );
    assert_eq!(req.body, create_body("shop", ROOT_A));
    respond(send, 201, created(&req.body, "5003"));
    h.quiet_for(60).await;
    assert_eq!((h.count("not_found"), h.count("created")), (2, 2));
}
