//! Network namespaces as a node and its pods: creation, cabling, entering,
//! and teardown on drop.
//!
//! This module owns the `ip` plumbing only. Sockets and apps are in
//! `apps.rs`, the binaries under test in `proxy.rs`.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use nix::sched::CloneFlags;

/// Interface name of the bridge inside the node namespace.
const BRIDGE: &str = "br0";
/// The bridge's addresses: every pod's default gateway.
pub(crate) const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub(crate) const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);

/// Makes namespace names unique across parallel tests in one process.
static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// A private node: a namespace with a bridge that pods are cabled to.
///
/// Dropping the last handle (the `TestNet`, its pods and proxies) kills the
/// processes the harness started and deletes every namespace.
#[derive(Debug, Clone)]
pub struct TestNet {
    shared: Arc<NetShared>,
}

#[derive(Debug)]
pub(crate) struct NetShared {
    /// `rm-<test>-<unique>`: the prefix of every namespace name in this net.
    prefix: String,
    node_ns: String,
    /// Namespaces created so far, deleted in reverse on drop.
    namespaces: Mutex<Vec<String>>,
    /// Processes started inside this net, killed before the namespaces go.
    children: Mutex<Vec<u32>>,
    next_host: AtomicU8,
}

/// A pod: a network namespace cabled to the node's bridge.
#[derive(Debug, Clone)]
pub struct Pod {
    pub(crate) net: Arc<NetShared>,
    name: String,
    ns: String,
    host: u8,
}

impl TestNet {
    /// Creates the node namespace and its bridge for the test `test_name`.
    pub fn new(test_name: &str) -> TestNet {
        raise_nofile_limit();
        let clean: String = test_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(24)
            .collect();
        let unique = format!(
            "{:x}{:x}",
            std::process::id(),
            NEXT_NET.fetch_add(1, Ordering::Relaxed)
        );
        let prefix = format!("rm-{clean}-{unique}");
        let shared = Arc::new(NetShared {
            node_ns: format!("{prefix}-node"),
            prefix,
            namespaces: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            next_host: AtomicU8::new(2),
        });
        let node = shared.node_ns.clone();
        shared.add_namespace(&node);
        ip(&["-n", &node, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &node,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &node, "addr", "add", "10.99.0.1/24", "dev", BRIDGE]);
        ip(&[
            "-n",
            &node,
            "addr",
            "add",
            "fd00:99::1/64",
            "dev",
            BRIDGE,
            "nodad",
        ]);
        ip(&["-n", &node, "link", "set", BRIDGE, "up"]);
        TestNet { shared }
    }

    /// Creates pod `name` (at most 11 characters): `lo` up, `eth0` cabled to
    /// the bridge, `10.99.0.N/24` and `fd00:99::N/64`, default routes via the
    /// bridge. Pods are numbered from N = 2 in creation order.
    pub fn pod(&self, name: &str) -> Pod {
        assert!(
            !name.is_empty() && name.len() <= 11 && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "pod name {name:?} must be 1-11 ASCII letters or digits"
        );
        let host = self.shared.next_host.fetch_add(1, Ordering::Relaxed);
        assert!(host < 255, "too many pods in one TestNet");
        let ns = format!("{}-{name}", self.shared.prefix);
        let node = &self.shared.node_ns;
        self.shared.add_namespace(&ns);
        // No DAD anywhere in the pod, so its addresses are usable at once.
        for key in ["all", "default"] {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{key}.accept_dad=0"),
                ],
            );
        }
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let veth = format!("veth{host}");
        ip(&[
            "-n", node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["-n", node, "link", "set", &veth, "master", BRIDGE, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.99.0.{host}/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("fd00:99::{host:x}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_V4.to_string(),
        ]);
        ip(&[
            "-n",
            &ns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_V6.to_string(),
        ]);
        Pod {
            net: self.shared.clone(),
            name: name.to_string(),
            ns,
            host,
        }
    }

    /// The node namespace's name (it holds the bridge).
    pub fn node_namespace(&self) -> &str {
        &self.shared.node_ns
    }
}

impl NetShared {
    fn add_namespace(&self, ns: &str) {
        ip(&["netns", "add", ns]);
        self.namespaces
            .lock()
            .expect("namespace list poisoned")
            .push(ns.to_string());
    }

    pub(crate) fn register_child(&self, pid: u32) {
        self.children.lock().expect("child list poisoned").push(pid);
    }

    pub(crate) fn forget_child(&self, pid: u32) {
        self.children
            .lock()
            .expect("child list poisoned")
            .retain(|p| *p != pid);
    }
}

impl Drop for NetShared {
    fn drop(&mut self) {
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        for pid in children {
            // Only processes this harness started; they are reaped by their handles.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let namespaces =
            std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        for ns in namespaces.iter().rev() {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "warning: `ip netns del {ns}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("warning: could not run `ip netns del {ns}`: {e}"),
            }
        }
    }
}

impl Pod {
    /// The name given to [`TestNet::pod`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network namespace's name, for `ip netns exec`.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The pod's IPv4 address, `10.99.0.N`.
    pub fn ip4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, self.host)
    }

    /// The pod's IPv6 address, `fd00:99::N`.
    pub fn ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, self.host.into())
    }

    /// `ip4():port`.
    pub fn addr4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip4()), port)
    }

    /// `[ip6()]:port`.
    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ip6()), port)
    }

    /// Runs `f` on a fresh OS thread that has joined this pod's network
    /// namespace, and returns its result. Sockets created in `f` stay in the
    /// pod's namespace wherever they are used afterwards.
    pub fn enter<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                let file = File::open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {path} to enter pod: {e}"));
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {path} failed (are we root?): {e}"));
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `cmd args` inside the pod with `ip netns exec`, failing the test
    /// with its stderr if it exits non-zero. Returns stdout.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.ns, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

/// Runs `ip args`, failing the test with a clear message if it fails.
fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// Runs a command to completion, panicking with its stderr on failure.
pub(crate) fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd}` (is it installed?): {e}"));
    if !out.status.success() {
        panic!(
            "`{cmd} {}` failed with {}:\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Raises this process's open-file limit to its hard limit. Children (apps,
/// `ip netns exec`, the proxy) inherit it, so 1,000-connection tests fit.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
