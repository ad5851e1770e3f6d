//! The Kubernetes source against a mock API server (a `tower_test` pair)
//! that replays list and watch answers as a kube-apiserver (v1.35) writes
//! them: lists without apiVersion and kind on their items, watch events as
//! newline-delimited JSON, errors as `Status` objects.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tower_test::mock::{self, Handle, SendResponse};

use super::*;
use crate::metrics::Metrics;
use crate::source::{Layer, Outputs, Publisher, SourceMetrics};
use crate::translate::Options;
use crate::view::MeshView;
use clap::Parser as _;

type ApiHandle = Handle<Request<Body>, Response<Body>>;
/// A request waiting for its answer, by path and list-or-watch.
type Waiting = ((String, bool), SendResponse<Response<Body>>);
/// A port's routes as (name, [(backend, weight)]).
type Routes = Vec<(Option<String>, Vec<(String, u32)>)>;

/// Every list the source makes, with its list kind.
const LISTS: [(&str, &str, &str); 13] = [
    ("/api/v1/namespaces", "v1", "NamespaceList"),
    ("/api/v1/services", "v1", "ServiceList"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSliceList",
    ),
    ("/api/v1/pods", "v1", "PodList"),
    ("/api/v1/serviceaccounts", "v1", "ServiceAccountList"),
    ("/api/v1/secrets", "v1", "SecretList"),
    (
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        "gateway.networking.k8s.io/v1",
        "HTTPRouteList",
    ),
    (
        "/apis/gateway.networking.k8s.io/v1/grpcroutes",
        "gateway.networking.k8s.io/v1",
        "GRPCRouteList",
    ),
    (
        "/apis/remora.dev/v1alpha1/consumers",
        "remora.dev/v1alpha1",
        "ConsumerList",
    ),
    (
        "/apis/remora.dev/v1alpha1/authorizationpolicies",
        "remora.dev/v1alpha1",
        "AuthorizationPolicyList",
    ),
    (
        "/apis/remora.dev/v1alpha1/meshtlspolicies",
        "remora.dev/v1alpha1",
        "MeshTLSPolicyList",
    ),
    (
        "/apis/remora.dev/v1alpha1/trafficpolicies",
        "remora.dev/v1alpha1",
        "TrafficPolicyList",
    ),
    (
        "/apis/remora.dev/v1alpha1/pluginpolicies",
        "remora.dev/v1alpha1",
        "PluginPolicyList",
    ),
];

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";

#[derive(Default)]
struct Script {
    /// Answers by path and list-or-watch, served in order.
    answers: BTreeMap<(String, bool), VecDeque<(StatusCode, String)>>,
    /// Every request, as `path?query`.
    requests: Vec<String>,
    /// Every request, as (method, path).
    calls: Vec<(String, String)>,
}

/// The mock API server: a request is answered with the next canned answer
/// for its path (list or watch); without one it waits, as a watch with
/// nothing to report does, until the test queues one.
#[derive(Clone)]
struct ApiServer {
    script: Arc<Mutex<Script>>,
    wake: Arc<Notify>,
}

impl ApiServer {
    fn start(mut handle: ApiHandle) -> Self {
        let server = Self {
            script: Arc::default(),
            wake: Arc::default(),
        };
        let (script, wake) = (server.script.clone(), server.wake.clone());
        tokio::spawn(async move {
            let mut waiting: Vec<Waiting> = Vec::new();
            loop {
                let mut still = Vec::new();
                for (key, send) in waiting.drain(..) {
                    let answer = script
                        .lock()
                        .unwrap()
                        .answers
                        .get_mut(&key)
                        .and_then(|q| q.pop_front());
                    match answer {
                        Some((status, body)) => send.send_response(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Body::from(body.into_bytes()))
                                .unwrap(),
                        ),
                        None => still.push((key, send)),
                    }
                }
                waiting = still;
                tokio::select! {
                    request = handle.next_request() => {
                        let Some((request, send)) = request else { return };
                        let path = request.uri().path().to_owned();
                        let query = request.uri().query().unwrap_or_default().to_owned();
                        let watch = query.contains("watch=true");
                        let method = request.method().to_string();
                        let mut s = script.lock().unwrap();
                        s.requests.push(format!("{path}?{query}"));
                        s.calls.push((method, path.clone()));
                        drop(s);
                        waiting.push(((path, watch), send));
                    }
                    _ = wake.notified() => {}
                }
            }
        });
        server
    }

    fn answer(&self, path: &str, watch: bool, status: StatusCode, body: String) {
        self.script
            .lock()
            .unwrap()
            .answers
            .entry((path.to_owned(), watch))
            .or_default()
            .push_back((status, body));
        self.wake.notify_one();
    }

    fn list(&self, path: &str, body: &str) {
        self.answer(path, false, StatusCode::OK, body.to_owned());
    }

    /// One watch response: the events, one JSON object a line.
    fn watch(&self, path: &str, events: &[Value]) {
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        self.answer(path, true, StatusCode::OK, body);
    }

    /// The watch requests made for `path`, by their query.
    fn watches(&self, path: &str) -> Vec<String> {
        let prefix = format!("{path}?");
        self.script
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter_map(|r| r.strip_prefix(&prefix))
            .filter(|q| q.contains("watch=true"))
            .map(str::to_owned)
            .collect()
    }

    fn requests(&self) -> Vec<String> {
        self.script.lock().unwrap().requests.clone()
    }
}

fn empty_list(api_version: &str, kind: &str) -> String {
    json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": "1001"}, "items": []})
        .to_string()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

fn bookmark(api_version: &str, kind: &str, rv: &str) -> Value {
    event(
        "BOOKMARK",
        json!({"kind": kind, "apiVersion": api_version,
               "metadata": {"resourceVersion": rv, "creationTimestamp": null}}),
    )
}

/// The first item of a testdata list, as a watch event carries it (with
/// apiVersion and kind).
fn item(list: &str, api_version: &str, kind: &str) -> Value {
    let list: Value = serde_json::from_str(list).unwrap();
    let mut object = list["items"][0].clone();
    object["apiVersion"] = api_version.into();
    object["kind"] = kind.into();
    object
}

fn service(name: &str, ip: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                     "resourceVersion": rv, "creationTimestamp": "2026-12-01T11:00:00Z"},
        "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 9080, "targetPort": 9080}],
                 "clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP"},
        "status": {"loadBalancer": {}},
    })
}

fn list_of(api_version: &str, kind: &str, rv: &str, items: Vec<Value>) -> String {
    json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv}, "items": items})
        .to_string()
}

struct Harness {
    api: ApiServer,
    out: Outputs,
    metrics: Metrics,
    client: kube::Client,
}

/// Starts the source on a mock API server whose lists are `lists` (by
/// path; a path missing from `lists` lists nothing, one given as `None`
/// gets no answer yet).
fn start(lists: &[(&str, Option<&str>)]) -> Harness {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let api = ApiServer::start(handle);
    for (path, api_version, kind) in LISTS {
        match lists.iter().find(|(p, _)| *p == path) {
            Some((_, Some(body))) => api.list(path, body),
            Some((_, None)) => {}
            None => api.list(path, &empty_list(api_version, kind)),
        }
    }
    let metrics = Metrics::new().unwrap();
    let mut publisher = Publisher::new(
        Options::default(),
        SourceMetrics {
            invalid: metrics.objects_invalid.clone(),
            objects: metrics.source_objects.clone(),
            problems: metrics.translation_problems.clone(),
        },
        Duration::from_millis(10),
    );
    let layer = publisher.layer(Layer::Kubernetes);
    let out = publisher.outputs();
    tokio::spawn(publisher.run());
    let client = kube::Client::new(service, "default");
    super::spawn(
        client.clone(),
        layer,
        WatchMetrics {
            errors: metrics.watch_errors.clone(),
            relists: metrics.watch_relists.clone(),
        },
    );
    Harness {
        api,
        out,
        metrics,
        client,
    }
}

impl Harness {
    /// The first view for which `done` holds.
    async fn view(&mut self, done: impl FnMut(&MeshView) -> bool) -> MeshView {
        let view = tokio::time::timeout(Duration::from_secs(10), self.out.views.wait_for(done))
            .await
            .expect("the view within 10 s")
            .unwrap();
        view.clone()
    }

    fn errors(&self, kind: &str) -> u64 {
        self.metrics.watch_errors.with_label_values(&[kind]).get()
    }

    fn relists(&self, kind: &str) -> u64 {
        self.metrics.watch_relists.with_label_values(&[kind]).get()
    }

    fn invalid(&self, kind: &str) -> u64 {
        self.metrics
            .objects_invalid
            .with_label_values(&[kind])
            .get()
    }
}

/// Waits up to 10 s for `done` (a metric or a request count), then fails.
async fn eventually(mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the condition within 10 s");
}

fn ready(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow()
}

/// Endpoints of a backend as (address, identity, zone).
fn endpoints(view: &MeshView, backend: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let dest = backend.split(':').next().unwrap();
    view.destinations[dest].backends[backend]
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.identity.clone(), e.zone.clone()))
        .collect()
}

fn addresses(view: &MeshView) -> Vec<(String, String)> {
    view.by_addr
        .iter()
        .map(|(a, k)| (a.to_string(), k.clone()))
        .collect()
}

const REVIEWS_ID: &str = "spiffe://cluster.local/ns/shop/sa/reviews";

fn both_endpoints() -> Vec<(String, Option<String>, Option<String>)> {
    vec![
        (
            "10.244.1.5:9080".to_owned(),
            Some(REVIEWS_ID.to_owned()),
            Some("zone-a".to_owned()),
        ),
        ("10.244.2.7:9080".to_owned(), None, None),
    ]
}

fn cluster() -> [(&'static str, Option<&'static str>); 4] {
    [
        (
            "/api/v1/namespaces",
            Some(include_str!("testdata/namespaces.json")),
        ),
        (SERVICES, Some(include_str!("testdata/services.json"))),
        (SLICES, Some(include_str!("testdata/endpointslices.json"))),
        ("/api/v1/pods", Some(include_str!("testdata/pods.json"))),
    ]
}

#[tokio::test]
async fn the_initial_list_then_an_add_a_modify_and_a_delete_reach_the_view() {
    let mut h = start(&cluster());
    let view = h.view(|v| v.version == 1).await;
    assert!(ready(&h.out.ready));
    assert_eq!(
        view.destinations.keys().collect::<Vec<_>>(),
        ["shop/reviews"]
    );
    assert_eq!(
        addresses(&view),
        [("10.96.0.20:9080".to_owned(), "shop/reviews".to_owned())]
    );
    let port = &view.destinations["shop/reviews"].service.ports[0];
    assert_eq!(
        (port.port, port.backend_refs[0].name.as_str()),
        (9080, "shop/reviews:9080")
    );
    assert_eq!(endpoints(&view, "shop/reviews:9080"), both_endpoints());
    // Only the injected pod is a workload.
    assert_eq!(
        view.workloads.keys().collect::<Vec<_>>(),
        ["shop/reviews-v1-5c9f8d7b6-4xk2p"]
    );
    assert_eq!(
        view.workloads["shop/reviews-v1-5c9f8d7b6-4xk2p"].identity,
        REVIEWS_ID
    );
    for (kind, n) in [
        ("Service", 1),
        ("Pod", 2),
        ("EndpointSlice", 1),
        ("Secret", 0),
    ] {
        let gauge = h
            .metrics
            .source_objects
            .with_label_values(&["kubernetes", kind]);
        assert_eq!(gauge.get(), n, "{kind}");
    }
    assert_eq!((h.relists("Service"), h.errors("Service")), (1, 0));
    // Lists page by 500; Secrets only with the label.
    let requests = h.api.requests();
    assert!(
        requests.contains(&"/api/v1/services?&limit=500".to_owned()),
        "{requests:?}"
    );
    assert!(
        requests.contains(
            &"/api/v1/secrets?&labelSelector=remora.dev%2Fcredentials%3Dtrue&limit=500".to_owned()
        ),
        "{requests:?}"
    );

    // Add: a Service appears, then a bookmark moves the resource version.
    h.api.watch(
        SERVICES,
        &[
            event("ADDED", service("ratings", "10.96.0.30", "1010")),
            bookmark("v1", "Service", "1012"),
        ],
    );
    let view = h
        .view(|v| v.destinations.contains_key("shop/ratings"))
        .await;
    assert_eq!(view.version, 2);
    assert_eq!(
        addresses(&view),
        [
            ("10.96.0.20:9080".to_owned(), "shop/reviews".to_owned()),
            ("10.96.0.30:9080".to_owned(), "shop/ratings".to_owned())
        ]
    );
    assert_eq!(
        view.destinations["shop/ratings"].backends["shop/ratings:9080"].endpoints,
        []
    );

    // Modify: an endpoint leaves the slice, and the backend.
    let mut slice = item(
        include_str!("testdata/endpointslices.json"),
        "discovery.k8s.io/v1",
        "EndpointSlice",
    );
    slice["metadata"]["resourceVersion"] = "1020".into();
    slice["endpoints"].as_array_mut().unwrap().pop();
    h.api.watch(SLICES, &[event("MODIFIED", slice)]);
    let view = h
        .view(|v| {
            v.destinations["shop/reviews"].backends["shop/reviews:9080"]
                .endpoints
                .len()
                == 1
        })
        .await;
    assert_eq!(view.version, 3);
    assert_eq!(
        endpoints(&view, "shop/reviews:9080"),
        [(
            "10.244.1.5:9080".to_owned(),
            Some(REVIEWS_ID.to_owned()),
            Some("zone-a".to_owned())
        )]
    );

    // Delete, on the next watch, which resumes from the bookmark.
    h.api.watch(
        SERVICES,
        &[event("DELETED", service("ratings", "10.96.0.30", "1030"))],
    );
    let view = h
        .view(|v| !v.destinations.contains_key("shop/ratings"))
        .await;
    assert_eq!(view.version, 4);
    assert_eq!(
        view.destinations.keys().collect::<Vec<_>>(),
        ["shop/reviews"]
    );
    assert_eq!(
        h.api.watches(SERVICES)[..2],
        [
            "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=1001",
            "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=1012",
        ]
    );
    assert_eq!((h.relists("Service"), h.errors("Service")), (1, 0));
}

#[tokio::test]
async fn objects_are_stored_trimmed() {
    let secret = list_of(
        "v1",
        "SecretList",
        "1001",
        vec![json!({
            "metadata": {
                "name": "alice-key", "namespace": "shop", "resourceVersion": "77",
                "labels": {"remora.dev/credentials": "true"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"key\":\"czNjcjN0\"}}",
                    "owner": "team-a"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}]
            },
            "type": "Opaque",
            "data": {"key": "czNjcjN0"}
        })],
    );
    let mut lists = cluster().to_vec();
    lists.push(("/api/v1/secrets", Some(&secret)));
    let mut h = start(&lists);
    h.view(|v| v.version == 1).await;
    let snapshot = h.out.snapshots.borrow().clone();
    let pod = &snapshot.store.pods["shop/reviews-v1-5c9f8d7b6-4xk2p"];
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("reviews"));
    assert_eq!(
        (
            spec.containers.len(),
            spec.volumes.as_ref(),
            spec.node_name.as_ref()
        ),
        (0, None, None)
    );
    assert_eq!(pod.status, None);
    assert_eq!(pod.metadata.managed_fields, None);
    assert_eq!(pod.metadata.owner_references, None);
    assert_eq!(
        pod.metadata
            .annotations
            .as_ref()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["remora.dev/status"]
    );
    let svc = &snapshot.store.services["shop/reviews"];
    assert_eq!(svc.metadata.annotations, Some(BTreeMap::new()));
    assert_eq!(svc.status, None);
    let secret = &snapshot.store.secrets["shop/alice-key"];
    assert_eq!(secret.metadata.annotations, Some(BTreeMap::new()));
    assert_eq!(secret.metadata.managed_fields, None);
    assert_eq!(secret.data.as_ref().unwrap()["key"].0, b"s3cr3t".to_vec());
}

#[tokio::test]
async fn a_410_gone_relists_and_the_relist_replaces_the_kind() {
    let mut h = start(&cluster());
    h.view(|v| v.version == 1).await;
    h.api.watch(
        SERVICES,
        &[event(
            "ERROR",
            status(410, "Expired", "too old resource version: 1001 (1400)"),
        )],
    );
    // While the watch was away, reviews went and ratings came.
    h.api.list(
        SERVICES,
        &list_of(
            "v1",
            "ServiceList",
            "1500",
            vec![service("ratings", "10.96.0.30", "1450")],
        ),
    );
    let view = h
        .view(|v| v.destinations.keys().collect::<Vec<_>>() == ["shop/ratings"])
        .await;
    assert_eq!(view.version, 2);
    assert_eq!(
        addresses(&view),
        [("10.96.0.30:9080".to_owned(), "shop/ratings".to_owned())]
    );
    assert_eq!((h.relists("Service"), h.errors("Service")), (2, 1));
    assert_eq!((h.relists("Pod"), h.errors("Pod")), (1, 0));
    // The watch after the relist starts from the new list's version.
    eventually(|| h.api.watches(SERVICES).len() == 2).await;
    assert_eq!(
        h.api.watches(SERVICES)[1],
        "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=1500"
    );
}

#[tokio::test]
async fn a_failed_list_is_retried_and_ready_waits_for_it() {
    let mut lists = cluster().to_vec();
    lists.retain(|(p, _)| *p != SLICES);
    lists.push((SLICES, None));
    let mut h = start(&lists);
    h.api.answer(
        SLICES,
        false,
        StatusCode::INTERNAL_SERVER_ERROR,
        status(
            500,
            "InternalError",
            "Internal error occurred: etcdserver: request timed out",
        )
        .to_string(),
    );
    eventually(|| h.errors("EndpointSlice") == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!ready(&h.out.ready));
    assert_eq!(h.out.views.borrow().version, 0);
    // The retry (after back-off) lists again, and the mesh is complete.
    h.api
        .list(SLICES, include_str!("testdata/endpointslices.json"));
    let view = h.view(|v| v.version == 1).await;
    assert!(ready(&h.out.ready));
    assert_eq!(endpoints(&view, "shop/reviews:9080"), both_endpoints());
    assert_eq!(
        (h.relists("EndpointSlice"), h.errors("EndpointSlice")),
        (2, 1)
    );
}

#[tokio::test]
async fn a_watch_error_event_is_counted_and_the_watch_resumes_without_a_relist() {
    let mut h = start(&cluster());
    h.view(|v| v.version == 1).await;
    h.api.watch(
        SERVICES,
        &[
            event(
                "ERROR",
                status(
                    500,
                    "InternalError",
                    "Internal error occurred: etcd watch channel closed",
                ),
            ),
            event("ADDED", service("ratings", "10.96.0.30", "1010")),
        ],
    );
    let view = h
        .view(|v| v.destinations.contains_key("shop/ratings"))
        .await;
    assert_eq!(view.version, 2);
    assert_eq!(
        view.destinations.keys().collect::<Vec<_>>(),
        ["shop/ratings", "shop/reviews"]
    );
    assert_eq!((h.relists("Service"), h.errors("Service")), (1, 1));
}

#[tokio::test]
async fn an_invalid_route_is_counted_and_the_others_apply() {
    let routes = list_of(
        "gateway.networking.k8s.io/v1",
        "HTTPRouteList",
        "1001",
        vec![
            json!({
                "metadata": {"name": "bad", "namespace": "shop", "resourceVersion": "800",
                             "creationTimestamp": "2026-12-01T10:01:00Z", "generation": 1},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
                         "rules": [{"matches": [{"path": {"type": "Glob", "value": "/v1/*"}}],
                                    "backendRefs": [{"name": "reviews", "port": 9080}]}]},
                "status": {"parents": []}
            }),
            json!({
                "metadata": {"name": "good", "namespace": "shop", "resourceVersion": "801",
                             "creationTimestamp": "2026-12-01T10:02:00Z", "generation": 1},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
                         "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                                    "backendRefs": [{"name": "reviews", "port": 9080, "weight": 3}]}]},
                "status": {"parents": []}
            }),
        ],
    );
    let mut lists = cluster().to_vec();
    lists.push((ROUTES, Some(&routes)));
    let mut h = start(&lists);
    let view = h.view(|v| v.version == 1).await;
    assert_eq!(h.invalid("HTTPRoute"), 1);
    let names = |v: &MeshView| -> Routes {
        v.destinations["shop/reviews"].service.ports[0]
            .routes
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.backend_refs
                        .iter()
                        .map(|b| (b.name.clone(), b.weight))
                        .collect(),
                )
            })
            .collect()
    };
    assert_eq!(
        names(&view),
        [(
            Some("shop/good/rule-0".to_owned()),
            vec![("shop/reviews:9080".to_owned(), 3)]
        )]
    );
    assert_eq!(endpoints(&view, "shop/reviews:9080"), both_endpoints());
    assert_eq!(
        h.out
            .snapshots
            .borrow()
            .store
            .http_routes
            .keys()
            .collect::<Vec<_>>(),
        ["shop/good"]
    );

    // The good route turns bad: it is counted, and its last good version
    // stays in force.
    let mut broken = serde_json::from_str::<Value>(&routes).unwrap()["items"][1].clone();
    broken["apiVersion"] = "gateway.networking.k8s.io/v1".into();
    broken["kind"] = "HTTPRoute".into();
    broken["metadata"]["resourceVersion"] = "1100".into();
    broken["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Glob".into();
    h.api.watch(ROUTES, &[event("MODIFIED", broken)]);
    eventually(|| h.invalid("HTTPRoute") == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.invalid("HTTPRoute"), 2);
    let view = h.out.views.borrow().clone();
    assert_eq!(
        names(&view),
        [(
            Some("shop/good/rule-0".to_owned()),
            vec![("shop/reviews:9080".to_owned(), 3)]
        )]
    );
}

/// The wiring of `--kubernetes` (lib.rs): the Kubernetes layer's objects
/// reach the status writer through the publisher's snapshots, and it
/// writes once this replica holds the Lease, all on one client.
#[tokio::test]
async fn the_kubernetes_layer_feeds_leader_election_and_status_write_back() {
    let route = json!({
        "metadata": {"name": "r", "namespace": "shop", "uid": "uid-r", "generation": 1,
                     "resourceVersion": "7", "creationTimestamp": "2026-12-01T11:00:00Z"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
                 "rules": [{"backendRefs": [{"name": "ghost", "port": 9080}]}]},
    });
    let h = start(&[
        (
            SERVICES,
            Some(&list_of(
                "v1",
                "ServiceList",
                "1001",
                vec![service("reviews", "10.96.0.10", "5")],
            )),
        ),
        (
            ROUTES,
            Some(&list_of(
                "gateway.networking.k8s.io/v1",
                "HTTPRouteList",
                "1001",
                vec![route.clone()],
            )),
        ),
    ]);
    let lease = "/apis/coordination.k8s.io/v1/namespaces/remora-system/leases/remora-cp";
    let leases = "/apis/coordination.k8s.io/v1/namespaces/remora-system/leases";
    let route_status = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/r/status";
    h.api.answer(
        lease,
        false,
        StatusCode::NOT_FOUND,
        status(
            404,
            "NotFound",
            "leases.coordination.k8s.io \"remora-cp\" not found",
        )
        .to_string(),
    );
    h.api.answer(
        leases,
        false,
        StatusCode::CREATED,
        json!({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
               "metadata": {"name": "remora-cp", "namespace": "remora-system", "resourceVersion": "501"},
               "spec": {"holderIdentity": "cp-0", "leaseDurationSeconds": 15,
                        "acquireTime": "2026-12-02T12:00:00.000000Z",
                        "renewTime": "2026-12-02T12:00:00.000000Z", "leaseTransitions": 0}})
        .to_string(),
    );
    let mut echoed = route.clone();
    echoed["apiVersion"] = "gateway.networking.k8s.io/v1".into();
    echoed["kind"] = "HTTPRoute".into();
    echoed["metadata"]["resourceVersion"] = "8".into();
    h.api
        .answer(route_status, false, StatusCode::OK, echoed.to_string());
    let cli = crate::config::Cli::try_parse_from([
        "remora-cp",
        "--token-file",
        "/t",
        "--kubernetes",
        "--pod-name",
        "cp-0",
    ])
    .unwrap();
    let config = crate::config::Config::from_args(cli.serve).unwrap();
    let (_drain, drain_rx) = watch::channel(false);
    // No Namespace is listed, so the roots ConfigMap writer writes nothing.
    let (_roots, roots_rx) = watch::channel("-----BEGIN CERTIFICATE-----\n".to_owned());
    let k = crate::start_kubernetes(
        h.client.clone(),
        &config,
        &h.metrics,
        h.out.snapshots.clone(),
        roots_rx,
        &drain_rx,
    );
    let calls = || h.api.script.lock().unwrap().calls.clone();
    eventually(|| {
        calls()
            .iter()
            .any(|(m, p)| m == "PATCH" && p == route_status)
    })
    .await;
    assert!(*k.leader.borrow(), "leading once the Lease was created");
    let writes: Vec<(String, String)> = calls()
        .into_iter()
        .filter(|(m, p)| m != "GET" || p == lease)
        .filter(|(_, p)| p.starts_with("/apis/coordination") || p.ends_with("/status"))
        .collect();
    assert_eq!(
        writes[..3],
        [
            ("GET".to_owned(), lease.to_owned()),
            ("POST".to_owned(), leases.to_owned()),
            ("PATCH".to_owned(), route_status.to_owned()),
        ]
    );
    assert_eq!(
        h.metrics
            .status_writes
            .with_label_values(&["HTTPRoute", "ok"])
            .get(),
        1
    );
}
