//! Real tests: `remora-init` against the kernel, in throwaway network
//! namespaces, for both backends and both address families.
//!
//! Each test makes its own namespace (`remora-ipt-<test>-<pid>`), deleted on
//! drop even when the test panics. They need root (CAP_NET_ADMIN and
//! CAP_SYS_ADMIN for `ip netns`), iproute2, and iptables with both the nft and
//! the legacy binaries. They never skip: a missing tool fails with a message
//! saying what to install.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use clap::Parser;
use remora_iptables::merge::strip_remora;
use remora_iptables::render::CHAIN_PREFIX;
use remora_iptables::{dry_run, render, Args, Config, Family};

const BIN: &str = env!("CARGO_BIN_EXE_remora-init");

const TOOLS: &[&str] = &[
    "ip",
    "iptables-nft-save",
    "iptables-nft-restore",
    "ip6tables-nft-save",
    "ip6tables-nft-restore",
    "iptables-legacy-save",
    "iptables-legacy-restore",
    "ip6tables-legacy-save",
    "ip6tables-legacy-restore",
];

/// Rules someone else owns; they must survive apply and cleanup untouched.
const FOREIGN_RULES: &str = "\
*nat
:FOREIGN - [0:0]
-A PREROUTING -p udp -m udp --dport 53 -j FOREIGN
-A OUTPUT -p tcp -m tcp --dport 9999 -j ACCEPT
-A FOREIGN -j RETURN
COMMIT
";

/// Flags that exercise every kind of rule.
const FLAGS: &[&str] = &[
    "--exclude-inbound-ports",
    "22,9090",
    "--exclude-outbound-ports",
    "3306",
    "--exclude-outbound-cidrs",
    "10.0.0.0/8,169.254.169.254,fd00::/8",
    "--exclude-interfaces",
    "eth1,veth+",
    "--include-inbound-ports",
    "*",
];

#[derive(Debug, Clone, Copy)]
enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Nft => "nft",
            Self::Legacy => "legacy",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Nft => Self::Legacy,
            Self::Legacy => Self::Nft,
        }
    }

    fn program(self, family: Family, verb: &str) -> String {
        format!("{}-{}-{verb}", family.program_prefix(), self.name())
    }
}

/// Fails the test, with instructions, unless it can do real work.
fn preflight() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .expect("running `id -u`");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "these tests create network namespaces and load iptables rules: run them as root"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in TOOLS {
        let found = std::env::split_paths(&path).any(|dir| dir.join(tool).is_file());
        assert!(
            found,
            "`{tool}` is not on PATH; these tests need iproute2 and iptables with both the nft \
             and legacy binaries (Debian/Ubuntu: apt-get install iproute2 iptables)"
        );
    }
}

/// A network namespace that is deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(test: &str) -> Self {
        preflight();
        let name = format!("remora-ipt-{test}-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            stderr(&out)
        );
        Self { name }
    }

    fn exec(
        &self,
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Output {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .envs(envs.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn exec_ok(&self, program: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.exec(program, args, &[], stdin);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            stderr(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn remora_init(&self, args: &[&str]) -> Output {
        self.remora_init_env(args, &[])
    }

    fn remora_init_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        self.exec(BIN, args, envs, None)
    }

    fn remora_init_ok(&self, args: &[&str]) {
        let out = self.remora_init(args);
        assert!(
            out.status.success(),
            "remora-init {args:?} failed: {}",
            stderr(&out)
        );
    }

    fn add_foreign_rules(&self, backend: Backend, family: Family) {
        self.exec_ok(
            &backend.program(family, "restore"),
            &["-w", "--noflush"],
            Some(FOREIGN_RULES),
        );
    }

    /// The nat table, without comments or counters.
    fn nat(&self, backend: Backend, family: Family) -> String {
        normalize(&self.exec_ok(&backend.program(family, "save"), &["-t", "nat"], None))
    }

    /// Every table of every family on both backends. Without `-t`, the save
    /// commands list only the tables that exist, so this creates nothing.
    fn everything(&self) -> String {
        let mut all = String::new();
        for backend in [Backend::Nft, Backend::Legacy] {
            for family in [Family::V4, Family::V6] {
                let program = backend.program(family, "save");
                all.push_str(&format!("## {program}\n"));
                all.push_str(&normalize(&self.exec_ok(&program, &[], None)));
            }
        }
        all
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!(
                "warning: could not delete network namespace {}: {out:?}",
                self.name
            );
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Drops comments (timestamps) and chain counters.
fn normalize(save: &str) -> String {
    save.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_prefix(':') {
            Some(decl) => format!(
                ":{}",
                decl.split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            None => l.to_owned(),
        })
        .map(|l| l + "\n")
        .collect()
}

/// Remora's chains and, per chain, its rules in order. The save output groups
/// rules by chain, so this is the form in which it can be compared with a
/// rendered payload.
fn remora_rules(text: &str) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let mut chains = Vec::new();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or_default();
            if chain.starts_with(CHAIN_PREFIX) {
                chains.push(chain.to_owned());
            }
        } else if line.starts_with("-A ") && line.contains(CHAIN_PREFIX) {
            let chain = line.split_whitespace().nth(1).unwrap_or_default();
            rules
                .entry(chain.to_owned())
                .or_default()
                .push(line.to_owned());
        }
    }
    chains.sort();
    (chains, rules)
}

fn config(args: &[&str]) -> Config {
    let args =
        Args::try_parse_from(std::iter::once("remora-init").chain(args.iter().copied())).unwrap();
    Config::from_args(args).unwrap()
}

fn assert_no_duplicate_lines(text: &str, what: &str) {
    let mut seen = std::collections::HashSet::new();
    for line in text.lines().filter(|l| l.starts_with("-A ")) {
        assert!(
            seen.insert(line),
            "{what}: rule appears twice: {line}\n{text}"
        );
    }
}

/// Apply, apply again, clean up; around pre-existing foreign rules.
fn round_trip(backend: Backend, ipv6: bool) {
    let v = if ipv6 { "v6" } else { "v4" };
    let ns = Netns::new(&format!("rt-{}-{v}", backend.name()));
    let families: &[Family] = if ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    for &family in families {
        ns.add_foreign_rules(backend, family);
    }
    let mut args = vec![
        "--backend",
        backend.name(),
        "--ipv6",
        if ipv6 { "true" } else { "false" },
    ];
    args.extend_from_slice(FLAGS);
    let spec = config(&args).capture;

    let before: Vec<String> = families.iter().map(|&f| ns.nat(backend, f)).collect();
    let other_backend_before = {
        let other = backend.other();
        [Family::V4, Family::V6].map(|f| ns.exec_ok(&other.program(f, "save"), &[], None))
    };

    ns.remora_init_ok(&args);
    let applied: Vec<String> = families.iter().map(|&f| ns.nat(backend, f)).collect();
    for (i, &family) in families.iter().enumerate() {
        let what = format!("{} {} after apply", backend.name(), family.name());
        assert_eq!(
            remora_rules(&applied[i]),
            remora_rules(&render(&spec, family)),
            "{what}: the kernel must hold exactly the rendered rules\n{}",
            applied[i]
        );
        assert!(
            applied[i].contains("-A PREROUTING -p tcp -j REMORA_INBOUND\n"),
            "{what}"
        );
        assert!(
            applied[i].contains("-A OUTPUT -p tcp -j REMORA_OUTPUT\n"),
            "{what}"
        );
        assert_eq!(
            strip_remora(&applied[i]).unwrap(),
            strip_remora(&before[i]).unwrap(),
            "{what}: foreign rules must be untouched"
        );
        assert!(applied[i].contains("-A FOREIGN -j RETURN\n"), "{what}");
        assert_no_duplicate_lines(&applied[i], &what);
    }
    if ipv6 {
        let lo = ns.exec_ok("ip", &["-6", "addr", "show", "dev", "lo"], None);
        assert!(lo.contains("inet6 ::6/128"), "::6 must be on lo: {lo}");
    }

    ns.remora_init_ok(&args);
    for (i, &family) in families.iter().enumerate() {
        let again = ns.nat(backend, family);
        assert_eq!(
            again,
            applied[i],
            "{} {}: applying twice must change nothing",
            backend.name(),
            family.name()
        );
        assert_no_duplicate_lines(&again, "after the second apply");
    }

    let mut cleanup = args.clone();
    cleanup.push("--cleanup");
    ns.remora_init_ok(&cleanup);
    for (i, &family) in families.iter().enumerate() {
        assert_eq!(
            ns.nat(backend, family),
            before[i],
            "{} {}: cleanup must restore the table exactly",
            backend.name(),
            family.name()
        );
    }

    let other = backend.other();
    let other_backend_after =
        [Family::V4, Family::V6].map(|f| ns.exec_ok(&other.program(f, "save"), &[], None));
    assert_eq!(
        other_backend_after.map(|s| normalize(&s)),
        other_backend_before.map(|s| normalize(&s)),
        "the {} backend must not be touched",
        other.name()
    );
}

#[test]
fn nft_ipv4_apply_is_idempotent_and_cleanup_restores() {
    round_trip(Backend::Nft, false);
}

#[test]
fn legacy_ipv4_apply_is_idempotent_and_cleanup_restores() {
    round_trip(Backend::Legacy, false);
}

#[test]
fn nft_ipv6_apply_is_idempotent_and_cleanup_restores() {
    round_trip(Backend::Nft, true);
}

#[test]
fn legacy_ipv6_apply_is_idempotent_and_cleanup_restores() {
    round_trip(Backend::Legacy, true);
}

#[test]
fn auto_backend_uses_nft_in_a_clean_namespace() {
    let ns = Netns::new("auto-nft");
    ns.remora_init_ok(&["--ipv6", "auto"]);
    for family in [Family::V4, Family::V6] {
        assert!(
            ns.nat(Backend::Nft, family)
                .contains("-A OUTPUT -p tcp -j REMORA_OUTPUT"),
            "{}: auto must pick nft, and ipv6 auto must capture IPv6 where ip6tables works",
            family.name()
        );
        let legacy = ns.exec_ok(&Backend::Legacy.program(family, "save"), &[], None);
        assert!(
            !legacy.contains(CHAIN_PREFIX),
            "nothing may go to legacy: {legacy}"
        );
    }
}

#[test]
fn auto_backend_follows_existing_legacy_rules() {
    let ns = Netns::new("auto-legacy");
    ns.add_foreign_rules(Backend::Legacy, Family::V4);
    ns.remora_init_ok(&["--ipv6", "false"]);
    assert!(ns
        .nat(Backend::Legacy, Family::V4)
        .contains("-A OUTPUT -p tcp -j REMORA_OUTPUT"));
    let nft = ns.exec_ok(&Backend::Nft.program(Family::V4, "save"), &[], None);
    assert!(!nft.contains(CHAIN_PREFIX), "nothing may go to nft: {nft}");

    // Cleanup with auto finds the same backend again.
    ns.remora_init_ok(&["--ipv6", "false", "--cleanup"]);
    assert!(!ns.nat(Backend::Legacy, Family::V4).contains(CHAIN_PREFIX));
}

/// Arguments, environment, and the flag the error message must name.
type BadFlags = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn bad_flags_fail_before_touching_any_rule() {
    let ns = Netns::new("bad-flags");
    ns.add_foreign_rules(Backend::Nft, Family::V4);
    ns.add_foreign_rules(Backend::Legacy, Family::V6);
    let before = ns.everything();

    let cases: &[BadFlags] = &[
        (&["--proxy-admin-port", "70000"], &[], "--proxy-admin-port"),
        (
            &["--inbound-capture-port", "0"],
            &[],
            "--inbound-capture-port",
        ),
        (
            &["--exclude-outbound-cidrs", "10.0.0.0/33"],
            &[],
            "--exclude-outbound-cidrs",
        ),
        (
            &["--exclude-inbound-ports", "22,http"],
            &[],
            "--exclude-inbound-ports",
        ),
        (&["--backend", "iptables"], &[], "--backend"),
        (
            &["--exclude-interfaces", "eth0 -j ACCEPT"],
            &[],
            "--exclude-interfaces",
        ),
        (
            &[],
            &[("REMORA_OUTBOUND_CAPTURE_PORT", "99999")],
            "--outbound-capture-port",
        ),
        (&["--proxy-admin-port", "15006"], &[], "--proxy-admin-port"),
        (
            &["--cleanup", "--exclude-outbound-ports", "0"],
            &[],
            "--exclude-outbound-ports",
        ),
    ];
    for (args, envs, flag) in cases {
        let out = ns.remora_init_env(args, envs);
        assert!(!out.status.success(), "{args:?} {envs:?} must fail");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} {envs:?}: invalid flags exit 2"
        );
        let message = stderr(&out);
        assert!(
            message.contains(flag),
            "{args:?} {envs:?}: the message must name {flag}: {message}"
        );
        assert_eq!(ns.everything(), before, "{args:?} {envs:?} changed rules");
    }
}

#[test]
fn dry_run_prints_the_payload_and_changes_nothing() {
    let ns = Netns::new("dry-run");
    ns.add_foreign_rules(Backend::Legacy, Family::V4);
    let before = ns.everything();
    let mut args = vec!["--dry-run"];
    args.extend_from_slice(FLAGS);
    let out = ns.remora_init_env(&args, &[("REMORA_PROXY_UID", "4242")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    // The same flags on the command line; setting the variable in this
    // process would race with the other tests.
    let mut explicit = args.clone();
    explicit.extend_from_slice(&["--proxy-uid", "4242"]);
    let expected = dry_run(&config(&explicit));
    assert_eq!(stdout, expected);
    assert!(stdout.contains("--uid-owner 4242"), "env vars are read");
    assert_eq!(
        ns.everything(),
        before,
        "a dry run must not change anything"
    );
}

// Traffic: what a user would notice. A second namespace plays a remote pod,
// cabled to the pod under test with a veth pair. Stand-ins for the proxy's
// listeners and the app answer with their name, so each connection shows
// where it landed.

/// Runs `f` on a fresh thread inside the named network namespace. With
/// `as_proxy`, sockets that thread creates belong to the proxy's uid and gid
/// (`setfsuid`/`setfsgid` are per thread and are what the owner match sees),
/// while the rest of the test process stays root.
fn in_netns<T: Send + 'static>(
    ns: &str,
    as_proxy: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        if as_proxy {
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(1337));
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(1337));
        }
        f()
    })
    .join()
    .expect("thread in netns panicked")
}

/// Listens on `[::]:port` (IPv4 and IPv6) in `ns`; every connection is
/// answered with `name` and closed.
fn answer(ns: &str, port: u16, name: &'static str) {
    let listener = in_netns(ns, false, move || {
        let socket = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        socket.set_only_v6(false).unwrap();
        socket.set_reuse_address(true).unwrap();
        let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        socket.bind(&addr.into()).unwrap();
        socket.listen(64).unwrap();
        TcpListener::from(socket)
    });
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(name.as_bytes());
        }
    });
}

/// Connects to `dst` from `ns` and returns who answered.
fn who_answers(ns: &str, as_proxy: bool, source: Option<IpAddr>, dst: SocketAddr) -> String {
    in_netns(ns, as_proxy, move || {
        let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None).unwrap();
        if let Some(source) = source {
            socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
        }
        if let Err(e) = socket.connect_timeout(&dst.into(), Duration::from_secs(3)) {
            return format!("no connection ({e})");
        }
        let mut stream = TcpStream::from(socket);
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut reply = String::new();
        match stream.read_to_string(&mut reply) {
            Ok(_) => reply,
            Err(e) => format!("no answer ({e})"),
        }
    })
}

fn traffic(backend: Backend) {
    let pod = Netns::new(&format!("traffic-{}", backend.name()));
    let remote = Netns::new(&format!("traffic-{}-peer", backend.name()));
    for (ns, commands) in [
        (
            &pod,
            &[
                "link set lo up",
                "link add v0 type veth peer name v1",
                &format!("link set v1 netns {}", remote.name),
                "addr add 10.9.0.1/24 dev v0",
                "-6 addr add fd09::1/64 dev v0 nodad",
                "link set v0 up",
            ][..],
        ),
        (
            &remote,
            &[
                "link set lo up",
                "addr add 10.9.0.50/24 dev v1",
                "-6 addr add fd09::50/64 dev v1 nodad",
                "link set v1 up",
            ][..],
        ),
    ] {
        for command in commands {
            ns.exec_ok("ip", &command.split(' ').collect::<Vec<_>>(), None);
        }
    }
    // `--ipv6 auto` must see the routable fd09::1 and capture IPv6 too.
    pod.remora_init_ok(&[
        "--backend",
        backend.name(),
        "--exclude-inbound-ports",
        "9090",
        "--exclude-outbound-ports",
        "5432",
    ]);
    for (port, name) in [
        (15001, "outbound listener"),
        (15006, "inbound listener"),
        (15020, "admin"),
        (8080, "app"),
        (9090, "app"),
    ] {
        answer(&pod.name, port, name);
    }
    for port in [80, 5432] {
        answer(&remote.name, port, "remote");
    }

    let families: [(IpAddr, IpAddr, IpAddr, IpAddr); 2] = [
        (
            "10.9.0.1".parse().unwrap(),
            "10.9.0.50".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            "127.0.0.6".parse().unwrap(),
        ),
        (
            "fd09::1".parse().unwrap(),
            "fd09::50".parse().unwrap(),
            "::1".parse().unwrap(),
            "::6".parse().unwrap(),
        ),
    ];
    let mut failures = Vec::new();
    for (pod_ip, remote_ip, localhost, forward_source) in families {
        let at = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
        let (app, proxy) = (false, true);
        let cases = [
            (
                "app -> remote service: captured outbound",
                &pod,
                app,
                None,
                at(remote_ip, 80),
                "outbound listener",
            ),
            (
                "proxy -> remote service: never captured",
                &pod,
                proxy,
                None,
                at(remote_ip, 80),
                "remote",
            ),
            (
                "app -> excluded outbound port",
                &pod,
                app,
                None,
                at(remote_ip, 5432),
                "remote",
            ),
            (
                "remote -> app: captured inbound",
                &remote,
                app,
                None,
                at(pod_ip, 8080),
                "inbound listener",
            ),
            (
                "remote -> admin port: never captured",
                &remote,
                app,
                None,
                at(pod_ip, 15020),
                "admin",
            ),
            (
                "remote -> excluded inbound port",
                &remote,
                app,
                None,
                at(pod_ip, 9090),
                "app",
            ),
            (
                "app -> own pod address: captured inbound",
                &pod,
                app,
                None,
                at(pod_ip, 8080),
                "inbound listener",
            ),
            (
                "proxy -> own pod address: captured inbound",
                &pod,
                proxy,
                None,
                at(pod_ip, 8080),
                "inbound listener",
            ),
            (
                "proxy's inbound forward (from 127.0.0.6/::6) -> app: reaches the app, no loop",
                &pod,
                proxy,
                Some(forward_source),
                at(pod_ip, 8080),
                "app",
            ),
            (
                "app -> localhost: never captured",
                &pod,
                app,
                None,
                at(localhost, 8080),
                "app",
            ),
        ];
        for (what, ns, as_proxy, source, dst, expected) in cases {
            let got = who_answers(&ns.name, as_proxy, source, dst);
            if got != expected {
                failures.push(format!(
                    "{what} ({dst}): expected `{expected}`, got `{got}`"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} backend:\n{}\n{}",
        backend.name(),
        failures.join("\n"),
        pod.nat(backend, Family::V4)
    );
}

#[test]
fn nft_traffic_lands_where_the_rules_say() {
    traffic(Backend::Nft);
}

#[test]
fn legacy_traffic_lands_where_the_rules_say() {
    traffic(Backend::Legacy);
}
