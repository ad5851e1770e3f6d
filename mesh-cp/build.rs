//! Generates the certificate service (`api/proto/remora/identity/v1/identity.proto`):
//! the server for remora-cp and the client for its tests (and, later, the proxy).
//! Needs `protoc` (Debian: protobuf-compiler), which `scripts/deps.sh` installs.

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure().compile_protos(
        &["../api/proto/remora/identity/v1/identity.proto"],
        &["../api/proto"],
    )
}
