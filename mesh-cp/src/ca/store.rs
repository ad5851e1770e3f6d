//! The root on disk: `root-cert.pem` and `root-key.pem` in the state
//! directory, generated on first start and read on every later one.
//!
//! Writes are atomic (a temporary file in the same directory, fsync, rename,
//! fsync of the directory) so a crash never leaves half a key; the key file
//! and the directory are private to the owner (0600 and 0700). Supplied roots
//! (--root-cert/--root-key) are read from where the operator put them and
//! never copied here.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{generate_root, CaError, RootMaterial};

pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";

/// PEM files larger than this are refused rather than read.
const MAX_PEM_FILE: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}; check that the state directory exists, is writable by remora-cp and is on a persistent volume")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{present} exists but {missing} does not; restore the missing file or remove both to generate a new root (proxies then need the new trust bundle)")]
    HalfRoot { present: PathBuf, missing: PathBuf },
    #[error("{0} is larger than 1 MiB; it is not a PEM certificate or key")]
    TooLarge(PathBuf),
    #[error("{0} is not UTF-8 PEM text")]
    NotText(PathBuf),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Where the root came from, for the log line at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootOrigin {
    Generated,
    Loaded,
    Supplied,
}

/// Reads the root in `dir`, or generates and persists one if there is none.
pub fn load_or_generate(
    dir: &Path,
    trust_domain: &str,
    lifetime: Duration,
    now: SystemTime,
) -> Result<(RootMaterial, RootOrigin), StoreError> {
    let cert = dir.join(ROOT_CERT_FILE);
    let key = dir.join(ROOT_KEY_FILE);
    match (exists(&cert)?, exists(&key)?) {
        (true, true) => Ok((
            RootMaterial {
                cert_pem: read_pem(&cert)?,
                key_pem: read_pem(&key)?,
            },
            RootOrigin::Loaded,
        )),
        (true, false) => Err(StoreError::HalfRoot {
            present: cert,
            missing: key,
        }),
        (false, true) => Err(StoreError::HalfRoot {
            present: key,
            missing: cert,
        }),
        (false, false) => {
            let root = generate_root(trust_domain, lifetime, now)?;
            write_root(dir, &root)?;
            Ok((root, RootOrigin::Generated))
        }
    }
}

/// Writes a root into `dir` (created 0700 if missing): the key first, so a
/// crash between the two leaves "key without cert", which start refuses.
pub fn write_root(dir: &Path, root: &RootMaterial) -> Result<(), StoreError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    write_atomic(&dir.join(ROOT_KEY_FILE), root.key_pem.as_bytes(), 0o600)?;
    write_atomic(&dir.join(ROOT_CERT_FILE), root.cert_pem.as_bytes(), 0o644)?;
    Ok(())
}

/// Reads a PEM file of at most 1 MiB.
pub fn read_pem(path: &Path) -> Result<String, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let len = fs::metadata(path).map_err(io)?.len();
    if len > MAX_PEM_FILE {
        return Err(StoreError::TooLarge(path.to_owned()));
    }
    let bytes = fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|_| StoreError::NotText(path.to_owned()))
}

fn exists(path: &Path) -> Result<bool, StoreError> {
    path.try_exists().map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| StoreError::Io { path: p, source }
    };
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode above is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn generates_once_then_loads_the_same_root() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let now = SystemTime::now();
        let (first, origin) = load_or_generate(&state, "cluster.local", 365 * DAY, now).unwrap();
        assert_eq!(origin, RootOrigin::Generated);
        let (second, origin) = load_or_generate(&state, "cluster.local", 365 * DAY, now).unwrap();
        assert_eq!(origin, RootOrigin::Loaded);
        assert_eq!(first.cert_pem, second.cert_pem);
        assert_eq!(first.key_pem, second.key_pem);

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join(ROOT_KEY_FILE)), 0o600);
        assert_eq!(mode(&state.join(ROOT_CERT_FILE)), 0o644);
        assert_eq!(mode(&state), 0o700);
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&state).unwrap().count(), 2);
    }

    #[test]
    fn half_a_root_is_an_error_not_a_new_root() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        load_or_generate(dir.path(), "cluster.local", 365 * DAY, now).unwrap();
        fs::remove_file(dir.path().join(ROOT_CERT_FILE)).unwrap();
        let err = load_or_generate(dir.path(), "cluster.local", 365 * DAY, now).unwrap_err();
        assert!(matches!(err, StoreError::HalfRoot { .. }), "{err}");
        assert!(!dir.path().join(ROOT_CERT_FILE).exists());
    }
}
