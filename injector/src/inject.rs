//! The pure core: a Pod (as the API server sends it), its namespace's labels
//! and the injector settings in; a decision out: skip the pod, or the JSON
//! patch that injects `remora-init` and `remora-proxy`.
//!
//! Nothing here does I/O. The webhook, the CLI and the demo call the same
//! function, so they inject the same thing. The patch is built by hand from
//! explicit operations (never by diffing), so it only touches what the
//! injection adds and applies cleanly to the Pod it was made from, including
//! fields this crate's Kubernetes types do not know. `uninject` undoes it.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::annotations::{self, AnnotationError, Overrides, Switch};
use crate::probes::{self, ProbeError, Rewrite};
use crate::quantity::Quantity;
use crate::settings::{Settings, CA_ROOTS_KEY, PROXY_ADMIN_PORT, PROXY_GID, PROXY_UID};
use crate::status::{self, Status};

/// The namespace label that opts a namespace in.
pub const NAMESPACE_LABEL: &str = "remora.dev/inject";
pub const INIT_NAME: &str = "remora-init";
pub const PROXY_NAME: &str = "remora-proxy";
/// The proxy's writable working files (certificates later): in memory, so a
/// private key never lands on the node's disk.
pub const DATA_VOLUME: &str = "remora-proxy-data";
pub const DATA_DIR: &str = "/var/run/remora";
/// The projected service-account token with the mesh audience: the proxy's
/// proof of identity for its first certificate (the identity issue).
pub const IDENTITY_VOLUME: &str = "remora-identity";
pub const IDENTITY_DIR: &str = "/var/run/secrets/remora.dev/identity";
pub const TOKEN_FILE: &str = "token";
/// Beside the token in the same projected volume: the PEM roots remora-cp's
/// serving certificate chains to, from the namespace's roots ConfigMap.
pub const CA_ROOTS_FILE: &str = "ca-roots.pem";
/// iptables-restore takes the xtables lock in /run; this keeps remora-init's
/// root filesystem read-only.
pub const XTABLES_VOLUME: &str = "remora-xtables-lock";

/// Every name the injection adds; a pod that already uses one is refused.
const RESERVED_CONTAINERS: &[&str] = &[INIT_NAME, PROXY_NAME];
const RESERVED_VOLUMES: &[&str] = &[DATA_VOLUME, IDENTITY_VOLUME, XTABLES_VOLUME];

/// The proxy's environment variables (their flags are in proxy/src/config.rs).
pub const ENV_PROXY_LOG: &str = "RUST_LOG";
pub const ENV_PROXY_OPAQUE_PORTS: &str = "REMORA_OPAQUE_PORTS";
pub const ENV_PROXY_DRAIN_DEADLINE: &str = "REMORA_DRAIN_DEADLINE";
pub const ENV_PROXY_CA_ADDR: &str = "REMORA_CA_ADDR";
pub const ENV_PROXY_CA_SERVER_NAME: &str = "REMORA_CA_SERVER_NAME";
pub const ENV_PROXY_CA_ROOTS: &str = "REMORA_CA_ROOTS";
pub const ENV_PROXY_IDENTITY_TOKEN_FILE: &str = "REMORA_IDENTITY_TOKEN_FILE";
pub const ENV_PROXY_DISCOVERY_ADDR: &str = "REMORA_DISCOVERY_ADDR";
pub const ENV_PROXY_POD_NAME: &str = "REMORA_POD_NAME";
pub const ENV_PROXY_POD_NAMESPACE: &str = "REMORA_POD_NAMESPACE";

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Leave it alone, for this reason.
    Skip(Skip),
    Inject(Injection),
}

/// Why a pod is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its namespace is not labelled `remora.dev/inject=enabled` and the pod
    /// does not ask for injection.
    NotEnabled,
    /// The pod is annotated `remora.dev/inject: disabled`.
    Disabled,
    /// The pod shares the node's network; capturing it would capture the node.
    HostNetwork,
    /// It carries `remora.dev/status`: it is injected already.
    AlreadyInjected,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::NotEnabled => "not enabled: neither the namespace label nor the pod annotation remora.dev/inject asks for injection",
            Skip::Disabled => "the pod is annotated remora.dev/inject: disabled",
            Skip::HostNetwork => "the pod uses hostNetwork; its traffic is the node's and is never captured",
            Skip::AlreadyInjected => "the pod is injected already (it has remora.dev/status)",
        })
    }
}

/// The patch, and anything the user should hear about that does not stop
/// the injection (the webhook returns these as admission warnings).
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub patch: Patch,
    pub warnings: Vec<String>,
}

/// Why a pod cannot be injected. The webhook denies the pod with this
/// message, so each one says what to change.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("the object is not a Pod the injector can read: {0}")]
    NotAPod(String),
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(
        "the {kind} name `{name}` is reserved for the mesh; rename the {kind}, or annotate the pod \
         remora.dev/inject: disabled"
    )]
    Reserved { kind: &'static str, name: String },
    #[error(
        "annotation {annotation}: the proxy's {resource} request {request} is above its limit \
         {limit}; raise the limit ({limit_annotation}) or lower the request ({request_annotation})"
    )]
    RequestAboveLimit {
        annotation: &'static str,
        resource: &'static str,
        request: String,
        limit: String,
        request_annotation: &'static str,
        limit_annotation: &'static str,
    },
}

/// Decides whether `pod` is injected and, if so, builds the patch.
pub fn inject(
    pod: &Value,
    namespace_labels: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<Decision, InjectError> {
    let typed: Pod =
        serde_json::from_value(pod.clone()).map_err(|e| InjectError::NotAPod(e.to_string()))?;
    let empty = BTreeMap::new();
    let pod_annotations = typed.metadata.annotations.as_ref().unwrap_or(&empty);
    if pod_annotations.contains_key(annotations::STATUS) {
        return Ok(Decision::Skip(Skip::AlreadyInjected));
    }
    // Only the opt-in annotation is read before deciding: a pod the mesh
    // does not inject is not held to the mesh's other annotations.
    let wanted = Overrides::parse(&only(pod_annotations, annotations::INJECT))?.inject;
    let namespace_enabled =
        namespace_labels.get(NAMESPACE_LABEL).map(String::as_str) == Some("enabled");
    match wanted {
        Some(Switch::Disabled) => return Ok(Decision::Skip(Skip::Disabled)),
        None if !namespace_enabled => return Ok(Decision::Skip(Skip::NotEnabled)),
        _ => {}
    }
    let spec = typed.spec.as_ref().ok_or_else(|| {
        InjectError::NotAPod("it has no spec; the API server always sends one".to_owned())
    })?;
    if spec.host_network == Some(true) {
        return Ok(Decision::Skip(Skip::HostNetwork));
    }
    let overrides = Overrides::parse(pod_annotations)?;
    check_reserved(spec)?;
    let resources = proxy_resources(&overrides, settings)?;

    let native = overrides
        .native_sidecar
        .map_or(settings.native_sidecar, |s| s == Switch::Enabled);
    let rewrite = overrides.rewrite_probes != Some(Switch::Disabled);

    let mut status = Status {
        version: status::VERSION,
        init_containers: vec![INIT_NAME.to_owned()],
        volumes: RESERVED_VOLUMES.iter().map(|s| s.to_string()).collect(),
        ..Status::default()
    };
    let mut ops = Vec::new();

    // Probes first, while the app containers still have their own indices.
    let mut rewrites: Vec<Rewrite> = Vec::new();
    if rewrite {
        let containers = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (i, container) in containers.iter().enumerate() {
            let name = container.get("name").and_then(Value::as_str).unwrap_or("");
            for r in probes::rewrite_container(container)? {
                ops.push(replace(
                    ptr(&["spec", "containers", &i.to_string(), r.field]),
                    r.replacement.clone(),
                ));
                status
                    .probes
                    .entry(name.to_owned())
                    .or_default()
                    .insert(r.field.to_owned(), r.original.clone());
                rewrites.push(r);
            }
        }
    }

    let proxy = proxy_container(&overrides, settings, resources, native, &rewrites);
    let init = init_container(&overrides, settings);
    let mut init_containers = vec![to_value(&init)];
    if native {
        init_containers.push(to_value(&proxy));
        status.init_containers.push(PROXY_NAME.to_owned());
    }
    match &spec.init_containers {
        None => {
            status.created.push("initContainers".to_owned());
            ops.push(add(
                ptr(&["spec", "initContainers"]),
                Value::Array(init_containers),
            ));
        }
        Some(_) => {
            for (i, c) in init_containers.into_iter().enumerate() {
                ops.push(add(ptr(&["spec", "initContainers", &i.to_string()]), c));
            }
        }
    }
    if !native {
        ops.push(add(ptr(&["spec", "containers", "0"]), to_value(&proxy)));
        status.containers.push(PROXY_NAME.to_owned());
    }
    let volumes: Vec<Value> = volumes(settings).iter().map(to_value).collect();
    match &spec.volumes {
        None => {
            status.created.push("volumes".to_owned());
            ops.push(add(ptr(&["spec", "volumes"]), Value::Array(volumes)));
        }
        Some(_) => {
            for v in volumes {
                ops.push(add(ptr(&["spec", "volumes", "-"]), v));
            }
        }
    }

    // The status goes first in the patch, so a reader of the patch sees what
    // it is; its content is complete only now.
    let annotation_op = if typed.metadata.annotations.is_none() {
        status.created.insert(0, "annotations".to_owned());
        let map = BTreeMap::from([(annotations::STATUS, status.to_annotation())]);
        add(ptr(&["metadata", "annotations"]), to_value(&map))
    } else {
        add(
            ptr(&["metadata", "annotations", annotations::STATUS]),
            Value::String(status.to_annotation()),
        )
    };
    ops.insert(0, annotation_op);

    let warnings = warnings(pod_annotations, spec, &overrides, native);
    Ok(Decision::Inject(Injection {
        patch: Patch(ops),
        warnings,
    }))
}

/// Injects and applies the patch: the injected Pod, or `None` when the pod
/// is skipped.
pub fn injected_pod(
    pod: &Value,
    namespace_labels: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<Option<(Value, Vec<String>)>, InjectError> {
    match inject(pod, namespace_labels, settings)? {
        Decision::Skip(_) => Ok(None),
        Decision::Inject(injection) => {
            let mut out = pod.clone();
            json_patch::patch(&mut out, &injection.patch)
                .map_err(|e| InjectError::NotAPod(format!("the patch does not apply: {e}")))?;
            Ok(Some((out, injection.warnings)))
        }
    }
}

fn only(map: &BTreeMap<String, String>, key: &str) -> BTreeMap<String, String> {
    map.get(key)
        .map(|v| BTreeMap::from([(key.to_owned(), v.clone())]))
        .unwrap_or_default()
}

fn check_reserved(spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<(), InjectError> {
    let names = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.as_str());
    for name in names {
        if RESERVED_CONTAINERS.contains(&name) {
            return Err(InjectError::Reserved {
                kind: "container",
                name: name.to_owned(),
            });
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if RESERVED_VOLUMES.contains(&volume.name.as_str()) {
            return Err(InjectError::Reserved {
                kind: "volume",
                name: volume.name.clone(),
            });
        }
    }
    Ok(())
}

/// The proxy's requests and limits: the settings, overridden by annotation,
/// with each request at most its limit.
fn proxy_resources(
    overrides: &Overrides,
    settings: &Settings,
) -> Result<ResourceRequirements, InjectError> {
    let pick = |annotation: &Option<Quantity>, default: &Quantity| {
        annotation.clone().unwrap_or_else(|| default.clone())
    };
    let cpu = pick(&overrides.proxy_cpu, &settings.proxy_cpu);
    let memory = pick(&overrides.proxy_memory, &settings.proxy_memory);
    let cpu_limit = overrides
        .proxy_cpu_limit
        .clone()
        .or_else(|| settings.proxy_cpu_limit.clone());
    let memory_limit = overrides
        .proxy_memory_limit
        .clone()
        .or_else(|| settings.proxy_memory_limit.clone());
    let pairs = [
        (
            "CPU",
            &cpu,
            &cpu_limit,
            overrides.proxy_cpu.is_some(),
            annotations::PROXY_CPU,
            annotations::PROXY_CPU_LIMIT,
        ),
        (
            "memory",
            &memory,
            &memory_limit,
            overrides.proxy_memory.is_some(),
            annotations::PROXY_MEMORY,
            annotations::PROXY_MEMORY_LIMIT,
        ),
    ];
    for (resource, request, limit, request_set, request_annotation, limit_annotation) in pairs {
        if let Some(limit) = limit {
            if request.value() > limit.value() {
                return Err(InjectError::RequestAboveLimit {
                    annotation: if request_set {
                        request_annotation
                    } else {
                        limit_annotation
                    },
                    resource,
                    request: request.to_string(),
                    limit: limit.to_string(),
                    request_annotation,
                    limit_annotation,
                });
            }
        }
    }
    let quantity = |q: &Quantity| K8sQuantity(q.as_str().to_owned());
    let requests = BTreeMap::from([
        ("cpu".to_owned(), quantity(&cpu)),
        ("memory".to_owned(), quantity(&memory)),
    ]);
    let mut limits = BTreeMap::new();
    if let Some(l) = &cpu_limit {
        limits.insert("cpu".to_owned(), quantity(l));
    }
    if let Some(l) = &memory_limit {
        limits.insert("memory".to_owned(), quantity(l));
    }
    Ok(ResourceRequirements {
        requests: Some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    })
}

fn proxy_container(
    overrides: &Overrides,
    settings: &Settings,
    resources: ResourceRequirements,
    native: bool,
    rewrites: &[Rewrite],
) -> Container {
    let mut env = vec![env(
        ENV_PROXY_LOG,
        overrides.log_level.unwrap_or(&settings.proxy_log_level),
    )];
    // The token file is set even without a CA: it is where the token is.
    env.push(self::env(
        ENV_PROXY_IDENTITY_TOKEN_FILE,
        &format!("{IDENTITY_DIR}/{TOKEN_FILE}"),
    ));
    if let Some(identity) = &settings.identity {
        env.push(self::env(ENV_PROXY_CA_ADDR, &identity.ca_addr));
        env.push(self::env(
            ENV_PROXY_CA_SERVER_NAME,
            &identity.ca_server_name,
        ));
        env.push(self::env(
            ENV_PROXY_CA_ROOTS,
            &format!("{IDENTITY_DIR}/{CA_ROOTS_FILE}"),
        ));
        // Discovery trusts the identity's roots and server name, and names
        // the pod as the downward API gives it.
        if let Some(addrs) = &settings.discovery_addrs {
            env.push(self::env(ENV_PROXY_DISCOVERY_ADDR, &addrs.join(",")));
            env.push(field_env(ENV_PROXY_POD_NAME, "metadata.name"));
            env.push(field_env(ENV_PROXY_POD_NAMESPACE, "metadata.namespace"));
        }
    }
    if let Some(ports) = &overrides.opaque_ports {
        env.push(self::env(ENV_PROXY_OPAQUE_PORTS, ports));
    }
    if let Some(deadline) = overrides.drain_deadline {
        env.push(self::env(
            ENV_PROXY_DRAIN_DEADLINE,
            &humantime::format_duration(deadline).to_string(),
        ));
    }
    if !rewrites.is_empty() {
        env.push(self::env(
            probes::ENV_APP_PROBES,
            &probes::app_probes_env(rewrites),
        ));
    }
    let admin_probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(PROXY_ADMIN_PORT)),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    };
    let startup_seconds = i32::try_from(settings.proxy_startup_timeout.as_secs())
        .unwrap_or(i32::MAX)
        .max(1);
    let (restart_policy, startup_probe, lifecycle) = if native {
        let probe = Probe {
            period_seconds: Some(1),
            failure_threshold: Some(startup_seconds),
            ..admin_probe("/ready")
        };
        (Some("Always".to_owned()), Some(probe), None)
    } else {
        // Kubelet starts the next container only once this hook returns.
        let hook = Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(settings.await_command()),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        };
        (None, None, Some(hook))
    };
    Container {
        name: PROXY_NAME.to_owned(),
        image: Some(settings.proxy_image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("remora-admin".to_owned()),
            container_port: i32::from(PROXY_ADMIN_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: Some(resources),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_GID),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount(DATA_VOLUME, DATA_DIR, false),
            mount(IDENTITY_VOLUME, IDENTITY_DIR, true),
        ]),
        liveness_probe: Some(admin_probe("/live")),
        readiness_probe: Some(admin_probe("/ready")),
        startup_probe,
        restart_policy,
        lifecycle,
        ..Container::default()
    }
}

fn init_container(overrides: &Overrides, settings: &Settings) -> Container {
    use remora_iptables::config as init;
    let mut env = vec![
        self::env(init::ENV_PROXY_UID, &PROXY_UID.to_string()),
        self::env(init::ENV_PROXY_GID, &PROXY_GID.to_string()),
    ];
    let lists = [
        (
            init::ENV_EXCLUDE_INBOUND_PORTS,
            &overrides.exclude_inbound_ports,
        ),
        (
            init::ENV_EXCLUDE_OUTBOUND_PORTS,
            &overrides.exclude_outbound_ports,
        ),
        (
            init::ENV_EXCLUDE_OUTBOUND_CIDRS,
            &overrides.exclude_outbound_cidrs,
        ),
    ];
    for (name, value) in lists {
        if let Some(value) = value {
            env.push(self::env(name, value));
        }
    }
    let quantity = |s: &str| K8sQuantity(s.to_owned());
    Container {
        name: INIT_NAME.to_owned(),
        image: Some(settings.init_image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("10m")),
                ("memory".to_owned(), quantity("16Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), quantity("64Mi"))])),
            ..ResourceRequirements::default()
        }),
        // iptables needs root with NET_ADMIN and NET_RAW in the pod's
        // network namespace, and nothing else.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
                drop: Some(vec!["ALL".to_owned()]),
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![mount(XTABLES_VOLUME, "/run", false)]),
        ..Container::default()
    }
}

fn volumes(settings: &Settings) -> Vec<Volume> {
    let expiration = i64::try_from(settings.token_expiration.as_secs()).unwrap_or(i64::MAX);
    let mut identity_sources = vec![VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            audience: Some(settings.token_audience.clone()),
            expiration_seconds: Some(expiration),
            path: TOKEN_FILE.to_owned(),
        }),
        ..VolumeProjection::default()
    }];
    if let Some(identity) = &settings.identity {
        // Not optional: without the roots the proxy cannot start, and a
        // missing ConfigMap is then named in the pod's events.
        identity_sources.push(VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: identity.ca_roots_config_map.clone(),
                items: Some(vec![KeyToPath {
                    key: CA_ROOTS_KEY.to_owned(),
                    path: CA_ROOTS_FILE.to_owned(),
                    mode: None,
                }]),
                optional: Some(false),
            }),
            ..VolumeProjection::default()
        });
    }
    vec![
        Volume {
            name: DATA_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                size_limit: None,
            }),
            ..Volume::default()
        },
        Volume {
            name: IDENTITY_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(identity_sources),
                default_mode: None,
            }),
            ..Volume::default()
        },
        Volume {
            name: XTABLES_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ]
}

fn warnings(
    pod_annotations: &BTreeMap<String, String>,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    overrides: &Overrides,
    native: bool,
) -> Vec<String> {
    let mut out: Vec<String> = annotations::unknown(pod_annotations)
        .into_iter()
        .map(|name| {
            format!(
                "annotation {name} is not one remora knows and is ignored; see docs/injector.md \
                 for the list"
            )
        })
        .collect();
    if let Some(deadline) = overrides.drain_deadline {
        // Kubernetes' default grace period is 30s.
        let grace = spec.termination_grace_period_seconds.unwrap_or(30);
        if deadline.as_secs_f64() > grace as f64 {
            out.push(format!(
                "annotation {}: the drain deadline {} is longer than the pod's \
                 terminationGracePeriodSeconds ({grace}s); kubelet kills the proxy first",
                annotations::PROXY_DRAIN_DEADLINE,
                humantime::format_duration(deadline)
            ));
        }
    }
    if !native && spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        out.push(
            "the pod's init containers run after remora-init and before the proxy starts, so \
             their outbound TCP is captured with no proxy to take it; use a native sidecar \
             (remora.dev/native-sidecar: enabled) or exclude their ports"
                .to_owned(),
        );
    }
    out
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

/// An env var from the downward API: a field of the pod itself.
fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: field_path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

pub(crate) fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

fn replace(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation { path, value })
}

/// Kubernetes types always serialize; a failure would be a bug in them, and
/// `null` makes the API server refuse the patch rather than this process
/// panic.
fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}
