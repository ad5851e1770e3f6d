//! Translation rules, one object store per rule, asserting the exact values
//! a proxy would get.

use super::*;
use remora_api::{
    GrpcMethodMatch, HeaderMatch, HeaderModifier, HttpHeader, MatchType, Route, RouteFilter,
    RouteMatch,
};

const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  selector: {app: reviews}
  ports: [{name: http, port: 9080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec:
  clusterIPs: [10.96.0.21]
  ports: [{name: http, port: 9080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-abc, namespace: shop, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.0.1.7]
    conditions: {ready: true}
    zone: a
    targetRef: {kind: Pod, name: reviews-1, namespace: shop}
  - addresses: [10.0.1.8]
    conditions: {ready: false}
  - addresses: [10.0.1.9]
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [10.0.1.10]
    targetRef: {kind: Pod, name: plain, namespace: shop}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-v2-x, namespace: shop, labels: {kubernetes.io/service-name: reviews-v2}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.0.2.1]
    conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-1
  namespace: shop
  labels: {app: reviews}
  annotations: {remora.dev/status: '{}'}
spec:
  serviceAccountName: reviews
  containers: [{name: app, image: app}]
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: shop}
spec:
  containers: [{name: app, image: app}]
"#;

fn store(extra: &str) -> Store {
    let mut store = Store::default();
    for text in [BASE, extra] {
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).unwrap();
        for doc in docs {
            if doc.is_null() {
                continue;
            }
            store.insert(doc).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    store
}

fn run(extra: &str) -> Translation {
    let t = translate(&store(extra), &Options::default());
    // Every config it produces must pass the model's own checks.
    for workload in std::iter::once(None).chain(t.view.workloads.keys().map(|k| Some(k.as_str()))) {
        let config = assemble(&t.view, workload);
        config
            .validate()
            .unwrap_or_else(|e| panic!("{workload:?}: {e}\n{config:#?}"));
    }
    // And each destination alone, as a proxy subscribed to it gets it.
    for (key, dest) in &t.view.destinations {
        let view = MeshView {
            destinations: BTreeMap::from([(key.clone(), dest.clone())]),
            ..MeshView::default()
        };
        let config = assemble(&view, None);
        config
            .validate()
            .unwrap_or_else(|e| panic!("destination {key} alone: {e}\n{config:#?}"));
    }
    t
}

fn routes(t: &Translation) -> &[Route] {
    &t.view.destinations["shop/reviews"].service.ports[0].routes
}

fn route_names(t: &Translation) -> Vec<&str> {
    routes(t)
        .iter()
        .map(|r| r.name.as_deref().unwrap())
        .collect()
}

#[test]
fn services_become_destinations_with_ready_endpoints_and_identities() {
    let t = run("");
    let dest = &t.view.destinations["shop/reviews"];
    assert_eq!(dest.service.name, "reviews.shop");
    assert_eq!(
        dest.service.addresses,
        ["10.96.0.20".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        dest.service.hostnames,
        [
            "reviews.shop.svc.cluster.local",
            "reviews.shop.svc",
            "reviews.shop"
        ]
    );
    let port = &dest.service.ports[0];
    assert_eq!(port.port, 9080);
    assert_eq!(port.name.as_deref(), Some("http"));
    assert_eq!(port.backend_refs[0].name, "shop/reviews:9080");
    let backend = &dest.backends["shop/reviews:9080"];
    let got: Vec<(String, Option<&str>, Option<&str>)> = backend
        .endpoints
        .iter()
        .map(|e| {
            (
                e.address.to_string(),
                e.identity.as_deref(),
                e.zone.as_deref(),
            )
        })
        .collect();
    // Not ready (10.0.1.8) and terminating (10.0.1.9) are left out; an
    // endpoint without conditions is ready; only the meshed pod has an identity.
    assert_eq!(
        got,
        [
            (
                "10.0.1.7:8080".to_owned(),
                Some("spiffe://cluster.local/ns/shop/sa/reviews"),
                Some("a")
            ),
            ("10.0.1.10:8080".to_owned(), None, None),
        ]
    );
    assert_eq!(
        t.view.by_addr[&"10.96.0.20:9080".parse::<SocketAddr>().unwrap()],
        "shop/reviews"
    );
    assert_eq!(
        t.view.by_host[&("reviews.shop.svc.cluster.local".to_owned(), 9080)],
        "shop/reviews"
    );
    assert_eq!(t.problems, []);
}

#[test]
fn terminating_endpoints_drain_when_none_is_ready() {
    let t = run("");
    let v2 = &t.view.destinations["shop/reviews-v2"].backends["shop/reviews-v2:9080"];
    assert_eq!(v2.endpoints.len(), 1);
    assert_eq!(v2.endpoints[0].address, "10.0.2.1:8080".parse().unwrap());
}

#[test]
fn meshed_pods_get_workloads_and_plain_pods_do_not() {
    let t = run("");
    assert_eq!(
        t.view.workloads.keys().collect::<Vec<_>>(),
        ["shop/reviews-1"]
    );
    let w = &t.view.workloads["shop/reviews-1"];
    assert_eq!(w.identity, "spiffe://cluster.local/ns/shop/sa/reviews");
    assert_eq!(w.inbound.mode, InboundMode::Permissive);
    assert_eq!(w.inbound.authorization.default_action, AuthzAction::Allow);
}

const SPLIT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
    - matches:
        - path: {type: PathPrefix, value: /api}
          method: GET
          headers: [{name: x-canary, value: "1"}]
          queryParams: [{type: RegularExpression, name: v, value: "^2"}]
      backendRefs:
        - {name: reviews, port: 9080, weight: 90}
        - {name: reviews-v2, port: 9080, weight: 10}
"#;

#[test]
fn an_http_route_splits_by_weight_and_keeps_its_matches() {
    let t = run(SPLIT);
    let r = routes(&t);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].name.as_deref(), Some("shop/split/rule-0"));
    let m = &r[0].matches[0];
    let path = m.path.as_ref().unwrap();
    assert_eq!(
        (path.kind, path.value.as_str()),
        (remora_api::PathMatchType::PathPrefix, "/api")
    );
    assert_eq!(m.method, Some(remora_api::HttpMethod::Get));
    assert_eq!(
        (m.headers[0].name.as_str(), m.headers[0].value.as_str()),
        ("x-canary", "1")
    );
    assert_eq!(
        m.query_params[0].kind,
        remora_api::MatchType::RegularExpression
    );
    assert_eq!(m.query_params[0].value, "^2");
    let refs: Vec<(&str, u32)> = r[0]
        .backend_refs
        .iter()
        .map(|b| (b.name.as_str(), b.weight))
        .collect();
    assert_eq!(
        refs,
        [("shop/reviews:9080", 90), ("shop/reviews-v2:9080", 10)]
    );
    // The destination carries both backends; the port no default backend.
    let dest = &t.view.destinations["shop/reviews"];
    assert_eq!(
        dest.backends.keys().collect::<Vec<_>>(),
        ["shop/reviews-v2:9080", "shop/reviews:9080"]
    );
    assert_eq!(dest.service.ports[0].backend_refs, []);
    assert_eq!(t.problems, []);
}

#[test]
fn a_backend_ref_to_a_missing_service_is_backend_not_found_and_the_rest_stays() {
    let t = run(&SPLIT.replace("name: reviews-v2, port", "name: ghost, port"));
    assert_eq!(
        t.problems,
        [Problem {
            kind: "HTTPRoute",
            key: "shop/split".into(),
            condition: "ResolvedRefs",
            reason: "BackendNotFound",
            message: "Service shop/ghost does not exist".into(),
        }]
    );
    let refs: Vec<(&str, u32)> = routes(&t)[0]
        .backend_refs
        .iter()
        .map(|b| (b.name.as_str(), b.weight))
        .collect();
    assert_eq!(refs, [("shop/reviews:9080", 90)]);
    // Other services are untouched.
    assert_eq!(
        t.view.destinations["shop/reviews-v2"].service.ports[0].backend_refs[0].name,
        "shop/reviews-v2:9080"
    );
}

#[test]
fn a_missing_port_and_a_cross_namespace_ref_are_reported() {
    let t = run(&SPLIT
        .replace(
            "name: reviews-v2, port: 9080",
            "name: reviews-v2, port: 1234",
        )
        .replace(
            "{name: reviews, port: 9080, weight: 90}",
            "{name: reviews, namespace: other, port: 9080}",
        ));
    let reasons: Vec<&str> = t.problems.iter().map(|p| p.reason).collect();
    assert_eq!(reasons, ["RefNotPermitted", "BackendNotFound"]);
    assert_eq!(
        t.problems[1].message,
        "Service shop/reviews-v2 has no port 1234"
    );
    assert_eq!(routes(&t)[0].backend_refs, []);
}

#[test]
fn a_route_to_a_missing_parent_is_not_accepted() {
    let t = run(&SPLIT.replace("name: reviews, port: 9080}]", "name: nowhere}]"));
    assert_eq!(t.problems.len(), 1);
    assert_eq!(
        (t.problems[0].condition, t.problems[0].reason),
        ("Accepted", "NoMatchingParent")
    );
    assert_eq!(routes(&t), []);
}

#[test]
fn conflicts_go_to_the_oldest_route_then_alphabetical() {
    let younger = SPLIT
        .replace("name: split,", "name: aaa-younger,")
        .replace("2024-01-01", "2025-01-01");
    let same_age = SPLIT.replace("name: split,", "name: zzz-same-age,");
    let t = run(&format!("{SPLIT}---{younger}---{same_age}"));
    let names = route_names(&t);
    // Oldest first; of the two equally old, split < zzz-same-age.
    assert_eq!(
        names,
        [
            "shop/split/rule-0",
            "shop/zzz-same-age/rule-0",
            "shop/aaa-younger/rule-0"
        ]
    );
    let conflicted: Vec<&str> = t
        .problems
        .iter()
        .filter(|p| p.reason == "Conflicted")
        .map(|p| p.key.as_str())
        .collect();
    assert_eq!(conflicted, ["shop/zzz-same-age", "shop/aaa-younger"]);
}

#[test]
fn exact_paths_and_filters_pass_through() {
    let t = run(r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: exact, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: core, name: reviews}]
  rules:
    - matches: [{path: {type: Exact, value: /health}}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-env, value: prod}]}
      backendRefs: [{name: reviews, port: 9080}]
      timeouts: {request: 5s}
"#);
    let r = &routes(&t)[0];
    assert_eq!(
        r.matches[0].path.as_ref().unwrap().kind,
        remora_api::PathMatchType::Exact
    );
    assert_eq!(r.timeouts.request, Some(std::time::Duration::from_secs(5)));
    assert!(
        matches!(&r.filters[0], remora_api::RouteFilter::RequestHeaderModifier(m) if m.set[0].value == "prod")
    );
    assert_eq!(r.backend_refs[0].weight, 1);
}

#[test]
fn an_invalid_object_is_rejected_with_its_field() {
    let mut s = Store::default();
    let bad: serde_json::Value = serde_saphyr::from_str(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad, namespace: shop}\nspec: {rules: [{matches: [{path: {type: Glob}}]}]}",
    )
    .unwrap();
    let err = s.insert(bad).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "HTTPRoute bad: spec.rules[0].matches[0].path.type: unknown variant `Glob`"
        ),
        "{err}"
    );
    let unknown: serde_json::Value =
        serde_saphyr::from_str("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}")
            .unwrap();
    assert_eq!(
        s.insert(unknown).unwrap_err().to_string(),
        "apps/v1 Deployment is not a kind Remora reads"
    );
    assert!(s.http_routes.is_empty());
}

#[test]
fn mesh_tls_mode_is_most_specific_wins() {
    let t = run(r#"
apiVersion: remora.dev/v1alpha1
kind: MeshTLSPolicy
metadata: {name: mesh, namespace: remora-system}
spec: {mode: STRICT, ports: [{port: 9000, mode: PERMISSIVE}]}
---
apiVersion: remora.dev/v1alpha1
kind: MeshTLSPolicy
metadata: {name: ns, namespace: shop}
spec: {mode: PERMISSIVE}
---
apiVersion: remora.dev/v1alpha1
kind: MeshTLSPolicy
metadata: {name: wl, namespace: shop}
spec: {selector: {app: reviews}, ports: [{port: 8080, mode: STRICT}]}
"#);
    let inbound = &t.view.workloads["shop/reviews-1"].inbound;
    // The workload policy sets no mode, so the namespace's applies.
    assert_eq!(inbound.mode, InboundMode::Permissive);
    assert_eq!(inbound.mode_for(8080), InboundMode::Strict);
    assert_eq!(inbound.mode_for(9000), InboundMode::Permissive);
    assert_eq!(inbound.ports.len(), 1);

    let mesh_only = run(
        "apiVersion: remora.dev/v1alpha1\nkind: MeshTLSPolicy\nmetadata: {name: mesh, namespace: remora-system}\nspec: {mode: STRICT}\n",
    );
    assert_eq!(
        mesh_only.view.workloads["shop/reviews-1"].inbound.mode,
        InboundMode::Strict
    );
}

#[test]
fn authorization_policies_attach_through_the_service_selector() {
    let t = run(r#"
apiVersion: remora.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: callers, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: reviews}]
  action: allow
  rules: [{serviceAccounts: [shop/frontend], namespaces: [ops], methods: [GET]}]
---
apiVersion: remora.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: reviews-v2}]
  action: deny
  rules: [{}]
"#);
    let authz = &t.view.workloads["shop/reviews-1"].inbound.authorization;
    assert_eq!(authz.default_action, AuthzAction::Deny);
    assert_eq!(authz.policies.len(), 1);
    assert_eq!(authz.policies[0].name, "shop/callers");
    assert_eq!(
        authz.policies[0].rules[0].identities,
        [
            "spiffe://cluster.local/ns/shop/sa/frontend",
            "spiffe://cluster.local/ns/ops/*"
        ]
    );
}

#[test]
fn consumers_take_credentials_from_secrets_and_a_missing_secret_is_reported() {
    let t = run(r#"
apiVersion: v1
kind: Secret
metadata: {name: alice-key, namespace: shop}
data: {key: c2VjcmV0LWtleQ==}
---
apiVersion: remora.dev/v1alpha1
kind: Consumer
metadata: {name: alice, namespace: shop}
spec:
  credentials: [{plugin: key-auth, field: key, secretRef: {name: alice-key, key: key}}]
---
apiVersion: remora.dev/v1alpha1
kind: Consumer
metadata: {name: bob, namespace: shop}
spec:
  credentials: [{plugin: key-auth, field: key, secretRef: {name: nope, key: key}}]
"#);
    let consumers = &t.view.globals.consumers;
    assert_eq!(consumers.len(), 1);
    assert_eq!(consumers[0].username, "alice");
    assert_eq!(
        consumers[0].plugins["key-auth"],
        serde_json::json!({"key": "secret-key"})
    );
    assert_eq!(t.problems.len(), 1);
    assert_eq!(
        (t.problems[0].key.as_str(), t.problems[0].reason),
        ("shop/bob", "SecretNotFound")
    );
}

#[test]
fn a_traffic_policy_sets_the_backend() {
    let t = run(r#"
apiVersion: remora.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: tp, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: reviews}]
  loadBalancer: roundRobin
  connectTimeout: 250ms
  circuitBreaker: {maxConnections: 10}
"#);
    let b = &t.view.destinations["shop/reviews"].backends["shop/reviews:9080"];
    assert_eq!(b.load_balancer, remora_api::LoadBalancer::RoundRobin);
    assert_eq!(b.connect_timeout, std::time::Duration::from_millis(250));
    assert_eq!(b.circuit_breaker.max_connections, 10);
    let other = &t.view.destinations["shop/reviews-v2"].backends["shop/reviews-v2:9080"];
    assert_eq!(other.load_balancer, remora_api::LoadBalancer::LeastRequest);
}

#[test]
fn plugin_policies_attach_to_services_and_routes_and_the_oldest_wins() {
    let t = run(&format!(
        "{SPLIT}{}",
        r#"
---
apiVersion: remora.dev/v1alpha1
kind: PluginPolicy
metadata: {name: old, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  targetRefs:
    - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: split}
    - {kind: Service, name: reviews}
  plugins:
    limit-count: {count: 5, time_window: 60, rejected_code: 429}
---
apiVersion: remora.dev/v1alpha1
kind: PluginPolicy
metadata: {name: young, namespace: shop, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  targetRefs:
    - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: split}
    - {kind: Namespace, name: shop}
    - {kind: Service, name: reviews, port: 9080}
  plugins:
    limit-count: {count: 1, time_window: 1}
    cors: {}
"#
    ));
    let r = routes(&t);
    assert_eq!(
        serde_json::to_value(&r[0].plugins).unwrap(),
        serde_json::json!({
            "limit-count": {"count": 5, "time_window": 60, "rejected_code": 429},
            "cors": {},
        })
    );
    // The Service's own policy wins limit-count; cors comes from the
    // Namespace's.
    let service = &t.view.destinations["shop/reviews"].service;
    assert_eq!(
        serde_json::to_value(&service.plugins).unwrap(),
        serde_json::json!({
            "limit-count": {"count": 5, "time_window": 60, "rejected_code": 429},
            "cors": {},
        })
    );
    // A Service without a policy of its own gets the Namespace's.
    assert_eq!(
        serde_json::to_value(&t.view.destinations["shop/reviews-v2"].service.plugins).unwrap(),
        serde_json::json!({"limit-count": {"count": 1, "time_window": 1}, "cors": {}})
    );
    let unsupported: Vec<(&str, &str)> = t
        .problems
        .iter()
        .map(|p| (p.reason, p.message.as_str()))
        .collect();
    assert_eq!(
        unsupported,
        [(
            "Unsupported",
            "targetRef Service reviews port 9080: only whole Services, HTTPRoutes, GRPCRoutes \
             and Namespaces are supported"
        )]
    );
}

#[test]
fn a_plugin_policy_attaches_to_its_own_namespace_only() {
    let t = run(r#"
apiVersion: remora.dev/v1alpha1
kind: PluginPolicy
metadata: {name: elsewhere, namespace: shop}
spec:
  targetRefs: [{kind: Namespace, name: billing}]
  plugins:
    cors: {}
"#);
    assert_eq!(
        t.view.destinations["shop/reviews"].service.plugins,
        BTreeMap::new()
    );
    let problems: Vec<(&str, &str, &str)> = t
        .problems
        .iter()
        .map(|p| (p.condition, p.reason, p.message.as_str()))
        .collect();
    assert_eq!(
        problems,
        [(
            "ResolvedRefs",
            "RefNotPermitted",
            "targetRef Namespace billing: a policy attaches to its own namespace (shop) only"
        )]
    );
}

const GRPC: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  hostnames: [reviews.shop]
  rules:
    - matches:
        - method: {service: reviews.v1.Reviews, method: Get}
        - method: {service: reviews.v1.Reviews}
          headers: [{name: x-canary, value: "1"}]
        - method: {method: List}
        - method: {type: RegularExpression, service: 'reviews\.v[0-9]+\.Reviews', method: 'Get.*'}
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-env, value: prod}]}
        - type: ResponseHeaderModifier
          responseHeaderModifier: {remove: [x-internal]}
        - type: RequestMirror
          requestMirror: {backendRef: {name: reviews-v2, port: 9080}, percent: 25}
      backendRefs:
        - {name: reviews, port: 9080, weight: 90}
        - {name: reviews-v2, port: 9080, weight: 10}
    - name: catch-all
      backendRefs: [{name: reviews, port: 9080}]
"#;

fn grpc_method(kind: MatchType, service: Option<&str>, method: Option<&str>) -> RouteMatch {
    RouteMatch {
        grpc_method: Some(GrpcMethodMatch {
            kind,
            service: service.map(str::to_owned),
            method: method.map(str::to_owned),
        }),
        ..RouteMatch::default()
    }
}

#[test]
fn a_grpc_route_becomes_routes_with_method_matches_filters_and_weights() {
    let t = run(GRPC);
    assert_eq!(t.problems, []);
    let mut canary = grpc_method(MatchType::Exact, Some("reviews.v1.Reviews"), None);
    canary.headers = vec![HeaderMatch {
        kind: MatchType::Exact,
        name: "x-canary".into(),
        value: "1".into(),
    }];
    let expected = [
        Route {
            name: Some("shop/grpc/rule-0".into()),
            matches: vec![
                grpc_method(MatchType::Exact, Some("reviews.v1.Reviews"), Some("Get")),
                canary,
                grpc_method(MatchType::Exact, None, Some("List")),
                grpc_method(
                    MatchType::RegularExpression,
                    Some(r"reviews\.v[0-9]+\.Reviews"),
                    Some("Get.*"),
                ),
            ],
            filters: vec![
                RouteFilter::RequestHeaderModifier(HeaderModifier {
                    set: vec![HttpHeader {
                        name: "x-env".into(),
                        value: "prod".into(),
                    }],
                    ..HeaderModifier::default()
                }),
                RouteFilter::ResponseHeaderModifier(HeaderModifier {
                    remove: vec!["x-internal".into()],
                    ..HeaderModifier::default()
                }),
                RouteFilter::RequestMirror(remora_api::RequestMirror {
                    backend_ref: remora_api::BackendObjectRef {
                        name: "shop/reviews-v2:9080".into(),
                    },
                    percent: 25,
                }),
            ],
            backend_refs: vec![
                remora_api::BackendRef {
                    name: "shop/reviews:9080".into(),
                    weight: 90,
                    filters: vec![],
                },
                remora_api::BackendRef {
                    name: "shop/reviews-v2:9080".into(),
                    weight: 10,
                    filters: vec![],
                },
            ],
            timeouts: remora_api::Timeouts::default(),
            retry: None,
            plugins: BTreeMap::new(),
        },
        Route {
            name: Some("catch-all".into()),
            matches: vec![],
            filters: vec![],
            backend_refs: vec![remora_api::BackendRef {
                name: "shop/reviews:9080".into(),
                weight: 1,
                filters: vec![],
            }],
            timeouts: remora_api::Timeouts::default(),
            retry: None,
            plugins: BTreeMap::new(),
        },
    ];
    assert_eq!(routes(&t), expected);
    // The wire shape the proxy receives: `grpcMethod`, never a path.
    assert_eq!(
        serde_json::to_value(&routes(&t)[0].matches[0]).unwrap(),
        serde_json::json!({"grpcMethod": {"type": "Exact", "service": "reviews.v1.Reviews", "method": "Get"}})
    );
    let dest = &t.view.destinations["shop/reviews"];
    assert_eq!(
        dest.backends.keys().collect::<Vec<_>>(),
        ["shop/reviews-v2:9080", "shop/reviews:9080"]
    );
    assert_eq!(dest.service.ports[0].backend_refs, []);
}

#[test]
fn a_grpc_route_takes_the_port_from_an_http_route_which_is_conflicted() {
    // The HTTPRoute is older, but GEP-1426 ranks route types first.
    let older_http = SPLIT.replace("2024-01-01", "2020-01-01");
    let t = run(&format!("{older_http}---{GRPC}"));
    let names = route_names(&t);
    assert_eq!(names, ["shop/grpc/rule-0", "catch-all"]);
    assert_eq!(
        t.problems,
        [Problem {
            kind: "HTTPRoute",
            key: "shop/split".into(),
            condition: "Accepted",
            reason: "Conflicted",
            message: "shop/reviews:9080 has a GRPCRoute, which takes the port from HTTPRoutes \
                      (GEP-1426)"
                .into(),
        }]
    );
    // On a port without a GRPCRoute the HTTPRoute still applies.
    let t = run(&format!(
        "{older_http}---{}",
        GRPC.replace(
            "name: reviews, port: 9080}]\n  hostnames",
            "name: reviews-v2}]\n  hostnames"
        )
    ));
    assert_eq!(routes(&t)[0].name.as_deref(), Some("shop/split/rule-0"));
    assert_eq!(
        t.view.destinations["shop/reviews-v2"].service.ports[0].routes[0]
            .name
            .as_deref(),
        Some("shop/grpc/rule-0")
    );
    assert_eq!(t.problems, []);
}

#[test]
fn grpc_route_conflicts_go_to_the_oldest_then_alphabetical() {
    let younger = GRPC
        .replace("name: grpc,", "name: aaa-younger,")
        .replace("2024-01-01", "2025-01-01")
        .replace("name: catch-all", "name: catch-all-younger");
    let same_age = GRPC
        .replace("name: grpc,", "name: zzz-same-age,")
        .replace("name: catch-all", "name: catch-all-same-age");
    let t = run(&format!("{younger}---{same_age}---{GRPC}"));
    let names = route_names(&t);
    assert_eq!(
        names,
        [
            "shop/grpc/rule-0",
            "catch-all",
            "shop/zzz-same-age/rule-0",
            "catch-all-same-age",
            "shop/aaa-younger/rule-0",
            "catch-all-younger",
        ]
    );
    // Each younger route conflicts on its 4 method matches and its catch-all.
    let conflicted: Vec<(&str, &str)> = t
        .problems
        .iter()
        .map(|p| (p.kind, p.key.as_str()))
        .collect();
    assert_eq!(
        conflicted,
        [
            [("GRPCRoute", "shop/zzz-same-age"); 5],
            [("GRPCRoute", "shop/aaa-younger"); 5]
        ]
        .concat()
    );
    assert!(t.problems.iter().all(|p| p.reason == "Conflicted"));
    assert_eq!(
        t.problems[4].message,
        "match {} on shop/reviews:9080 is also in the older route shop/grpc, which wins"
    );
}

#[test]
fn grpc_route_problems_are_reported_and_the_rest_stays() {
    let t = run(&GRPC
        .replace(
            "name: reviews-v2, port: 9080, weight: 10",
            "name: ghost, port: 9080, weight: 10",
        )
        .replace(
            "{backendRef: {name: reviews-v2, port: 9080}, percent: 25}",
            "{backendRef: {name: reviews-v2}, percent: 25}",
        )
        .replace(
            "- name: catch-all\n",
            "- name: catch-all\n      matches: [{method: {type: Exact}}]\n",
        ));
    let got: Vec<(&str, &str, &str)> = t
        .problems
        .iter()
        .map(|p| (p.condition, p.reason, p.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "ResolvedRefs",
                "UnsupportedValue",
                "backendRef shop/reviews-v2 needs a port"
            ),
            (
                "ResolvedRefs",
                "BackendNotFound",
                "Service shop/ghost does not exist"
            ),
            (
                "Accepted",
                "UnsupportedValue",
                "rules[1].matches[0].method: set service, method or both"
            ),
        ]
    );
    assert!(t.problems.iter().all(|p| p.kind == "GRPCRoute"));
    let r = routes(&t);
    // The invalid rule is left out; the mirror is dropped, the rest kept.
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].filters
            .iter()
            .map(|f| f.type_name())
            .collect::<Vec<_>>(),
        ["RequestHeaderModifier", "ResponseHeaderModifier"]
    );
    assert_eq!(
        r[0].backend_refs
            .iter()
            .map(|b| (b.name.as_str(), b.weight))
            .collect::<Vec<_>>(),
        [("shop/reviews:9080", 90)]
    );

    let t = run(&GRPC.replace("percent: 25", "fraction: {numerator: 1, denominator: 3}"));
    assert!(
        matches!(&routes(&t)[0].filters[2], RouteFilter::RequestMirror(m) if m.percent == 33),
        "{:?}",
        routes(&t)[0].filters
    );
    let t = run(&GRPC.replace("percent: 25", "fraction: {numerator: 4, denominator: 3}"));
    assert_eq!(
        t.problems[0].message,
        "requestMirror takes percent (0 to 100) or a fraction of at most 1, not percent None \
         fraction Some(Fraction { numerator: 4, denominator: 3 })"
    );
    assert_eq!(routes(&t)[0].filters.len(), 2);

    let t = run(&GRPC.replace(
        "name: reviews, port: 9080}]\n  hostnames",
        "name: nowhere}]\n  hostnames",
    ));
    assert_eq!(
        t.problems,
        [Problem {
            kind: "GRPCRoute",
            key: "shop/grpc".into(),
            condition: "Accepted",
            reason: "NoMatchingParent",
            message: "parentRef Service shop/nowhere does not exist".into(),
        }]
    );
    assert_eq!(routes(&t), []);
}

#[test]
fn a_grpc_route_with_an_http_only_filter_or_stray_field_is_rejected_with_its_field() {
    let mut s = Store::default();
    let insert = |s: &mut Store, spec: &str| {
        let doc: serde_json::Value = serde_saphyr::from_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: bad, namespace: shop}}\nspec: {spec}"
        ))
        .unwrap();
        s.insert(doc).map(|_| ()).map_err(|e| e.to_string())
    };
    let err = insert(
        &mut s,
        "{rules: [{filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]}]}",
    )
    .unwrap_err();
    assert!(
        err.starts_with(
            "GRPCRoute bad: spec.rules[0].filters[0].type: unknown variant `URLRewrite`"
        ),
        "{err}"
    );
    let err = insert(
        &mut s,
        "{rules: [{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}, urlRewrite: {}}]}]}",
    )
    .unwrap_err();
    assert!(
        err.starts_with("GRPCRoute bad: spec.rules[0].filters[0]: unknown field `urlRewrite`"),
        "{err}"
    );
    let err = insert(&mut s, "{rules: [{matches: [{path: {value: /x}}]}]}").unwrap_err();
    assert!(
        err.starts_with("GRPCRoute bad: spec.rules[0].matches[0].path: unknown field `path`"),
        "{err}"
    );
    let err = insert(
        &mut s,
        "{rules: [{matches: [{method: {type: Prefix, service: a}}]}]}",
    )
    .unwrap_err();
    assert!(
        err.starts_with(
            "GRPCRoute bad: spec.rules[0].matches[0].method.type: unknown variant `Prefix`"
        ),
        "{err}"
    );
    assert!(s.grpc_routes.is_empty());
    assert_eq!(insert(&mut s, "{rules: [{}]}"), Ok(()));
    assert_eq!(s.grpc_routes.keys().collect::<Vec<_>>(), ["shop/bad"]);
}

#[test]
fn plugin_policies_attach_to_grpc_routes() {
    let t = run(&format!(
        "{GRPC}{}",
        r#"
---
apiVersion: remora.dev/v1alpha1
kind: PluginPolicy
metadata: {name: limit, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GRPCRoute, name: grpc}]
  plugins:
    limit-count: {count: 5, time_window: 60}
"#
    ));
    assert_eq!(t.problems, []);
    for route in routes(&t) {
        assert_eq!(
            serde_json::to_value(&route.plugins).unwrap(),
            serde_json::json!({"limit-count": {"count": 5, "time_window": 60}})
        );
    }
}

#[test]
fn a_bad_plugin_config_leaves_its_policy_or_consumer_out_with_the_field() {
    let t = run(r#"
apiVersion: remora.dev/v1alpha1
kind: PluginPolicy
metadata: {name: bad, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  targetRefs: [{kind: Service, name: reviews}]
  plugins:
    limit-count: {count: 0, time_window: 60}
---
apiVersion: remora.dev/v1alpha1
kind: PluginPolicy
metadata: {name: good, namespace: shop, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  targetRefs: [{kind: Service, name: reviews}]
  plugins:
    traffic-split: {rules: [{weighted_upstreams: [{upstream_id: "shop/reviews-v2:9080", weight: 1}]}]}
---
apiVersion: remora.dev/v1alpha1
kind: Consumer
metadata: {name: jack, namespace: shop}
spec: {plugins: {no-such-plugin: {}}}
---
apiVersion: remora.dev/v1alpha1
kind: Consumer
metadata: {name: jill, namespace: shop}
spec: {plugins: {key-auth: {key: jills-key}}}
"#);
    let service = &t.view.destinations["shop/reviews"].service;
    assert_eq!(
        service.plugins.keys().collect::<Vec<_>>(),
        ["traffic-split"]
    );
    let users: Vec<&str> = t
        .view
        .globals
        .consumers
        .iter()
        .map(|c| c.username.as_str())
        .collect();
    assert_eq!(users, ["jill"]);
    let problems: Vec<(&str, &str, &str, &str)> = t
        .problems
        .iter()
        .map(|p| (p.kind, p.key.as_str(), p.reason, p.message.as_str()))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(
        problems[0],
        (
            "PluginPolicy",
            "shop/bad",
            "Invalid",
            "spec.plugins.limit-count.count: plugin limit-count: 0 is out of range: 1 to 1000000000"
        )
    );
    assert_eq!(
        (problems[1].0, problems[1].1, problems[1].2),
        ("Consumer", "shop/jack", "Invalid")
    );
    assert!(
        problems[1]
            .3
            .starts_with("spec.plugins.no-such-plugin: unknown plugin \"no-such-plugin\""),
        "{}",
        problems[1].3
    );
}

/// An HTTPRoute on `reviews` with the given rules (YAML, indented 4).
fn http_route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, group: core, name: reviews}}]\n  rules:\n{rules}"
    )
}

fn problems(t: &Translation) -> Vec<(&str, &str, &str)> {
    t.problems
        .iter()
        .map(|p| (p.condition, p.reason, p.message.as_str()))
        .collect()
}

const GHOST: (&str, &str, &str) = (
    "ResolvedRefs",
    "BackendNotFound",
    "Service shop/ghost does not exist",
);

fn mirror(name: &str, percent: u8) -> RouteFilter {
    RouteFilter::RequestMirror(remora_api::RequestMirror {
        backend_ref: remora_api::BackendObjectRef { name: name.into() },
        percent,
    })
}

fn set_header(name: &str, value: &str) -> HeaderModifier {
    HeaderModifier {
        set: vec![HttpHeader {
            name: name.into(),
            value: value.into(),
        }],
        ..HeaderModifier::default()
    }
}

#[test]
fn an_http_route_takes_gateway_api_filters_and_mirrors_to_a_service_port() {
    let t = run(&http_route(
        r#"    - matches: [{path: {type: PathPrefix, value: /v1}}]
      filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: reviews-v2, port: 9080}, percent: 10}
        - type: RequestMirror
          requestMirror: {backendRef: {name: reviews-v2, port: 9080}, fraction: {numerator: 1, denominator: 4}}
        - type: URLRewrite
          urlRewrite: {hostname: internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
      backendRefs: [{name: reviews, port: 9080}]
    - matches: [{path: {type: Exact, value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}
"#,
    ));
    assert_eq!(problems(&t), []);
    let r = routes(&t);
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[0].filters,
        [
            mirror("shop/reviews-v2:9080", 10),
            mirror("shop/reviews-v2:9080", 25),
            RouteFilter::UrlRewrite(remora_api::UrlRewrite {
                hostname: Some("internal".into()),
                path: Some(remora_api::PathModifier::ReplacePrefixMatch("/v2".into())),
            }),
        ]
    );
    assert_eq!(
        r[1].filters,
        [RouteFilter::RequestRedirect(remora_api::RequestRedirect {
            scheme: None,
            hostname: None,
            path: Some(remora_api::PathModifier::ReplaceFullPath("/new".into())),
            port: None,
            status_code: 301,
        })]
    );
    // The mirror's backend travels with the destination.
    assert_eq!(
        t.view.destinations["shop/reviews"]
            .backends
            .keys()
            .collect::<Vec<_>>(),
        ["shop/reviews-v2:9080", "shop/reviews:9080"]
    );

    // A mirror to a missing Service: BackendNotFound, the mirror left out,
    // the rule and its other filters kept.
    let t = run(&http_route(
        r#"    - filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: ghost, port: 9080}}
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-env, value: prod}]}
      backendRefs: [{name: reviews, port: 9080}]
"#,
    ));
    assert_eq!(problems(&t), [GHOST]);
    assert_eq!(
        routes(&t)[0].filters,
        [RouteFilter::RequestHeaderModifier(set_header(
            "x-env", "prod"
        ))]
    );
}

#[test]
fn an_http_route_filter_remora_lacks_is_refused_with_its_name() {
    let mut s = Store::default();
    let doc: serde_json::Value = serde_saphyr::from_str(&http_route(
        "    - filters: [{type: ExtensionRef, extensionRef: {group: x, kind: Y, name: z}}]\n",
    ))
    .unwrap();
    let err = s.insert(doc).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "HTTPRoute r: spec.rules[0].filters[0].type: unknown variant `ExtensionRef`"
        ),
        "{err}"
    );
    // A stray field in a mirror is named.
    let doc: serde_json::Value = serde_saphyr::from_str(&http_route(
        "    - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: reviews}, port: 1}}]\n",
    ))
    .unwrap();
    let err = s.insert(doc).unwrap_err().to_string();
    assert!(
        err.starts_with("HTTPRoute r: spec.rules[0].filters[0]: unknown field `port`, expected one of `backendRef`, `percent`, `fraction`"),
        "{err}"
    );
    assert!(s.http_routes.is_empty());
}

#[test]
fn backend_ref_filters_apply_to_their_backend_on_both_route_kinds() {
    let t = run(&http_route(
        r#"    - backendRefs:
        - name: reviews
          port: 9080
          weight: 3
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {set: [{name: x-version, value: v1}]}
        - name: reviews-v2
          port: 9080
          filters:
            - type: RequestMirror
              requestMirror: {backendRef: {name: reviews, port: 9080}, percent: 50}
            - type: ResponseHeaderModifier
              responseHeaderModifier: {remove: [x-debug]}
"#,
    ));
    assert_eq!(problems(&t), []);
    assert_eq!(
        routes(&t)[0].backend_refs,
        [
            remora_api::BackendRef {
                name: "shop/reviews:9080".into(),
                weight: 3,
                filters: vec![RouteFilter::RequestHeaderModifier(set_header(
                    "x-version",
                    "v1"
                ))],
            },
            remora_api::BackendRef {
                name: "shop/reviews-v2:9080".into(),
                weight: 1,
                filters: vec![
                    mirror("shop/reviews:9080", 50),
                    RouteFilter::ResponseHeaderModifier(HeaderModifier {
                        remove: vec!["x-debug".into()],
                        ..HeaderModifier::default()
                    }),
                ],
            },
        ]
    );

    let t = run(&GRPC.replace(
        "- {name: reviews-v2, port: 9080, weight: 10}",
        "- {name: reviews-v2, port: 9080, weight: 10, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-v, value: \"2\"}]}}]}",
    ));
    assert_eq!(problems(&t), []);
    assert_eq!(
        routes(&t)[0].backend_refs[1].filters,
        [RouteFilter::RequestHeaderModifier(HeaderModifier {
            add: vec![HttpHeader {
                name: "x-v".into(),
                value: "2".into()
            }],
            ..HeaderModifier::default()
        })]
    );

    // A redirect answers before a backend is chosen: the proxy refuses it
    // on a backendRef, so remora-cp leaves the rule out and names the field
    // (the index the object gives it, past a mirror that was left out).
    let t = run(&http_route(
        r#"    - backendRefs:
        - {name: ghost, port: 9080}
        - name: reviews
          port: 9080
          filters:
            - type: RequestMirror
              requestMirror: {backendRef: {name: ghost, port: 9080}}
            - type: RequestRedirect
              requestRedirect: {statusCode: 301}
    - name: kept
      backendRefs: [{name: reviews, port: 9080}]
"#,
    ));
    assert_eq!(
        problems(&t),
        [
            GHOST,
            GHOST,
            (
                "Accepted",
                "UnsupportedValue",
                "rules[0].backendRefs[1].filters[1]: RequestRedirect answers before any backend \
                 is chosen: put it in the route's filters"
            ),
        ]
    );
    assert_eq!(route_names(&t), ["kept"]);
}

/// Each value the proxy would refuse, the message remora-cp reports for it.
#[test]
fn what_the_proxy_would_refuse_leaves_the_rule_out_with_its_field() {
    let cases: &[(&str, &str)] = &[
        (
            "matches: [{path: {type: RegularExpression, value: '/(a'}}]",
            "rules[0].matches[0].path.value: regex does not compile: regex parse error:\n    /(a\n     ^\nerror: unclosed group",
        ),
        (
            "matches: [{path: {type: PathPrefix, value: api}}]",
            "rules[0].matches[0].path.value: \"api\" must start with /",
        ),
        (
            "matches: [{headers: [{type: RegularExpression, name: x-a, value: '[z-a]'}]}]",
            "rules[0].matches[0].headers[0].value: regex does not compile: regex parse error:\n    [z-a]\n     ^^^\nerror: invalid character class range, the start must be <= the end",
        ),
        (
            "matches: [{headers: [{name: 'bad header', value: x}]}]",
            "rules[0].matches[0].headers[0].name: \"bad header\" is not a valid HTTP header name",
        ),
        (
            "matches: [{queryParams: [{type: RegularExpression, name: q, value: '*'}]}]",
            "rules[0].matches[0].queryParams[0].value: regex does not compile: regex parse error:\n    *\n    ^\nerror: repetition operator missing expression",
        ),
        (
            "timeouts: {request: 1s, backendRequest: 2s}",
            "rules[0].timeouts.backendRequest: must not be longer than timeouts.request",
        ),
        (
            "filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: 'x:y', value: v}]}}]",
            "rules[0].filters[0].requestHeaderModifier.set[0].name: \"x:y\" is not a valid HTTP header name",
        ),
        (
            "filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}]",
            "rules[0].filters[0].requestHeaderModifier: set, add or remove at least one header",
        ),
        (
            "matches: [{path: {type: Exact, value: /a}}]\n      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]",
            "rules[0].filters[0].urlRewrite.path: ReplacePrefixMatch needs every match of the route to have a PathPrefix path",
        ),
        (
            "filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]",
            "rules[0].filters[0].requestRedirect.statusCode: 200 is not a redirect: use 301, 302, 303, 307 or 308",
        ),
        (
            "retry: {attempts: 11}",
            "rules[0].retry.attempts: must be 0 to 10, not 11",
        ),
    ];
    for (rule, want) in cases {
        let t = run(&http_route(&format!(
            "    - {rule}\n      backendRefs: [{{name: reviews, port: 9080}}]\n    - name: kept\n      backendRefs: [{{name: reviews, port: 9080}}]\n"
        )));
        assert_eq!(
            problems(&t),
            [("Accepted", "UnsupportedValue", *want)],
            "{rule}"
        );
        assert!(t
            .problems
            .iter()
            .all(|p| p.kind == "HTTPRoute" && p.key == "shop/r"));
        // Only the bad rule is left out.
        assert_eq!(route_names(&t), ["kept"], "{rule}");
    }
}

#[test]
fn a_grpc_method_regex_the_proxy_would_refuse_is_reported_as_method() {
    let t = run(&GRPC.replace("method: 'Get.*'", "method: 'Get('"));
    assert_eq!(
        problems(&t),
        [(
            "Accepted",
            "UnsupportedValue",
            "rules[0].matches[3].method.method: regex does not compile: regex parse error:\n    Get(\n       ^\nerror: unclosed group"
        )]
    );
    assert_eq!(route_names(&t), ["catch-all"]);
    let t = run(&GRPC.replace("method: Get}", "method: Get/x}"));
    assert_eq!(
        problems(&t),
        [(
            "Accepted",
            "UnsupportedValue",
            "rules[0].matches[0].method.method: \"Get/x\" is not a gRPC method name, e.g. GetReview"
        )]
    );
}

#[test]
fn a_rule_name_is_used_once_per_port_as_the_proxy_requires() {
    // Two routes with a rule of the same name on one port: the younger
    // one's is qualified with its route.
    let other = |name: &str, path: &str| {
        http_route(&format!(
            "    - name: main\n      matches: [{{path: {{value: {path}}}}}]\n      backendRefs: [{{name: reviews, port: 9080}}]\n"
        ))
        .replace("name: r,", &format!("name: {name},"))
    };
    let t = run(&format!(
        "{}---\n{}",
        other("one", "/a"),
        other("two", "/b")
    ));
    assert_eq!(problems(&t), []);
    assert_eq!(route_names(&t), ["main", "shop/two/main"]);
    // Qualified names are names like any other.
    let three = other("zzz", "/c").replace("name: main", "name: shop/two/main");
    let t = run(&format!(
        "{}---\n{}---\n{three}",
        other("one", "/a"),
        other("two", "/b")
    ));
    assert_eq!(problems(&t), []);
    assert_eq!(
        route_names(&t),
        ["main", "shop/two/main", "shop/zzz/shop/two/main"]
    );
    // When the qualified name is taken too (by an older route, here
    // `p` < `q`), the rule is Conflicted on that port and left out there.
    let p = other("p", "/p").replace("name: main", "name: shop/q/main");
    let t = run(&format!(
        "{}---\n{p}---\n{}",
        other("one", "/a"),
        other("q", "/q")
    ));
    assert_eq!(
        problems(&t),
        [(
            "Accepted",
            "Conflicted",
            "rule name \"main\" on shop/reviews:9080 is taken by an older route"
        )]
    );
    assert!(t.problems.iter().all(|p| p.key == "shop/q"));
    assert_eq!(route_names(&t), ["main", "shop/q/main"]);

    // Within one route, a name given twice (or a given name equal to an
    // unnamed rule's): the later rule is left out and named.
    let t = run(&http_route(
        r#"    - name: main
      matches: [{path: {value: /a}}]
      backendRefs: [{name: reviews, port: 9080}]
    - name: main
      matches: [{path: {value: /b}}]
      backendRefs: [{name: reviews, port: 9080}]
    - name: shop/r/rule-3
      matches: [{path: {value: /c}}]
      backendRefs: [{name: reviews, port: 9080}]
    - matches: [{path: {value: /d}}]
      backendRefs: [{name: reviews, port: 9080}]
"#,
    ));
    assert_eq!(
        problems(&t),
        [
            (
                "Accepted",
                "UnsupportedValue",
                "rules[1].name: \"main\" is also the name of rules[0]"
            ),
            (
                "Accepted",
                "UnsupportedValue",
                "rules[3].name: \"shop/r/rule-3\" is also the name of rules[2]"
            ),
        ]
    );
    assert_eq!(route_names(&t), ["main", "shop/r/rule-3"]);
}
