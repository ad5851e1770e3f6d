//! The Admin API: REST list, get, put and delete of the objects the file
//! source reads, behind a bearer token, in the spirit of APISIX's Admin API
//! (docs/control-plane.md, "Admin API").
//!
//! This module owns the routes, the token check, validation before a write
//! (the object parses with `Store::insert`, and translating the source
//! directory with it in must not report a problem in the object itself),
//! and persistence: each object is one file `~admin.<plural>.[<ns>.]<name>.yaml`
//! in the `--source-dir` directory, written atomically (temp file, fsync,
//! rename, fsync of the directory) before the write is acknowledged. It
//! does not publish anything: the file source sees the file through inotify
//! and reloads, as it does for a hand-written file. So a restart loses
//! nothing, and the API's objects are the file source's like any other.
//!
//! The listener (`serve`, [`Listener`]) bounds connections, header and
//! connection time; handlers bound body size and time; writes are
//! serialized.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http_body_util::BodyExt;
use prometheus::IntCounterVec;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Mutex, Semaphore};

use crate::source_dir::{load_dir, DirLimits};
use crate::translate::{translate, Options};

/// The largest request body; a larger one is 413.
pub const MAX_BODY: usize = 1 << 20;
/// The shortest token the API starts with.
pub const MIN_TOKEN_LEN: usize = 16;
/// The longest token file read.
const MAX_TOKEN_FILE: u64 = 4096;
/// A client must send its body within this (its head: [`Listener`]).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The API's files in the source directory start with this; hand-written
/// files must not (they sort after every file whose name starts with an
/// ASCII letter or digit, so an object put through the API wins over a
/// hand-written one with the same name).
pub const FILE_PREFIX: &str = "~admin.";

/// A kind the API serves, by its URL plural.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    plural: &'static str,
    api_version: &'static str,
    kind: &'static str,
    namespaced: bool,
}

const fn kind(
    plural: &'static str,
    api_version: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Kind {
    Kind {
        plural,
        api_version,
        kind,
        namespaced,
    }
}

/// Every kind the store keeps (`translate::Kind::ALL`; a test holds the two
/// lists together).
const KINDS: &[Kind] = &[
    kind("namespaces", "v1", "Namespace", false),
    kind("services", "v1", "Service", true),
    kind("pods", "v1", "Pod", true),
    kind("secrets", "v1", "Secret", true),
    kind("serviceaccounts", "v1", "ServiceAccount", true),
    kind(
        "endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSlice",
        true,
    ),
    kind(
        "httproutes",
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        true,
    ),
    kind(
        "grpcroutes",
        "gateway.networking.k8s.io/v1",
        "GRPCRoute",
        true,
    ),
    kind("consumers", "remora.dev/v1alpha1", "Consumer", true),
    kind(
        "authorizationpolicies",
        "remora.dev/v1alpha1",
        "AuthorizationPolicy",
        true,
    ),
    kind(
        "meshtlspolicies",
        "remora.dev/v1alpha1",
        "MeshTLSPolicy",
        true,
    ),
    kind(
        "trafficpolicies",
        "remora.dev/v1alpha1",
        "TrafficPolicy",
        true,
    ),
    kind(
        "pluginpolicies",
        "remora.dev/v1alpha1",
        "PluginPolicy",
        true,
    ),
];

fn kind_of_plural(plural: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.plural == plural)
}

/// Problems translation reports that are about the object itself, not about
/// what it refers to: such an object is refused (400). The others (a
/// missing parent, backend or Secret, a conflict with an older object) are
/// accepted and returned as `problems`, as a Kubernetes status condition
/// would say them, since the object they need may come next.
const REFUSED_REASONS: &[&str] = &[
    "Invalid",
    "Unsupported",
    "UnsupportedValue",
    "InvalidKind",
    "RefNotPermitted",
];

/// The API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminApiError {
    #[error("reading the admin token file {0}: {1}")]
    TokenRead(PathBuf, std::io::Error),
    #[error("the admin token file {0} holds {1} characters; the Admin API needs a token of at least {MIN_TOKEN_LEN} (e.g. `head -c 32 /dev/urandom | base64`)")]
    TokenShort(PathBuf, usize),
    #[error("the admin token file {0} is larger than {MAX_TOKEN_FILE} bytes")]
    TokenLarge(PathBuf),
    #[error("reading the Admin API's objects in {0}: {1}; check --source-dir")]
    Dir(PathBuf, std::io::Error),
}

/// The token, kept as its SHA-256 so every comparison takes the same time
/// whatever the length of what a client sends.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The token in `text` (surrounding whitespace trimmed).
    pub fn new(text: &str, origin: &Path) -> Result<Self, AdminApiError> {
        let token = text.trim();
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(AdminApiError::TokenShort(
                origin.to_owned(),
                token.chars().count(),
            ));
        }
        Ok(Token(Sha256::digest(token.as_bytes()).into()))
    }

    /// Reads `--admin-token-file` (once, at start).
    pub fn read(path: &Path) -> Result<Self, AdminApiError> {
        let err = |e| AdminApiError::TokenRead(path.to_owned(), e);
        let size = std::fs::metadata(path).map_err(err)?.len();
        if size > MAX_TOKEN_FILE {
            return Err(AdminApiError::TokenLarge(path.to_owned()));
        }
        Token::new(&std::fs::read_to_string(path).map_err(err)?, path)
    }

    fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        bool::from(subtle::ConstantTimeEq::ct_eq(&self.0[..], &given[..]))
    }
}

/// `(plural, namespace or "", name)`.
type ObjectKey = (&'static str, String, String);

/// The Admin API over one source directory.
#[derive(Debug, Clone)]
pub struct AdminApi {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    token: Token,
    limits: DirLimits,
    options: Options,
    /// `remora_cp_admin_api_requests_total{method,code}`.
    requests: IntCounterVec,
    /// The API's objects as written; the lock serializes writes.
    objects: Mutex<BTreeMap<ObjectKey, Value>>,
}

impl AdminApi {
    /// The API over `dir`, with the objects it wrote before (its files)
    /// loaded; leftover temp files of an interrupted write are removed.
    pub fn open(
        dir: PathBuf,
        token: Token,
        options: Options,
        requests: IntCounterVec,
    ) -> Result<Self, AdminApiError> {
        let objects = load_own(&dir).map_err(|e| AdminApiError::Dir(dir.clone(), e))?;
        tracing::info!(dir = %dir.display(), objects = objects.len(), "Admin API objects loaded");
        Ok(AdminApi {
            inner: Arc::new(Inner {
                dir,
                token,
                limits: DirLimits::default(),
                options,
                requests,
                objects: Mutex::new(objects),
            }),
        })
    }

    /// The API's routes, behind the token, counted by method and code.
    pub fn router(&self) -> Router {
        let state = self.inner.clone();
        Router::new()
            .route("/admin/v1/{plural}", any(handle))
            .route("/admin/v1/{plural}/{first}", any(handle))
            .route("/admin/v1/{plural}/{namespace}/{name}", any(handle))
            .fallback(|| async {
                error(
                    StatusCode::NOT_FOUND,
                    "no such path; see /admin/v1/<plural>[/<namespace>[/<name>]]",
                )
            })
            .layer(middleware::from_fn_with_state(state.clone(), authorize))
            .layer(middleware::from_fn_with_state(state.clone(), count))
            .with_state(state)
    }
}

/// The objects the API wrote, from its files in `dir`.
fn load_own(dir: &Path) -> std::io::Result<BTreeMap<ObjectKey, Value>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if file.starts_with(&format!(".{FILE_PREFIX}")) && file.ends_with(".tmp") {
            tracing::warn!(
                file,
                "removing the temp file of an interrupted Admin API write"
            );
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if !file.starts_with(FILE_PREFIX) || !file.ends_with(".yaml") {
            continue;
        }
        let found = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()))
            .and_then(|value| {
                let key = key_of_value(&value).ok_or("no kind, namespace or name")?;
                if file_name(&key) != file {
                    return Err(format!(
                        "it holds {}, not what its name says",
                        key_text(&key)
                    ));
                }
                Ok((key, value))
            });
        match found {
            Ok((key, value)) => {
                out.insert(key, value);
            }
            Err(reason) => {
                tracing::warn!(
                    file,
                    reason,
                    "Admin API file not loaded (the file source reports it too)"
                )
            }
        }
    }
    Ok(out)
}

fn key_of_value(value: &Value) -> Option<ObjectKey> {
    let kind = value.get("kind")?.as_str()?;
    let kind = KINDS.iter().find(|k| k.kind == kind)?;
    let name = value.pointer("/metadata/name")?.as_str()?.to_owned();
    let ns = if kind.namespaced {
        value.pointer("/metadata/namespace")?.as_str()?.to_owned()
    } else {
        String::new()
    };
    Some((kind.plural, ns, name))
}

/// `~admin.<plural>.[<ns>.]<name>.yaml`: unambiguous, since neither a
/// plural nor a namespace has a dot, and inside the directory, since
/// names are checked DNS-1123 names before they get here.
fn file_name((plural, ns, name): &ObjectKey) -> String {
    if ns.is_empty() {
        format!("{FILE_PREFIX}{plural}.{name}.yaml")
    } else {
        format!("{FILE_PREFIX}{plural}.{ns}.{name}.yaml")
    }
}

fn key_text((plural, ns, name): &ObjectKey) -> String {
    if ns.is_empty() {
        format!("{plural}/{name}")
    } else {
        format!("{plural}/{ns}/{name}")
    }
}

/// A DNS-1123 label: what a namespace (and the names of most kinds) must be.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: what an object name must be.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// An error in APISIX's shape: `{"error_msg": "..."}`.
fn error(status: StatusCode, message: &str) -> Response {
    reply(status, &json!({ "error_msg": message }))
}

/// A request refused, with its status and reason.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

/// A JSON response.
fn reply(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

async fn count(State(state): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let method = match *req.method() {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    };
    let resp = next.run(req).await;
    state
        .requests
        .with_label_values(&[method, resp.status().as_str()])
        .inc();
    resp
}

/// `Authorization: Bearer <token>`, or APISIX's `X-API-KEY: <token>`.
async fn authorize(State(state): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    match given {
        Some(token) if state.token.matches(token.trim()) => next.run(req).await,
        _ => {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token: send Authorization: Bearer <token>",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
}

fn known_kind(plural: &str) -> Result<&'static Kind, Refusal> {
    kind_of_plural(plural).ok_or_else(|| {
        let known: Vec<&str> = KINDS.iter().map(|k| k.plural).collect();
        Refusal(
            StatusCode::NOT_FOUND,
            format!("unknown kind {plural:?}; known: {}", known.join(", ")),
        )
    })
}

fn method_not_allowed(allowed: &str) -> Response {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("this path takes {allowed}"),
    );
    if let Ok(v) = header::HeaderValue::from_str(allowed) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// Every path: `/admin/v1/{plural}` lists a kind; `/admin/v1/{plural}/{x}`
/// lists a namespace's objects of a namespaced kind or is one object of a
/// cluster-scoped kind (Namespace); `/admin/v1/{plural}/{namespace}/{name}`
/// is one object of a namespaced kind.
async fn handle(
    State(state): State<Arc<Inner>>,
    UrlPath(segments): UrlPath<Vec<(String, String)>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let mut values = segments.into_iter().map(|(_, v)| v);
    let plural = values.next().unwrap_or_default();
    let kind = known_kind(&plural)?;
    let (namespace, name) = match (values.next(), values.next(), kind.namespaced) {
        (None, _, _) => (None, None),
        (Some(name), None, false) => (Some(String::new()), Some(name)),
        (Some(ns), None, true) => (Some(ns), None),
        (Some(ns), Some(name), true) => (Some(ns), Some(name)),
        (Some(_), Some(_), false) => {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!("{} is not namespaced: /admin/v1/{plural}/<name>", kind.kind),
            ))
        }
    };
    if let Some(ns) = namespace.as_deref().filter(|ns| !ns.is_empty()) {
        if !is_dns_label(ns) {
            return Ok(bad_name("namespace", ns));
        }
    }
    match (namespace, name) {
        (namespace, None) => {
            if method != Method::GET {
                return Ok(method_not_allowed("GET"));
            }
            Ok(list(&state, kind, namespace.as_deref()).await)
        }
        (namespace, Some(name)) => Ok(one(
            &state,
            kind,
            namespace.unwrap_or_default(),
            name,
            method,
            headers,
            body,
        )
        .await),
    }
}

fn bad_name(what: &str, value: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        &format!("{what} {value:?} is not a DNS-1123 name (lowercase letters, digits, '-' and, in names, '.')"),
    )
}

async fn list(state: &Inner, kind: &Kind, namespace: Option<&str>) -> Response {
    let objects = state.objects.lock().await;
    let items: Vec<Value> = objects
        .iter()
        .filter(|((plural, ns, _), _)| {
            *plural == kind.plural && namespace.is_none_or(|want| want == ns)
        })
        .map(|(key, value)| json!({"key": key_text(key), "value": value}))
        .collect();
    reply(
        StatusCode::OK,
        &json!({"total": items.len(), "list": items}),
    )
}

async fn one(
    state: &Arc<Inner>,
    kind: &'static Kind,
    namespace: String,
    name: String,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !is_dns_subdomain(&name) {
        return bad_name("name", &name);
    }
    let key: ObjectKey = (kind.plural, namespace, name);
    match method {
        Method::GET => match state.objects.lock().await.get(&key) {
            Some(value) => reply(
                StatusCode::OK,
                &json!({"key": key_text(&key), "value": value}),
            ),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("{} not found", key_text(&key)),
            ),
        },
        Method::PUT => put(state, kind, key, &headers, body).await,
        Method::DELETE => delete(state, key).await,
        _ => method_not_allowed("GET, PUT, DELETE"),
    }
}

/// Reads a body within [`MAX_BODY`] and [`BODY_TIMEOUT`].
async fn read_body(headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, Refusal> {
    let too_large = || {
        Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the limit of {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(Refusal(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {BODY_TIMEOUT:?}"),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Parses a body as JSON or, failing that, one YAML document, and checks
/// that it is the object the path names (filling in what it leaves out).
fn object_of(kind: &Kind, key: &ObjectKey, body: &[u8]) -> Result<Value, String> {
    let mut value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(json_error) => {
            let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
            serde_saphyr::from_str(text).map_err(|e| {
                format!("the body is neither JSON ({json_error}) nor one YAML document ({e})")
            })?
        }
    };
    let Some(object) = value.as_object_mut() else {
        return Err("the body must be one object".into());
    };
    fill(object, "apiVersion", kind.api_version)?;
    fill(object, "kind", kind.kind)?;
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("metadata must be an object")?;
    let (_, ns, name) = key;
    fill(metadata, "name", name).map_err(|e| format!("metadata.{e}"))?;
    if kind.namespaced {
        fill(metadata, "namespace", ns).map_err(|e| format!("metadata.{e}"))?;
    } else if metadata.get("namespace").is_some_and(|v| !v.is_null()) {
        return Err(format!(
            "metadata.namespace: {} is not namespaced",
            kind.kind
        ));
    }
    Ok(value)
}

/// Sets `field` to `want` when it is absent; refuses another value.
fn fill(
    object: &mut serde_json::Map<String, Value>,
    field: &str,
    want: &str,
) -> Result<(), String> {
    match object.get(field) {
        None | Some(Value::Null) => {
            object.insert(field.to_owned(), want.into());
            Ok(())
        }
        Some(Value::String(s)) if s == want => Ok(()),
        Some(other) => Err(format!("{field} is {other}, but the path says {want:?}")),
    }
}

async fn put(
    state: &Arc<Inner>,
    kind: &'static Kind,
    key: ObjectKey,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(headers, body).await {
        Ok(b) => b,
        Err(refusal) => return refusal.into_response(),
    };
    let value = match object_of(kind, &key, &bytes) {
        Ok(v) => v,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    // One write at a time: validation sees the directory as it will be.
    let mut objects = state.objects.lock().await;
    let created = !objects.contains_key(&key);
    let job = {
        let state = state.clone();
        let (key, value) = (key.clone(), value.clone());
        tokio::task::spawn_blocking(move || -> Result<Vec<Value>, Refusal> {
            let problems = validate(&state, kind, &key, &value)?;
            write_atomically(&state.dir, &file_name(&key), &value).map_err(|e| {
                tracing::error!(error = %e, object = key_text(&key), "Admin API write failed");
                Refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("persisting the object: {e}"),
                )
            })?;
            Ok(problems)
        })
    };
    let problems = match job.await {
        Ok(Ok(p)) => p,
        Ok(Err(refusal)) => return refusal.into_response(),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the write did not finish: {e}"),
            )
        }
    };
    tracing::info!(object = key_text(&key), created, "Admin API put");
    let body = json!({"key": key_text(&key), "value": value, "problems": problems});
    objects.insert(key, value);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    reply(status, &body)
}

/// The object parses, and translating the directory with it in reports no
/// problem of a [`REFUSED_REASONS`] kind in it; returns the other problems
/// it has.
fn validate(
    state: &Inner,
    kind: &Kind,
    key: &ObjectKey,
    value: &Value,
) -> Result<Vec<Value>, Refusal> {
    let mut loaded = load_dir(&state.dir, &state.limits).map_err(|e| {
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{e}; the write was not made"),
        )
    })?;
    loaded
        .store
        .insert(value.clone())
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, e.to_string()))?;
    let (_, ns, name) = key;
    let store_key = if kind.namespaced {
        format!("{ns}/{name}")
    } else {
        name.clone()
    };
    let translation = translate(&loaded.store, &state.options);
    let mine = translation
        .problems
        .iter()
        .filter(|p| p.kind == kind.kind && p.key == store_key);
    let mut kept = Vec::new();
    for p in mine {
        if REFUSED_REASONS.contains(&p.reason) {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                format!(
                    "{} {store_key}: {}=False {}: {}",
                    kind.kind, p.condition, p.reason, p.message
                ),
            ));
        }
        kept.push(json!({"condition": p.condition, "status": "False", "reason": p.reason, "message": p.message}));
    }
    Ok(kept)
}

/// Temp file in the same directory, fsync, rename over `name`, fsync of
/// the directory: after this returns, a crash keeps the new content.
fn write_atomically(dir: &Path, name: &str, value: &Value) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let text = serde_json::to_vec_pretty(value)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            // Secrets go through here.
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&text)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn delete(state: &Arc<Inner>, key: ObjectKey) -> Response {
    let mut objects = state.objects.lock().await;
    if !objects.contains_key(&key) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("{} not found", key_text(&key)),
        );
    }
    let dir = state.dir.clone();
    let name = file_name(&key);
    let removed = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        match std::fs::remove_file(dir.join(&name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::File::open(&dir)?.sync_all()
    })
    .await;
    match removed {
        Ok(Ok(())) => {
            objects.remove(&key);
            tracing::info!(object = key_text(&key), "Admin API delete");
            reply(StatusCode::OK, &json!({"deleted": key_text(&key)}))
        }
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("removing the object's file: {e}"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the delete did not finish: {e}"),
        ),
    }
}

/// Bounds on the API's listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// A client must send its request head within this.
    pub header_timeout: Duration,
    /// A connection is closed after this, whatever it is doing.
    pub connection_max: Duration,
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            header_timeout: Duration::from_secs(10),
            connection_max: Duration::from_secs(60),
            max_connections: 64,
        }
    }
}

/// Serves `router` on `listener` (plain HTTP/1.1) within `limits` until
/// `drain` is set.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Listener,
    mut drain: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = drain.wait_for(|d| *d) => return,
        };
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "Admin API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "Admin API connection refused: too many open");
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    tower::Service::call(&mut router.clone(), req)
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_max, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "Admin API connection ended"),
                Err(_) => tracing::debug!(%peer, "Admin API connection closed at its time limit"),
            }
        });
    }
}

#[cfg(test)]
mod tests;
