//! The batch processor the observability plugins share, after APISIX's:
//! `log` puts an entry in a bounded queue without waiting; one task per
//! compiled plugin takes entries in batches and hands each batch to a sink
//! (an HTTP endpoint, a file). Nothing here is on the request path but
//! [`Batcher::push`], which never blocks.
//!
//! A batch goes out when it holds `batch_max_size` entries, when no entry
//! came for `inactive_timeout`, or when its oldest entry is
//! `buffer_duration` old. A batch the sink refused is sent again
//! `max_retry_count` times, `retry_delay` apart, then dropped. A full
//! queue drops the new entry. Both are counted in
//! `remora_plugin_dropped_total{plugin, reason}` (`queue_full`,
//! `undelivered`). Memory is bounded by the queue and one batch in flight.
//! The task ends, after sending what it holds, when its plugin is dropped
//! (a config that no longer has it).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{in_range, Env, Fault};

/// APISIX's batch-processor fields, as `http-logger` takes them (flat in
/// its config: serde's `flatten` would lose field paths).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchFields {
    /// Entries per batch, 1 to 100000.
    pub(crate) batch_max_size: u32,
    /// Seconds without a new entry before a partial batch goes, 1 to 3600.
    pub(crate) inactive_timeout: u64,
    /// The oldest entry's age in seconds at which a batch goes, 1 to 3600.
    pub(crate) buffer_duration: u64,
    /// Further tries of a batch the endpoint refused, 0 to 100.
    pub(crate) max_retry_count: u32,
    /// Seconds between tries, 0 to 3600.
    pub(crate) retry_delay: u64,
    /// Entries waiting beyond the batch in flight, 1 to 1000000.
    pub(crate) max_pending_entries: u32,
}

pub(crate) fn default_batch_max_size() -> u32 {
    1000
}
pub(crate) fn default_inactive_timeout() -> u64 {
    5
}
pub(crate) fn default_buffer_duration() -> u64 {
    60
}
pub(crate) fn default_retry_delay() -> u64 {
    1
}
pub(crate) fn default_max_pending_entries() -> u32 {
    10_000
}

impl BatchFields {
    /// Checked settings.
    pub(crate) fn settings(self) -> Result<Settings, Fault> {
        in_range("batch_max_size", self.batch_max_size, 1..=100_000)?;
        in_range("inactive_timeout", self.inactive_timeout, 1..=3600)?;
        in_range("buffer_duration", self.buffer_duration, 1..=3600)?;
        in_range("max_retry_count", self.max_retry_count, 0..=100)?;
        in_range("retry_delay", self.retry_delay, 0..=3600)?;
        in_range(
            "max_pending_entries",
            self.max_pending_entries,
            1..=1_000_000,
        )?;
        Ok(Settings {
            batch_max_size: self.batch_max_size as usize,
            inactive_timeout: Duration::from_secs(self.inactive_timeout),
            buffer_duration: Duration::from_secs(self.buffer_duration),
            max_retry_count: self.max_retry_count,
            retry_delay: Duration::from_secs(self.retry_delay),
            capacity: self.max_pending_entries as usize,
        })
    }
}

/// How a batch task gathers and retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) batch_max_size: usize,
    /// Zero: a batch is what is queued when the task looks (a file).
    pub(crate) inactive_timeout: Duration,
    pub(crate) buffer_duration: Duration,
    pub(crate) max_retry_count: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) capacity: usize,
}

/// Where batches go.
pub(crate) trait Sink: Send + 'static {
    type Item: Send + 'static;
    /// One batch as the bytes to deliver, built once for every try.
    fn encode(&self, batch: Vec<Self::Item>) -> Bytes;
    /// One try; the error says why, for the debug log.
    fn deliver(&mut self, payload: &Bytes) -> impl Future<Output = Result<(), String>> + Send;
}

/// The request path's end of a batch task.
#[derive(Debug)]
pub(crate) struct Batcher<T> {
    queue: mpsc::Sender<T>,
    full: IntCounter,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
            full: self.full.clone(),
        }
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts the task of `plugin` on the proxy's runtime.
    pub(crate) fn start<S: Sink<Item = T>>(
        plugin: &'static str,
        settings: Settings,
        sink: S,
        env: &Env,
    ) -> Result<Self, Fault> {
        let (queue, entries) = mpsc::channel(settings.capacity);
        if env.is_checking() {
            // A check (remora-cp): nothing is sent, so nothing starts.
            return Ok(Batcher {
                queue,
                full: env.dropped.with_label_values(&[plugin, "queue_full"]),
            });
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Fault::new("", "needs the proxy's runtime to start its sender"))?;
        let undelivered = env.dropped.with_label_values(&[plugin, "undelivered"]);
        runtime.spawn(run(entries, sink, settings, undelivered, plugin));
        Ok(Batcher {
            queue,
            full: env.dropped.with_label_values(&[plugin, "queue_full"]),
        })
    }

    /// Queues `item`, or drops and counts it when the queue is full.
    pub(crate) fn push(&self, item: T) {
        if self.queue.try_send(item).is_err() {
            self.full.inc();
        }
    }
}

async fn run<S: Sink>(
    mut entries: mpsc::Receiver<S::Item>,
    mut sink: S,
    s: Settings,
    undelivered: IntCounter,
    plugin: &'static str,
) {
    let mut batch = Vec::new();
    // When the batch's oldest entry came, and its newest.
    let (mut first, mut last) = (Instant::now(), Instant::now());
    loop {
        let next = if batch.is_empty() || s.inactive_timeout.is_zero() {
            entries.recv().await
        } else {
            let due = (last + s.inactive_timeout).min(first + s.buffer_duration);
            match tokio::time::timeout_at(due, entries.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    flush(&mut sink, &mut batch, &s, &undelivered, plugin).await;
                    continue;
                }
            }
        };
        let Some(item) = next else {
            // The plugin is gone: send what is left, then end.
            flush(&mut sink, &mut batch, &s, &undelivered, plugin).await;
            return;
        };
        last = Instant::now();
        if batch.is_empty() {
            first = last;
        }
        batch.push(item);
        if s.inactive_timeout.is_zero() {
            while batch.len() < s.batch_max_size {
                match entries.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        if batch.len() >= s.batch_max_size || s.inactive_timeout.is_zero() {
            flush(&mut sink, &mut batch, &s, &undelivered, plugin).await;
        }
    }
}

async fn flush<S: Sink>(
    sink: &mut S,
    batch: &mut Vec<S::Item>,
    s: &Settings,
    undelivered: &IntCounter,
    plugin: &'static str,
) {
    if batch.is_empty() {
        return;
    }
    let count = batch.len();
    let payload = sink.encode(std::mem::take(batch));
    for attempt in 0..=s.max_retry_count {
        match sink.deliver(&payload).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(plugin, attempt, entries = count, error = %e, "batch not delivered");
                if attempt < s.max_retry_count {
                    tokio::time::sleep(s.retry_delay).await;
                }
            }
        }
    }
    undelivered.inc_by(count as u64);
}

/// POSTs each payload to one plain-HTTP endpoint over a kept HTTP/1.1
/// connection, made again after a failure.
#[derive(Debug)]
pub(crate) struct HttpPost {
    uri: Uri,
    /// `host:port` to dial, resolved at each connect.
    target: String,
    headers: HeaderMap,
    timeout: Duration,
    connection: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl HttpPost {
    /// An endpoint from the config field `field`: `http://host[:port]/path`.
    pub(crate) fn new(
        field: &str,
        uri: &str,
        headers: HeaderMap,
        timeout: Duration,
    ) -> Result<Self, Fault> {
        let parsed: Uri = uri
            .parse()
            .map_err(|e| Fault::new(field, format!("{uri:?} is not a URI: {e}")))?;
        match parsed.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(Fault::new(
                    field,
                    format!("scheme {other:?} is not supported: use http://"),
                ))
            }
            None => return Err(Fault::new(field, format!("{uri:?} needs http://host"))),
        }
        let Some(authority) = parsed.authority() else {
            return Err(Fault::new(field, format!("{uri:?} has no host")));
        };
        let target = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        Ok(HttpPost {
            uri: parsed,
            target,
            headers,
            timeout,
            connection: None,
        })
    }

    /// One POST of `body`; a status other than 2xx is a failure.
    pub(crate) async fn post(&mut self, body: &Bytes) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.exchange(body)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.connection = None;
                Err(e)
            }
            Err(_) => {
                self.connection = None;
                Err(format!("no answer from {} in {:?}", self.uri, self.timeout))
            }
        }
    }

    async fn exchange(&mut self, body: &Bytes) -> Result<(), String> {
        let mut sender = match self.connection.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                let stream = tokio::net::TcpStream::connect(&self.target)
                    .await
                    .map_err(|e| format!("connecting to {}: {e}", self.target))?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                sender
            }
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let mut req = Request::post(self.uri.clone())
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        *req.headers_mut() = self.headers.clone();
        if let Some(authority) = self.uri.authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(http::header::HOST, host);
            }
        }
        let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = response.status();
        // Read the answer so the connection can carry the next batch.
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{} answered {status}", self.uri));
        }
        self.connection = Some(sender);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Keeps batches; fails the first `fail` tries.
    #[derive(Debug, Clone)]
    struct Kept {
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
        fail: Arc<Mutex<u32>>,
    }

    impl Sink for Kept {
        type Item = u32;
        fn encode(&self, batch: Vec<u32>) -> Bytes {
            Bytes::from(
                batch
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }
        async fn deliver(&mut self, payload: &Bytes) -> Result<(), String> {
            let mut fail = self.fail.lock().expect("lock");
            if *fail > 0 {
                *fail -= 1;
                return Err("down".into());
            }
            let text = std::str::from_utf8(payload).expect("utf-8");
            let batch = text
                .split(',')
                .map(|n| n.parse().expect("number"))
                .collect();
            self.batches.lock().expect("lock").push(batch);
            Ok(())
        }
    }

    fn settings(max: usize, capacity: usize, retries: u32) -> Settings {
        Settings {
            batch_max_size: max,
            inactive_timeout: Duration::from_secs(5),
            buffer_duration: Duration::from_secs(60),
            max_retry_count: retries,
            retry_delay: Duration::from_secs(1),
            capacity,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_batches_go_at_once_and_the_rest_after_the_inactive_timeout() {
        let metrics = crate::metrics::Metrics::new();
        let env = Env::new(&metrics);
        let sink = Kept {
            batches: Arc::default(),
            fail: Arc::default(),
        };
        let b = Batcher::start("t", settings(2, 10, 0), sink.clone(), &env).expect("starts");
        for n in 0..5 {
            b.push(n);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            *sink.batches.lock().expect("lock"),
            [vec![0, 1], vec![2, 3]]
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            *sink.batches.lock().expect("lock"),
            [vec![0, 1], vec![2, 3], vec![4]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_and_a_refused_batch_are_dropped_and_counted() {
        let metrics = crate::metrics::Metrics::new();
        let env = Env::new(&metrics);
        let sink = Kept {
            batches: Arc::default(),
            fail: Arc::new(Mutex::new(3)),
        };
        // One retry: the first batch fails twice and is dropped; the
        // second fails once and goes; the queue held two of the five.
        let b = Batcher::start("t", settings(1, 2, 1), sink.clone(), &env).expect("starts");
        b.push(0);
        tokio::task::yield_now().await;
        for n in 1..6 {
            b.push(n);
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*sink.batches.lock().expect("lock"), [vec![1], vec![2]]);
        let text = metrics.render();
        for line in [
            r#"remora_plugin_dropped_total{plugin="t",reason="queue_full"} 3"#,
            r#"remora_plugin_dropped_total{plugin="t",reason="undelivered"} 1"#,
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    #[test]
    fn endpoints_are_plain_http_with_a_host() {
        for (uri, message) in [
            (
                "https://c:4318/v1/traces",
                "scheme \"https\" is not supported",
            ),
            ("/v1/traces", "needs http://host"),
            ("http://", "is not a URI"),
        ] {
            let e =
                HttpPost::new("uri", uri, HeaderMap::new(), Duration::from_secs(1)).expect_err(uri);
            assert_eq!(e.field, ".uri");
            assert!(e.message.contains(message), "{uri}: {}", e.message);
        }
        let ok = HttpPost::new(
            "uri",
            "http://sink/logs",
            HeaderMap::new(),
            Duration::from_secs(1),
        )
        .expect("valid");
        assert_eq!(ok.target, "sink:80");
    }
}
