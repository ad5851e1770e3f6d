//! The admin server on port 15020: liveness, readiness, metrics and drain.
//!
//! It runs on its own thread and runtime so that a busy data plane never
//! starves probes or scrapes. Request handling is a pure function of the
//! admin state and the request, tested without sockets.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::state::State;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    pub(crate) metrics: Metrics,
    pub(crate) drain: Drain,
    /// True once every listener is bound (and, with a config file, the
    /// first config is in force).
    pub(crate) ready: watch::Receiver<bool>,
    pub(crate) state: Arc<State>,
}

/// Serves the admin API until the process exits.
pub(crate) async fn serve(listener: TcpListener, state: AdminState) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = respond(&state, req.method(), req.uri().path(), peer);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "admin connection failed");
            }
        });
    }
}

/// Answers one admin request.
pub(crate) fn respond(
    state: &AdminState,
    method: &Method,
    path: &str,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") => {
            if state.drain.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if let Some(problem) = state.state.config_problem() {
                owned_text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {problem}\n"),
                )
            } else if *state.ready.borrow() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(state.metrics.render())))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "metrics\n")),
        (&Method::GET, "/config_dump") => {
            let snapshot = state.state.load();
            let dump = serde_json::json!({
                "version": snapshot.version(),
                "config": snapshot.config.as_deref(),
                "lastError": state.state.last_error(),
                "backends": backends_dump(&snapshot),
            });
            let body =
                serde_json::to_vec_pretty(&dump).unwrap_or_else(|e| e.to_string().into_bytes());
            Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "config_dump\n"))
        }
        (&Method::POST, "/drain") => {
            if !peer.ip().to_canonical().is_loopback() {
                return text(
                    StatusCode::FORBIDDEN,
                    "drain is allowed from localhost only\n",
                );
            }
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

/// What each backend's balancer knows now: the endpoints it picks from,
/// which are ejected or failing health checks, and their load.
fn backends_dump(snapshot: &crate::state::Snapshot) -> serde_json::Value {
    let backends = snapshot
        .backends
        .iter()
        .map(|(name, backend)| {
            let endpoints: Vec<_> = backend
                .balancer
                .endpoints()
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "address": e.address().to_string(),
                        "weight": e.weight(),
                        "identity": e.identity(),
                        "zone": e.zone(),
                        "healthy": e.is_healthy(),
                        "ejected": e.is_ejected(),
                        "timesEjected": e.times_ejected(),
                        "inFlight": e.in_flight(),
                    })
                })
                .collect();
            let value = serde_json::json!({
                "endpoints": endpoints,
                "ejectedNow": backend.balancer.ejected_now(),
                "ejectionsTotal": backend.balancer.ejections_total(),
            });
            (name.clone(), value)
        })
        .collect::<serde_json::Map<_, _>>();
    serde_json::Value::Object(backends)
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    owned_text(status, body)
}

fn owned_text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ready: bool) -> (AdminState, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(ready);
        let metrics = Metrics::new();
        let startup = Arc::new(crate::config::defaults());
        let state = AdminState {
            metrics: metrics.clone(),
            drain: Drain::new(),
            ready: rx,
            state: Arc::new(State::new(startup, metrics)),
        };
        (state, tx)
    }

    const LOCAL: &str = "127.0.0.1:40000";
    const REMOTE: &str = "10.0.0.9:40000";

    #[test]
    fn ready_follows_listeners_and_drain() {
        let (state, tx) = state(false);
        let get = |path| respond(&state, &Method::GET, path, LOCAL.parse().unwrap()).status();
        assert_eq!(get("/live"), StatusCode::OK);
        assert_eq!(get("/ready"), StatusCode::SERVICE_UNAVAILABLE);
        tx.send(true).unwrap();
        assert_eq!(get("/ready"), StatusCode::OK);
        state.drain.start();
        assert_eq!(get("/ready"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/live"), StatusCode::OK);
    }

    #[test]
    fn drain_is_for_localhost_only() {
        let (state, _tx) = state(true);
        let remote = respond(&state, &Method::POST, "/drain", REMOTE.parse().unwrap());
        assert_eq!(remote.status(), StatusCode::FORBIDDEN);
        assert!(!state.drain.is_draining());
        let local = respond(&state, &Method::POST, "/drain", LOCAL.parse().unwrap());
        assert_eq!(local.status(), StatusCode::ACCEPTED);
        assert!(state.drain.is_draining());
        let mapped = respond(
            &state,
            &Method::GET,
            "/drain",
            "[::ffff:127.0.0.1]:1".parse().unwrap(),
        );
        assert_eq!(mapped.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let (state, _tx) = state(true);
        let response = respond(&state, &Method::GET, "/metrics", LOCAL.parse().unwrap());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "text/plain; version=0.0.4"
        );
    }
}
