//! The admin HTTP server (port 15014 by default, plain HTTP): `/live`,
//! `/ready` and `/metrics` for the kubelet and Prometheus. It holds no
//! secrets and changes nothing.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What /ready reports: ready once the CA and the gRPC listener are up,
/// not ready again from the moment a drain starts.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub ready: watch::Receiver<Readiness>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Starting,
    Ready,
    Draining,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    match *state.ready.borrow() {
        Readiness::Ready => (StatusCode::OK, "ready\n"),
        Readiness::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        Readiness::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let resp = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_follows_the_lifecycle_and_live_does_not() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let (tx, rx) = watch::channel(Readiness::Starting);
        let router = router(AdminState { metrics, ready: rx });
        for (state, want) in [
            (
                Readiness::Starting,
                (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            ),
            (Readiness::Ready, (StatusCode::OK, "ready\n")),
            (
                Readiness::Draining,
                (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            ),
        ] {
            tx.send(state).unwrap();
            let (status, body) = get(router.clone(), "/ready").await;
            assert_eq!((status, body.as_str()), want);
            assert_eq!(get(router.clone(), "/live").await.0, StatusCode::OK);
        }
        let (status, body) = get(router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("remora_cp_certificates_issued_total 0"),
            "{body}"
        );
    }
}
