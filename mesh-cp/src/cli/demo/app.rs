//! The demo's server app (`remora demo-app`, hidden): plain HTTP/1.1 on
//! the pod's port, answering every path with its name and the caller's
//! identity as its sidecar passed it in `x-remora-client-id`. It knows
//! nothing of the mesh; what it prints is what the server saw.

use std::net::SocketAddr;

use axum::http::HeaderMap;
use axum::Router;

/// The header the server's sidecar sets from the client's certificate
/// (docs/mtls.md).
pub const CLIENT_ID_HEADER: &str = "x-remora-client-id";

/// The reply to a request with these headers.
pub fn reply(name: &str, headers: &HeaderMap) -> String {
    let id = headers
        .get(CLIENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)");
    format!("{name} saw {CLIENT_ID_HEADER}: {id}\n")
}

/// Serves until the process is stopped (SIGTERM's default action).
pub async fn serve(name: String, listen: SocketAddr) -> std::io::Result<()> {
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let body = reply(&name, &headers);
        async move { body }
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_names_the_app_and_the_identity_it_saw() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            reply("hello-v1", &headers),
            "hello-v1 saw x-remora-client-id: (none)\n"
        );
        headers.insert(
            CLIENT_ID_HEADER,
            "spiffe://cluster.local/ns/demo/sa/client".parse().unwrap(),
        );
        assert_eq!(
            reply("hello-v2", &headers),
            "hello-v2 saw x-remora-client-id: spiffe://cluster.local/ns/demo/sa/client\n"
        );
    }
}
