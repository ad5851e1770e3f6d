//! Generates the certificate service (`api/proto/remora/identity/v1/identity.proto`)
//! and the discovery service (`api/proto/remora/discovery/v1/discovery.proto`):
//! the servers for remora-cp and the clients for its tests.
//! Needs `protoc` (Debian: protobuf-compiler), which `scripts/deps.sh` installs.

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure().compile_protos(
        &[
            "../api/proto/remora/identity/v1/identity.proto",
            "../api/proto/remora/discovery/v1/discovery.proto",
        ],
        &["../api/proto"],
    )
}
