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
        let _ = crate::detect::classify(&bytes[..end]);
    }
    if bytes.is_empty() {
        return;
    }
    let long: Vec<u8> = bytes.iter().copied().cycle().take(DECIDED_WITHIN).collect();
    assert!(
        crate::detect::classify(&long).is_some(),
        "no verdict after {DECIDED_WITHIN} bytes"
    );
}
