//! Active HTTP health checks.
//!
//! This file owns the per-endpoint health flag, the threshold state machine
//! that moves it ([`Tally::observe`], pure), and the task that probes every
//! endpoint of a balancer each `interval` with an HTTP/1.1 `GET path`. It
//! does not decide what an unhealthy endpoint means for picking (the
//! selector skips it) and it does not restart itself when the backend's
//! `healthCheck` changes: the caller does.
//!
//! Endpoints start healthy, so that turning health checks on never takes a
//! backend out before the first probes are in. Probes are plaintext: they
//! reach the endpoint's port (or `port`) directly.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::StatusCode;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use remora_api::HealthCheck;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use super::{Balancer, EndpointState};
use crate::transport::{Connector, Dial, Inner, Peer};

/// Consecutive passes and failures, and the verdict they led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) healthy: bool,
    passes: u32,
    failures: u32,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            healthy: true,
            passes: 0,
            failures: 0,
        }
    }
}

impl Tally {
    /// The tally after one probe: `healthyThreshold` passes in a row bring
    /// an unhealthy endpoint back, `unhealthyThreshold` failures in a row
    /// take a healthy one out (a threshold of 0 counts as 1).
    pub(super) fn observe(self, passed: bool, check: &HealthCheck) -> Self {
        if passed {
            let passes = self.passes.saturating_add(1);
            Self {
                healthy: self.healthy || passes >= check.healthy_threshold.max(1),
                passes,
                failures: 0,
            }
        } else {
            let failures = self.failures.saturating_add(1);
            Self {
                healthy: self.healthy && failures < check.unhealthy_threshold.max(1),
                passes: 0,
                failures,
            }
        }
    }
}

/// One endpoint's active-health state. The flag is read on every pick; the
/// tally is written only by the health-check task.
#[derive(Debug)]
pub(super) struct HealthState {
    healthy: AtomicBool,
    tally: Mutex<Tally>,
}

impl Default for HealthState {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            tally: Mutex::new(Tally::default()),
        }
    }
}

impl HealthState {
    pub(super) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Counts one probe; returns the new verdict if it changed.
    pub(super) fn observe(&self, passed: bool, check: &HealthCheck) -> Option<bool> {
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        let before = tally.healthy;
        *tally = tally.observe(passed, check);
        self.healthy.store(tally.healthy, Ordering::Relaxed);
        (tally.healthy != before).then_some(tally.healthy)
    }

    pub(super) fn reset(&self) {
        *self.tally.lock().unwrap_or_else(PoisonError::into_inner) = Tally::default();
        self.healthy.store(true, Ordering::Relaxed);
    }

    pub(super) fn copy_from(&self, other: &HealthState) {
        let tally = *other.tally.lock().unwrap_or_else(PoisonError::into_inner);
        *self.tally.lock().unwrap_or_else(PoisonError::into_inner) = tally;
        self.healthy.store(tally.healthy, Ordering::Relaxed);
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProbeError {
    #[error("connecting: {0}")]
    Connect(#[source] crate::transport::ConnectError),
    #[error("no answer within the health check's timeout of {0:?}")]
    Timeout(Duration),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0}, not 2xx")]
    Status(StatusCode),
    #[error("the health check path cannot be sent: {0}")]
    Request(#[from] http::Error),
}

/// Probes every endpoint of `balancer` each `check.interval` until `drain`
/// resolves, marking endpoints healthy or unhealthy after the thresholds.
/// Endpoints are read afresh each round, so config updates are followed;
/// a changed `healthCheck` needs a new task.
pub(crate) fn spawn_health_checks<D>(
    balancer: Arc<Balancer>,
    check: HealthCheck,
    connector: Arc<Connector>,
    drain: D,
) -> JoinHandle<()>
where
    D: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut drain = pin!(drain);
        let check = Arc::new(check);
        let mut ticker = tokio::time::interval(check.interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut drain => return,
                _ = ticker.tick() => {}
            }
            let mut probes = JoinSet::new();
            for endpoint in balancer.endpoints() {
                let check = Arc::clone(&check);
                let connector = Arc::clone(&connector);
                let backend: Arc<str> = Arc::from(balancer.backend());
                probes
                    .spawn(async move { check_one(&connector, &backend, &endpoint, &check).await });
            }
            let all_done = async { while probes.join_next().await.is_some() {} };
            tokio::select! {
                () = &mut drain => return,
                () = all_done => {}
            }
        }
    })
}

async fn check_one(
    connector: &Connector,
    backend: &str,
    endpoint: &EndpointState,
    check: &HealthCheck,
) {
    let result = probe(connector, &endpoint.peer(), check).await;
    if let Err(e) = &result {
        debug!(backend, endpoint = %endpoint.address(), error = %e, "health check failed");
    }
    match endpoint.health.observe(result.is_ok(), check) {
        Some(true) => info!(backend, endpoint = %endpoint.address(), "endpoint is healthy again"),
        Some(false) => warn!(
            backend,
            endpoint = %endpoint.address(),
            error = %result.err().map(|e| e.to_string()).unwrap_or_default(),
            "endpoint failed its health checks; taking it out"
        ),
        None => {}
    }
}

/// One `GET path` to the endpoint (or its IP at `check.port`), dialed
/// through the connector like any request: Ok on 2xx.
pub(super) async fn probe(
    connector: &Connector,
    peer: &Peer,
    check: &HealthCheck,
) -> Result<(), ProbeError> {
    let address = peer.addr;
    let target = SocketAddr::new(address.ip(), check.port.unwrap_or(address.port()));
    let dial = Dial {
        addr: target,
        source: None,
        timeout: check.timeout,
        identity: peer.identity.clone(),
        // Over mesh mTLS the check speaks HTTP/1.1 inside, as it does in
        // plaintext; the server's sidecar forwards it to its app.
        inner: Inner::Http1,
    };
    let exchange = async {
        let stream = connector
            .connect(&dial)
            .await
            .map_err(ProbeError::Connect)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
        let request = http::Request::get(check.path.as_str())
            .header(HOST, target.to_string())
            .header(USER_AGENT, "remora-health-check")
            .header(CONNECTION, "close")
            .body(Empty::new())?;
        let mut conn = pin!(conn);
        let mut response = pin!(sender.send_request(request));
        let response = tokio::select! {
            biased;
            response = &mut response => response?,
            // With `connection: close` the connection may finish in the same
            // poll that hands the response over; it is then waiting for us.
            done = &mut conn => {
                done?;
                response.await?
            }
        };
        if response.status().is_success() {
            Ok(())
        } else {
            Err(ProbeError::Status(response.status()))
        }
    };
    tokio::time::timeout(check.timeout, exchange)
        .await
        .unwrap_or(Err(ProbeError::Timeout(check.timeout)))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn check(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            path: "/healthz".into(),
            port: None,
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
        }
    }

    fn run(check: &HealthCheck, probes: &[bool]) -> Vec<bool> {
        let mut tally = Tally::default();
        probes
            .iter()
            .map(|&p| {
                tally = tally.observe(p, check);
                tally.healthy
            })
            .collect()
    }

    #[test]
    fn goes_out_after_unhealthy_threshold_failures_in_a_row() {
        let c = check(2, 3);
        assert_eq!(
            run(&c, &[false, false, true, false, false, false]),
            [true, true, true, true, true, false]
        );
    }

    #[test]
    fn comes_back_after_healthy_threshold_passes_in_a_row() {
        let c = check(2, 1);
        assert_eq!(
            run(&c, &[false, true, false, true, true, true]),
            [false, false, false, false, true, true]
        );
    }

    #[test]
    fn thresholds_of_one_flip_on_every_change() {
        let c = check(1, 1);
        assert_eq!(run(&c, &[false, true, false]), [false, true, false]);
        let c = check(0, 0);
        assert_eq!(run(&c, &[false, true]), [false, true], "0 counts as 1");
    }

    #[test]
    fn state_reports_only_changes() {
        let c = check(1, 2);
        let state = HealthState::default();
        assert_eq!(state.observe(false, &c), None);
        assert_eq!(state.observe(false, &c), Some(false));
        assert!(!state.is_healthy());
        assert_eq!(state.observe(false, &c), None);
        assert_eq!(state.observe(true, &c), Some(true));
        state.observe(false, &c);
        state.observe(false, &c);
        state.reset();
        assert!(state.is_healthy());
    }

    /// Answers each connection with `status`, once per connection.
    async fn server(status: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0; 1024];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    assert!(seen.starts_with(b"GET /healthz HTTP/1.1\r\n"));
                    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn probe_passes_on_2xx_and_fails_otherwise() {
        let c = check(1, 1);
        assert!(probe(
            &Connector::plaintext(),
            &Peer::plaintext(server("204 No Content").await),
            &c
        )
        .await
        .is_ok());
        let err = probe(
            &Connector::plaintext(),
            &Peer::plaintext(server("503 Service Unavailable").await),
            &c,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ProbeError::Status(StatusCode::SERVICE_UNAVAILABLE)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn probe_fails_on_refusal_and_on_silence() {
        let c = check(1, 1);
        // A port that was just freed refuses.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        assert!(matches!(
            probe(&Connector::plaintext(), &Peer::plaintext(addr), &c).await,
            Err(ProbeError::Connect(_))
        ));
        // A listener that never answers times out.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = probe(
            &Connector::plaintext(),
            &Peer::plaintext(silent.local_addr().unwrap()),
            &c,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ProbeError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn probe_uses_the_health_check_port() {
        let up = server("200 OK").await;
        let c = HealthCheck {
            port: Some(up.port()),
            ..check(1, 1)
        };
        // The endpoint's own port is closed; the health port answers.
        assert!(probe(
            &Connector::plaintext(),
            &Peer::plaintext(SocketAddr::new(up.ip(), 1)),
            &c
        )
        .await
        .is_ok());
    }
}
