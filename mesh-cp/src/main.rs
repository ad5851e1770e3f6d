//! remora-cp's entry point: parse the settings, set up logs, run the chosen
//! subcommand. `serve` (the default) runs until SIGTERM or SIGINT, then drains.

use clap::Parser;
use remora_cp::config::{Cli, Command, Config, LogFormat, RootCommand, ServeArgs};

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Root(RootCommand::Generate {
            out_dir,
            trust_domain,
            lifetime,
        })) => generate_root(&out_dir, &trust_domain, lifetime),
        Some(Command::Crds) => match remora_cp::crds::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("remora-cp crds: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
    }
}

fn generate_root(
    dir: &std::path::Path,
    trust_domain: &str,
    lifetime: std::time::Duration,
) -> std::process::ExitCode {
    use remora_cp::ca::store;
    let result = (|| -> anyhow::Result<()> {
        remora_cp::identity::validate_trust_domain(trust_domain)?;
        for file in [store::ROOT_CERT_FILE, store::ROOT_KEY_FILE] {
            if dir.join(file).exists() {
                anyhow::bail!(
                    "{} already exists; pick an empty directory for the new root",
                    dir.join(file).display()
                );
            }
        }
        let root =
            remora_cp::ca::generate_root(trust_domain, lifetime, std::time::SystemTime::now())?;
        store::write_root(dir, &root)?;
        println!("{}", dir.join(store::ROOT_CERT_FILE).display());
        Ok(())
    })();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora-cp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> std::process::ExitCode {
    init_logs(args.log_format);
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "invalid settings");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "could not start the runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let running = match remora_cp::start(config).await {
            Ok(running) => running,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "remora-cp could not start");
                return std::process::ExitCode::FAILURE;
            }
        };
        running.run_until(shutdown_signal()).await;
        tracing::info!("stopped");
        std::process::ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::warn!("could not install signal handlers; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
