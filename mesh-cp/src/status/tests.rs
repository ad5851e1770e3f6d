//! Status write-back: the pure plan from real translations of real
//! objects, and the writer against a mock API server that answers status
//! patches as a kube-apiserver does (200 echoing the object, 409, 500), on
//! paused time.

use serde_json::{json, Value};

use super::*;
use crate::translate::{translate, Options};
use remora_injector::kube_mock::{
    self as mock_api, failure, internal_error, next, respond, ApiHandle,
};

const NOW: &str = "2026-12-02T13:00:00Z";
const ROUTE_STATUS: &str =
    "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/reviews/status";

fn fixed() -> Timestamp {
    "2026-12-02T13:00:00Z".parse().unwrap()
}

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": "10"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "http", "port": 9080, "protocol": "TCP", "targetPort": 9080}]}
    })
}

/// The route: a Service parent (ours), a Gateway parent (another
/// controller's, with its entry in the status), and a backend `backend`.
fn route(name: &str, rv: &str, generation: i64, backend: &str, status: Option<Value>) -> Value {
    let mut route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop", "generation": generation,
                     "resourceVersion": rv, "uid": "6b0e2a8c-1f3d-4c5e-9a7b-2d4f6e8a0c1b",
                     "creationTimestamp": "2026-11-01T08:00:00Z"},
        "spec": {
            "parentRefs": [
                {"group": "", "kind": "Service", "name": "reviews", "port": 9080},
                {"name": "public-gw"}
            ],
            "rules": [{"backendRefs": [{"name": backend, "port": 9080}]}]
        }
    });
    if let Some(status) = status {
        route["status"] = status;
    }
    route
}

fn gateway_entry() -> Value {
    json!({
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public-gw"},
        "controllerName": "example.net/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "observedGeneration": 3, "lastTransitionTime": "2026-11-01T08:00:05Z"}]
    })
}

fn ours(
    generation: i64,
    accepted: (&str, &str, &str, &str),
    resolved: (&str, &str, &str, &str),
) -> Value {
    let cond = |kind: &str, (status, reason, message, time): (&str, &str, &str, &str)| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "observedGeneration": generation, "lastTransitionTime": time})
    };
    json!({
        "parentRef": {"group": "", "kind": "Service", "name": "reviews", "port": 9080},
        "controllerName": "remora.dev/mesh",
        "conditions": [cond("Accepted", accepted), cond("ResolvedRefs", resolved)]
    })
}

const ACCEPTED: (&str, &str, &str, &str) = ("True", "Accepted", "accepted by the mesh", NOW);
const RESOLVED: (&str, &str, &str, &str) =
    ("True", "ResolvedRefs", "all backendRefs resolved", NOW);
const GHOST: (&str, &str, &str, &str) = (
    "False",
    "BackendNotFound",
    "Service shop/ghost does not exist",
    NOW,
);

fn input(objects: &[Value]) -> Arc<Input> {
    let mut store = Store::default();
    for object in objects {
        store.insert(object.clone()).unwrap();
    }
    let translation = translate(&store, &Options::default());
    Arc::new(Input {
        store: Arc::new(store),
        problems: Arc::new(translation.problems),
    })
}

struct Harness {
    handle: ApiHandle,
    input: watch::Sender<Arc<Input>>,
    leader: watch::Sender<bool>,
    writes: IntCounterVec,
    _drain: watch::Sender<bool>,
}

fn harness(first: Arc<Input>, leading: bool, writes_per_second: u32) -> Harness {
    let (client, handle) = mock_api::client();
    let writes = IntCounterVec::new(
        prometheus::Opts::new("remora_cp_status_writes_total", "test"),
        &["kind", "result"],
    )
    .unwrap();
    let (input, input_rx) = watch::channel(first);
    let (leader, leader_rx) = watch::channel(leading);
    let (drain, drain_rx) = watch::channel(false);
    let settings = Settings {
        writes_per_second,
        ..Settings::default()
    };
    let writer = Writer::new(client, settings, writes.clone()).with_clock(fixed);
    tokio::spawn(writer.run(input_rx, leader_rx, drain_rx));
    Harness {
        handle,
        input,
        leader,
        writes,
        _drain: drain,
    }
}

impl Harness {
    fn count(&self, kind: &str, result: &str) -> u64 {
        self.writes.with_label_values(&[kind, result]).get()
    }

    /// No request reaches the API server within `secs`.
    async fn quiet_for(&mut self, secs: u64) {
        let got = tokio::time::timeout(Duration::from_secs(secs), self.handle.next_request()).await;
        assert!(
            got.is_err(),
            "an unexpected request: {:?}",
            got.map(|r| r.map(|(req, _)| req.uri().clone()))
        );
    }
}

/// The object as the API server returns it after a status patch.
fn echoed(object: &Value, body: &Value, rv: &str) -> Value {
    let mut out = object.clone();
    out["status"] = body["status"].clone();
    out["metadata"]["resourceVersion"] = json!(rv);
    out
}

#[tokio::test(start_paused = true)]
async fn the_leader_writes_gateway_api_route_status_and_keeps_other_controllers_entries() {
    let live = route(
        "reviews",
        "1001",
        3,
        "ghost",
        Some(json!({"parents": [gateway_entry()]})),
    );
    let mut h = harness(input(&[service("reviews"), live.clone()]), true, 20);
    let (req, send) = next(&mut h.handle).await;
    assert_eq!(req.method, "PATCH");
    assert_eq!(req.path, ROUTE_STATUS);
    assert_eq!(req.query, "&fieldManager=remora-cp");
    assert_eq!(req.content_type, "application/merge-patch+json");
    assert_eq!(
        req.body,
        json!({
            "metadata": {"resourceVersion": "1001"},
            "status": {"parents": [gateway_entry(), ours(3, ACCEPTED, GHOST)]}
        })
    );
    let stored = echoed(&live, &req.body, "1002");
    respond(send, 200, stored.clone());
    h.quiet_for(1).await;
    assert_eq!(h.count("HTTPRoute", "ok"), 1);

    // The watch brings the object back with that status: nothing to write.
    h.input.send(input(&[service("reviews"), stored])).unwrap();
    h.quiet_for(30).await;
    assert_eq!(h.count("HTTPRoute", "ok"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_does_not_show_the_write_yet_does_not_rewrite_it() {
    let live = route("reviews", "1001", 3, "ghost", None);
    let mut h = harness(input(&[service("reviews"), live.clone()]), true, 20);
    let (req, send) = next(&mut h.handle).await;
    assert_eq!(
        req.body["status"]["parents"],
        json!([ours(3, ACCEPTED, GHOST)])
    );
    respond(send, 200, echoed(&live, &req.body, "1002"));
    // Another object changed; the route is still at 1001 without status.
    h.input
        .send(input(&[
            service("reviews"),
            service("ratings"),
            live.clone(),
        ]))
        .unwrap();
    h.quiet_for(30).await;
    // A real change of the route (the missing backend now exists) is written.
    h.input
        .send(input(&[service("reviews"), service("ghost"), live]))
        .unwrap();
    let (req, send) = next(&mut h.handle).await;
    assert_eq!(req.path, ROUTE_STATUS);
    assert_eq!(
        req.body,
        json!({
            "metadata": {"resourceVersion": "1001"},
            "status": {"parents": [ours(3, ACCEPTED, RESOLVED)]}
        })
    );
    respond(send, 200, json!({}));
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_does_not_lead_writes_no_status() {
    let live = route("reviews", "1001", 3, "ghost", None);
    let mut h = harness(input(&[service("reviews"), live]), false, 20);
    h.quiet_for(60).await;
    assert_eq!(h.count("HTTPRoute", "ok"), 0);
    // The same replica, once it leads, writes it.
    h.leader.send(true).unwrap();
    let (req, send) = next(&mut h.handle).await;
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("PATCH", ROUTE_STATUS)
    );
    respond(send, 200, json!({}));
}

#[tokio::test(start_paused = true)]
async fn a_conflict_is_counted_and_waits_for_the_newer_object() {
    let live = route("reviews", "1001", 3, "ghost", None);
    let mut h = harness(input(&[service("reviews"), live.clone()]), true, 20);
    let (req, send) = next(&mut h.handle).await;
    assert_eq!(req.body["metadata"]["resourceVersion"], "1001");
    respond(
        send,
        409,
        failure(
            409,
            "Conflict",
            "Operation cannot be fulfilled on httproutes.gateway.networking.k8s.io \"reviews\": the object has been modified; please apply your changes to the latest version and try again",
            "gateway.networking.k8s.io",
            "httproutes",
            "reviews",
        ),
    );
    h.quiet_for(60).await;
    assert_eq!(h.count("HTTPRoute", "conflict"), 1);
    // The watch delivers the object someone else changed (generation 4).
    h.input
        .send(input(&[
            service("reviews"),
            route("reviews", "1005", 4, "ghost", None),
        ]))
        .unwrap();
    let (req, send) = next(&mut h.handle).await;
    assert_eq!(
        req.body,
        json!({
            "metadata": {"resourceVersion": "1005"},
            "status": {"parents": [ours(4, ACCEPTED, GHOST)]}
        })
    );
    respond(send, 200, json!({}));
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_retried_with_back_off() {
    let live = route("reviews", "1001", 3, "ghost", None);
    let mut h = harness(input(&[service("reviews"), live]), true, 20);
    let start = Instant::now();
    for (n, at) in [(1, 0), (2, 1000), (3, 3000)] {
        let (req, send) = next(&mut h.handle).await;
        assert_eq!(start.elapsed(), Duration::from_millis(at), "try {n}");
        assert_eq!(req.path, ROUTE_STATUS);
        respond(send, 500, internal_error());
    }
    let (_, send) = next(&mut h.handle).await;
    assert_eq!(start.elapsed(), Duration::from_millis(7000));
    respond(send, 200, json!({}));
    h.quiet_for(60).await;
    assert_eq!(h.count("HTTPRoute", "error"), 3);
    assert_eq!(h.count("HTTPRoute", "ok"), 1);
}

#[tokio::test(start_paused = true)]
async fn writes_are_paced_to_the_rate() {
    let objects: Vec<Value> = std::iter::once(service("reviews"))
        .chain((0..3).map(|i| route(&format!("r{i}"), "1", 1, "reviews", None)))
        .collect();
    let mut h = harness(input(&objects), true, 2);
    let start = Instant::now();
    for (i, at) in [0, 500, 1000].into_iter().enumerate() {
        let (req, send) = next(&mut h.handle).await;
        assert_eq!(start.elapsed(), Duration::from_millis(at));
        assert_eq!(
            req.path,
            format!("/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/r{i}/status")
        );
        respond(send, 200, json!({}));
    }
    h.quiet_for(10).await;
    assert_eq!(h.count("HTTPRoute", "ok"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_consumer_whose_secret_is_missing_is_not_accepted() {
    let consumer = json!({
        "apiVersion": "remora.dev/v1alpha1", "kind": "Consumer",
        "metadata": {"name": "alice", "namespace": "shop", "generation": 2, "resourceVersion": "77"},
        "spec": {"credentials": [{"plugin": "key-auth", "field": "key",
                                   "secretRef": {"name": "alice-key", "key": "key"}}]}
    });
    let mut h = harness(input(&[consumer]), true, 20);
    let (req, send) = next(&mut h.handle).await;
    assert_eq!(req.method, "PATCH");
    assert_eq!(
        req.path,
        "/apis/remora.dev/v1alpha1/namespaces/shop/consumers/alice/status"
    );
    let message = "Secret shop/alice-key has no UTF-8 key \"key\" (from Kubernetes, only Secrets labelled remora.dev/credentials=true are read)";
    assert_eq!(
        req.body,
        json!({
            "metadata": {"resourceVersion": "77"},
            "status": {"conditions": [
                {"type": "Accepted", "status": "False", "reason": "Invalid", "message": message,
                 "observedGeneration": 2, "lastTransitionTime": NOW},
                {"type": "ResolvedRefs", "status": "False", "reason": "SecretNotFound", "message": message,
                 "observedGeneration": 2, "lastTransitionTime": NOW},
            ]}
        })
    );
    respond(send, 200, json!({}));
    h.quiet_for(5).await;
    assert_eq!(h.count("Consumer", "ok"), 1);
}

#[test]
fn policies_get_accepted_with_the_translations_reason() {
    let plugin = json!({
        "apiVersion": "remora.dev/v1alpha1", "kind": "PluginPolicy",
        "metadata": {"name": "limits", "namespace": "shop", "generation": 1, "resourceVersion": "5"},
        "spec": {"targetRefs": [{"kind": "Service", "name": "reviews", "port": 9080}], "plugins": {}}
    });
    let traffic = json!({
        "apiVersion": "remora.dev/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": "lb", "namespace": "shop", "generation": 7, "resourceVersion": "6"},
        "spec": {"targetRefs": [{"kind": "Service", "name": "reviews"}], "connectTimeout": "250ms"},
        "status": {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                    "message": "accepted by the mesh", "observedGeneration": 7,
                                    "lastTransitionTime": "2026-11-20T10:00:00Z"}]}
    });
    let input = input(&[service("reviews"), plugin, traffic]);
    let writes = plan(&input, &Sent::default(), fixed());
    // Translation's own words, passed through.
    let message = &input.problems[0].message;
    assert!(
        message.starts_with("targetRef Service reviews port 9080: only whole Services"),
        "{message}"
    );
    // The TrafficPolicy's status is already right: one write only.
    assert_eq!(
        writes,
        vec![Write {
            kind: PLUGIN_POLICY,
            namespace: "shop".into(),
            name: "limits".into(),
            resource_version: Some("5".into()),
            status: json!({"conditions": [{
                "type": "Accepted", "status": "False", "reason": "Unsupported",
                "message": message, "observedGeneration": 1, "lastTransitionTime": NOW}]}),
        }]
    );
}

#[test]
fn a_condition_keeps_its_transition_time_while_its_status_holds() {
    let before = "2026-11-01T08:00:00Z";
    let live = route(
        "reviews",
        "1001",
        3,
        "ghost",
        Some(json!({"parents": [ours(
            2,
            ("True", "Accepted", "accepted by the mesh", before),
            ("True", "ResolvedRefs", "all backendRefs resolved", before),
        )]})),
    );
    let writes = plan(
        &input(&[service("reviews"), live]),
        &Sent::default(),
        fixed(),
    );
    assert_eq!(writes.len(), 1);
    assert_eq!(
        writes[0].status,
        json!({"parents": [ours(3, ("True", "Accepted", "accepted by the mesh", before), GHOST)]})
    );
}

#[test]
fn a_missing_parent_service_is_no_matching_parent_and_gateways_get_no_entry() {
    let mut r = route("reviews", "1", 1, "reviews", None);
    r["spec"]["parentRefs"] = json!([
        {"group": "", "kind": "Service", "name": "missing"},
        {"group": "core", "kind": "Service", "name": "reviews", "port": 8080},
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public-gw"},
        // No group is gateway.networking.k8s.io: not a core Service.
        {"kind": "Service", "name": "reviews"}
    ]);
    let writes = plan(&input(&[service("reviews"), r]), &Sent::default(), fixed());
    let entry = |parent: Value, message: &str| {
        json!({
            "parentRef": parent,
            "controllerName": "remora.dev/mesh",
            "conditions": [
                {"type": "Accepted", "status": "False", "reason": "NoMatchingParent", "message": message,
                 "observedGeneration": 1, "lastTransitionTime": NOW},
                {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
                 "message": "all backendRefs resolved", "observedGeneration": 1, "lastTransitionTime": NOW},
            ]
        })
    };
    assert_eq!(writes.len(), 1);
    assert_eq!(
        writes[0].status,
        json!({"parents": [
            entry(json!({"group": "", "kind": "Service", "name": "missing"}),
                  "parentRef Service shop/missing does not exist"),
            entry(json!({"group": "core", "kind": "Service", "name": "reviews", "port": 8080}),
                  "Service shop/reviews has no port 8080"),
        ]})
    );
    // A route with Gateway parents only has nothing of ours to write.
    let mut g = route("gw-only", "1", 1, "reviews", None);
    g["spec"]["parentRefs"] = json!([{"name": "public-gw"}]);
    assert_eq!(
        plan(&input(&[service("reviews"), g]), &Sent::default(), fixed()),
        vec![]
    );
}

#[test]
fn ref_problems_carry_their_reasons() {
    let mut r = route("reviews", "1", 1, "reviews", None);
    r["spec"]["rules"] = json!([{"backendRefs": [
        {"name": "reviews", "port": 9080, "namespace": "other"},
        {"group": "example.com", "kind": "Bucket", "name": "b"}
    ]}]);
    let writes = plan(&input(&[service("reviews"), r]), &Sent::default(), fixed());
    let resolved = &writes[0].status["parents"][0]["conditions"][1];
    assert_eq!(resolved["status"], "False");
    assert_eq!(resolved["reason"], "RefNotPermitted");
    assert_eq!(
        resolved["message"],
        "backendRef other/reviews is in another namespace (ReferenceGrant is not supported); backendRef b is not a Service"
    );
}

#[test]
fn ten_thousand_routes_with_one_change_plan_one_write() {
    let mut objects = vec![service("reviews")];
    for i in 0..10_000 {
        let mut r = route(&format!("r{i}"), "1", 1, "reviews", None);
        r["spec"]["parentRefs"] =
            json!([{"group": "", "kind": "Service", "name": "reviews", "port": 9080}]);
        objects.push(r);
    }
    let first = plan(&input(&objects), &Sent::default(), fixed());
    assert_eq!(first.len(), 10_000);
    // Every route now carries its status; one of them changes generation.
    for (object, write) in objects[1..].iter_mut().zip(&first) {
        object["status"] = write.status.clone();
    }
    objects[4242]["metadata"]["generation"] = json!(2);
    let writes = plan(&input(&objects), &Sent::default(), fixed());
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].name, "r4241");
    assert_eq!(
        writes[0].status["parents"][0]["conditions"][0]["observedGeneration"],
        2
    );
}

#[test]
fn objects_that_are_not_from_the_api_server_get_no_status() {
    // The file layer's objects carry no resourceVersion.
    let mut r = route("reviews", "1", 1, "ghost", None);
    r["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let consumer = json!({
        "apiVersion": "remora.dev/v1alpha1", "kind": "Consumer",
        "metadata": {"name": "alice", "namespace": "shop"}, "spec": {}
    });
    let writes = plan(
        &input(&[service("reviews"), r, consumer]),
        &Sent::default(),
        fixed(),
    );
    assert_eq!(writes, vec![]);
}

#[test]
fn long_messages_are_cut_on_a_character_boundary() {
    let message = "é".repeat(600);
    assert_eq!(cut(message).len(), 1024);
    assert_eq!(cut("short".into()), "short");
}

#[test]
fn what_was_sent_is_forgotten_with_its_object() {
    let writes = plan(
        &input(&[
            service("reviews"),
            route("a", "1", 1, "reviews", None),
            route("b", "1", 1, "reviews", None),
        ]),
        &Sent::default(),
        fixed(),
    );
    let mut sent = Sent::default();
    for w in &writes {
        sent.record(w, Some("2".into()));
    }
    assert_eq!(sent.entries.len(), 2);
    sent.prune(&input(&[service("reviews"), route("b", "2", 1, "reviews", None)]).store);
    let left: Vec<_> = sent.entries.keys().cloned().collect();
    assert_eq!(left, vec![("HTTPRoute", "shop/b".to_owned())]);
}

#[test]
fn a_grpc_route_gets_the_same_parent_status_as_an_http_route() {
    let mut g = route("reviews-grpc", "4", 2, "ghost", None);
    g["kind"] = json!("GRPCRoute");
    g["spec"]["parentRefs"] =
        json!([{"group": "", "kind": "Service", "name": "reviews", "port": 9080}]);
    let writes = plan(&input(&[service("reviews"), g]), &Sent::default(), fixed());
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].kind.kind, "GRPCRoute");
    assert_eq!(
        (writes[0].namespace.as_str(), writes[0].name.as_str()),
        ("shop", "reviews-grpc")
    );
    assert_eq!(writes[0].resource_version.as_deref(), Some("4"));
    assert_eq!(
        writes[0].status,
        json!({"parents": [ours(2, ACCEPTED, GHOST)]})
    );
}
