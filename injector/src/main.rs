//! remora-injector: parses the flags once, sets up the serving certificate,
//! decides on native sidecars (asking the API server with `auto`), and runs
//! the webhook until SIGTERM or Ctrl-C (docs/injector.md).

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use remora_injector::config::{Args, Config};
use remora_injector::server::Server;
use remora_injector::{ca_bundle, native_sidecar, tls};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match Config::from_args(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("remora-injector: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let serve = &config.serve;
    let tls = match (&serve.tls_cert, &serve.tls_key) {
        (Some(cert), Some(key)) => tls::from_files(cert, key)?,
        _ => {
            tracing::info!(names = ?serve.dns_names, "generating a self-signed serving certificate");
            tls::generate(&serve.dns_names)?
        }
    };
    if let Some(path) = &serve.write_cert {
        tokio::fs::write(path, &tls.cert_pem)
            .await
            .with_context(|| format!("--write-cert {}: writing the certificate", path.display()))?;
    }
    let listener = tokio::net::TcpListener::bind(serve.listen)
        .await
        .with_context(|| format!("--listen {}: binding the webhook port", serve.listen))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The served certificate, for the caBundle sync; it changes only with a
    // restart today, so the sender just stays open.
    let (_cert_tx, cert_rx) = tokio::sync::watch::channel(tls.cert_pem.clone());
    // Ready at once, unless the caBundle must trust the certificate first.
    let (ready_tx, ready) = tokio::sync::watch::channel(serve.ca_bundle.is_none());
    // One client for everything that asks the API server, made only when
    // something does.
    let needs_api =
        serve.ca_bundle.is_some() || config.native_sidecar == native_sidecar::Mode::Auto;
    let client = match needs_api {
        true => kube::Client::try_default().await.map_err(|e| e.to_string()),
        false => Err("not used".to_owned()),
    };
    let mut settings = config.settings;
    let decision = native_sidecar::decide(
        config.native_sidecar,
        client.as_ref().map_err(String::as_str),
    )
    .await;
    decision.log();
    settings.native_sidecar = decision.native();
    let metrics = prometheus::Registry::new();
    native_sidecar::register_gauge(&metrics, &decision).context("registering the metrics")?;
    tracing::info!(addr = %serve.listen, native_sidecar = settings.native_sidecar, "serving");
    if let Some(managed) = &serve.ca_bundle {
        let client = match &client {
            Ok(client) => client.clone(),
            Err(e) => anyhow::bail!(
                "--webhook-config-name needs the Kubernetes API (the pod's service-account token): {e}"
            ),
        };
        tracing::info!(config = %managed.webhook_config_name, "keeping the webhook configuration's caBundle in sync");
        tokio::spawn(
            ca_bundle::Syncer::new(client, &managed.webhook_config_name, managed.resync).run(
                cert_rx,
                stopped.clone(),
                ready_tx,
            ),
        );
    }
    let server = Arc::new(Server {
        settings,
        metrics,
        limits: serve.limits,
        tls: tls.config,
        ready,
    });
    let serving = tokio::spawn(server.run(listener, stopped));
    shutdown_signal().await?;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    let _ = serving.await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {},
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    Ok(())
}
