//! Outbound HTTP: the app's requests are matched to a service and a route,
//! split across the route's backends, balanced over the backend's
//! endpoints, and retried within the backend's retry budget. Requests to
//! destinations the mesh config doesn't know pass through unchanged.

use std::sync::Arc;
use std::time::Duration;

use http::{request, HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tracing::debug;

use super::{
    authority_of, empty, forward, Body, ConnInfo, ErrorKind, HttpProxy, Peer, ProxyError, Upstream,
};
use crate::balance::{hash_key, Outcome};
use crate::body::{Replay, MAX_REPLAY_BODY};
use crate::error::Retry;
use crate::metrics::RequestLabels;
use crate::plugins::{Chain, Ctx, MirrorTarget};
use crate::resilience::{backoff, is_retryable, RequestBody};
use crate::route::{
    apply_request_filters, apply_response_filters, CompiledRoute, FilterOutcome, Mirror,
};
use crate::source::discovery::host_dest;
use crate::state::{BackendState, Snapshot};

impl HttpProxy {
    pub(super) async fn outbound(
        &self,
        conn: &ConnInfo,
        req: Request<Body>,
        snapshot: Arc<Snapshot>,
        plugins: &mut Ctx<'_>,
    ) -> (Result<Response<Body>, ProxyError>, RequestLabels) {
        let authority = authority_of(req.uri(), req.headers(), conn.orig_dst);
        let mut snapshot = snapshot;
        let mut port = snapshot.service_for(conn.orig_dst, &authority).cloned();
        // Discovery mode: a host name the config does not know is asked for
        // once; the first requests wait (bounded) for the answer.
        // Discovery mode: a host name stays subscribed while a request to it
        // is in flight (to the response head; the connection's own guard, by
        // original destination, covers the rest).
        let host = self
            .state
            .discovery()
            .and_then(|d| Some((d, host_dest(&authority, conn.orig_dst.port())?)));
        if port.is_none() {
            if let Some((discovery, dest)) = &host {
                // Boxed: a first request to a new host is rare, and its
                // wait need not sit in every request's future.
                let asked = Box::pin(discovery.on_demand.ask(dest.clone())).await;
                debug!(%authority, ?asked, "host asked for on demand");
                snapshot = self.state.load();
                port = snapshot.service_for(conn.orig_dst, &authority).cloned();
            }
        }
        let _in_use = host.and_then(|(discovery, dest)| discovery.on_demand.in_use(&dest));
        let mut labels = RequestLabels {
            service: port.as_ref().map(|p| p.service.clone()).unwrap_or_default(),
            ..RequestLabels::default()
        };
        // Unknown destinations, and known HTTP ports that route nothing, go
        // to the original destination as they are.
        let port = match port {
            Some(port) if !port.passthrough => port,
            port => {
                let mut req = req;
                if let Some(port) = &port {
                    plugins.service = port.service.clone();
                    let chain = port.plugins.first().cloned().unwrap_or_default();
                    let (mut parts, body) = req.into_parts();
                    if let Some(r) = plugins.request_phases(&chain, &mut parts).await {
                        return (Ok(r), labels);
                    }
                    req = Request::from_parts(parts, body);
                }
                let upstream = match conn.version {
                    Version::HTTP_2 => Upstream::Http2,
                    _ => Upstream::Http1,
                };
                let result = forward(
                    &self.drain,
                    &self.passthrough,
                    &Peer::plaintext(conn.orig_dst),
                    upstream,
                    &authority,
                    req,
                )
                .await;
                return (result, labels);
            }
        };

        let (mut parts, body) = req.into_parts();
        plugins.service = port.service.clone();
        let Some(selected) = port.routes.select(&parts) else {
            // No route: the global rules still run, as in APISIX.
            if let Some(r) = plugins.enter(&Chain::default(), &mut parts).await {
                return (Ok(r), labels);
            }
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
        labels.route = route.label().clone();
        plugins.route = route.label().clone();
        let chain = port
            .plugins
            .get(selected.route_index)
            .cloned()
            .unwrap_or_default();
        if let Some(r) = plugins.enter(&chain, &mut parts).await {
            return (Ok(r), labels);
        }

        match apply_request_filters(route.filters(), &mut parts, selected.matched_prefix) {
            Ok(FilterOutcome::Continue) => {}
            Ok(FilterOutcome::Redirect(redirect)) => {
                return (Ok(redirect.map(|()| empty())), labels)
            }
            Err(e) => return (Err(filter_error(&e)), labels),
        }
        // traffic-split may have chosen the backend; the route's split
        // chooses otherwise, and only its choice has filters of its own.
        let split_to = plugins.upstream.take();
        let backend_ref = match &split_to {
            Some(_) => None,
            None => match route.pick_backend() {
                Some(backend_ref) => Some(backend_ref),
                None => {
                    return (
                        Err(ProxyError::new(
                            ErrorKind::NoBackend,
                            format!("route of {} has no backend with weight", port.service),
                        )),
                        labels,
                    )
                }
            },
        };
        if let Some(backend_ref) = backend_ref {
            match apply_request_filters(backend_ref.filters(), &mut parts, selected.matched_prefix)
            {
                Ok(FilterOutcome::Continue) => {}
                Ok(FilterOutcome::Redirect(redirect)) => {
                    return (Ok(redirect.map(|()| empty())), labels)
                }
                Err(e) => return (Err(filter_error(&e)), labels),
            }
        }
        let backend_name = match (&split_to, backend_ref) {
            (Some(name), _) => &**name,
            (None, Some(backend_ref)) => backend_ref.name(),
            (None, None) => "",
        };
        let Some(backend) = snapshot.backends.get(backend_name).cloned() else {
            return (
                Err(ProxyError::new(
                    ErrorKind::NoBackend,
                    format!("backend {backend_name} is not in the mesh config"),
                )),
                labels,
            );
        };
        labels.backend = backend.name.clone();
        tracing::trace!(
            service = %port.service,
            route = route.name().unwrap_or_default(),
            route_index = selected.route_index,
            backend = backend_name,
            weight = backend_ref.map_or(0, |b| b.weight()),
            "request routed"
        );

        let upstream = match (port.protocol, conn.version) {
            (remora_api::Protocol::Http2 | remora_api::Protocol::Grpc, _)
            | (_, Version::HTTP_2) => Upstream::Http2,
            _ => Upstream::Http1,
        };
        // Filters may have rewritten the host: forward what they left.
        let authority = authority_of(&parts.uri, &parts.headers, conn.orig_dst);
        let mirrors: Vec<&Mirror> = {
            let mut rng = rand::rng();
            route
                .filters()
                .mirrors()
                .iter()
                .chain(backend_ref.into_iter().flat_map(|b| b.filters().mirrors()))
                .filter(|m| m.sample(&mut rng))
                .collect()
        };
        let plugin_mirror = plugins.mirror.take().filter(|m| m.sample());
        let mirrored = !mirrors.is_empty() || plugin_mirror.is_some();
        // A retry or a mirror needs the body again: it streams to the first
        // attempt at once while a bounded copy is kept.
        // A meshed backend may refuse a stream its app never saw, which is
        // retried elsewhere: it needs the body again too.
        let body = if route.retry().is_some() || mirrored || backend.meshed {
            let replay = Replay::new(body, MAX_REPLAY_BODY);
            if mirrored && !replay.exceeds_cap() {
                let template = Arc::new(Template::of(&parts));
                for mirror in mirrors {
                    self.mirror(&snapshot, mirror, &template, &replay, upstream, &authority);
                }
                if let Some(target) = plugin_mirror {
                    self.mirror_to(&target, &template, &replay, &authority);
                }
            }
            Outgoing::Replay(replay)
        } else {
            Outgoing::Once(body)
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
        if let Some(r) = plugins.before_proxy(&mut parts).await {
            return (Ok(r), labels);
        }
        let result = self.send(&target, route, parts, body, &labels).await;
        let result = result.map(|response| {
            let (mut head, body) = response.into_parts();
            let own = backend_ref.map(|b| b.filters());
            for filters in std::iter::once(route.filters()).chain(own) {
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
        body: Outgoing,
        labels: &RequestLabels,
    ) -> Result<Response<Body>, ProxyError> {
        let backend = target.backend;
        let timeouts = route.timeouts();
        let retry = route.retry();
        backend.budget.deposit();

        let (replay, mut once) = match body {
            Outgoing::Replay(replay) => (Some(replay), None),
            Outgoing::Once(body) => (None, Some(body)),
        };
        // Only a request that may be retried needs its head again.
        let template = (retry.is_some() || backend.meshed).then(|| Template::of(&parts));
        let mut first = Some(parts);
        let deadline = timeouts.request.map(|d| Instant::now() + d);
        let mut attempt: u32 = 0;
        let mut avoid = Vec::new();
        loop {
            let body = match (&replay, once.take()) {
                (Some(replay), _) => replay.attempt(),
                (None, body) => body,
            };
            let req = match (first.take(), &template, body) {
                (Some(parts), _, Some(body)) => Request::from_parts(parts, body),
                (None, Some(template), Some(body)) => template.request(body),
                // Only a replayable request comes round again.
                _ => return Err(ProxyError::new(ErrorKind::Upstream, "no retry possible")),
            };
            let method = req.method().clone();
            let result = self
                .attempt(target, req, timeouts.backend_request, deadline, &mut avoid)
                .await;

            // A downstream failure is not retried: the client is gone.
            let Some(outcome) = outcome_of(&result) else {
                return result;
            };
            // A retry needs the whole body again: empty, or still all kept.
            let body_kind = match &replay {
                Some(replay) if replay.is_empty() => RequestBody::Empty,
                Some(replay) if replay.is_replayable() => RequestBody::Replayable,
                _ => RequestBody::Streamed,
            };
            let may_retry = match retry {
                Some(policy) => {
                    attempt < policy.attempts
                        && is_retryable(&method, outcome, grpc_status(&result), policy, body_kind)
                        && deadline.is_none_or(|d| Instant::now() < d)
                }
                // Without a policy, a stream the peer's sidecar refused (not
                // processed: RFC 9113 8.7) still goes once to another
                // endpoint, whatever its method.
                None => {
                    attempt == 0
                        && result.as_ref().is_err_and(|e| e.kind == ErrorKind::Refused)
                        && body_kind != RequestBody::Streamed
                }
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
        avoid: &mut Vec<std::net::SocketAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        let backend = target.backend;
        // An endpoint this request already found wrong is not tried again.
        let mut picked = None;
        for _ in 0..2 {
            match backend.balancer.pick(target.hash) {
                Some(endpoint) if avoid.contains(&endpoint.address()) => continue,
                other => {
                    picked = other;
                    break;
                }
            }
        }
        if picked.is_none() && !avoid.is_empty() {
            // The balancer keeps preferring what failed (a refusing
            // endpoint answers fast): take any other, from a random start.
            let endpoints = backend.balancer.endpoints();
            let start = rand::random_range(0..endpoints.len().max(1));
            picked = endpoints
                .iter()
                .cycle()
                .skip(start)
                .take(endpoints.len())
                .find(|e| !avoid.contains(&e.address()))
                .cloned();
        }
        let Some(endpoint) = picked else {
            let why = if avoid.is_empty() {
                format!("backend {} has no endpoints", backend.name)
            } else {
                format!(
                    "backend {}: no endpoint left to try after {} refused or proved the wrong identity",
                    backend.name,
                    avoid.len()
                )
            };
            return Err(ProxyError::new(ErrorKind::NoEndpoints, why));
        };
        let _permit = backend
            .breaker
            .try_acquire_request()
            .map_err(|open| ProxyError::new(ErrorKind::CircuitOpen, open.to_string()))?;
        let guard = endpoint.start_request();
        let peer = endpoint.peer();
        let (upstream, req) = match &peer.identity {
            Some(_) => mesh_hop(target.upstream, req),
            None => (target.upstream, req),
        };
        let send = forward(
            &self.drain,
            &backend.pool,
            &peer,
            upstream,
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
        // Neither an endpoint that proved the wrong identity nor one whose
        // sidecar refused the stream (its app is down) gets this request
        // again: a retry goes elsewhere.
        if result
            .as_ref()
            .is_err_and(|e| e.is_wrong_peer() || e.kind == ErrorKind::Refused)
        {
            avoid.push(endpoint.address());
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
        replay: &Replay,
        upstream: Upstream,
        authority: &str,
    ) {
        let Some(backend) = snapshot.backends.get(mirror.backend()).cloned() else {
            return;
        };
        let Some(body) = replay.mirror() else {
            return;
        };
        let Some(endpoint) = backend.balancer.pick(None) else {
            return;
        };
        let req = template.request(body);
        self.spawn_mirror(
            backend.pool.clone(),
            endpoint.peer(),
            upstream,
            authority,
            req,
        );
    }

    /// Sends a copy of a request where proxy-mirror says, in plaintext
    /// HTTP/1.1, and drops the answer.
    fn mirror_to(
        &self,
        target: &MirrorTarget,
        template: &Template,
        replay: &Replay,
        authority: &str,
    ) {
        let Some(body) = replay.mirror() else {
            return;
        };
        let mut req = template.request(body);
        *req.uri_mut() = target.uri(req.uri());
        *req.version_mut() = Version::HTTP_11;
        let peer = Peer::plaintext(target.addr());
        self.spawn_mirror(
            self.passthrough.clone(),
            peer,
            Upstream::Http1,
            authority,
            req,
        );
    }

    /// Sends `req` in a task of its own, within [`MIRROR_TIMEOUT`], reading
    /// and dropping the answer: the request it copies never waits for it.
    fn spawn_mirror(
        &self,
        pool: Arc<crate::pool::Pool>,
        peer: Peer,
        upstream: Upstream,
        authority: &str,
        req: Request<Body>,
    ) {
        let drain = self.drain.clone();
        let authority = authority.to_owned();
        tokio::spawn(async move {
            let exchange = async {
                let response = forward(&drain, &pool, &peer, upstream, &authority, req).await?;
                // Read the answer so the connection can be reused.
                let _ = response.into_body().collect().await;
                Ok::<_, ProxyError>(())
            };
            if let Err(e) = tokio::time::timeout(MIRROR_TIMEOUT, exchange).await {
                tracing::debug!(peer = %peer, error = %e, "mirrored request timed out");
            }
        });
    }
}

/// How long a mirrored request may take before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// What an attempt says about the endpoint, for the balancer and retries.
/// `None` when the client failed: that says nothing about the endpoint.
/// The error's kind decides, as it does for metrics and the status: a
/// downstream failure, or a refusal of the proxy's own (circuit open, no
/// endpoints), teaches nothing about the endpoint and is never retried.
fn outcome_of(result: &Result<Response<Body>, ProxyError>) -> Option<Outcome> {
    match result {
        Ok(response) => Some(Outcome::Status(response.status().as_u16())),
        Err(e) => match e.kind.retry() {
            Retry::ConnectFailure => Some(Outcome::ConnectFailure),
            Retry::ConnectionError => Some(Outcome::Error),
            Retry::Timeout => Some(Outcome::Timeout),
            Retry::Never => None,
        },
    }
}

/// Between sidecars HTTP rides HTTP/2 whatever the app speaks: an HTTP/1
/// request goes as HTTP/2 and says so in `remora-orig-proto`, so that the
/// server's sidecar hands it to its app as HTTP/1.1 again. A request that
/// upgrades the connection (WebSocket) keeps HTTP/1.1 inside the mTLS.
fn mesh_hop(upstream: Upstream, mut req: Request<Body>) -> (Upstream, Request<Body>) {
    if upstream == Upstream::Http2 || super::headers::upgrade_requested(req.headers()).is_some() {
        return (upstream, req);
    }
    req.headers_mut().insert(
        super::headers::ORIG_PROTO,
        http::HeaderValue::from_static("HTTP/1.1"),
    );
    (Upstream::Http2, req)
}

/// A request body as the attempts get it.
enum Outgoing {
    /// Sent once: no retry or mirror needs it again.
    Once(Body),
    /// Streamed to the first attempt, with a bounded copy kept.
    Replay(Replay),
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
    ProxyError::new(ErrorKind::Filter, format!("route filter: {e}"))
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
