//! What one subscription names and what it resolves to in a `MeshView`.
//!
//! Pure: a proto `Resource` becomes a checked `Key` (hostile input is
//! refused here, with the reason), a key resolves against a view to the
//! fragment it names (or "not found" with why), and a fragment renders to
//! the remora-api JSON the proxy validates. Deciding when to push, and the
//! stream itself, belong to `discovery`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use remora_api::{Backend, Consumer, GlobalRule, HttpSettings, InboundConfig, Service};
use serde::Serialize;

use crate::proto::discovery as pb;
use crate::view::{Destination, Globals, MeshView, Workload};

/// The longest host name a subscription may name (DNS's limit).
pub const MAX_HOST_LEN: usize = 253;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a subscription must name a resource (globals, inbound, address or host)")]
    Missing,
    #[error("address {0:?} is not an IPv4 or IPv6 address")]
    Ip(String),
    #[error("port {0} is outside 1..=65535")]
    Port(u32),
    #[error("host {0:?} is not a DNS name of 1 to 253 letters, digits, '-' and '.'")]
    Host(String),
}

/// A checked subscription: what a proxy asked for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Globals,
    Inbound,
    Addr(SocketAddr),
    /// Lowercased host name and port.
    Host(String, u16),
}

fn port(p: u32) -> Result<u16, KeyError> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(KeyError::Port(p)),
    }
}

fn host(name: &str) -> Result<String, KeyError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_HOST_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && !name.contains("..");
    if !ok {
        // Echo a bounded prefix only: the name may be megabytes of garbage.
        let shown: String = name.chars().take(64).collect();
        return Err(KeyError::Host(shown));
    }
    Ok(name.to_ascii_lowercase())
}

impl Key {
    pub fn from_proto(resource: Option<&pb::Resource>) -> Result<Self, KeyError> {
        use pb::resource::Kind;
        match resource.and_then(|r| r.kind.as_ref()) {
            None => Err(KeyError::Missing),
            Some(Kind::Globals(_)) => Ok(Key::Globals),
            Some(Kind::Inbound(_)) => Ok(Key::Inbound),
            Some(Kind::Address(a)) => {
                let ip: IpAddr =
                    a.ip.parse()
                        .map_err(|_| KeyError::Ip(a.ip.chars().take(64).collect()))?;
                Ok(Key::Addr(SocketAddr::new(ip, port(a.port)?)))
            }
            Some(Kind::Host(h)) => Ok(Key::Host(host(&h.name)?, port(h.port)?)),
        }
    }

    pub fn to_proto(&self) -> pb::Resource {
        use pb::resource::Kind;
        let kind = match self {
            Key::Globals => Kind::Globals(pb::Empty {}),
            Key::Inbound => Kind::Inbound(pb::Empty {}),
            Key::Addr(a) => Kind::Address(pb::Address {
                ip: a.ip().to_string(),
                port: u32::from(a.port()),
            }),
            Key::Host(h, p) => Kind::Host(pb::Host {
                name: h.clone(),
                port: u32::from(*p),
            }),
        };
        pb::Resource { kind: Some(kind) }
    }

    /// For logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::Globals => "globals",
            Key::Inbound => "inbound",
            Key::Addr(_) | Key::Host(..) => "destination",
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Globals => f.write_str("globals"),
            Key::Inbound => f.write_str("inbound"),
            Key::Addr(a) => write!(f, "address {a}"),
            Key::Host(h, p) => write!(f, "host {h}:{p}"),
        }
    }
}

/// What a key names in one view. Two views push the same thing exactly
/// when their `Resolved`s are equal, so a change elsewhere in the mesh
/// never reaches this subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved<'a> {
    Globals(&'a Globals),
    Inbound(&'a Workload),
    Destination(&'a str, &'a Destination),
    NotFound(String),
}

/// `workload` is the stream's `<namespace>/<pod>`.
pub fn resolve<'a>(view: &'a MeshView, workload: &str, key: &Key) -> Resolved<'a> {
    let destination = |service_key: Option<&'a String>, what: String| match service_key {
        None => Resolved::NotFound(format!("no service has {what}")),
        Some(k) => match view.destinations.get_key_value(k) {
            Some((k, d)) => Resolved::Destination(k, d),
            // Translation indexes only what it has; say so rather than hang.
            None => Resolved::NotFound(format!("{what} names service {k}, which has no config")),
        },
    };
    match key {
        Key::Globals => Resolved::Globals(&view.globals),
        Key::Inbound => match view.workloads.get(workload) {
            Some(w) => Resolved::Inbound(w),
            None => Resolved::NotFound(format!("no workload {workload}")),
        },
        Key::Addr(a) => destination(view.by_addr.get(a), format!("address {a}")),
        Key::Host(h, p) => destination(
            view.by_host.get(&(h.clone(), *p)),
            format!("host {h} port {p}"),
        ),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GlobalsJson<'a> {
    http: &'a HttpSettings,
    global_rules: &'a [GlobalRule],
    consumers: &'a [Consumer],
}

#[derive(Serialize)]
struct InboundJson<'a> {
    identity: &'a str,
    inbound: &'a InboundConfig,
}

#[derive(Serialize)]
struct DestinationJson<'a> {
    key: &'a str,
    service: &'a Service,
    backends: &'a BTreeMap<String, Backend>,
}

/// The push state of a resolved key: its JSON, or why there is none.
pub fn render(resolved: &Resolved<'_>) -> Result<pb::push::State, serde_json::Error> {
    use pb::push::State;
    Ok(match resolved {
        Resolved::Globals(g) => State::Json(serde_json::to_string(&GlobalsJson {
            http: &g.http,
            global_rules: &g.global_rules,
            consumers: &g.consumers,
        })?),
        Resolved::Inbound(w) => State::Json(serde_json::to_string(&InboundJson {
            identity: &w.identity,
            inbound: &w.inbound,
        })?),
        Resolved::Destination(key, d) => State::Json(serde_json::to_string(&DestinationJson {
            key,
            service: &d.service,
            backends: &d.backends,
        })?),
        Resolved::NotFound(why) => State::NotFound(why.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::testing::{destination, view};

    fn addr(ip: &str, port: u32) -> pb::Resource {
        pb::Resource {
            kind: Some(pb::resource::Kind::Address(pb::Address {
                ip: ip.into(),
                port,
            })),
        }
    }

    fn hostr(name: &str, port: u32) -> pb::Resource {
        pb::Resource {
            kind: Some(pb::resource::Kind::Host(pb::Host {
                name: name.into(),
                port,
            })),
        }
    }

    #[test]
    fn keys_are_checked_and_host_names_lowercased() {
        assert_eq!(
            Key::from_proto(Some(&addr("10.96.0.10", 80))),
            Ok(Key::Addr("10.96.0.10:80".parse().unwrap()))
        );
        assert_eq!(
            Key::from_proto(Some(&addr("fd00::1", 8080))),
            Ok(Key::Addr("[fd00::1]:8080".parse().unwrap()))
        );
        assert_eq!(
            Key::from_proto(Some(&hostr("Reviews.Shop.svc.cluster.local", 9080))),
            Ok(Key::Host("reviews.shop.svc.cluster.local".into(), 9080))
        );
        let k = Key::Host("a.b".into(), 1);
        assert_eq!(Key::from_proto(Some(&k.to_proto())), Ok(k));
    }

    #[test]
    fn hostile_keys_are_refused_with_the_reason() {
        assert_eq!(Key::from_proto(None), Err(KeyError::Missing));
        assert_eq!(
            Key::from_proto(Some(&pb::Resource { kind: None })),
            Err(KeyError::Missing)
        );
        assert_eq!(
            Key::from_proto(Some(&addr("10.0.0.300", 80))),
            Err(KeyError::Ip("10.0.0.300".into()))
        );
        assert_eq!(
            Key::from_proto(Some(&addr("10.0.0.1", 0))),
            Err(KeyError::Port(0))
        );
        assert_eq!(
            Key::from_proto(Some(&addr("10.0.0.1", 65536))),
            Err(KeyError::Port(65536))
        );
        assert_eq!(
            Key::from_proto(Some(&hostr("a b", 80))),
            Err(KeyError::Host("a b".into()))
        );
        assert_eq!(
            Key::from_proto(Some(&hostr("", 80))),
            Err(KeyError::Host(String::new()))
        );
        let long = "a".repeat(254);
        assert_eq!(
            Key::from_proto(Some(&hostr(&long, 80))),
            Err(KeyError::Host("a".repeat(64)))
        );
        assert_eq!(
            Key::from_proto(Some(&hostr("a..b", 80))),
            Err(KeyError::Host("a..b".into()))
        );
    }

    #[test]
    fn a_destination_resolves_by_address_and_by_host_to_the_same_service() {
        let v = view(
            1,
            &[(
                "shop/reviews",
                "10.96.0.10",
                "reviews.shop.svc.cluster.local",
                9080,
                &["10.1.0.5:9080"],
            )],
        );
        let by_addr = resolve(
            &v,
            "shop/web-1",
            &Key::Addr("10.96.0.10:9080".parse().unwrap()),
        );
        let by_host = resolve(
            &v,
            "shop/web-1",
            &Key::Host("reviews.shop.svc.cluster.local".into(), 9080),
        );
        assert_eq!(by_addr, by_host);
        let Ok(pb::push::State::Json(json)) = render(&by_addr) else {
            panic!("{by_addr:?}")
        };
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["key"], "shop/reviews");
        assert_eq!(parsed["service"]["name"], "reviews.shop");
        assert_eq!(
            parsed["backends"]["reviews"]["endpoints"][0]["address"],
            "10.1.0.5:9080"
        );
    }

    #[test]
    fn unknown_resources_say_what_is_missing() {
        let mut v = view(1, &[]);
        assert_eq!(
            resolve(
                &v,
                "shop/web-1",
                &Key::Addr("10.96.0.99:80".parse().unwrap())
            ),
            Resolved::NotFound("no service has address 10.96.0.99:80".into())
        );
        assert_eq!(
            resolve(&v, "shop/web-1", &Key::Host("x".into(), 80)),
            Resolved::NotFound("no service has host x port 80".into())
        );
        assert_eq!(
            resolve(&v, "shop/db-1", &Key::Inbound),
            Resolved::NotFound("no workload shop/db-1".into())
        );
        // An index entry whose service is gone is not found either.
        v.by_addr
            .insert("10.96.0.7:80".parse().unwrap(), "shop/gone".into());
        assert_eq!(
            resolve(
                &v,
                "shop/web-1",
                &Key::Addr("10.96.0.7:80".parse().unwrap())
            ),
            Resolved::NotFound(
                "address 10.96.0.7:80 names service shop/gone, which has no config".into()
            )
        );
    }

    #[test]
    fn a_change_to_one_destination_leaves_the_others_equal() {
        let one = view(
            1,
            &[
                ("shop/a", "10.96.0.1", "a", 80, &["10.1.0.1:80"]),
                ("shop/b", "10.96.0.2", "b", 80, &["10.1.0.2:80"]),
            ],
        );
        let mut two = one.clone();
        two.version = 2;
        two.destinations
            .insert("shop/b".into(), destination("b", &["10.1.0.3:80"]));
        let a = Key::Addr("10.96.0.1:80".parse().unwrap());
        let b = Key::Addr("10.96.0.2:80".parse().unwrap());
        assert_eq!(resolve(&one, "w", &a), resolve(&two, "w", &a));
        assert_ne!(resolve(&one, "w", &b), resolve(&two, "w", &b));
    }
}
