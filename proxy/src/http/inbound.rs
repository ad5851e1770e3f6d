//! Inbound HTTP: requests arriving for the app in this pod are forwarded to
//! it over pooled connections, from the loopback source the capture rules
//! leave alone, with `x-forwarded-proto` as this proxy saw the request and
//! without headers only the proxy may set on the app's responses. Policy
//! (authorization) will run here; the port's plugins, or its matching
//! inbound route's, run before the request goes to the app.

use http::{Request, Response, Version};

use super::{
    authority_of, forward, headers, Body, ConnInfo, HttpProxy, Peer, ProxyError, Upstream,
};
use std::sync::Arc;

use crate::metrics::RequestLabels;
use crate::plugins::{Chain, Ctx};
use crate::state::Snapshot;

impl HttpProxy {
    pub(super) async fn inbound(
        &self,
        conn: &ConnInfo,
        req: Request<Body>,
        snapshot: Arc<Snapshot>,
        plugins: &mut Ctx<'_>,
    ) -> (Result<Response<Body>, ProxyError>, RequestLabels) {
        let (mut parts, body) = req.into_parts();
        let mut labels = RequestLabels::default();
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
        if snapshot.http.x_forwarded_for == remora_api::XForwardedFor::Append {
            headers::append_forwarded_for(req.headers_mut(), conn.peer.ip());
        }
        headers::set_forwarded_proto(req.headers_mut());
        let upstream = match conn.version {
            Version::HTTP_2 => Upstream::Http2,
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
        });
        (result, labels)
    }
}
