//! The Admin API in process (`oneshot`): the token, every refusal with its
//! status and reason, and durability across a restart from the directory.

use axum::http::Request as HttpRequest;
use tower::ServiceExt;

use super::*;

const TOKEN: &str = "s3cret-admin-token-0123";

const SVC: &str = r#"{"apiVersion": "v1", "kind": "Service",
  "metadata": {"name": "web", "namespace": "shop"},
  "spec": {"clusterIPs": ["10.96.0.10"], "ports": [{"name": "http", "port": 80}]}}"#;

struct Api {
    dir: tempfile::TempDir,
    api: AdminApi,
    requests: IntCounterVec,
}

fn counter() -> IntCounterVec {
    IntCounterVec::new(prometheus::Opts::new("t", "t"), &["method", "code"]).unwrap()
}

fn open(dir: &Path, requests: &IntCounterVec) -> AdminApi {
    AdminApi::open(
        dir.to_owned(),
        Token::new(&format!("  {TOKEN}\n"), Path::new("t")).unwrap(),
        Options::default(),
        requests.clone(),
    )
    .unwrap()
}

impl Api {
    fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let requests = counter();
        let api = open(dir.path(), &requests);
        Api { dir, api, requests }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let mut req = HttpRequest::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = self
            .api
            .router()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{status} not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, value)
    }

    async fn put(&self, path: &str, body: &str) -> (u16, Value) {
        self.call("PUT", path, Some(TOKEN), body).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, Some(TOKEN), "").await
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn message(body: &Value) -> &str {
    body["error_msg"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn no_token_or_a_wrong_one_is_401_and_x_api_key_works() {
    let api = Api::new();
    let (status, body) = api.call("GET", "/admin/v1/services", None, "").await;
    assert_eq!(
        (status, message(&body)),
        (
            401,
            "missing or wrong admin token: send Authorization: Bearer <token>"
        )
    );
    let (status, _) = api
        .call(
            "PUT",
            "/admin/v1/services/shop/web",
            Some("s3cret-admin-token-0124"),
            SVC,
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(api.files(), Vec::<String>::new(), "nothing written");
    let resp = api
        .api
        .router()
        .oneshot(
            HttpRequest::get("/admin/v1/services")
                .header("x-api-key", TOKEN)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(api.requests.with_label_values(&["GET", "401"]).get(), 1);
    assert_eq!(api.requests.with_label_values(&["PUT", "401"]).get(), 1);
    assert_eq!(api.requests.with_label_values(&["GET", "200"]).get(), 1);
}

#[tokio::test]
async fn put_creates_then_replaces_get_lists_and_delete_removes() {
    let api = Api::new();
    let (status, body) = api.put("/admin/v1/services/shop/web", SVC).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["key"], "services/shop/web");
    assert_eq!(body["problems"], json!([]));
    assert_eq!(api.files(), ["~admin.services.shop.web.yaml"]);
    // The file source reads what the API wrote, as one of its files.
    let loaded = load_dir(api.dir.path(), &DirLimits::default()).unwrap();
    assert_eq!(
        loaded.store.services.keys().collect::<Vec<_>>(),
        ["shop/web"]
    );
    assert_eq!(loaded.skipped, []);

    // YAML, with kind, apiVersion and metadata filled in from the path.
    let (status, body) = api
        .put(
            "/admin/v1/services/shop/web",
            "spec:\n  clusterIPs: [10.96.0.11]\n  ports: [{name: http, port: 80}]\n",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"]["apiVersion"], "v1");
    assert_eq!(body["value"]["kind"], "Service");
    assert_eq!(
        body["value"]["metadata"],
        json!({"name": "web", "namespace": "shop"})
    );

    let (status, body) = api.get("/admin/v1/services/shop/web").await;
    assert_eq!(status, 200);
    assert_eq!(body["value"]["spec"]["clusterIPs"], json!(["10.96.0.11"]));
    api.put("/admin/v1/namespaces/shop", "{}").await;
    let (_, all) = api.get("/admin/v1/services").await;
    let (_, in_shop) = api.get("/admin/v1/services/shop").await;
    let (_, elsewhere) = api.get("/admin/v1/services/other").await;
    assert_eq!(
        (
            all["total"].as_u64(),
            in_shop["total"].as_u64(),
            elsewhere["total"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(all["list"][0]["key"], "services/shop/web");
    let (status, ns) = api.get("/admin/v1/namespaces/shop").await;
    assert_eq!((status, &ns["value"]["kind"]), (200, &json!("Namespace")));

    let (status, body) = api
        .call("DELETE", "/admin/v1/services/shop/web", Some(TOKEN), "")
        .await;
    assert_eq!(
        (status, &body["deleted"]),
        (200, &json!("services/shop/web"))
    );
    assert_eq!(api.files(), ["~admin.namespaces.shop.yaml"]);
    let (status, body) = api.get("/admin/v1/services/shop/web").await;
    assert_eq!(
        (status, message(&body)),
        (404, "services/shop/web not found")
    );
    let (status, body) = api
        .call("DELETE", "/admin/v1/services/shop/web", Some(TOKEN), "")
        .await;
    assert_eq!(
        (status, message(&body)),
        (404, "services/shop/web not found")
    );
    assert_eq!(api.requests.with_label_values(&["PUT", "201"]).get(), 2);
    assert_eq!(api.requests.with_label_values(&["DELETE", "404"]).get(), 1);
}

#[tokio::test]
async fn an_invalid_object_is_400_with_the_field_and_nothing_is_written() {
    let api = Api::new();
    let (status, body) = api
        .put(
            "/admin/v1/httproutes/shop/r",
            r#"{"spec": {"rules": [{"matches": [{"path": {"type": "Glob"}}]}]}}"#,
        )
        .await;
    assert_eq!(status, 400);
    let msg = message(&body);
    assert!(
        msg.starts_with("HTTPRoute r: spec.rules[0].matches[0].path.type: unknown variant `Glob`"),
        "{msg}"
    );
    // A plugin config the proxy's compiler refuses.
    let (status, body) = api
        .put(
            "/admin/v1/pluginpolicies/shop/limits",
            r#"{"spec": {"targetRefs": [{"kind": "Service", "name": "web"}],
                "plugins": {"limit-count": {"count": 0, "time_window": 60}}}}"#,
        )
        .await;
    assert_eq!(
        (status, message(&body)),
        (
            400,
            "PluginPolicy shop/limits: Accepted=False Invalid: spec.plugins.limit-count.count: \
             plugin limit-count: 0 is out of range: 1 to 1000000000"
        )
    );
    let (status, body) = api.put("/admin/v1/services/shop/web", "[1, 2]").await;
    assert_eq!(
        (status, message(&body)),
        (400, "the body must be one object")
    );
    let (status, body) = api
        .put("/admin/v1/services/shop/web", "key: [unclosed")
        .await;
    assert_eq!(status, 400);
    assert!(
        message(&body).starts_with("the body is neither JSON"),
        "{body}"
    );
    assert_eq!(api.files(), Vec::<String>::new());
}

#[tokio::test]
async fn a_reference_not_there_yet_is_accepted_with_its_problem() {
    let api = Api::new();
    let (status, body) = api
        .put(
            "/admin/v1/httproutes/shop/canary",
            r#"{"spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}]}}"#,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["problems"],
        json!([{"condition": "Accepted", "status": "False", "reason": "NoMatchingParent",
                "message": "parentRef Service shop/web does not exist"}])
    );
}

#[tokio::test]
async fn a_name_or_namespace_other_than_the_paths_is_400() {
    let api = Api::new();
    let (status, body) = api.put("/admin/v1/services/shop/api", SVC).await;
    assert_eq!(
        (status, message(&body)),
        (400, "metadata.name is \"web\", but the path says \"api\"")
    );
    let (status, body) = api.put("/admin/v1/services/prod/web", SVC).await;
    assert_eq!(
        (status, message(&body)),
        (
            400,
            "metadata.namespace is \"shop\", but the path says \"prod\""
        )
    );
    let (status, body) = api.put("/admin/v1/pods/shop/web", SVC).await;
    assert_eq!(
        (status, message(&body)),
        (400, "kind is \"Service\", but the path says \"Pod\"")
    );
    let (status, body) = api
        .put(
            "/admin/v1/namespaces/shop",
            r#"{"metadata": {"namespace": "x"}}"#,
        )
        .await;
    assert_eq!(
        (status, message(&body)),
        (400, "metadata.namespace: Namespace is not namespaced")
    );
    assert_eq!(api.files(), Vec::<String>::new());
}

#[tokio::test]
async fn traversal_and_bad_names_are_400_and_an_unknown_kind_is_404() {
    let api = Api::new();
    for path in [
        "/admin/v1/services/shop/..",
        "/admin/v1/services/shop/%2E%2E%2Fetc",
        "/admin/v1/services/..%2F..%2Ftmp/web",
        "/admin/v1/services/shop/Web",
        "/admin/v1/services/shop/a..b",
        "/admin/v1/namespaces/.hidden",
    ] {
        let (status, body) = api.put(path, "{}").await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            message(&body).contains("is not a DNS-1123 name"),
            "{path}: {body}"
        );
    }
    let (status, body) = api.get("/admin/v1/widgets/shop/x").await;
    assert_eq!(status, 404);
    assert!(
        message(&body).starts_with("unknown kind \"widgets\"; known: namespaces, services,"),
        "{body}"
    );
    let (status, _) = api.get("/admin/v1/serviceaccounts/shop/x").await;
    assert_eq!(status, 404);
    let (status, _) = api.get("/etc/passwd").await;
    assert_eq!(status, 404);
    let (status, _) = api
        .call("POST", "/admin/v1/services", Some(TOKEN), "{}")
        .await;
    assert_eq!(status, 405);
    assert_eq!(api.files(), Vec::<String>::new());
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let api = Api::new();
    let big = format!(
        r#"{{"metadata": {{"annotations": {{"a": "{}"}}}}}}"#,
        "x".repeat(MAX_BODY)
    );
    let (status, body) = api.put("/admin/v1/services/shop/web", &big).await;
    assert_eq!(
        (status, message(&body)),
        (413, "the body is over the limit of 1048576 bytes")
    );
    // Without a length up front (chunked): cut off at the limit all the same.
    let chunks = futures_chunks(&big);
    let resp = api
        .api
        .router()
        .oneshot(
            HttpRequest::put("/admin/v1/services/shop/web")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(chunks)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(api.files(), Vec::<String>::new());
}

/// A body of unknown length, in 64 KiB chunks.
fn futures_chunks(text: &str) -> Body {
    let chunks: Vec<Result<axum::body::Bytes, std::io::Error>> = text
        .as_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(tokio_stream::iter(chunks))
}

#[tokio::test]
async fn what_was_written_is_there_after_a_restart_from_the_directory() {
    let api = Api::new();
    assert_eq!(api.put("/admin/v1/services/shop/web", SVC).await.0, 201);
    assert_eq!(
        api.put(
            "/admin/v1/secrets/shop/key",
            r#"{"data": {"key": "c2VjcmV0"}}"#
        )
        .await
        .0,
        201
    );
    // A stale temp file from a write cut short, and a hand-written file.
    std::fs::write(api.dir.path().join(".~admin.services.shop.x.yaml.tmp"), "{").unwrap();
    std::fs::write(api.dir.path().join("mine.yaml"), SVC.replace("web", "api")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(api.dir.path().join("~admin.secrets.shop.key.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let Api {
        dir,
        api: old,
        requests,
    } = api;
    drop(old);

    let again = Api {
        api: open(dir.path(), &requests),
        dir,
        requests,
    };
    let (status, body) = again.get("/admin/v1/services/shop/web").await;
    assert_eq!(status, 200);
    assert_eq!(body["value"]["spec"]["clusterIPs"], json!(["10.96.0.10"]));
    let (_, list) = again.get("/admin/v1/services").await;
    assert_eq!(list["total"], 1, "only the API's own objects: {list}");
    let (status, _) = again.get("/admin/v1/secrets/shop/key").await;
    assert_eq!(status, 200);
    assert_eq!(
        again.files(),
        [
            "mine.yaml",
            "~admin.secrets.shop.key.yaml",
            "~admin.services.shop.web.yaml"
        ]
    );
}

#[test]
fn a_short_token_is_refused() {
    let err = Token::new(" short \n", Path::new("/etc/token")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the admin token file /etc/token holds 5 characters; the Admin API needs a token of at \
         least 16 (e.g. `head -c 32 /dev/urandom | base64`)"
    );
    assert!(Token::new("", Path::new("t")).is_err());
    let t = Token::new(TOKEN, Path::new("t")).unwrap();
    assert!(t.matches(TOKEN));
    assert!(!t.matches(&TOKEN[1..]));
    assert!(!t.matches(""));
}

#[tokio::test]
async fn a_slow_client_is_cut_off_and_a_real_request_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let api = open(dir.path(), &counter());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, drain) = watch::channel(false);
    let limits = Listener {
        header_timeout: Duration::from_millis(300),
        connection_max: Duration::from_secs(2),
        max_connections: 2,
    };
    tokio::spawn(serve(listener, api.router(), limits, drain));
    let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
    ok.write_all(b"GET /admin/v1/services HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    ok.read_to_string(&mut reply).await.unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{reply}"
    );
    // A head that never ends: closed after the header timeout.
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /admin/v1/services HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf))
        .await
        .expect("the slow client was cut off")
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(String::from_utf8_lossy(&buf), "");
}

#[test]
fn every_kind_the_store_keeps_is_served_with_its_api_version() {
    let served: Vec<(&str, &str, bool)> = KINDS
        .iter()
        .map(|k| (k.api_version, k.kind, k.namespaced))
        .collect();
    for kind in crate::translate::Kind::ALL {
        let (group, name) = kind.group_kind();
        let found = served
            .iter()
            .find(|(_, k, _)| *k == name)
            .unwrap_or_else(|| panic!("{name} is not served"));
        assert_eq!(
            crate::translate::Kind::of(found.0, found.1),
            Some(kind),
            "{name} in group {group:?}"
        );
        assert_eq!(found.2, !kind.cluster_scoped(), "{name}");
    }
    assert_eq!(served.len(), crate::translate::Kind::ALL.len());
}
