//! `file-logger`: access-log entries appended to `path` as JSON lines, as
//! APISIX's plugin of that name (the entry is [`super::access_log`]'s).
//!
//! The file is opened (created if need be, appended to) when the config
//! compiles, so a path that cannot be written rejects the config. Lines
//! are written off the request path by one task, through a bounded queue
//! (`max_pending_entries`) that drops and counts in
//! `remora_plugin_dropped_total{plugin="file-logger"}` when the disk cannot
//! keep up. The file is reopened on SIGHUP, and before a write when `path`
//! no longer names the open file (moved or deleted by logrotate), so
//! rotation needs no signal.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::access_log::Record;
use super::batch::{self, Batcher, Settings, Sink};
use super::log_format::{self, LogFormat};
use super::{in_range, parse, Ctx, Descriptor, Env, Fault, LogEntry, Plugin};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("file-logger", 399, super::schema_of::<Config>, compile).recording();

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The log file, absolute.
    path: String,
    /// Lines waiting to be written; more are dropped and counted. 1 to
    /// 1000000.
    #[serde(default = "batch::default_max_pending_entries")]
    max_pending_entries: u32,
    /// The entry's fields: name → `$variable` or a literal; unset, the
    /// entry is APISIX's default.
    #[serde(default)]
    log_format: Option<log_format::Config>,
}

#[derive(Debug)]
struct FileLogger {
    lines: Batcher<Record>,
    format: Option<LogFormat>,
}

/// The open file, and how to tell that it must be opened again.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    /// Device and inode of the open file.
    id: (u64, u64),
    /// Set by SIGHUP.
    reopen: Arc<AtomicBool>,
    /// Ends the SIGHUP listener with the task that owns this.
    _listening: tokio::sync::oneshot::Sender<()>,
}

fn open(path: &PathBuf) -> std::io::Result<(std::fs::File, (u64, u64))> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let meta = file.metadata()?;
    Ok((file, (meta.dev(), meta.ino())))
}

impl LogFile {
    /// Whether the open file is still the one `path` names.
    async fn current(&self) -> bool {
        match tokio::fs::metadata(&self.path).await {
            Ok(meta) => (meta.dev(), meta.ino()) == self.id,
            Err(_) => false,
        }
    }

    async fn write(&mut self, payload: &Bytes) -> Result<(), String> {
        let signalled = self.reopen.swap(false, Ordering::Relaxed);
        if signalled || self.file.is_none() || !self.current().await {
            self.file = None;
            let (file, id) =
                open(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
            self.file = Some(tokio::fs::File::from_std(file));
            self.id = id;
        }
        let Some(file) = self.file.as_mut() else {
            return Err("no file".into());
        };
        let written = async {
            file.write_all(payload).await?;
            file.flush().await
        };
        if let Err(e) = written.await {
            self.file = None;
            return Err(format!("{}: {e}", self.path.display()));
        }
        Ok(())
    }
}

impl Sink for LogFile {
    type Item = Record;

    fn encode(&self, batch: Vec<Record>) -> Bytes {
        let mut text = String::new();
        for record in &batch {
            if let Ok(line) = serde_json::to_string(record) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        Bytes::from(text)
    }

    async fn deliver(&mut self, payload: &Bytes) -> Result<(), String> {
        self.write(payload).await
    }
}

/// Sets `reopen` on every SIGHUP until `done` fires or is dropped.
fn listen_for_hangup(reopen: Arc<AtomicBool>, done: tokio::sync::oneshot::Receiver<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "file-logger: SIGHUP cannot be watched; rotation is seen by the file's inode only"
        );
        return;
    };
    tokio::spawn(async move {
        tokio::pin!(done);
        loop {
            tokio::select! {
                _ = &mut done => return,
                got = hangups.recv() => match got {
                    Some(()) => reopen.store(true, Ordering::Relaxed),
                    None => return,
                },
            }
        }
    });
}

fn compile(value: &serde_json::Value, env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    in_range(
        "max_pending_entries",
        config.max_pending_entries,
        1..=1_000_000,
    )?;
    let format = log_format::compile(config.log_format.as_ref())?;
    let path = PathBuf::from(&config.path);
    if !path.is_absolute() {
        return Err(Fault::new(
            "path",
            format!("{:?} is not an absolute path", config.path),
        ));
    }
    if env.is_checking() {
        // The file is on the proxy's host: only the proxy can open it.
        return Ok(Arc::new(super::Checked));
    }
    let (file, id) = open(&path)
        .map_err(|e| Fault::new("path", format!("{} cannot be opened: {e}", path.display())))?;
    // Needs the runtime, as the task does; checked there first.
    tokio::runtime::Handle::try_current()
        .map_err(|_| Fault::new("", "needs the proxy's runtime to start its writer"))?;
    let reopen = Arc::new(AtomicBool::new(false));
    let (listening, done) = tokio::sync::oneshot::channel();
    listen_for_hangup(reopen.clone(), done);
    let sink = LogFile {
        path,
        file: Some(tokio::fs::File::from_std(file)),
        id,
        reopen,
        _listening: listening,
    };
    // A batch is what is queued when the writer looks: lines go at once.
    let settings = Settings {
        batch_max_size: 1000,
        inactive_timeout: Duration::ZERO,
        buffer_duration: Duration::ZERO,
        max_retry_count: 0,
        retry_delay: Duration::ZERO,
        capacity: config.max_pending_entries as usize,
    };
    let lines = Batcher::start(DESCRIPTOR.name, settings, sink, env)?;
    Ok(Arc::new(FileLogger { lines, format }))
}

impl Plugin for FileLogger {
    fn log(&self, ctx: &Ctx<'_>, entry: &LogEntry<'_>) {
        log_format::log(self.format.as_ref(), &self.lines, ctx, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_faults, consumers, ctx, env};
    use super::*;
    use serde_json::json;

    /// One exchange whose body sent 10 bytes after a 90-byte head.
    fn log_once(p: &Arc<dyn Plugin>, status: u16) {
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let headers = http::HeaderMap::new();
        p.log(
            &ctx,
            &LogEntry {
                status: http::StatusCode::from_u16(status).expect("status"),
                latency: Duration::ZERO,
                headers: &headers,
                upstream: None,
            },
        );
        let unsent = ctx.take_unsent();
        assert_eq!(unsent.len(), 1, "the default entry waits for the body");
        for entry in unsent {
            entry.send(super::super::access_log::Sent { body: 10, head: 90 });
        }
    }

    async fn lines_of(path: &std::path::Path, want: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= want {
                return text
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("a JSON line"))
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} has fewer than {want} lines", path.display());
    }

    #[tokio::test]
    async fn lines_are_appended_and_a_rotated_file_is_made_again() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("access.log");
        let p = compile(&json!({"path": path.to_str()}), &env()).expect("valid");
        log_once(&p, 200);
        log_once(&p, 404);
        let lines = lines_of(&path, 2).await;
        let statuses: Vec<_> = lines
            .iter()
            .map(|l| l["response"]["status"].clone())
            .collect();
        assert_eq!(statuses, [json!(200), json!(404)]);
        assert_eq!(lines[0]["response"]["size"], 100, "head and body");
        // logrotate moves the file away: the next line starts a new one.
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        log_once(&p, 503);
        let lines = lines_of(&path, 1).await;
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["response"]["status"], 503);
        assert_eq!(
            std::fs::read_to_string(&rotated)
                .expect("kept")
                .lines()
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (json!({}), "", "missing field `path`"),
                (
                    json!({"path": "logs/access.log"}),
                    ".path",
                    "not an absolute path",
                ),
                (
                    json!({"path": "/nonexistent-dir/x/access.log"}),
                    ".path",
                    "cannot be opened",
                ),
                (
                    json!({"path": "/tmp/remora-file-logger-test.log", "max_pending_entries": 0}),
                    ".max_pending_entries",
                    "out of range",
                ),
                (
                    json!({"path": "/tmp/x.log", "format": "text"}),
                    ".format",
                    "unknown field `format`",
                ),
                (
                    json!({"path": "/tmp/x.log", "log_format": "$remote_addr"}),
                    ".log_format",
                    "invalid type",
                ),
                (
                    json!({"path": "/tmp/x.log", "log_format": {}}),
                    ".log_format",
                    "0 fields: a format names 1 to 256",
                ),
            ],
        );
    }
}
