//! The demo's edge on the host: the lock that keeps one demo at a time, the
//! network namespaces and their bridge, commands run inside them, and the
//! cleanup that leaves nothing behind.
//!
//! Processes are found for cleanup by namespace (`ip netns pids`), not by
//! remembered PIDs, so whatever ran in a pod goes however it was started.
//! Every command here has a deadline.

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

use super::objects::{DemoPod, NETNS_PREFIX, NODE_IP, NODE_NETNS, PREFIX_LEN};

/// One demo at a time: a second would tear down the first one's pods.
pub const LOCK_PATH: &str = "/run/remora-demo.lock";
/// How long a short command (ip, iptables-save, curl) may take.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(10);
/// How long the demo's processes get to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Why a host step failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("another demo is running (it holds {LOCK_PATH}); wait for it to finish")]
    Busy,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {COMMAND_DEADLINE:?}")]
    Timeout { command: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Holds the demo lock while alive (the lock goes with the file).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Takes the demo lock, or fails at once if another demo holds it.
pub fn lock() -> Result<Lock, HostError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .map_err(|source| HostError::Io {
            what: format!("opening {LOCK_PATH} (run as root)"),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(Lock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(HostError::Busy),
        Err(std::fs::TryLockError::Error(source)) => Err(HostError::Io {
            what: format!("locking {LOCK_PATH}"),
            source,
        }),
    }
}

/// Runs `program args` to completion within the command deadline; its
/// stdout on success.
pub async fn run(program: &str, args: &[&str]) -> Result<String, HostError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(COMMAND_DEADLINE, child)
        .await
        .map_err(|_| HostError::Timeout {
            command: command.clone(),
        })?
        .map_err(|source| HostError::Io {
            what: format!("running {command}"),
            source,
        })?;
    if !out.status.success() {
        return Err(HostError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside the network namespace `netns`.
pub async fn run_in(netns: &str, args: &[&str]) -> Result<String, HostError> {
    let mut all = vec!["netns", "exec", netns];
    all.extend_from_slice(args);
    run("ip", &all).await
}

/// `curl` inside `netns`: the status and body of one GET, within `max`.
pub async fn curl(netns: &str, url: &str, max: Duration) -> Result<(u16, String), HostError> {
    let max_time = format!("{:.1}", max.as_secs_f64());
    let out = run_in(
        netns,
        &[
            "curl",
            "-sS",
            "--max-time",
            &max_time,
            "-w",
            "\n%{http_code}",
            url,
        ],
    )
    .await?;
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
    Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
}

/// Polls `url` in `netns` until it answers 200, up to `deadline`.
pub async fn wait_ok(netns: &str, url: &str, deadline: Duration) -> Result<(), String> {
    let until = Instant::now() + deadline;
    let mut last = String::new();
    while Instant::now() < until {
        match curl(netns, url, Duration::from_secs(1)).await {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) => last = format!("{code} {}", body.trim()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "{url} in {netns} not 200 after {deadline:?}: {last}"
    ))
}

/// Makes the node namespace with the bridge, and each pod's namespace
/// cabled to it with a veth pair, its address, and a default route (a
/// Service's virtual IP belongs to no pod: like in a cluster it leaves by
/// the default route, and the capture rules redirect it first).
pub async fn make_pods(pods: &[DemoPod]) -> Result<(), HostError> {
    let bridge = format!("{NODE_IP}/{PREFIX_LEN}");
    let node_ip = NODE_IP.to_string();
    run("ip", &["netns", "add", NODE_NETNS]).await?;
    run(
        "ip",
        &["-n", NODE_NETNS, "link", "add", "br0", "type", "bridge"],
    )
    .await?;
    run(
        "ip",
        &["-n", NODE_NETNS, "addr", "add", &bridge, "dev", "br0"],
    )
    .await?;
    run("ip", &["-n", NODE_NETNS, "link", "set", "br0", "up"]).await?;
    run("ip", &["-n", NODE_NETNS, "link", "set", "lo", "up"]).await?;
    for pod in pods {
        let ns = pod.netns();
        let veth = format!("veth-{}", pod.name);
        let addr = format!("{}/{PREFIX_LEN}", pod.ip);
        run("ip", &["netns", "add", &ns]).await?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]).await?;
        run(
            "ip",
            &[
                "-n", NODE_NETNS, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ],
        )
        .await?;
        run(
            "ip",
            &[
                "-n", NODE_NETNS, "link", "set", &veth, "master", "br0", "up",
            ],
        )
        .await?;
        run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]).await?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]).await?;
        run(
            "ip",
            &["-n", &ns, "route", "add", "default", "via", &node_ip],
        )
        .await?;
    }
    Ok(())
}

/// Starts a long-running process inside `netns`, its output appended to
/// `log`. Not awaited: cleanup stops it by namespace.
pub fn spawn_in(
    netns: &str,
    argv: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<(), HostError> {
    let io = |what: &str, source| HostError::Io {
        what: format!("{what} {}", log.display()),
        source,
    };
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| io("opening", e))?;
    let err = out.try_clone().map_err(|e| io("opening", e))?;
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", netns])
        .args(argv)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    command.spawn().map_err(|source| HostError::Io {
        what: format!("starting {} in {netns}", argv.join(" ")),
        source,
    })?;
    Ok(())
}

/// The demo's namespaces that exist now (the node's and the pods').
fn demo_namespaces() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(NETNS_PREFIX))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// PIDs of every process inside the demo's namespaces.
fn pids_in(namespaces: &[String]) -> Vec<i32> {
    let mut out = Vec::new();
    for ns in namespaces {
        let listed = std::process::Command::new("ip")
            .args(["netns", "pids", ns])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        if let Ok(listed) = listed {
            out.extend(
                String::from_utf8_lossy(&listed.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether `pid` still runs (a zombie has exited).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Stops every process in the demo's namespaces (TERM, up to 5 s, then
/// KILL) and deletes the namespaces. Synchronous and idempotent: it runs
/// before a demo (a previous one may have been killed with SIGKILL) and on
/// every way out of one.
pub fn clean_up() {
    let namespaces = demo_namespaces();
    let pids = pids_in(&namespaces);
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let until = Instant::now() + TERM_GRACE;
    while pids.iter().any(|p| running(*p)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<i32> = pids.into_iter().filter(|p| running(*p)).collect();
    if !left.is_empty() {
        eprintln!(
            "remora demo: killing {} process(es) that did not exit within {TERM_GRACE:?} after SIGTERM",
            left.len()
        );
        for pid in &left {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
    for ns in &namespaces {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", ns])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
