//! The TokenReview authenticator against a mock API server (a
//! `tower_test` pair) that replays TokenReview answers as a real
//! kube-apiserver (v1.35) writes them.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

use super::*;

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn reviewer(timeout: Duration) -> (TokenReviewer, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (
        TokenReviewer::with_timeout(client, "remora", "cluster.local", timeout),
        handle,
    )
}

/// The review the API server receives back, with `status` filled in.
fn review(status: Value) -> Value {
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {
            "creationTimestamp": null,
            "managedFields": [{
                "manager": "remora-cp",
                "operation": "Update",
                "apiVersion": "authentication.k8s.io/v1",
                "time": "2026-12-02T02:40:11Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:audiences": {}, "f:token": {}}}
            }]
        },
        "spec": {"token": "<redacted>", "audiences": ["remora"]},
        "status": status,
    })
}

fn allowed(username: &str, audiences: Value) -> Value {
    review(json!({
        "authenticated": true,
        "user": {
            "username": username,
            "uid": "5a3e0c2b-8f0e-4d6a-9b0e-3c1f7a2d9e41",
            "groups": [
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ],
            "extra": {
                "authentication.kubernetes.io/credential-id": ["JTI=2c7f9d3e-6a1b-4f8e-9d2c-7b5a3e1f0c9d"],
                "authentication.kubernetes.io/node-name": ["kind-worker"],
                "authentication.kubernetes.io/node-uid": ["b8e1c7a2-3d4f-4e5a-8b6c-9d0e1f2a3b4c"],
                "authentication.kubernetes.io/pod-name": ["web-7d4b9c8f6-x2k9p"],
                "authentication.kubernetes.io/pod-uid": ["e2f3a4b5-c6d7-4e8f-9a0b-1c2d3e4f5a6b"]
            }
        },
        "audiences": audiences,
    }))
}

/// Answers the next request with `status` and `body`, after checking it
/// is the TokenReview we mean to send.
async fn answer(handle: &mut ApiHandle, token: &str, status: StatusCode, body: Value) {
    let (request, send) = handle.next_request().await.expect("a TokenReview request");
    assert_eq!(request.method(), Method::POST);
    assert_eq!(
        request.uri().path(),
        "/apis/authentication.k8s.io/v1/tokenreviews"
    );
    let sent = request.into_body().collect().await.unwrap().to_bytes();
    let sent: Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(
        sent["spec"],
        json!({"token": token, "audiences": ["remora"]})
    );
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    send.send_response(response);
}

async fn check(status: StatusCode, body: Value) -> Result<Identity, AuthError> {
    let (reviewer, mut handle) = reviewer(REVIEW_TIMEOUT);
    let (result, ()) = tokio::join!(
        reviewer.authenticate("tok"),
        answer(&mut handle, "tok", status, body)
    );
    result
}

#[tokio::test]
async fn an_authenticated_service_account_is_its_identity() {
    let body = allowed("system:serviceaccount:default:web", json!(["remora"]));
    let identity = check(StatusCode::CREATED, body).await.unwrap();
    assert_eq!(identity.uri(), "spiffe://cluster.local/ns/default/sa/web");
}

#[tokio::test]
async fn a_denied_token_is_unauthenticated_with_the_api_servers_words() {
    let body = review(json!({
        "user": {},
        "error": "[invalid bearer token, service account token has expired]"
    }));
    let err = check(StatusCode::CREATED, body).await.unwrap_err();
    assert!(matches!(err, AuthError::Denied(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the token was refused: [invalid bearer token, service account token has expired]"
    );
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let body = allowed(
        "system:serviceaccount:default:web",
        json!(["https://kubernetes.default.svc.cluster.local"]),
    );
    let err = check(StatusCode::CREATED, body).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the token was refused: the token is not for audience \"remora\" (the API server returned \
         [\"https://kubernetes.default.svc.cluster.local\"]); mount a projected token with that audience"
    );
    // An API server that is not audience-aware echoes none.
    let mut body = allowed("system:serviceaccount:default:web", json!([]));
    body["status"].as_object_mut().unwrap().remove("audiences");
    let err = check(StatusCode::CREATED, body).await.unwrap_err();
    assert!(matches!(err, AuthError::Denied(_)), "{err:?}");
}

#[tokio::test]
async fn a_user_that_is_not_a_service_account_is_refused() {
    for (username, want) in [
        (
            "kubernetes-admin",
            "the token belongs to \"kubernetes-admin\", not to a service account",
        ),
        (
            "system:node:kind-worker",
            "the token belongs to \"system:node:kind-worker\", not to a service account",
        ),
        (
            "system:serviceaccount:default",
            "the token belongs to \"system:serviceaccount:default\", not to a service account",
        ),
    ] {
        let err = check(StatusCode::CREATED, allowed(username, json!(["remora"])))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), format!("the token was refused: {want}"));
    }
    let err = check(
        StatusCode::CREATED,
        allowed("system:serviceaccount:Bad_NS:web", json!(["remora"])),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AuthError::Denied(_)), "{err:?}");
}

#[tokio::test]
async fn an_api_server_error_is_unavailable() {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Internal error occurred: etcdserver: request timed out",
        "reason": "InternalError",
        "details": {"causes": [{"message": "etcdserver: request timed out"}]},
        "code": 500
    });
    let err = check(StatusCode::INTERNAL_SERVER_ERROR, body)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string().contains(
            "the TokenReview failed with 500 InternalError: Internal error occurred: etcdserver: request timed out"
        ),
        "{err}"
    );
    // RBAC missing: the token may be fine; the control plane is not.
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:remora-system:remora-cp\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
        "reason": "Forbidden",
        "details": {"group": "authentication.k8s.io", "kind": "tokenreviews"},
        "code": 403
    });
    let err = check(StatusCode::FORBIDDEN, body).await.unwrap_err();
    assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn an_api_server_that_hangs_is_unavailable_in_bounded_time() {
    let (reviewer, mut handle) = reviewer(Duration::from_millis(300));
    let started = Instant::now();
    let hang = async {
        // Take the request and never answer it.
        let held = handle.next_request().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(held);
    };
    let result = tokio::select! {
        result = reviewer.authenticate("tok") => result,
        () = hang => panic!("the review outlived its timeout"),
    };
    let took = started.elapsed();
    let err = result.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the identity service could not check the token: the Kubernetes API server did not answer \
         the TokenReview within 300ms; retry later"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_proven_token_is_cached_and_a_denial_is_not() {
    let (reviewer, mut handle) = reviewer(REVIEW_TIMEOUT);
    // Denied, then allowed: the denial was not remembered.
    let denied = review(
        json!({"user": {}, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}),
    );
    let (first, ()) = tokio::join!(
        reviewer.authenticate("tok"),
        answer(&mut handle, "tok", StatusCode::CREATED, denied)
    );
    assert!(matches!(first, Err(AuthError::Denied(_))));
    let ok = allowed("system:serviceaccount:prod:db", json!(["remora"]));
    let (second, ()) = tokio::join!(
        reviewer.authenticate("tok"),
        answer(&mut handle, "tok", StatusCode::CREATED, ok)
    );
    assert_eq!(
        second.unwrap().uri(),
        "spiffe://cluster.local/ns/prod/sa/db"
    );
    // The third is answered from the cache: the mock would hang otherwise.
    handle.allow(0);
    let third = tokio::time::timeout(Duration::from_secs(1), reviewer.authenticate("tok"))
        .await
        .expect("answered from the cache");
    assert_eq!(third.unwrap().uri(), "spiffe://cluster.local/ns/prod/sa/db");
}

#[test]
fn the_cache_never_outlives_the_token() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let jwt = |claims: Value| {
        let enc = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
        };
        format!("{}.{}.c2ln", enc(&json!({"alg": "RS256"})), enc(&claims))
    };
    assert_eq!(
        cache_ttl(&jwt(json!({"exp": 1_800_000_020u64})), now),
        Duration::from_secs(20)
    );
    assert_eq!(
        cache_ttl(&jwt(json!({"exp": 1_800_003_600u64})), now),
        CACHE_TTL
    );
    assert_eq!(
        cache_ttl(&jwt(json!({"exp": 1_700_000_000u64})), now),
        Duration::ZERO
    );
    assert_eq!(cache_ttl(&jwt(json!({"sub": "x"})), now), CACHE_TTL);
    assert_eq!(cache_ttl("not-a-jwt", now), CACHE_TTL);
}
