//! `remora demo`: the whole mesh on one machine, narrated. It starts
//! remora-cp in file mode (the CA signs every sidecar's certificate, and
//! discovery streams each sidecar its mesh config), makes three pods as
//! network namespaces on a bridge, injects each from the injector's pure
//! function, runs `remora-init` and `remora-proxy` (uid 1337) in it as the
//! injection says, and sends traffic, printing each step with its evidence:
//! capture, mTLS identities, a 90/10 split, a rate limit.
//!
//! This module owns the steps and what they print; `objects` is the demo's
//! cluster as data (pure), `host` the namespaces and processes, `app` the
//! server app. Whatever happens (an error, Ctrl-C, SIGTERM) the demo stops
//! every process in its namespaces and deletes them; its logs stay in
//! `/tmp/remora-demo-*.log`.

pub mod app;
pub mod host;
pub mod objects;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use objects::{
    DemoPod, HostPaths, Sidecar, CLIENT, CP_ADMIN_PORT, CP_GRPC_PORT, HELLO_IP, LIMITED_PATH,
    LIMIT_COUNT, LIMIT_WINDOW_SECONDS, NODE_IP, NODE_NETNS, PODS, SERVERS, SPLIT_WEIGHTS,
};

/// Requests of the split step and of the rate-limit step.
const SPLIT_REQUESTS: usize = 100;
const LIMIT_REQUESTS: usize = 10;
/// How long remora-cp, each proxy (its first certificate) and each app
/// get to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// One request's deadline.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The proxy's admin port in each pod.
const PROXY_ADMIN: &str = "http://127.0.0.1:15020";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where remora-cp, remora-proxy and remora-init are; default: beside
    /// this `remora`.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// `remora demo-app` (hidden): the demo's server app.
#[derive(Debug, Args)]
pub struct DemoAppArgs {
    /// The name it answers with, e.g. `hello-v1`.
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
}

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    Objects(#[from] objects::ObjectsError),
    #[error("{0}")]
    Step(String),
}

/// Runs the demo; the exit code is 0, 1 on an error, 130 after SIGINT and
/// 143 after SIGTERM, and nothing of the demo is left either way.
pub async fn run(args: &DemoArgs) -> ExitCode {
    // Listen before anything is made, so no signal finds a half-made demo
    // without its cleanup.
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("remora demo: listening for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bin = match bin_dir(args) {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("remora demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _lock = match host::lock() {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("remora demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A previous demo killed with SIGKILL may have left pods behind.
    host::clean_up();
    let tmp = std::env::temp_dir().join(format!("remora-demo.{}", std::process::id()));
    // Dropping the steps' future at a signal stops them where they wait;
    // only then does the cleanup run, so nothing starts behind it.
    let outcome = tokio::select! {
        result = steps(&bin, &tmp) => result,
        _ = interrupt.recv() => {
            eprintln!("remora demo: interrupted (SIGINT), cleaning up");
            Err(130)
        }
        _ = terminate.recv() => {
            eprintln!("remora demo: terminated (SIGTERM), cleaning up");
            Err(143)
        }
    };
    host::clean_up();
    let _ = std::fs::remove_dir_all(&tmp);
    match outcome {
        Ok(()) => {
            step("done: the demo's pods are gone; the logs stay in /tmp/remora-demo-*.log");
            ExitCode::SUCCESS
        }
        Err(code) => ExitCode::from(code),
    }
}

/// The demo's steps; an error is printed and becomes exit code 1.
async fn steps(bin: &Path, tmp: &Path) -> Result<(), u8> {
    match demo(bin, tmp).await {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("remora demo: {e}");
            eprintln!("remora demo: the logs are in /tmp/remora-demo-*.log");
            Err(1)
        }
    }
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn log_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/remora-demo-{name}.log"))
}

/// Writes `text` to `path` readable by everyone (the proxies run as 1337).
fn write_readable(path: &Path, text: &str) -> Result<(), DemoError> {
    let io = |e: std::io::Error| DemoError::Step(format!("writing {}: {e}", path.display()));
    std::fs::write(path, text).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(io)
}

fn make_dir(path: &Path) -> Result<(), DemoError> {
    let io = |e: std::io::Error| DemoError::Step(format!("creating {}: {e}", path.display()));
    std::fs::create_dir_all(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io)
}

fn bin_dir(args: &DemoArgs) -> Result<PathBuf, DemoError> {
    let dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .ok_or_else(|| DemoError::Step("cannot tell where remora is; pass --bin-dir".into()))?,
    };
    for bin in ["remora-cp", "remora-proxy", "remora-init", "remora"] {
        if !dir.join(bin).is_file() {
            return Err(DemoError::Step(format!(
                "{} is missing; build it (cargo build --bins) or pass --bin-dir",
                dir.join(bin).display()
            )));
        }
    }
    std::path::absolute(&dir).map_err(|e| DemoError::Step(format!("{}: {e}", dir.display())))
}

async fn demo(bin: &Path, tmp: &Path) -> Result<(), DemoError> {
    let _ = std::fs::remove_dir_all(tmp);
    let host_paths = HostPaths {
        cp_addr: format!("{NODE_IP}:{CP_GRPC_PORT}"),
        ca_roots: tmp.join("ca-roots.pem"),
        tokens_dir: tmp.join("tokens"),
    };
    let source_dir = tmp.join("objects");
    for dir in [tmp, &host_paths.tokens_dir, &source_dir] {
        make_dir(dir)?;
    }

    step(
        "injection: each pod through the injector's pure function (remora_injector::injected_pod)",
    );
    let sidecars: Vec<Sidecar> = PODS
        .iter()
        .map(|pod| objects::sidecar(pod, &host_paths))
        .collect::<Result<_, _>>()?;
    for s in &sidecars {
        println!(
            "pod {}: remora-init env {}; remora-proxy as uid {} gid {}, env {}",
            s.pod.name,
            names(&s.init_env),
            s.proxy_uid,
            s.proxy_gid,
            names(&s.proxy_env)
        );
    }
    println!("mapped for this host (a cluster provides these):");
    for m in &sidecars[0].mappings {
        println!(
            "  {}: {} -> {} ({})",
            m.name,
            m.injected.as_deref().unwrap_or("(not injected)"),
            m.host.replace(sidecars[0].pod.name, "<pod>"),
            m.why
        );
    }

    step(
        "remora-cp: the file source (--source-dir), the CA (standalone --token-file) and discovery",
    );
    for (name, text) in objects::source_files(&sidecars)? {
        write_readable(&source_dir.join(&name), &text)?;
        println!("{}/{name}", source_dir.display());
    }
    // The same translation remora-cp runs; a problem stops the demo here,
    // with its reason, rather than as a proxy that never gets ready.
    objects::translated(&objects::load_store(&source_dir)?)?;
    let (v1, v2) = SPLIT_WEIGHTS;
    println!(
        "translated: service hello.demo {HELLO_IP}:80: route split -> hello-v1 {v1}, hello-v2 {v2}; \
         route limited ({LIMITED_PATH}) -> hello-v1 with limit-count {LIMIT_COUNT} per {LIMIT_WINDOW_SECONDS} s"
    );
    let token_file = tmp.join("tokens.yaml");
    write_readable(&token_file, &objects::token_file())?;
    for pod in PODS {
        write_readable(&host_paths.token_file(&pod), &pod.token())?;
        println!("token of pod {} -> {}", pod.name, pod.identity());
    }
    host::make_pods(&PODS).await?;
    let state_dir = tmp.join("cp-state");
    let cp_argv: Vec<String> = [
        bin.join("remora-cp").display().to_string(),
        "--grpc-addr".into(),
        format!("0.0.0.0:{CP_GRPC_PORT}"),
        "--admin-addr".into(),
        format!("127.0.0.1:{CP_ADMIN_PORT}"),
        "--trust-domain".into(),
        objects::TRUST_DOMAIN.into(),
        "--state-dir".into(),
        state_dir.display().to_string(),
        "--token-file".into(),
        token_file.display().to_string(),
        "--source-dir".into(),
        source_dir.display().to_string(),
        "--log-format".into(),
        "text".into(),
        "--drain-deadline".into(),
        "1s".into(),
    ]
    .into();
    let cp_log = log_path("remora-cp");
    let _ = std::fs::remove_file(&cp_log);
    host::spawn_in(NODE_NETNS, &cp_argv, &[], &cp_log)?;
    let cp_admin = format!("http://127.0.0.1:{CP_ADMIN_PORT}");
    host::wait_ok(NODE_NETNS, &format!("{cp_admin}/ready"), READY_DEADLINE)
        .await
        .map_err(DemoError::Step)?;
    let root = std::fs::read_to_string(state_dir.join("root-cert.pem"))
        .map_err(|e| DemoError::Step(format!("remora-cp wrote no root: {e}")))?;
    write_readable(&host_paths.ca_roots, &root)?;
    println!(
        "remora-cp ready at {NODE_IP}:{CP_GRPC_PORT} in the node namespace (certificates and \
         discovery); its root is the proxies' REMORA_CA_ROOTS"
    );

    step("pods: network namespaces on a bridge, remora-init's capture rules in each");
    for s in &sidecars {
        let mut argv = vec!["env".to_owned()];
        argv.extend(s.init_env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.push(bin.join("remora-init").display().to_string());
        argv.extend(s.init_args.iter().cloned());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        host::run_in(&s.pod.netns(), &argv).await?;
        println!(
            "pod {}: {} (namespace {})",
            s.pod.name,
            s.pod.ip,
            s.pod.netns()
        );
    }
    let rules = host::run_in(&CLIENT.netns(), &["iptables-save", "-t", "nat"]).await?;
    for line in rules.lines().filter(|l| l.contains("REMORA")) {
        println!("  {line}");
    }

    step("remora-proxy in each pod, as the injected securityContext says");
    for s in &sidecars {
        let mut argv = vec![
            "setpriv".to_owned(),
            format!("--reuid={}", s.proxy_uid),
            format!("--regid={}", s.proxy_gid),
            "--clear-groups".to_owned(),
            "--".to_owned(),
            bin.join("remora-proxy").display().to_string(),
        ];
        argv.extend(s.proxy_args.iter().cloned());
        let log = log_path(s.pod.name);
        let _ = std::fs::remove_file(&log);
        host::spawn_in(&s.pod.netns(), &argv, &s.proxy_env, &log)?;
    }
    for s in &sidecars {
        host::wait_ok(
            &s.pod.netns(),
            &format!("{PROXY_ADMIN}/ready"),
            READY_DEADLINE,
        )
        .await
        .map_err(DemoError::Step)?;
        println!(
            "proxy in {}: ready (its certificate: {}; its mesh config: from remora-cp over discovery)",
            s.pod.name,
            s.pod.identity()
        );
    }
    let cp_metrics = metrics(NODE_NETNS, &format!("{cp_admin}/metrics")).await?;
    print_samples("remora-cp", &cp_metrics, |s| {
        s.name == "remora_cp_certificates_issued_total" || s.name == "remora_cp_discovery_streams"
    });

    step("the apps: an HTTP server on :8080 in each hello pod");
    let remora = bin.join("remora").display().to_string();
    for pod in SERVERS {
        let argv = [
            remora.clone(),
            "demo-app".into(),
            "--name".into(),
            pod.name.into(),
            "--listen".into(),
            format!("0.0.0.0:{}", objects::APP_PORT),
        ];
        host::spawn_in(
            &pod.netns(),
            &argv,
            &[],
            &log_path(&format!("{}-app", pod.name)),
        )?;
    }
    for s in sidecars.iter().filter(|s| s.app_probe.is_some()) {
        let probe = s.app_probe.as_deref().unwrap_or_default();
        host::wait_ok(
            &s.pod.netns(),
            &format!("{PROXY_ADMIN}{probe}"),
            READY_DEADLINE,
        )
        .await
        .map_err(DemoError::Step)?;
        println!(
            "app in {}: ready (the readiness probe the injector moved to :15020{probe})",
            s.pod.name
        );
    }

    capture_and_identity().await?;
    split().await?;
    rate_limit().await?;
    Ok(())
}

fn names(env: &[(String, String)]) -> String {
    env.iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Steps 1 and 2: one request to the cluster IP, counted by both sidecars,
/// and the identity the server saw.
async fn capture_and_identity() -> Result<(), DemoError> {
    let url = format!("http://{HELLO_IP}/");
    step(&format!(
        "1. capture: the client app calls the hello service's cluster IP: curl {url}"
    ));
    let (status, body) = host::curl(&CLIENT.netns(), &url, REQUEST_DEADLINE).await?;
    println!("reply: {status} {}", body.trim());
    if status != 200 {
        return Err(DemoError::Step(format!(
            "the first request got {status}: {body}"
        )));
    }
    let server = SERVERS
        .into_iter()
        .find(|p| body.starts_with(p.name))
        .ok_or_else(|| DemoError::Step(format!("no hello app answered: {body}")))?;
    println!(
        "client pod's iptables: {} connection(s) redirected to the sidecar's outbound port 15001",
        redirected(&CLIENT, "REMORA_REDIRECT").await?
    );
    println!(
        "client sidecar's discovery subscriptions: {}",
        subscriptions(&CLIENT).await?
    );
    let client_metrics = proxy_metrics(&CLIENT).await?;
    print_samples("client sidecar (outbound)", &client_metrics, |s| {
        s.name == "remora_requests_total"
    });
    println!(
        "{} pod's iptables: {} connection(s) redirected to the sidecar's inbound port 15006",
        server.name,
        redirected(&server, "REMORA_IN_REDIRECT").await?
    );
    let server_metrics = proxy_metrics(&server).await?;
    print_samples(
        &format!("{} sidecar (inbound)", server.name),
        &server_metrics,
        |s| s.name == "remora_requests_total",
    );

    step(&format!(
        "2. mTLS: the identity {}'s app saw, and how its sidecar took the connection",
        server.name
    ));
    let seen = body
        .trim()
        .split_once(": ")
        .map(|(_, id)| id)
        .unwrap_or("(none)");
    println!("{}'s app saw x-remora-client-id: {seen}", server.name);
    print_samples(&format!("{} sidecar", server.name), &server_metrics, |s| {
        s.name == "remora_inbound_connections_total"
            || (s.name == "remora_tls_handshakes_total" && s.value > 0.0)
    });
    Ok(())
}

/// Step 3: 100 requests, counted by version from the replies and from the
/// sidecars' metrics.
async fn split() -> Result<(), DemoError> {
    let (v1, v2) = SPLIT_WEIGHTS;
    let url = format!("http://{HELLO_IP}/");
    step(&format!(
        "3. traffic split: {SPLIT_REQUESTS} requests to {url} (HTTPRoute hello-split, weights {v1}/{v2})"
    ));
    let before = backend_counts(&proxy_metrics(&CLIENT).await?);
    let before_inbound = inbound_counts().await?;
    let mut replies: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..SPLIT_REQUESTS {
        let (status, body) = host::curl(&CLIENT.netns(), &url, REQUEST_DEADLINE).await?;
        let app = if status == 200 {
            body.split_whitespace().next().unwrap_or("?").to_owned()
        } else {
            format!("status {status}")
        };
        *replies.entry(app).or_default() += 1;
    }
    println!("replies by app: {}", counts_line(&replies));
    let after = backend_counts(&proxy_metrics(&CLIENT).await?);
    let delta: BTreeMap<String, u32> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    println!(
        "client sidecar, requests by backend: {}",
        counts_line(&delta)
    );
    let after_inbound = inbound_counts().await?;
    let inbound: BTreeMap<String, u32> = after_inbound
        .iter()
        .map(|(k, v)| (k.clone(), v - before_inbound.get(k).copied().unwrap_or(0)))
        .collect();
    println!(
        "server sidecars, inbound requests: {}",
        counts_line(&inbound)
    );
    Ok(())
}

/// Step 4: the limited route admits `count` requests per window.
async fn rate_limit() -> Result<(), DemoError> {
    let url = format!("http://{HELLO_IP}{LIMITED_PATH}");
    step(&format!(
        "4. rate limit: {LIMIT_REQUESTS} requests to {url} (PluginPolicy hello-limit: limit-count {LIMIT_COUNT} per {LIMIT_WINDOW_SECONDS} s, in the client's sidecar)"
    ));
    let mut statuses: BTreeMap<String, u32> = BTreeMap::new();
    for i in 1..=LIMIT_REQUESTS {
        let (status, body) = host::curl(&CLIENT.netns(), &url, REQUEST_DEADLINE).await?;
        println!("request {i}: {status} {}", body.trim());
        *statuses.entry(status.to_string()).or_default() += 1;
    }
    println!("by status: {}", counts_line(&statuses));
    print_samples("client sidecar", &proxy_metrics(&CLIENT).await?, |s| {
        s.name == "remora_requests_total" && s.labels.get("route").is_some_and(|r| r == "limited")
    });
    Ok(())
}

/// The subscriptions of `pod`'s proxy and the remora-cp serving them, from
/// its `/config_dump` (localhost only, so asked from inside the pod).
async fn subscriptions(pod: &DemoPod) -> Result<String, DemoError> {
    let url = format!("{PROXY_ADMIN}/config_dump");
    let (status, body) = host::curl(&pod.netns(), &url, REQUEST_DEADLINE).await?;
    let dump: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| DemoError::Step(format!("{url} in {}: {status}: {e}", pod.name)))?;
    let discovery = &dump["discovery"];
    let names: Vec<&str> = discovery["versions"]
        .as_object()
        .map(|v| v.keys().map(String::as_str).collect())
        .unwrap_or_default();
    Ok(format!(
        "{} (remora-cp {})",
        names.join(", "),
        discovery["controlPlane"].as_str().unwrap_or("(none)")
    ))
}

/// The connections `chain`'s REDIRECT rule took in `pod`: the nat table
/// counts a connection's first packet only.
async fn redirected(pod: &DemoPod, chain: &str) -> Result<String, DemoError> {
    let rules = host::run_in(&pod.netns(), &["iptables-save", "-t", "nat", "-c"]).await?;
    let rule = format!("-A {chain} ");
    Ok(rules
        .lines()
        .find(|l| l.contains(&rule) && l.contains("REDIRECT --to-ports"))
        .and_then(|l| l.strip_prefix('['))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "?".to_owned(), |(packets, _)| packets.to_owned()))
}

fn counts_line(counts: &BTreeMap<String, u32>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The client sidecar's outbound requests by backend.
fn backend_counts(samples: &[Sample]) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| {
        s.name == "remora_requests_total"
            && s.labels.get("direction").is_some_and(|d| d == "outbound")
    }) {
        let backend = s.labels.get("backend").cloned().unwrap_or_default();
        *out.entry(backend).or_default() += s.value as u32;
    }
    out
}

/// Each server sidecar's inbound requests, by pod.
async fn inbound_counts() -> Result<BTreeMap<String, u32>, DemoError> {
    let mut out = BTreeMap::new();
    for pod in SERVERS {
        let n: f64 = proxy_metrics(&pod)
            .await?
            .iter()
            .filter(|s| {
                s.name == "remora_requests_total"
                    && s.labels.get("direction").is_some_and(|d| d == "inbound")
            })
            .map(|s| s.value)
            .sum();
        out.insert(pod.name.to_owned(), n as u32);
    }
    Ok(out)
}

/// One Prometheus sample.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    line: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition (the label values Remora writes hold no
/// quotes or commas).
fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once("=\"")?;
                    Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                })
                .collect();
            Some(Sample {
                line: line.to_owned(),
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

async fn metrics(netns: &str, url: &str) -> Result<Vec<Sample>, DemoError> {
    let (status, body) = host::curl(netns, url, REQUEST_DEADLINE).await?;
    if status != 200 {
        return Err(DemoError::Step(format!("{url} in {netns}: {status}")));
    }
    Ok(parse_metrics(&body))
}

async fn proxy_metrics(pod: &DemoPod) -> Result<Vec<Sample>, DemoError> {
    metrics(&pod.netns(), &format!("{PROXY_ADMIN}/metrics")).await
}

/// Prints `-- WHO` and the matching metric lines under it.
fn print_samples(who: &str, samples: &[Sample], keep: impl Fn(&Sample) -> bool) {
    println!("-- {who}:");
    for s in samples.iter().filter(|s| keep(s)) {
        println!("{}", s.line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_parse_into_name_labels_and_value() {
        let text = "# HELP x y\nremora_requests_total{backend=\"demo/hello-v1:80\",client_id=\"spiffe://cluster.local/ns/demo/sa/client\",direction=\"inbound\"} 3\nremora_up 1\n";
        let samples = parse_metrics(text);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].name, "remora_requests_total");
        assert_eq!(samples[0].labels["backend"], "demo/hello-v1:80");
        assert_eq!(
            samples[0].labels["client_id"],
            "spiffe://cluster.local/ns/demo/sa/client"
        );
        assert_eq!(samples[0].labels["direction"], "inbound");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(
            (samples[1].name.as_str(), samples[1].value),
            ("remora_up", 1.0)
        );
        assert_eq!(
            backend_counts(&parse_metrics(
                "remora_requests_total{backend=\"a\",direction=\"outbound\"} 2\n\
                 remora_requests_total{backend=\"a\",direction=\"outbound\",status=\"500\"} 1\n\
                 remora_requests_total{backend=\"b\",direction=\"inbound\"} 7\n"
            )),
            BTreeMap::from([("a".to_owned(), 3)])
        );
    }
}
