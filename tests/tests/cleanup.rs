//! `remora-init` rule lifecycle: it changes the nat table, running it again
//! changes nothing, and `--cleanup` restores exactly what was there before,
//! for IPv4 and IPv6.

use remora_e2e::{Family, Pod, TestNet, DEFAULT_INIT_ARGS};

fn snapshot(pod: &Pod) -> (String, String) {
    (pod.iptables_save(Family::V4), pod.iptables_save(Family::V6))
}

fn init(pod: &Pod, extra: &[&str]) {
    let mut args = DEFAULT_INIT_ARGS.to_vec();
    args.extend_from_slice(extra);
    pod.run_init(&args);
}

#[test]
fn cleanup_restores_the_nat_table_exactly() {
    let net = TestNet::new("cleanup_restore");
    let pod = net.pod("a");
    // Rules someone else owns must survive both init and cleanup.
    pod.exec(
        "iptables",
        &[
            "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "ACCEPT",
        ],
    );
    pod.exec(
        "ip6tables",
        &[
            "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "ACCEPT",
        ],
    );
    let before = snapshot(&pod);

    init(&pod, &[]);
    let installed = snapshot(&pod);
    assert_ne!(
        installed.0, before.0,
        "remora-init changed nothing in the IPv4 nat table:\n{}",
        installed.0
    );
    assert_ne!(
        installed.1, before.1,
        "remora-init changed nothing in the IPv6 nat table:\n{}",
        installed.1
    );
    assert!(
        installed.0.contains("--dport 53 -j ACCEPT"),
        "the foreign IPv4 rule survived init:\n{}",
        installed.0
    );

    init(&pod, &[]);
    let again = snapshot(&pod);
    assert_eq!(
        again.0, installed.0,
        "running remora-init twice changed the IPv4 rules"
    );
    assert_eq!(
        again.1, installed.1,
        "running remora-init twice changed the IPv6 rules"
    );

    init(&pod, &["--cleanup"]);
    let cleaned = snapshot(&pod);
    assert_eq!(
        cleaned.0, before.0,
        "IPv4 nat table after --cleanup differs from before init"
    );
    assert_eq!(
        cleaned.1, before.1,
        "IPv6 nat table after --cleanup differs from before init"
    );

    init(&pod, &["--cleanup"]);
    assert_eq!(
        snapshot(&pod),
        before,
        "a second --cleanup must succeed and change nothing"
    );
}

#[test]
fn dry_run_prints_rules_and_changes_nothing() {
    let net = TestNet::new("cleanup_dryrun");
    let pod = net.pod("a");
    let before = snapshot(&pod);
    let printed = {
        let mut args = DEFAULT_INIT_ARGS.to_vec();
        args.push("--dry-run");
        pod.run_init(&args)
    };
    assert!(
        printed.contains("15001"),
        "--dry-run prints the outbound redirect:\n{printed}"
    );
    assert!(
        printed.contains("15006"),
        "--dry-run prints the inbound redirect:\n{printed}"
    );
    assert_eq!(snapshot(&pod), before, "--dry-run changed the nat table");
}
