//! Inbound HTTP: requests arriving for the app in this pod are authorized,
//! run through the port's plugins (or its matching inbound route's), then
//! forwarded to the app over pooled connections, from the loopback source
//! the capture rules leave alone, with `x-forwarded-proto` as this proxy
//! saw the request and without headers only the proxy may set on the
//! app's responses.
//!
//! A request from a mesh peer carries the identity the peer proved to the
//! app (`x-remora-client-id`), reaches the app in the HTTP version the
//! peer's app spoke (the hop between sidecars is HTTP/2), and, when the app
//! cannot be reached, is refused on the hop (REFUSED_STREAM) so that the
//! peer may retry it elsewhere.

use http::{Request, Response, Version};

use super::{
    authority_of, forward, headers, Body, ConnInfo, ErrorKind, HttpProxy, MeshHop, Peer,
    ProxyError, Upstream,
};
use std::sync::Arc;

use crate::authz::{Decision, Subject};
use crate::metrics::RequestLabels;
use crate::plugins::{Chain, Ctx};
use crate::state::Snapshot;
use crate::transport::Identity;

impl HttpProxy {
    pub(super) async fn inbound(
        &self,
        conn: &ConnInfo,
        req: Request<Body>,
        snapshot: Arc<Snapshot>,
        plugins: &mut Ctx<'_>,
    ) -> (Result<Response<Body>, ProxyError>, RequestLabels) {
        let mut labels = RequestLabels {
            client_id: conn
                .peer_identity
                .as_ref()
                .map(Identity::shared)
                .unwrap_or_default(),
            ..RequestLabels::default()
        };
        if !snapshot.authorizer.is_open() {
            let subject = Subject {
                identity: conn.peer_identity.as_ref(),
                port: conn.orig_dst.port(),
                http: Some((req.uri().path(), req.method())),
            };
            if let Decision::Deny { policy, rule } = snapshot.authorizer.decide(&subject) {
                self.metrics.authz_denied(&policy, &rule);
                let who = conn
                    .peer_identity
                    .as_ref()
                    .map_or("a plaintext client", |id| id.as_str());
                let why = format!(
                    "{who} may not {} {} (authorization policy {policy}, rule {rule})",
                    req.method(),
                    req.uri().path()
                );
                return (Err(ProxyError::new(ErrorKind::Forbidden, why)), labels);
            }
        }
        tracing::debug!(
            client_id = conn.peer_identity.as_ref().map_or("", |id| id.as_str()),
            peer = %conn.peer,
            method = %req.method(),
            path = req.uri().path(),
            "inbound request"
        );
        let (mut parts, body) = req.into_parts();
        // The port's plugins, or its matching route's.
        let chain = match snapshot.plugins.inbound_port(conn.orig_dst.port()) {
            Some(port) => {
                let (chain, route) = port.select(&parts);
                plugins.route = route.clone();
                labels.route = route;
                chain.clone()
            }
            None => Chain::default(),
        };
        if let Some(r) = plugins.request_phases(&chain, &mut parts).await {
            return (Ok(r), labels);
        }
        let mut req = Request::from_parts(parts, body);
        let authority = authority_of(req.uri(), req.headers(), conn.orig_dst);
        if let Some(peer) = &conn.forwarded_for {
            if snapshot.http.x_forwarded_for == remora_api::XForwardedFor::Append {
                headers::append_forwarded_for(req.headers_mut(), peer);
            }
        }
        headers::set_forwarded_proto(req.headers_mut());
        let hop = req.extensions().get::<MeshHop>().copied();
        if let Some(value) = &conn.client_id {
            req.headers_mut().insert(headers::CLIENT_ID, value.clone());
        }
        let upstream = match (conn.version, hop) {
            (Version::HTTP_2, Some(MeshHop { app_http1: true })) => Upstream::Http1,
            (Version::HTTP_2, _) => Upstream::Http2,
            _ => Upstream::Http1,
        };
        let result = forward(
            &self.drain,
            &self.inbound,
            &Peer::plaintext(conn.orig_dst),
            upstream,
            &authority,
            req,
        )
        .await
        .map(|mut response| {
            // The app cannot speak for the mesh.
            headers::strip_owned(response.headers_mut(), &headers::OWNED_RESPONSE_HEADERS);
            response
        })
        .map_err(|e| match (e.kind, hop) {
            // Nothing reached the app: the peer's sidecar may try another.
            (ErrorKind::Connect, Some(_)) if conn.version == Version::HTTP_2 => {
                ProxyError::new(ErrorKind::Refused, e.to_string())
            }
            _ => e,
        });
        (result, labels)
    }
}
