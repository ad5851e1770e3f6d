//! The `remora` operator CLI: manual injection (`inject`, `uninject`) of
//! Kubernetes manifests, the offline `check` of mesh objects, and the local
//! `demo`.
//!
//! It owns the flags and what each subcommand prints; the work is done by
//! `manifest` (multi-document YAML, pod templates, the injector's pure
//! functions), `check` (the same validation the proxy and the webhook
//! run) and `demo` (the whole mesh in network namespaces on this machine).
//! Only `demo` does I/O beyond its files. The binary is `src/bin/remora.rs`.

pub mod check;
pub mod demo;
pub mod manifest;

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use remora_injector::Settings;

/// Largest manifest read from a file or stdin, in bytes.
pub const MAX_INPUT_BYTES: u64 = 64 << 20;

/// `remora`: operate a Remora mesh.
#[derive(Debug, Parser)]
#[command(name = "remora", version, about = "Remora's operator CLI")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inject the mesh into the pods and pod templates of a manifest
    /// (Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
    /// CronJobs), printed to stdout; other objects pass through unchanged.
    Inject(InjectArgs),
    /// Remove what `inject` (or the webhook) added, printed to stdout.
    Uninject(InputArgs),
    /// Validate mesh objects offline: proxy mesh-config files and the
    /// remora.dev annotations of Kubernetes workloads. Exits 1 on an error.
    Check(CheckArgs),
    /// Run the mesh on this machine (root): remora-cp, three pods as network
    /// namespaces with injected sidecars, and traffic showing capture, mTLS
    /// identities, a 90/10 split and a rate limit; then remove it all.
    Demo(demo::DemoArgs),
    /// The demo's server app (run by `demo` inside a pod).
    #[command(hide = true)]
    DemoApp(demo::DemoAppArgs),
}

/// Where a manifest comes from.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// The manifest file, or `-` for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct InjectArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// Image of the injected proxy container.
    #[arg(long)]
    pub proxy_image: Option<String>,

    /// Image of the injected remora-init container.
    #[arg(long)]
    pub init_image: Option<String>,

    /// imagePullPolicy of the injected containers.
    #[arg(long, default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,

    /// Inject the proxy as a native sidecar (Kubernetes 1.29+); `false`
    /// makes it the first regular container instead.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecar: bool,
}

impl InjectArgs {
    /// The injector settings these flags give; everything else is the
    /// webhook's default, and per-pod `remora.dev/*` annotations apply.
    pub fn settings(&self) -> Settings {
        let defaults = Settings::default();
        Settings {
            proxy_image: self.proxy_image.clone().unwrap_or(defaults.proxy_image),
            init_image: self.init_image.clone().unwrap_or(defaults.init_image),
            image_pull_policy: self.image_pull_policy.clone(),
            native_sidecar: self.native_sidecar,
            ..defaults
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Files or directories (searched for *.yaml, *.yml and *.json).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Why the CLI stopped.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_INPUT_BYTES} bytes; split the manifest")]
    TooLarge { path: String },
    #[error("{path}: not UTF-8 text: {reason}")]
    NotText { path: String, reason: String },
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error("writing the output: {0}")]
    Write(std::io::Error),
}

/// Reads a whole file (or stdin for `-`), bounded by [`MAX_INPUT_BYTES`].
pub fn read_input(path: &std::path::Path) -> Result<String, CliError> {
    let name = path.display().to_string();
    let read_err = |source| CliError::Read {
        path: name.clone(),
        source,
    };
    let mut bytes = Vec::new();
    if name == "-" {
        std::io::stdin()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_INPUT_BYTES + 1).read_to_end(&mut bytes))
            .map_err(read_err)?;
    }
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(CliError::TooLarge { path: name });
    }
    String::from_utf8(bytes).map_err(|e| CliError::NotText {
        path: name,
        reason: e.utf8_error().to_string(),
    })
}

/// Runs `inject` or `uninject`: the manifest out on `out`, one line per
/// workload on `err` (what was done, skipped, and warnings).
pub fn run_manifest(
    input: &str,
    settings: Option<&Settings>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let documents = manifest::split(input);
    let mut rendered = Vec::with_capacity(documents.len());
    for document in &documents {
        let value = document.parse()?;
        let outcome = match settings {
            Some(settings) => manifest::inject_document(document.index, value, settings)?,
            None => manifest::uninject_document(document.index, value)?,
        };
        for note in &outcome.notes {
            writeln!(err, "{note}").map_err(CliError::Write)?;
        }
        rendered.push(manifest::to_yaml(document.index, &outcome.value)?);
    }
    out.write_all(rendered.join("---\n").as_bytes())
        .map_err(CliError::Write)?;
    out.flush().map_err(CliError::Write)
}
