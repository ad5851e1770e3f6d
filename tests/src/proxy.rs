//! Driving the binaries under test inside a pod: `remora-init` to install
//! capture rules, and `remora-proxy` run exactly as uid/gid 1337.
//!
//! A [`ProxyHandle`] owns the proxy process: it kills it on drop and prints
//! its log if the test is failing.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::binaries::bin_path;
use crate::metrics::Metrics;
use crate::netns::Pod;
use crate::{HttpResponse, WAIT};

/// The proxy's uid and gid; traffic from it is never captured.
pub const PROXY_UID: u32 = 1337;
/// How long a proxy gets to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// The proxy's default admin port.
const ADMIN_PORT: u16 = 15020;

/// The `remora-init` flags every meshed pod gets from [`Pod::mesh`].
pub const DEFAULT_INIT_ARGS: &[&str] = &[
    "--proxy-uid",
    "1337",
    "--proxy-gid",
    "1337",
    "--inbound-capture-port",
    "15006",
    "--outbound-capture-port",
    "15001",
];

/// A running `remora-proxy` in a pod; killed on drop.
#[derive(Debug)]
pub struct ProxyHandle {
    pod: Pod,
    child: Option<Child>,
    exited: Option<ExitStatus>,
    log: PathBuf,
    admin: SocketAddr,
}

impl Pod {
    /// Runs `remora-init args` inside the pod and returns its stdout; fails
    /// the test with its stderr if it exits non-zero.
    pub fn run_init(&self, args: &[&str]) -> String {
        let out = self.try_run_init(args);
        if !out.status.success() {
            panic!(
                "pod {}: `remora-init {}` failed with {}:\n{}{}",
                self.name(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `remora-init args` inside the pod and returns its raw output.
    pub fn try_run_init(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.namespace()])
            .arg(bin_path("remora-init"))
            .args(args)
            .output()
            .expect("cannot run `ip netns exec` (is iproute2 installed?)")
    }

    /// Starts `remora-proxy args` inside the pod as uid/gid 1337 and waits
    /// until `GET /ready` on its admin port answers 200.
    pub async fn start_proxy(&self, args: &[&str]) -> ProxyHandle {
        let mut proxy = self.spawn_proxy(args);
        proxy.wait_ready().await;
        proxy
    }

    /// Starts `remora-proxy args` inside the pod as uid/gid 1337 without
    /// waiting for it to become ready: for proxies expected to refuse to
    /// start (see [`ProxyHandle::wait_exit`] and [`ProxyHandle::log`]).
    pub fn spawn_proxy(&self, args: &[&str]) -> ProxyHandle {
        let log = std::env::temp_dir().join(format!("{}-proxy.log", self.namespace()));
        let log_file = File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create proxy log {}: {e}", log.display()));
        let uid = format!("--reuid={PROXY_UID}");
        let gid = format!("--regid={PROXY_UID}");
        let child = Command::new("ip")
            .args(["netns", "exec", self.namespace()])
            .args(["setpriv", &uid, &gid, "--clear-groups", "--"])
            .arg(bin_path("remora-proxy"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log file handle"))
            .stderr(log_file)
            .spawn()
            .expect("cannot spawn `ip netns exec ... remora-proxy`");
        // `ip netns exec` and `setpriv` exec in place: this pid is the proxy.
        self.net.register_child(child.id());
        let admin_port = admin_port(args);
        ProxyHandle {
            pod: self.clone(),
            child: Some(child),
            exited: None,
            log,
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port)),
        }
    }

    /// Installs capture with the default flags and starts a proxy with
    /// default flags: a meshed pod.
    pub async fn mesh(&self) -> ProxyHandle {
        self.mesh_with(&[], &[]).await
    }

    /// Like [`Pod::mesh`], with extra `remora-init` and `remora-proxy` flags.
    pub async fn mesh_with(&self, init_args: &[&str], proxy_args: &[&str]) -> ProxyHandle {
        let mut args = DEFAULT_INIT_ARGS.to_vec();
        args.extend_from_slice(init_args);
        self.run_init(&args);
        self.start_proxy(proxy_args).await
    }
}

/// The admin port named by `--admin-addr` in `args`, or the default.
fn admin_port(args: &[&str]) -> u16 {
    let value = args
        .iter()
        .position(|a| *a == "--admin-addr")
        .and_then(|i| args.get(i + 1).copied())
        .or_else(|| args.iter().find_map(|a| a.strip_prefix("--admin-addr=")));
    value
        .and_then(|v| v.parse::<SocketAddr>().ok())
        .map_or(ADMIN_PORT, |a| a.port())
}

impl ProxyHandle {
    /// The pod this proxy runs in.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// The proxy's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the proxy wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "pod {}: remora-proxy exited with {status} before it was ready; its log:\n{}",
                    self.pod.name(),
                    self.log()
                );
            }
            let last = match self.get("/ready").await {
                Ok(r) if r.status == 200 => return,
                Ok(r) => format!("status {}: {}", r.status, r.body),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "pod {}: remora-proxy not ready after {READY_DEADLINE:?} (last /ready: {last}); its log:\n{}",
                    self.pod.name(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET path` on the admin port from inside the pod.
    pub async fn get(&self, path: &str) -> std::io::Result<HttpResponse> {
        self.pod.http("GET", self.admin, path).await
    }

    /// `POST path` on the admin port from inside the pod.
    pub async fn post(&self, path: &str) -> std::io::Result<HttpResponse> {
        self.pod.http("POST", self.admin, path).await
    }

    /// The status of `GET /ready` (panics if the admin port does not answer).
    pub async fn ready_status(&self) -> u16 {
        self.get("/ready")
            .await
            .unwrap_or_else(|e| panic!("GET /ready: {e}; proxy log:\n{}", self.log()))
            .status
    }

    /// Scrapes `GET /metrics` from inside the pod.
    pub async fn metrics(&self) -> Metrics {
        let response = self
            .get("/metrics")
            .await
            .unwrap_or_else(|e| panic!("GET /metrics failed: {e}; proxy log:\n{}", self.log()));
        assert_eq!(response.status, 200, "GET /metrics: {}", response.body);
        Metrics::parse(&response.body)
    }

    /// Scrapes `/metrics` until `done` holds (counters move as bytes flow and
    /// connections end), failing the test with `what` after [`WAIT`].
    pub async fn wait_metrics(&self, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + WAIT;
        loop {
            let metrics = self.metrics().await;
            if done(&metrics) {
                return metrics;
            }
            if Instant::now() > deadline {
                panic!(
                    "pod {}: metrics never showed {what} within {WAIT:?}; last scrape:\n{metrics}",
                    self.pod.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /drain` from inside the pod; fails the test unless it is 202.
    pub async fn drain(&self) {
        let response = self
            .post("/drain")
            .await
            .unwrap_or_else(|e| panic!("POST /drain failed: {e}; proxy log:\n{}", self.log()));
        assert_eq!(
            response.status, 202,
            "POST /drain from loopback: {}",
            response.body
        );
    }

    /// Sends SIGTERM to the proxy.
    pub fn terminate(&self) {
        let pid = self.pid().expect("proxy already reaped");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("send SIGTERM to remora-proxy");
    }

    /// The exit status if the proxy has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.pod.net.forget_child(child.id());
                self.exited = Some(status);
            }
        }
        self.exited
    }

    /// Waits up to `timeout` for the proxy to exit; `None` if it is still up.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails the test unless the proxy is still running and ready.
    pub async fn assert_up(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!(
                "remora-proxy exited with {status}; its log:\n{}",
                self.log()
            );
        }
        assert_eq!(
            self.ready_status().await,
            200,
            "proxy /ready after the test traffic"
        );
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.exited.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            self.pod.net.forget_child(child.id());
        }
        if std::thread::panicking() {
            eprintln!(
                "----- remora-proxy log for pod {} ({}) -----\n{}\n----- end of log -----",
                self.pod.name(),
                self.log.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_port_follows_flag() {
        assert_eq!(admin_port(&[]), 15020);
        assert_eq!(admin_port(&["--admin-addr", "0.0.0.0:9901"]), 9901);
        assert_eq!(admin_port(&["--admin-addr=[::]:9902"]), 9902);
    }
}
