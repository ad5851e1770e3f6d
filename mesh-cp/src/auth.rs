//! Who is asking: a token in, an identity out, checked before any signing.
//!
//! `Authenticator` is the seam. Standalone mode implements it with a token
//! file (`TokenFile`), re-read whenever the file changes. In Kubernetes,
//! `kubernetes::TokenReviewer` posts a TokenReview with the expected
//! audience (`--auth kubernetes`).

pub mod kubernetes;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::identity::{Identity, IdentityError};

/// The largest token accepted, in bytes.
pub const MAX_TOKEN: usize = 8 * 1024;

/// Token files larger than this are refused.
const MAX_TOKEN_FILE: u64 = 4 * 1024 * 1024;

/// Why a token proves nothing.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token was sent; send the service-account token with the CSR")]
    Missing,
    #[error("token is {0} bytes; at most {MAX_TOKEN} are accepted")]
    TooLarge(usize),
    #[error("the token is not known to remora-cp; check the token file (or, in Kubernetes, that the token is valid and unexpired)")]
    Unknown,
    #[error("the token was refused: {0}")]
    Denied(String),
    #[error("the identity service could not check the token: {0}; retry later")]
    Unavailable(String),
}

/// A boxed future, so that implementations can be held as `dyn Authenticator`.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Identity, AuthError>> + Send + 'a>>;

/// Turns a bearer token into the identity it proves.
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    /// Resolves `token` (already checked non-empty and within `MAX_TOKEN`).
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;
}

/// A token file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("token file {path}: {source}; check --token-file")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {0} is larger than 4 MiB")]
    TooLarge(PathBuf),
    #[error("token file {path} is not valid: {message}; expected `tokens: [{{token, namespace, serviceAccount}}]`")]
    Parse { path: PathBuf, message: String },
    #[error("token file {path}, entry {index}: {message}")]
    Entry {
        path: PathBuf,
        index: usize,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    tokens: Vec<FileEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileEntry {
    token: String,
    namespace: String,
    service_account: String,
}

/// Token digests mapped to identities. The file's tokens are kept only as
/// SHA-256 digests, so a lookup compares digests, not secrets.
type Table = HashMap<[u8; 32], Identity>;

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// Called after each reload attempt with whether it succeeded (for metrics).
pub type OnReload = Box<dyn Fn(bool) + Send + Sync>;

/// Standalone mode: a YAML (or JSON) file mapping tokens to identities.
pub struct TokenFile {
    path: PathBuf,
    trust_domain: String,
    state: Mutex<(Stamp, std::sync::Arc<Table>)>,
    on_reload: OnReload,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenFile {
    /// Reads the file now; an unreadable or invalid file is a startup error.
    /// `on_reload(ok)` is called after each later reload attempt.
    pub fn open(
        path: &Path,
        trust_domain: &str,
        on_reload: OnReload,
    ) -> Result<Self, TokenFileError> {
        let stamp = stamp(path)?;
        let table = load(path, trust_domain)?;
        Ok(Self {
            path: path.to_owned(),
            trust_domain: trust_domain.to_owned(),
            state: Mutex::new((stamp, std::sync::Arc::new(table))),
            on_reload,
        })
    }

    /// The table to look in, re-read first if the file changed. A file that
    /// changed into something invalid keeps the last good table in force.
    fn current(&self) -> std::sync::Arc<Table> {
        let now = stamp(&self.path).ok();
        let (previous, table) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (state.0.clone(), state.1.clone())
        };
        let Some(now) = now.filter(|s| *s != previous) else {
            return table;
        };
        match load(&self.path, &self.trust_domain) {
            Ok(fresh) => {
                let fresh = std::sync::Arc::new(fresh);
                tracing::info!(path = %self.path.display(), tokens = fresh.len(), "token file reloaded");
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                *state = (now, fresh.clone());
                (self.on_reload)(true);
                fresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "token file changed but is not valid; the previous tokens stay in force");
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                // Remember the bad version so it is not re-parsed on every request.
                state.0 = now;
                (self.on_reload)(false);
                table
            }
        }
    }
}

impl Authenticator for TokenFile {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            self.current()
                .get(&digest)
                .cloned()
                .ok_or(AuthError::Unknown)
        })
    }
}

fn stamp(path: &Path) -> Result<Stamp, TokenFileError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| TokenFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

fn load(path: &Path, trust_domain: &str) -> Result<Table, TokenFileError> {
    let io = |source| TokenFileError::Io {
        path: path.to_owned(),
        source,
    };
    if std::fs::metadata(path).map_err(io)?.len() > MAX_TOKEN_FILE {
        return Err(TokenFileError::TooLarge(path.to_owned()));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse(&text, trust_domain).map_err(|e| match e {
        ParseError::Doc(message) => TokenFileError::Parse {
            path: path.to_owned(),
            message,
        },
        ParseError::Entry(index, message) => TokenFileError::Entry {
            path: path.to_owned(),
            index,
            message,
        },
    })
}

enum ParseError {
    Doc(String),
    Entry(usize, String),
}

fn parse(text: &str, trust_domain: &str) -> Result<Table, ParseError> {
    let doc: FileDoc = serde_saphyr::from_str(text).map_err(|e| ParseError::Doc(e.to_string()))?;
    let mut table = Table::with_capacity(doc.tokens.len());
    for (index, entry) in doc.tokens.into_iter().enumerate() {
        if entry.token.is_empty() || entry.token.len() > MAX_TOKEN {
            return Err(ParseError::Entry(
                index,
                format!("token must be 1 to {MAX_TOKEN} bytes"),
            ));
        }
        let identity = Identity::new(trust_domain, &entry.namespace, &entry.service_account)
            .map_err(|e: IdentityError| ParseError::Entry(index, e.to_string()))?;
        let digest: [u8; 32] = Sha256::digest(entry.token.as_bytes()).into();
        if table.insert(digest, identity).is_some() {
            return Err(ParseError::Entry(
                index,
                "this token is already listed; each token maps to one identity".to_owned(),
            ));
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn maps_tokens_and_reloads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(
            &path,
            "tokens:\n  - token: t-web\n    namespace: default\n    serviceAccount: web\n",
        )
        .unwrap();
        let file = TokenFile::open(&path, "cluster.local", Box::new(|_| {})).unwrap();
        let id = block_on(file.authenticate("t-web")).unwrap();
        assert_eq!(id.uri(), "spiffe://cluster.local/ns/default/sa/web");
        assert!(matches!(
            block_on(file.authenticate("t-db")),
            Err(AuthError::Unknown)
        ));

        // Rewritten by rename, as a Secret volume or an editor does.
        let next = dir.path().join("next.yaml");
        std::fs::write(
            &next,
            r#"{"tokens": [{"token": "t-db", "namespace": "prod", "serviceAccount": "db"}]}"#,
        )
        .unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert!(matches!(
            block_on(file.authenticate("t-web")),
            Err(AuthError::Unknown)
        ));
        let id = block_on(file.authenticate("t-db")).unwrap();
        assert_eq!(id.uri(), "spiffe://cluster.local/ns/prod/sa/db");

        // A broken file keeps the last good tokens.
        std::fs::write(&next, "tokens: [ {token: x").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert!(block_on(file.authenticate("t-db")).is_ok());
    }

    #[test]
    fn refuses_bad_files_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        for (text, want) in [
            ("tokens:\n  - token: a\n    namespace: Bad\n    serviceAccount: web\n", "entry 0"),
            ("tokens:\n  - token: a\n    namespace: ns\n    serviceAccount: web\n  - token: a\n    namespace: ns\n    serviceAccount: db\n", "already listed"),
            ("tokens:\n  - token: ''\n    namespace: ns\n    serviceAccount: web\n", "1 to 8192"),
            ("tokens:\n  - token: a\n    namespace: ns\n    sa: web\n", "not valid"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = TokenFile::open(&path, "cluster.local", Box::new(|_| {})).unwrap_err();
            assert!(err.to_string().contains(want), "{text:?}: {err}");
        }
    }
}
