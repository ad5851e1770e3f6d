//! Running a real `remora-cp` inside a pod: standalone mode (a token file),
//! its state directory in a scratch directory, so that stopping and
//! starting it again keeps the same root, as a restarted Deployment with a
//! persistent volume does.
//!
//! A [`ControlPlane`] owns the process and the scratch directory: both go
//! on drop, and its log is printed if the test is failing.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binaries::bin_path;
use crate::netns::Pod;

/// remora-cp's certificate service port.
pub const CA_PORT: u16 = 15012;
/// remora-cp's admin port (`/ready`).
const CP_ADMIN_PORT: u16 = 15014;
/// How long remora-cp gets to become ready.
const CP_READY_DEADLINE: Duration = Duration::from_secs(10);

/// One token-file entry: the token and the identity it proves.
#[derive(Debug, Clone, Copy)]
pub struct TokenEntry<'a> {
    pub token: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
}

/// A running (or stopped) `remora-cp` in a pod.
#[derive(Debug)]
pub struct ControlPlane {
    pod: Pod,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

/// Writes `text` to `path` readable by everyone (the proxy runs as 1337).
pub fn write_readable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

impl Pod {
    /// Starts `remora-cp` in this pod with `tokens` in its token file and
    /// `extra` flags, and waits until it is ready.
    pub async fn start_control_plane(
        &self,
        tokens: &[TokenEntry<'_>],
        extra: &[&str],
    ) -> ControlPlane {
        let dir = std::env::temp_dir().join(format!("{}-cp", self.namespace()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the control plane's scratch directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the scratch directory");
        let mut yaml = String::from("tokens:\n");
        for t in tokens {
            yaml.push_str(&format!(
                "  - token: {}\n    namespace: {}\n    serviceAccount: {}\n",
                t.token, t.namespace, t.service_account
            ));
        }
        write_readable(&dir.join("tokens.yaml"), &yaml);
        let mut args: Vec<String> = [
            "--grpc-addr",
            &format!("0.0.0.0:{CA_PORT}"),
            "--admin-addr",
            &format!("127.0.0.1:{CP_ADMIN_PORT}"),
            "--log-format",
            "text",
            "--drain-deadline",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (flag, file) in [("--token-file", "tokens.yaml"), ("--state-dir", "state")] {
            args.push(flag.to_owned());
            args.push(dir.join(file).display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cp = ControlPlane {
            pod: self.clone(),
            log: dir.join("remora-cp.log"),
            dir,
            args,
            child: None,
        };
        cp.start().await;
        // The proxies' --ca-roots: the root, where uid 1337 can read it.
        let root = std::fs::read_to_string(cp.dir.join("state/root-cert.pem"))
            .expect("remora-cp wrote its root");
        write_readable(&cp.roots_path(), &root);
        cp
    }
}

impl ControlPlane {
    /// `HOST:PORT` of the certificate service, for `--ca-addr`.
    pub fn ca_addr(&self) -> String {
        format!("{}:{CA_PORT}", self.pod.ip4())
    }

    /// The root's PEM, readable by the proxy, for `--ca-roots`.
    pub fn roots_path(&self) -> PathBuf {
        self.dir.join("ca-roots.pem")
    }

    /// The root's certificate, PEM.
    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.roots_path()).expect("read ca-roots.pem")
    }

    /// A scratch path beside the control plane's files (for proxy tokens).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Everything remora-cp wrote so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the process (again) with the same flags and state directory,
    /// and waits for `/ready`.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "remora-cp is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the remora-cp log");
        let child = Command::new("ip")
            .args(["netns", "exec", self.pod.namespace()])
            .arg(bin_path("remora-cp"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("cannot spawn `ip netns exec ... remora-cp`");
        self.pod.net.register_child(child.id());
        self.child = Some(child);
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], CP_ADMIN_PORT));
        let deadline = Instant::now() + CP_READY_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "remora-cp exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = self.pod.http("GET", admin, "/ready").await {
                if r.status == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "remora-cp not ready after {CP_READY_DEADLINE:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process (the CA is gone at once, as in a node failure).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.pod.net.forget_child(child.id());
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- remora-cp log for pod {} -----\n{}\n----- end of log -----",
                self.pod.name(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
