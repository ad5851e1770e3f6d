//! Kubernetes manifests for `remora inject` and `uninject`: multi-document
//! YAML split into documents, each document's pod (a Pod, or the pod
//! template of a workload) found by its kind, and the injector's own pure
//! `injected_pod` and `uninject` applied to it, so the CLI injects exactly
//! what the webhook would.
//!
//! Documents of other kinds pass through unchanged. A `List` is refused
//! (split it with `kubectl get -o yaml | yq '.items[]'` or similar). Comments
//! and key order are not kept: documents are re-serialized.

use std::collections::BTreeMap;

use remora_injector::inject::NAMESPACE_LABEL;
use remora_injector::status::StatusError;
use remora_injector::{InjectError, Settings, UninjectError};
use serde_json::Value;

/// Where the pod of each kind that has one lives, as a JSON pointer.
pub const POD_KINDS: &[(&str, &str)] = &[
    ("Pod", ""),
    ("Deployment", "/spec/template"),
    ("StatefulSet", "/spec/template"),
    ("DaemonSet", "/spec/template"),
    ("ReplicaSet", "/spec/template"),
    ("Job", "/spec/template"),
    ("CronJob", "/spec/jobTemplate/spec/template"),
];

/// A manifest that cannot be injected or uninjected. Each names the
/// document (counted from 1, empty documents not counted).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {index} (from line {line}): not valid YAML: {reason}")]
    Yaml {
        index: usize,
        line: usize,
        reason: String,
    },
    #[error("document {index} (from line {line}): not a Kubernetes object (a YAML mapping with apiVersion and kind)")]
    NotAnObject { index: usize, line: usize },
    #[error("document {index}: a List is not supported; give its items as separate documents")]
    List { index: usize },
    #[error("{document}: has no pod template at {pointer}")]
    NoTemplate {
        document: String,
        pointer: &'static str,
    },
    #[error("{document}: cannot be injected: {source}")]
    Inject {
        document: String,
        source: Box<InjectError>,
    },
    #[error("{document}: cannot be uninjected: {source}")]
    Uninject {
        document: String,
        source: UninjectError,
    },
    #[error("document {index}: cannot be written as YAML: {reason}")]
    Serialize { index: usize, reason: String },
}

/// One document of a multi-document YAML text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document<'a> {
    /// Counted from 1; documents with nothing but blanks and comments are
    /// left out and not counted.
    pub index: usize,
    /// The line of the file the document starts on, from 1.
    pub line: usize,
    pub text: &'a str,
}

impl Document<'_> {
    /// The document as a JSON value; it must be a mapping.
    pub fn parse(&self) -> Result<Value, ManifestError> {
        let value: Value = serde_saphyr::from_str(self.text).map_err(|e| ManifestError::Yaml {
            index: self.index,
            line: self.line,
            reason: e.to_string(),
        })?;
        if !value.is_object() {
            return Err(ManifestError::NotAnObject {
                index: self.index,
                line: self.line,
            });
        }
        Ok(value)
    }
}

/// Splits a YAML stream at its document markers: a line that is `---`
/// (optionally followed by a space and content) or `...` at column 0, which
/// YAML never allows inside a document's content.
pub fn split(text: &str) -> Vec<Document<'_>> {
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    let mut pieces: Vec<(usize, usize, usize)> = Vec::new();
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker =
            bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t") || bare == "...";
        if marker {
            pieces.push((start, offset, start_line));
            // Content after `--- ` on the marker line belongs to the next
            // document.
            start = if bare == "..." {
                offset + line.len()
            } else {
                offset + 3
            };
            start_line = number + 1 + usize::from(bare == "...");
        }
        offset += line.len();
    }
    pieces.push((start, text.len(), start_line));
    let mut out = Vec::new();
    let mut index = 0;
    for (from, to, line) in pieces {
        let body = &text[from..to];
        // Blank lines, comments and directives (`%YAML 1.2`) make no document.
        let empty = body
            .lines()
            .map(str::trim)
            .all(|l| l.is_empty() || l.starts_with('#') || l.starts_with('%'));
        if empty {
            continue;
        }
        index += 1;
        out.push(Document {
            index,
            line,
            text: body,
        });
    }
    out
}

/// What became of one document.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub value: Value,
    /// One line each: injected, skipped and why, warnings.
    pub notes: Vec<String>,
}

/// Names a document in messages: `document 2 (Deployment shop/checkout)`.
pub fn describe(index: usize, value: &Value) -> String {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = value
        .pointer("/metadata/name")
        .or_else(|| value.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("");
    match value.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("document {index} ({kind} {ns}/{name})"),
        None => format!("document {index} ({kind} {name})"),
    }
}

/// The pointer to the document's pod, `None` for kinds without one.
fn pod_pointer(index: usize, value: &Value) -> Result<Option<&'static str>, ManifestError> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind == "List" {
        return Err(ManifestError::List { index });
    }
    Ok(POD_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, pointer)| *pointer))
}

/// The pod of a document, mutable; a template without metadata gets an
/// empty one, where the injection's annotations go.
fn pod_mut<'a>(
    index: usize,
    value: &'a mut Value,
    pointer: &'static str,
) -> Result<&'a mut Value, ManifestError> {
    let document = describe(index, value);
    let pod = value
        .pointer_mut(pointer)
        .filter(|p| p.is_object())
        .ok_or(ManifestError::NoTemplate { document, pointer })?;
    if let Some(map) = pod.as_object_mut() {
        map.entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
    }
    Ok(pod)
}

/// Injects the document's pod, as if its namespace were labelled
/// `remora.dev/inject=enabled`: the pod's own `remora.dev/inject: disabled`
/// and hostNetwork still skip it, as `linkerd inject` does.
pub fn inject_document(
    index: usize,
    mut value: Value,
    settings: &Settings,
) -> Result<Outcome, ManifestError> {
    let Some(pointer) = pod_pointer(index, &value)? else {
        return Ok(Outcome {
            value,
            notes: vec![],
        });
    };
    let document = describe(index, &value);
    let enabled = BTreeMap::from([(NAMESPACE_LABEL.to_owned(), "enabled".to_owned())]);
    let pod = pod_mut(index, &mut value, pointer)?;
    let decision = match remora_injector::inject(pod, &enabled, settings) {
        Ok(remora_injector::Decision::Skip(reason)) => Err(reason),
        Ok(remora_injector::Decision::Inject(_)) => Ok(()),
        Err(source) => {
            return Err(ManifestError::Inject {
                document,
                source: Box::new(source),
            })
        }
    };
    let notes = match decision {
        Err(reason) => vec![format!("{document}: skipped: {reason}")],
        Ok(()) => match remora_injector::injected_pod(pod, &enabled, settings) {
            Ok(Some((injected, warnings))) => {
                *pod = injected;
                std::iter::once(format!("{document}: injected"))
                    .chain(warnings.iter().map(|w| format!("{document}: warning: {w}")))
                    .collect()
            }
            Ok(None) => vec![],
            Err(source) => {
                return Err(ManifestError::Inject {
                    document,
                    source: Box::new(source),
                })
            }
        },
    };
    Ok(Outcome { value, notes })
}

/// Removes the injection from the document's pod; a pod that is not
/// injected passes through unchanged.
pub fn uninject_document(index: usize, mut value: Value) -> Result<Outcome, ManifestError> {
    let Some(pointer) = pod_pointer(index, &value)? else {
        return Ok(Outcome {
            value,
            notes: vec![],
        });
    };
    let document = describe(index, &value);
    let pod = pod_mut(index, &mut value, pointer)?;
    let note = match remora_injector::uninject(pod) {
        Ok(original) => {
            *pod = original;
            format!("{document}: uninjected")
        }
        Err(UninjectError::Status(StatusError::Missing)) => {
            format!("{document}: skipped: not injected")
        }
        Err(source) => return Err(ManifestError::Uninject { document, source }),
    };
    Ok(Outcome {
        value,
        notes: vec![note],
    })
}

/// One document as YAML, ending in a newline.
pub fn to_yaml(index: usize, value: &Value) -> Result<String, ManifestError> {
    serde_saphyr::to_string(value).map_err(|e| ManifestError::Serialize {
        index,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_counts_only_documents_with_content() {
        let text = "---\n# only a comment\n---\na: 1\n--- b: 2\n...\n\n---\nc:\n  - 3\n";
        let docs = split(text);
        let got: Vec<(usize, usize, &str)> =
            docs.iter().map(|d| (d.index, d.line, d.text)).collect();
        assert_eq!(
            got,
            vec![
                (1, 3, "\na: 1\n"),
                (2, 5, " b: 2\n"),
                (3, 8, "\nc:\n  - 3\n"),
            ]
        );
    }

    #[test]
    fn directives_make_no_document() {
        let docs = split("%YAML 1.2\n---\na: 1\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(
            (docs[0].index, docs[0].line, docs[0].text),
            (1, 2, "\na: 1\n")
        );
    }

    #[test]
    fn a_marker_inside_a_block_scalar_needs_column_zero() {
        let text = "a: |\n  ---\n  x\nb: 1\n";
        assert_eq!(split(text).len(), 1);
    }
}
