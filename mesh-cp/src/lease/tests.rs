//! Leader election against a mock API server replaying a kube-apiserver's
//! Lease answers (GET 404 then POST 201, PUT 200 and 409 Conflict), on
//! paused time so every renewal lands at an exact instant.

use serde_json::{json, Value};

use super::*;
use remora_injector::kube_mock::{
    self as mock_api, failure, internal_error, next, respond, ApiHandle,
};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/remora-system/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/remora-system/leases/remora-cp";
const NOW: &str = "2026-12-02T13:00:00.000000Z";

fn fixed() -> Timestamp {
    "2026-12-02T13:00:00Z".parse().unwrap()
}

fn settings(identity: &str) -> Settings {
    Settings {
        name: "remora-cp".into(),
        namespace: "remora-system".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(15),
        renew_interval: Duration::from_secs(5),
    }
}

struct Candidate {
    handle: ApiHandle,
    leader: watch::Receiver<bool>,
    gauge: IntGauge,
    drain: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(identity: &str) -> Candidate {
    let (client, handle) = mock_api::client();
    let gauge = IntGauge::new("remora_cp_leader", "test").unwrap();
    let (drain, drain_rx) = watch::channel(false);
    let (leader, task) = Elector::new(client, settings(identity))
        .with_clock(fixed)
        .spawn(gauge.clone(), drain_rx);
    Candidate {
        handle,
        leader,
        gauge,
        drain,
        task,
    }
}

/// A Lease as the API server returns it.
fn lease(rv: &str, spec: Value) -> Value {
    json!({
        "kind": "Lease",
        "apiVersion": "coordination.k8s.io/v1",
        "metadata": {
            "name": "remora-cp",
            "namespace": "remora-system",
            "uid": "3f1c7a52-9d0e-4b8a-a6f2-1e5d7c9b0a43",
            "resourceVersion": rv,
            "creationTimestamp": "2026-12-02T12:00:00Z",
            "managedFields": [{
                "manager": "remora-cp",
                "operation": "Update",
                "apiVersion": "coordination.k8s.io/v1",
                "time": "2026-12-02T12:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:acquireTime": {}, "f:holderIdentity": {}, "f:leaseDurationSeconds": {}, "f:leaseTransitions": {}, "f:renewTime": {}}}
            }]
        },
        "spec": spec,
    })
}

fn held_by(holder: &str, transitions: i32) -> Value {
    json!({
        "holderIdentity": holder,
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-02T12:00:00.000000Z",
        "renewTime": "2026-12-02T12:59:58.250000Z",
        "leaseTransitions": transitions,
    })
}

/// The body of a write, echoed as the API server stores it with `rv`.
fn stored(body: &Value, rv: &str) -> Value {
    let mut out = body.clone();
    out["metadata"]["resourceVersion"] = json!(rv);
    out["metadata"]["uid"] = json!("3f1c7a52-9d0e-4b8a-a6f2-1e5d7c9b0a43");
    out["metadata"]["creationTimestamp"] = json!("2026-12-02T12:00:00Z");
    out
}

fn conflict() -> Value {
    failure(
        409,
        "Conflict",
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"remora-cp\": the object has been modified; please apply your changes to the latest version and try again",
        "coordination.k8s.io",
        "leases",
        "remora-cp",
    )
}

fn not_found() -> Value {
    failure(
        404,
        "NotFound",
        "leases.coordination.k8s.io \"remora-cp\" not found",
        "coordination.k8s.io",
        "leases",
        "remora-cp",
    )
}

/// Answers a GET of the Lease, after checking it is one.
async fn get(handle: &mut ApiHandle, code: u16, body: Value) {
    let (req, send) = next(handle).await;
    assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", LEASE));
    respond(send, code, body);
}

#[tokio::test(start_paused = true)]
async fn a_leader_acquires_an_absent_lease_renews_it_and_releases_it_on_drain() {
    let mut c = candidate("remora-cp-0");
    let start = Instant::now();
    get(&mut c.handle, 404, not_found()).await;
    let (req, send) = next(&mut c.handle).await;
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", LEASES));
    assert_eq!(
        req.body,
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "remora-cp", "namespace": "remora-system"},
            "spec": {
                "acquireTime": NOW,
                "holderIdentity": "remora-cp-0",
                "leaseDurationSeconds": 15,
                "leaseTransitions": 0,
                "renewTime": NOW,
            }
        })
    );
    respond(send, 201, stored(&req.body, "501"));
    c.leader.wait_for(|l| *l).await.unwrap();
    assert_eq!(c.gauge.get(), 1);

    // The renewal, one interval later, replaces the Lease read at 501.
    let (req, send) = next(&mut c.handle).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", LEASE));
    let mut current = lease("501", held_by("remora-cp-0", 0));
    current["spec"]["renewTime"] = json!("2026-12-02T12:59:59.000000Z");
    respond(send, 200, current);
    let (req, send) = next(&mut c.handle).await;
    assert_eq!((req.method.as_str(), req.path.as_str()), ("PUT", LEASE));
    assert_eq!(req.body["metadata"]["resourceVersion"], "501");
    assert_eq!(
        req.body["spec"],
        json!({
            "acquireTime": "2026-12-02T12:00:00.000000Z",
            "holderIdentity": "remora-cp-0",
            "leaseDurationSeconds": 15,
            "leaseTransitions": 0,
            "renewTime": NOW,
        })
    );
    respond(send, 200, stored(&req.body, "502"));
    tokio::task::yield_now().await;
    assert!(*c.leader.borrow());

    // Drain: leadership ends first, then the Lease is given up at 502.
    c.drain.send(true).unwrap();
    let (req, send) = next(&mut c.handle).await;
    assert!(!*c.leader.borrow());
    assert_eq!(c.gauge.get(), 0);
    assert_eq!((req.method.as_str(), req.path.as_str()), ("PUT", LEASE));
    assert_eq!(req.body["metadata"]["resourceVersion"], "502");
    assert_eq!(
        req.body["spec"],
        json!({
            "acquireTime": "2026-12-02T12:00:00.000000Z",
            "leaseDurationSeconds": 1,
            "leaseTransitions": 0,
            "renewTime": NOW,
        })
    );
    respond(send, 200, stored(&req.body, "503"));
    c.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_second_candidate_waits_while_the_lease_is_fresh_and_takes_it_over_once_it_lapsed() {
    let mut c = candidate("remora-cp-1");
    let start = Instant::now();
    // remora-cp-0 holds it and stops renewing: the record stays at 700.
    for second in [0, 5, 10] {
        let (req, send) = next(&mut c.handle).await;
        assert_eq!(start.elapsed(), Duration::from_secs(second));
        assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", LEASE));
        respond(send, 200, lease("700", held_by("remora-cp-0", 2)));
        tokio::task::yield_now().await;
        assert!(!*c.leader.borrow(), "leading at {second}s");
        assert_eq!(c.gauge.get(), 0);
    }
    // 15 s after the record was first seen unchanged: take it over.
    get(&mut c.handle, 200, lease("700", held_by("remora-cp-0", 2))).await;
    assert_eq!(start.elapsed(), Duration::from_secs(15));
    let (req, send) = next(&mut c.handle).await;
    assert_eq!((req.method.as_str(), req.path.as_str()), ("PUT", LEASE));
    assert_eq!(req.body["metadata"]["resourceVersion"], "700");
    assert_eq!(
        req.body["spec"],
        json!({
            "acquireTime": NOW,
            "holderIdentity": "remora-cp-1",
            "leaseDurationSeconds": 15,
            "leaseTransitions": 3,
            "renewTime": NOW,
        })
    );
    respond(send, 200, stored(&req.body, "701"));
    c.leader.wait_for(|l| *l).await.unwrap();
    assert_eq!(c.gauge.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_renewing_holder_keeps_others_out() {
    let mut c = candidate("remora-cp-1");
    // The holder renews every 5 s: each read shows a new record.
    for (i, rv) in ["700", "701", "702", "703", "704", "705"]
        .iter()
        .enumerate()
    {
        let mut spec = held_by("remora-cp-0", 0);
        spec["renewTime"] = json!(format!("2026-12-02T13:00:{:02}.000000Z", i * 5));
        get(&mut c.handle, 200, lease(rv, spec)).await;
        tokio::task::yield_now().await;
        assert!(!*c.leader.borrow());
    }
    // 30 s passed with no write: the next request is a read again.
    get(&mut c.handle, 200, lease("705", held_by("remora-cp-0", 0))).await;
}

#[tokio::test(start_paused = true)]
async fn a_conflict_loses_the_race() {
    let mut c = candidate("remora-cp-1");
    // Released (no holder): free to take at once, but another replica
    // replaces it first and the API server answers 409.
    let released = json!({"leaseDurationSeconds": 1, "renewTime": "2026-12-02T12:59:59.000000Z", "leaseTransitions": 4});
    get(&mut c.handle, 200, lease("800", released)).await;
    let (req, send) = next(&mut c.handle).await;
    assert_eq!((req.method.as_str(), req.path.as_str()), ("PUT", LEASE));
    assert_eq!(req.body["metadata"]["resourceVersion"], "800");
    assert_eq!(req.body["spec"]["holderIdentity"], "remora-cp-1");
    assert_eq!(req.body["spec"]["leaseTransitions"], 5);
    respond(send, 409, conflict());
    // The winner's fresh record: no write, still not leading.
    get(&mut c.handle, 200, lease("801", held_by("remora-cp-2", 5))).await;
    tokio::task::yield_now().await;
    assert!(!*c.leader.borrow());
    assert_eq!(c.gauge.get(), 0);
    get(&mut c.handle, 200, lease("801", held_by("remora-cp-2", 5))).await;
}

#[tokio::test(start_paused = true)]
async fn a_create_race_lost_to_another_replica_is_not_leadership() {
    let mut c = candidate("remora-cp-1");
    get(&mut c.handle, 404, not_found()).await;
    let (req, send) = next(&mut c.handle).await;
    assert_eq!(req.method, "POST");
    respond(
        send,
        409,
        failure(
            409,
            "AlreadyExists",
            "leases.coordination.k8s.io \"remora-cp\" already exists",
            "coordination.k8s.io",
            "leases",
            "remora-cp",
        ),
    );
    get(&mut c.handle, 200, lease("900", held_by("remora-cp-0", 0))).await;
    tokio::task::yield_now().await;
    assert!(!*c.leader.borrow());
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_fail_steps_down_when_its_lease_would_lapse() {
    let mut c = candidate("remora-cp-0");
    let start = Instant::now();
    get(&mut c.handle, 404, not_found()).await;
    let (req, send) = next(&mut c.handle).await;
    respond(send, 201, stored(&req.body, "501"));
    c.leader.wait_for(|l| *l).await.unwrap();
    // From now on the API server fails every request.
    let mut handle = c.handle;
    let answering = tokio::spawn(async move {
        loop {
            let (_, send) = next(&mut handle).await;
            respond(send, 500, internal_error());
        }
    });
    c.leader.wait_for(|l| !*l).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(15));
    assert_eq!(c.gauge.get(), 0);
    answering.abort();
}

#[test]
fn settings_have_ranges() {
    let mut s = settings("remora-cp-0");
    assert_eq!(s.check(), Ok(()));
    s.lease_duration = Duration::from_secs(4);
    assert_eq!(
        s.check().unwrap_err().to_string(),
        "--lease-duration 4s is outside 5s..=5m"
    );
    s.lease_duration = Duration::from_secs(301);
    assert_eq!(
        s.check(),
        Err(SettingsError::Duration(Duration::from_secs(301)))
    );
    s.lease_duration = Duration::from_secs(15);
    s.renew_interval = Duration::from_secs(8);
    assert_eq!(
        s.check().unwrap_err().to_string(),
        "--lease-renew-interval 8s must be 1s to half of --lease-duration (15s)"
    );
    s.renew_interval = Duration::from_millis(500);
    assert!(matches!(s.check(), Err(SettingsError::Renew { .. })));
    s.renew_interval = Duration::from_secs(5);
    for bad in ["", "two words", &"a".repeat(254)] {
        s.identity = bad.to_owned();
        assert_eq!(s.check(), Err(SettingsError::Identity(bad.to_owned())));
    }
    s.identity = "remora-cp-0".into();
    s.lease_duration = Duration::from_millis(15_500);
    assert_eq!(s.duration_seconds(), 16);
}

/// A Lease store with the API server's rules: POST creates (409
/// AlreadyExists if present), PUT replaces only at the current
/// resourceVersion (else 409 Conflict), every write bumps it.
fn serve_leases(mut handle: ApiHandle, lease: std::sync::Arc<std::sync::Mutex<Option<Value>>>) {
    tokio::spawn(async move {
        loop {
            let (req, send) = next(&mut handle).await;
            let (code, body) = {
                let mut current = lease.lock().unwrap();
                let bump = |body: &Value, rv: u64| stored(body, &rv.to_string());
                let rv_of = |v: &Value| {
                    v["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                };
                match (req.method.as_str(), current.as_ref()) {
                    ("GET", None) => (404, not_found()),
                    ("GET", Some(l)) => (200, l.clone()),
                    ("POST", None) => {
                        *current = Some(bump(&req.body, 1));
                        (201, current.clone().unwrap())
                    }
                    ("POST", Some(_)) => (
                        409,
                        failure(
                            409,
                            "AlreadyExists",
                            "exists",
                            "coordination.k8s.io",
                            "leases",
                            "remora-cp",
                        ),
                    ),
                    ("PUT", Some(l))
                        if req.body["metadata"]["resourceVersion"]
                            == l["metadata"]["resourceVersion"] =>
                    {
                        let next = rv_of(l) + 1;
                        *current = Some(bump(&req.body, next));
                        (200, current.clone().unwrap())
                    }
                    ("PUT", _) => (409, conflict()),
                    other => panic!("unexpected {other:?}"),
                }
            };
            respond(send, code, body);
        }
    });
}

#[tokio::test(start_paused = true)]
async fn two_replicas_never_lead_at_once_and_a_drained_leader_hands_over_within_one_interval() {
    let lease = std::sync::Arc::new(std::sync::Mutex::new(None));
    let mut a = candidate("remora-cp-0");
    let mut b = candidate("remora-cp-1");
    serve_leases(
        std::mem::replace(&mut a.handle, mock_api::client().1),
        lease.clone(),
    );
    serve_leases(
        std::mem::replace(&mut b.handle, mock_api::client().1),
        lease.clone(),
    );
    // For two minutes, sampled every 100 ms: exactly one leads, always
    // the same one (the holder renews in time).
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = *a.leader.borrow();
    for _ in 0..1200 {
        let (la, lb) = (*a.leader.borrow(), *b.leader.borrow());
        assert!(la != lb, "a={la} b={lb} at {:?}", start.elapsed());
        assert_eq!(la, first, "leadership moved at {:?}", start.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leader, follower) = if first { (a, b) } else { (b, a) };
    let holder = if first { "remora-cp-0" } else { "remora-cp-1" };
    assert_eq!(
        lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"],
        holder
    );
    // The leader drains: it releases, and the other leads at its next look.
    let drained = Instant::now();
    leader.drain.send(true).unwrap();
    leader.task.await.unwrap();
    assert!(!*leader.leader.borrow());
    let mut follower_leader = follower.leader.clone();
    follower_leader.wait_for(|l| *l).await.unwrap();
    assert!(
        drained.elapsed() <= Duration::from_secs(5),
        "{:?}",
        drained.elapsed()
    );
    assert_eq!(follower.gauge.get(), 1);
    assert_eq!(
        lease.lock().unwrap().as_ref().unwrap()["spec"]["leaseTransitions"],
        1
    );
}
