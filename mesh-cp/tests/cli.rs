//! The `remora` CLI: golden tests of `inject`, `uninject` and `check`.
//!
//! Pods are the injector's own fixtures (injector/tests/fixtures), and the
//! CLI's output must be exactly the injector's golden Pod; workloads of every
//! kind are in tests/cli/workloads.yaml with the exact output kept in
//! tests/cli/golden/. `UPDATE_GOLDEN=1 cargo test -p remora-cp --test cli`
//! rewrites the golden files. The real binary is run for exit codes and
//! messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use remora_cp::cli::{self, manifest};
use remora_injector::Settings;
use serde_json::Value;

fn here(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(sub)
}

fn injector_fixture(name: &str) -> PathBuf {
    here("../injector/tests/fixtures").join(format!("{name}.yaml"))
}

fn remora(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(args)
        .current_dir(here("tests/cli"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("remora runs");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("stdin written");
    drop(input);
    child.wait_with_output().expect("remora exits")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// Runs inject or uninject in-process: (stdout, stderr).
fn run(input: &str, settings: Option<&Settings>) -> (String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    cli::run_manifest(input, settings, &mut out, &mut err).expect("manifest is fine");
    (text(&out), text(&err))
}

/// Every document of a YAML stream, as values.
fn documents(yaml: &str) -> Vec<Value> {
    manifest::split(yaml)
        .iter()
        .map(|d| d.parse().expect("document parses"))
        .collect()
}

/// Compares with the golden file, or rewrites it under UPDATE_GOLDEN.
fn golden(file: &str, actual: &str) {
    let path = here("tests/cli/golden").join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("golden dir");
        std::fs::write(&path, actual).expect("golden written");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_GOLDEN=1", path.display()));
    assert!(
        actual == expected,
        "{file} differs; if the change is right, run with UPDATE_GOLDEN=1\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

#[test]
fn inject_gives_the_injectors_golden_pod_and_uninject_the_original() {
    for name in ["plain-pod", "deployment-probes", "job", "every-annotation"] {
        let original = std::fs::read_to_string(injector_fixture(name)).expect("fixture");
        let (out, err) = run(&original, Some(&Settings::default()));
        let injected = documents(&out);
        assert_eq!(injected.len(), 1, "{name}");
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(here(&format!("../injector/tests/golden/{name}.pod.json")))
                .expect("injector golden"),
        )
        .expect("JSON");
        assert!(
            injected[0] == expected,
            "{name}: the webhook's pod, exactly"
        );
        assert!(err.contains(": injected\n"), "{name}: {err}");

        let (back, err) = run(&out, None);
        assert_eq!(documents(&back), documents(&original), "{name}: roundtrip");
        assert!(err.ends_with(": uninjected\n"), "{name}: {err}");
    }
}

#[test]
fn host_network_pods_and_opted_out_pods_pass_through() {
    let original = std::fs::read_to_string(injector_fixture("host-network")).expect("fixture");
    let (out, err) = run(&original, Some(&Settings::default()));
    assert_eq!(documents(&out), documents(&original));
    assert_eq!(
        err,
        "document 1 (Pod monitoring/node-exporter-7xk2p): skipped: the pod uses hostNetwork; its \
         traffic is the node's and is never captured\n"
    );
}

#[test]
fn every_workload_kind_in_one_multi_document_stream() {
    let original = std::fs::read_to_string(here("tests/cli/workloads.yaml")).expect("fixture");
    let (out, err) = run(&original, Some(&Settings::default()));
    golden("workloads.injected.yaml", &out);
    assert_eq!(
        err,
        "document 2 (Deployment shop/checkout): injected\n\
         document 3 (StatefulSet shop/ledger): injected\n\
         document 4 (DaemonSet shop/agent): injected\n\
         document 5 (ReplicaSet shop/cart): injected\n\
         document 6 (Job shop/migrate): injected\n\
         document 7 (CronJob shop/report): injected\n\
         document 8 (Deployment shop/legacy): skipped: the pod is annotated remora.dev/inject: disabled\n"
    );
    let before = documents(&original);
    let after = documents(&out);
    assert_eq!(after.len(), 9);
    // Other kinds and the opted-out Deployment are untouched.
    for i in [0, 7, 8] {
        assert_eq!(after[i], before[i], "document {}", i + 1);
    }
    // The CronJob's pod is two templates down, and it is the injector's pod.
    let pod = &after[6]["spec"]["jobTemplate"]["spec"]["template"];
    let names: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["remora-init", "remora-proxy"]);
    // The Deployment's probe points at the proxy, with the original kept.
    assert_eq!(
        after[1]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"],
        serde_json::json!({"path": "/app-health/checkout/readyz", "port": 15020, "scheme": "HTTP"})
    );
    // The DaemonSet's annotation reached its proxy.
    let proxy = &after[3]["spec"]["template"]["spec"]["initContainers"][1];
    let log = proxy["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "RUST_LOG")
        .expect("RUST_LOG");
    assert_eq!(log["value"], "debug");

    let (back, err) = run(&out, None);
    assert_eq!(documents(&back), before, "uninject(inject(x)) == x");
    assert_eq!(err.matches(": uninjected\n").count(), 6, "{err}");
    assert_eq!(err.matches(": skipped: not injected\n").count(), 1, "{err}");
}

#[test]
fn inject_twice_changes_nothing_and_flags_reach_the_pod() {
    let original = std::fs::read_to_string(here("tests/cli/workloads.yaml")).expect("fixture");
    let out = remora(
        &[
            "inject",
            "-f",
            "-",
            "--proxy-image",
            "registry.example/remora/proxy:dev",
            "--native-sidecar=false",
        ],
        Some(&original),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let injected = text(&out.stdout);
    let job = &documents(&injected)[5]["spec"]["template"]["spec"];
    assert_eq!(job["containers"][0]["name"], "remora-proxy");
    assert_eq!(
        job["containers"][0]["image"],
        "registry.example/remora/proxy:dev"
    );
    let again = remora(&["inject", "-f", "-"], Some(&injected));
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(documents(&text(&again.stdout)), documents(&injected));
    assert_eq!(
        text(&again.stderr)
            .matches("skipped: the pod is injected already")
            .count(),
        6
    );
}

#[test]
fn malformed_input_names_the_document_and_exits_1() {
    let cases: &[(&str, &str)] = &[
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: Pod\nspec: [unclosed\n",
            "remora: document 2 (from line 4): not valid YAML: ",
        ),
        (
            "---\n- just\n- a list\n",
            "remora: document 1 (from line 1): not a Kubernetes object (a YAML mapping with apiVersion and kind)\n",
        ),
        (
            "apiVersion: v1\nkind: List\nitems: []\n",
            "remora: document 1: a List is not supported; give its items as separate documents\n",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec: {replicas: 1}\n",
            "remora: document 1 (Deployment shop/web): has no pod template at /spec/template\n",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations: {remora.dev/proxy-log-level: loud}\nspec:\n  containers: [{name: web, image: nginx}]\n",
            "remora: document 1 (Pod web): cannot be injected: annotation remora.dev/proxy-log-level: `loud`: ",
        ),
    ];
    for (input, message) in cases {
        let out = remora(&["inject", "-f", "-"], Some(input));
        assert_eq!(out.status.code(), Some(1), "{input}");
        assert!(
            text(&out.stderr).starts_with(message),
            "{input}\nexpected: {message}\ngot: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "", "nothing is half-written");
    }
    let out = remora(&["uninject", "-f", "missing.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "remora: missing.yaml: No such file or directory (os error 2)\n"
    );
    // A status annotation that is not the injector's is refused, not guessed.
    let forged = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations: {remora.dev/status: '{\"version\": 9}'}\nspec:\n  containers: [{name: web, image: nginx}]\n";
    let out = remora(&["uninject", "-f", "-"], Some(forged));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("remora: document 1 (Pod web): cannot be uninjected: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_good_files_exit_0() {
    let out = remora(&["check", "check/good"], None);
    golden("check-good.out", &text(&out.stdout));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn check_bad_files_name_file_and_field_and_exit_1() {
    let out = remora(
        &["check", "check/bad", "check/good/mesh.yaml", "check/none"],
        None,
    );
    golden("check-bad.out", &text(&out.stdout));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).ends_with("; 12 errors\n"));
}

#[test]
fn demo_without_its_binaries_says_which_and_exits_1_touching_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("remora-cp"), "").unwrap();
    let out = remora(&["demo", "--bin-dir", dir.path().to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        format!(
            "remora demo: {}/remora-proxy is missing; build it (cargo build --bins) or pass --bin-dir\n",
            dir.path().display()
        )
    );
    // A usage error is clap's: exit 2.
    assert_eq!(
        remora(&["demo", "--no-such-flag"], None).status.code(),
        Some(2)
    );
}
