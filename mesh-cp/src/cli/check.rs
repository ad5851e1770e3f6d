//! `remora check`: offline validation of mesh objects, with the same checks
//! the parts that read them run, so an error is found before it is applied.
//!
//! What is checked today:
//! - proxy mesh-config files (a document without `kind`): parsed and
//!   validated with `remora_api::MeshConfig::parse`, as the proxy's file
//!   source does; every field error is reported with its path;
//! - Kubernetes workloads (Pod, Deployment, StatefulSet, DaemonSet,
//!   ReplicaSet, Job, CronJob): the pod's `remora.dev/*` annotations, probes
//!   and reserved names, with the injector's own pure function, as the
//!   webhook would (its denial becomes an error here).
//!
//! - the control plane's objects (Services, EndpointSlices, Pods, Secrets,
//!   Gateway API routes, the `remora.dev` CRDs), across all the files
//!   together: each is read with the file source's own `Store::insert`, as
//!   `remora-cp --source-dir` would, and then the whole set is translated,
//!   so what would become a status condition (a backendRef to a missing
//!   Service, a route conflict, a policy whose target is not there) is an
//!   error here, named at the object's file and document.
//!
//! Other Kubernetes kinds are counted as not checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use remora_api::{ConfigError, MeshConfig, ParseLimits};
use remora_injector::inject::NAMESPACE_LABEL;
use remora_injector::{InjectError, Settings};
use serde_json::Value;

use super::manifest::{self, POD_KINDS};
use crate::translate::{translate, ObjectError, Options, Store};

/// The extensions looked at in a directory.
const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

/// One problem, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: String,
    /// The document (`document 2 (Deployment shop/web)`) for manifests.
    pub document: Option<String>,
    /// The field at fault, in the form it is written.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.document {
            Some(d) => write!(f, "{}: {d}: {}: {}", self.file, self.field, self.message),
            None => write!(f, "{}: {}: {}", self.file, self.field, self.message),
        }
    }
}

/// What a run looked at and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub files: usize,
    pub mesh_configs: usize,
    pub workloads: usize,
    /// Control-plane objects read into the translation's store.
    pub objects: usize,
    /// Kubernetes objects of kinds not checked yet, by kind.
    pub unchecked: BTreeMap<String, usize>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// The closing line: what was checked and how many errors.
    pub fn summary(&self) -> String {
        let unchecked: usize = self.unchecked.values().sum();
        let mut line = format!(
            "checked {} {}: {} mesh {}, {} {}",
            self.files,
            plural(self.files, "file", "files"),
            self.mesh_configs,
            plural(self.mesh_configs, "config", "configs"),
            self.workloads,
            plural(self.workloads, "workload", "workloads"),
        );
        if self.objects > 0 {
            line += &format!(
                ", {} mesh {}",
                self.objects,
                plural(self.objects, "object", "objects")
            );
        }
        if unchecked > 0 {
            let kinds: Vec<String> = self
                .unchecked
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            line += &format!(
                "; not checked yet: {} {} ({})",
                unchecked,
                plural(unchecked, "object", "objects"),
                kinds.join(", ")
            );
        }
        let errors = self.findings.len();
        line += &format!("; {errors} {}", plural(errors, "error", "errors"));
        line
    }
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// Checks every file named, and every *.yaml, *.yml and *.json file under
/// every directory named (sorted, so the output is stable).
pub fn check(paths: &[PathBuf]) -> Report {
    let mut report = Report::default();
    let mut objects = Objects::default();
    for path in paths {
        let mut files = Vec::new();
        if let Err(e) = collect(path, true, &mut files) {
            report.findings.push(Finding {
                file: path.display().to_string(),
                document: None,
                field: ".".to_owned(),
                message: format!("cannot be read: {e}"),
            });
        }
        for file in files {
            check_file(&file, &mut report, &mut objects);
        }
    }
    objects.check(&mut report);
    report
}

/// The control plane's objects of every file, checked together: a route in
/// one file may name a Service in another.
#[derive(Debug, Default)]
struct Objects {
    store: Store,
    /// Where each object read came from, by kind and `<namespace>/<name>`.
    origins: BTreeMap<(String, String), (String, String)>,
}

impl Objects {
    /// Reads one object into the store, as the file source would. Returns
    /// false for a kind the control plane does not read.
    fn add(&mut self, file: &str, document: &str, value: Value, report: &mut Report) -> bool {
        let key = object_key(&value);
        match self.store.insert(value) {
            Ok(kind) => {
                report.objects += 1;
                self.origins.insert(
                    (kind.to_owned(), key),
                    (file.to_owned(), document.to_owned()),
                );
                true
            }
            Err(ObjectError::UnknownKind { .. }) => false,
            Err(e) => {
                let (field, message) = match &e {
                    ObjectError::Invalid { message, .. } => message
                        .split_once(": ")
                        .map(|(f, m)| (f.to_owned(), m.to_owned()))
                        .unwrap_or_else(|| (".".to_owned(), message.clone())),
                    _ => ("metadata.name".to_owned(), e.to_string()),
                };
                report.findings.push(Finding {
                    file: file.to_owned(),
                    document: Some(document.to_owned()),
                    field,
                    message,
                });
                true
            }
        }
    }

    /// Translates the store; every problem a status condition would carry
    /// is an error at the object's file.
    fn check(self, report: &mut Report) {
        if self.origins.is_empty() {
            return;
        }
        let translation = translate(&self.store, &Options::default());
        for problem in translation.problems {
            let (file, document) = self
                .origins
                .get(&(problem.kind.to_owned(), problem.key.clone()))
                .cloned()
                .unwrap_or_else(|| ("-".to_owned(), format!("{} {}", problem.kind, problem.key)));
            report.findings.push(Finding {
                file,
                document: Some(document),
                field: format!("status.conditions[{}]", problem.condition),
                message: format!("{}: {}", problem.reason, problem.message),
            });
        }
    }
}

/// `<namespace>/<name>`, as the store keys objects (namespaces by name).
fn object_key(value: &Value) -> String {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if value.get("kind").and_then(Value::as_str) == Some("Namespace") {
        return name.to_owned();
    }
    let ns = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    format!("{ns}/{name}")
}

fn collect(path: &Path, named: bool, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            let hidden = entry
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if !hidden {
                collect(&entry, false, out)?;
            }
        }
    } else if named
        || path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e))
    {
        out.push(path.to_owned());
    }
    Ok(())
}

fn check_file(path: &Path, report: &mut Report, objects: &mut Objects) {
    report.files += 1;
    let file = path.display().to_string();
    let finding = |document: Option<String>, field: &str, message: String| Finding {
        file: file.clone(),
        document,
        field: field.to_owned(),
        message,
    };
    let text = match super::read_input(path) {
        Ok(text) => text,
        Err(e) => {
            let message = e.to_string();
            let message = message
                .strip_prefix(&format!("{file}: "))
                .unwrap_or(&message)
                .to_owned();
            report.findings.push(finding(None, ".", message));
            return;
        }
    };
    let documents = manifest::split(&text);
    let mut values = Vec::with_capacity(documents.len());
    for document in &documents {
        match document.parse() {
            Ok(value) => values.push((document.index, value)),
            // A mesh config is one document; its own parser reports it.
            Err(_) if documents.len() == 1 => values.clear(),
            Err(e) => {
                report.findings.push(finding(None, ".", e.to_string()));
                return;
            }
        }
    }
    let is_manifest = values
        .first()
        .is_some_and(|(_, v)| v.get("kind").is_some() && v.get("apiVersion").is_some());
    if !is_manifest {
        report.mesh_configs += 1;
        if let Err(e) = MeshConfig::parse(text.as_bytes(), &ParseLimits::DEFAULT) {
            report.findings.extend(
                mesh_errors(&e)
                    .into_iter()
                    .map(|(field, message)| finding(None, &field, message)),
            );
        }
        return;
    }
    let enabled = BTreeMap::from([(NAMESPACE_LABEL.to_owned(), "enabled".to_owned())]);
    let settings = Settings::default();
    for (index, value) in values {
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let document = manifest::describe(index, &value);
        let Some((_, pointer)) = POD_KINDS.iter().find(|(k, _)| *k == kind) else {
            if !objects.add(&file, &document, value, report) {
                *report.unchecked.entry(kind).or_default() += 1;
            }
            continue;
        };
        // A Pod gives translation its identity (and the meshed flag).
        if kind == "Pod" {
            let _ = objects.store.insert(value.clone());
        }
        report.workloads += 1;
        let Some(pod) = value.pointer(pointer).filter(|p| p.is_object()) else {
            report.findings.push(finding(
                Some(document),
                &field(pointer, ""),
                "missing: a workload needs a pod template".to_owned(),
            ));
            continue;
        };
        if let Err(e) = remora_injector::inject(pod, &enabled, &settings) {
            report.findings.push(finding(
                Some(document),
                &inject_field(pointer, &e),
                e.to_string(),
            ));
        }
    }
}

/// The mesh config's errors as (field, message), every one of them.
fn mesh_errors(e: &ConfigError) -> Vec<(String, String)> {
    match e {
        ConfigError::Syntax { path, message } => vec![(path.clone(), message.clone())],
        ConfigError::Invalid(v) => v
            .errors()
            .map(|f| (f.path.clone(), f.message.clone()))
            .collect(),
        ConfigError::Limit(l) => vec![(".".to_owned(), l.to_string())],
    }
}

/// `/spec/template` + `metadata.annotations` → `spec.template.metadata.annotations`.
fn field(pointer: &str, rest: &str) -> String {
    let base = pointer.trim_start_matches('/').replace('/', ".");
    match (base.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_owned(),
        (false, true) => base,
        (false, false) => format!("{base}.{rest}"),
    }
}

fn inject_field(pointer: &str, e: &InjectError) -> String {
    match e {
        InjectError::Annotation(a) => {
            field(pointer, &format!("metadata.annotations[{}]", a.annotation))
        }
        InjectError::Probe(_) => field(pointer, "spec.containers"),
        InjectError::Reserved { kind, .. } if *kind == "volume" => field(pointer, "spec.volumes"),
        InjectError::Reserved { .. } => field(pointer, "spec.containers"),
        InjectError::RequestAboveLimit { annotation, .. } => {
            field(pointer, &format!("metadata.annotations[{annotation}]"))
        }
        InjectError::NotAPod(_) => field(pointer, ""),
    }
}
