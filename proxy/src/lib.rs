//! remora-proxy: Remora's sidecar data plane.
//!
//! The proxy owns a pod's captured traffic. iptables (installed by
//! `remora-init`) redirects the app's outgoing TCP to the outbound listener
//! and incoming TCP to the inbound listener. Each connection's original
//! destination is recovered, its protocol detected, and it is forwarded.
//!
//! Layout, top-down along a connection's path (docs/architecture.md draws
//! it): `listener` (accept loops, original destination, loop guard, the
//! hand-off to HTTP or TCP), `transport` (the one connector, the acceptor
//! step, protocol detection), `http` (the hyper server side and the
//! per-direction request paths), `pool` (upstream HTTP connections), then
//! the pure cores the flows call: `route`, `balance`, `resilience`; and
//! `state` (the dynamic config snapshot), `source` (the config file),
//! `body`, `error`, `direction`, `config` (startup settings), `net`, `io`,
//! `limits`, `metrics`, `drain`, `admin` (port 15020), and `identity`
//! (the workload certificate and trust bundle, from remora-cp). `fuzzing` (only
//! under `--cfg fuzzing`) holds the entry points of the fuzz targets in
//! fuzz/.

mod admin;
mod authz;
mod balance;
mod body;
pub mod config;
mod direction;
mod drain;
mod error;
#[cfg(fuzzing)]
pub mod fuzzing;
mod http;
mod identity;
mod io;
mod limits;
mod listener;
mod metrics;
mod net;
mod plugins;
mod pool;
mod resilience;
mod route;
mod source;
mod state;
mod transport;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

pub use admin::{AppProbeAction, AppProbeCheck, AppProbes, AppProbesError};
pub use config::Config;
pub use plugins::PluginCheck;

use crate::config::IpFamilyMode;
use crate::direction::Direction;
use crate::drain::{Drain, DrainOutcome};
use crate::http::HttpProxy;
use crate::limits::ConnectionLimit;
use crate::listener::Proxy;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::state::State;

/// A map for lookups on every request whose keys only config inserts
/// (services by address, backends, pooled endpoints): foldhash, seeded per
/// process, where std's SipHash cost a few hundred instructions a lookup.
/// A map whose keys clients choose (rate-limit keys) keeps SipHash: a
/// flood of crafted keys must not make it slow.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Runs the proxy until it has drained (after SIGTERM, SIGINT or
/// `POST /drain`).
pub fn run(config: Config) -> anyhow::Result<()> {
    // Before any thread or socket exists: the limit is the process's.
    let nofile = limits::raise_nofile_limit();
    let max_connections = limits::max_connections(config.max_connections, nofile);
    // One worker: a current-thread runtime skips the work-stealing
    // machinery entirely, as Linkerd does on a single core.
    let mut builder = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.workers);
        builder
    };
    let runtime = builder
        .thread_name("remora-worker")
        .enable_all()
        .build()
        .context("building the data-plane runtime")?;
    runtime.block_on(serve(Arc::new(config), max_connections))
}

async fn serve(config: Arc<Config>, max_connections: usize) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let drain = Drain::new().with_tcp_idle_timeout(config.tcp_idle_timeout);
    let (ready_tx, ready_rx) = watch::channel(false);
    // Without --ca-addr there is no identity: no mesh mTLS either way, and
    // endpoints that expect an identity cannot be reached.
    let identity = match &config.identity {
        Some(identity) => {
            Some(identity::spawn(identity, &metrics).context("starting the certificate client")?)
        }
        None => None,
    };
    let mesh_tls = match &identity {
        Some(identity) => {
            Some(transport::MeshTls::follow(identity.clone()).context("setting up mesh TLS")?)
        }
        None => None,
    };
    let connector = Arc::new(transport::Connector::mesh(
        mesh_tls.clone(),
        metrics.clone(),
    ));
    let state = Arc::new(State::with_connector(
        config.clone(),
        metrics.clone(),
        connector,
    ));

    if let Some(discovery) = &config.discovery {
        let roots = identity::read_roots(&discovery.ca_roots)
            .context("reading the roots for the discovery client")?;
        source::discovery::spawn(discovery, roots, identity.clone(), state.clone(), &metrics)
            .context("starting the discovery client")?;
    }

    let admin = std::net::TcpListener::bind(config.admin_addr).with_context(|| {
        format!(
            "binding the admin server on {}; is another proxy already running in this pod?",
            config.admin_addr
        )
    })?;
    spawn_admin(
        admin,
        admin::AdminState {
            metrics: metrics.clone(),
            drain: drain.clone(),
            ready: ready_rx,
            state: state.clone(),
            identity,
        },
    )?;

    if let Some(path) = &config.config_path {
        // The first config must be good: there is no last good one to keep.
        source::load(path, &state).context("loading the mesh config")?;
        source::watch(
            path.clone(),
            state.clone(),
            tokio::runtime::Handle::current(),
        )
        .context("watching the mesh config")?;
    }

    let listeners = bind_listeners(&config)?;
    let http = Arc::new(HttpProxy {
        metrics: metrics.clone(),
        state: state.clone(),
        passthrough: Pool::new(
            state::passthrough_pool_settings(&config),
            state.connector().clone(),
            None,
        ),
        inbound: Pool::new(
            state::inbound_pool_settings(&config),
            state.connector().clone(),
            None,
        ),
        drain: drain.clone(),
    });
    let acceptor = transport::Acceptor::mesh(mesh_tls, metrics.clone());
    let proxy = Arc::new(Proxy {
        config: config.clone(),
        metrics,
        drain: drain.clone(),
        state,
        http,
        acceptor,
    });
    // One limit per direction, shared by its IPv4 and IPv6 sockets.
    let outbound_limit = ConnectionLimit::new(max_connections);
    let inbound_limit = ConnectionLimit::new(max_connections);
    let mut accept_loops = Vec::new();
    for (listener, direction) in listeners {
        let limit = match direction {
            Direction::Outbound => outbound_limit.clone(),
            Direction::Inbound => inbound_limit.clone(),
        };
        accept_loops.push(tokio::spawn(
            proxy.clone().serve(listener, direction, limit),
        ));
    }
    let _ = ready_tx.send(true);
    info!(
        outbound = config.outbound_port,
        inbound = config.inbound_port,
        admin = %config.admin_addr,
        workers = config.workers,
        max_connections,
        tcp_idle_timeout = ?config.tcp_idle_timeout,
        "remora-proxy ready"
    );

    tokio::select! {
        () = drain.started() => {}
        () = shutdown_signal() => {
            info!("termination signal received; draining");
            drain.start();
        }
    }
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    match drain.wait(config.drain_deadline).await {
        DrainOutcome::Clean => info!("drained: every connection finished"),
        DrainOutcome::Forced(open) => {
            warn!(open, deadline = ?config.drain_deadline, "drain deadline passed; closed the rest by force")
        }
    }
    Ok(())
}

/// Binds the outbound and inbound capture listeners on IPv4, and on IPv6
/// when enabled.
fn bind_listeners(config: &Config) -> anyhow::Result<Vec<(TcpListener, Direction)>> {
    let mut listeners = Vec::new();
    for (port, direction) in [
        (config.outbound_port, Direction::Outbound),
        (config.inbound_port, Direction::Inbound),
    ] {
        let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let listener =
            net::bind(v4).with_context(|| format!("binding the {direction} listener on {v4}"))?;
        listeners.push((listener, direction));

        let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        match (config.ipv6, net::bind(v6)) {
            (IpFamilyMode::False, _) => {}
            (_, Ok(listener)) => listeners.push((listener, direction)),
            (IpFamilyMode::Auto, Err(e)) => {
                warn!(error = %e, %v6, "IPv6 unavailable; listening on IPv4 only")
            }
            (IpFamilyMode::True, Err(e)) => {
                return Err(e).with_context(|| format!("binding the {direction} listener on {v6}"))
            }
        }
    }
    Ok(listeners)
}

/// Runs the admin server on a thread of its own.
fn spawn_admin(listener: std::net::TcpListener, state: admin::AdminState) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the admin runtime")?;
    std::thread::Builder::new()
        .name("remora-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => admin::serve(listener, state).await,
                    Err(e) => warn!(error = %e, "admin server failed to start"),
                }
            })
        })
        .context("starting the admin thread")?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; drain with POST /drain");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
