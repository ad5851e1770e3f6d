//! Hostile and broken pods: every bad annotation is refused with a reason
//! that names it, reserved names and impossible resources are refused, and
//! opting in or out works whichever side says it.

use std::collections::BTreeMap;

use remora_injector::{inject, Decision, InjectError, Settings, Skip};
use serde_json::{json, Value};

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "n", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    })
}

fn labels(value: Option<&str>) -> BTreeMap<String, String> {
    value
        .map(|v| BTreeMap::from([("remora.dev/inject".to_owned(), v.to_owned())]))
        .unwrap_or_default()
}

fn denial(pod: &Value) -> String {
    match inject(pod, &labels(Some("enabled")), &Settings::default()) {
        Err(e) => e.to_string(),
        Ok(d) => panic!("expected a denial, got {d:?}"),
    }
}

#[test]
fn bad_annotations_are_denied_by_name() {
    let cases = [
        ("remora.dev/exclude-inbound-ports", "8080,70000",
         "annotation remora.dev/exclude-inbound-ports: `8080,70000`: port 70000 is out of range; use 1-65535"),
        ("remora.dev/exclude-outbound-ports", "-1",
         "annotation remora.dev/exclude-outbound-ports: `-1`: `-1` is not a port number; use 1-65535"),
        ("remora.dev/exclude-outbound-cidrs", "10.0.0.0/8,not-a-cidr",
         "annotation remora.dev/exclude-outbound-cidrs: `10.0.0.0/8,not-a-cidr`: `not-a-cidr` is not a CIDR or an IP address (invalid IP address syntax); use e.g. 10.0.0.0/8 or fd00::/8"),
        ("remora.dev/opaque-ports", "3306;5432",
         "annotation remora.dev/opaque-ports: `3306;5432`: `3306;5432` is not a port number; use 1-65535"),
        ("remora.dev/proxy-cpu", "-100m",
         "annotation remora.dev/proxy-cpu: `-100m`: a resource quantity cannot be negative"),
        ("remora.dev/proxy-memory-limit", "1e999",
         "annotation remora.dev/proxy-memory-limit: `1e999`: not a Kubernetes quantity; use e.g. 128Mi, 1Gi, 100m or 2"),
        ("remora.dev/proxy-log-level", "verbose",
         "annotation remora.dev/proxy-log-level: `verbose`: use one of trace, debug, info, warn, error"),
        ("remora.dev/proxy-drain-deadline", "forever",
         "annotation remora.dev/proxy-drain-deadline: `forever`: use a duration from 0s to 1h, e.g. 45s or 2m"),
        ("remora.dev/rewrite-probes", "no",
         "annotation remora.dev/rewrite-probes: `no`: use `enabled` or `disabled`"),
    ];
    for (annotation, value, message) in cases {
        assert_eq!(
            denial(&pod(json!({ annotation: value }))),
            message,
            "{annotation}"
        );
    }
}

#[test]
fn a_bad_inject_annotation_is_denied_even_where_injection_is_off() {
    let err = inject(
        &pod(json!({"remora.dev/inject": "true"})),
        &labels(None),
        &Settings::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "annotation remora.dev/inject: `true`: use `enabled` or `disabled`"
    );
}

#[test]
fn other_annotations_of_pods_not_injected_are_not_judged() {
    let bad = pod(json!({"remora.dev/exclude-inbound-ports": "70000"}));
    assert_eq!(
        inject(&bad, &labels(None), &Settings::default()),
        Ok(Decision::Skip(Skip::NotEnabled))
    );
}

#[test]
fn opt_in_and_out() {
    let s = Settings::default();
    let injects = |pod: &Value, ns: Option<&str>| {
        matches!(inject(pod, &labels(ns), &s), Ok(Decision::Inject(_)))
    };
    let plain = pod(json!({}));
    let on = pod(json!({"remora.dev/inject": "enabled"}));
    let off = pod(json!({"remora.dev/inject": "disabled"}));
    assert!(injects(&plain, Some("enabled")));
    assert!(!injects(&plain, None));
    assert!(!injects(&plain, Some("disabled")));
    assert!(!injects(&plain, Some("Enabled")), "label values are exact");
    assert!(injects(&on, None), "the pod annotation overrides");
    assert!(
        injects(&on, Some("disabled")),
        "the pod annotation overrides"
    );
    assert_eq!(
        inject(&off, &labels(Some("enabled")), &s),
        Ok(Decision::Skip(Skip::Disabled))
    );
}

#[test]
fn reserved_names_are_denied() {
    let mut p = pod(json!({}));
    p["spec"]["containers"][0]["name"] = json!("remora-proxy");
    assert_eq!(
        denial(&p),
        "the container name `remora-proxy` is reserved for the mesh; rename the container, or \
         annotate the pod remora.dev/inject: disabled"
    );
    let mut p = pod(json!({}));
    p["spec"]["volumes"] = json!([{"name": "remora-identity", "emptyDir": {}}]);
    assert_eq!(
        denial(&p),
        "the volume name `remora-identity` is reserved for the mesh; rename the volume, or \
         annotate the pod remora.dev/inject: disabled"
    );
}

#[test]
fn a_request_above_its_limit_is_denied() {
    // The default memory limit is 256Mi.
    assert_eq!(
        denial(&pod(json!({"remora.dev/proxy-memory": "1Gi"}))),
        "annotation remora.dev/proxy-memory: the proxy's memory request 1Gi is above its limit \
         256Mi; raise the limit (remora.dev/proxy-memory-limit) or lower the request \
         (remora.dev/proxy-memory)"
    );
    assert_eq!(
        denial(&pod(json!({"remora.dev/proxy-cpu-limit": "50m"}))),
        "annotation remora.dev/proxy-cpu-limit: the proxy's CPU request 100m is above its limit \
         50m; raise the limit (remora.dev/proxy-cpu-limit) or lower the request \
         (remora.dev/proxy-cpu)"
    );
}

#[test]
fn a_probe_on_a_port_name_the_container_lacks_is_denied() {
    let mut p = pod(json!({}));
    p["spec"]["containers"][0]["livenessProbe"] = json!({"httpGet": {"path": "/", "port": "web"}});
    assert_eq!(
        denial(&p),
        "container app: livenessProbe uses port `web`, which is not the name of one of the \
         container's ports; name the port in `ports` or use its number"
    );
    // With rewriting off, the probe is the pod's own business.
    p["metadata"]["annotations"]["remora.dev/rewrite-probes"] = json!("disabled");
    assert!(matches!(
        inject(&p, &labels(Some("enabled")), &Settings::default()),
        Ok(Decision::Inject(_))
    ));
}

#[test]
fn a_probe_timeout_the_proxy_would_refuse_is_denied() {
    for (value, shown) in [(json!(3601), "3601"), (json!(0), "0")] {
        let mut p = pod(json!({}));
        p["spec"]["containers"][0]["readinessProbe"] =
            json!({"tcpSocket": {"port": 80}, "timeoutSeconds": value});
        assert_eq!(
            denial(&p),
            format!(
                "container app: readinessProbe has timeoutSeconds {shown}; the mesh checks probes \
                 with timeoutSeconds 1 to 3600"
            )
        );
    }
}

#[test]
fn what_is_not_a_pod_is_denied() {
    for (input, start) in [
        (
            json!({"spec": {"containers": "nginx"}}),
            "the object is not a Pod the injector can read: ",
        ),
        (
            json!([1, 2]),
            "the object is not a Pod the injector can read: ",
        ),
        (
            json!({"metadata": {"name": "x"}}),
            "the object is not a Pod the injector can read: it has no spec",
        ),
    ] {
        let err = inject(&input, &labels(Some("enabled")), &Settings::default()).unwrap_err();
        assert!(matches!(err, InjectError::NotAPod(_)), "{err}");
        assert!(err.to_string().starts_with(start), "{err}");
    }
}

#[test]
fn unknown_annotations_and_a_long_drain_earn_warnings() {
    let p = pod(json!({
        "remora.dev/exclude-inbound-port": "9090",
        "remora.dev/proxy-drain-deadline": "2m",
    }));
    let Ok(Decision::Inject(injection)) =
        inject(&p, &labels(Some("enabled")), &Settings::default())
    else {
        panic!("injected");
    };
    assert_eq!(
        injection.warnings,
        [
            "annotation remora.dev/exclude-inbound-port is not one remora knows and is ignored; \
             see docs/injector.md for the list",
            "annotation remora.dev/proxy-drain-deadline: the drain deadline 2m is longer than the \
             pod's terminationGracePeriodSeconds (30s); kubelet kills the proxy first",
        ]
    );
}
