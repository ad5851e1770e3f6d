//! More APISIX plugins through a real sidecar: `hmac-auth` admits a request
//! signed with the consumer's secret (the app sees the consumer, not the
//! credential) and refuses a wrong signature, a tampered path and a replay
//! that comes later than `clock_skew`, with APISIX's 401.

use std::time::{Duration, SystemTime};

use base64::Engine;
use remora_e2e::http_apps::Req;
use remora_e2e::mesh_config::{route, web, Match, Standalone};
use serde_json::json;

const CONSUMER: &str = "x-remora-consumer";
const REFUSED: &str = "{\"message\":\"client request can't be validated\"}\n";

/// `Authorization` for `GET path` signed over `@request-target date`.
fn signature(secret: &str, path: &str, date: &str) -> String {
    let text = format!("jack-key\nGET {path}\ndate: {date}\n");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let sig =
        base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, text.as_bytes()));
    format!(
        "Signature keyId=\"jack-key\",algorithm=\"hmac-sha256\",headers=\"@request-target date\",signature=\"{sig}\""
    )
}

#[tokio::test]
async fn hmac_auth_admits_signed_requests_and_refuses_late_replays() {
    let t = Standalone::start("plug_hmac_auth", &["app"], |apps| {
        let mut config = web(
            "v1",
            vec![
                route()
                    .matching(Match::prefix("/signed"))
                    .plugin(
                        "hmac-auth",
                        json!({"clock_skew": 2, "signed_headers": ["date"], "hide_credentials": true}),
                    )
                    .to("app"),
                route().to("app"),
            ],
            apps.one_backend_each(),
        );
        config.consumers = serde_json::from_value(json!([
            {"username": "jack", "plugins": {"hmac-auth": {"key_id": "jack-key", "secret_key": "s3cret"}}}
        ]))
        .expect("consumers");
        config
    })
    .await;
    let app = t.apps.get("app");
    let mut c = t.http();
    let date = httpdate::fmt_http_date(SystemTime::now());

    let good = Req::get("/signed/a?x=1").header("date", &date).header(
        "authorization",
        &signature("s3cret", "/signed/a?x=1", &date),
    );
    let reply = c.send(&good).await.expect("request");
    assert_eq!((reply.status, reply.body.as_str()), (200, "app"));
    let seen = app.last_request().expect("the app saw it");
    assert_eq!(seen.header_values(CONSUMER), ["jack"]);
    assert_eq!(
        seen.header_values("authorization"),
        Vec::<String>::new(),
        "hidden"
    );

    for (what, req) in [
        ("no signature", Req::get("/signed/a").header("date", &date)),
        (
            "wrong secret",
            Req::get("/signed/a")
                .header("date", &date)
                .header("authorization", &signature("guess", "/signed/a", &date)),
        ),
        (
            "another path than signed",
            Req::get("/signed/b")
                .header("date", &date)
                .header("authorization", &signature("s3cret", "/signed/a", &date)),
        ),
        (
            "forged consumer header",
            Req::get("/signed/a").header(CONSUMER, "jack"),
        ),
    ] {
        let reply = c.send(&req).await.expect("request");
        assert_eq!(
            (
                reply.status,
                reply.body.as_str(),
                reply.header("content-type")
            ),
            (401, REFUSED, Some("application/json")),
            "{what}"
        );
    }
    assert_eq!(app.received(), 1, "refused requests never reach the app");

    // The same signed request replayed after the 2 s skew allowance.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let late = c.send(&good).await.expect("request");
    assert_eq!(
        (late.status, late.body.as_str()),
        (401, REFUSED),
        "replayed too late"
    );
    assert_eq!(app.received(), 1);
}
