//! Route selection and route filters: the pure core of HTTP routing.
//!
//! This module owns turning one service port's `routes` (from the mesh
//! config) into a [`RouteTable`], choosing the route for a request with
//! Gateway API precedence ([`RouteTable::select`]), choosing a weighted
//! backend ([`CompiledRoute::pick_backend`]), and applying the route's
//! filters to request and response heads ([`filters`]). Everything here is a
//! pure function of a config snapshot and a request: no I/O, no locks, no
//! clocks.
//!
//! It does not own finding the service for a connection, load balancing
//! over endpoints, timeouts, retries, sending mirrored copies, or writing
//! the 404/500/redirect responses; the HTTP layer does those with what this
//! module returns.
//!
//! A table is compiled once per config, when the config is loaded, outside
//! any lock: regexes are compiled and anchored, header names and values are
//! parsed, and the (route, match) pairs are sorted by precedence so that
//! `select` is a linear scan that stops at the first hit.

mod filters;
mod select;
mod split;

use std::sync::Arc;

use remora_api::{Retry, Route, Timeouts};

pub(crate) use filters::{
    apply_request_filters, apply_response_filters, FilterError, FilterOutcome, Filters, Mirror,
};
pub(crate) use select::Selected;
pub(crate) use split::{CompiledBackend, Split};

use select::MatchEntry;

/// One service port's routes, compiled and sorted by precedence.
#[derive(Debug)]
pub(crate) struct RouteTable {
    routes: Vec<CompiledRoute>,
    /// Every (route, match) pair, highest precedence first.
    entries: Vec<MatchEntry>,
}

/// One route of a [`RouteTable`], ready for requests.
#[derive(Debug)]
pub(crate) struct CompiledRoute {
    name: Option<String>,
    /// The `route` metric label, made once.
    label: Arc<str>,
    filters: Filters,
    backends: Split,
    timeouts: Timeouts,
    retry: Option<Retry>,
}

/// A route that cannot be compiled. The config validator in `remora-api`
/// rejects these first, so seeing one means a config skipped validation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    #[error("routes[{route}].{field}: regex {pattern:?} does not compile: {source}; fix the pattern (Rust regex syntax)")]
    Regex {
        route: usize,
        field: String,
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("routes[{route}].{field}: {reason}")]
    Invalid {
        route: usize,
        field: String,
        reason: String,
    },
}

impl RouteError {
    /// The index in the port's `routes` of the route at fault.
    #[cfg(test)]
    pub(crate) fn route_index(&self) -> usize {
        match self {
            Self::Regex { route, .. } | Self::Invalid { route, .. } => *route,
        }
    }
}

/// A compile error without its route index; [`RouteTable::new`] adds it.
#[derive(Debug)]
enum FieldError {
    Regex {
        field: String,
        pattern: String,
        source: Box<regex::Error>,
    },
    Invalid {
        field: String,
        reason: String,
    },
}

impl FieldError {
    fn in_route(self, route: usize) -> RouteError {
        match self {
            Self::Regex {
                field,
                pattern,
                source,
            } => RouteError::Regex {
                route,
                field,
                pattern,
                source,
            },
            Self::Invalid { field, reason } => RouteError::Invalid {
                route,
                field,
                reason,
            },
        }
    }
}

impl RouteTable {
    /// Compiles a service port's routes. Fails on the first route that
    /// cannot be compiled, naming it by index.
    pub(crate) fn new(routes: &[Route]) -> Result<Self, RouteError> {
        let mut compiled = Vec::with_capacity(routes.len());
        let mut entries = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let route_entries =
                select::compile_matches(index, &route.matches).map_err(|e| e.in_route(index))?;
            entries.extend(route_entries);
            compiled.push(CompiledRoute::new(route).map_err(|e| e.in_route(index))?);
        }
        entries.sort_by_key(MatchEntry::rank);
        Ok(Self {
            routes: compiled,
            entries,
        })
    }

    /// The routes in config order.
    pub(crate) fn routes(&self) -> &[CompiledRoute] {
        &self.routes
    }

    /// The highest-precedence route whose matches accept the request, or
    /// `None` (the caller answers 404).
    pub(crate) fn select(&self, req: &http::request::Parts) -> Option<Selected<'_>> {
        let request = select::RequestView::new(req);
        self.entries
            .iter()
            .find(|entry| entry.matches(&request))
            .and_then(|entry| {
                let route = self.routes.get(entry.route_index())?;
                Some(Selected {
                    route,
                    route_index: entry.route_index(),
                    matched_prefix: entry.matched_prefix(),
                })
            })
    }
}

impl CompiledRoute {
    fn new(route: &Route) -> Result<Self, FieldError> {
        Ok(Self {
            name: route.name.clone(),
            label: Arc::from(route.name.as_deref().unwrap_or_default()),
            filters: Filters::compile(&route.filters, "filters")?,
            backends: Split::compile(&route.backend_refs)?,
            // Gateway API: a timeout of zero disables that timeout.
            timeouts: Timeouts {
                request: route.timeouts.request.filter(|d| !d.is_zero()),
                backend_request: route.timeouts.backend_request.filter(|d| !d.is_zero()),
            },
            retry: route.retry.clone(),
        })
    }

    /// The route's name, for metrics and logs.
    /// The route's name as a metric label ("" when unnamed).
    pub(crate) fn label(&self) -> &Arc<str> {
        &self.label
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The route's own filters (backends may add their own).
    pub(crate) fn filters(&self) -> &Filters {
        &self.filters
    }

    pub(crate) fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    pub(crate) fn retry(&self) -> Option<&Retry> {
        self.retry.as_ref()
    }

    /// Chooses a backend by weight. `None` when the route has no backend
    /// with a weight above 0: the caller answers 500, as Gateway API says.
    pub(crate) fn pick_backend<R: rand::Rng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Option<&CompiledBackend> {
        self.backends.pick(rng)
    }

    /// The backend at `point` of the cumulative weight line; `point` is
    /// taken modulo the total weight. Deterministic, for callers with their
    /// own source of randomness and for tests.
    #[cfg(test)]
    pub(crate) fn backend_at(&self, point: u64) -> Option<&CompiledBackend> {
        self.backends.at(point)
    }

    /// The sum of the backends' weights.
    #[cfg(test)]
    pub(crate) fn total_weight(&self) -> u64 {
        self.backends.total_weight()
    }
}

#[cfg(test)]
mod tests {
    use remora_api::{MeshConfig, Route};

    use super::*;

    /// Compiles routes written as YAML, as in a mesh config.
    pub(super) fn table(yaml: &str) -> RouteTable {
        let routes: Vec<Route> =
            serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        RouteTable::new(&routes).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    #[test]
    fn a_zero_timeout_is_no_timeout() {
        let routes: Vec<Route> = serde_json::from_str(
            r#"[{"timeouts": {"request": "0s", "backendRequest": "250ms"}, "backendRefs": [{"name": "a"}]},
                {"timeouts": {"request": "2s", "backendRequest": "0s"}, "backendRefs": [{"name": "a"}]}]"#,
        )
        .expect("routes");
        let table = RouteTable::new(&routes).expect("compiles");
        let [first, second] = table.routes() else {
            panic!("two routes");
        };
        assert_eq!(first.timeouts().request, None);
        assert_eq!(
            first.timeouts().backend_request,
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(
            second.timeouts().request,
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(second.timeouts().backend_request, None);
    }

    pub(super) fn request(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> http::request::Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(())
            .unwrap_or_else(|e| panic!("{method} {uri}: {e}"))
            .into_parts()
            .0
    }

    /// The name of the route chosen for a request, if any.
    pub(super) fn chosen<'t>(table: &'t RouteTable, req: &http::request::Parts) -> Option<&'t str> {
        table
            .select(req)
            .map(|s| s.route.name().unwrap_or("<unnamed>"))
    }

    const EXAMPLE: &str = include_str!("../../api/examples/mesh.yaml");

    /// The documented example, end to end: select, filter, split.
    #[test]
    fn example_config_routes_as_documented() {
        let config = MeshConfig::from_yaml(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        let reviews = RouteTable::new(&config.outbound.services[0].ports[0].routes)
            .unwrap_or_else(|e| panic!("{e}"));
        let host = [("host", "reviews:9080")];

        let testers = request(
            "GET",
            "/reviews/1",
            &[("host", "reviews:9080"), ("X-User-Group", "testers")],
        );
        assert_eq!(chosen(&reviews, &testers), Some("reviews-testers"));
        assert_eq!(
            chosen(&reviews, &request("GET", "/reviews/1", &host)),
            Some("reviews-default")
        );

        // The legacy path answers a redirect without a backend.
        let mut old = request("GET", "/old-reviews?page=2", &host);
        let selected = reviews.select(&old).unwrap_or_else(|| panic!("no route"));
        assert_eq!(selected.route.name(), Some("reviews-legacy-redirect"));
        assert!(selected.route.filters().redirects());
        let outcome =
            apply_request_filters(selected.route.filters(), &mut old, selected.matched_prefix);
        let Ok(FilterOutcome::Redirect(redirect)) = outcome else {
            panic!("expected a redirect, got {outcome:?}");
        };
        assert_eq!(redirect.status(), http::StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            redirect.headers()["location"],
            "http://reviews:9080/reviews?page=2"
        );

        // The API route: headers modified, a 10% mirror, a 90/10 split.
        let mut api = request(
            "GET",
            "/api/v1/reviews/7",
            &[("host", "reviews"), ("x-debug", "1")],
        );
        let selected = reviews.select(&api).unwrap_or_else(|| panic!("no route"));
        assert_eq!(selected.route.name(), Some("reviews-api"));
        let outcome =
            apply_request_filters(selected.route.filters(), &mut api, selected.matched_prefix);
        assert!(
            matches!(outcome, Ok(FilterOutcome::Continue)),
            "{outcome:?}"
        );
        assert_eq!(api.headers["x-api-version"], "1");
        assert!(!api.headers.contains_key("x-debug"));
        let mirrors = selected.route.filters().mirrors();
        assert_eq!(
            (mirrors[0].backend(), mirrors[0].percent()),
            ("reviews-shadow", 10)
        );
        assert_eq!(selected.route.total_weight(), 100);
        assert_eq!(
            selected.route.backend_at(89).map(CompiledBackend::name),
            Some("reviews-v1")
        );
        let canary = selected
            .route
            .backend_at(90)
            .unwrap_or_else(|| panic!("no backend"));
        assert_eq!(canary.name(), "reviews-v2");
        let outcome = apply_request_filters(canary.filters(), &mut api, selected.matched_prefix);
        assert!(
            matches!(outcome, Ok(FilterOutcome::Continue)),
            "{outcome:?}"
        );
        assert_eq!(api.headers["x-canary"], "true");

        // Regex paths rank below every prefix but the catch-all `/`, so a
        // request that only the regex match accepts goes to the regex route.
        let post = request("POST", "/api/v1/reviews/7?format=json", &host);
        assert_eq!(chosen(&reviews, &post), Some("reviews-api"));

        // Prefix rewrite and hostname rewrite.
        let mut v2 = request("GET", "/v2/reviews?x=1", &host);
        let selected = reviews.select(&v2).unwrap_or_else(|| panic!("no route"));
        assert_eq!(selected.route.name(), Some("reviews-v2-rewrite"));
        assert_eq!(selected.matched_prefix, Some("/v2"));
        let outcome =
            apply_request_filters(selected.route.filters(), &mut v2, selected.matched_prefix);
        assert!(
            matches!(outcome, Ok(FilterOutcome::Continue)),
            "{outcome:?}"
        );
        assert_eq!(v2.uri, "/api/v1/reviews?x=1");
        assert_eq!(v2.headers["host"], "reviews-v2.default.svc.cluster.local");

        // gRPC: the exact method, then the regex service with a tenant.
        let ratings = RouteTable::new(&config.outbound.services[1].ports[0].routes)
            .unwrap_or_else(|e| panic!("{e}"));
        let get = request(
            "POST",
            "http://ratings:9090/ratings.v1.Ratings/GetRating",
            &[],
        );
        assert_eq!(ratings.select(&get).map(|s| s.route_index), Some(0));
        let list = request(
            "POST",
            "/ratings.v1.Ratings/ListRatings",
            &[("x-tenant", "acme")],
        );
        assert_eq!(ratings.select(&list).map(|s| s.route_index), Some(1));
        let other = request(
            "POST",
            "/ratings.v1.Ratings/ListRatings",
            &[("x-tenant", "initech")],
        );
        assert!(ratings.select(&other).is_none());
    }

    /// A route that skipped validation fails to compile, naming its index
    /// and field.
    #[test]
    fn compile_errors_name_the_route_and_field() {
        let routes: Vec<Route> = serde_saphyr::from_str(
            "- matches: [{path: {type: RegularExpression, value: '/ok/.*'}}]\n\
             - matches: [{path: {type: PathPrefix}}, {path: {type: RegularExpression, value: '/bad/('}}]",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = RouteTable::new(&routes).unwrap_err();
        assert_eq!(err.route_index(), 1);
        assert!(
            matches!(err, RouteError::Regex { ref field, .. } if field == "matches[1].path.value"),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("routes[1].matches[1].path.value: regex \"/bad/(\""),
            "{err}"
        );

        let routes: Vec<Route> = serde_saphyr::from_str(
            "- backendRefs:\n  - name: a\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {set: [{name: 'bad name', value: x}]}",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = RouteTable::new(&routes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "routes[0].backendRefs[0].filters[0].requestHeaderModifier.set[0].name: \"bad name\" is not a valid HTTP header name"
        );

        let routes: Vec<Route> = serde_saphyr::from_str(
            "- filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = RouteTable::new(&routes).unwrap_err();
        assert!(
            err.to_string()
                .contains("filters[0].requestRedirect.statusCode"),
            "{err}"
        );
    }
}
