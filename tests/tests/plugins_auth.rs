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

#[tokio::test]
async fn basic_auth_checks_user_and_password() {
    use base64::Engine;
    let t = Standalone::start("plug_basic_auth", &["app"], |apps| {
        let mut config = web(
            "v1",
            vec![route()
                .plugin("basic-auth", json!({"hide_credentials": true}))
                .to("app")],
            apps.one_backend_each(),
        );
        config.consumers = serde_json::from_value(json!([
            {"username": "jack", "plugins": {"basic-auth": {"username": "jack", "password": "pw"}}}
        ]))
        .expect("consumers");
        config
    })
    .await;
    let mut c = t.http();
    let basic = |s: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    };
    let missing = c.get("/").await.expect("request");
    assert_eq!(
        (
            missing.status,
            missing.body.as_str(),
            missing.header("www-authenticate")
        ),
        (
            401,
            "{\"message\":\"Missing authorization in request\"}\n",
            Some("Basic realm='.'")
        )
    );
    let wrong = c
        .send(&Req::get("/").header("authorization", &basic("jack:nope")))
        .await
        .expect("request");
    assert_eq!(
        (wrong.status, wrong.body.as_str()),
        (401, "{\"message\":\"Invalid user authorization\"}\n")
    );
    let good = c
        .send(&Req::get("/").header("authorization", &basic("jack:pw")))
        .await
        .expect("request");
    assert_eq!(good.status, 200);
    let seen = t.apps.get("app").last_request().expect("seen");
    assert_eq!(seen.header_values(CONSUMER), ["jack"]);
    assert_eq!(seen.header_values("authorization"), Vec::<String>::new());
    assert_eq!(t.apps.get("app").received(), 1);
}

/// RS256 through the sidecar; an expired token and one from another key are
/// refused with APISIX's message.
#[tokio::test]
async fn jwt_auth_verifies_rs256_and_refuses_expired_tokens() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    const PRIVATE: &str = include_str!("../../proxy/src/plugins/testdata/rsa_private.pem");
    const PUBLIC: &str = include_str!("../../proxy/src/plugins/testdata/rsa_public.pem");
    let t = Standalone::start("plug_jwt_auth", &["app"], |apps| {
        let mut config = web(
            "v1",
            vec![route().plugin("jwt-auth", json!({})).to("app")],
            apps.one_backend_each(),
        );
        config.consumers = serde_json::from_value(json!([
            {"username": "svc-a", "plugins": {"jwt-auth": {"key": "svc-a", "algorithm": "RS256", "public_key": PUBLIC, "lifetime_grace_period": 10}}}
        ]))
        .expect("consumers");
        config
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let key = EncodingKey::from_rsa_pem(PRIVATE.as_bytes()).expect("key");
    let token = |exp: u64| {
        encode(
            &Header::new(Algorithm::RS256),
            &json!({"key": "svc-a", "exp": exp}),
            &key,
        )
        .expect("signs")
    };
    let mut c = t.http();
    let bearer = |t: String| format!("Bearer {t}");
    let ok = c
        .send(&Req::get("/").header("authorization", &bearer(token(now + 300))))
        .await
        .expect("request");
    assert_eq!(ok.status, 200);
    assert_eq!(
        t.apps
            .get("app")
            .last_request()
            .expect("seen")
            .header_values(CONSUMER),
        ["svc-a"]
    );
    // Expired 5 s ago: within the 10 s grace. Expired 60 s ago: refused.
    let skewed = c
        .send(&Req::get("/").header("authorization", &bearer(token(now - 5))))
        .await
        .expect("request");
    assert_eq!(skewed.status, 200);
    let expired = c
        .send(&Req::get("/").header("authorization", &bearer(token(now - 60))))
        .await
        .expect("request");
    assert_eq!(
        (expired.status, expired.body.as_str()),
        (401, "{\"message\":\"failed to verify jwt\"}\n")
    );
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"key": "svc-a", "exp": now + 300}),
        &EncodingKey::from_secret(b"guess"),
    )
    .expect("signs");
    let forged = c
        .send(&Req::get("/?jwt=x").header("authorization", &forged))
        .await
        .expect("request");
    assert_eq!(forged.status, 401, "{}", forged.body);
    let missing = c.get("/").await.expect("request");
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (401, "{\"message\":\"Missing JWT token in request\"}\n")
    );
    assert_eq!(t.apps.get("app").received(), 2);
}

#[tokio::test]
async fn ip_restriction_refuses_clients_outside_the_whitelist() {
    let t = Standalone::start("plug_ip_restr", &["app"], |apps| {
        web(
            "v1",
            vec![
                route()
                    .matching(Match::prefix("/lan"))
                    .plugin(
                        "ip-restriction",
                        json!({"whitelist": ["10.0.0.0/8", "fd00::/8"]}),
                    )
                    .to("app"),
                route()
                    .plugin("ip-restriction", json!({"whitelist": ["192.0.2.0/24"]}))
                    .to("app"),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    let lan = c.get("/lan").await.expect("request");
    assert_eq!(
        (lan.status, lan.body.as_str()),
        (200, "app"),
        "the client pod is on 10.x"
    );
    let other = c.get("/other").await.expect("request");
    assert_eq!(
        (other.status, other.body.as_str()),
        (403, "{\"message\":\"Your IP address is not allowed\"}\n")
    );
    assert_eq!(t.apps.get("app").received(), 1);
}
