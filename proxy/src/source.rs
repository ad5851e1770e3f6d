//! Standalone mode's config source: a YAML or JSON file holding the mesh
//! config, loaded at start and reloaded whenever it changes.
//!
//! Everything about a new config happens on a thread of its own
//! (`remora-config`), never on the threads that carry requests: reading,
//! parsing, validating and compiling. Each step is bounded, because the
//! file is input like any other and may be huge, slow or hostile:
//!
//! - only a regular file is read, opened without blocking, so a FIFO, a
//!   socket or a device at the path is refused rather than waited on;
//! - at most [`MAX_CONFIG_BYTES`] are read;
//! - parsing runs on a helper thread and is given up after
//!   [`PARSE_TIMEOUT`] (the model's own limits on nesting and size keep it
//!   far below that);
//! - the compiled snapshot is swapped in with one atomic store.
//!
//! The watcher follows the file's directory, not the file, so editors that
//! write a new file and rename it over the old one, and Kubernetes ConfigMap
//! volumes that swap a symlink, are both seen. A bad file is rejected with
//! its reason and the last good config stays in force.

use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use remora_api::{MeshConfig, ParseLimits};
use tracing::{debug, info, warn};

use crate::state::{Snapshot, State};

pub(crate) mod discovery;

/// How often replaced snapshots are looked at, to drop them once no
/// request holds them.
const RETIRE_CHECK: Duration = Duration::from_millis(100);

/// Changes closer together than this are read once.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// The largest config file read. A mesh config of 10,000 services is
/// about 4 MiB of YAML.
pub(crate) const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// How long parsing and validating one file may take before it is given up.
pub(crate) const PARSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {kind}, not a regular file; point --config at a file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{path} is larger than {max} bytes; split the mesh or raise the limit")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{path}: parsing took longer than {timeout:?}; the file is too complex")]
    ParseTimeout { path: PathBuf, timeout: Duration },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: remora_api::ConfigError,
    },
    #[error("{path}: {source}")]
    Apply {
        path: PathBuf,
        #[source]
        source: crate::state::StateError,
    },
    #[error("watching {path} for changes: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("starting the config thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Reads the config file: a regular file, at most `max` bytes. The open
/// never blocks (`O_NONBLOCK`), so a FIFO put at the path cannot hang the
/// reader; it is refused once opened, as is anything else not a file.
pub(crate) fn read(path: &Path, max: u64) -> Result<Vec<u8>, SourceError> {
    let read_error = |source| SourceError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        let kind = if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "a device"
        } else if file_type.is_dir() {
            "a directory"
        } else {
            "not a file"
        };
        return Err(SourceError::NotAFile {
            path: path.to_owned(),
            kind,
        });
    }
    if meta.len() > max {
        return Err(SourceError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow between the stat and the read: read one byte past
    // the limit to notice.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > max {
        return Err(SourceError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(bytes)
}

/// Parses and validates a config file's bytes (JSON if it looks like
/// JSON, else YAML) within the model's limits on size, nesting, nodes and
/// YAML aliases, each of which is rejected by name.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<MeshConfig, SourceError> {
    let limits = ParseLimits {
        max_bytes: MAX_CONFIG_BYTES as usize,
        ..ParseLimits::DEFAULT
    };
    MeshConfig::parse(bytes, &limits).map_err(|source| SourceError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Reads, parses and applies the file once, on the caller's thread. Used
/// at start, before any traffic is accepted.
pub(crate) fn load(path: &Path, state: &State) -> Result<(), SourceError> {
    let bytes = read(path, MAX_CONFIG_BYTES)?;
    let config = parse(path, &bytes)?;
    apply(path, state, config)
}

fn apply(path: &Path, state: &State, config: MeshConfig) -> Result<(), SourceError> {
    apply_retiring(path, state, config).map(drop)
}

fn apply_retiring(
    path: &Path,
    state: &State,
    config: MeshConfig,
) -> Result<Arc<Snapshot>, SourceError> {
    state
        .apply_retiring(config)
        .map_err(|source| SourceError::Apply {
            path: path.to_owned(),
            source,
        })
}

/// Snapshots replaced by a newer config, kept until no request holds them
/// so that they are dropped here, on the config thread, and not by the last
/// request to finish on a data-plane thread (a 10,000-service snapshot takes
/// milliseconds to free).
#[derive(Debug, Default)]
struct Retired(Vec<Arc<Snapshot>>);

impl Retired {
    fn keep(&mut self, snapshot: Arc<Snapshot>) {
        self.0.push(snapshot);
        self.collect();
    }

    /// Drops the snapshots only this list still holds.
    fn collect(&mut self) {
        self.0.retain(|s| Arc::strong_count(s) > 1);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses on a helper thread and waits at most `timeout` for it. A parse
/// that overruns keeps its thread until it ends (its input is bounded), and
/// no second parse starts meanwhile: at most one runs at a time.
#[derive(Debug)]
struct Parser<F> {
    parse: F,
    timeout: Duration,
    /// A parse that overran and has not finished yet.
    overrun: Option<mpsc::Receiver<()>>,
}

impl<F> Parser<F>
where
    F: Fn(&Path, &[u8]) -> Result<MeshConfig, SourceError> + Clone + Send + 'static,
{
    fn new(parse: F, timeout: Duration) -> Self {
        Parser {
            parse,
            timeout,
            overrun: None,
        }
    }

    fn parse(&mut self, path: &Path, bytes: Vec<u8>) -> Result<MeshConfig, SourceError> {
        let timed_out = || SourceError::ParseTimeout {
            path: path.to_owned(),
            timeout: self.timeout,
        };
        if let Some(previous) = &self.overrun {
            match previous.try_recv() {
                Err(mpsc::TryRecvError::Empty) => return Err(timed_out()),
                _ => self.overrun = None,
            }
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let parse = self.parse.clone();
        let owned = path.to_owned();
        std::thread::Builder::new()
            .name("remora-config-parse".into())
            .spawn(move || {
                let _ = tx.send(parse(&owned, &bytes));
                let _ = done_tx.send(());
            })
            .map_err(SourceError::Thread)?;
        match rx.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(_) => {
                self.overrun = Some(done_rx);
                Err(timed_out())
            }
        }
    }
}

/// Starts the config thread: it watches the file and applies every change
/// until the process exits. Returns once the watch is set up. Compiling a
/// snapshot starts tasks (health checks, pool sweepers) on `runtime`.
pub(crate) fn watch(
    path: PathBuf,
    state: Arc<State>,
    runtime: tokio::runtime::Handle,
) -> Result<(), SourceError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })
    .map_err(|source| SourceError::Watch {
        path: path.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| SourceError::Watch {
            path: path.clone(),
            source,
        })?;
    let last = read(&path, MAX_CONFIG_BYTES).ok();
    let thread_state = state.clone();
    std::thread::Builder::new()
        .name("remora-config".into())
        .spawn(move || {
            // Marks the source stopped if this thread ends for any reason,
            // a panic included, so `/ready` tells.
            let _stopped = StoppedOnDrop(thread_state.clone());
            let _runtime = runtime.enter();
            // The watcher stops when dropped; it lives as long as this thread.
            let _watcher = watcher;
            let mut parser = Parser::new(parse, PARSE_TIMEOUT);
            reload_loop(&path, &thread_state, &rx, last, &mut parser);
        })
        .map_err(SourceError::Thread)?;
    Ok(())
}

/// Applies each change of the file, until the watcher goes away.
fn reload_loop<F>(
    path: &Path,
    state: &State,
    changes: &mpsc::Receiver<()>,
    mut last: Option<Vec<u8>>,
    parser: &mut Parser<F>,
) where
    F: Fn(&Path, &[u8]) -> Result<MeshConfig, SourceError> + Clone + Send + 'static,
{
    let mut retired = Retired::default();
    loop {
        // While old snapshots wait for their last requests, look again now
        // and then; otherwise sleep until the next change.
        let next = if retired.is_empty() {
            changes.recv().map_err(|_| ())
        } else {
            match changes.recv_timeout(RETIRE_CHECK) {
                Ok(()) => Ok(()),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    retired.collect();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
            }
        };
        if next.is_err() {
            break;
        }
        // A burst of events (write, chmod, rename) is one change.
        while changes.recv_timeout(DEBOUNCE).is_ok() {}
        let bytes = match read(path, MAX_CONFIG_BYTES) {
            Ok(bytes) => bytes,
            Err(SourceError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                // Mid-rename, or removed: wait for the next change.
                debug!(path = %path.display(), "config file gone for now");
                continue;
            }
            Err(e) => {
                state.reject(e.to_string());
                last = None;
                continue;
            }
        };
        if last.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        last = Some(bytes.clone());
        let result = parser
            .parse(path, bytes)
            .and_then(|config| apply_retiring(path, state, config));
        match result {
            Ok(previous) => {
                retired.keep(previous);
                info!(path = %path.display(), "config file reloaded");
            }
            Err(SourceError::Apply { .. }) => {} // State logged and counted it.
            Err(e) => {
                warn!(error = %e, "config file rejected; the last good config stays in force");
                state.reject(e.to_string());
            }
        }
    }
}

struct StoppedOnDrop(Arc<State>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        let reason = if std::thread::panicking() {
            "the config thread panicked"
        } else {
            "the config watcher stopped"
        };
        self.0.source_stopped(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("remora-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = temp_dir("fifo");
        let path = dir.join("mesh.yaml");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let started = std::time::Instant::now();
        let err = read(&path, MAX_CONFIG_BYTES).expect_err("a FIFO is not a config");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            matches!(err, SourceError::NotAFile { kind: "a FIFO", .. }),
            "{err}"
        );
        let err = read(&dir, MAX_CONFIG_BYTES).expect_err("a directory is not a config");
        assert!(
            matches!(
                err,
                SourceError::NotAFile {
                    kind: "a directory",
                    ..
                }
            ),
            "{err}"
        );
        let err = read(Path::new("/dev/zero"), MAX_CONFIG_BYTES).expect_err("a device");
        assert!(
            matches!(
                err,
                SourceError::NotAFile {
                    kind: "a device",
                    ..
                }
            ),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_replaced_snapshot_is_dropped_here_once_no_request_holds_it() {
        let mut retired = Retired::default();
        let in_flight = Arc::new(Snapshot::default());
        retired.keep(in_flight.clone());
        assert!(!retired.is_empty(), "a request still holds it");
        let weak = Arc::downgrade(&in_flight);
        drop(in_flight);
        assert!(
            weak.upgrade().is_some(),
            "the request let go, the list still has it"
        );
        retired.collect();
        assert!(retired.is_empty());
        assert!(
            weak.upgrade().is_none(),
            "dropped by collect, on this thread"
        );
        retired.keep(Arc::new(Snapshot::default()));
        assert!(retired.is_empty(), "nobody else held it: dropped at once");
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = temp_dir("large");
        let path = dir.join("mesh.yaml");
        std::fs::write(&path, vec![b'#'; 1001]).expect("write");
        let err = read(&path, 1000).expect_err("too large");
        assert!(
            matches!(err, SourceError::TooLarge { max: 1000, .. }),
            "{err}"
        );
        assert_eq!(read(&path, 1001).expect("at the limit").len(), 1001);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_slow_parse_is_given_up_and_not_doubled() {
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let slow = move |path: &Path, bytes: &[u8]| {
            let _ = release_rx
                .lock()
                .map(|rx| rx.recv_timeout(Duration::from_secs(5)));
            parse(path, bytes)
        };
        let mut parser = Parser::new(slow, Duration::from_millis(50));
        let path = Path::new("mesh.yaml");
        let err = parser
            .parse(path, b"version: a\n".to_vec())
            .expect_err("overran");
        assert!(matches!(err, SourceError::ParseTimeout { .. }), "{err}");
        // Still running: the next one is refused at once, not stacked.
        let started = std::time::Instant::now();
        let err = parser
            .parse(path, b"version: b\n".to_vec())
            .expect_err("busy");
        assert!(matches!(err, SourceError::ParseTimeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_millis(40));
        // Once it ends, parsing works again.
        release_tx.send(()).expect("release");
        std::thread::sleep(Duration::from_millis(100));
        release_tx.send(()).expect("release");
        let config = parser
            .parse(path, b"version: c\n".to_vec())
            .expect("parses");
        assert_eq!(config.version, "c");
    }
}
