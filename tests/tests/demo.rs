//! `remora demo`, run for real: it exits 0, prints each step with its
//! evidence (every sidecar's certificate and mesh config from remora-cp,
//! the client's discovery subscriptions, the captured request in both
//! sidecars' metrics, the client's
//! SPIFFE identity as the server saw it and the mTLS connection metric, an
//! exact 90/10 split of 100 requests by app and by metrics, a 5/5
//! rate-limit split with APISIX's message), and leaves nothing behind: no
//! process that lived in one of its namespaces, and no namespace.
//!
//! While the demo runs, the test watches its namespaces (`remora-demo-*`)
//! and records every process inside them, by PID and start time, so that a
//! process found later is known to be the demo's even once its namespace is
//! deleted. The demo uses the binaries this test would (`--bin-dir`), so it
//! does not build.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use remora_e2e::http_apps::REQUESTS;
use remora_e2e::{bin_dir, Metrics, INBOUND, OUTBOUND};

/// Every namespace of the demo starts with this; the harness uses `rm-`.
const PREFIX: &str = "remora-demo-";
/// The demo takes about 10 s; this is for a slow, busy machine.
const DEMO_DEADLINE: Duration = Duration::from_secs(120);
/// How often the test looks inside the demo's namespaces.
const POLL: Duration = Duration::from_millis(50);
/// Clock ticks per second in /proc/<pid>/stat (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// A process, told apart from a later one with the same PID by its start.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Proc {
    pid: u32,
    /// Start time, in clock ticks since boot.
    start: u64,
}

/// The demo's namespaces now, by name, with their nsfs inodes.
fn demo_namespaces() -> BTreeMap<String, u64> {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with(PREFIX) {
                return None;
            }
            Some((name, fs::metadata(e.path()).ok()?.ino()))
        })
        .collect()
}

/// The inode of `pid`'s network namespace (`net:[INODE]`).
fn net_ns(pid: u32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// `pid`'s state letter and start time, from /proc/<pid>/stat.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it may not.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 is the state, field 22 the start time.
    let state = fields.first()?.chars().next()?;
    Some((state, fields.get(19)?.parse().ok()?))
}

fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Running (not zombie) processes whose network namespace is in `inodes`.
fn processes_in(inodes: &HashSet<u64>) -> Vec<(Proc, String)> {
    pids()
        .into_iter()
        .filter(|pid| net_ns(*pid).is_some_and(|ns| inodes.contains(&ns)))
        .filter_map(|pid| {
            let (state, start) = stat(pid)?;
            (state != 'Z').then(|| (Proc { pid, start }, cmdline(pid)))
        })
        .collect()
}

/// Whether `proc` is still running (a zombie is not).
fn alive(proc: &Proc) -> bool {
    stat(proc.pid).is_some_and(|(state, start)| start == proc.start && state != 'Z')
}

/// Now, in the clock ticks of /proc/<pid>/stat.
fn now_ticks() -> u64 {
    let uptime = fs::read_to_string("/proc/uptime").unwrap_or_default();
    let seconds: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    (seconds * USER_HZ) as u64
}

/// What the test saw of the demo while it ran.
#[derive(Debug, Default)]
struct Seen {
    /// Each process found inside a demo namespace, with its command lines
    /// (` | `-separated, as it exec'd) and its namespace's inode.
    processes: BTreeMap<Proc, (String, u64)>,
    /// The demo's namespaces by inode.
    inodes: HashSet<u64>,
    names: BTreeMap<u64, String>,
    /// When a demo namespace was last seen; until then its inode was the
    /// demo's, so a process in it that started before is the demo's too.
    last_seen: u64,
}

impl Seen {
    fn look(&mut self) {
        let namespaces = demo_namespaces();
        if namespaces.is_empty() {
            return;
        }
        for (name, inode) in namespaces {
            self.inodes.insert(inode);
            self.names.insert(inode, name);
        }
        for (proc, cmd) in processes_in(&self.inodes) {
            let ns = net_ns(proc.pid).unwrap_or_default();
            // A process caught mid-exec (setpriv becoming remora-proxy)
            // shows a torn command line: keep every one it had.
            let (cmds, _) = self.processes.entry(proc).or_insert((String::new(), ns));
            if !cmd.is_empty() && !cmds.split(" | ").any(|c| c == cmd) {
                if !cmds.is_empty() {
                    cmds.push_str(" | ");
                }
                cmds.push_str(&cmd);
            }
        }
        self.last_seen = now_ticks();
    }

    /// The namespaces in which a process whose command line holds
    /// `needle` was seen, by name.
    fn pods_running(&self, needle: &str) -> Vec<&str> {
        let pods: BTreeSet<&str> = self
            .processes
            .values()
            .filter(|(cmd, _)| cmd.contains(needle))
            .filter_map(|(_, ns)| self.names.get(ns).map(String::as_str))
            .collect();
        pods.into_iter().collect()
    }

    /// Everything of the demo's still running.
    fn remaining(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .processes
            .iter()
            .filter(|(p, _)| alive(p))
            .map(|(p, (cmd, _))| format!("pid {}: {cmd}", p.pid))
            .collect();
        for (p, cmd) in processes_in(&self.inodes) {
            if p.start <= self.last_seen && !self.processes.contains_key(&p) {
                left.push(format!("pid {} (in a demo namespace): {cmd}", p.pid));
            }
        }
        left
    }
}

/// A watched run of the demo. Whatever the outcome, nothing of the demo
/// outlives it: on drop, recorded processes still running are killed and
/// the demo's namespaces deleted.
#[derive(Debug)]
struct Run {
    seen: Seen,
    /// `None` if the demo ran over [`DEMO_DEADLINE`] (it was killed).
    status: Option<ExitStatus>,
    stdout: String,
    /// stdout and stderr, for failure messages.
    output: String,
}

impl Drop for Run {
    fn drop(&mut self) {
        for proc in self.seen.processes.keys().filter(|p| alive(p)) {
            let _ = kill(Pid::from_raw(proc.pid as i32), Signal::SIGKILL);
        }
        for name in demo_namespaces().keys() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// The demo uses fixed names: one run at a time in this process (a second
/// would be refused by the demo's lock).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What to do to a running demo, once `when` holds of what was seen.
#[derive(Debug, Clone, Copy)]
enum Action {
    Signal(Signal),
    /// Start a second `remora demo` and wait for it.
    SecondDemo,
}
type Interrupt = (Action, fn(&Seen) -> bool);

/// The second demo's exit status and stderr.
static SECOND: Mutex<Option<(ExitStatus, String)>> = Mutex::new(None);

/// Runs `remora demo`, watching its namespaces, interrupting it if asked.
fn run_demo(interrupt: Option<Interrupt>) -> Run {
    assert_eq!(
        demo_namespaces(),
        BTreeMap::new(),
        "demo namespaces exist before the test: is a demo running? (`ip netns list`)"
    );
    let out = tempdir();
    let (stdout_path, stderr_path) = (out.join("stdout"), out.join("stderr"));
    let mut demo = Command::new(bin_dir().join("remora"))
        .arg("demo")
        .arg("--bin-dir")
        .arg(bin_dir())
        .stdin(Stdio::null())
        // Files, not pipes: a leaked process holding a pipe would hang us.
        .stdout(fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("run remora demo");

    let mut seen = Seen::default();
    let mut interrupt = interrupt;
    let started = Instant::now();
    let status = loop {
        seen.look();
        if let Some((action, when)) = interrupt {
            if when(&seen) {
                match action {
                    Action::Signal(signal) => {
                        kill(Pid::from_raw(demo.id() as i32), signal).expect("signal the demo")
                    }
                    Action::SecondDemo => {
                        let second = Command::new(bin_dir().join("remora"))
                            .arg("demo")
                            .arg("--bin-dir")
                            .arg(bin_dir())
                            .stdin(Stdio::null())
                            .output()
                            .expect("run a second remora demo");
                        *SECOND.lock().unwrap_or_else(|p| p.into_inner()) = Some((
                            second.status,
                            String::from_utf8_lossy(&second.stderr).into_owned(),
                        ));
                    }
                }
                interrupt = None;
            }
        }
        if let Some(status) = demo.try_wait().expect("wait for the demo") {
            break Some(status);
        }
        if started.elapsed() > DEMO_DEADLINE {
            let _ = demo.kill();
            let _ = demo.wait();
            break None;
        }
        std::thread::sleep(POLL);
    };
    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = fs::remove_dir_all(&out);
    Run {
        seen,
        status,
        output: format!("--- stdout\n{stdout}--- stderr\n{stderr}---"),
        stdout,
    }
}

fn tempdir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "remora-e2e-demo-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).expect("output directory");
    dir
}

/// Fails the test if any process or namespace of the demo remains, or if
/// the watch did not see the demo's proxies and apps (then the first check
/// would mean nothing).
fn assert_nothing_left(run: &Run) -> ExitStatus {
    let output = &run.output;
    let status = run
        .status
        .unwrap_or_else(|| panic!("the demo ran over {DEMO_DEADLINE:?}\n{output}"));
    let remaining = run.seen.remaining();
    let namespaces = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list")
            .stdout,
    )
    .lines()
    .filter(|l| l.starts_with(PREFIX))
    .map(str::to_owned)
    .collect::<Vec<_>>();
    assert_eq!(
        (remaining, namespaces),
        (Vec::new(), Vec::new()),
        "processes and namespaces of the demo still there after it exited ({status})\n{output}"
    );
    assert_eq!(
        run.seen.pods_running("remora-proxy"),
        PODS,
        "a proxy seen in each pod: {:?}",
        run.seen.processes
    );
    status
}

const PODS: [&str; 3] = [
    "remora-demo-client",
    "remora-demo-hello-v1",
    "remora-demo-hello-v2",
];
const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";

/// The demo's output, by line.
struct Output<'a> {
    lines: Vec<&'a str>,
    all: &'a str,
}

impl<'a> Output<'a> {
    fn index(&self, line_part: &str) -> usize {
        self.lines
            .iter()
            .position(|l| l.contains(line_part))
            .unwrap_or_else(|| panic!("no line with {line_part:?}\n{}", self.all))
    }

    /// The line after the first that holds `line_part`.
    fn after(&self, line_part: &str) -> &'a str {
        self.lines
            .get(self.index(line_part) + 1)
            .copied()
            .unwrap_or_default()
    }

    /// The metric lines printed under `-- WHO:` (after the step holding
    /// `step`), parsed.
    fn metrics(&self, step: &str, who: &str) -> Metrics {
        let from = self.index(step);
        let header = format!("-- {who}:");
        let start = self.lines[from..]
            .iter()
            .position(|l| *l == header)
            .unwrap_or_else(|| panic!("no {header:?} after {step:?}\n{}", self.all))
            + from
            + 1;
        let body: Vec<&str> = self.lines[start..]
            .iter()
            .take_while(|l| l.starts_with("remora_"))
            .copied()
            .collect();
        Metrics::parse(&body.join("\n"))
    }
}

#[test]
fn the_demo_runs_and_leaves_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let run = run_demo(None);
    // What is left is checked first: that is what this test is for.
    let status = assert_nothing_left(&run);
    let output = &run.output;
    assert_eq!(
        run.seen.pods_running("demo-app"),
        ["remora-demo-hello-v1", "remora-demo-hello-v2"],
        "an app seen in each server pod: {:?}",
        run.seen.processes
    );
    assert_eq!(
        run.seen.pods_running("remora-cp"),
        ["remora-demo-node"],
        "remora-cp seen in the node namespace: {:?}",
        run.seen.processes
    );
    assert!(status.success(), "the demo failed with {status}\n{output}");
    let out = Output {
        lines: run.stdout.lines().collect(),
        all: output,
    };

    // Every sidecar got its certificate from the CA and its mesh config
    // over discovery (readiness waits for both), one stream each.
    for (pod, sa) in [
        ("client", "client"),
        ("hello-v1", "hello"),
        ("hello-v2", "hello"),
    ] {
        let line = format!(
            "proxy in {pod}: ready (its certificate: spiffe://cluster.local/ns/demo/sa/{sa}; \
             its mesh config: from remora-cp over discovery)"
        );
        assert!(
            out.lines.contains(&line.as_str()),
            "{line:?} missing\n{output}"
        );
    }
    let cp = out.index("-- remora-cp:");
    assert_eq!(
        out.lines[cp + 1..cp + 3],
        [
            "remora_cp_certificates_issued_total 3",
            "remora_cp_discovery_streams 3"
        ],
        "{output}"
    );
    // The injected discovery address, mapped to where remora-cp runs; no
    // config file anywhere.
    assert!(
        out.lines.contains(
            &"  remora-proxy REMORA_DISCOVERY_ADDR: remora-cp.remora-system.svc:15012 -> \
              10.90.0.1:15012 (no cluster DNS: remora-cp runs in the node namespace (its server \
              name stays))"
        ),
        "{output}"
    );
    assert!(!out.all.contains("REMORA_CONFIG"), "{output}");

    // 1. Capture: the first request on the split goes to v1 (the split is
    // exact and starts at v1's range), counted by both sidecars.
    let capture = "1. capture: the client app calls the hello service's cluster IP";
    assert_eq!(
        out.after(capture),
        format!("reply: 200 hello-v1 saw x-remora-client-id: {CLIENT_ID}")
    );
    assert_eq!(
        out.lines[out.index(capture) + 2],
        "client pod's iptables: 1 connection(s) redirected to the sidecar's outbound port 15001"
    );
    // The hello address was subscribed on demand, at the first connection.
    assert_eq!(
        out.lines[out.index(capture) + 3],
        "client sidecar's discovery subscriptions: address 10.96.0.10:80, globals, inbound \
         (remora-cp 10.90.0.1:15012)"
    );
    let client = out.metrics(capture, "client sidecar (outbound)");
    let split_v1 = [
        ("direction", "outbound"),
        ("route", "split"),
        ("backend", "demo/hello-v1:80"),
        ("status", "200"),
    ];
    assert_eq!(client.get(REQUESTS, &split_v1), 1.0, "{client}");
    assert_eq!(client.get(REQUESTS, OUTBOUND), 1.0, "{client}");
    assert!(
        out.lines.contains(
            &"hello-v1 pod's iptables: 1 connection(s) redirected to the sidecar's inbound port 15006"
        ),
        "{output}"
    );
    let server = out.metrics(capture, "hello-v1 sidecar (inbound)");
    assert_eq!(
        server.get(
            REQUESTS,
            &[
                ("direction", "inbound"),
                ("client_id", CLIENT_ID),
                ("status", "200")
            ]
        ),
        1.0,
        "{server}"
    );
    assert_eq!(server.get(REQUESTS, INBOUND), 1.0, "{server}");

    // 2. mTLS: the identity the app saw, one mTLS connection accepted.
    let mtls = "2. mTLS: the identity hello-v1's app saw";
    assert_eq!(
        out.after(mtls),
        format!("hello-v1's app saw x-remora-client-id: {CLIENT_ID}")
    );
    let server = out.metrics(mtls, "hello-v1 sidecar");
    let connections = "remora_inbound_connections_total";
    assert_eq!(
        server.get(connections, &[("security", "mtls"), ("result", "accepted")]),
        1.0,
        "{server}"
    );
    assert_eq!(
        server.get(connections, &[("security", "plaintext")]),
        0.0,
        "{server}"
    );
    assert_eq!(
        server.get(
            "remora_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "ok")]
        ),
        1.0,
        "{server}"
    );

    // 3. The split: exactly 90/10 by the apps, the client's and the
    // servers' sidecars.
    assert!(out
        .all
        .contains("3. traffic split: 100 requests to http://10.96.0.10/"));
    assert_eq!(
        out.after("3. traffic split"),
        "replies by app: hello-v1 90, hello-v2 10"
    );
    assert!(out.lines.contains(
        &"client sidecar, requests by backend: demo/hello-v1:80 90, demo/hello-v2:80 10"
    ));
    assert!(out
        .lines
        .contains(&"server sidecars, inbound requests: hello-v1 90, hello-v2 10"));

    // 4. The rate limit: the first 5 admitted, the next 5 refused with
    // limit-count's 429 and APISIX's message, never reaching the app.
    let limit = "4. rate limit: 10 requests to http://10.96.0.10/limited";
    let start = out.index(limit) + 1;
    let replies: Vec<&str> = out.lines[start..start + 10].to_vec();
    let mut want: Vec<String> = (1..=5)
        .map(|i| format!("request {i}: 200 hello-v1 saw x-remora-client-id: {CLIENT_ID}"))
        .collect();
    want.extend(
        (6..=10).map(|i| format!(r#"request {i}: 429 {{"error_msg":"Too many requests"}}"#)),
    );
    assert_eq!(replies, want, "{output}");
    assert_eq!(out.lines[start + 10], "by status: 200 5, 429 5");
    let client = out.metrics(limit, "client sidecar");
    let limited = |status| [("route", "limited"), ("status", status)];
    assert_eq!(client.get(REQUESTS, &limited("200")), 5.0, "{client}");
    assert_eq!(client.get(REQUESTS, &limited("429")), 5.0, "{client}");
    assert!(
        out.lines.last().is_some_and(|l| l.starts_with("== done")),
        "{output}"
    );
}

/// Ctrl-C (SIGINT) or SIGTERM once the proxies run: the demo stops
/// before its last step, exits with the signal's code, and still leaves
/// nothing behind.
#[test]
fn an_interrupted_demo_leaves_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for (signal, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let run = run_demo(Some((Action::Signal(signal), |seen: &Seen| {
            seen.pods_running("remora-proxy").len() == 3
        })));
        let status = assert_nothing_left(&run);
        assert_eq!(status.code(), Some(code), "after {signal}\n{}", run.output);
        assert!(
            !run.stdout.contains("by status:") && !run.stdout.contains("== done"),
            "the demo stopped before its last steps\n{}",
            run.output
        );
    }
}

/// A second demo while one runs is refused at once (the lock), touches
/// nothing of the first, which finishes as usual.
#[test]
fn a_second_demo_is_refused_while_one_runs() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let run = run_demo(Some((Action::SecondDemo, |seen: &Seen| {
        seen.pods_running("remora-proxy").len() == 3
    })));
    let status = assert_nothing_left(&run);
    let (second, stderr) = SECOND
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .expect("the second demo ran");
    assert_eq!(second.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "remora demo: another demo is running (it holds /run/remora-demo.lock); wait for it to finish\n"
    );
    assert!(status.success(), "the first demo failed\n{}", run.output);
    assert!(
        run.stdout.contains("by status: 200 5, 429 5"),
        "{}",
        run.output
    );
}

/// What a demo killed with SIGKILL leaves (its namespaces, a process in
/// one) is removed by the next demo before it starts, which then runs.
#[test]
fn a_demo_cleans_up_what_a_killed_one_left() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let ns = "remora-demo-client";
    let ok = |args: &[&str]| {
        let status = Command::new("ip").args(args).status().expect("run ip");
        assert!(status.success(), "ip {args:?}: {status}");
    };
    ok(&["netns", "add", ns]);
    let mut leftover = Command::new("ip")
        .args(["netns", "exec", ns, "sleep", "300"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start a leftover process");
    let pid = leftover.id();
    let start = Instant::now();
    while net_ns(pid) == net_ns(std::process::id()) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(POLL);
    }
    let leftover_proc = Proc {
        pid,
        start: stat(pid).expect("the leftover runs").1,
    };
    let run = {
        // Not through run_demo: its precondition is no demo namespace.
        let out = Command::new(bin_dir().join("remora"))
            .arg("demo")
            .arg("--bin-dir")
            .arg(bin_dir())
            .stdin(Stdio::null())
            .output()
            .expect("run remora demo");
        let survived = alive(&leftover_proc);
        let namespaces = demo_namespaces();
        let _ = leftover.kill();
        let _ = leftover.wait();
        if !namespaces.is_empty() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        (out, survived, namespaces)
    };
    let (run, survived, namespaces) = run;
    let output = format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!survived, "the leftover still runs\n{output}");
    assert!(run.status.success(), "{}\n{output}", run.status);
    assert_eq!(namespaces, BTreeMap::new(), "{output}");
    assert!(output.contains("by status: 200 5, 429 5"), "{output}");
}
