//! The object store translation reads: every object of the kinds Remora
//! reads, by kind and `<namespace>/<name>`.
//!
//! This module owns [`Kind`], the one place that maps an apiVersion and
//! kind to a map of the [`Store`]; every way of changing the store (insert,
//! remove, a relist of one kind, layering one store over another) goes
//! through it. A new kind is a variant of [`Kind`], a field of [`Store`],
//! and an arm in each of the matches below (the compiler lists them).

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;

use super::gateway::{GrpcRoute, HttpRoute};
use crate::crds::{AuthorizationPolicy, Consumer, MeshTLSPolicy, PluginPolicy, TrafficPolicy};

/// A `<namespace>/<name>` key (just `<name>` for a Namespace).
pub type Key = String;

/// Every object translation reads, by kind and `<namespace>/<name>`.
#[derive(Debug, Clone, Default)]
pub struct Store {
    pub namespaces: BTreeMap<String, Namespace>,
    pub services: BTreeMap<Key, Service>,
    pub endpoint_slices: BTreeMap<Key, EndpointSlice>,
    pub pods: BTreeMap<Key, Pod>,
    /// Kept for what may read them later (identities of ServiceAccounts
    /// that exist); translation takes identities from Pods today.
    pub service_accounts: BTreeMap<Key, ServiceAccount>,
    pub secrets: BTreeMap<Key, Secret>,
    pub http_routes: BTreeMap<Key, HttpRoute>,
    pub grpc_routes: BTreeMap<Key, GrpcRoute>,
    pub consumers: BTreeMap<Key, Consumer>,
    pub authorization_policies: BTreeMap<Key, AuthorizationPolicy>,
    pub mesh_tls_policies: BTreeMap<Key, MeshTLSPolicy>,
    pub traffic_policies: BTreeMap<Key, TrafficPolicy>,
    pub plugin_policies: BTreeMap<Key, PluginPolicy>,
}

/// The kinds the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Service,
    EndpointSlice,
    Pod,
    ServiceAccount,
    Secret,
    HttpRoute,
    GrpcRoute,
    Consumer,
    AuthorizationPolicy,
    MeshTlsPolicy,
    TrafficPolicy,
    PluginPolicy,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Namespace,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::ServiceAccount,
        Kind::Secret,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::Consumer,
        Kind::AuthorizationPolicy,
        Kind::MeshTlsPolicy,
        Kind::TrafficPolicy,
        Kind::PluginPolicy,
    ];

    /// The API group (`""` for core) and the kind as Kubernetes spells it.
    pub fn group_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Namespace => ("", "Namespace"),
            Kind::Service => ("", "Service"),
            Kind::EndpointSlice => ("discovery.k8s.io", "EndpointSlice"),
            Kind::Pod => ("", "Pod"),
            Kind::ServiceAccount => ("", "ServiceAccount"),
            Kind::Secret => ("", "Secret"),
            Kind::HttpRoute => ("gateway.networking.k8s.io", "HTTPRoute"),
            Kind::GrpcRoute => ("gateway.networking.k8s.io", "GRPCRoute"),
            Kind::Consumer => (crate::crds::GROUP, "Consumer"),
            Kind::AuthorizationPolicy => (crate::crds::GROUP, "AuthorizationPolicy"),
            Kind::MeshTlsPolicy => (crate::crds::GROUP, "MeshTLSPolicy"),
            Kind::TrafficPolicy => (crate::crds::GROUP, "TrafficPolicy"),
            Kind::PluginPolicy => (crate::crds::GROUP, "PluginPolicy"),
        }
    }

    /// The kind as Kubernetes spells it, e.g. `HTTPRoute`.
    pub fn name(self) -> &'static str {
        self.group_kind().1
    }

    /// The kind of an apiVersion (`v1`, `group/version`) and kind; any
    /// version of a known group is read with the same types.
    pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        Kind::ALL
            .into_iter()
            .find(|k| k.group_kind() == (group, kind))
    }

    /// Namespaces are keyed by name alone.
    pub fn cluster_scoped(self) -> bool {
        self == Kind::Namespace
    }

    /// The store key of an object of this kind (namespace `default` when
    /// none is given, as kubectl does).
    pub fn key(self, namespace: Option<&str>, name: &str) -> Key {
        if self.cluster_scoped() {
            name.to_owned()
        } else {
            format!("{}/{name}", namespace.unwrap_or("default"))
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An object the store cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("an object needs apiVersion, kind and metadata.name")]
    Incomplete,
    #[error("{api_version} {kind} is not a kind Remora reads")]
    UnknownKind { api_version: String, kind: String },
    #[error("{kind} {name}: {message}")]
    Invalid {
        kind: String,
        name: String,
        message: String,
    },
    #[error("{kind} {name} was given in a list of {expected}")]
    WrongKind {
        kind: String,
        name: String,
        expected: Kind,
    },
}

/// One map of the store, whatever its object type.
trait Objects {
    /// Parses `value` into the map's type and puts it at `key`.
    fn put(&mut self, key: Key, value: serde_json::Value) -> Result<(), String>;
    fn remove(&mut self, key: &str) -> bool;
    fn retain_keys(&mut self, keep: &BTreeSet<Key>);
    fn len(&self) -> usize;
    /// Copies every object of `other` (a map of the same kind) over ours.
    fn overlay(&mut self, other: &dyn Objects);
    fn as_any(&self) -> &dyn Any;
}

impl<T: DeserializeOwned + Clone + 'static> Objects for BTreeMap<Key, T> {
    fn put(&mut self, key: Key, value: serde_json::Value) -> Result<(), String> {
        let object = serde_path_to_error::deserialize(value)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
        self.insert(key, object);
        Ok(())
    }

    fn remove(&mut self, key: &str) -> bool {
        BTreeMap::remove(self, key).is_some()
    }

    fn retain_keys(&mut self, keep: &BTreeSet<Key>) {
        self.retain(|k, _| keep.contains(k));
    }

    fn len(&self) -> usize {
        BTreeMap::len(self)
    }

    fn overlay(&mut self, other: &dyn Objects) {
        if let Some(other) = other.as_any().downcast_ref::<Self>() {
            self.extend(other.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// What identifies an object: its kind, key and name.
struct Identity {
    kind: Kind,
    key: Key,
    name: String,
    namespace: Option<String>,
}

fn identify(value: &serde_json::Value) -> Result<Identity, ObjectError> {
    let text = |pointer: &str| value.pointer(pointer).and_then(|v| v.as_str());
    let api_version = text("/apiVersion").unwrap_or_default();
    let kind_name = text("/kind").unwrap_or_default();
    let name = text("/metadata/name").ok_or(ObjectError::Incomplete)?;
    let kind = Kind::of(api_version, kind_name).ok_or_else(|| ObjectError::UnknownKind {
        api_version: api_version.to_owned(),
        kind: kind_name.to_owned(),
    })?;
    let namespace = text("/metadata/namespace").map(str::to_owned);
    Ok(Identity {
        kind,
        key: kind.key(namespace.as_deref(), name),
        name: name.to_owned(),
        namespace,
    })
}

impl Store {
    fn objects(&self, kind: Kind) -> &dyn Objects {
        match kind {
            Kind::Namespace => &self.namespaces,
            Kind::Service => &self.services,
            Kind::EndpointSlice => &self.endpoint_slices,
            Kind::Pod => &self.pods,
            Kind::ServiceAccount => &self.service_accounts,
            Kind::Secret => &self.secrets,
            Kind::HttpRoute => &self.http_routes,
            Kind::GrpcRoute => &self.grpc_routes,
            Kind::Consumer => &self.consumers,
            Kind::AuthorizationPolicy => &self.authorization_policies,
            Kind::MeshTlsPolicy => &self.mesh_tls_policies,
            Kind::TrafficPolicy => &self.traffic_policies,
            Kind::PluginPolicy => &self.plugin_policies,
        }
    }

    fn objects_mut(&mut self, kind: Kind) -> &mut dyn Objects {
        match kind {
            Kind::Namespace => &mut self.namespaces,
            Kind::Service => &mut self.services,
            Kind::EndpointSlice => &mut self.endpoint_slices,
            Kind::Pod => &mut self.pods,
            Kind::ServiceAccount => &mut self.service_accounts,
            Kind::Secret => &mut self.secrets,
            Kind::HttpRoute => &mut self.http_routes,
            Kind::GrpcRoute => &mut self.grpc_routes,
            Kind::Consumer => &mut self.consumers,
            Kind::AuthorizationPolicy => &mut self.authorization_policies,
            Kind::MeshTlsPolicy => &mut self.mesh_tls_policies,
            Kind::TrafficPolicy => &mut self.traffic_policies,
            Kind::PluginPolicy => &mut self.plugin_policies,
        }
    }

    /// Adds or replaces one object given as JSON (a YAML document read
    /// into a value, or an object from the API server), by its apiVersion
    /// and kind. Returns its kind. An object that does not parse changes
    /// nothing: an earlier version at the same key stays.
    pub fn insert(&mut self, value: serde_json::Value) -> Result<&'static str, ObjectError> {
        let id = identify(&value)?;
        let mut value = value;
        if !id.kind.cluster_scoped() && id.namespace.is_none() {
            if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.insert("namespace".into(), "default".into());
            }
        }
        self.objects_mut(id.kind)
            .put(id.key, value)
            .map_err(|message| ObjectError::Invalid {
                kind: id.kind.name().to_owned(),
                name: id.name,
                message,
            })?;
        Ok(id.kind.name())
    }

    /// Removes one object; false if it was not there.
    pub fn remove(
        &mut self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<bool, ObjectError> {
        let k = Kind::of(api_version, kind).ok_or_else(|| ObjectError::UnknownKind {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        })?;
        Ok(self.objects_mut(k).remove(&k.key(namespace, name)))
    }

    /// Replaces every object of `kind` with `objects` (a relist): the ones
    /// not listed are removed, the listed ones inserted. A listed object
    /// that does not parse keeps its earlier version, if it had one; each
    /// such object is returned with its error, the rest still load.
    pub fn replace_kind(
        &mut self,
        kind: Kind,
        objects: Vec<serde_json::Value>,
    ) -> Vec<(String, ObjectError)> {
        let mut errors = Vec::new();
        let mut listed = Vec::with_capacity(objects.len());
        let mut keep = BTreeSet::new();
        for value in objects {
            match identify(&value) {
                Ok(id) if id.kind == kind => {
                    keep.insert(id.key);
                    listed.push(value);
                }
                Ok(id) => errors.push((
                    id.kind.name().to_owned(),
                    ObjectError::WrongKind {
                        kind: id.kind.name().to_owned(),
                        name: id.name,
                        expected: kind,
                    },
                )),
                Err(e) => errors.push((kind.name().to_owned(), e)),
            }
        }
        self.objects_mut(kind).retain_keys(&keep);
        for value in listed {
            if let Err(e) = self.insert(value) {
                errors.push((kind.name().to_owned(), e));
            }
        }
        errors
    }

    /// How many objects of `kind` the store holds.
    pub fn len(&self, kind: Kind) -> usize {
        self.objects(kind).len()
    }

    /// True when the store holds no object at all.
    pub fn is_empty(&self) -> bool {
        Kind::ALL.into_iter().all(|k| self.len(k) == 0)
    }

    /// Puts every object of `other` over this store's: same kind and key,
    /// `other`'s wins.
    pub fn overlay(&mut self, other: &Store) {
        for kind in Kind::ALL {
            self.objects_mut(kind).overlay(other.objects(kind));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, ns: &str, name: &str, port: u16) -> serde_json::Value {
        let (api_version, spec) = match kind {
            "Service" => ("v1", serde_json::json!({"ports": [{"port": port}]})),
            "Namespace" => ("v1", serde_json::json!({})),
            _ => ("remora.dev/v1alpha1", serde_json::json!({})),
        };
        serde_json::json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": ns}, "spec": spec,
        })
    }

    fn service_port(store: &Store, key: &str) -> i32 {
        store.services[key]
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0]
            .port
    }

    #[test]
    fn every_kind_maps_back_from_its_api_version_and_kind() {
        for kind in Kind::ALL {
            let (group, name) = kind.group_kind();
            let api_version = if group.is_empty() {
                "v1".to_owned()
            } else {
                format!("{group}/v1")
            };
            assert_eq!(Kind::of(&api_version, name), Some(kind));
        }
        assert_eq!(Kind::of("apps/v1", "Deployment"), None);
        assert_eq!(Kind::of("v1", "HTTPRoute"), None);
    }

    #[test]
    fn remove_takes_one_object_by_its_identity() {
        let mut s = Store::default();
        s.insert(object("Service", "shop", "web", 80)).unwrap();
        s.insert(object("Service", "shop", "api", 80)).unwrap();
        s.insert(object("Namespace", "", "shop", 0)).unwrap();
        assert!(s.remove("v1", "Service", Some("shop"), "web").unwrap());
        assert!(!s.remove("v1", "Service", Some("shop"), "web").unwrap());
        assert!(s.remove("v1", "Namespace", None, "shop").unwrap());
        assert_eq!(s.services.keys().collect::<Vec<_>>(), ["shop/api"]);
        assert_eq!(s.len(Kind::Namespace), 0);
        assert_eq!(
            s.remove("apps/v1", "Deployment", Some("shop"), "d")
                .unwrap_err()
                .to_string(),
            "apps/v1 Deployment is not a kind Remora reads"
        );
    }

    #[test]
    fn a_relist_replaces_one_kind_and_an_invalid_object_keeps_its_last_version() {
        let mut s = Store::default();
        s.insert(object("Service", "shop", "web", 80)).unwrap();
        s.insert(object("Service", "shop", "gone", 80)).unwrap();
        s.insert(object("Namespace", "", "shop", 0)).unwrap();
        let mut bad = object("Service", "shop", "web", 81);
        bad["spec"]["ports"][0]["port"] = "many".into();
        let errors = s.replace_kind(
            Kind::Service,
            vec![
                bad,
                object("Service", "shop", "new", 8080),
                object("Namespace", "", "other", 0),
            ],
        );
        let errors: Vec<(String, String)> = errors
            .into_iter()
            .map(|(k, e)| (k, e.to_string()))
            .collect();
        assert_eq!(
            errors,
            [
                (
                    "Namespace".to_owned(),
                    "Namespace other was given in a list of Service".to_owned()
                ),
                (
                    "Service".to_owned(),
                    "Service web: spec.ports[0].port: invalid type: string \"many\", expected i32"
                        .to_owned()
                ),
            ]
        );
        assert_eq!(
            s.services.keys().collect::<Vec<_>>(),
            ["shop/new", "shop/web"]
        );
        assert_eq!(service_port(&s, "shop/web"), 80);
        assert_eq!(s.namespaces.keys().collect::<Vec<_>>(), ["shop"]);
    }

    #[test]
    fn an_overlay_wins_by_key_and_keeps_the_rest() {
        let mut base = Store::default();
        base.insert(object("Service", "shop", "web", 80)).unwrap();
        base.insert(object("Service", "shop", "api", 80)).unwrap();
        let mut top = Store::default();
        top.insert(object("Service", "shop", "web", 9090)).unwrap();
        top.insert(object("Namespace", "", "shop", 0)).unwrap();
        base.overlay(&top);
        assert_eq!(
            base.services.keys().collect::<Vec<_>>(),
            ["shop/api", "shop/web"]
        );
        assert_eq!(service_port(&base, "shop/web"), 9090);
        assert_eq!(service_port(&base, "shop/api"), 80);
        assert_eq!(base.len(Kind::Namespace), 1);
        assert!(!base.is_empty());
        assert!(Store::default().is_empty());
    }
}
