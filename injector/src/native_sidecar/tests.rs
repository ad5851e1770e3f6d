//! The version table, the flag, and the decision against a mock API server
//! (a `tower_test` pair behind a real `kube::Client`) replaying the
//! `/version` bodies real kube-apiservers write. Paused time makes every
//! timeout and retry land at an exact instant.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::time::Instant;

use super::*;
use crate::kube_mock::{self, internal_error, next, respond, ApiHandle};

/// `GET /version` of a kind cluster's kube-apiserver v1.31.4.
fn v1_31() -> Value {
    json!({
        "major": "1",
        "minor": "31",
        "gitVersion": "v1.31.4",
        "gitCommit": "a78aa47129b8539636eb86a9d00e31b2720fe06b",
        "gitTreeState": "clean",
        "buildDate": "2024-12-10T18:44:24Z",
        "goVersion": "go1.22.9",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

fn info(body: Value) -> Info {
    serde_json::from_value(body).unwrap()
}

fn version(major: u32, minor: u32) -> Version {
    Version { major, minor }
}

#[test]
fn versions_parse_as_clusters_report_them() {
    let with = |major: &str, minor: &str, git: &str| {
        parse_version(&info(
            json!({"major": major, "minor": minor, "gitVersion": git}),
        ))
    };
    let cases = [
        (with("1", "28", "v1.28.15"), Ok(version(1, 28)), false),
        (with("1", "29", "v1.29.0"), Ok(version(1, 29)), true),
        // EKS and GKE mark a patched minor with "+".
        (
            with("1", "29+", "v1.29.10-eks-7f9249a"),
            Ok(version(1, 29)),
            true,
        ),
        (with("1", "33", "v1.33.1"), Ok(version(1, 33)), true),
        // No major/minor: the gitVersion.
        (with("", "", "v1.30.1-gke.100"), Ok(version(1, 30)), true),
        (with("2", "0", "v2.0.0"), Ok(version(2, 0)), true),
        (with(" 1 ", "27", ""), Ok(version(1, 27)), false),
    ];
    for (parsed, expected, native) in cases {
        assert_eq!(parsed, expected);
        assert_eq!(
            parsed.unwrap().supports_native_sidecars(),
            native,
            "{expected:?}"
        );
    }
    let garbage = [
        with("", "", ""),
        with("one", "twenty-nine", "latest"),
        with("1", "", "v1"),
        with("99999999999", "1", "vX.29"),
        with("", "", "v.29.1"),
    ];
    assert_eq!(
        garbage[1],
        Err(
            "the API server's version is unreadable (major \"one\", minor \"twenty-nine\", \
             gitVersion \"latest\")"
                .to_owned()
        )
    );
    for parsed in garbage {
        assert!(parsed.is_err(), "{parsed:?}");
    }
}

#[test]
fn an_emulated_version_decides() {
    // A 1.33 binary emulating 1.28 has 1.28's feature defaults.
    let emulating = info(json!({
        "major": "1", "minor": "33", "emulationMajor": "1", "emulationMinor": "28",
        "minCompatibilityMajor": "1", "minCompatibilityMinor": "28", "gitVersion": "v1.33.1"
    }));
    assert_eq!(parse_version(&emulating), Ok(version(1, 28)));
    let unreadable = info(json!({
        "major": "1", "minor": "33", "emulationMajor": "x", "emulationMinor": "", "gitVersion": "v1.33.1"
    }));
    assert_eq!(parse_version(&unreadable), Ok(version(1, 33)));
}

#[test]
fn the_flag_parses() {
    assert_eq!("auto".parse(), Ok(Mode::Auto));
    assert_eq!("true".parse(), Ok(Mode::Fixed(true)));
    assert_eq!("false".parse(), Ok(Mode::Fixed(false)));
    assert_eq!(
        "yes".parse::<Mode>(),
        Err("\"yes\": use auto (ask the API server), true or false".to_owned())
    );
}

/// Decides `auto` against the mock, answering each request with `answer`.
async fn decide_with(answers: Vec<Option<(u16, Value)>>) -> (Decision, Vec<Duration>) {
    let (client, mut handle) = kube_mock::client();
    let start = Instant::now();
    let server = tokio::spawn(async move {
        let mut at = Vec::new();
        for answer in answers {
            let (req, send) = next(&mut handle).await;
            assert_eq!(
                (req.method.as_str(), req.path.as_str()),
                ("GET", "/version")
            );
            at.push(start.elapsed());
            match answer {
                Some((code, body)) => respond(send, code, body),
                // Unanswered: held until the client gives up.
                None => std::mem::forget(send),
            }
        }
        (handle, at)
    });
    let decision = decide(Mode::Auto, Ok(&client)).await;
    let (handle, at): (ApiHandle, _) = server.await.unwrap();
    drop(handle);
    (decision, at)
}

#[tokio::test(start_paused = true)]
async fn auto_on_1_31_is_native() {
    let (decision, at) = decide_with(vec![Some((200, v1_31()))]).await;
    assert_eq!(decision, Decision::Detected(version(1, 31)));
    assert!(decision.native());
    assert_eq!(at, [Duration::ZERO]);
}

#[tokio::test(start_paused = true)]
async fn auto_on_1_27_is_a_regular_container() {
    let mut body = v1_31();
    body["minor"] = json!("27");
    body["gitVersion"] = json!("v1.27.16");
    let (decision, _) = decide_with(vec![Some((200, body))]).await;
    assert_eq!(decision, Decision::Detected(version(1, 27)));
    assert!(!decision.native());
}

#[tokio::test(start_paused = true)]
async fn a_failing_server_is_retried_then_falls_back() {
    let (decision, at) = decide_with(vec![
        Some((500, internal_error())),
        Some((500, internal_error())),
        Some((500, internal_error())),
    ])
    .await;
    assert_eq!(
        at,
        [
            Duration::ZERO,
            Duration::from_millis(500),
            Duration::from_millis(1500)
        ]
    );
    let Decision::Fallback(why) = &decision else {
        panic!("{decision:?}")
    };
    assert_eq!(
        why,
        "GET /version answered 500 InternalError: etcdserver: request timed out (3 attempts)"
    );
    assert!(!decision.native());
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_times_out_then_falls_back() {
    let (decision, at) = decide_with(vec![None, None, Some((200, v1_31()))]).await;
    // 5 s, 0.5 s, 5 s, 1 s: the third answers.
    assert_eq!(
        at,
        [
            Duration::ZERO,
            Duration::from_millis(5500),
            Duration::from_millis(11500)
        ]
    );
    assert_eq!(decision, Decision::Detected(version(1, 31)));

    let (decision, _) = decide_with(vec![None, None, None]).await;
    assert_eq!(
        decision,
        Decision::Fallback("GET /version got no answer within 5s (3 attempts)".to_owned())
    );
}

#[tokio::test]
async fn a_garbage_version_falls_back_at_once() {
    let (decision, at) = decide_with(vec![Some((
        200,
        json!({"major": "", "minor": "", "gitVersion": "latest"}),
    ))])
    .await;
    assert_eq!(at.len(), 1);
    assert_eq!(
        decision,
        Decision::Fallback(
            "the API server's version is unreadable (major \"\", minor \"\", gitVersion \"latest\")"
                .to_owned()
        )
    );
}

#[tokio::test]
async fn fixed_modes_and_no_api() {
    assert_eq!(
        decide(Mode::Fixed(true), Err("unused")).await,
        Decision::Configured(true)
    );
    assert_eq!(
        decide(Mode::Fixed(false), Err("unused")).await,
        Decision::Configured(false)
    );
    let decision = decide(Mode::Auto, Err("no service-account token")).await;
    assert_eq!(
        decision,
        Decision::Fallback("no Kubernetes API (no service-account token)".to_owned())
    );
    assert!(!decision.native());
}

/// What `log` writes, as the injector's log format prints it.
fn logged(decision: &Decision) -> String {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let out = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .without_time()
        .with_ansi(false)
        .with_target(false)
        .with_writer(move || out.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || decision.log());
    let bytes = buffer.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn the_decision_is_logged_and_a_fallback_warns() {
    assert_eq!(
        logged(&Decision::Fallback(
            "GET /version got no answer within 5s (3 attempts)".into()
        )),
        " WARN --native-sidecar=auto: GET /version got no answer within 5s (3 attempts); \
         injecting the proxy as a regular container, which works on every version (set \
         --native-sidecar=true on Kubernetes 1.29 or later) native_sidecar=false\n"
    );
    assert_eq!(
        logged(&Decision::Detected(version(1, 31))),
        " INFO proxy injection mode detected from the API server's version (native sidecars \
         from 1.29) native_sidecar=true kubernetes=1.31\n"
    );
    assert_eq!(
        logged(&Decision::Configured(false)),
        " INFO proxy injection mode set by --native-sidecar native_sidecar=false\n"
    );
}

#[test]
fn the_gauge_says_what_was_decided() {
    for (decision, value) in [
        (Decision::Detected(version(1, 29)), "1"),
        (Decision::Detected(version(1, 28)), "0"),
        (Decision::Fallback("x".into()), "0"),
        (Decision::Configured(true), "1"),
    ] {
        let registry = prometheus::Registry::new();
        register_gauge(&registry, &decision).unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert_eq!(
            text,
            format!(
                "# HELP remora_injector_native_sidecar 1 when the proxy is injected as a native \
                 sidecar, 0 as a regular container\n# TYPE remora_injector_native_sidecar gauge\n\
                 remora_injector_native_sidecar {value}\n"
            )
        );
    }
}
