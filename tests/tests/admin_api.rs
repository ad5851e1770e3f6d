//! The Admin API end to end: the real remora-cp in file mode with
//! `--admin-token-file`, a meshed client whose sidecar gets its config over
//! discovery, and `curl` as the API's client inside remora-cp's pod. No
//! token is 401; an invalid object is 400 with the field; a PUT of an
//! HTTPRoute changes the proxy's traffic; after a restart of remora-cp the
//! object is still served, and deleting it changes the traffic back.

use std::path::PathBuf;

use remora_e2e::file_mesh::*;
use remora_e2e::http_apps::{eventually, send_many, HttpClient, Req};
use remora_e2e::{write_readable, Pod};
use serde_json::Value;

const TOKEN: &str = "e2e-admin-token-0123456789";
const API: &str = "http://127.0.0.1:15013";

/// The token file, outside the source directory.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(test: &str) -> TokenFile {
        let path =
            std::env::temp_dir().join(format!("remora-e2e-{test}-{}.token", std::process::id()));
        write_readable(&path, &format!("{TOKEN}\n"));
        TokenFile(path)
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One request with curl inside `pod`: the status and the JSON body.
fn curl(
    pod: &Pod,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let url = format!("{API}{path}");
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec![
        "-sS",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        "--max-time",
        "10",
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a]);
    }
    if let Some(b) = body {
        args.extend(["-H", "content-type: application/yaml", "--data-binary", b]);
    }
    args.push(&url);
    let out = pod.exec("curl", &args);
    let (text, code) = out.rsplit_once('\n').expect("curl printed the status");
    let body = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
    (code.parse().expect("a status code"), body)
}

#[tokio::test]
async fn puts_take_effect_are_checked_behind_the_token_and_survive_a_restart() {
    let m = Mesh::new("adm_api").await;
    let token = TokenFile::new("adm_api");
    let token_path = token.0.display().to_string();
    let mut cp = m
        .start_cp_with(&m.cp_pod, &["--admin-token-file", &token_path])
        .await;
    let proxy = m.mesh_client(&cp.ca_addr(), &cp.roots_path()).await;
    let got = tally(send_many(&m.client, web(), 10, 1, |_| Req::get("/")).await);
    assert_eq!(got, counts(&[("a", 5), ("b", 5)]));
    let route_path = "/admin/v1/httproutes/default/canary";

    // No token, or a wrong one: 401, nothing written.
    let (status, body) = curl(&m.cp_pod, "PUT", route_path, None, Some(CANARY_ROUTE));
    assert_eq!(
        (status, body["error_msg"].as_str()),
        (
            401,
            Some("missing or wrong admin token: send Authorization: Bearer <token>")
        )
    );
    let (status, _) = curl(
        &m.cp_pod,
        "GET",
        "/admin/v1/httproutes",
        Some("e2e-admin-token-wrong"),
        None,
    );
    assert_eq!(status, 401);

    // Invalid objects: 400 with the field, nothing written.
    let glob = CANARY_ROUTE.replace(
        "matches: [{headers: [{name: x-canary, value: \"1\"}]}]",
        "matches: [{path: {type: Glob, value: /x}}]",
    );
    let (status, body) = curl(&m.cp_pod, "PUT", route_path, Some(TOKEN), Some(&glob));
    assert_eq!(status, 400, "{body}");
    let reason = body["error_msg"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(
            "HTTPRoute canary: spec.rules[0].matches[0].path.type: unknown variant `Glob`"
        ),
        "{reason}"
    );
    let limits = "spec:\n  targetRefs: [{kind: Service, name: web}]\n  plugins: {limit-count: {count: 0, time_window: 60}}\n";
    let (status, body) = curl(
        &m.cp_pod,
        "PUT",
        "/admin/v1/pluginpolicies/default/limits",
        Some(TOKEN),
        Some(limits),
    );
    assert_eq!(
        (status, body["error_msg"].as_str()),
        (
            400,
            Some("PluginPolicy default/limits: Accepted=False Invalid: spec.plugins.limit-count.count: plugin limit-count: 0 is out of range: 1 to 1000000000")
        )
    );
    let files = |dir: &SourceDir| {
        let mut names: Vec<String> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(files(&m.dir), ["services.yaml"]);

    // The route, put as YAML: flagged requests go to web-v2.
    let before = version(&proxy, WEB_SUB).await;
    let (status, body) = curl(
        &m.cp_pod,
        "PUT",
        route_path,
        Some(TOKEN),
        Some(CANARY_ROUTE),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["problems"], serde_json::json!([]));
    assert_eq!(
        files(&m.dir),
        ["services.yaml", "~admin.httproutes.default.canary.yaml"]
    );
    pushed_after(&proxy, WEB_SUB, before).await;
    let flagged = |i: usize| {
        let req = Req::get("/");
        if i.is_multiple_of(2) {
            req.header("x-canary", "1")
        } else {
            req
        }
    };
    let got = tally(send_many(&m.client, web(), 20, 1, flagged).await);
    assert_eq!(got, counts(&[("a", 5), ("b", 5), ("v2", 10)]));

    let metrics = cp_metrics(&m.cp_pod).await;
    let requests = |method: &str, code: &str| {
        metrics.get(
            "remora_cp_admin_api_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(
        [
            requests("PUT", "401"),
            requests("GET", "401"),
            requests("PUT", "400"),
            requests("PUT", "201")
        ],
        [1.0, 1.0, 2.0, 1.0]
    );

    // After a restart the object is still there, and served.
    cp.stop();
    proxy
        .wait_metrics("the stream seen gone", |m| {
            m.get("remora_discovery_connected", &[]) == 0.0
        })
        .await;
    cp.start().await;
    let (status, body) = curl(&m.cp_pod, "GET", route_path, Some(TOKEN), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["value"]["spec"]["rules"][0]["backendRefs"][0]["name"],
        "web-v2"
    );
    let (_, list) = curl(
        &m.cp_pod,
        "GET",
        "/admin/v1/httproutes/default",
        Some(TOKEN),
        None,
    );
    assert_eq!(list["total"], 1);
    proxy
        .wait_metrics("the proxy back on remora-cp", |m| {
            m.get("remora_discovery_connected", &[]) == 1.0
        })
        .await;
    let got = tally(send_many(&m.client, web(), 20, 1, flagged).await);
    assert_eq!(got, counts(&[("a", 5), ("b", 5), ("v2", 10)]));

    // Deleting it (the restarted remora-cp knows it) takes it away. The
    // restarted remora-cp numbers its versions afresh: wait on the traffic.
    let (status, body) = curl(&m.cp_pod, "DELETE", route_path, Some(TOKEN), None);
    assert_eq!(
        (status, &body["deleted"]),
        (200, &serde_json::json!("httproutes/default/canary"))
    );
    eventually(PROPAGATION, "the route gone from the proxy", || async {
        let reply = HttpClient::new(&m.client, web())
            .send(&Req::get("/").header("x-canary", "1"))
            .await
            .map_err(|e| e.to_string())?;
        if reply.body != "v2" {
            Ok(())
        } else {
            Err(reply.body)
        }
    })
    .await;
    let got = tally(send_many(&m.client, web(), 20, 1, flagged).await);
    assert_eq!(got, counts(&[("a", 10), ("b", 10)]));
    let got = tally(send_many(&m.client, web(), 20, 1, flagged).await);
    assert_eq!(got, counts(&[("a", 10), ("b", 10)]));
    let (status, _) = curl(&m.cp_pod, "DELETE", route_path, Some(TOKEN), None);
    assert_eq!(status, 404);
    assert_eq!(files(&m.dir), ["services.yaml"]);
}
