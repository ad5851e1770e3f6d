//! Generates the clients of remora-cp's certificate service
//! (`api/proto/remora/identity/v1/identity.proto`) for `src/identity/` and
//! of its discovery service (`api/proto/remora/discovery/v1/discovery.proto`)
//! for `src/source/discovery/`. Clients only, without tonic's transport
//! helpers: the proxy dials remora-cp through its own TLS connection.
//! Needs `protoc` (scripts/deps.sh).

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_protos(
            &[
                "../api/proto/remora/identity/v1/identity.proto",
                "../api/proto/remora/discovery/v1/discovery.proto",
            ],
            &["../api/proto"],
        )
}
