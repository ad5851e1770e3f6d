//! HTTP routing on the outbound path: each kind of match picks the backend
//! it names, Gateway API precedence decides between routes that both match,
//! filters change what the backend and the client see, and services are
//! found by host name as well as by virtual address.
//!
//! Every backend is an app that answers with its own name, so the response
//! tells which route won. Precedence tests list the route that should win
//! *last*, so that config order alone cannot make them pass.

use std::collections::BTreeMap;

use http::Method;
use remora_api::HttpMethod;
use remora_e2e::http_apps::{HttpClient, Req, HTTP_ERRORS, REQUESTS, REQUEST_DURATION_COUNT};
use remora_e2e::mesh_config::{
    host_service, mesh, redirect, request_headers, response_headers, rewrite_prefix, round_robin,
    route, service, vip, wait_version, web, ConfigFile, Match, Standalone, SERVICE, VIP, VIP_PORT,
};
use remora_e2e::{TestNet, INBOUND};

/// Sends `req` and returns which app answered, failing on anything but 200.
async fn who(client: &mut HttpClient, req: Req) -> String {
    let reply = client
        .send(&req)
        .await
        .unwrap_or_else(|e| panic!("{req:?}: {e}"));
    assert_eq!(
        reply.status,
        200,
        "{req:?}: status {} ({:?}), body {:?}",
        reply.status,
        reply.remora_error(),
        reply.body
    );
    assert_eq!(reply.body, reply.pod(), "{req:?}: body and x-pod disagree");
    reply.body
}

#[tokio::test]
async fn exact_prefix_and_regex_paths_each_pick_their_backend() {
    let t = Standalone::start("route_paths", &["exact", "prefix", "regex"], |apps| {
        web(
            "v1",
            vec![
                route().matching(Match::exact("/exact")).to("exact"),
                route().matching(Match::prefix("/prefix")).to("prefix"),
                route().matching(Match::regex("/items/[0-9]+")).to("regex"),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    for (path, app) in [
        ("/exact", "exact"),
        ("/prefix", "prefix"),
        ("/prefix/", "prefix"),
        ("/prefix/deeper/still", "prefix"),
        ("/items/42", "regex"),
        ("/items/7?view=full", "regex"),
    ] {
        assert_eq!(who(&mut c, Req::get(path)).await, app, "GET {path}");
    }
    // Exact is the whole path, prefixes match whole segments, and a regex
    // must match the whole path: none of these has a route.
    for path in ["/exact/more", "/prefixed", "/items/42x", "/items/"] {
        let reply = c.get(path).await.expect("request");
        assert_eq!(
            (reply.status, reply.remora_error()),
            (404, "no_route"),
            "GET {path} must match no route; body {:?}",
            reply.body
        );
    }
}

#[tokio::test]
async fn header_method_and_query_matches_pick_their_backend() {
    let t = Standalone::start(
        "route_conditions",
        &["header", "hregex", "method", "query", "default"],
        |apps| {
            web(
                "v1",
                vec![
                    route()
                        .matching(Match::prefix("/h").header("x-env", "staging"))
                        .to("header"),
                    route()
                        .matching(Match::prefix("/h").header_regex("x-env", "dev-[0-9]+"))
                        .to("hregex"),
                    route()
                        .matching(Match::prefix("/m").method(HttpMethod::Post))
                        .to("method"),
                    route()
                        .matching(Match::prefix("/q").query("tier", "gold"))
                        .to("query"),
                    route().to("default"),
                ],
                apps.one_backend_each(),
            )
        },
    )
    .await;
    let mut c = t.http();
    let cases = [
        (Req::get("/h").header("x-env", "staging"), "header"),
        // Header names are case-insensitive.
        (Req::get("/h").header("X-Env", "staging"), "header"),
        (Req::get("/h").header("x-env", "dev-12"), "hregex"),
        // A regex must match the whole value.
        (Req::get("/h").header("x-env", "dev-12b"), "default"),
        // Values are exact and case-sensitive.
        (Req::get("/h").header("x-env", "Staging"), "default"),
        (Req::get("/h"), "default"),
        (Req::new(Method::POST, "/m"), "method"),
        (Req::get("/m"), "default"),
        (Req::new(Method::PUT, "/m"), "default"),
        (Req::get("/q?tier=gold"), "query"),
        (Req::get("/q?a=1&tier=gold&b=2"), "query"),
        (Req::get("/q?tier=silver"), "default"),
        // Query parameter names are case-sensitive.
        (Req::get("/q?Tier=gold"), "default"),
        (Req::get("/q"), "default"),
    ];
    for (req, app) in cases {
        let what = format!("{req:?}");
        assert_eq!(who(&mut c, req).await, app, "{what}");
    }
}

#[tokio::test]
async fn exact_path_beats_a_longer_prefix_with_more_conditions() {
    // The prefix "/foo/" is longer than the exact "/foo" and also has a
    // method and a header; the exact path still wins (rule 1 comes first).
    let t = Standalone::start("prec_exact", &["prefix", "exact"], |apps| {
        web(
            "v1",
            vec![
                route()
                    .matching(
                        Match::prefix("/foo/")
                            .method(HttpMethod::Get)
                            .header("x-a", "1"),
                    )
                    .to("prefix"),
                route().matching(Match::exact("/foo")).to("exact"),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    assert_eq!(
        who(&mut c, Req::get("/foo").header("x-a", "1")).await,
        "exact"
    );
    // The prefix route does work for what only it matches.
    assert_eq!(
        who(&mut c, Req::get("/foo/bar").header("x-a", "1")).await,
        "prefix"
    );
}

#[tokio::test]
async fn longest_prefix_wins() {
    let t = Standalone::start("prec_prefix", &["short", "middle", "long"], |apps| {
        web(
            "v1",
            vec![
                route().matching(Match::prefix("/api")).to("short"),
                route().matching(Match::prefix("/api/v1")).to("middle"),
                route().matching(Match::prefix("/api/v1/users")).to("long"),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    for (path, app) in [
        ("/api/v1/users/7", "long"),
        ("/api/v1/users", "long"),
        ("/api/v1/usersx", "middle"),
        ("/api/v1", "middle"),
        ("/api/v2", "short"),
        ("/api", "short"),
    ] {
        assert_eq!(who(&mut c, Req::get(path)).await, app, "GET {path}");
    }
}

#[tokio::test]
async fn a_method_match_beats_none_and_beats_more_headers() {
    let t = Standalone::start("prec_method", &["none", "headers", "get"], |apps| {
        web(
            "v1",
            vec![
                route().matching(Match::prefix("/x")).to("none"),
                // Two header conditions rank below a method (rule 3 before 4).
                route()
                    .matching(Match::prefix("/x").header("x-a", "1").header("x-b", "1"))
                    .to("headers"),
                route()
                    .matching(Match::prefix("/x").method(HttpMethod::Get))
                    .to("get"),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    assert_eq!(who(&mut c, Req::get("/x")).await, "get");
    assert_eq!(
        who(&mut c, Req::get("/x").header("x-a", "1").header("x-b", "1")).await,
        "get"
    );
    assert_eq!(
        who(
            &mut c,
            Req::new(Method::POST, "/x")
                .header("x-a", "1")
                .header("x-b", "1")
        )
        .await,
        "headers"
    );
    assert_eq!(who(&mut c, Req::new(Method::POST, "/x")).await, "none");
}

#[tokio::test]
async fn more_header_matches_win() {
    let t = Standalone::start("prec_headers", &["one", "two"], |apps| {
        web(
            "v1",
            vec![
                route()
                    .matching(Match::prefix("/").header("x-a", "1"))
                    .to("one"),
                route()
                    .matching(Match::prefix("/").header("x-a", "1").header("x-b", "1"))
                    .to("two"),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    assert_eq!(
        who(&mut c, Req::get("/").header("x-a", "1").header("x-b", "1")).await,
        "two"
    );
    assert_eq!(who(&mut c, Req::get("/").header("x-a", "1")).await, "one");
}

#[tokio::test]
async fn more_query_matches_win() {
    let t = Standalone::start("prec_query", &["one", "two"], |apps| {
        web(
            "v1",
            vec![
                route()
                    .matching(Match::prefix("/").query("a", "1"))
                    .to("one"),
                route()
                    .matching(Match::prefix("/").query("a", "1").query("b", "1"))
                    .to("two"),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    assert_eq!(who(&mut c, Req::get("/?a=1&b=1")).await, "two");
    assert_eq!(who(&mut c, Req::get("/?b=1&a=1")).await, "two");
    assert_eq!(who(&mut c, Req::get("/?a=1")).await, "one");
}

#[tokio::test]
async fn the_earlier_rule_wins_a_tie() {
    // Two services with the same two equally specific routes in opposite
    // orders: a request matching both goes to whichever is listed first.
    let t = Standalone::start("prec_order", &["a", "b"], |apps| {
        let tie = |first: &str, second: &str| {
            vec![
                route()
                    .matching(Match::prefix("/").header("x-a", "1"))
                    .to(first)
                    .build(),
                route()
                    .matching(Match::prefix("/").header("x-b", "1"))
                    .to(second)
                    .build(),
            ]
        };
        let mut config = mesh("v1");
        config
            .outbound
            .services
            .push(service("ab.default", VIP, VIP_PORT, tie("a", "b")));
        config.outbound.services.push(service(
            "ba.default",
            "10.96.0.11".parse().unwrap(),
            VIP_PORT,
            tie("b", "a"),
        ));
        config.backends = apps.one_backend_each();
        config
    })
    .await;
    let both = || Req::get("/").header("x-a", "1").header("x-b", "1");
    let mut ab = t.http();
    let mut ba = HttpClient::new(&t.client, "10.96.0.11:80".parse().unwrap());
    assert_eq!(who(&mut ab, both()).await, "a");
    assert_eq!(who(&mut ba, both()).await, "b");
}

#[tokio::test]
async fn a_request_no_route_matches_gets_404_and_reaches_no_backend() {
    let t = Standalone::start("route_404", &["api"], |apps| {
        web(
            "v1",
            vec![route()
                .name("api")
                .matching(Match::prefix("/api"))
                .to("api")],
            apps.one_backend_each(),
        )
    })
    .await;
    let before = t.proxy.metrics().await;
    let reply = t.http().get("/elsewhere").await.expect("GET /elsewhere");
    assert_eq!(reply.status, 404, "body {:?}", reply.body);
    assert_eq!(reply.remora_error(), "no_route");
    assert!(!reply.body.is_empty(), "a short text body says why");
    assert_eq!(t.apps.total_received(), 0, "no backend was contacted");
    let after = t
        .proxy
        .wait_metrics("the no_route error counted", |m| {
            m.since(&before, HTTP_ERRORS, &[("reason", "no_route")]) >= 1.0
        })
        .await;
    assert_eq!(
        after.since(
            &before,
            HTTP_ERRORS,
            &[("direction", "outbound"), ("reason", "no_route")]
        ),
        1.0,
        "{after}"
    );
}

#[tokio::test]
async fn requests_are_counted_by_service_route_backend_and_status() {
    let t = Standalone::start("route_metrics", &["api"], |apps| {
        web(
            "v1",
            vec![route()
                .name("api-route")
                .matching(Match::prefix("/api"))
                .to("api")],
            apps.one_backend_each(),
        )
    })
    .await;
    let before = t.proxy.metrics().await;
    let mut c = t.http();
    for _ in 0..3 {
        assert_eq!(who(&mut c, Req::get("/api")).await, "api");
    }
    let labels = [
        ("direction", "outbound"),
        ("service", SERVICE),
        ("route", "api-route"),
        ("backend", "api"),
        ("status", "200"),
    ];
    let after = t
        .proxy
        .wait_metrics("three requests counted", |m| {
            m.since(&before, REQUESTS, &labels) >= 3.0
        })
        .await;
    assert_eq!(after.since(&before, REQUESTS, &labels), 3.0, "{after}");
    // The latency histogram observed the same three requests.
    assert_eq!(
        after.since(&before, REQUEST_DURATION_COUNT, &labels[..4]),
        3.0,
        "{after}"
    );
}

#[tokio::test]
async fn request_header_modifier_is_what_the_backend_sees() {
    let t = Standalone::start("filter_req_headers", &["api"], |apps| {
        web(
            "v1",
            vec![route()
                .filter(request_headers(
                    &[("x-set", "new")],
                    &[("x-add", "added")],
                    &["x-remove"],
                ))
                .to("api")],
            apps.one_backend_each(),
        )
    })
    .await;
    let req = Req::get("/")
        .header("x-set", "old")
        .header("x-add", "original")
        .header("x-remove", "secret")
        .header("x-keep", "kept");
    assert_eq!(who(&mut t.http(), req).await, "api");
    let seen = t.apps.get("api").last_request().expect("the app got it");
    assert_eq!(seen.header_values("x-set"), ["new"], "set overwrites");
    assert_eq!(
        seen.header_values("x-add"),
        ["original", "added"],
        "add appends"
    );
    assert!(
        seen.header_values("x-remove").is_empty(),
        "remove removes: {:?}",
        seen.headers
    );
    assert_eq!(seen.header_values("x-keep"), ["kept"], "others untouched");
}

#[tokio::test]
async fn response_header_modifier_is_what_the_client_sees() {
    let t = Standalone::start("filter_resp_headers", &["api"], |apps| {
        web(
            "v1",
            vec![route()
                .filter(response_headers(
                    &[("content-type", "text/x-set")],
                    &[("x-served-by", "remora")],
                    &["x-pod"],
                ))
                .to("api")],
            apps.one_backend_each(),
        )
    })
    .await;
    let reply = t.http().get("/").await.expect("GET /");
    assert_eq!((reply.status, reply.body.as_str()), (200, "api"));
    assert_eq!(reply.header("content-type"), Some("text/x-set"));
    assert_eq!(reply.header("x-served-by"), Some("remora"));
    assert_eq!(reply.header("x-pod"), None, "x-pod was removed");
}

#[tokio::test]
async fn url_rewrite_replaces_the_matched_prefix_and_the_host() {
    let t = Standalone::start("filter_rewrite", &["api"], |apps| {
        web(
            "v1",
            vec![route()
                .matching(Match::prefix("/old"))
                .filter(rewrite_prefix("/new/v2", Some("api.internal")))
                .to("api")],
            apps.one_backend_each(),
        )
    })
    .await;
    let mut c = t.http();
    for (sent, seen) in [
        ("/old/items?id=7", "/new/v2/items?id=7"),
        ("/old", "/new/v2"),
    ] {
        assert_eq!(who(&mut c, Req::get(sent)).await, "api");
        let request = t.apps.get("api").last_request().expect("the app got it");
        assert_eq!(request.path, seen, "path the backend saw for {sent}");
        assert_eq!(request.header_values("host"), ["api.internal"]);
    }
}

#[tokio::test]
async fn request_redirect_is_answered_by_the_proxy_alone() {
    let t = Standalone::start("filter_redirect", &["api"], |apps| {
        web(
            "v1",
            vec![
                route().matching(Match::exact("/old-page")).filter(redirect(
                    "new.example",
                    "/landing",
                    301,
                )),
                route().to("api"),
            ],
            apps.one_backend_each(),
        )
    })
    .await;
    let reply = t
        .http()
        .send(&Req::get("/old-page").host("shop.example"))
        .await
        .expect("GET /old-page");
    assert_eq!(reply.status, 301, "body {:?}", reply.body);
    // Gateway API: http on port 80 leaves the port out of Location.
    assert_eq!(
        reply.header("location"),
        Some("http://new.example/landing"),
        "{:?}",
        reply.headers
    );
    assert_eq!(t.apps.total_received(), 0, "no backend was contacted");
}

#[tokio::test]
async fn services_are_found_by_host_name_and_others_pass_through() {
    // Two services known only by name, on the port a third, real server
    // listens on. Requests to that server's address are routed by Host when
    // the Host names a service, and reach the server untouched otherwise.
    let net = TestNet::new("route_hostnames");
    let client = net.pod("client");
    let server = net.pod("srv");
    let catalog = server.spawn_http_app(8081, "catalog");
    let orders = server.spawn_http_app(8082, "orders");
    let direct = server.spawn_http_app(8090, "direct");
    let mut config = mesh("v1");
    config.outbound.services.push(host_service(
        "catalog.default",
        &["catalog.internal"],
        8090,
        vec![route().to("catalog").build()],
    ));
    config.outbound.services.push(host_service(
        "orders.default",
        &["orders.internal", "orders"],
        8090,
        vec![route().to("orders").build()],
    ));
    config.backends = BTreeMap::from([
        ("catalog".to_owned(), round_robin(&[catalog.addr()])),
        ("orders".to_owned(), round_robin(&[orders.addr()])),
    ]);
    let file = ConfigFile::new("route_hostnames");
    file.write(&config);
    let proxy = client.mesh_with(&[], &file.proxy_args()).await;
    wait_version(&proxy, "v1").await;

    let mut c = HttpClient::new(&client, direct.addr());
    for (host, app) in [
        ("catalog.internal", "catalog"),
        // Case-insensitive, port stripped.
        ("CATALOG.Internal:8090", "catalog"),
        ("orders.internal", "orders"),
        ("orders", "orders"),
        ("unknown.example", "direct"),
        ("catalog.internal.evil", "direct"),
    ] {
        assert_eq!(
            who(&mut c, Req::get("/").host(host)).await,
            app,
            "Host: {host}"
        );
    }
    assert_eq!(direct.received(), 2, "only the unknown hosts reached it");
}

#[tokio::test]
async fn requests_cross_both_sidecars_to_a_meshed_server() {
    // Client sidecar (routing, filters) -> server sidecar (inbound, HTTP
    // forwarded as is) -> app. The app sees the inbound proxy's address.
    let net = TestNet::new("route_meshed_server");
    let client = net.pod("client");
    let server = net.pod("srv");
    let app = server.spawn_http_app(8080, "meshed");
    let server_file = ConfigFile::new("route_meshed_server_srv");
    server_file.write(&mesh("srv-v1"));
    let server_proxy = server.mesh_with(&[], &server_file.proxy_args()).await;

    let mut config = mesh("v1");
    config.outbound.services.push(service(
        SERVICE,
        VIP,
        VIP_PORT,
        vec![route()
            .name("to-meshed")
            .filter(request_headers(&[("x-from", "client-sidecar")], &[], &[]))
            .to("meshed")
            .build()],
    ));
    config.backends = BTreeMap::from([("meshed".to_owned(), round_robin(&[app.addr()]))]);
    let file = ConfigFile::new("route_meshed_server");
    file.write(&config);
    let client_proxy = client.mesh_with(&[], &file.proxy_args()).await;
    wait_version(&client_proxy, "v1").await;
    let server_before = server_proxy.metrics().await;

    let mut c = HttpClient::new(&client, vip());
    for _ in 0..5 {
        assert_eq!(who(&mut c, Req::get("/hello")).await, "meshed");
    }
    let seen = app.last_request().expect("the app got it");
    assert_eq!(seen.path, "/hello");
    assert_eq!(seen.header_values("x-from"), ["client-sidecar"]);
    // The app sees 127.0.0.6 as its peer; who called is in the headers.
    assert_eq!(
        seen.header_values("x-forwarded-for"),
        [client.ip4().to_string()],
        "the inbound sidecar appends the calling pod's address"
    );
    assert_eq!(seen.header_values("x-forwarded-proto"), ["http"]);
    assert_eq!(app.received(), 5);
    let peers: Vec<String> = app.peers().iter().map(|p| p.ip().to_string()).collect();
    assert!(
        !peers.is_empty() && peers.iter().all(|ip| ip == "127.0.0.6"),
        "the app is reached only through its own sidecar (127.0.0.6): {peers:?}"
    );
    let after = server_proxy
        .wait_metrics("five inbound requests", |m| {
            m.since(&server_before, REQUESTS, INBOUND) >= 5.0
        })
        .await;
    assert_eq!(
        after.since(&server_before, REQUESTS, INBOUND),
        5.0,
        "{after}"
    );
}

#[tokio::test]
async fn a_known_http_port_without_routes_or_backends_goes_to_the_original_destination() {
    // A service listed for its protocol and metrics only: the proxy parses
    // the requests, counts them under the service, and sends each to the
    // address the app dialled.
    let t = Standalone::start("route_port_passthrough", &["direct"], |apps| {
        let mut config = mesh("v1");
        let app = apps.addr("direct");
        config
            .outbound
            .services
            .push(service("direct.default", app.ip(), app.port(), Vec::new()));
        config
    })
    .await;
    let before = t.proxy.metrics().await;
    let mut client = HttpClient::new(&t.client, t.apps.addr("direct"));
    for _ in 0..3 {
        assert_eq!(who(&mut client, Req::get("/as-is")).await, "direct");
    }
    let service = &[("direction", "outbound"), ("service", "direct.default")];
    let after = t
        .proxy
        .wait_metrics("three requests counted", |m| {
            m.since(&before, REQUESTS, service) >= 3.0
        })
        .await;
    assert_eq!(after.since(&before, REQUESTS, service), 3.0, "{after}");
    assert_eq!(t.apps.get("direct").received(), 3);
}
