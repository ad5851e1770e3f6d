//! The `remora-proxy` binary: parses flags, sets up logging, runs the proxy.
//! `remora-proxy wait-ready` instead waits for a running proxy to become
//! ready: the postStart hook that holds the app when the proxy is a regular
//! container (injector/src/settings.rs).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use remora_proxy::config::{Args, Config};

/// Every request allocates (headers, bodies, its boxed future): mimalloc's
/// thread-local free lists take a fifth fewer instructions per request than
/// glibc's malloc (bench/RESULTS.md, 2026-12-03).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often wait-ready asks, and how long one ask may take.
const POLL: Duration = Duration::from_millis(200);
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// `remora-proxy wait-ready`: exits 0 once the proxy's `/ready` answers
/// 200, 1 when `--timeout` passes first.
#[derive(Debug, Parser)]
#[command(name = "remora-proxy wait-ready", version)]
struct WaitReady {
    /// How long to wait (1s to 1h).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:15020")]
    admin_addr: SocketAddr,
}

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "wait-ready")
    {
        let args = WaitReady::parse_from(std::env::args_os().skip(1));
        return wait_ready(&args);
    }

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // A sidecar's memory is counted in 4 KiB pages. With transparent huge
    // pages (a node set to `always` hands them out unasked), each arena the
    // allocator touches costs 2 MiB of RSS: 8 MiB more per sidecar when
    // mimalloc still asked for them (bench/RESULTS.md, 2026-12-03).
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(error = %e, "transparent huge pages stay on: RSS may be higher");
    }
    let config = match Config::from_args(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("remora-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = remora_proxy::run(config) {
        eprintln!("remora-proxy: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn wait_ready(args: &WaitReady) -> ExitCode {
    let range = Duration::from_secs(1)..=Duration::from_secs(3600);
    if !range.contains(&args.timeout) {
        eprintln!(
            "remora-proxy wait-ready: --timeout must be 1s to 1h, not {}",
            humantime::format_duration(args.timeout)
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("remora-proxy wait-ready: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = Instant::now() + args.timeout;
    let last = runtime.block_on(async {
        loop {
            let answer = match tokio::time::timeout(ASK_TIMEOUT, ask(args.admin_addr)).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {ASK_TIMEOUT:?}")),
            };
            match answer {
                Ok(()) => return None,
                Err(last) if Instant::now() + POLL >= deadline => return Some(last),
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    });
    match last {
        None => ExitCode::SUCCESS,
        Some(last) => {
            eprintln!(
                "remora-proxy wait-ready: the proxy at {} is not ready after {}: {last}",
                args.admin_addr,
                humantime::format_duration(args.timeout)
            );
            ExitCode::FAILURE
        }
    }
}

/// One `GET /ready`: `Ok` on 200, else what it said.
async fn ask(addr: SocketAddr) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get("/ready")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status == http::StatusCode::OK {
        return Ok(());
    }
    let body = String::from_utf8_lossy(&body);
    Err(format!(
        "{} {}",
        status.as_u16(),
        body.lines().next().unwrap_or("")
    ))
}
