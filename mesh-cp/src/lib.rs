//! remora-cp: the control plane: the mesh CA and its certificate service,
//! and the discovery service that streams each proxy its config, both gRPC
//! over TLS on 15012, with an admin server (/live, /ready, /metrics on
//! 15014). Discovery serves the `MeshView` the sources' publisher
//! (`source`) translates, or the one it is given (`start_with_view`).
//! With `--admin-token-file`, the Admin API (`admin_api`, 127.0.0.1:15013)
//! writes objects into the file source's directory.
//!
//! This file is the wiring: it loads the root, builds the CA, binds the
//! listeners, renews what expires, and drains on shutdown.

pub mod admin;
pub mod admin_api;
pub mod auth;
pub mod ca;
pub mod cli;
pub mod config;
pub mod crds;
pub mod discovery;
pub mod identity;
pub mod lease;
pub mod metrics;
pub mod roots_config_map;
pub mod service;
pub mod source;
pub mod source_dir;
pub mod source_kube;
pub mod status;
pub mod tls;
pub mod translate;
pub mod view;

/// The generated certificate service (api/proto/remora/identity/v1).
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod proto {
    tonic::include_proto!("remora.identity.v1");

    /// The generated discovery service (api/proto/remora/discovery/v1).
    pub mod discovery {
        tonic::include_proto!("remora.discovery.v1");
    }
}

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::{AdminState, Readiness};
use crate::auth::kubernetes::TokenReviewer;
use crate::auth::{Authenticator, TokenFile};
use crate::ca::store::{self, RootOrigin};
use crate::ca::{Ca, Lifetimes, RootMaterial};
use crate::config::{AuthMode, Config, RootSource};
use crate::metrics::Metrics;
use crate::tls::ServingCert;

/// gRPC messages larger than this are refused by tonic before decoding.
/// The handler's own limits (16 KiB CSR, 8 KiB token) sit well inside it.
pub const MAX_GRPC_MESSAGE: usize = 64 * 1024;

/// Discovery requests (subscribes, acks) are small; a proxy sending more
/// than this in one message is refused by tonic.
pub const MAX_DISCOVERY_REQUEST: usize = 64 * 1024;
/// The largest push: one destination with thousands of endpoints fits.
pub const MAX_DISCOVERY_PUSH: usize = 4 * 1024 * 1024;

/// The renewal task looks at the intermediate and the serving certificate
/// this often at most (more often when lifetimes are short).
const RENEW_CHECK_MAX: Duration = Duration::from_secs(30);

/// How often to look: a tenth of the shortest lifetime, at most 30 s, so a
/// renewal is never late by more than a small part of a lifetime.
fn renew_interval(config: &Config) -> Duration {
    (config.cert_lifetime.min(config.intermediate_lifetime) / 10).min(RENEW_CHECK_MAX)
}

/// A certificate is due for renewal once half its life is gone, or once
/// less than `must_fit` (plus two checks of slack) is left: the
/// intermediate must always outlive the longest leaf it may still sign.
fn renewal_due(
    not_after: SystemTime,
    now: SystemTime,
    lifetime: Duration,
    must_fit: Duration,
    check: Duration,
) -> bool {
    let keep = (lifetime / 2).max(must_fit + 2 * check);
    not_after < now + keep
}

/// A started control plane.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The Admin API's address, when it is on (`--admin-token-file`).
    pub admin_api_addr: Option<SocketAddr>,
    drain: watch::Sender<bool>,
    admin_stop: watch::Sender<bool>,
    ready: watch::Sender<Readiness>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    admin: JoinHandle<std::io::Result<()>>,
    deadline: Duration,
    /// The translated mesh, when a source is configured (`--source-dir`,
    /// `--kubernetes`).
    pub view: Option<watch::Receiver<view::MeshView>>,
    /// With `--kubernetes`: whether this replica leads.
    pub leader: Option<watch::Receiver<bool>>,
    lease: Option<JoinHandle<()>>,
    /// Each translation's store and problems, with a source (status
    /// write-back reads it; see `source::Snapshot`).
    pub snapshots: Option<watch::Receiver<Arc<source::Snapshot>>>,
}

/// With `--kubernetes`: the leader election, and the status writer that
/// runs while leading.
struct Kubernetes {
    leader: watch::Receiver<bool>,
    lease: JoinHandle<()>,
}

/// Starts the leader election, the status writer and the trust roots
/// ConfigMap writer; the status writer gets each translation's store and
/// problems from `snapshots`, the ConfigMap writer its namespaces, and the
/// trust bundle from `roots`.
fn start_kubernetes(
    client: kube::Client,
    config: &Config,
    metrics: &Metrics,
    mut snapshots: watch::Receiver<Arc<source::Snapshot>>,
    roots: watch::Receiver<String>,
    drain: &watch::Receiver<bool>,
) -> Kubernetes {
    let (leader, lease) = lease::Elector::new(client.clone(), config.lease.clone())
        .spawn(metrics.leader.clone(), drain.clone());
    let input_of = |s: &source::Snapshot| {
        Arc::new(status::Input {
            store: s.store.clone(),
            problems: s.problems.clone(),
        })
    };
    tokio::spawn(
        roots_config_map::Writer::new(
            client.clone(),
            config.roots_config_map.clone(),
            metrics.roots_config_map_writes.clone(),
            metrics.watch_errors.clone(),
        )
        .run(snapshots.clone(), roots, leader.clone(), drain.clone()),
    );
    let (input_tx, input) = watch::channel(input_of(&snapshots.borrow_and_update()));
    tokio::spawn(async move {
        while snapshots.changed().await.is_ok() {
            let next = input_of(&snapshots.borrow_and_update());
            if input_tx.send(next).is_err() {
                return;
            }
        }
    });
    tokio::spawn(
        status::Writer::new(client, config.status, metrics.status_writes.clone()).run(
            input,
            leader.clone(),
            drain.clone(),
        ),
    );
    tracing::info!(lease = %config.lease.name, identity = %config.lease.identity, "leader election started");
    Kubernetes { leader, lease }
}

/// Everything the CA is built from, kept to rebuild it with a new intermediate.
#[derive(Debug)]
struct CaInputs {
    trust_domain: String,
    root: RootMaterial,
    extra_roots: Vec<(String, String)>,
    lifetimes: Lifetimes,
}

impl CaInputs {
    fn build(&self, now: SystemTime) -> anyhow::Result<Ca> {
        Ok(Ca::new(
            &self.trust_domain,
            &self.root,
            &self.extra_roots,
            self.lifetimes,
            now,
        )?)
    }
}

fn load_root(config: &Config, now: SystemTime) -> anyhow::Result<RootMaterial> {
    let (root, origin) = match &config.root {
        RootSource::StateDir(dir) => {
            store::load_or_generate(dir, &config.trust_domain, config.root_lifetime, now)?
        }
        RootSource::Files { cert, key } => (
            RootMaterial {
                cert_pem: store::read_pem(cert)?,
                key_pem: store::read_pem(key)?,
            },
            RootOrigin::Supplied,
        ),
    };
    tracing::info!(?origin, source = ?config.root, "signing root loaded");
    Ok(root)
}

fn read_extra_roots(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    paths
        .iter()
        .map(|p| Ok((p.display().to_string(), store::read_pem(p)?)))
        .collect()
}

/// Starts the control plane; returns once both listeners are bound and it
/// is ready. Discovery serves the `--view-file` view (reloaded on SIGHUP)
/// or, without one, an empty mesh.
pub async fn start(config: Arc<Config>) -> anyhow::Result<Running> {
    let view = match &config.view_file {
        Some(path) => {
            let view = discovery::view_file::load(path)?;
            tracing::info!(version = view.version, path = %path.display(), "view file loaded");
            let (tx, rx) = watch::channel(Arc::new(view));
            tokio::spawn(
                discovery::view_file::reload_on_hangup(path.clone(), tx)
                    .context("listening for SIGHUP to reload the view file")?,
            );
            rx
        }
        None => watch::channel(Arc::new(view::MeshView::default())).1,
    };
    start_with_view(config, view).await
}

/// The file source's views as discovery reads them: each published whole
/// behind an `Arc`, so a stream's slice never copies the mesh.
fn share(mut rx: watch::Receiver<view::MeshView>) -> watch::Receiver<Arc<view::MeshView>> {
    let (tx, out) = watch::channel(Arc::new(rx.borrow_and_update().clone()));
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let next = Arc::new(rx.borrow_and_update().clone());
            if tx.send(next).is_err() {
                return;
            }
        }
    });
    out
}

/// Starts the control plane serving `view` to the proxies.
pub async fn start_with_view(
    config: Arc<Config>,
    view: watch::Receiver<Arc<view::MeshView>>,
) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new().context("metrics registry")?);
    let (ready_tx, ready_rx) = watch::channel(Readiness::Starting);
    let (drain_tx, drain_rx) = watch::channel(false);
    // The admin server outlives the gRPC drain, so /ready says "draining"
    // rather than refusing connections while calls finish.
    let (admin_stop_tx, mut admin_stop) = watch::channel(false);

    let admin_listener = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.admin_addr))?;
    let admin_addr = admin_listener.local_addr()?;
    let router = admin::router(AdminState {
        metrics: metrics.clone(),
        ready: ready_rx,
    });
    let admin = tokio::spawn(async move {
        axum::serve(admin_listener, router)
            .with_graceful_shutdown(async move {
                let _ = admin_stop.wait_for(|d| *d).await;
            })
            .await
    });

    let now = SystemTime::now();
    let inputs = CaInputs {
        trust_domain: config.trust_domain.clone(),
        root: load_root(&config, now)?,
        extra_roots: read_extra_roots(&config.extra_trust_roots)?,
        lifetimes: Lifetimes {
            leaf_default: config.cert_lifetime,
            leaf_max: config.cert_max_lifetime,
            intermediate: config.intermediate_lifetime,
        },
    };
    let ca = inputs.build(now)?;
    publish_ca_metrics(&metrics, &ca);
    let (server_cert, server_key) = ca.issue_server(
        &config.identity,
        &config.dns_names,
        config.cert_lifetime,
        now,
    )?;
    let serving = Arc::new(ServingCert::new(&server_cert, server_key)?);
    // The trust bundle as the roots ConfigMap carries it; `renew` follows
    // a rebuilt CA.
    let (roots_tx, roots_rx) = watch::channel(roots_config_map::bundle_pem(ca.trust_bundle()));
    let ca = Arc::new(ArcSwap::from_pointee(ca));

    let auth = authenticator(&config, &metrics).await?;
    // One client for the Kubernetes source, the Lease and status writes.
    let client = match config.kubernetes {
        true => Some(kube::Client::try_default().await.context(
            "connecting to the Kubernetes API server for --kubernetes (in a pod, its service account; outside, the kubeconfig)",
        )?),
        false => None,
    };

    let grpc_listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC listener on {}", config.grpc_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let (conn_tx, conn_rx) = mpsc::channel(64);
    tokio::spawn(tls::accept_loop(
        grpc_listener,
        tls::server_config(serving.clone(), ca.load().trust_bundle())?,
        conn_tx,
        drain_rx.clone(),
    ));
    let service = proto::certificates_server::CertificatesServer::new(
        service::CertificateService::new(ca.clone(), auth, metrics.clone()),
    )
    .max_decoding_message_size(MAX_GRPC_MESSAGE)
    .max_encoding_message_size(MAX_GRPC_MESSAGE);
    // The sources, when there are any, are what discovery serves.
    let sources = start_sources(&config, &metrics, client.clone()).await?;
    let kubernetes = match (client, &sources) {
        (Some(client), Some(out)) => Some(start_kubernetes(
            client,
            &config,
            &metrics,
            out.snapshots.clone(),
            roots_rx,
            &drain_rx,
        )),
        _ => None,
    };
    // The Admin API writes into the file source's directory.
    let admin_api_addr = match (&config.admin_api, &config.source_dir) {
        (Some(settings), Some(dir)) => Some(
            start_admin_api(
                settings,
                dir,
                translate_options(&config),
                &metrics,
                drain_rx.clone(),
            )
            .await?,
        ),
        _ => None,
    };
    let view = match &sources {
        Some(out) => share(out.views.clone()),
        None => view,
    };
    let discovery = proto::discovery::discovery_server::DiscoveryServer::new(
        discovery::DiscoveryService::new(view, drain_rx.clone(), metrics.clone(), config.discovery),
    )
    .max_decoding_message_size(MAX_DISCOVERY_REQUEST)
    .max_encoding_message_size(MAX_DISCOVERY_PUSH);
    let mut grpc_drain = drain_rx.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .timeout(Duration::from_secs(10))
            .concurrency_limit_per_connection(64)
            // Discovery streams live for hours: find dead peers.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(service)
            .add_service(discovery)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(conn_rx),
                async move {
                    let _ = grpc_drain.wait_for(|d| *d).await;
                },
            ),
    );

    tokio::spawn(renew(
        config.clone(),
        inputs,
        Published {
            ca,
            roots: roots_tx,
        },
        serving,
        server_cert.not_after,
        metrics,
        drain_rx,
    ));

    match &sources {
        None => {
            let _ = ready_tx.send(Readiness::Ready);
        }
        Some(out) => {
            // Ready once every source delivered its initial state: at
            // once for the file source; after every initial list for the
            // Kubernetes source (not awaited here).
            let mut source_ready = out.ready.clone();
            let ready = ready_tx.clone();
            let wait = async move {
                if source_ready.wait_for(|r| *r).await.is_ok() {
                    ready.send_if_modified(|r| {
                        let starting = *r == Readiness::Starting;
                        if starting {
                            *r = Readiness::Ready;
                        }
                        starting
                    });
                }
            };
            if config.kubernetes {
                tokio::spawn(wait);
            } else {
                wait.await;
            }
        }
    }
    tracing::info!(%grpc_addr, %admin_addr, ?admin_api_addr, identity = %config.identity, "remora-cp started");
    Ok(Running {
        grpc_addr,
        admin_addr,
        admin_api_addr,
        drain: drain_tx,
        admin_stop: admin_stop_tx,
        ready: ready_tx,
        grpc,
        admin,
        deadline: config.drain_deadline,
        leader: kubernetes.as_ref().map(|k| k.leader.clone()),
        lease: kubernetes.map(|k| k.lease),
        view: sources.as_ref().map(|s| s.views.clone()),
        snapshots: sources.map(|s| s.snapshots),
    })
}

/// What translation needs from the settings.
fn translate_options(config: &Config) -> translate::Options {
    translate::Options {
        trust_domain: config.trust_domain.clone(),
        cluster_domain: "cluster.local".into(),
        root_namespace: config.root_namespace.clone(),
    }
}

/// Starts the publisher and the sources the flags name (none: `None`):
/// the Kubernetes layer under the file layer.
async fn start_sources(
    config: &Config,
    metrics: &Metrics,
    client: Option<kube::Client>,
) -> anyhow::Result<Option<source::Outputs>> {
    if config.source_dir.is_none() && client.is_none() {
        return Ok(None);
    }
    let mut publisher = source::Publisher::new(
        translate_options(config),
        source::SourceMetrics {
            invalid: metrics.objects_invalid.clone(),
            objects: metrics.source_objects.clone(),
            problems: metrics.translation_problems.clone(),
        },
        source::DEBOUNCE,
    );
    let kube = client.map(|c| (c, publisher.layer(source::Layer::Kubernetes)));
    let files = config
        .source_dir
        .as_ref()
        .map(|dir| (dir, publisher.layer(source::Layer::Files)));
    let outputs = publisher.outputs();
    tokio::spawn(publisher.run());
    if let Some((client, layer)) = kube {
        source_kube::spawn(
            client,
            layer,
            source_kube::WatchMetrics {
                errors: metrics.watch_errors.clone(),
                relists: metrics.watch_relists.clone(),
            },
        );
        tracing::info!("watching the Kubernetes API");
    }
    if let Some((dir, layer)) = files {
        source_dir::run(
            dir.clone(),
            source_dir::DirLimits::default(),
            metrics.objects_invalid.clone(),
            layer,
        )
        .await?;
    }
    Ok(Some(outputs))
}

/// Binds and serves the Admin API over `dir` until the drain.
async fn start_admin_api(
    settings: &config::AdminApiSettings,
    dir: &std::path::Path,
    options: translate::Options,
    metrics: &Metrics,
    drain: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let token = admin_api::Token::read(&settings.token_file)?;
    let api = admin_api::AdminApi::open(
        dir.to_owned(),
        token,
        options,
        metrics.admin_api_requests.clone(),
    )?;
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("binding the Admin API listener on {}", settings.addr))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the Admin API is plain HTTP on a non-loopback address: its token crosses the network in clear");
    }
    tokio::spawn(admin_api::serve(
        listener,
        api.router(),
        admin_api::Listener::default(),
        drain,
    ));
    Ok(addr)
}

/// The token checker `--auth` names.
async fn authenticator(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<Arc<dyn Authenticator>> {
    match &config.auth {
        AuthMode::TokenFile(path) => {
            let reloads = metrics.token_reloads.clone();
            Ok(Arc::new(TokenFile::open(
                path,
                &config.trust_domain,
                Box::new(move |ok| {
                    reloads
                        .with_label_values(&[if ok { "ok" } else { "error" }])
                        .inc()
                }),
            )?))
        }
        AuthMode::Kubernetes { audience } => {
            let client = kube::Client::try_default().await.context(
                "connecting to the Kubernetes API server for TokenReview (outside a cluster, use --token-file)",
            )?;
            Ok(Arc::new(TokenReviewer::new(
                client,
                audience,
                &config.trust_domain,
            )))
        }
    }
}

fn publish_ca_metrics(metrics: &Metrics, ca: &Ca) {
    metrics.trust_roots.set(ca.trust_bundle().len() as i64);
    let expiry = ca
        .intermediate_not_after()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    metrics.intermediate_expiry.set(expiry);
}

/// Where a rebuilt CA goes: the CA the services sign with, and its trust
/// bundle as the roots ConfigMap carries it.
struct Published {
    ca: Arc<ArcSwap<Ca>>,
    roots: watch::Sender<String>,
}

/// Renews the intermediate and the serving certificate when `renewal_due`
/// says so; both are swapped in whole.
async fn renew(
    config: Arc<Config>,
    inputs: CaInputs,
    published: Published,
    serving: Arc<ServingCert>,
    mut serving_not_after: SystemTime,
    metrics: Arc<Metrics>,
    mut drain: watch::Receiver<bool>,
) {
    let Published { ca, roots } = published;
    let check = renew_interval(&config);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(check) => {}
            _ = drain.wait_for(|d| *d) => return,
        }
        let now = SystemTime::now();
        let intermediate_due = renewal_due(
            ca.load().intermediate_not_after(),
            now,
            config.intermediate_lifetime,
            config.cert_max_lifetime.max(config.cert_lifetime),
            check,
        );
        if intermediate_due {
            match inputs.build(now) {
                Ok(fresh) => {
                    publish_ca_metrics(&metrics, &fresh);
                    let pem = roots_config_map::bundle_pem(fresh.trust_bundle());
                    roots.send_if_modified(|old| {
                        let changed = *old != pem;
                        if changed {
                            *old = pem;
                        }
                        changed
                    });
                    ca.store(Arc::new(fresh));
                    tracing::info!("intermediate renewed");
                }
                Err(e) => tracing::error!(error = %e, "could not renew the intermediate; retrying"),
            }
        }
        if renewal_due(
            serving_not_after,
            now,
            config.cert_lifetime,
            Duration::ZERO,
            check,
        ) {
            let issued = ca.load().issue_server(
                &config.identity,
                &config.dns_names,
                config.cert_lifetime,
                now,
            );
            match issued.map_err(anyhow::Error::from).and_then(|(cert, key)| {
                serving.replace(&cert, key)?;
                Ok(cert.not_after)
            }) {
                Ok(not_after) => {
                    serving_not_after = not_after;
                    tracing::info!("serving certificate renewed");
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not renew the serving certificate; retrying")
                }
            }
        }
    }
}

impl Running {
    /// Stops accepting, lets in-flight calls finish until the drain
    /// deadline, then returns; whatever is left is dropped.
    pub async fn shutdown(self) {
        let _ = self.ready.send(Readiness::Draining);
        let _ = self.drain.send(true);
        let deadline = self.deadline;
        let mut grpc = self.grpc;
        if tokio::time::timeout(deadline, &mut grpc).await.is_err() {
            grpc.abort();
            tracing::warn!(
                ?deadline,
                "drain deadline passed; closing the remaining connections"
            );
        }
        // The leader releases its Lease (bounded inside) so another
        // replica takes over at its next try.
        if let Some(lease) = self.lease {
            let _ = tokio::time::timeout(Duration::from_secs(3), lease).await;
        }
        let _ = self.admin_stop.send(true);
        // Admin requests are short; a stuck scrape does not hold the exit.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin).await;
    }

    /// Runs until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        tracing::info!("draining");
        self.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn renewal_is_due_at_half_life_or_when_a_leaf_would_no_longer_fit() {
        let t0 = SystemTime::UNIX_EPOCH + 1_000_000 * S;
        // 30 days, leaves up to 48 h, checked every 30 s: at half life.
        let (life, leaf, check) = (30 * 86_400 * S, 48 * 3600 * S, 30 * S);
        let not_after = t0 + life;
        assert!(!renewal_due(
            not_after,
            t0 + life / 2 - S,
            life,
            leaf,
            check
        ));
        assert!(renewal_due(not_after, t0 + life / 2 + S, life, leaf, check));
        // 20 s, leaves up to 10 s, checked every 1 s: 12 s before the end,
        // so a 10 s leaf signed just before the next check still fits.
        let (life, leaf, check) = (20 * S, 10 * S, S);
        let not_after = t0 + life;
        assert!(!renewal_due(not_after, t0 + 7 * S, life, leaf, check));
        assert!(renewal_due(not_after, t0 + 9 * S, life, leaf, check));
    }
}
