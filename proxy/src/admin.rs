//! The admin server on port 15020: liveness, readiness, metrics, the
//! config dump and drain.
//!
//! It runs on its own thread and runtime so that a busy data plane never
//! starves probes or scrapes, and a big config dump never slows a request.
//! `/live`, `/ready` and `/metrics` answer anyone (kubelet, Prometheus);
//! `/config_dump` and `POST /drain` answer localhost only, as Envoy's admin
//! does. Request handling is a function of the admin state and the request,
//! tested without sockets; what `/config_dump` says is in `dump`, and the
//! app's probes (`/app-health/...`, forwarded to the app) are in `probes`.

mod dump;
mod probes;

pub use probes::{Action as AppProbeAction, AppProbes, AppProbesError, Check as AppProbeCheck};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info};

use crate::config::{INBOUND_SOURCE_V4, INBOUND_SOURCE_V6};
use crate::drain::Drain;
use crate::identity::IdentityState;
use crate::metrics::Metrics;
use crate::state::State;
use dump::{DumpQuery, FullDump};

/// Full dumps served at once; more get 503. Each pins a snapshot for as
/// long as its client takes to read it.
const MAX_FULL_DUMPS: usize = 2;
/// A client must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    pub(crate) metrics: Metrics,
    pub(crate) drain: Drain,
    /// True once every listener is bound (and, with a config file, the
    /// first config is in force).
    pub(crate) ready: watch::Receiver<bool>,
    pub(crate) state: Arc<State>,
    /// The certificate client's state, with `--ca-addr`: no certificate
    /// means not ready.
    pub(crate) identity: Option<watch::Receiver<Arc<IdentityState>>>,
}

/// An admin response: a small body, or a full config dump streamed.
pub(crate) type AdminBody = Either<Full<Bytes>, FullDump>;

/// The admin API: its state and the limit on full dumps.
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    state: AdminState,
    full_dumps: Arc<Semaphore>,
    probes: probes::Prober,
}

/// Serves the admin API until the process exits.
pub(crate) async fn serve(listener: TcpListener, state: AdminState) {
    let admin = Admin::new(state);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let admin = admin.clone();
        // The address the request came in on is the pod's own: where the
        // app probes go, as kubelet would have sent them.
        let local = stream.local_addr().map(|a| a.ip()).ok();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let admin = admin.clone();
                async move {
                    let response = match local {
                        Some(pod_ip) if req.uri().path().starts_with(probes::PREFIX) => {
                            admin
                                .app_probe(req.method(), req.uri().path(), pod_ip)
                                .await
                        }
                        _ => admin.respond(req.method(), req.uri(), peer),
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "admin connection failed");
            }
        });
    }
}

impl Admin {
    pub(crate) fn new(state: AdminState) -> Self {
        let probes = probes::Prober::new(state.state.startup().app_probes.clone());
        Admin {
            state,
            full_dumps: Arc::new(Semaphore::new(MAX_FULL_DUMPS)),
            probes,
        }
    }

    /// Answers `/app-health/...`: the app's own probe, run now.
    pub(crate) async fn app_probe(
        &self,
        method: &Method,
        path: &str,
        pod_ip: IpAddr,
    ) -> Response<AdminBody> {
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        let (status, body) = self.probes.answer(path, pod_ip).await;
        text(status, body)
    }

    /// Answers one admin request.
    pub(crate) fn respond(
        &self,
        method: &Method,
        uri: &Uri,
        peer: SocketAddr,
    ) -> Response<AdminBody> {
        let state = &self.state;
        let path = uri.path();
        let local_only = matches!(path, "/config_dump" | "/drain");
        if local_only && !is_localhost(peer.ip()) {
            debug!(%peer, path, "admin request refused: not from localhost");
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "{path} answers on localhost only; ask from inside the pod, e.g. \
                     `kubectl exec` then `curl localhost:15020{path}`\n"
                ),
            );
        }
        match (method, path) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                if state.drain.is_draining() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if let Some(problem) = state.state.config_problem() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {problem}\n"),
                    )
                } else if !*state.ready.borrow() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                } else {
                    let identity = state.identity.as_ref().map(|rx| rx.borrow().readiness());
                    match identity {
                        Some(Err(detail)) => text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {detail}\n"),
                        ),
                        Some(Ok(Some(note))) => text(StatusCode::OK, format!("ready\n{note}\n")),
                        Some(Ok(None)) | None => text(StatusCode::OK, "ready\n"),
                    }
                }
            }
            (&Method::GET, "/metrics") => with_type(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                Either::Left(Full::new(Bytes::from(state.metrics.render()))),
            ),
            (&Method::GET, "/config_dump") => self.config_dump(uri.query()),
            (&Method::POST, "/drain") => {
                info!(%peer, "drain requested over the admin API");
                state.drain.start();
                text(StatusCode::ACCEPTED, "draining\n")
            }
            (_, "/live" | "/ready" | "/metrics" | "/config_dump" | "/drain") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn config_dump(&self, query: Option<&str>) -> Response<AdminBody> {
        let query = match dump::parse_query(query) {
            Ok(query) => query,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let (snapshot, last_error) = self.state.state.in_force();
        let (kind, name, answer) = match &query {
            DumpQuery::Summary => {
                let mut summary = dump::summary(&snapshot, last_error);
                summary.identity = self
                    .state
                    .identity
                    .as_ref()
                    .map(|rx| dump::identity(&rx.borrow()));
                summary.discovery = self.state.state.discovery().map(|d| d.snapshot());
                return json(serde_json::to_vec_pretty(&summary));
            }
            DumpQuery::Full => {
                let Ok(permit) = self.full_dumps.clone().try_acquire_owned() else {
                    let mut response = text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "{MAX_FULL_DUMPS} full dumps are being served already; \
                             retry once they finish\n"
                        ),
                    );
                    response.headers_mut().insert(
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from_static("1"),
                    );
                    return response;
                };
                return with_type(
                    StatusCode::OK,
                    "application/json",
                    Either::Right(FullDump::new(snapshot, last_error, permit)),
                );
            }
            DumpQuery::Backend(name) => ("backend", name, dump::backend(&snapshot, name)),
            DumpQuery::Service(name) => ("service", name, dump::service(&snapshot, name)),
        };
        match answer {
            Some(body) => json(body),
            None => text(
                StatusCode::NOT_FOUND,
                format!(
                    "no {kind} named {name:?} in config version {:?}; \
                     GET /config_dump?full=1 lists them all\n",
                    snapshot.version()
                ),
            ),
        }
    }
}

/// Whether a peer is on this host: loopback (IPv4, IPv6, or IPv4-mapped),
/// except the proxy's own inbound source address, which carries requests
/// from other pods that the capture rules sent through the inbound
/// listener (e.g. when the admin port is not excluded from capture).
fn is_localhost(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() && ip != IpAddr::V4(INBOUND_SOURCE_V4) && ip != IpAddr::V6(INBOUND_SOURCE_V6)
}

fn json(body: serde_json::Result<Vec<u8>>) -> Response<AdminBody> {
    match body {
        Ok(mut body) => {
            body.push(b'\n');
            with_type(
                StatusCode::OK,
                "application/json",
                Either::Left(Full::new(Bytes::from(body))),
            )
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("config dump serialisation failed: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    with_type(status, "text/plain", Either::Left(Full::new(body.into())))
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: AdminBody,
) -> Response<AdminBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use remora_api::MeshConfig;
    use serde_json::{json, Value};

    fn admin(ready: bool) -> (Admin, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(ready);
        let metrics = Metrics::new();
        let startup = Arc::new(crate::config::defaults());
        let state = AdminState {
            metrics: metrics.clone(),
            drain: Drain::new(),
            ready: rx,
            state: Arc::new(State::new(startup, metrics)),
            identity: None,
        };
        (Admin::new(state), tx)
    }

    const LOCAL: &str = "127.0.0.1:40000";
    const REMOTE: &str = "10.0.0.9:40000";

    /// Two services (three ports, three routes), three backends with four
    /// endpoints in all.
    const CONFIG: &str = r#"
version: v7
outbound:
  services:
  - name: web
    addresses: [10.96.0.10]
    ports:
    - port: 80
      routes:
      - name: a
        matches: [{path: {type: PathPrefix, value: /a}}]
        backendRefs: [{name: web-v1}]
      - name: rest
        backendRefs: [{name: web-v1, weight: 90}, {name: web-v2, weight: 10}]
    - port: 8080
      backendRefs: [{name: web-v1}]
  - name: db
    addresses: [10.96.0.11]
    ports:
    - port: 5432
      protocol: tcp
      routes: []
      backendRefs: [{name: db}]
  - name: grpc
    hostnames: [grpc.default]
    ports:
    - port: 9090
      protocol: grpc
      routes:
      - backendRefs: [{name: web-v2}]
backends:
  web-v1:
    endpoints: [{address: "10.0.1.1:8080"}, {address: "10.0.1.2:8080", weight: 3}]
  web-v2:
    endpoints: [{address: "10.0.2.1:8080", zone: z1}]
  db:
    endpoints: [{address: "[fd00::5]:5432"}]
"#;

    fn call(admin: &Admin, method: Method, uri: &str, peer: &str) -> Response<AdminBody> {
        let uri: Uri = uri.parse().expect("test URI");
        admin.respond(&method, &uri, peer.parse().expect("test peer"))
    }

    async fn body_text(response: Response<AdminBody>) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("admin bodies do not fail")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("UTF-8 body")
    }

    async fn get_json(admin: &Admin, uri: &str) -> Value {
        let response = call(admin, Method::GET, uri, LOCAL);
        assert_eq!(response.status(), StatusCode::OK, "GET {uri}");
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "application/json"
        );
        let text = body_text(response).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {uri}: {e}: {text}"))
    }

    fn apply(admin: &Admin, yaml: &str) -> MeshConfig {
        let config = MeshConfig::from_yaml(yaml).expect("valid test config");
        admin.state.state.apply(config.clone()).expect("applies");
        config
    }

    #[test]
    fn ready_follows_listeners_and_drain() {
        let (admin, tx) = admin(false);
        let get = |path| call(&admin, Method::GET, path, LOCAL).status();
        assert_eq!(get("/live"), StatusCode::OK);
        assert_eq!(get("/ready"), StatusCode::SERVICE_UNAVAILABLE);
        tx.send(true).unwrap();
        assert_eq!(get("/ready"), StatusCode::OK);
        admin.state.drain.start();
        assert_eq!(get("/ready"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/live"), StatusCode::OK);
    }

    #[test]
    fn drain_is_for_localhost_only() {
        let (admin, _tx) = admin(true);
        let remote = call(&admin, Method::POST, "/drain", REMOTE);
        assert_eq!(remote.status(), StatusCode::FORBIDDEN);
        assert!(!admin.state.drain.is_draining());
        let local = call(&admin, Method::POST, "/drain", LOCAL);
        assert_eq!(local.status(), StatusCode::ACCEPTED);
        assert!(admin.state.drain.is_draining());
        let mapped = call(&admin, Method::GET, "/drain", "[::ffff:127.0.0.1]:1");
        assert_eq!(mapped.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let (admin, _tx) = admin(true);
        let response = call(&admin, Method::GET, "/metrics", LOCAL);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "text/plain; version=0.0.4"
        );
    }

    #[test]
    fn localhost_is_loopback_but_not_the_inbound_source() {
        for local in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(is_localhost(local.parse().unwrap()), "{local}");
        }
        for remote in [
            "10.0.0.9",
            "0.0.0.0",
            "::",
            "fd00::9",
            "::ffff:10.0.0.9",
            // The inbound listener forwards other pods' requests from these.
            "127.0.0.6",
            "::ffff:127.0.0.6",
            "::6",
        ] {
            assert!(!is_localhost(remote.parse().unwrap()), "{remote}");
        }
    }

    #[tokio::test]
    async fn config_dump_is_for_localhost_only() {
        let (admin, _tx) = admin(true);
        apply(&admin, CONFIG);
        for peer in [
            REMOTE,
            "127.0.0.6:5000",
            "[fd00::9]:1",
            "[::ffff:10.0.0.9]:1",
        ] {
            for uri in [
                "/config_dump",
                "/config_dump?full=1",
                "/config_dump?backend=web-v1",
                "/config_dump?bogus",
            ] {
                let response = call(&admin, Method::GET, uri, peer);
                assert_eq!(
                    response.status(),
                    StatusCode::FORBIDDEN,
                    "{uri} from {peer}"
                );
                let body = body_text(response).await;
                assert_eq!(body.lines().count(), 1, "a one-line reason: {body:?}");
                assert!(
                    body.starts_with("/config_dump answers on localhost only"),
                    "{body}"
                );
            }
            // Probes and scrapes still answer anyone.
            for path in ["/live", "/ready", "/metrics"] {
                let status = call(&admin, Method::GET, path, peer).status();
                assert_eq!(status, StatusCode::OK, "{path} from {peer}");
            }
        }
        for peer in [LOCAL, "[::1]:1", "[::ffff:127.0.0.1]:1", "127.9.9.9:1"] {
            let status = call(&admin, Method::GET, "/config_dump", peer).status();
            assert_eq!(status, StatusCode::OK, "from {peer}");
        }
    }

    #[test]
    fn queries_name_one_thing() {
        use dump::{parse_query, DumpQuery as Q, QueryError as E};
        let cases: &[(Option<&str>, Result<Q, E>)] = &[
            (None, Ok(Q::Summary)),
            (Some(""), Ok(Q::Summary)),
            (Some("&"), Ok(Q::Summary)),
            (Some("full=1"), Ok(Q::Full)),
            (Some("full"), Ok(Q::Full)),
            (Some("full=true"), Ok(Q::Full)),
            (Some("backend=web-v1"), Ok(Q::Backend("web-v1".into()))),
            (Some("backend=a%2Fb%20c"), Ok(Q::Backend("a/b c".into()))),
            (
                Some("service=web.default"),
                Ok(Q::Service("web.default".into())),
            ),
            (Some("full=0"), Err(E::FullValue("0".into()))),
            (Some("backend="), Err(E::MissingName("backend"))),
            (Some("service"), Err(E::MissingName("service"))),
            (Some("backends=x"), Err(E::Unknown("backends".into()))),
            (Some("format=yaml"), Err(E::Unknown("format".into()))),
            (Some("backend=a&backend=b"), Err(E::Several)),
            (Some("backend=a&full=1"), Err(E::Several)),
            (Some("backend=%ff"), Err(E::Encoding)),
        ];
        for (query, want) in cases {
            assert_eq!(&parse_query(*query), want, "{query:?}");
        }
    }

    #[tokio::test]
    async fn bad_queries_get_400_with_the_reason() {
        let (admin, _tx) = admin(true);
        for (uri, reason) in [
            (
                "/config_dump?backends=x",
                "unknown parameter \"backends\"; use backend=NAME, service=NAME or full=1\n",
            ),
            (
                "/config_dump?backend=a&service=b",
                "ask for one thing at a time: backend=NAME, service=NAME or full=1\n",
            ),
        ] {
            let response = call(&admin, Method::GET, uri, LOCAL);
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(body_text(response).await, reason);
        }
    }

    #[tokio::test]
    async fn the_summary_counts_and_stays_small() {
        let (admin, _tx) = admin(true);
        let empty = get_json(&admin, "/config_dump").await;
        assert_eq!(empty["version"], "");
        assert_eq!(empty["counts"]["backends"], 0);

        apply(&admin, CONFIG);
        let summary = get_json(&admin, "/config_dump").await;
        assert_eq!(summary["version"], "v7");
        assert_eq!(summary["lastError"], Value::Null);
        assert_eq!(
            summary["counts"],
            json!({
                "services": 3, "ports": 4, "routes": 3, "backends": 3, "endpoints": 4,
                "ejectedEndpoints": 0, "unhealthyEndpoints": 0,
            })
        );
        assert_eq!(summary["backendsOutOfRotation"], json!([]));
        assert!(summary.get("config").is_none(), "no config in the summary");
        assert!(
            summary.get("backends").is_none(),
            "no backends in the summary"
        );

        // A rejected update shows up; the version in force stays.
        // (Valid as parsed, then broken in code: a regex that only the
        // proxy's compile step sees.)
        let mut bad = MeshConfig::from_yaml(
            "version: v8\nbackends: {b: {endpoints: [{address: '10.0.0.2:80'}]}}\noutbound: {services: [{name: s, addresses: [10.0.0.1], ports: [{port: 80, routes: [{matches: [{path: {type: RegularExpression, value: /a}}], backendRefs: [{name: b}]}]}]}]}\n",
        )
        .unwrap();
        bad.outbound.services[0].ports[0].routes[0].matches[0]
            .path
            .as_mut()
            .unwrap()
            .value = "(".into();
        assert!(admin.state.state.apply(bad).is_err());
        let summary = get_json(&admin, "/config_dump").await;
        assert_eq!(summary["version"], "v7");
        assert!(
            summary["lastError"].as_str().is_some_and(|e| e.starts_with(
                "outbound.services[0].ports[0].routes[0].matches[0].path.value: regex"
            )),
            "{summary}"
        );
    }

    #[tokio::test]
    async fn the_summary_of_a_big_config_is_as_small_as_a_small_one() {
        let (admin, _tx) = admin(true);
        apply(&admin, &many_backends(2_000));
        let response = call(&admin, Method::GET, "/config_dump", LOCAL);
        let text = body_text(response).await;
        assert!(text.len() < 1024, "{} bytes: {text}", text.len());
        let summary: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(summary["counts"]["backends"], 2_000);
        assert_eq!(summary["counts"]["endpoints"], 4_000);
    }

    #[tokio::test]
    async fn one_backend_or_service_by_name() {
        let (admin, _tx) = admin(true);
        apply(&admin, CONFIG);
        let dump = get_json(&admin, "/config_dump?backend=web-v1").await;
        assert_eq!(dump["version"], "v7");
        let backend = &dump["backend"];
        assert_eq!(backend["name"], "web-v1");
        assert_eq!(backend["config"]["endpoints"][1]["weight"], 3);
        assert_eq!(backend["ejectedNow"], 0);
        assert_eq!(backend["ejectionsTotal"], 0);
        assert_eq!(
            backend["endpoints"],
            json!([
                {"address": "10.0.1.1:8080", "weight": 1, "identity": null, "zone": null,
                 "healthy": true, "ejected": false, "timesEjected": 0, "inFlight": 0},
                {"address": "10.0.1.2:8080", "weight": 3, "identity": null, "zone": null,
                 "healthy": true, "ejected": false, "timesEjected": 0, "inFlight": 0},
            ])
        );
        let db = get_json(&admin, "/config_dump?backend=db").await;
        assert_eq!(db["backend"]["endpoints"][0]["address"], "[fd00::5]:5432");

        let service = get_json(&admin, "/config_dump?service=db").await;
        assert_eq!(service["version"], "v7");
        assert_eq!(service["service"]["addresses"], json!(["10.96.0.11"]));
        assert_eq!(service["service"]["ports"][0]["port"], 5432);

        for (uri, reason) in [
            (
                "/config_dump?backend=web-v3",
                "no backend named \"web-v3\" in config version \"v7\"; \
                 GET /config_dump?full=1 lists them all\n",
            ),
            (
                "/config_dump?service=web-v1",
                "no service named \"web-v1\" in config version \"v7\"; \
                 GET /config_dump?full=1 lists them all\n",
            ),
        ] {
            let response = call(&admin, Method::GET, uri, LOCAL);
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(body_text(response).await, reason);
        }
    }

    #[tokio::test]
    async fn the_full_dump_is_the_config_and_the_balancers() {
        let (admin, _tx) = admin(true);
        let none = get_json(&admin, "/config_dump?full=1").await;
        assert_eq!(
            none,
            json!({"version": "", "lastError": null, "config": null, "backends": {}})
        );

        let config = apply(&admin, include_str!("../../api/examples/mesh.yaml"));
        let dump = get_json(&admin, "/config_dump?full=1").await;
        assert_eq!(dump["version"], "2024-06-01.1");
        assert_eq!(dump["lastError"], Value::Null);
        assert_eq!(dump["config"], serde_json::to_value(&config).unwrap());
        let names: Vec<_> = dump["backends"].as_object().unwrap().keys().collect();
        let want: Vec<_> = config.backends.keys().collect();
        assert_eq!(names, want);

        let config = apply(&admin, CONFIG);
        let dump = get_json(&admin, "/config_dump?full=1").await;
        assert_eq!(dump["config"], serde_json::to_value(&config).unwrap());
        assert_eq!(
            dump["backends"]["web-v2"],
            json!({
                "endpoints": [
                    {"address": "10.0.2.1:8080", "weight": 1, "identity": null, "zone": "z1",
                     "healthy": true, "ejected": false, "timesEjected": 0, "inFlight": 0},
                ],
                "ejectedNow": 0, "ejectionsTotal": 0,
            })
        );
    }

    /// A config with `n` backends of two endpoints each, and one service.
    fn many_backends(n: usize) -> String {
        let mut yaml = String::from(
            "version: big\noutbound:\n  services:\n  - name: s\n    addresses: [10.96.0.1]\n    ports:\n    - port: 80\n      backendRefs: [{name: b0}]\nbackends:\n",
        );
        for i in 0..n {
            yaml.push_str(&format!(
                "  b{i}:\n    endpoints: [{{address: \"10.1.{}.{}:80\"}}, {{address: \"10.2.{}.{}:80\"}}]\n",
                i / 256,
                i % 256,
                i / 256,
                i % 256
            ));
        }
        yaml
    }

    #[tokio::test]
    async fn the_full_dump_streams_in_bounded_chunks() {
        let (admin, _tx) = admin(true);
        let config = apply(&admin, &many_backends(5_000));
        let response = call(&admin, Method::GET, "/config_dump?full=1", LOCAL);
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        assert_eq!(http_body::Body::size_hint(&body).exact(), None, "chunked");
        let mut whole = Vec::new();
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame
                .expect("no error")
                .into_data()
                .expect("data frames only");
            sizes.push(data.len());
            whole.extend_from_slice(&data);
        }
        assert!(http_body::Body::is_end_stream(&body));
        // Each chunk is filled to the mark and passes it by one piece at
        // most (a backend here is well under 1 KiB); only the last is short.
        let (last, full) = sizes.split_last().expect("some chunks");
        assert!(full.len() >= 5, "{} bytes in {sizes:?}", whole.len());
        for size in full {
            assert!(
                (dump::CHUNK_BYTES..dump::CHUNK_BYTES + 1024).contains(size),
                "{sizes:?}"
            );
        }
        assert!(*last < dump::CHUNK_BYTES + 1024, "{sizes:?}");
        let dump: Value = serde_json::from_slice(&whole).expect("the pieces make one JSON value");
        assert_eq!(dump["config"], serde_json::to_value(&config).unwrap());
        assert_eq!(dump["backends"].as_object().unwrap().len(), 5_000);
        assert_eq!(
            dump["backends"]["b4999"]["endpoints"][1]["address"],
            "10.2.19.135:80"
        );
    }

    #[tokio::test]
    async fn full_dumps_at_once_are_limited() {
        let (admin, _tx) = admin(true);
        apply(&admin, CONFIG);
        let held: Vec<_> = (0..MAX_FULL_DUMPS)
            .map(|_| call(&admin, Method::GET, "/config_dump?full=1", LOCAL))
            .collect();
        assert!(held.iter().all(|r| r.status() == StatusCode::OK));
        let refused = call(&admin, Method::GET, "/config_dump?full=1", LOCAL);
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[http::header::RETRY_AFTER], "1");
        // The summary and by-name answers are not limited.
        assert_eq!(
            call(&admin, Method::GET, "/config_dump", LOCAL).status(),
            StatusCode::OK
        );
        drop(held);
        assert_eq!(
            get_json(&admin, "/config_dump?full=1").await["version"],
            "v7"
        );
    }
}
