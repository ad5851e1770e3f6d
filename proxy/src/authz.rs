//! Inbound authorization, compiled from the mesh config's
//! `inbound.authorization` and decided per request (HTTP) or per
//! connection (opaque TCP). A pure core: the caller says who is asking for
//! what, this says allow or deny and which policy and rule decided.
//!
//! Order: a matching deny rule wins; then a matching allow rule; then the
//! default action. On TCP, a rule's HTTP-only conditions (paths, methods)
//! make an allow rule match nothing and a deny rule match regardless, so
//! that an HTTP-shaped deny is never bypassed at L4.

use std::sync::Arc;

use http::Method;
use remora_api::{Authorization, AuthzAction, AuthzRule};

use crate::transport::Identity;

/// Who asks for what.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    /// The identity the client proved over mesh mTLS, if any.
    pub(crate) identity: Option<&'a Identity>,
    /// The app port.
    pub(crate) port: u16,
    /// `Some((path, method))` for an HTTP request, `None` for a TCP
    /// connection.
    pub(crate) http: Option<(&'a str, &'a Method)>,
}

/// The outcome, with what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow,
    Deny {
        /// The policy's name, or `default`.
        policy: Arc<str>,
        /// The rule's index in its policy, or `default`.
        rule: Arc<str>,
    },
}

/// `inbound.authorization`, ready to decide.
#[derive(Debug, Clone, Default)]
pub(crate) struct Authorizer {
    default_deny: bool,
    deny: Vec<Policy>,
    allow: Vec<Policy>,
}

#[derive(Debug, Clone)]
struct Policy {
    name: Arc<str>,
    rules: Vec<(Arc<str>, Rule)>,
}

#[derive(Debug, Clone)]
struct Rule {
    identities: Vec<IdentityPattern>,
    ports: Vec<u16>,
    paths: Vec<String>,
    methods: Vec<Method>,
}

#[derive(Debug, Clone)]
enum IdentityPattern {
    /// Any mesh identity.
    Any,
    Exact(String),
    /// `spiffe://<td>/ns/<namespace>/`: every identity in the namespace.
    Prefix(String),
}

impl Authorizer {
    /// Compiles a validated config (the api crate checked the patterns).
    pub(crate) fn new(config: &Authorization) -> Self {
        let mut authorizer = Authorizer {
            default_deny: config.default_action == AuthzAction::Deny,
            ..Authorizer::default()
        };
        for policy in &config.policies {
            let compiled = Policy {
                name: Arc::from(policy.name.as_str()),
                rules: policy
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| (Arc::from(i.to_string()), Rule::new(rule)))
                    .collect(),
            };
            match policy.action {
                AuthzAction::Deny => authorizer.deny.push(compiled),
                AuthzAction::Allow => authorizer.allow.push(compiled),
            }
        }
        authorizer
    }

    /// Whether anything can be denied: with nothing configured the check is
    /// skipped entirely.
    pub(crate) fn is_open(&self) -> bool {
        !self.default_deny && self.deny.is_empty()
    }

    pub(crate) fn decide(&self, subject: &Subject<'_>) -> Decision {
        for policy in &self.deny {
            for (index, rule) in &policy.rules {
                if rule.matches(subject, true) {
                    return Decision::Deny {
                        policy: policy.name.clone(),
                        rule: index.clone(),
                    };
                }
            }
        }
        let allowed = self.allow.iter().any(|policy| {
            policy
                .rules
                .iter()
                .any(|(_, rule)| rule.matches(subject, false))
        });
        if allowed || !self.default_deny {
            Decision::Allow
        } else {
            let default: Arc<str> = Arc::from("default");
            Decision::Deny {
                policy: default.clone(),
                rule: default,
            }
        }
    }
}

impl Rule {
    fn new(rule: &AuthzRule) -> Self {
        Rule {
            identities: rule
                .identities
                .iter()
                .map(|id| match id.as_str() {
                    "*" => IdentityPattern::Any,
                    id => match id.strip_suffix('*') {
                        Some(prefix) => IdentityPattern::Prefix(prefix.to_owned()),
                        None => IdentityPattern::Exact(id.to_owned()),
                    },
                })
                .collect(),
            ports: rule.ports.clone(),
            paths: rule.paths.clone(),
            methods: rule
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_str().as_bytes()).ok())
                .collect(),
        }
    }

    /// `deny`: whether this rule belongs to a deny policy, which decides
    /// what HTTP-only conditions mean on a TCP connection.
    fn matches(&self, subject: &Subject<'_>, deny: bool) -> bool {
        if !self.identities.is_empty() {
            let Some(identity) = subject.identity else {
                return false;
            };
            let id = identity.as_str();
            let any = self.identities.iter().any(|pattern| match pattern {
                IdentityPattern::Any => true,
                IdentityPattern::Exact(exact) => exact == id,
                IdentityPattern::Prefix(prefix) => id.starts_with(prefix.as_str()),
            });
            if !any {
                return false;
            }
        }
        if !self.ports.is_empty() && !self.ports.contains(&subject.port) {
            return false;
        }
        let http_only = !self.paths.is_empty() || !self.methods.is_empty();
        match subject.http {
            None if http_only => deny,
            None => true,
            Some((path, method)) => {
                (self.paths.is_empty() || self.paths.iter().any(|p| path_has_prefix(path, p)))
                    && (self.methods.is_empty() || self.methods.contains(method))
            }
        }
    }
}

/// Segment-wise prefix: `/admin` covers `/admin` and `/admin/x`, not
/// `/administrator`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorizer(yaml: &str) -> Authorizer {
        let config: Authorization = serde_saphyr::from_str(yaml).expect("authorization parses");
        Authorizer::new(&config)
    }

    fn http<'a>(
        id: Option<&'a Identity>,
        port: u16,
        path: &'a str,
        method: &'a Method,
    ) -> Subject<'a> {
        Subject {
            identity: id,
            port,
            http: Some((path, method)),
        }
    }

    fn tcp(id: Option<&Identity>, port: u16) -> Subject<'_> {
        Subject {
            identity: id,
            port,
            http: None,
        }
    }

    fn denied(policy: &str, rule: &str) -> Decision {
        Decision::Deny {
            policy: policy.into(),
            rule: rule.into(),
        }
    }

    const A: &str = "spiffe://cluster.local/ns/shop/sa/client";
    const C: &str = "spiffe://cluster.local/ns/other/sa/client";

    #[test]
    fn nothing_configured_allows_everything() {
        let a = Authorizer::default();
        assert!(a.is_open());
        assert_eq!(a.decide(&tcp(None, 80)), Decision::Allow);
    }

    #[test]
    fn deny_wins_then_allow_then_default() {
        let a = authorizer(
            "defaultAction: deny
policies:
  - name: shop
    action: allow
    rules: [{ identities: ['spiffe://cluster.local/ns/shop/*'] }]
  - name: no-admin
    action: deny
    rules:
      - { ports: [9999] }
      - { paths: [/admin], methods: [POST] }
",
        );
        let (a_id, c_id) = (Identity::new(A), Identity::new(C));
        let get = Method::GET;
        let post = Method::POST;
        assert!(!a.is_open());
        assert_eq!(a.decide(&http(Some(&a_id), 80, "/", &get)), Decision::Allow);
        assert_eq!(
            a.decide(&http(Some(&a_id), 80, "/admin/x", &get)),
            Decision::Allow
        );
        assert_eq!(
            a.decide(&http(Some(&a_id), 80, "/admin/x", &post)),
            denied("no-admin", "1")
        );
        assert_eq!(
            a.decide(&http(Some(&a_id), 80, "/administrator", &post)),
            Decision::Allow
        );
        assert_eq!(
            a.decide(&http(Some(&a_id), 9999, "/", &get)),
            denied("no-admin", "0")
        );
        assert_eq!(
            a.decide(&http(Some(&c_id), 80, "/", &get)),
            denied("default", "default")
        );
        assert_eq!(
            a.decide(&http(None, 80, "/", &get)),
            denied("default", "default")
        );
        // On TCP the HTTP-only deny rule matches regardless; the namespace
        // allow still admits A on other connections... except that the deny
        // comes first.
        assert_eq!(a.decide(&tcp(Some(&a_id), 80)), denied("no-admin", "1"));
    }

    #[test]
    fn http_only_allow_rules_never_match_tcp() {
        let a = authorizer(
            "defaultAction: deny
policies:
  - { name: web, action: allow, rules: [{ identities: ['*'], paths: [/] }] }
  - { name: db, action: allow, rules: [{ identities: ['spiffe://cluster.local/ns/shop/sa/client'], ports: [5432] }] }
",
        );
        let a_id = Identity::new(A);
        let c_id = Identity::new(C);
        assert_eq!(
            a.decide(&http(Some(&c_id), 80, "/x", &Method::GET)),
            Decision::Allow
        );
        assert_eq!(
            a.decide(&tcp(Some(&c_id), 80)),
            denied("default", "default")
        );
        assert_eq!(a.decide(&tcp(Some(&a_id), 5432)), Decision::Allow);
        assert_eq!(
            a.decide(&tcp(Some(&c_id), 5432)),
            denied("default", "default")
        );
    }

    #[test]
    fn a_namespace_wildcard_does_not_cover_a_longer_namespace() {
        let a = authorizer(
            "defaultAction: deny
policies: [{ name: shop, action: allow, rules: [{ identities: ['spiffe://cluster.local/ns/shop/*'] }] }]
",
        );
        let shopping = Identity::new("spiffe://cluster.local/ns/shopping/sa/client");
        assert_eq!(
            a.decide(&tcp(Some(&shopping), 80)),
            denied("default", "default")
        );
        let shop = Identity::new(A);
        assert_eq!(a.decide(&tcp(Some(&shop), 80)), Decision::Allow);
    }
}
