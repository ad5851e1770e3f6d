//! Inbound HTTP: requests arriving for the app in this pod are forwarded to
//! it over pooled connections, from the loopback source the capture rules
//! leave alone, with `x-forwarded-proto` as this proxy saw the request and
//! without headers only the proxy may set on the app's responses. Policy
//! (authorization, plugins) will run here.

use http::{Request, Response, Version};

use super::{
    authority_of, forward, headers, Body, ConnInfo, HttpProxy, Peer, ProxyError, Upstream,
};
use std::sync::Arc;

use crate::metrics::RequestLabels;
use crate::state::Snapshot;

impl HttpProxy {
    pub(super) async fn inbound(
        &self,
        conn: &ConnInfo,
        mut req: Request<Body>,
        snapshot: Arc<Snapshot>,
    ) -> (Result<Response<Body>, ProxyError>, RequestLabels) {
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
        (result, RequestLabels::default())
    }
}
