//! A mock Kubernetes API server for tests (remora-injector's and, with the
//! `kube-mock` feature, remora-cp's): a `tower_test` pair behind a real
//! `kube::Client`, answering with the JSON a kube-apiserver (v1.35)
//! writes, and showing each request as the server would receive it.
//! A request the mock cannot read, or an answer it cannot build, fails the
//! test that made it (`expect`).

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle, SendResponse};

pub type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// A client of the mock, and the handle that sees its requests.
pub fn client() -> (kube::Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// One request as the API server got it.
#[derive(Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// The JSON body; `Null` when there is none.
    pub body: Value,
}

/// The next request, and where to send its answer.
pub async fn next(handle: &mut ApiHandle) -> (Received, SendResponse<Response<Body>>) {
    let (request, send) = handle.next_request().await.expect("a request");
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().expect("an ASCII content type").to_owned())
        .unwrap_or_default();
    let bytes = request
        .into_body()
        .collect()
        .await
        .expect("the request body")
        .to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON request body")
    };
    (
        Received {
            method,
            path,
            query,
            content_type,
            body,
        },
        send,
    )
}

/// Answers with `code` and `body`.
pub fn respond(send: SendResponse<Response<Body>>, code: u16, body: Value) {
    let response = Response::builder()
        .status(StatusCode::from_u16(code).expect("an HTTP status code"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
        .expect("a response");
    send.send_response(response);
}

/// A `Status` failure as the API server writes it.
pub fn failure(
    code: u16,
    reason: &str,
    message: &str,
    group: &str,
    kind: &str,
    name: &str,
) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": name, "group": group, "kind": kind},
        "code": code,
    })
}

/// The 500 an API server answers when etcd is slow.
pub fn internal_error() -> Value {
    failure(
        500,
        "InternalError",
        "etcdserver: request timed out",
        "",
        "",
        "",
    )
}
