//! The inverse of `inject`: given an injected Pod, the Pod as it was before.
//!
//! It reads only the `remora.dev/status` annotation to know what was added
//! and what was replaced, so it removes exactly that and leaves everything
//! else (including what was changed on the pod since) alone.

use serde_json::{Map, Value};

use crate::annotations;
use crate::status::{Status, StatusError};

/// Why a pod cannot be uninjected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UninjectError {
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error("the object is not a Pod: {0}")]
    NotAPod(&'static str),
}

/// Removes what the injection added and puts back the original probes.
pub fn uninject(pod: &Value) -> Result<Value, UninjectError> {
    let text = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(annotations::STATUS))
        .and_then(Value::as_str)
        .ok_or(StatusError::Missing)?;
    let status = Status::from_annotation(text)?;
    let mut out = pod.clone();

    let spec = out
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or(UninjectError::NotAPod("it has no spec"))?;
    remove_named(spec, "containers", &status.containers);
    remove_named(spec, "initContainers", &status.init_containers);
    remove_named(spec, "volumes", &status.volumes);
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for container in containers.iter_mut().filter_map(Value::as_object_mut) {
            let name = container.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some(probes) = status.probes.get(name) {
                for (field, original) in probes {
                    container.insert(field.clone(), original.clone());
                }
            }
        }
    }
    for field in ["initContainers", "volumes"] {
        drop_if_created_and_empty(spec, field, &status);
    }

    if let Some(metadata) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(map) = metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
        {
            map.remove(annotations::STATUS);
        }
        drop_if_created_and_empty(metadata, "annotations", &status);
    }
    Ok(out)
}

fn remove_named(parent: &mut Map<String, Value>, field: &str, names: &[String]) {
    if let Some(list) = parent.get_mut(field).and_then(Value::as_array_mut) {
        list.retain(|item| {
            let name = item.get("name").and_then(Value::as_str).unwrap_or("");
            !names.iter().any(|n| n == name)
        });
    }
}

fn drop_if_created_and_empty(parent: &mut Map<String, Value>, field: &str, status: &Status) {
    let empty = match parent.get(field) {
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    if empty && status.created.iter().any(|c| c == field) {
        parent.remove(field);
    }
}
