//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Owns parsing, validation and formatting of the identity that the CA puts in
//! a leaf's only URI SAN. It does not decide who may have which identity (that
//! is `auth`), nor build certificates (that is `ca`).

use std::fmt;

/// A trust domain or a Kubernetes name was not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error(
        "trust domain {0:?} is not valid: use lowercase letters, digits, '.', '-' and '_' (e.g. cluster.local)"
    )]
    TrustDomain(String),
    #[error(
        "{what} {value:?} is not a Kubernetes name: use 1-63 lowercase letters, digits and '-' (253 with '.' for a service account)"
    )]
    Name { what: &'static str, value: String },
    #[error("{0:?} is not a SPIFFE workload id of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    Uri(String),
}

/// A validated workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl Identity {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        validate_label("namespace", namespace, 63, false)?;
        validate_label("service account", service_account, 253, true)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// Parses a URI as written in a SAN. Strict: no query, fragment, port,
    /// userinfo, percent-escape or trailing slash.
    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::Uri(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        Self::new(td, ns, sa).map_err(|_| bad())
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// SPIFFE trust domains: lowercase letters, digits, '.', '-', '_'; at most 255.
pub fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::TrustDomain(td.to_owned()))
    }
}

/// Kubernetes names: DNS labels (namespaces) or DNS subdomains (service accounts).
fn validate_label(
    what: &'static str,
    value: &str,
    max: usize,
    dots: bool,
) -> Result<(), IdentityError> {
    let bytes = value.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = !value.is_empty()
        && value.len() <= max
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && bytes.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Name {
            what,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_back() {
        let id = Identity::new("cluster.local", "default", "web").unwrap();
        assert_eq!(id.uri(), "spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(Identity::parse_uri(&id.uri()).unwrap(), id);
    }

    #[test]
    fn refuses_lookalikes() {
        for uri in [
            "spiffe://cluster.local/ns/default/sa/web/",
            "spiffe://cluster.local/ns/default/sa/web?x=1",
            "spiffe://cluster.local/ns/default/sa/web#f",
            "spiffe://cluster.local:443/ns/default/sa/web",
            "spiffe://user@cluster.local/ns/default/sa/web",
            "spiffe://cluster.local/ns/Default/sa/web",
            "spiffe://cluster.local/ns/default/sa/w%65b",
            "spiffe://cluster.local/ns//sa/web",
            "spiffe://cluster.local/sa/web/ns/default",
            "SPIFFE://cluster.local/ns/default/sa/web",
            "https://cluster.local/ns/default/sa/web",
            "spiffe:///ns/default/sa/web",
            "spiffe://cluster.local/ns/-default/sa/web",
        ] {
            assert!(Identity::parse_uri(uri).is_err(), "{uri} accepted");
        }
    }

    #[test]
    fn names_have_kubernetes_limits() {
        assert!(Identity::new("cluster.local", &"a".repeat(63), "sa").is_ok());
        assert!(Identity::new("cluster.local", &"a".repeat(64), "sa").is_err());
        assert!(Identity::new("cluster.local", "ns", "a.b-c").is_ok());
        assert!(Identity::new("cluster.local", "n.s", "sa").is_err());
        assert!(Identity::new("Cluster.local", "ns", "sa").is_err());
        assert!(Identity::new("", "ns", "sa").is_err());
    }
}
