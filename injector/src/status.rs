//! The `remora.dev/status` annotation: what an injection added and what it
//! replaced. Its presence marks a pod as injected (so injecting again does
//! nothing), and it holds everything `uninject` needs to give the original
//! pod back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of the status format written by this injector.
pub const VERSION: u32 = 1;

/// What one injection did to a pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Status {
    pub version: u32,
    /// Names of the init containers added (remora-init; the proxy too when it
    /// is a native sidecar).
    pub init_containers: Vec<String>,
    /// Names of the regular containers added (the proxy when it is not a
    /// native sidecar).
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
    /// Fields the pod did not have before, which uninjection removes again
    /// when nothing else is left in them: `metadata.annotations`,
    /// `spec.initContainers`, `spec.volumes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<String>,
    /// Original probes that were rewritten: container → probe field → probe.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probes: BTreeMap<String, BTreeMap<String, Value>>,
}

/// A status annotation that cannot be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error(
        "the pod is not injected (it has no remora.dev/status annotation); there is nothing to remove"
    )]
    Missing,
    #[error(
        "the remora.dev/status annotation is not one this injector wrote ({0}); remove the \
         injected containers by hand"
    )]
    Unreadable(String),
    #[error(
        "the remora.dev/status annotation has version {0}, and this injector knows version {VERSION}; \
         use the remora release that injected the pod"
    )]
    Version(u32),
}

impl Status {
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_annotation(text: &str) -> Result<Self, StatusError> {
        let status: Status =
            serde_json::from_str(text).map_err(|e| StatusError::Unreadable(e.to_string()))?;
        if status.version != VERSION {
            return Err(StatusError::Version(status.version));
        }
        Ok(status)
    }
}
