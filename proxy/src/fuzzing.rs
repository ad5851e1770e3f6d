//! Entry points for the cargo-fuzz targets in fuzz/, one function per
//! target, each taking the fuzzer's bytes. Built only under `--cfg fuzzing`
//! (cargo fuzz sets it), so none of this is in the proxy.
//!
//! Each function drives a real part of the proxy with hostile input and
//! panics only when a property that must hold for every input breaks; an
//! input that is merely refused is fine. To add a target, add a function
//! here and follow docs/fuzzing.md.

use std::sync::Arc;

use clap::Parser as _;
use remora_api::{MeshConfig, ParseLimits};

use crate::config::{Args, Config};
use crate::metrics::Metrics;
use crate::state::State;

/// Bytes as a config file: parsed within the default limits, validated,
/// and compiled into a snapshot twice (fresh, then over itself, as a reload
/// of the same file would). A config that parses must also survive a trip
/// through JSON unchanged, as the control plane will send it.
pub fn config(bytes: &[u8]) {
    let Ok(config) = MeshConfig::parse(bytes, &ParseLimits::DEFAULT) else {
        return;
    };
    let json = serde_json::to_vec(&config)
        .unwrap_or_else(|e| panic!("accepted config does not serialize: {e}"));
    match MeshConfig::parse(&json, &ParseLimits::DEFAULT) {
        Ok(again) => assert!(again == config, "config changed on its way through JSON"),
        Err(e) => panic!("accepted config is refused as JSON: {e}"),
    }
    // Compiling spawns background tasks (pool sweeps, health checks). The
    // runtime is entered but never driven, so none of them runs, and none
    // touches the network; dropping it drops them.
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    let _entered = runtime.enter();
    let startup = Config::from_args(Args::parse_from(["remora-proxy"]))
        .unwrap_or_else(|e| panic!("the default flags are refused: {e}"));
    let state = State::new(Arc::new(startup), Metrics::new());
    if state.apply(config.clone()).is_ok() {
        let _ = state.apply(config);
    }
}

/// Detection's longest wait: `detect`'s longest request line (8 KiB),
/// plus one byte.
const DECIDED_WITHIN: usize = 8 * 1024 + 1;

/// Bytes as the first bytes of a connection, as they arrive: every prefix
/// is classified. Then the bytes, repeated to [`DECIDED_WITHIN`], must get a
/// verdict, or a client could hold a connection in detection forever by
/// sending slowly.
pub fn detect(bytes: &[u8]) {
    for end in 0..=bytes.len() {
        let _ = crate::transport::detect::classify(&bytes[..end]);
    }
    if bytes.is_empty() {
        return;
    }
    let long: Vec<u8> = bytes.iter().copied().cycle().take(DECIDED_WITHIN).collect();
    assert!(
        crate::transport::detect::classify(&long).is_some(),
        "no verdict after {DECIDED_WITHIN} bytes"
    );
}

/// Bytes as the start of an HTTP/1 connection: parsed by hyper's server as
/// the proxy configures it, and every request that parses goes through the
/// proxy's admission (`http::admit`) under the default settings. A request
/// admitted must come out clean: its path normalised for good (normalising
/// it again changes nothing) with no dot-segment left, exactly one valid
/// `Host`, no `Upgrade: h2c` and no `HTTP2-Settings`, and no header the
/// proxy owns.
pub fn http1_head(bytes: &[u8]) {
    use http::header;
    use tokio::io::AsyncWriteExt as _;

    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    let settings = remora_api::HttpSettings::default();
    let max_headers = usize::try_from(settings.max_headers).unwrap_or(100);
    runtime.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let settings = settings.clone();
                async move {
                    let mut req = req.map(|_| ());
                    if crate::http::admit_for_fuzzing(&mut req, &settings).is_ok() {
                        check_admitted(&req, &settings);
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::new(crate::body::empty()))
                }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_headers(max_headers)
            .max_buf_size(64 * 1024)
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        let feed = async move {
            let _ = client.write_all(bytes).await;
            let _ = client.shutdown().await;
            // Keep reading so responses never block the server.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(conn, feed)
        })
        .await;
    });

    fn check_admitted(req: &http::Request<()>, settings: &remora_api::HttpSettings) {
        let path = req.uri().path();
        assert!(
            !path.split('/').any(|s| s == ".." || s == "."),
            "a dot-segment survived admission: {path:?}"
        );
        let mut again = req.clone();
        if crate::http::admit_for_fuzzing(&mut again, settings).is_ok() {
            assert_eq!(again.uri(), req.uri(), "admission is not idempotent");
        }
        let hosts = req.headers().get_all(header::HOST).iter().count();
        assert!(hosts <= 1, "{hosts} Host headers after admission");
        assert!(
            !req.headers().contains_key("http2-settings"),
            "HTTP2-Settings survived admission"
        );
        for upgrade in req.headers().get_all(header::UPGRADE) {
            let upgrade = String::from_utf8_lossy(upgrade.as_bytes()).to_ascii_lowercase();
            assert!(
                !upgrade.contains("h2c"),
                "Upgrade: {upgrade} survived admission"
            );
        }
        assert!(
            !req.headers().contains_key("remora-error"),
            "a header the proxy owns survived admission"
        );
    }
}
