//! The control plane at scale (bench/README.md, "cp-scale"): a generated
//! file-source store of many Services and endpoints, the real `remora-cp`
//! binary serving it, and many simulated proxy discovery streams on
//! loopback, each subscribed to a few destinations. It reports:
//!
//! - the time to load and translate the store, and remora-cp's RSS and CPU;
//! - the time for every stream to hold its full state (initial sync);
//! - the time from a change (an endpoint added to a Service that
//!   `--watchers` streams watch) to each of those streams receiving it,
//!   p50/p99/max over `--changes` changes, and how many pushes other
//!   streams received meanwhile (a delta must reach no one else);
//! - a full resync of every stream after remora-cp is killed and restarted.
//!
//! Run: `cargo run --release -p remora-cp --example cp_scale -- --cp target/release/remora-cp`
//! (bench/cp_scale.sh does that and records the table).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use remora_cp::proto::discovery as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const NS: &str = "bench";
/// Services per generated file.
const PER_FILE: usize = 100;
/// The bound on every wait: a run that stalls fails instead of hanging.
const WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
struct Settings {
    cp: PathBuf,
    services: usize,
    endpoints_per: usize,
    streams: usize,
    subs: usize,
    watchers: usize,
    changes: usize,
}

fn parse_args() -> Result<Settings, String> {
    let mut s = Settings {
        cp: PathBuf::from("target/release/remora-cp"),
        services: 10_000,
        endpoints_per: 10,
        streams: 1_000,
        subs: 10,
        watchers: 100,
        changes: 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let n = || {
            value
                .parse::<usize>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--cp" => s.cp = PathBuf::from(&value),
            "--services" => s.services = n()?.clamp(1, 60_000),
            "--endpoints-per" => s.endpoints_per = n()?.clamp(1, 100),
            "--streams" => s.streams = n()?.clamp(1, 10_000),
            "--subs" => s.subs = n()?.clamp(1, 100),
            "--watchers" => s.watchers = n()?.clamp(1, 10_000),
            "--changes" => s.changes = n()?.clamp(1, 1_000),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if s.watchers > s.streams {
        return Err("--watchers must not exceed --streams".into());
    }
    Ok(s)
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i >> 8) as u8, (i & 255) as u8)
}

fn endpoint_ip(e: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 128 + (e >> 16) as u8, (e >> 8) as u8, (e & 255) as u8)
}

fn service_yaml(i: usize, endpoints: &[Ipv4Addr]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: {NS}}}\n\
         spec: {{clusterIPs: [{}], ports: [{{name: http, port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: svc-{i}-1, namespace: {NS}, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n",
        vip(i)
    );
    for ip in endpoints {
        let _ = writeln!(y, "  - addresses: [{ip}]");
    }
    y.push_str("---\n");
    y
}

fn endpoints_of(i: usize, per: usize) -> Vec<Ipv4Addr> {
    (0..per).map(|k| endpoint_ip(i * per + k)).collect()
}

/// Writes the store: Service 0 (the watched one) alone in `hot.yaml`, the
/// rest `PER_FILE` to a file.
fn generate(dir: &Path, s: &Settings) -> std::io::Result<u64> {
    let mut bytes = 0;
    write_atomic(
        &dir.join("hot.yaml"),
        &service_yaml(0, &endpoints_of(0, s.endpoints_per)),
    )?;
    for start in (1..s.services).step_by(PER_FILE) {
        let mut text = String::new();
        for i in start..(start + PER_FILE).min(s.services) {
            text.push_str(&service_yaml(i, &endpoints_of(i, s.endpoints_per)));
        }
        bytes += text.len() as u64;
        write_atomic(&dir.join(format!("svc-{start:05}.yaml")), &text)?;
    }
    Ok(bytes)
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// remora-cp's process and where it listens.
struct Cp {
    child: Child,
    admin: SocketAddr,
}

impl Cp {
    fn spawn(
        s: &Settings,
        work: &Path,
        grpc: SocketAddr,
        admin: SocketAddr,
    ) -> std::io::Result<Cp> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.join("remora-cp.log"))?;
        let child = Command::new(&s.cp)
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--state-dir", &work.join("state").display().to_string()])
            .args([
                "--token-file",
                &work.join("tokens.yaml").display().to_string(),
            ])
            .args(["--source-dir", &work.join("source").display().to_string()])
            .args(["--discovery-max-subscriptions", "1024"])
            .args(["--log-format", "text"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Cp { child, admin })
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("remora-cp exited: {status}"));
            }
            if http_get(self.admin, "/ready")
                .await
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("remora-cp not ready in time".into())
    }

    /// (RSS in KiB, CPU seconds used so far).
    fn usage(&self) -> (u64, f64) {
        proc_usage(self.child.id())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        self.kill();
    }
}

fn proc_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as f64;
    (rss, ticks as f64 / hz)
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

/// What a stream saw, sent to the coordinator.
#[derive(Debug)]
struct Seen {
    stream: usize,
    /// Counts reconnects: pushes of an earlier connection are stale.
    epoch: u32,
    resource: String,
    version: u64,
    at: Instant,
}

fn resource_name(r: Option<&pb::Resource>) -> String {
    use pb::resource::Kind;
    match r.and_then(|r| r.kind.as_ref()) {
        Some(Kind::Globals(_)) => "globals".into(),
        Some(Kind::Inbound(_)) => "inbound".into(),
        Some(Kind::Address(a)) => format!("{}:{}", a.ip, a.port),
        Some(Kind::Host(h)) => format!("{}:{}", h.name, h.port),
        None => "?".into(),
    }
}

/// The services stream `i` subscribes to: its own `subs` (so the mesh is
/// covered), with the first swapped for Service 0 on the watchers.
fn subscriptions(i: usize, s: &Settings) -> Vec<usize> {
    (0..s.subs)
        .map(|j| {
            if j == 0 && i < s.watchers {
                0
            } else {
                1 + (i * s.subs + j) % (s.services - 1).max(1)
            }
        })
        .collect()
}

/// One simulated proxy: connects, says Hello, subscribes, acks every push,
/// and reconnects with back-off when the stream ends.
async fn proxy_stream(
    i: usize,
    endpoint: Endpoint,
    subs: Vec<usize>,
    seen: mpsc::UnboundedSender<Seen>,
) {
    let mut epoch = 0u32;
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Ok(channel) = endpoint.connect().await {
            backoff = Duration::from_millis(50);
            epoch += 1;
            let (tx, rx) = mpsc::channel(64);
            let send = |kind| pb::DiscoveryRequest { kind: Some(kind) };
            use pb::discovery_request::Kind;
            let _ = tx
                .send(send(Kind::Hello(pb::Hello {
                    pod: format!("p-{i}"),
                    namespace: NS.into(),
                })))
                .await;
            for &svc in &subs {
                let _ = tx
                    .send(send(Kind::Subscribe(pb::Subscribe {
                        resource: Some(pb::Resource {
                            kind: Some(pb::resource::Kind::Address(pb::Address {
                                ip: vip(svc).to_string(),
                                port: 80,
                            })),
                        }),
                    })))
                    .await;
            }
            let mut client = pb::discovery_client::DiscoveryClient::new(channel)
                .max_decoding_message_size(remora_cp::MAX_DISCOVERY_PUSH);
            if let Ok(response) = client.stream(ReceiverStream::new(rx)).await {
                let mut pushes = response.into_inner();
                while let Ok(Some(m)) = pushes.message().await {
                    let Some(pb::discovery_response::Kind::Push(p)) = m.kind else {
                        continue;
                    };
                    let at = Instant::now();
                    let _ = seen.send(Seen {
                        stream: i,
                        epoch,
                        resource: resource_name(p.resource.as_ref()),
                        version: p.version,
                        at,
                    });
                    let _ = tx
                        .send(send(Kind::Ack(pb::Ack {
                            nonce: p.nonce,
                            accepted: true,
                            message: String::new(),
                        })))
                        .await;
                }
            }
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 50);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// resource → (version, when it arrived).
type Latest = HashMap<String, (u64, Instant)>;

/// Per stream: its epoch and what arrived in it.
#[derive(Default)]
struct Tracker {
    state: HashMap<usize, (u32, Latest)>,
    pushes: u64,
}

impl Tracker {
    fn record(&mut self, s: Seen) {
        self.pushes += 1;
        let entry = self.state.entry(s.stream).or_default();
        if s.epoch > entry.0 {
            *entry = (s.epoch, HashMap::new());
        }
        if s.epoch == entry.0 {
            entry.1.insert(s.resource, (s.version, s.at));
        }
    }

    /// Streams holding every resource (`want` each) in an epoch of at least `epoch`.
    fn synced(&self, want: usize, epoch: u32) -> usize {
        self.state
            .values()
            .filter(|(e, r)| *e >= epoch && r.len() >= want)
            .count()
    }

    fn latest(&self, stream: usize, resource: &str) -> Option<(u64, Instant)> {
        self.state
            .get(&stream)
            .and_then(|(_, r)| r.get(resource).copied())
    }
}

async fn drain_until(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    tracker: &mut Tracker,
    what: &str,
    mut done: impl FnMut(&Tracker) -> bool,
) -> Result<Instant, String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(tracker) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(s)) => tracker.record(s),
            Ok(None) => return Err("streams gone".into()),
            Err(_) => return Err(format!("timed out waiting for {what}")),
        }
        while let Ok(s) = rx.try_recv() {
            tracker.record(s);
        }
    }
    Ok(Instant::now())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn run(s: Settings) -> Result<String, String> {
    let e = |e: std::io::Error| e.to_string();
    let work = std::env::temp_dir().join(format!("remora-cp-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("source")).map_err(e)?;
    std::fs::write(work.join("tokens.yaml"), "tokens: []\n").map_err(e)?;
    let bytes = generate(&work.join("source"), &s).map_err(e)?;
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port().map_err(e)?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port().map_err(e)?));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "store: {} Services, {} endpoints ({:.1} MiB of YAML); {} streams x {} destinations; \
         Service 0 watched by {}",
        s.services,
        s.services * s.endpoints_per,
        bytes as f64 / (1 << 20) as f64,
        s.streams,
        s.subs,
        s.watchers
    );
    let _ = writeln!(out, "\n| measure | value |\n|---|---|");

    let started = Instant::now();
    let mut cp = Cp::spawn(&s, &work, grpc, admin).map_err(e)?;
    cp.wait_ready().await?;
    let (rss, cpu) = cp.usage();
    let _ = writeln!(
        out,
        "| start to ready (load + translate) | {} |\n| remora-cp RSS, idle | {:.1} MiB |\n| remora-cp CPU to ready | {:.2} s |",
        ms(started.elapsed()),
        rss as f64 / 1024.0,
        cpu
    );

    let root = std::fs::read_to_string(work.join("state/root-cert.pem")).map_err(e)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root))
        .domain_name("remora-cp");
    let endpoint = Endpoint::from_shared(format!("https://{grpc}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5));
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let cpu0 = cp.usage().1;
    let sync_start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..s.streams {
        let subs = subscriptions(i, &s);
        tasks.push(tokio::spawn(proxy_stream(
            i,
            endpoint.clone(),
            subs,
            seen_tx.clone(),
        )));
    }
    let mut tracker = Tracker::default();
    // Distinct resources per stream: globals, inbound, and its destinations.
    let distinct: Vec<usize> = (0..s.streams)
        .map(|i| {
            let mut v = subscriptions(i, &s);
            v.sort_unstable();
            v.dedup();
            v.len() + 2
        })
        .collect();
    let min_want = distinct.iter().copied().min().unwrap_or(s.subs + 2);
    let synced_at = drain_until(&mut seen_rx, &mut tracker, "the initial sync", |t| {
        t.synced(min_want, 1) == s.streams
    })
    .await?;
    let (rss, cpu) = cp.usage();
    let _ = writeln!(
        out,
        "| initial sync of {} streams | {} |\n| remora-cp RSS, {} streams | {:.1} MiB |\n| remora-cp CPU for the sync | {:.2} s |",
        s.streams,
        ms(synced_at - sync_start),
        s.streams,
        rss as f64 / 1024.0,
        cpu - cpu0
    );

    // Propagation: add an endpoint to Service 0, time its arrival on each watcher.
    let hot = format!("{}:80", vip(0));
    let mut samples = Vec::new();
    let mut extra_endpoints = endpoints_of(0, s.endpoints_per);
    let cpu0 = cp.usage().1;
    let mut pushes_elsewhere = 0u64;
    for c in 0..s.changes {
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(seen) = seen_rx.try_recv() {
            tracker.record(seen);
        }
        let before: Vec<u64> = (0..s.watchers)
            .map(|w| tracker.latest(w, &hot).map_or(0, |v| v.0))
            .collect();
        let pushes_before = tracker.pushes;
        extra_endpoints.push(endpoint_ip(s.services * s.endpoints_per + c));
        let t0 = Instant::now();
        write_atomic(
            &work.join("source/hot.yaml"),
            &service_yaml(0, &extra_endpoints),
        )
        .map_err(e)?;
        drain_until(&mut seen_rx, &mut tracker, "a change to propagate", |t| {
            (0..s.watchers).all(|w| t.latest(w, &hot).is_some_and(|v| v.0 > before[w]))
        })
        .await?;
        for w in 0..s.watchers {
            if let Some((_, at)) = tracker.latest(w, &hot) {
                samples.push(at - t0);
            }
        }
        pushes_elsewhere += tracker.pushes - pushes_before - s.watchers as u64;
    }
    let cpu_changes = cp.usage().1 - cpu0;
    samples.sort_unstable();
    let _ = writeln!(
        out,
        "| change → last of {} watchers, p50 ({} changes) | {} |\n| p99 | {} |\n| max | {} |\n| pushes to streams not watching | {} |\n| remora-cp CPU per change | {:.0} ms |",
        s.watchers,
        s.changes,
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
        pushes_elsewhere,
        cpu_changes * 1000.0 / s.changes as f64
    );

    // Resync: kill remora-cp, start it again, wait for every stream.
    cp.kill();
    let restart = Instant::now();
    let mut cp = Cp::spawn(&s, &work, grpc, admin).map_err(e)?;
    cp.wait_ready().await?;
    let ready = Instant::now();
    let resynced = drain_until(&mut seen_rx, &mut tracker, "the resync", |t| {
        t.synced(min_want, 2) == s.streams
    })
    .await?;
    let (rss, _) = cp.usage();
    let _ = writeln!(
        out,
        "| resync of {} streams after a restart (from the new process) | {} |\n| of which remora-cp start to ready | {} |\n| remora-cp RSS after the resync | {:.1} MiB |",
        s.streams,
        ms(resynced - restart),
        ms(ready - restart),
        rss as f64 / 1024.0
    );
    for t in tasks {
        t.abort();
    }
    drop(cp);
    let _ = std::fs::remove_dir_all(&work);
    Ok(out)
}

fn main() -> std::process::ExitCode {
    let settings = match parse_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cp_scale: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cp_scale: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(table) => {
            print!("{table}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cp_scale: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
