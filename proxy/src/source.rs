//! Standalone mode's config source: a YAML or JSON file holding the mesh
//! config, loaded at start and reloaded whenever it changes.
//!
//! The watcher follows the file's directory, not the file, so editors that
//! write a new file and rename it over the old one, and Kubernetes ConfigMap
//! volumes that swap a symlink, are both seen. Each change is read, parsed
//! and validated; a bad file is rejected with its reason and the last good
//! config stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use remora_api::MeshConfig;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::state::State;

/// Changes closer together than this are read once.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: remora_api::ConfigError,
    },
    #[error("{path}: {source}")]
    Apply {
        path: PathBuf,
        #[source]
        source: crate::state::StateError,
    },
    #[error("watching {path} for changes: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Parses a config file's text: JSON if it looks like JSON, else YAML.
pub(crate) fn parse(path: &Path, text: &str) -> Result<MeshConfig, SourceError> {
    let parsed = if text.trim_start().starts_with('{') {
        MeshConfig::from_json(text)
    } else {
        MeshConfig::from_yaml(text)
    };
    parsed.map_err(|source| SourceError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Reads, parses and applies the file once.
pub(crate) fn load(path: &Path, state: &State) -> Result<(), SourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config = parse(path, &text)?;
    state.apply(config).map_err(|source| SourceError::Apply {
        path: path.to_owned(),
        source,
    })
}

/// Watches the file and applies every change until the process exits.
/// Returns once the watch is set up.
pub(crate) fn watch(path: PathBuf, state: Arc<State>) -> Result<(), SourceError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })
    .map_err(|source| SourceError::Watch {
        path: path.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| SourceError::Watch {
            path: path.clone(),
            source,
        })?;

    tokio::spawn(async move {
        // The watcher stops when dropped; it lives as long as this task.
        let _watcher = watcher;
        let mut last = std::fs::read(&path).ok();
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let current = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    debug!(path = %path.display(), error = %e, "config file unreadable for now");
                    continue;
                }
            };
            if last.as_deref() == Some(current.as_slice()) {
                continue;
            }
            last = Some(current);
            match load(&path, &state) {
                Ok(()) => info!(path = %path.display(), "config file reloaded"),
                Err(SourceError::Apply { .. }) => {} // State logged and counted it.
                Err(e) => {
                    warn!(error = %e, "config file rejected; the last good config stays in force");
                    state.reject(e.to_string());
                }
            }
        }
    });
    Ok(())
}
