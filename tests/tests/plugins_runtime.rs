//! The plugin runtime through real sidecars: the same plugin on a service
//! and a route resolves to the route's config, a global rule runs before
//! both, inbound ports and inbound routes run their plugins before the app,
//! APISIX's metrics appear beside Remora's, and an invalid plugin config is
//! rejected naming the plugin and field while traffic flows on the last
//! good config.

use remora_e2e::http_apps::{HttpClient, Req};
use remora_e2e::mesh_config::{route, web, InboundStandalone, Match, Standalone};
use serde_json::json;

/// Statuses of `n` requests to `path` on one connection.
async fn statuses(c: &mut HttpClient, req: &Req, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(c.send(req).await.expect("request").status);
    }
    out
}

#[tokio::test]
async fn route_config_wins_over_the_service_and_global_rules_run_first() {
    let t = Standalone::start("plug_merge", &["app"], |apps| {
        let mut config = web(
            "v1",
            vec![
                route()
                    .matching(Match::prefix("/route"))
                    .plugin(
                        "limit-count",
                        json!({"count": 2, "time_window": 60, "rejected_code": 429}),
                    )
                    .to("app"),
                route().to("app"),
            ],
            apps.one_backend_each(),
        );
        config.outbound.services[0].plugins = serde_json::from_value(json!({
            "limit-count": {"count": 4, "time_window": 60, "rejected_code": 503}
        }))
        .expect("plugins");
        config.global_rules = serde_json::from_value(json!([
            {"id": "auth", "plugins": {"key-auth": {}}}
        ]))
        .expect("global rules");
        config.consumers = serde_json::from_value(json!([
            {"username": "jack", "plugins": {"key-auth": {"key": "k"}}}
        ]))
        .expect("consumers");
        config
    })
    .await;
    let mut c = t.http();
    // The global key-auth rejects before any limit counts the request.
    assert_eq!(statuses(&mut c, &Req::get("/route"), 5).await, [401; 5]);
    let keyed = Req::get("/route").header("apikey", "k");
    assert_eq!(
        statuses(&mut c, &keyed, 4).await,
        [200, 200, 429, 429],
        "the route's limit-count (2, 429), not the service's (4, 503)"
    );
    let other = Req::get("/other").header("apikey", "k");
    assert_eq!(
        statuses(&mut c, &other, 5).await,
        [200, 200, 200, 200, 503],
        "the service's own limit on its other route"
    );
    let reply = c.send(&keyed).await.expect("request");
    assert_eq!(
        (
            reply.header("x-ratelimit-limit"),
            reply.header("x-ratelimit-remaining")
        ),
        (Some("2"), Some("0"))
    );
    assert_eq!(t.apps.get("app").received(), 6);
}

#[tokio::test]
async fn invalid_plugin_configs_are_rejected_by_name_and_field_and_the_last_good_one_stays() {
    let t = Standalone::start("plug_invalid", &["app"], |apps| {
        web(
            "good",
            vec![route()
                .plugin("limit-count", json!({"count": 1, "time_window": 60}))
                .to("app")],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    assert_eq!(statuses(&mut c, &Req::get("/"), 2).await, [200, 503]);
    let cases = [
        (
            json!({"time_window": 60}),
            "limit-count",
            "outbound.services[0].ports[0].routes[0].plugins.limit-count: plugin limit-count: missing field `count`",
        ),
        (
            json!({"count": "ten", "time_window": 60}),
            "limit-count",
            "outbound.services[0].ports[0].routes[0].plugins.limit-count.count: plugin limit-count: invalid type: string \"ten\", expected u64",
        ),
        (
            json!({}),
            "limit-cunt",
            "outbound.services[0].ports[0].routes[0].plugins.limit-cunt: unknown plugin \"limit-cunt\"",
        ),
    ];
    for (i, (plugin_config, name, error)) in cases.into_iter().enumerate() {
        let mut config = web(
            &format!("bad-{i}"),
            vec![route().plugin(name, plugin_config).to("app")],
            t.apps.one_backend_each(),
        );
        config.version = format!("bad-{i}");
        t.file.write(&config);
        let dump = remora_e2e::http_apps::eventually(
            std::time::Duration::from_secs(5),
            "the rejection in /config_dump",
            || async {
                let dump = remora_e2e::mesh_config::config_dump(&t.proxy).await;
                match &dump.last_error {
                    Some(e) if e.starts_with(error) => Ok(dump),
                    other => Err(format!("lastError {other:?}")),
                }
            },
        )
        .await;
        assert_eq!(dump.version, "good", "the last good config stays");
        // Still the old limit: still rejected, with its counter intact.
        assert_eq!(statuses(&mut c, &Req::get("/"), 1).await, [503], "{error}");
    }
    assert_eq!(t.apps.get("app").received(), 1);
}

/// A server pod with `key-auth` on its `/admin` inbound route only, and
/// `request-id` on the whole port.
#[tokio::test]
async fn inbound_routes_put_key_auth_on_admin_only() {
    let t = InboundStandalone::start(
        "plug_inbound",
        json!([{
            "port": 8080,
            "plugins": {"request-id": {}, "prometheus": {}},
            "routes": [{
                "name": "admin",
                "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                "plugins": {"key-auth": {}}
            }]
        }]),
        json!([{"username": "ops", "plugins": {"key-auth": {"key": "ops-key"}}}]),
    )
    .await;
    let app = &t.app;
    let mut c = HttpClient::new(&t.client, t.app_addr());
    let public = c.get("/public").await.expect("request");
    assert_eq!((public.status, public.body.as_str()), (200, "srv"));
    let id = public
        .header("x-request-id")
        .expect("a request id")
        .to_owned();
    assert_eq!(id.len(), 36, "{id}");
    let seen = app.last_request().expect("seen");
    assert_eq!(seen.header_values("x-request-id"), [id]);

    let admin = c.get("/admin/users").await.expect("request");
    assert_eq!(
        (admin.status, admin.body.as_str()),
        (401, "{\"message\":\"Missing API key in request\"}\n")
    );
    assert!(
        admin.header("x-request-id").is_some(),
        "port plugins run too"
    );
    let admin = c
        .send(&Req::get("/admin/users").header("apikey", "ops-key"))
        .await
        .expect("request");
    assert_eq!(admin.status, 200);
    assert_eq!(
        app.last_request()
            .expect("seen")
            .header_values("x-remora-consumer"),
        ["ops"]
    );
    assert_eq!(app.received(), 2);

    let metrics = t.proxy.metrics().await;
    let status = |code: &str, route: &str, consumer: &str| {
        metrics.get(
            "apisix_http_status",
            &[("code", code), ("route", route), ("consumer", consumer)],
        )
    };
    assert_eq!(status("200", "", ""), 1.0, "{metrics}");
    assert_eq!(status("401", "admin", ""), 1.0, "{metrics}");
    assert_eq!(status("200", "admin", "ops"), 1.0, "{metrics}");
}
