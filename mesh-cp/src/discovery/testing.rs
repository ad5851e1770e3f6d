//! Views built by hand for the discovery unit tests.

use serde_json::json;

use crate::view::{Destination, MeshView};

/// `(key, virtual ip, host name, port, endpoints)`; key `<ns>/<name>`
/// gives service `<name>.<ns>` with one backend `<name>`.
pub(crate) type Dest<'a> = (&'a str, &'a str, &'a str, u16, &'a [&'a str]);

fn destination_json(d: &Dest<'_>) -> serde_json::Value {
    let (key, ip, host, port, endpoints) = *d;
    let (ns, name) = key.split_once('/').unwrap();
    json!({
        "service": {
            "name": format!("{name}.{ns}"),
            "addresses": [ip],
            "hostnames": [host],
            "ports": [{"port": port, "backendRefs": [{"name": name}]}],
        },
        "backends": {
            name: {"endpoints": endpoints.iter().map(|e| json!({"address": e})).collect::<Vec<_>>()},
        },
    })
}

pub(crate) fn view(version: u64, destinations: &[Dest<'_>]) -> MeshView {
    let file = json!({
        "version": version,
        "destinations": destinations
            .iter()
            .map(|d| (d.0.to_owned(), destination_json(d)))
            .collect::<serde_json::Map<_, _>>(),
        "workloads": {
            "shop/web-1": {
                "identity": "spiffe://cluster.local/ns/shop/sa/web",
                "inbound": {"mode": "permissive"},
            },
        },
    });
    super::view_file::parse(&file.to_string()).unwrap().0
}

/// Service `<name>.shop` (no addresses) with one backend `<name>`.
pub(crate) fn destination(name: &str, endpoints: &[&str]) -> Destination {
    let key = format!("shop/{name}");
    let v = view(0, &[(&key, "10.0.0.1", "x", 80, endpoints)]);
    let mut d = v.destinations[&key].clone();
    d.service.addresses.clear();
    d.service.hostnames.clear();
    d
}
