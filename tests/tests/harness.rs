//! The harness itself: pods reach each other over the bridge on IPv4 and
//! IPv6 without any mesh, and every namespace is gone after drop, even after
//! a panic. If these fail, no other e2e result means anything.

use std::path::Path;

use remora_e2e::{round_trip, within, TestNet, WAIT};

#[tokio::test]
async fn unmeshed_pods_reach_each_other_over_ipv4_and_ipv6() {
    let net = TestNet::new("harness_reach");
    let a = net.pod("a");
    let b = net.pod("b");
    assert_eq!(a.ip4().to_string(), "10.99.0.2");
    assert_eq!(b.ip6().to_string(), "fd00:99::3");
    let app = b.spawn_echo_server(8080);

    for addr in [b.addr4(8080), b.addr6(8080)] {
        let mut stream = a.connect(addr).await.expect("connect across the bridge");
        let reply = within(WAIT, "echo", round_trip(&mut stream, b"ping"))
            .await
            .unwrap();
        assert_eq!(reply, b"ping", "echo over {addr}");
    }
    let peers: Vec<String> = app.peers().iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(
        peers,
        ["10.99.0.2", "fd00:99::2"],
        "the app sees pod a's addresses"
    );
}

#[tokio::test]
async fn namespaces_are_deleted_on_drop_even_after_a_panic() {
    let names = std::sync::Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let net = TestNet::new("harness_teardown");
        let pod = net.pod("a");
        names.lock().unwrap().extend([
            net.node_namespace().to_string(),
            pod.namespace().to_string(),
        ]);
        for ns in names.lock().unwrap().iter() {
            assert!(Path::new("/run/netns").join(ns).exists(), "{ns} created");
        }
        panic!("test failure inside the net");
    });
    assert!(outcome.is_err());
    for ns in names.lock().unwrap().iter() {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "{ns} still exists after drop"
        );
    }
}

#[test]
fn enter_runs_code_in_the_pod_namespace() {
    let net = TestNet::new("harness_enter");
    let pod = net.pod("a");
    let addrs = pod.enter(|| std::fs::read_to_string("/proc/thread-self/net/if_inet6").unwrap());
    assert!(
        addrs.contains("fd000099000000000000000000000002"),
        "pod sees its own IPv6 address:\n{addrs}"
    );
    let host = std::fs::read_to_string("/proc/thread-self/net/if_inet6").unwrap_or_default();
    assert!(
        !host.contains("fd000099000000000000000000000002"),
        "test thread stays outside the pod"
    );
}
