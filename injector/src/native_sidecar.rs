//! Whether the proxy is injected as a native sidecar: `--native-sidecar
//! auto|true|false`. With `auto` the injector asks the API server for its
//! version once at start (`GET /version`, readable by every authenticated
//! identity through the `system:discovery` ClusterRole) and uses native
//! sidecars on 1.29 and later, where the `SidecarContainers` feature is on
//! by default (beta in 1.29, GA in 1.33). A version it cannot read (no API,
//! an error, no answer in time) falls back to the regular container, which
//! works on every version, with a warning that says why.
//!
//! It decides once: a cluster upgrade restarts the injector's pods anyway.
//! It owns the decision only; what each choice injects is `inject`'s.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::version::Info;
use tokio::time::{sleep, timeout};

/// The first Kubernetes version with native sidecars on by default.
pub const FIRST_NATIVE: Version = Version {
    major: 1,
    minor: 29,
};
/// Bound on one `GET /version`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests before giving up, 500 ms then 1 s apart: at most 16.5 s.
pub const ATTEMPTS: u32 = 3;
const BACKOFF_MIN: Duration = Duration::from_millis(500);

/// `--native-sidecar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Ask the API server.
    Auto,
    /// As configured: native sidecar (`true`) or regular container.
    Fixed(bool),
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Mode::Auto),
            "true" => Ok(Mode::Fixed(true)),
            "false" => Ok(Mode::Fixed(false)),
            other => Err(format!(
                "{other:?}: use auto (ask the API server), true or false"
            )),
        }
    }
}

/// A Kubernetes `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Version {
    pub fn supports_native_sidecars(self) -> bool {
        self >= FIRST_NATIVE
    }
}

/// The leading digits of `text` as a number ("29+" is 29, as managed
/// clusters write it); `None` without any or past `u32`.
fn leading_number(text: &str) -> Option<u32> {
    let text = text.trim();
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// `major.minor` from a gitVersion such as `v1.30.1-gke.100`.
fn from_git_version(git: &str) -> Option<Version> {
    let rest = git.trim().strip_prefix('v').unwrap_or(git.trim());
    let (major, rest) = rest.split_once('.')?;
    if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Version {
        major: major.parse().ok()?,
        minor: leading_number(rest)?,
    })
}

/// The version whose features the server has on by default: its emulation
/// version when it reports one (a server can emulate an older release, and
/// then has that release's feature defaults), else `major`/`minor`, else
/// the gitVersion.
pub fn parse_version(info: &Info) -> Result<Version, String> {
    let pair = |major: &str, minor: &str| {
        Some(Version {
            major: leading_number(major)?,
            minor: leading_number(minor)?,
        })
    };
    let emulated = match (&info.emulation_major, &info.emulation_minor) {
        (Some(major), Some(minor)) => pair(major, minor),
        _ => None,
    };
    emulated
        .or_else(|| pair(&info.major, &info.minor))
        .or_else(|| from_git_version(&info.git_version))
        .ok_or_else(|| {
            format!(
                "the API server's version is unreadable (major {:?}, minor {:?}, gitVersion {:?})",
                info.major, info.minor, info.git_version
            )
        })
}

/// What was decided, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `--native-sidecar true|false`.
    Configured(bool),
    /// `auto`, from the server's version.
    Detected(Version),
    /// `auto`, but the version could not be read: a regular container.
    Fallback(String),
}

impl Decision {
    /// Whether the proxy is injected as a native sidecar.
    pub fn native(&self) -> bool {
        match self {
            Decision::Configured(native) => *native,
            Decision::Detected(version) => version.supports_native_sidecars(),
            Decision::Fallback(_) => false,
        }
    }

    /// The start-up log line: info, or a warning for a fallback.
    pub fn log(&self) {
        let native = self.native();
        match self {
            Decision::Configured(_) => {
                tracing::info!(native_sidecar = native, "proxy injection mode set by --native-sidecar")
            }
            Decision::Detected(version) => tracing::info!(
                native_sidecar = native,
                kubernetes = %version,
                "proxy injection mode detected from the API server's version (native sidecars from {FIRST_NATIVE})"
            ),
            Decision::Fallback(why) => tracing::warn!(
                native_sidecar = native,
                "--native-sidecar=auto: {why}; injecting the proxy as a regular container, which \
                 works on every version (set --native-sidecar=true on Kubernetes {FIRST_NATIVE} or later)"
            ),
        }
    }
}

/// Decides for `mode`. `client` is the API client (or why there is none);
/// it is used only with [`Mode::Auto`].
pub async fn decide(mode: Mode, client: Result<&kube::Client, &str>) -> Decision {
    match mode {
        Mode::Fixed(native) => Decision::Configured(native),
        Mode::Auto => match client {
            Err(why) => Decision::Fallback(format!("no Kubernetes API ({why})")),
            Ok(client) => match server_version(client).await {
                Ok(version) => Decision::Detected(version),
                Err(why) => Decision::Fallback(why),
            },
        },
    }
}

/// `GET /version`, [`ATTEMPTS`] times at most, each within
/// [`REQUEST_TIMEOUT`].
async fn server_version(client: &kube::Client) -> Result<Version, String> {
    let mut backoff = BACKOFF_MIN;
    let mut attempt = 1;
    loop {
        let failure = match timeout(REQUEST_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(info)) => return parse_version(&info),
            Ok(Err(kube::Error::Api(status))) => format!(
                "GET /version answered {} {}: {}",
                status.code, status.reason, status.message
            ),
            Ok(Err(e)) => format!("GET /version failed: {e}"),
            Err(_) => format!(
                "GET /version got no answer within {}",
                humantime::format_duration(REQUEST_TIMEOUT)
            ),
        };
        if attempt == ATTEMPTS {
            return Err(format!("{failure} ({ATTEMPTS} attempts)"));
        }
        tracing::debug!(%failure, retry_in = ?backoff, "reading the API server's version");
        sleep(backoff).await;
        backoff *= 2;
        attempt += 1;
    }
}

/// The gauge `remora_injector_native_sidecar`: 1 when the proxy is
/// injected as a native sidecar, 0 otherwise.
pub fn register_gauge(
    registry: &prometheus::Registry,
    decision: &Decision,
) -> prometheus::Result<()> {
    let gauge = prometheus::IntGauge::new(
        "remora_injector_native_sidecar",
        "1 when the proxy is injected as a native sidecar, 0 as a regular container",
    )?;
    gauge.set(i64::from(decision.native()));
    registry.register(Box::new(gauge))
}

#[cfg(test)]
mod tests;
