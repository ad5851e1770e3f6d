//! Generates the gRPC echo app's client and server (`proto/echo.proto`) for
//! `grpc_apps.rs`. Needs `protoc` (Debian: protobuf-compiler), which
//! `scripts/deps.sh` installs.

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        // The tests connect through sockets made inside a pod, never with
        // the generated `connect(url)` helper.
        .build_transport(false)
        .compile_protos(&["proto/echo.proto"], &["proto"])
}
