//! Outbound HTTP: the app's requests are matched to a service and a route,
//! split across the route's backends, balanced over the backend's
//! endpoints, and retried within the backend's retry budget. Requests to
//! destinations the mesh config doesn't know pass through unchanged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{request, HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::{
    authority_of, empty, forward, full, Body, ConnInfo, ErrorKind, ErrorSource, HttpProxy,
    ProxyError, Upstream,
};
use crate::balance::{hash_key, Outcome};
use crate::metrics::RequestLabels;
use crate::resilience::{backoff, is_retryable, RequestBody};
use crate::route::{
    apply_request_filters, apply_response_filters, CompiledRoute, FilterOutcome, Mirror,
};
use crate::state::{BackendState, Snapshot};

/// Request bodies up to this size are buffered when the route retries, so
/// that a retry can send them again. Larger bodies are streamed and not
/// retried after they start.
const MAX_REPLAY_BODY: u64 = 64 * 1024;

impl HttpProxy {
    pub(super) async fn outbound(
        &self,
        conn: &ConnInfo,
        req: Request<Body>,
    ) -> (Result<Response<Body>, ProxyError>, RequestLabels) {
        let snapshot = self.state.load();
        let authority = authority_of(&req, conn.orig_dst);
        let Some(port) = snapshot.service_for(conn.orig_dst, &authority).cloned() else {
            let upstream = match conn.version {
                Version::HTTP_2 => Upstream::Http2,
                _ => Upstream::Http1,
            };
            let result = forward(&self.passthrough, conn.orig_dst, upstream, &authority, req).await;
            return (result, RequestLabels::default());
        };
        let mut labels = RequestLabels {
            service: port.service.clone(),
            ..RequestLabels::default()
        };

        let (mut parts, body) = req.into_parts();
        let Some(selected) = port.routes.select(&parts) else {
            return (
                Err(ProxyError::new(
                    ErrorKind::NoRoute,
                    format!(
                        "no route of {} matches {} {}",
                        port.service,
                        parts.method,
                        parts.uri.path()
                    ),
                )),
                labels,
            );
        };
        let route = selected.route;
        labels.route = Arc::from(route.name().unwrap_or_default());

        match apply_request_filters(route.filters(), &mut parts, selected.matched_prefix) {
            Ok(FilterOutcome::Continue) => {}
            Ok(FilterOutcome::Redirect(redirect)) => {
                return (Ok(redirect.map(|()| empty())), labels)
            }
            Err(e) => return (Err(filter_error(&e)), labels),
        }
        let Some(backend_ref) = route.pick_backend(&mut rand::rng()) else {
            return (
                Err(ProxyError::new(
                    ErrorKind::NoBackend,
                    format!("route of {} has no backend with weight", port.service),
                )),
                labels,
            );
        };
        match apply_request_filters(backend_ref.filters(), &mut parts, selected.matched_prefix) {
            Ok(FilterOutcome::Continue) => {}
            Ok(FilterOutcome::Redirect(redirect)) => {
                return (Ok(redirect.map(|()| empty())), labels)
            }
            Err(e) => return (Err(filter_error(&e)), labels),
        }
        let Some(backend) = snapshot.backends.get(backend_ref.name()).cloned() else {
            return (
                Err(ProxyError::new(
                    ErrorKind::NoBackend,
                    format!("backend {} is not in the mesh config", backend_ref.name()),
                )),
                labels,
            );
        };
        labels.backend = backend.name.clone();

        let upstream = match (port.protocol, conn.version) {
            (remora_api::Protocol::Http2 | remora_api::Protocol::Grpc, _)
            | (_, Version::HTTP_2) => Upstream::Http2,
            _ => Upstream::Http1,
        };
        let mirrors: Vec<&Mirror> = {
            let mut rng = rand::rng();
            route
                .filters()
                .mirrors()
                .iter()
                .chain(backend_ref.filters().mirrors())
                .filter(|m| m.sample(&mut rng))
                .collect()
        };
        let body = if mirrors.is_empty() {
            body
        } else {
            match replayable(body).await {
                Ok((Some(bytes), _)) => {
                    let template = Arc::new(Template::of(&parts));
                    for mirror in mirrors {
                        self.mirror(
                            &snapshot,
                            mirror,
                            &template,
                            bytes.clone(),
                            upstream,
                            &authority,
                        );
                    }
                    full(bytes)
                }
                // Too big to copy: the request goes on, unmirrored.
                Ok((None, Some(body))) => body,
                Ok((None, None)) => empty(),
                Err(e) => return (Err(e), labels),
            }
        };
        let hash = match &backend.config.load_balancer {
            remora_api::LoadBalancer::ConsistentHash(on) => hash_key(on, &parts, conn.peer),
            _ => None,
        };
        let target = Target {
            backend: &backend,
            upstream,
            authority: &authority,
            hash,
        };
        let result = self.send(&target, route, parts, body, &labels).await;
        let result = result.map(|response| {
            let (mut head, body) = response.into_parts();
            for filters in [route.filters(), backend_ref.filters()] {
                if let Err(e) = apply_response_filters(filters, &mut head) {
                    tracing::debug!(error = %e, "response filter skipped");
                }
            }
            Response::from_parts(head, body)
        });
        (result, labels)
    }

    /// Sends a request to one of the backend's endpoints, retrying what is
    /// safe to retry while the route's policy and the backend's budget allow.
    async fn send(
        &self,
        target: &Target<'_>,
        route: &CompiledRoute,
        parts: request::Parts,
        body: Body,
        labels: &RequestLabels,
    ) -> Result<Response<Body>, ProxyError> {
        let backend = target.backend;
        let timeouts = route.timeouts();
        let retry = route.retry();
        backend.budget.deposit();

        // A retried request needs its body again: keep small ones.
        let (template, mut first_body, replay) = match retry {
            Some(_) => match replayable(body).await {
                Ok((bytes, rest)) => (Some(Template::of(&parts)), rest, bytes),
                Err(e) => return Err(e),
            },
            None => (None, Some(body), None),
        };
        let mut first = Some(parts);
        let deadline = timeouts.request.map(|d| Instant::now() + d);
        let mut attempt: u32 = 0;
        loop {
            let req = match (first.take(), &template) {
                (Some(parts), _) => {
                    let body = first_body
                        .take()
                        .unwrap_or_else(|| replay.clone().map_or_else(empty, full));
                    Request::from_parts(parts, body)
                }
                (None, Some(template)) => template.request(replay.clone().map_or_else(empty, full)),
                (None, None) => unreachable_retry(),
            };
            let method = req.method().clone();
            let result = self
                .attempt(target, req, timeouts.backend_request, deadline)
                .await;

            // A downstream failure is not retried: the client is gone.
            let Some(outcome) = outcome_of(&result) else {
                return result;
            };
            // A streamed body was consumed by the first attempt.
            let body_replayable = replay.is_some();
            let may_retry = match (retry, &template) {
                (Some(policy), Some(_)) if body_replayable => {
                    attempt < policy.attempts
                        && is_retryable(
                            &method,
                            outcome,
                            grpc_status(&result),
                            policy,
                            RequestBody::Replayable,
                        )
                        && deadline.is_none_or(|d| Instant::now() < d)
                }
                _ => false,
            };
            if !may_retry || !backend.budget.try_withdraw() {
                return result;
            }
            attempt += 1;
            self.metrics.retry(labels);
            if let Some(policy) = retry {
                let pause = backoff(policy.backoff, attempt, &mut rand::rng());
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// One attempt: pick an endpoint, respect the circuit breaker, send,
    /// and report the outcome to the balancer.
    async fn attempt(
        &self,
        target: &Target<'_>,
        req: Request<Body>,
        per_try: Option<Duration>,
        deadline: Option<Instant>,
    ) -> Result<Response<Body>, ProxyError> {
        let backend = target.backend;
        let Some(endpoint) = backend.balancer.pick(target.hash) else {
            return Err(ProxyError::new(
                ErrorKind::NoEndpoints,
                format!("backend {} has no endpoints", backend.name),
            ));
        };
        let _permit = backend
            .breaker
            .try_acquire_request()
            .map_err(|open| ProxyError::new(ErrorKind::CircuitOpen, open.to_string()))?;
        let guard = endpoint.start_request();
        let send = forward(
            &backend.pool,
            endpoint.address(),
            target.upstream,
            target.authority,
            req,
        );
        let limit = match (per_try.map(|d| Instant::now() + d), deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let result = match limit {
            Some(at) => match tokio::time::timeout_at(at, send).await {
                Ok(result) => result,
                Err(_) => Err(ProxyError::new(
                    ErrorKind::Timeout,
                    format!("backend {} did not answer in time", backend.name),
                )),
            },
            None => send.await,
        };
        match outcome_of(&result) {
            Some(outcome) => guard.finish(outcome),
            None => drop(guard),
        }
        result
    }
}

impl HttpProxy {
    /// Sends a copy of a request to a mirror backend and drops the answer.
    fn mirror(
        &self,
        snapshot: &Snapshot,
        mirror: &Mirror,
        template: &Arc<Template>,
        body: Bytes,
        upstream: Upstream,
        authority: &str,
    ) {
        let Some(backend) = snapshot.backends.get(mirror.backend()).cloned() else {
            return;
        };
        let template = template.clone();
        let authority = authority.to_owned();
        tokio::spawn(async move {
            let Some(endpoint) = backend.balancer.pick(None) else {
                return;
            };
            let req = template.request(full(body));
            let exchange = async {
                let response =
                    forward(&backend.pool, endpoint.address(), upstream, &authority, req).await?;
                // Read the answer so the connection can be reused.
                let _ = response.into_body().collect().await;
                Ok::<_, ProxyError>(())
            };
            if let Err(e) = tokio::time::timeout(MIRROR_TIMEOUT, exchange).await {
                tracing::debug!(backend = %backend.name, error = %e, "mirrored request timed out");
            }
        });
    }
}

/// How long a mirrored request may take before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// What an attempt says about the endpoint, for the balancer and retries.
/// `None` when the client failed: that says nothing about the endpoint.
fn outcome_of(result: &Result<Response<Body>, ProxyError>) -> Option<Outcome> {
    match result {
        Ok(response) => Some(Outcome::Status(response.status().as_u16())),
        Err(e) if e.kind == ErrorKind::Connect => Some(Outcome::ConnectFailure),
        Err(e) if e.kind == ErrorKind::Timeout => Some(Outcome::Timeout),
        Err(e) if e.kind.source() == ErrorSource::Downstream => None,
        Err(_) => Some(Outcome::Error),
    }
}

/// Where the attempts of one request go.
struct Target<'a> {
    backend: &'a BackendState,
    upstream: Upstream,
    authority: &'a str,
    /// The request's consistent-hash key, under that policy.
    hash: Option<u64>,
}

/// A filter that cannot apply to this request: the route is misconfigured
/// for it, so the client gets a 500, and nothing is retried.
fn filter_error(e: &crate::route::FilterError) -> ProxyError {
    ProxyError::new(ErrorKind::NoBackend, format!("route filter: {e}"))
}

fn unreachable_retry() -> Request<Body> {
    // `send` only loops when a template exists; an empty request is the
    // harmless answer if that ever changes.
    Request::new(empty())
}

/// The `grpc-status` of a trailers-only gRPC response, if any.
fn grpc_status(result: &Result<Response<Body>, ProxyError>) -> Option<u32> {
    let response = result.as_ref().ok()?;
    response
        .headers()
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// What's needed to build the same request again.
#[derive(Debug)]
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Template {
    fn of(parts: &request::Parts) -> Self {
        Template {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    fn request(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Buffers a body that is small enough to send again. Returns the bytes
/// (`None` when it's too big), and the body to stream instead when it is.
async fn replayable(body: Body) -> Result<(Option<Bytes>, Option<Body>), ProxyError> {
    if body.is_end_stream() {
        return Ok((Some(Bytes::new()), None));
    }
    match body.size_hint().upper() {
        Some(n) if n <= MAX_REPLAY_BODY => {
            let bytes = body
                .collect()
                .await
                .map_err(|e| {
                    ProxyError::new(
                        ErrorKind::BadRequest,
                        format!("reading the request body: {e}"),
                    )
                })?
                .to_bytes();
            Ok((Some(bytes), None))
        }
        _ => Ok((None, Some(body))),
    }
}
