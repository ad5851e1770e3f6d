//! cors and uri-blocker through a real sidecar, on the server side: the
//! proxy answers preflights without the app, allowed origins get their CORS
//! headers and others none; blocked URIs never reach the app.

use remora_e2e::http_apps::{HttpClient, Req};
use remora_e2e::mesh_config::InboundStandalone;
use serde_json::json;

#[tokio::test]
async fn cors_preflights_are_answered_by_the_proxy() {
    let t = InboundStandalone::start(
        "plug_cors",
        json!([{"port": 8080, "plugins": {"cors": {
            "allow_origins": "https://app.example",
            "allow_methods": "GET,POST",
            "allow_headers": "**",
            "max_age": 600,
            "allow_credential": true
        }}}]),
        json!([]),
    )
    .await;
    let mut c = HttpClient::new(&t.client, t.app_addr());
    let preflight = c
        .send(
            &Req::new(http::Method::OPTIONS, "/orders")
                .header("origin", "https://app.example")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "x-token"),
        )
        .await
        .expect("request");
    let h = |r: &remora_e2e::http_apps::Reply, n: &str| r.header(n).map(str::to_owned);
    assert_eq!(
        (
            preflight.status,
            preflight.body.as_str(),
            h(&preflight, "access-control-allow-origin"),
            h(&preflight, "access-control-allow-methods"),
            h(&preflight, "access-control-allow-headers"),
            h(&preflight, "access-control-max-age"),
            h(&preflight, "access-control-allow-credentials"),
            h(&preflight, "vary"),
        ),
        (
            200,
            "",
            Some("https://app.example".into()),
            Some("GET,POST".into()),
            Some("x-token".into()),
            Some("600".into()),
            Some("true".into()),
            Some("Origin".into()),
        )
    );
    assert_eq!(t.app.received(), 0, "the app never sees a preflight");
    let get = c
        .send(&Req::get("/orders").header("origin", "https://app.example"))
        .await
        .expect("request");
    assert_eq!(
        (
            get.status,
            get.body.as_str(),
            h(&get, "access-control-allow-origin")
        ),
        (200, "srv", Some("https://app.example".into()))
    );
    let evil = c
        .send(&Req::get("/orders").header("origin", "https://evil.example"))
        .await
        .expect("request");
    assert_eq!(
        (evil.status, h(&evil, "access-control-allow-origin")),
        (200, None),
        "served, without CORS headers: the browser refuses it"
    );
    assert_eq!(t.app.received(), 2);
}

#[tokio::test]
async fn uri_blocker_refuses_matching_uris() {
    let t = InboundStandalone::start(
        "plug_uri_blocker",
        json!([{"port": 8080, "plugins": {"uri-blocker": {
            "block_rules": ["^/admin", "\\.php$"],
            "rejected_msg": "blocked",
            "case_insensitive": true
        }}}]),
        json!([]),
    )
    .await;
    let mut c = HttpClient::new(&t.client, t.app_addr());
    for path in ["/admin", "/ADMIN/users", "/x/index.php"] {
        let reply = c.get(path).await.expect("request");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (403, "{\"error_msg\":\"blocked\"}\n"),
            "{path}"
        );
    }
    let ok = c.get("/public/php").await.expect("request");
    assert_eq!((ok.status, ok.body.as_str()), (200, "srv"));
    assert_eq!(t.app.received(), 1);
}
