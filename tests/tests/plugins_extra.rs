//! The second set of security and traffic plugins through real sidecars:
//! ua-restriction and referer-restriction refuse by header (huge and
//! garbage headers included), csrf hands out a token and checks it on
//! unsafe methods, anonymous_consumer runs unauthenticated callers as a
//! consumer with its own limit, traffic-split sends exactly its share (and
//! exactly the matching requests) to another backend, proxy-mirror copies
//! exactly the sampled requests with the concatenated path while the client
//! gets the main answer, response-rewrite filters rewrite the body the
//! client gets, and invalid configs of each are rejected naming
//! the plugin and the field while traffic flows on the last good config.

use std::time::{Duration, Instant};

use remora_e2e::http_apps::{eventually, send_many, HttpClient, Req};
use remora_e2e::mesh_config::{config_dump, route, vip, web, InboundStandalone, Standalone};
use serde_json::json;

/// Status and body of one request.
async fn answer(c: &mut HttpClient, req: Req) -> (u16, String) {
    let reply = c.send(&req).await.expect("request");
    (reply.status, reply.body)
}

#[tokio::test]
async fn ua_and_referer_restrictions_refuse_by_header() {
    let t = InboundStandalone::start(
        "plug_ua_referer",
        json!([{"port": 8080, "plugins": {
            "ua-restriction": {"denylist": ["^curl/7\\.", "(?i)bot"]},
            "referer-restriction": {"whitelist": ["app.example", "*.trusted.example"], "bypass_missing": true}
        }}]),
        json!([]),
    )
    .await;
    let mut c = HttpClient::new(&t.client, t.app_addr());
    let ua = |agent: &str| Req::get("/").header("user-agent", agent);
    let not_allowed = (403, "{\"message\":\"Not allowed\"}\n".to_owned());
    let bad_referer = (
        403,
        "{\"message\":\"Your referer host is not allowed\"}\n".to_owned(),
    );
    let ok = (200, "srv".to_owned());
    let huge_host = format!("https://{}.evil/x", "a".repeat(8000));
    let huge_agent = format!("Mozilla/5.0 {}", "x".repeat(8000));
    for (req, expected, what) in [
        (ua("Mozilla/5.0"), &ok, "no referer: bypass_missing"),
        (
            ua("Mozilla/5.0").header("referer", "https://App.example:8443/page"),
            &ok,
            "listed host, any case, any port",
        ),
        (
            ua("Mozilla/5.0").header("referer", "https://a.b.trusted.example/"),
            &ok,
            "wildcard",
        ),
        (ua("curl/7.88.1"), &not_allowed, "denied agent"),
        (ua("GoogleBot/2.1"), &not_allowed, "denied agent, any case"),
        (Req::get("/"), &not_allowed, "no agent, no bypass_missing"),
        (
            ua("Mozilla/5.0").header("referer", "https://evil.example/"),
            &bad_referer,
            "unlisted referer",
        ),
        (
            ua("Mozilla/5.0").header("referer", &huge_host),
            &bad_referer,
            "an 8 KB referer",
        ),
        (
            ua("Mozilla/5.0").header("referer", "%%garbage%%"),
            &ok,
            "no host counts as missing",
        ),
        (ua(&huge_agent), &ok, "an 8 KB agent that no rule denies"),
    ] {
        assert_eq!(&answer(&mut c, req).await, expected, "{what}");
    }
    // Past the proxy's header limit: a clean 431, the app never asked.
    let (status, _) = answer(
        &mut HttpClient::new(&t.client, t.app_addr()),
        ua("Mozilla/5.0").header("referer", &"r".repeat(70 * 1024)),
    )
    .await;
    assert_eq!(status, 431);
    assert_eq!(t.app.received(), 5);
}

#[tokio::test]
async fn csrf_hands_out_a_token_and_checks_it_on_unsafe_methods() {
    let t = InboundStandalone::start(
        "plug_csrf",
        json!([{"port": 8080, "plugins": {"csrf": {"key": "a-long-secret", "expires": 600}}}]),
        json!([]),
    )
    .await;
    let mut c = HttpClient::new(&t.client, t.app_addr());
    let get = c.get("/form").await.expect("request");
    assert_eq!((get.status, get.body.as_str()), (200, "srv"));
    let cookie = get.header("set-cookie").expect("a token").to_owned();
    let token = cookie
        .strip_prefix("apisix-csrf-token=")
        .and_then(|rest| rest.split(';').next())
        .expect("name=token;...")
        .to_owned();
    assert!(
        cookie.ends_with(" GMT") && cookie.contains(";path=/;Expires="),
        "{cookie}"
    );
    assert_eq!(token.split('.').count(), 3, "{token}");
    let post = || Req::new(http::Method::POST, "/orders").body("{}");
    let with_cookie = |value: &str| post().header("cookie", &format!("apisix-csrf-token={value}"));
    let refused = |why: &str| (401, format!("{{\"error_msg\":\"{why}\"}}\n"));
    let garbage = "g".repeat(4000);
    for (req, expected, what) in [
        (post(), refused("no csrf token in headers"), "no header"),
        (
            post().header("apisix-csrf-token", &token),
            refused("no csrf cookie"),
            "no cookie",
        ),
        (
            with_cookie(&token).header("apisix-csrf-token", "other"),
            refused("csrf token mismatch"),
            "mismatch",
        ),
        (
            with_cookie("a.1.b").header("apisix-csrf-token", "a.1.b"),
            refused("Failed to verify the csrf token signature"),
            "forged",
        ),
        (
            with_cookie(&garbage).header("apisix-csrf-token", &garbage),
            refused("Failed to verify the csrf token signature"),
            "4 KB of garbage",
        ),
        (
            with_cookie(&token).header("apisix-csrf-token", &token),
            (200, "srv".to_owned()),
            "the token in both",
        ),
    ] {
        let reply = c.send(&req).await.expect("request");
        assert_eq!((reply.status, reply.body.clone()), expected, "{what}");
        assert!(
            reply.header("set-cookie").is_some(),
            "{what}: every response gets a fresh token"
        );
    }
    let seen = t.app.last_request().expect("seen");
    assert_eq!(
        (seen.method, seen.path.as_str()),
        (http::Method::POST, "/orders")
    );
    assert_eq!(t.app.received(), 2);
}

#[tokio::test]
async fn anonymous_consumer_runs_callers_without_a_key_with_its_own_limit() {
    let t = InboundStandalone::start(
        "plug_anonymous",
        json!([{"port": 8080, "plugins": {"key-auth": {"anonymous_consumer": "guest"}}}]),
        json!([
            {"username": "jack", "plugins": {"key-auth": {"key": "k-jack"}}},
            {"username": "guest", "plugins": {"limit-count": {"count": 2, "time_window": 60, "rejected_code": 429}}}
        ]),
    )
    .await;
    let mut c = HttpClient::new(&t.client, t.app_addr());
    let consumer = |t: &InboundStandalone| {
        t.app
            .last_request()
            .expect("seen")
            .header_values("x-remora-consumer")
    };
    assert_eq!(answer(&mut c, Req::get("/")).await.0, 200);
    assert_eq!(consumer(&t), ["guest"]);
    let wrong = Req::get("/").header("apikey", "nope");
    assert_eq!(
        answer(&mut c, wrong).await.0,
        200,
        "a wrong key falls back too"
    );
    assert_eq!(consumer(&t), ["guest"]);
    assert_eq!(
        answer(&mut c, Req::get("/").header("x-remora-consumer", "jack"))
            .await
            .0,
        429,
        "guest's own limit, whatever the client claims"
    );
    let jack = Req::get("/").header("apikey", "k-jack");
    assert_eq!(answer(&mut c, jack).await.0, 200);
    assert_eq!(consumer(&t), ["jack"]);
    assert_eq!(t.app.received(), 3);
}

#[tokio::test]
async fn traffic_split_sends_exactly_its_share_and_the_matching_requests() {
    let t = Standalone::start("plug_traffic_split", &["v1", "v2"], |apps| {
        web(
            "v1",
            vec![route()
                .plugin(
                    "traffic-split",
                    json!({"rules": [
                        {"match": [{"vars": [["http_x_canary", "==", "1"]]}],
                         "weighted_upstreams": [{"upstream_id": "v2"}]},
                        {"weighted_upstreams": [{"upstream_id": "v2", "weight": 1}, {"weight": 3}]}
                    ]}),
                )
                .to("v1")],
            apps.one_backend_each(),
        )
    })
    .await;
    let outcomes = send_many(&t.client, vip(), 100, 4, |_| Req::get("/")).await;
    assert!(outcomes
        .iter()
        .all(|(_, o)| o.as_ref().is_ok_and(|r| r.status == 200)));
    assert_eq!(
        (t.apps.get("v1").received(), t.apps.get("v2").received()),
        (75, 25),
        "3:1 exactly"
    );
    let mut c = t.http();
    for _ in 0..10 {
        let reply = c
            .send(&Req::get("/").header("x-canary", "1"))
            .await
            .expect("request");
        assert_eq!((reply.status, reply.body.as_str()), (200, "v2"));
    }
    assert_eq!(
        (t.apps.get("v1").received(), t.apps.get("v2").received()),
        (75, 35),
        "every matching request, and only those"
    );
}

#[tokio::test]
async fn proxy_mirror_copies_exactly_the_sampled_requests_without_delaying_them() {
    let t = Standalone::start("plug_proxy_mirror", &["app", "shadow"], |apps| {
        let shadow = apps.addr("shadow");
        let mut config = web(
            "v1",
            vec![route()
                .plugin(
                    "proxy-mirror",
                    json!({"host": format!("http://{shadow}"), "path": "/shadow", "path_concat_mode": "prefix", "sample_ratio": 0.5}),
                )
                .to("app")],
            apps.one_backend_each(),
        );
        config.backends.remove("shadow");
        config
    })
    .await;
    // A slow mirror must not slow the requests it copies.
    t.apps.get("shadow").set_delay(Duration::from_secs(2));
    let mut c = t.http();
    let started = Instant::now();
    for i in 0..20 {
        let reply = c
            .send(&Req::new(http::Method::POST, &format!("/orders/{i}?q={i}")).body("payload"))
            .await
            .expect("request");
        assert_eq!((reply.status, reply.body.as_str()), (200, "app"), "{i}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the mirror delayed the requests: {:?}",
        started.elapsed()
    );
    assert_eq!(t.apps.get("app").received(), 20);
    let shadow = t.apps.get("shadow");
    // On what is asserted, the requests seen: the app counts a request
    // (`received`) a moment before it records it.
    let seen = eventually(Duration::from_secs(10), "10 mirrored requests", || async {
        match shadow.requests() {
            seen if seen.len() == 10 => Ok(seen),
            seen => Err(format!("{} mirrored", seen.len())),
        }
    })
    .await;
    assert_eq!(shadow.received(), 10);
    let mut paths: Vec<String> = seen.iter().map(|r| r.path.clone()).collect();
    paths.sort();
    let mut expected: Vec<String> = (0..20)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("/shadow/orders/{i}?q={i}"))
        .collect();
    expected.sort();
    assert_eq!(paths, expected, "every second request, with the prefix");
    assert!(seen.iter().all(|r| r.method == http::Method::POST));
}

#[tokio::test]
async fn invalid_configs_of_these_plugins_are_rejected_and_the_last_good_one_stays() {
    let t = Standalone::start("plug_extra_invalid", &["app"], |apps| {
        web(
            "good",
            vec![route()
                .plugin("ua-restriction", json!({"denylist": ["^curl/7\\."]}))
                .to("app")],
            apps.one_backend_each(),
        )
    })
    .await;
    let at = "outbound.services[0].ports[0].routes[0].plugins";
    let cases = [
        (
            "traffic-split",
            json!({"rules": [{"weighted_upstreams": [{"upstream_id": "nope"}]}]}),
            format!("{at}.traffic-split.rules[0].weighted_upstreams[0].upstream_id: plugin traffic-split: \"nope\" is not one of backends"),
        ),
        (
            "ua-restriction",
            json!({"denylist": ["ok", "(unclosed"]}),
            format!("{at}.ua-restriction.denylist[1]: plugin ua-restriction: does not compile"),
        ),
        (
            "referer-restriction",
            json!({"whitelist": ["bad host"]}),
            format!("{at}.referer-restriction.whitelist[0]: plugin referer-restriction: \"bad host\" is not a host"),
        ),
        (
            "csrf",
            json!({"expires": 60}),
            format!("{at}.csrf: plugin csrf: missing field `key`"),
        ),
        (
            "proxy-mirror",
            json!({"host": "http://shadow.default.svc"}),
            format!("{at}.proxy-mirror.host: plugin proxy-mirror: \"http://shadow.default.svc\" is not http://<ip>[:port]"),
        ),
        (
            "response-rewrite",
            json!({"body": "x", "filters": [{"regex": "a", "replace": "b"}]}),
            format!("{at}.response-rewrite.filters: plugin response-rewrite: is not allowed with body"),
        ),
        (
            "key-auth",
            json!({"anonymous_consumer": "ghost"}),
            format!("{at}.key-auth.anonymous_consumer: plugin key-auth: \"ghost\" is not one of consumers[].username"),
        ),
    ];
    let mut c = t.http();
    for (i, (name, plugin_config, error)) in cases.into_iter().enumerate() {
        let config = web(
            &format!("bad-{i}"),
            vec![route().plugin(name, plugin_config).to("app")],
            t.apps.one_backend_each(),
        );
        t.file.write(&config);
        let dump = eventually(Duration::from_secs(5), "the rejection", || async {
            let dump = config_dump(&t.proxy).await;
            match &dump.last_error {
                Some(e) if e.starts_with(&error) => Ok(dump),
                other => Err(format!("lastError {other:?}, want {error}")),
            }
        })
        .await;
        assert_eq!(dump.version, "good", "{name}: the last good config stays");
        let refused = c
            .send(&Req::get("/").header("user-agent", "curl/7.1"))
            .await
            .expect("request");
        assert_eq!(
            refused.status, 403,
            "{name}: the old ua-restriction still runs"
        );
        let passed = c
            .send(&Req::get("/").header("user-agent", "curl/8.1"))
            .await
            .expect("request");
        assert_eq!(passed.status, 200, "{name}");
    }
    assert_eq!(t.apps.get("app").received(), 7);
}

#[tokio::test]
async fn response_rewrite_filters_rewrite_the_body_the_client_gets() {
    let t = Standalone::start("plug_resp_filters", &["catalog"], |apps| {
        web(
            "v1",
            vec![route()
                .plugin(
                    "response-rewrite",
                    json!({"filters": [
                        {"regex": "a", "scope": "global", "replace": "4"},
                        {"regex": "^(C)", "replace": "[$1]", "options": "i"}
                    ]}),
                )
                .to("catalog")],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    let reply = c.get("/items").await.expect("request");
    assert_eq!((reply.status, reply.body.as_str()), (200, "[c]4t4log"));
    assert_eq!(
        reply.header("content-length"),
        None,
        "the app's length is dropped"
    );
    assert_eq!(reply.header("x-pod"), Some("catalog"), "headers untouched");
    assert_eq!(t.apps.get("catalog").received(), 1);
}
