//! The file source: a directory of Kubernetes objects as YAML (multi-document
//! `*.yaml`/`*.yml` files) read into a translation [`Store`], sent whole to
//! the publisher (`source`) as its file layer.
//!
//! This module owns reading the directory within [`DirLimits`] and sorting
//! out the objects it cannot take: each one is reported with its file and
//! reason, counted in `remora_cp_objects_invalid_total{kind}`, and skipped;
//! the rest load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use prometheus::IntCounterVec;
use tokio::sync::mpsc;

use crate::source::{Change, SourceSender};
use crate::translate::Store;

/// How long changes settle before a reload: an editor's save, or a
/// `kubectl`-style write of many files, becomes one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Bounds on what one load reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirLimits {
    /// Bytes per file; a larger file is skipped whole.
    pub max_file_bytes: u64,
    /// Objects in all files; the ones past it are skipped.
    pub max_objects: usize,
    /// Files read; the ones past it (by name) are skipped.
    pub max_files: usize,
}

impl Default for DirLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 4 << 20,
            max_objects: 200_000,
            max_files: 10_000,
        }
    }
}

/// A directory that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("reading the source directory {0}: {1}; check --source-dir")]
    Read(PathBuf, std::io::Error),
    #[error("watching the source directory {0}: {1}")]
    Watch(PathBuf, notify::Error),
}

/// Something skipped, with where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub file: PathBuf,
    /// The object's kind, or `file` when the whole file was skipped.
    pub kind: String,
    pub reason: String,
}

/// One load of the directory.
#[derive(Debug, Default)]
pub struct Loaded {
    pub store: Store,
    pub objects: usize,
    pub skipped: Vec<Skipped>,
}

/// Reads every YAML file of `dir` (not recursively), in name order.
pub fn load_dir(dir: &Path, limits: &DirLimits) -> Result<Loaded, DirError> {
    load_dir_cached(dir, limits, &mut FileCache::default())
}

/// What a file was when it was last read: a file with the same stamp is
/// not read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    inode: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            inode: meta.ino(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The objects of each file as last read, so a reload parses only the
/// files that changed: in a mesh of 10,000 Services one edited file is
/// read, not megabytes of YAML.
#[derive(Debug, Default)]
pub struct FileCache {
    files: BTreeMap<PathBuf, (Stamp, Loaded)>,
    /// Files parsed so far (the cache's misses).
    reads: u64,
}

/// Like [`load_dir`], reading again only the files whose stamp changed
/// since `cache` saw them.
pub fn load_dir_cached(
    dir: &Path,
    limits: &DirLimits,
    cache: &mut FileCache,
) -> Result<Loaded, DirError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DirError::Read(dir.to_owned(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut loaded = Loaded::default();
    let mut seen = BTreeMap::new();
    for (i, file) in files.iter().enumerate() {
        if i >= limits.max_files {
            loaded.skip(
                file,
                "file",
                format!("more than {} files", limits.max_files),
            );
            continue;
        }
        let Ok(meta) = std::fs::metadata(file) else {
            continue;
        };
        if meta.len() > limits.max_file_bytes {
            let reason = format!(
                "{} bytes, over the limit of {}",
                meta.len(),
                limits.max_file_bytes
            );
            loaded.skip(file, "file", reason);
            continue;
        }
        let stamp = Stamp::of(&meta);
        let budget = limits.max_objects.saturating_sub(loaded.objects);
        let part = match cache.files.remove(file) {
            Some((was, part)) if was == stamp && part.objects <= budget => part,
            _ => {
                cache.reads += 1;
                read_file(file, budget, limits.max_objects)
            }
        };
        loaded.store.overlay(&part.store);
        loaded.objects += part.objects;
        loaded.skipped.extend(part.skipped.iter().cloned());
        // A file cut short by the object budget is read again next time.
        if !part
            .skipped
            .iter()
            .any(|s| s.reason.starts_with("more than"))
        {
            seen.insert(file.clone(), (stamp, part));
        }
    }
    cache.files = seen;
    Ok(loaded)
}

impl Loaded {
    fn skip(&mut self, file: &Path, kind: &str, reason: String) {
        self.skipped.push(Skipped {
            file: file.to_owned(),
            kind: kind.to_owned(),
            reason,
        })
    }
}

/// One file's objects, at most `budget` of them (what is left of `limit`).
fn read_file(file: &Path, budget: usize, limit: usize) -> Loaded {
    let mut loaded = Loaded::default();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            loaded.skip(file, "file", e.to_string());
            return loaded;
        }
    };
    let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple(&text) {
        Ok(d) => d,
        Err(e) => {
            loaded.skip(file, "file", format!("not YAML: {e}"));
            return loaded;
        }
    };
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let kind = doc
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("unknown")
            .to_owned();
        if loaded.objects >= budget {
            loaded.skip(file, &kind, format!("more than {limit} objects"));
            continue;
        }
        match loaded.store.insert(doc) {
            Ok(_) => loaded.objects += 1,
            Err(e) => loaded.skip(file, &kind, e.to_string()),
        }
    }
    loaded
}

/// Whether an event can change what the directory holds. Opening and
/// reading a file are events too (inotify reports them): the reload's own
/// reads must not trigger the next reload, or it never stops.
fn changes_content(event: &notify::Event) -> bool {
    !matches!(event.kind, notify::EventKind::Access(_))
}

/// Loads `dir` into the publisher's file layer, then reloads on every
/// change (debounced) and sends the new store whole; the publisher
/// translates and publishes it. Skipped objects are logged and counted in
/// `invalid` (by kind). Fails only if the directory cannot be read or
/// watched at start; later read errors keep the last store.
pub async fn run(
    dir: PathBuf,
    limits: DirLimits,
    invalid: IntCounterVec,
    publisher: SourceSender,
) -> Result<(), DirError> {
    let mut cache = FileCache::default();
    let first = load_dir_cached(&dir, &limits, &mut cache)?;
    let (events_tx, mut events) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| changes_content(&e)) {
            let _ = events_tx.try_send(());
        }
    })
    .map_err(|e| DirError::Watch(dir.clone(), e))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| DirError::Watch(dir.clone(), e))?;
    let report = move |loaded: Loaded| {
        for s in &loaded.skipped {
            tracing::warn!(file = %s.file.display(), kind = %s.kind, reason = %s.reason, "object skipped");
            invalid.with_label_values(&[s.kind.as_str()]).inc();
        }
        tracing::info!(
            objects = loaded.objects,
            skipped = loaded.skipped.len(),
            "source directory loaded"
        );
        Change::Replace(Box::new(loaded.store))
    };
    publisher.send(report(first)).await;
    publisher.send(Change::Synced).await;
    tokio::spawn(async move {
        // The watcher stops when dropped; it lives as long as this task.
        let _watcher = watcher;
        while events.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while events.try_recv().is_ok() {}
            let loaded = match load_dir_cached(&dir, &limits, &mut cache) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "reload failed; keeping the last objects");
                    continue;
                }
            };
            if !publisher.send(report(loaded)).await {
                return;
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIPs: [10.96.0.1], ports: [{port: 80}]}\n";

    #[test]
    fn multi_document_files_load_and_a_bad_object_is_skipped_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            format!("{SVC}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: bad, namespace: shop}}\nspec: {{rules: [{{matches: [{{path: {{type: Glob}}}}]}}]}}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not read").unwrap();
        std::fs::write(dir.path().join("c.yaml"), "key: [unclosed").unwrap();
        let loaded = load_dir(dir.path(), &DirLimits::default()).unwrap();
        assert_eq!(loaded.objects, 2);
        assert_eq!(
            loaded.store.services.keys().collect::<Vec<_>>(),
            ["shop/web"]
        );
        assert_eq!(loaded.store.namespaces.keys().collect::<Vec<_>>(), ["shop"]);
        let skipped: Vec<(String, &str)> = loaded
            .skipped
            .iter()
            .map(|s| {
                (
                    s.file.file_name().unwrap().to_string_lossy().into_owned(),
                    s.kind.as_str(),
                )
            })
            .collect();
        assert_eq!(
            skipped,
            [
                ("a.yaml".to_owned(), "HTTPRoute"),
                ("c.yaml".to_owned(), "file")
            ]
        );
        assert!(
            loaded.skipped[0].reason.contains("unknown variant `Glob`"),
            "{:?}",
            loaded.skipped[0]
        );
    }

    #[test]
    fn limits_bound_file_size_and_object_count() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            format!("{SVC}---\n{}", SVC.replace("web", "api")),
        )
        .unwrap();
        std::fs::write(dir.path().join("big.yaml"), "x".repeat(2000)).unwrap();
        let limits = DirLimits {
            max_file_bytes: 1000,
            max_objects: 1,
            max_files: 10,
        };
        let loaded = load_dir(dir.path(), &limits).unwrap();
        assert_eq!(loaded.objects, 1);
        assert_eq!(
            loaded.store.services.keys().collect::<Vec<_>>(),
            ["shop/web"]
        );
        let reasons: Vec<&str> = loaded.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["more than 1 objects", "2000 bytes, over the limit of 1000"]
        );
    }

    #[tokio::test]
    async fn a_change_is_published_with_the_next_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
        let metrics = crate::source::tests::metrics();
        let invalid = metrics.invalid.clone();
        let mut publisher = crate::source::Publisher::new(
            crate::translate::Options::default(),
            metrics,
            crate::source::DEBOUNCE,
        );
        let files = publisher.layer(crate::source::Layer::Files);
        let mut rx = publisher.outputs().views;
        tokio::spawn(publisher.run());
        run(
            dir.path().to_owned(),
            DirLimits::default(),
            invalid.clone(),
            files,
        )
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| v.version == 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rx.borrow().destinations.keys().collect::<Vec<_>>(),
            ["shop/web"]
        );
        std::fs::write(
            dir.path().join("b.yaml"),
            format!("{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: x}}\nspec: {{ports: [{{port: many}}]}}\n", SVC.replace("web", "api")),
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .unwrap()
            .unwrap();
        let view = rx.borrow_and_update().clone();
        assert_eq!(view.version, 2);
        assert_eq!(
            view.destinations.keys().collect::<Vec<_>>(),
            ["shop/api", "shop/web"]
        );
        assert_eq!(invalid.with_label_values(&["Service"]).get(), 1);
    }

    #[test]
    fn a_reload_reads_only_the_files_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::fs::write(&a, SVC).unwrap();
        std::fs::write(&b, SVC.replace("web", "api")).unwrap();
        let mut cache = FileCache::default();
        let limits = DirLimits::default();
        let first = load_dir_cached(dir.path(), &limits, &mut cache).unwrap();
        assert_eq!((first.objects, cache.reads), (2, 2));
        // An edit of b reads b only.
        std::fs::write(&b, SVC.replace("web", "cart")).unwrap();
        let second = load_dir_cached(dir.path(), &limits, &mut cache).unwrap();
        assert_eq!(
            second.store.services.keys().collect::<Vec<_>>(),
            ["shop/cart", "shop/web"]
        );
        assert_eq!(cache.reads, 3);
        // Nothing changed: nothing read.
        load_dir_cached(dir.path(), &limits, &mut cache).unwrap();
        assert_eq!(cache.reads, 3);
        // A cached file's objects still lose to a later file's.
        std::fs::write(&b, SVC.replace("80", "81")).unwrap();
        let third = load_dir_cached(dir.path(), &limits, &mut cache).unwrap();
        let port = third.store.services["shop/web"]
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0]
            .port;
        assert_eq!(port, 81);
        // A removed file's objects go.
        std::fs::remove_file(&b).unwrap();
        let fourth = load_dir_cached(dir.path(), &limits, &mut cache).unwrap();
        assert_eq!(fourth.objects, 1);
        assert_eq!(cache.files.len(), 1);
    }

    #[test]
    fn reading_the_directory_does_not_count_as_a_change() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        use notify::{Event, EventKind};
        let kinds = [
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(notify::event::RemoveKind::File),
        ];
        let relevant: Vec<bool> = kinds
            .into_iter()
            .map(|k| changes_content(&Event::new(k)))
            .collect();
        assert_eq!(relevant, [false, false, false, true, true, true]);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let err = load_dir(Path::new("/nonexistent/remora"), &DirLimits::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("reading the source directory /nonexistent/remora"),
            "{err}"
        );
    }
}
