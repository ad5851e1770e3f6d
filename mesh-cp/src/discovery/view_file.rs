//! `--view-file`: a `MeshView` written out by hand, for tests and for
//! running remora-cp standalone before (or without) the sources. It is not
//! the product's source of config: translation publishes the view then.
//!
//! The file is YAML or JSON: `version`, `globals` (`http`, `globalRules`,
//! `consumers`), `destinations` (`<ns>/<name>` → `service` + `backends`) and
//! `workloads` (`<ns>/<pod>` → `identity` + `inbound`), each part in the
//! remora-api model. The address and host indexes are derived: every
//! address and every host name of a service, at each of its ports.
//! Everything is validated the way a proxy would (as one `MeshConfig`), so a
//! fixture the proxies would reject is refused here unless it says
//! `unchecked: true` (the NACK tests need exactly such a view).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use remora_api::{
    Backend, Consumer, GlobalRule, HttpSettings, InboundConfig, MeshConfig, OutboundConfig, Service,
};
use serde::Deserialize;
use tokio::sync::watch;

use crate::view::{Destination, Globals, MeshView, Workload};

/// Larger fixtures are refused; a test view is a few kilobytes.
pub const MAX_VIEW_FILE: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ViewFileError {
    #[error("reading the view file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the view file {0} is larger than 16 MiB")]
    TooLarge(PathBuf),
    #[error("parsing the view file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the view file {path} is not a valid mesh config: {message} (set `unchecked: true` to serve it anyway)")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ViewFile {
    version: u64,
    #[serde(default)]
    unchecked: bool,
    #[serde(default)]
    globals: GlobalsFile,
    #[serde(default)]
    destinations: BTreeMap<String, DestinationFile>,
    #[serde(default)]
    workloads: BTreeMap<String, WorkloadFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GlobalsFile {
    #[serde(default)]
    http: HttpSettings,
    #[serde(default)]
    global_rules: Vec<GlobalRule>,
    #[serde(default)]
    consumers: Vec<Consumer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationFile {
    service: Service,
    #[serde(default)]
    backends: BTreeMap<String, Backend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadFile {
    identity: String,
    #[serde(default)]
    inbound: InboundConfig,
}

/// Parses a view from text (YAML, or JSON which is YAML too).
pub fn parse(text: &str) -> Result<(MeshView, bool), String> {
    let file: ViewFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let mut view = MeshView {
        version: file.version,
        globals: Globals {
            http: file.globals.http,
            global_rules: file.globals.global_rules,
            consumers: file.globals.consumers,
        },
        ..MeshView::default()
    };
    for (key, d) in file.destinations {
        for port in &d.service.ports {
            for ip in &d.service.addresses {
                view.by_addr
                    .insert(SocketAddr::new(*ip, port.port), key.clone());
            }
            for host in &d.service.hostnames {
                view.by_host
                    .insert((host.to_ascii_lowercase(), port.port), key.clone());
            }
        }
        view.destinations.insert(
            key,
            Destination {
                service: d.service,
                backends: d.backends,
            },
        );
    }
    for (key, w) in file.workloads {
        view.workloads.insert(
            key,
            Workload {
                identity: w.identity,
                inbound: w.inbound,
            },
        );
    }
    Ok((view, file.unchecked))
}

/// Every destination with every workload's inbound, as the proxies will
/// assemble it; the model's own validation decides.
fn check(view: &MeshView) -> Result<(), String> {
    let mut config = MeshConfig {
        version: view.version.to_string(),
        outbound: OutboundConfig::default(),
        inbound: InboundConfig::default(),
        backends: BTreeMap::new(),
        http: view.globals.http.clone(),
        global_rules: view.globals.global_rules.clone(),
        consumers: view.globals.consumers.clone(),
    };
    for d in view.destinations.values() {
        config.outbound.services.push(d.service.clone());
        config
            .backends
            .extend(d.backends.iter().map(|(k, b)| (k.clone(), b.clone())));
    }
    config.validate().map_err(|e| e.to_string())?;
    for (key, w) in &view.workloads {
        let one = MeshConfig {
            inbound: w.inbound.clone(),
            ..config.clone()
        };
        one.validate().map_err(|e| format!("workload {key}: {e}"))?;
    }
    Ok(())
}

pub fn load(path: &Path) -> Result<MeshView, ViewFileError> {
    let read = |source| ViewFileError::Read {
        path: path.to_owned(),
        source,
    };
    if std::fs::metadata(path).map_err(read)?.len() > MAX_VIEW_FILE {
        return Err(ViewFileError::TooLarge(path.to_owned()));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let (view, unchecked) = parse(&text).map_err(|message| ViewFileError::Parse {
        path: path.to_owned(),
        message,
    })?;
    if !unchecked {
        check(&view).map_err(|message| ViewFileError::Invalid {
            path: path.to_owned(),
            message,
        })?;
    }
    Ok(view)
}

/// Listens for SIGHUP now (so one sent right after start is not lost, nor
/// fatal) and returns the task that reloads the file on each one and
/// publishes each good version; a bad one is logged and the last good view
/// stays.
pub fn reload_on_hangup(
    path: PathBuf,
    tx: watch::Sender<Arc<MeshView>>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(async move {
        while hangups.recv().await.is_some() {
            match load(&path) {
                Ok(view) => {
                    tracing::info!(version = view.version, path = %path.display(), "view file reloaded");
                    tx.send_replace(Arc::new(view));
                }
                Err(e) => {
                    tracing::error!(error = %e, "view file rejected; keeping the last good view")
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = r#"
version: 7
destinations:
  shop/reviews:
    service:
      name: reviews.shop
      addresses: [10.96.0.10]
      hostnames: [reviews.shop.svc.cluster.local]
      ports:
        - port: 9080
          backendRefs: [{name: reviews}]
    backends:
      reviews:
        endpoints: [{address: "10.1.0.5:9080"}]
workloads:
  shop/web-1:
    identity: spiffe://cluster.local/ns/shop/sa/web
"#;

    #[test]
    fn a_fixture_gives_the_view_with_its_indexes() {
        let (view, unchecked) = parse(FIXTURE).unwrap();
        assert!(!unchecked);
        assert_eq!(view.version, 7);
        check(&view).unwrap();
        assert_eq!(
            view.by_addr.get(&"10.96.0.10:9080".parse().unwrap()),
            Some(&"shop/reviews".to_owned())
        );
        assert_eq!(
            view.by_host
                .get(&("reviews.shop.svc.cluster.local".to_owned(), 9080)),
            Some(&"shop/reviews".to_owned())
        );
        assert_eq!(
            view.workloads["shop/web-1"].identity,
            "spiffe://cluster.local/ns/shop/sa/web"
        );
    }

    #[test]
    fn a_fixture_the_proxies_would_reject_is_refused_unless_unchecked() {
        let bad = FIXTURE.replace("{name: reviews}", "{name: nowhere}");
        let (view, _) = parse(&bad).unwrap();
        let err = check(&view).unwrap_err();
        assert!(err.contains("nowhere"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("view.yaml");
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(load(&path), Err(ViewFileError::Invalid { .. })));
        std::fs::write(&path, format!("unchecked: true\n{bad}")).unwrap();
        assert_eq!(load(&path).unwrap().version, 7);
        std::fs::write(&path, "version: 1\nsurprise: 2\n").unwrap();
        assert!(matches!(load(&path), Err(ViewFileError::Parse { .. })));
    }
}
