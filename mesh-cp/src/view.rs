//! The mesh as discovery serves it: what translation makes of the object
//! store, indexed the way proxies ask for it. A pure value, rebuilt (or
//! patched) by translation and published whole on a watch channel; the
//! discovery server reads it and never the store.
//!
//! A proxy's mesh config is `globals` + its workload's inbound config + the
//! destinations it subscribed to, each with the backends its routes name.
//! Translation owns filling this in; discovery owns slicing and streaming
//! it. Neither reaches into the other's modules.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use remora_api::{Backend, Consumer, GlobalRule, HttpSettings, InboundConfig, Service};

/// Everything discovery can serve, at one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshView {
    /// Grows on every change; a push names the version it comes from.
    pub version: u64,
    /// Settings every proxy gets.
    pub globals: Globals,
    /// Outbound destinations by service key (`<namespace>/<name>`).
    pub destinations: BTreeMap<String, Destination>,
    /// A destination by one of its virtual addresses (ClusterIP:port).
    pub by_addr: BTreeMap<SocketAddr, String>,
    /// A destination by host name and port (`reviews.shop.svc.cluster.local`, 80).
    pub by_host: BTreeMap<(String, u16), String>,
    /// Inbound configs by workload key (`<namespace>/<pod name>`).
    pub workloads: BTreeMap<String, Workload>,
}

/// What every proxy gets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Globals {
    pub http: HttpSettings,
    pub global_rules: Vec<GlobalRule>,
    pub consumers: Vec<Consumer>,
}

/// One service as a proxy routes to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// Its ports and routes; backendRefs name keys of `backends`.
    pub service: Service,
    /// Every backend the routes name, with its endpoints (each meshed
    /// endpoint with its identity).
    pub backends: BTreeMap<String, Backend>,
}

/// One pod's inbound side.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The identity its certificate carries.
    pub identity: String,
    pub inbound: InboundConfig,
}
