//! The pods-as-network-namespaces harness for Remora's end-to-end tests.
//!
//! A [`TestNet`] is a private "node": a network namespace holding a bridge
//! (`10.99.0.1/24`, `fd00:99::1/64`). Each [`Pod`] is another namespace cabled
//! to that bridge with a veth pair, addressed `10.99.0.N` and `fd00:99::N`.
//! Tests run app code inside a pod with [`Pod::enter`] (or the socket helpers
//! built on it), set up capture with [`Pod::run_init`] and run the sidecar
//! with [`Pod::start_proxy`], exactly as uid 1337 inside the pod; a real
//! control plane (the CA) runs in a pod with [`Pod::start_control_plane`].
//!
//! The harness never touches the root namespace's network, and everything it
//! creates is torn down on drop, even when the test panics. It owns the
//! plumbing only; what a test asserts lives in `tests/tests/*.rs`.

mod admin;
mod apps;
mod binaries;
mod control_plane;
pub mod file_mesh;
pub mod grpc_apps;
pub mod http_apps;
mod iptables;
pub mod mesh_config;
pub mod metrics;
mod netns;
mod proxy;
pub mod ws;

pub use admin::HttpResponse;
pub use apps::{assert_closed_without_data, echo, exchange, round_trip, App};
pub use binaries::bin_dir;
pub use control_plane::{
    write_readable, ControlPlane, TokenEntry, CA_PORT, CLIENT, CLIENT_ID, INTRUDER, INTRUDER_ID,
    SERVER, SERVER_ID,
};
pub use grpc_apps::GrpcApp;
pub use iptables::Family;
pub use metrics::{Metrics, Sample, INBOUND, OUTBOUND};
pub use netns::{Pod, TestNet};
pub use proxy::{ProxyHandle, DEFAULT_INIT_ARGS, PROXY_UID};

use std::time::Duration;

/// The default bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<F: std::future::Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}
