//! AdmissionReview v1 in, AdmissionReview v1 (or a plain HTTP error) out: the
//! thin layer between the HTTP server and the pure `inject` function.
//!
//! Every review that names a `request.uid` gets an AdmissionResponse, also
//! when it is malformed, so the API server shows the user why; only a body
//! with no uid to answer to gets a 400. Nothing here answers 500.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::inject::{self, Decision};
use crate::settings::Settings;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// The answer to one review.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// An AdmissionReview to send with 200.
    Review(Value),
    /// No uid to answer to: a 400 with this text.
    BadRequest(String),
}

/// What the injector reads of `request` (the rest is ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    kind: GroupVersionKind,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    operation: String,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    version: String,
    kind: String,
}

/// Answers one review body. `namespace_labels` are what the webhook
/// configuration's namespaceSelector guarantees for the path it was sent to.
pub fn review(
    body: &[u8],
    namespace_labels: &BTreeMap<String, String>,
    settings: &Settings,
) -> Reply {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Reply::BadRequest(format!(
                "the body is not JSON ({e}); send an AdmissionReview {API_VERSION}"
            ))
        }
    };
    let Some(uid) = value.pointer("/request/uid").and_then(Value::as_str) else {
        return Reply::BadRequest(format!(
            "the body has no request.uid to answer to; send an AdmissionReview {API_VERSION}"
        ));
    };
    let uid = uid.to_owned();
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    let kind = value.get("kind").and_then(Value::as_str);
    if api_version != Some(API_VERSION) || kind != Some(KIND) {
        return deny(
            &uid,
            &format!(
                "the injector speaks {KIND} {API_VERSION}, and this is {} {}; set \
                 admissionReviewVersions: [v1] in the webhook configuration",
                kind.unwrap_or("(no kind)"),
                api_version.unwrap_or("(no apiVersion)")
            ),
        );
    }
    let request: Request = match value
        .get("request")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
    {
        Ok(Some(r)) => r,
        Ok(None) => return deny(&uid, "the review has no request"),
        Err(e) => return deny(&uid, &format!("the review's request cannot be read: {e}")),
    };
    let gvk = &request.kind;
    if !(gvk.group.is_empty() && gvk.version == "v1" && gvk.kind == "Pod") {
        return deny(
            &uid,
            &format!(
                "the injector handles v1 Pods only, and this is {}{}{} {}; limit the webhook's \
                 rules to pods",
                gvk.group,
                if gvk.group.is_empty() { "" } else { "/" },
                gvk.version,
                gvk.kind
            ),
        );
    }
    if request
        .sub_resource
        .as_deref()
        .is_some_and(|s| !s.is_empty())
        || request.operation != "CREATE"
    {
        // A pod's containers cannot change after creation; updates and
        // subresources pass untouched.
        return allow(&uid, None, &[]);
    }
    let Some(pod) = request.object else {
        return deny(&uid, "the CREATE review has no request.object");
    };
    let name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let namespace = request.namespace.as_deref().unwrap_or("");
    match inject::inject(&pod, namespace_labels, settings) {
        Ok(Decision::Skip(skip)) => {
            tracing::info!(uid, namespace, pod = name, reason = %skip, "skipped");
            allow(&uid, None, &[])
        }
        Ok(Decision::Inject(injection)) => {
            tracing::info!(
                uid,
                namespace,
                pod = name,
                ops = injection.patch.0.len(),
                "injected"
            );
            let patch = serde_json::to_vec(&injection.patch).unwrap_or_default();
            allow(&uid, Some(&patch), &injection.warnings)
        }
        Err(e) => {
            tracing::info!(uid, namespace, pod = name, error = %e, "denied");
            deny(&uid, &e.to_string())
        }
    }
}

fn allow(uid: &str, patch: Option<&[u8]>, warnings: &[String]) -> Reply {
    let mut response = json!({ "uid": uid, "allowed": true });
    if let Some(patch) = patch {
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    Reply::Review(envelope(response))
}

fn deny(uid: &str, message: &str) -> Reply {
    Reply::Review(envelope(json!({
        "uid": uid,
        "allowed": false,
        "status": { "code": 400, "reason": "BadRequest", "message": message },
    })))
}

fn envelope(response: Value) -> Value {
    json!({ "apiVersion": API_VERSION, "kind": KIND, "response": response })
}
