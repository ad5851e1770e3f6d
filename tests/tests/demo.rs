//! `scripts/demo.sh`, run for real: it exits 0, prints its key results (the
//! pod-to-pod reply, the canary, the 50 split requests and the metrics that
//! prove which sidecar carried them), and leaves nothing behind: no process
//! that lived in one of its namespaces, and no namespace.
//!
//! While the demo runs, the test watches its namespaces (`remora-demo-*`)
//! and records every process inside them, by PID and start time, so that a
//! process found later is known to be the demo's even once its namespace is
//! deleted. The demo uses the binaries this test would (`REMORA_BIN_DIR`),
//! so it does not build.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use remora_e2e::http_apps::REQUESTS;
use remora_e2e::metrics::OPENED;
use remora_e2e::{bin_dir, Metrics, INBOUND, OUTBOUND};

/// Every namespace of the demo starts with this; the harness uses `rm-`.
const PREFIX: &str = "remora-demo-";
/// The demo takes about 3 s; this is for a slow, busy machine.
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
    /// Each process found inside a demo namespace, with its command line
    /// and its namespace's inode.
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
            self.processes.entry(proc).or_insert((cmd, ns));
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

/// A signal to send the demo, and when: once this holds of what was seen.
type Interrupt = (Signal, fn(&Seen) -> bool);

/// Runs scripts/demo.sh, watching its namespaces, interrupting it if asked.
fn run_demo(interrupt: Option<Interrupt>) -> Run {
    assert_eq!(
        demo_namespaces(),
        BTreeMap::new(),
        "demo namespaces exist before the test: is a demo running? (`ip netns list`)"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository");
    let out = tempdir();
    let (stdout_path, stderr_path) = (out.join("stdout"), out.join("stderr"));
    let mut demo = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .current_dir(root)
        .env("REMORA_BIN_DIR", bin_dir())
        .stdin(Stdio::null())
        // Files, not pipes: a leaked process holding a pipe would hang us.
        .stdout(fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("run scripts/demo.sh");

    let mut seen = Seen::default();
    let mut interrupt = interrupt;
    let started = Instant::now();
    let status = loop {
        seen.look();
        if let Some((signal, when)) = interrupt {
            if when(&seen) {
                kill(Pid::from_raw(demo.id() as i32), signal).expect("signal the demo");
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
        [
            "remora-demo-client",
            "remora-demo-server",
            "remora-demo-server-v2"
        ],
        "a proxy seen in each pod: {:?}",
        run.seen.processes
    );
    status
}

#[test]
fn the_demo_runs_and_leaves_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let run = run_demo(None);
    // What is left is checked first: that is what this test is for.
    let status = assert_nothing_left(&run);
    let output = &run.output;
    assert_eq!(
        run.seen.pods_running("http.server"),
        ["remora-demo-server", "remora-demo-server-v2"],
        "an app seen in each server pod: {:?}",
        run.seen.processes
    );
    assert!(status.success(), "the demo failed with {status}\n{output}");

    let stdout = &run.stdout;
    for pod in ["client", "server", "server-v2"] {
        let line = format!("\nproxy in {pod}: ready\n");
        assert!(stdout.contains(&line), "{line:?} missing\n{output}");
    }
    let lines: Vec<&str> = stdout.lines().collect();
    let after = |step: &str| {
        let i = lines
            .iter()
            .position(|l| l.contains(step))
            .unwrap_or_else(|| panic!("no step {step:?}\n{output}"));
        lines.get(i + 1).copied().unwrap_or_default()
    };
    assert_eq!(after("(pod to pod, both sidecars)"), "hello from server");
    assert_eq!(after("(canary route)"), "hello from server-v2");

    // `uniq -c` of the 50 split requests: "  39 hello from server".
    let split: BTreeMap<&str, u32> = lines
        .iter()
        .filter_map(|l| {
            let (count, reply) = l.trim().split_once(' ')?;
            Some((reply.strip_prefix("hello from ")?, count.parse().ok()?))
        })
        .collect();
    assert_eq!(
        split.values().sum::<u32>(),
        50,
        "the split requests by reply: {split:?}\n{output}"
    );
    assert_eq!(
        split.keys().copied().collect::<Vec<_>>(),
        ["server", "server-v2"],
        "both sides of the 80/20 split answered\n{output}"
    );

    // The metrics the demo printed: one connection through each sidecar,
    // and the sidecar's request counts by route.
    let metrics = Metrics::parse(
        &lines
            .iter()
            .filter(|l| l.starts_with("remora_"))
            .copied()
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert_eq!(metrics.get(OPENED, OUTBOUND), 1.0, "{metrics}");
    assert_eq!(metrics.get(OPENED, INBOUND), 1.0, "{metrics}");
    assert_eq!(
        metrics.get(REQUESTS, &[("route", "canary")]),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metrics.get(REQUESTS, &[("route", "split")]),
        50.0,
        "{metrics}"
    );
}

/// Ctrl-C (SIGINT) or SIGTERM once the proxies run: the demo stops
/// before its last step, exits with the signal's code, and still leaves
/// nothing behind.
#[test]
fn an_interrupted_demo_leaves_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for (signal, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let run = run_demo(Some((signal, |seen: &Seen| {
            seen.pods_running("remora-proxy").len() == 3
        })));
        let status = assert_nothing_left(&run);
        assert_eq!(status.code(), Some(code), "after {signal}\n{}", run.output);
        assert!(
            !run.stdout.contains("request metrics, by route and backend"),
            "the demo stopped before its last steps\n{}",
            run.output
        );
    }
}
