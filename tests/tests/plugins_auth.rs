//! Authentication plugins through a real sidecar: a valid credential
//! passes and the app sees the consumer; a missing or wrong one gets
//! APISIX's status and body and never reaches the app; a client cannot
//! forge the consumer header; `consumer-restriction` decides by consumer.

use remora_e2e::http_apps::{HttpClient, Req};
use remora_e2e::mesh_config::{route, web, Match, Standalone};
use serde_json::json;

const CONSUMER: &str = "x-remora-consumer";

fn consumers() -> serde_json::Value {
    json!([
        {"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}},
        {"username": "rose", "plugins": {"key-auth": {"key": "rose-key"}}}
    ])
}

#[tokio::test]
async fn key_auth_admits_known_keys_and_rejects_the_rest_as_apisix_does() {
    let t = Standalone::start("plug_key_auth", &["app"], |apps| {
        let mut config = web(
            "v1",
            vec![
                route()
                    .matching(Match::prefix("/private"))
                    .plugin(
                        "key-auth",
                        json!({"query": "key", "hide_credentials": true}),
                    )
                    .to("app"),
                route().to("app"),
            ],
            apps.one_backend_each(),
        );
        config.consumers = serde_json::from_value(consumers()).expect("consumers");
        config
    })
    .await;
    let app = t.apps.get("app");
    let mut c = t.http();

    for (req, message) in [
        (Req::get("/private"), "Missing API key in request"),
        (
            Req::get("/private").header("apikey", "nope"),
            "Invalid API key in request",
        ),
        (
            Req::get("/private?key=JACK-KEY"),
            "Invalid API key in request",
        ),
    ] {
        let reply = c.send(&req).await.expect("request");
        assert_eq!(
            (
                reply.status,
                reply.body.as_str(),
                reply.header("content-type")
            ),
            (
                401,
                format!("{{\"message\":\"{message}\"}}\n").as_str(),
                Some("application/json")
            ),
            "{req:?}"
        );
    }
    assert_eq!(
        app.received(),
        0,
        "a rejected request never reaches the app"
    );

    let reply = c
        .send(&Req::get("/private/a").header("apikey", "jack-key"))
        .await
        .expect("request");
    assert_eq!((reply.status, reply.body.as_str()), (200, "app"));
    let seen = app.last_request().expect("the app saw it");
    assert_eq!(seen.header_values(CONSUMER), ["jack"]);
    assert_eq!(seen.header_values("apikey"), Vec::<String>::new(), "hidden");

    // From the query, hidden from the app with the rest of the query kept.
    let reply = c
        .get("/private/b?x=1&key=rose-key&y=2")
        .await
        .expect("request");
    assert_eq!(reply.status, 200);
    let seen = app.last_request().expect("the app saw it");
    assert_eq!(seen.path, "/private/b?x=1&y=2");
    assert_eq!(seen.header_values(CONSUMER), ["rose"]);

    // A forged consumer header: stripped on a route without auth, and
    // replaced by the real one on a route with it.
    c.send(&Req::get("/open").header(CONSUMER, "admin"))
        .await
        .expect("request");
    let seen = app.last_request().expect("the app saw it");
    assert_eq!(seen.header_values(CONSUMER), Vec::<String>::new());
    c.send(
        &Req::get("/private")
            .header("apikey", "jack-key")
            .header(CONSUMER, "admin"),
    )
    .await
    .expect("request");
    let seen = app.last_request().expect("the app saw it");
    assert_eq!(seen.header_values(CONSUMER), ["jack"]);
    assert_eq!(app.received(), 4);
}

#[tokio::test]
async fn consumer_restriction_allows_only_listed_consumers() {
    let t = Standalone::start("plug_consumer_restr", &["app"], |apps| {
        let mut config = web(
            "v1",
            vec![route()
                .plugin("key-auth", json!({}))
                .plugin("consumer-restriction", json!({"whitelist": ["jack"]}))
                .to("app")],
            apps.one_backend_each(),
        );
        config.consumers = serde_json::from_value(consumers()).expect("consumers");
        config
    })
    .await;
    let mut c: HttpClient = t.http();
    let jack = c
        .send(&Req::get("/").header("apikey", "jack-key"))
        .await
        .expect("request");
    assert_eq!((jack.status, jack.body.as_str()), (200, "app"));
    let rose = c
        .send(&Req::get("/").header("apikey", "rose-key"))
        .await
        .expect("request");
    assert_eq!(
        (rose.status, rose.body.as_str()),
        (403, "{\"message\":\"The consumer_name is forbidden.\"}\n")
    );
    let nobody = c.get("/").await.expect("request");
    assert_eq!(nobody.status, 401, "key-auth runs first: {}", nobody.body);
    assert_eq!(t.apps.get("app").received(), 1);
}
