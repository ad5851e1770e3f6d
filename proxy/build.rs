//! Generates the client of remora-cp's certificate service
//! (`api/proto/remora/identity/v1/identity.proto`) for `src/identity/`.
//! Client only, without tonic's transport helpers: the proxy dials the CA
//! through its own TLS connector. Needs `protoc` (scripts/deps.sh).

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_protos(
            &["../api/proto/remora/identity/v1/identity.proto"],
            &["../api/proto"],
        )
}
