//! Discovery end to end: a real remora-cp in file mode (`--source-dir`, a
//! directory of Kubernetes YAML) and sidecars with `--discovery-addr`.
//! Service VIPs routed to their EndpointSlices, an HTTPRoute and an
//! endpoint removal taking effect live, a NACKed object counted once and
//! harmless, a dead control plane that leaves traffic flowing and resyncs
//! on restart, failover between two replicas, hostile control-plane
//! addresses, unknown destinations passed through, a STRICT
//! MeshTLSPolicy delivered to the server's sidecar, a GRPCRoute
//! routing a real tonic client's calls by method and header, an HTTPRoute
//! mirror to a Service port, and an idle
//! destination unsubscribed and subscribed again.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use remora_e2e::grpc_apps::pb::echo_client::EchoClient;
use remora_e2e::grpc_apps::pb::{ChatMessage, SayRequest};
use remora_e2e::http_apps::{eventually, send_many, HttpClient, Req};
use remora_e2e::{
    assert_closed_without_data, within, write_readable, App, Pod, ProxyHandle, TestNet, CLIENT,
    DEFAULT_INIT_ARGS,
};
use tokio::io::AsyncWriteExt;

use remora_e2e::file_mesh::*;

#[tokio::test]
async fn a_vip_routes_to_its_endpoint_slice_and_routes_and_endpoints_change_live() {
    let m = Mesh::new("disc_live").await;
    let cp = m.start_cp(&m.cp_pod).await;
    let proxy = m.mesh_client(&cp.ca_addr(), &cp.roots_path()).await;

    // a) The VIP is unknown until the first connection asks for it; then
    // round robin over the slice's two endpoints.
    let got = tally(send_many(&m.client, web(), 20, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 10), ("b", 10)]));
    let d = dump(&proxy).await;
    assert_eq!(d["discovery"]["controlPlane"], cp.ca_addr().as_str());
    assert_eq!(
        d["counts"]["services"], 1,
        "only what the client talked to: {d}"
    );

    // b) An HTTPRoute sends flagged requests to web-v2, without a restart.
    let before = version(&proxy, WEB_SUB).await;
    m.dir.write("route", CANARY_ROUTE);
    pushed_after(&proxy, WEB_SUB, before).await;
    let got = tally(
        send_many(&m.client, web(), 20, 1, |i| {
            let req = Req::get("/");
            if i % 2 == 0 {
                req.header("x-canary", "1")
            } else {
                req
            }
        })
        .await,
    );
    assert_eq!(got, counts(&[("a", 5), ("b", 5), ("v2", 10)]));
    assert_eq!(m.received(), counts(&[("a", 15), ("b", 15), ("v2", 10)]));

    // c) b leaves the slice: it gets nothing after the push.
    let before = version(&proxy, WEB_SUB).await;
    m.dir.write("services", &services(&m.ips[..1], m.ips[2]));
    pushed_after(&proxy, WEB_SUB, before).await;
    let got = tally(send_many(&m.client, web(), 10, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 10)]));
    assert_eq!(m.received(), counts(&[("a", 25), ("b", 15), ("v2", 10)]));

    let metrics = proxy.metrics().await;
    assert_eq!(metrics.get("remora_discovery_connected", &[]), 1.0);
    assert_eq!(metrics.get("remora_discovery_reconnects_total", &[]), 0.0);
    assert_eq!(
        metrics.get("remora_discovery_pushes_total", &[("result", "rejected")]),
        0.0
    );
}

#[tokio::test]
async fn a_nacked_object_leaves_traffic_alone_and_is_counted_once() {
    let m = Mesh::new("disc_nack").await;
    let cp = m.start_cp(&m.cp_pod).await;
    let proxy = m.mesh_client(&cp.ca_addr(), &cp.roots_path()).await;
    let got = tally(send_many(&m.client, web(), 10, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 5), ("b", 5)]));

    // remora-cp checks plugin configs with the proxy's compiler, but a log
    // file is on the proxy's host: only the proxy finds that its directory
    // does not exist, and refuses the consumers (globals) push.
    let before = proxy.metrics().await;
    m.dir.write(
        "consumer",
        "apiVersion: remora.dev/v1alpha1\nkind: Consumer\nmetadata: {name: jack, namespace: default}\nspec: {plugins: {file-logger: {path: /nonexistent-remora-dir/access.log}}}\n",
    );
    proxy
        .wait_metrics("the globals push rejected", |m| {
            m.since(
                &before,
                "remora_discovery_pushes_total",
                &[("result", "rejected")],
            ) == 1.0
        })
        .await;
    let nacks = eventually(PROPAGATION, "remora-cp counted the NACK", || async {
        let n = cp_metrics(&m.cp_pod).await.get(
            "remora_cp_discovery_nacks_total",
            &[("resource", "globals")],
        );
        if n >= 1.0 {
            Ok(n)
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    assert_eq!(nacks, 1.0);
    let d = dump(&proxy).await;
    let error = d["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("file-logger.path: plugin file-logger: /nonexistent-remora-dir/access.log cannot be opened"),
        "{d}"
    );
    // Traffic as before: every request answered by the same endpoints.
    let got = tally(send_many(&m.client, web(), 10, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 5), ("b", 5)]));
    let cp_m = cp_metrics(&m.cp_pod).await;
    assert_eq!(
        cp_m.get(
            "remora_cp_discovery_nacks_total",
            &[("resource", "globals")]
        ),
        1.0
    );
    assert_eq!(
        cp_m.get(
            "remora_cp_discovery_nacks_total",
            &[("resource", "destination")]
        ),
        0.0
    );
}

#[tokio::test]
async fn traffic_survives_a_dead_control_plane_and_a_restart_resyncs() {
    let m = Mesh::new("disc_restart").await;
    let mut cp = m.start_cp(&m.cp_pod).await;
    let proxy = m.mesh_client(&cp.ca_addr(), &cp.roots_path()).await;
    let got = tally(send_many(&m.client, web(), 10, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 5), ("b", 5)]));

    cp.stop();
    proxy
        .wait_metrics("the stream seen gone", |m| {
            m.get("remora_discovery_connected", &[]) == 0.0
        })
        .await;
    let got = tally(send_many(&m.client, web(), 20, 4, |_| Req::get("/")).await);
    assert_eq!(
        got,
        counts(&[("a", 10), ("b", 10)]),
        "20 of 20 while remora-cp is down"
    );
    assert_eq!(
        proxy.ready_status().await,
        200,
        "the last good config keeps it ready"
    );

    // Changed while it was down: the restarted remora-cp pushes it.
    m.dir.write("route", CANARY_ROUTE);
    cp.start().await;
    let got = eventually(
        PROPAGATION,
        "the canary route after the restart",
        || async {
            let reply = HttpClient::new(&m.client, web())
                .send(&Req::get("/").header("x-canary", "1"))
                .await
                .map_err(|e| e.to_string())?;
            if reply.body == "v2" {
                Ok(reply.status)
            } else {
                Err(reply.body)
            }
        },
    )
    .await;
    assert_eq!(got, 200);
    let metrics = proxy.metrics().await;
    assert_eq!(metrics.get("remora_discovery_connected", &[]), 1.0);
    let got = tally(
        send_many(&m.client, web(), 10, 1, |_| {
            Req::get("/").header("x-canary", "1")
        })
        .await,
    );
    assert_eq!(got, counts(&[("v2", 10)]));
}

#[tokio::test]
async fn killing_the_replica_in_use_moves_the_proxy_to_the_other() {
    let m = Mesh::new("disc_failover").await;
    let cp2_pod = m.net.pod("cp2");
    let mut cps = [m.start_cp(&m.cp_pod).await, m.start_cp(&cp2_pod).await];
    // Each replica has its own root here; the proxy trusts both.
    let roots = cps[0].scratch("both-roots.pem");
    write_readable(
        &roots,
        &format!("{}{}", cps[0].root_pem(), cps[1].root_pem()),
    );
    let addrs = format!("{},{}", cps[0].ca_addr(), cps[1].ca_addr());
    let proxy = m.mesh_client(&addrs, &roots).await;
    let got = tally(send_many(&m.client, web(), 10, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 5), ("b", 5)]));
    let d = dump(&proxy).await;
    let first = d["discovery"]["controlPlane"].as_str().unwrap().to_owned();
    assert_eq!(first, cps[0].ca_addr(), "the first address first");

    cps[0].stop();
    let second = cps[1].ca_addr();
    eventually(PROPAGATION, "the proxy on the other replica", || async {
        let now = dump(&proxy).await["discovery"]["controlPlane"].clone();
        if now == second.as_str() {
            Ok(())
        } else {
            Err(now.to_string())
        }
    })
    .await;
    m.dir.write("services", &services(&m.ips[..1], m.ips[2]));
    // The endpoints in force, not a version past one read now: each replica
    // numbers its own versions, and the second one's resync of web may land
    // after controlPlane changed, and pass for the push of this change.
    let only_a = [SocketAddr::from((m.ips[0], APP_PORT)).to_string()];
    eventually(PROPAGATION, "web's endpoints without b", || async {
        let endpoints = web_endpoints(&proxy).await?;
        if endpoints == only_a {
            Ok(())
        } else {
            Err(format!("{endpoints:?}"))
        }
    })
    .await;
    let got = tally(send_many(&m.client, web(), 10, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 10)]));
    let metrics = proxy.metrics().await;
    assert_eq!(metrics.get("remora_discovery_reconnects_total", &[]), 1.0);
    assert_eq!(metrics.get("remora_discovery_connected", &[]), 1.0);
}

/// The endpoints of web's backend (port 80) in force, by address.
async fn web_endpoints(proxy: &ProxyHandle) -> Result<Vec<String>, String> {
    let r = proxy
        .get("/config_dump?backend=default/web:80")
        .await
        .map_err(|e| e.to_string())?;
    let dump: serde_json::Value =
        serde_json::from_str(&r.body).map_err(|e| format!("{e}: {} {}", r.status, r.body))?;
    let endpoints = dump["backend"]["endpoints"]
        .as_array()
        .ok_or_else(|| format!("no endpoints: {dump}"))?;
    Ok(endpoints
        .iter()
        .map(|e| e["address"].as_str().unwrap_or_default().to_owned())
        .collect())
}

/// A "control plane" that accepts and never says a word, and one that
/// answers garbage.
fn hostile_servers(pod: &Pod) -> Vec<App> {
    vec![
        pod.spawn_server(15100, |stream| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(stream);
        }),
        pod.spawn_server(15101, |mut stream| async move {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\n\r\n\x00\x01garbage")
                .await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }),
    ]
}

#[tokio::test]
async fn a_silent_and_a_garbage_control_plane_do_not_block_failover() {
    let m = Mesh::new("disc_hostile").await;
    let cp = m.start_cp(&m.cp_pod).await;
    let _hostile = hostile_servers(&m.cp_pod);
    let ip = m.cp_pod.ip4();
    let addrs = format!("{ip}:15100,{ip}:15101,{}", cp.ca_addr());
    // Ready within the harness's 10 s: the silent one costs one connect
    // timeout, the garbage one fails at once.
    let proxy = m.mesh_client(&addrs, &cp.roots_path()).await;
    let d = dump(&proxy).await;
    assert_eq!(d["discovery"]["controlPlane"], cp.ca_addr().as_str());
    let metrics = proxy.metrics().await;
    assert_eq!(metrics.get("remora_discovery_reconnects_total", &[]), 2.0);
    let got = tally(send_many(&m.client, web(), 10, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 5), ("b", 5)]));

    // An address remora-cp has no service for: "not found", passed through
    // to the original destination.
    let direct = SocketAddr::from((m.ips[2], APP_PORT));
    let got = tally(send_many(&m.client, direct, 3, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("v2", 3)]));
    let d = dump(&proxy).await;
    assert_eq!(d["counts"]["services"], 1, "{d}");
    assert!(
        d["discovery"]["versions"][format!("address {direct}")].is_u64(),
        "the not-found answer is recorded: {d}"
    );

    // An unknown address whose requests name a host the config does not
    // know (web-v2 was never talked to): asked for by `Host`, then routed to
    // that service's endpoints.
    let unknown = SocketAddr::from(([10, 96, 0, 99], 80));
    let got = tally(
        send_many(&m.client, unknown, 4, 1, |_| {
            Req::get("/").host("web-v2.default.svc.cluster.local")
        })
        .await,
    );
    assert_eq!(got, counts(&[("v2", 4)]));
    let d = dump(&proxy).await;
    assert!(
        d["discovery"]["versions"]["host web-v2.default.svc.cluster.local:80"].is_u64(),
        "{d}"
    );
    assert_eq!(d["counts"]["services"], 2, "web and web-v2: {d}");
}

#[tokio::test]
async fn an_unknown_destination_passes_through_after_the_bounded_wait() {
    let m = Mesh::new("disc_wait").await;
    let _hostile = hostile_servers(&m.cp_pod);
    let ip = m.cp_pod.ip4();
    // Only a silent control plane: no config ever arrives, so the proxy is
    // not ready, but its listeners carry traffic.
    m.client.run_init(DEFAULT_INIT_ARGS);
    let roots = m.dir.0.join("no-roots.pem");
    write_readable(&roots, UNUSED_ROOT);
    let mut args = discovery_args(
        &format!("{ip}:15100"),
        &roots.display().to_string(),
        "client",
    );
    args.extend(["--discovery-wait".to_owned(), "300ms".to_owned()]);
    let proxy = m.client.spawn_proxy(&args.strs());
    let ready = eventually(PROPAGATION, "the admin port", || async {
        proxy.get("/ready").await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.contains("discovery: "),
        "/ready says discovery has not delivered: {}",
        ready.body
    );
    let direct = SocketAddr::from((m.ips[0], APP_PORT));
    let got = tally(send_many(&m.client, direct, 3, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 3)]));
}

/// Every request to web is mirrored to web-v2 (Gateway API's shape: a
/// Service port), and answered by web.
const MIRROR_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirror, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
    - filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: web-v2, port: 80}, percent: 100}
      backendRefs: [{name: web, port: 80}]
"#;

#[tokio::test]
async fn an_http_route_mirror_to_a_service_port_reaches_it() {
    let m = Mesh::new("disc_mirror").await;
    m.dir.write("route", MIRROR_ROUTE);
    let cp = m.start_cp(&m.cp_pod).await;
    let proxy = m.mesh_client(&cp.ca_addr(), &cp.roots_path()).await;
    // The destination web carries web-v2's backend for the mirror: the
    // push is applied, not NACKed.
    let got = tally(send_many(&m.client, web(), 10, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 5), ("b", 5)]));
    eventually(PROPAGATION, "10 mirrored requests at v2", || async {
        let received = m.received();
        if received == counts(&[("a", 5), ("b", 5), ("v2", 10)]) {
            Ok(())
        } else {
            Err(format!("{received:?}"))
        }
    })
    .await;
    let metrics = proxy.metrics().await;
    assert_eq!(
        metrics.get("remora_discovery_pushes_total", &[("result", "rejected")]),
        0.0
    );
    assert_eq!(dump(&proxy).await["counts"]["services"], 1);
}

#[tokio::test]
async fn an_idle_destination_is_unsubscribed_and_the_next_request_subscribes_again() {
    let m = Mesh::new("disc_idle").await;
    let cp = m.start_cp(&m.cp_pod).await;
    let roots = cp.roots_path().display().to_string();
    let mut args = discovery_args(&cp.ca_addr(), &roots, "client");
    // The shortest idle time the flag takes.
    args.extend(["--discovery-idle-unsubscribe".to_owned(), "10s".to_owned()]);
    let proxy = m.client.mesh_with(&[], &args.strs()).await;
    // Taken before the requests: the proxy's idle time starts when their
    // connections close, which is after this and before send_many returns.
    let last_used = std::time::Instant::now();
    let got = tally(send_many(&m.client, web(), 4, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 2), ("b", 2)]));
    let d = dump(&proxy).await;
    assert_eq!(d["counts"]["services"], 1, "{d}");
    assert!(d["discovery"]["versions"][WEB_SUB].is_u64(), "{d}");

    // No connection for 10 s: dropped at the next sweep (every 1 s).
    eventually(
        Duration::from_secs(20),
        "the idle destination unsubscribed",
        || async {
            let n = proxy
                .metrics()
                .await
                .get("remora_discovery_unsubscribes_total", &[]);
            if n == 1.0 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;
    // Never before the idle time (the wait above bounds how late).
    let idle_for = last_used.elapsed();
    assert!(
        idle_for >= Duration::from_secs(10),
        "unsubscribed after {idle_for:?} without traffic"
    );
    let d = dump(&proxy).await;
    assert_eq!(d["counts"]["services"], 0, "the config dropped it: {d}");
    assert_eq!(d["discovery"]["versions"].get(WEB_SUB), None, "{d}");
    let unsubscribed = eventually(PROPAGATION, "remora-cp saw the Unsubscribe", || async {
        let n = cp_metrics(&m.cp_pod)
            .await
            .get("remora_cp_discovery_unsubscribes_total", &[]);
        if n == 1.0 {
            Ok(n)
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    assert_eq!(unsubscribed, 1.0);

    // The next request subscribes again (the on-demand wait) and routes
    // by the config as before.
    let got = tally(send_many(&m.client, web(), 4, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 2), ("b", 2)]));
    assert_eq!(m.received(), counts(&[("a", 4), ("b", 4), ("v2", 0)]));
    let d = dump(&proxy).await;
    assert_eq!(d["counts"]["services"], 1, "{d}");
    let metrics = proxy.metrics().await;
    assert_eq!(metrics.get("remora_discovery_unsubscribes_total", &[]), 1.0);
    assert_eq!(
        metrics.get("remora_discovery_pushes_total", &[("result", "rejected")]),
        0.0
    );
    assert_eq!(
        cp_metrics(&m.cp_pod).await.get(
            "remora_cp_discovery_nacks_total",
            &[("resource", "destination")]
        ),
        0.0
    );
}

/// A PEM block no control plane chains to: the silent one never gets as
/// far as a handshake.
const UNUSED_ROOT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

#[tokio::test]
async fn a_strict_mesh_tls_policy_from_the_control_plane_refuses_plaintext() {
    let m = Mesh::new("disc_strict").await;
    let cp = m.start_cp(&m.cp_pod).await;
    // The server pod's sidecar gets its inbound config from remora-cp.
    let server = m.net.pod("srvs");
    let app = server.spawn_http_app(APP_PORT, "s");
    m.dir.write(
        "server-pod",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: srvs, namespace: default, annotations: {remora.dev/status: '{}'}}\nspec: {serviceAccountName: server, containers: [{name: app, image: app}]}\n",
    );
    let roots = cp.roots_path().display().to_string();
    let proxy = server
        .mesh_with(&[], &discovery_args(&cp.ca_addr(), &roots, "srvs").strs())
        .await;
    // PERMISSIVE by default: plaintext from an unmeshed pod is accepted.
    let to_app = SocketAddr::from((server.ip4(), APP_PORT));
    let got = tally(send_many(&m.client, to_app, 2, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("s", 2)]));

    m.dir.write(
        "strict",
        "apiVersion: remora.dev/v1alpha1\nkind: MeshTLSPolicy\nmetadata: {name: strict, namespace: default}\nspec: {mode: STRICT}\n",
    );
    // The mode in force, not just a newer push: the pod's own push (its
    // workload) may land after the policy was written.
    eventually(PROPAGATION, "STRICT in force inbound", || async {
        let r = proxy
            .get("/config_dump?full=1")
            .await
            .map_err(|e| e.to_string())?;
        let full: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
        match full["config"]["inbound"]["mode"].as_str() {
            Some("strict") => Ok(()),
            other => Err(format!("inbound mode {other:?}")),
        }
    })
    .await;
    let mut plain = m.client.connect(to_app).await.unwrap();
    // The sidecar closes before reading; the write may or may not land.
    let _ = plain
        .write_all(b"GET / HTTP/1.1\r\nhost: srvs\r\n\r\n")
        .await;
    assert_closed_without_data(&mut plain, "plaintext under STRICT").await;
    assert_eq!(app.received(), 2, "nothing reached the app after STRICT");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metrics.get(
            "remora_inbound_connections_total",
            &[
                ("security", "plaintext"),
                ("port", "other"),
                ("result", "refused")
            ]
        ),
        1.0,
        "{metrics}"
    );
}

const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const GRPC_PORT: u16 = 50051;

/// Service `echo` (a gRPC port, round robin over `endpoints`) and
/// `echo-v2` (`v2`), and a GRPCRoute on echo: `Say` with `x-canary: 1`
/// and every `Chat` go to echo-v2, the rest to echo.
fn grpc_objects(endpoints: [Ipv4Addr; 2], v2: Ipv4Addr) -> String {
    let [a, b] = endpoints;
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  clusterIPs: [{ECHO_VIP}]
  ports: [{{name: grpc, port: {GRPC_PORT}, appProtocol: grpc}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}
addressType: IPv4
ports: [{{name: grpc, port: {GRPC_PORT}}}]
endpoints: [{{addresses: [{a}]}}, {{addresses: [{b}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-v2, namespace: default}}
spec:
  clusterIPs: [10.96.0.31]
  ports: [{{name: grpc, port: {GRPC_PORT}, appProtocol: grpc}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-v2-1, namespace: default, labels: {{kubernetes.io/service-name: echo-v2}}}}
addressType: IPv4
ports: [{{name: grpc, port: {GRPC_PORT}}}]
endpoints: [{{addresses: [{v2}]}}]
---
apiVersion: remora.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: echo, namespace: default}}
spec:
  targetRefs: [{{kind: Service, name: echo}}]
  loadBalancer: roundRobin
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: {GRPC_PORT}}}]
  rules:
    - matches:
        - method: {{service: echo.Echo, method: Say}}
          headers: [{{name: x-canary, value: "1"}}]
        - method: {{method: Chat}}
      filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {{set: [{{name: x-routed, value: canary}}]}}
      backendRefs: [{{name: echo-v2, port: {GRPC_PORT}}}]
    - backendRefs: [{{name: echo, port: {GRPC_PORT}}}]
"#
    )
}

#[tokio::test]
async fn a_grpc_route_from_the_control_plane_routes_tonic_calls_by_method_and_header() {
    let net = TestNet::new("disc_grpc");
    let cp_pod = net.pod("cp");
    let client = net.pod("client");
    let pods = [net.pod("srva"), net.pod("srvb"), net.pod("srvv2")];
    let apps: Vec<_> = pods
        .iter()
        .map(|p| p.spawn_grpc_echo_server(GRPC_PORT))
        .collect();
    let dir = SourceDir::new("disc_grpc");
    dir.write(
        "objects",
        &grpc_objects([pods[0].ip4(), pods[1].ip4()], pods[2].ip4()),
    );
    let cp = cp_pod
        .start_control_plane(&[CLIENT], &["--source-dir", &dir.arg()])
        .await;
    let roots = cp.roots_path().display().to_string();
    let proxy = client
        .mesh_with(&[], &discovery_args(&cp.ca_addr(), &roots, "client").strs())
        .await;

    let vip = SocketAddr::from((ECHO_VIP, GRPC_PORT));
    let channel = within(PROPAGATION, "the gRPC connection", client.grpc_channel(vip))
        .await
        .unwrap_or_else(|e| panic!("connect to {vip}: {e:?}"));
    let mut echo = EchoClient::new(channel);
    let mut routed = BTreeMap::new();
    for i in 0..20 {
        let mut request = tonic::Request::new(SayRequest {
            text: format!("call {i}"),
            fail_with: 0,
        });
        if i % 2 == 0 {
            request
                .metadata_mut()
                .insert("x-canary", "1".parse().unwrap());
        }
        let reply = echo
            .say(request)
            .await
            .unwrap_or_else(|e| panic!("Say {i}: {e:?}"));
        let header = reply
            .metadata()
            .get("x-routed")
            .map(|v| v.to_str().unwrap().to_owned());
        *routed.entry(header).or_insert(0) += 1;
        assert_eq!(reply.into_inner().text, format!("call {i}"));
    }
    for i in 0..3u32 {
        let messages = tokio_stream::iter([ChatMessage {
            seq: i,
            text: format!("chat {i}"),
            fail_with: 0,
        }]);
        let mut stream = echo
            .chat(messages)
            .await
            .unwrap_or_else(|e| panic!("Chat {i}: {e:?}"))
            .into_inner();
        let reply = stream.message().await.unwrap().unwrap();
        assert_eq!((reply.seq, reply.text), (i, format!("chat {i}")));
        assert_eq!(stream.message().await.unwrap(), None);
    }
    // Canary Says and all Chats to v2 (with the rule's response header);
    // the other Says split round robin over echo's two endpoints.
    let calls: Vec<usize> = apps.iter().map(|a| a.peers().len()).collect();
    assert_eq!(calls, [5, 5, 13]);
    assert_eq!(
        routed,
        BTreeMap::from([(None, 10), (Some("canary".to_owned()), 10)])
    );
    let d = dump(&proxy).await;
    assert_eq!(d["counts"]["services"], 1, "{d}");
    assert_eq!(
        proxy
            .metrics()
            .await
            .get("remora_discovery_pushes_total", &[("result", "rejected")]),
        0.0
    );
}
