//! The `remora-proxy` binary: parses flags, sets up logging, runs the proxy.

use clap::Parser;
use remora_proxy::config::{Args, Config};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let config = match Config::from_args(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("remora-proxy: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = remora_proxy::run(config) {
        eprintln!("remora-proxy: {e:#}");
        std::process::exit(1);
    }
}
