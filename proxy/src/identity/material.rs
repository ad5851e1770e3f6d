//! Keys, CSRs and PEM turned into what rustls needs: a fresh ECDSA P-256 key
//! and its CSR, the trust bundle as a `RootCertStore` with fingerprints,
//! and the CA's answer checked and assembled into [`Credentials`].
//!
//! Everything the CA sends is checked before it is used: the bundle must
//! hold at least one parseable root, and the leaf must carry exactly the
//! identity the CA says, match our key, and verify against the bundle.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

use super::Credentials;
use crate::transport::Identity;

/// Most roots a bundle may hold (rotation needs two or three).
const MAX_ROOTS: usize = 16;
/// Most intermediates a chain may hold.
const MAX_CHAIN: usize = 4;

/// Why what the CA sent cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MaterialError {
    #[error("the trust bundle is empty")]
    EmptyBundle,
    #[error("the trust bundle has {0} roots; at most {MAX_ROOTS} are accepted")]
    TooManyRoots(usize),
    #[error("the trust bundle's trust domain {0:?} is not a DNS name")]
    TrustDomain(String),
    #[error("{what} is not one PEM CERTIFICATE: {reason}")]
    Pem { what: String, reason: String },
    #[error("root {index} of the trust bundle is not a usable CA certificate: {reason}")]
    Root { index: usize, reason: String },
    #[error("the chain has {0} intermediates; at most {MAX_CHAIN} are accepted")]
    LongChain(usize),
    #[error("the leaf certificate cannot be parsed: {0}")]
    Leaf(String),
    #[error("the leaf carries {found:?}, not exactly the identity {expected:?} the CA named")]
    IdentityMismatch {
        expected: String,
        found: Vec<String>,
    },
    #[error("the identity {identity:?} is not in the trust domain {trust_domain:?}")]
    ForeignIdentity {
        identity: String,
        trust_domain: String,
    },
    #[error("the leaf expired already (notAfter {0} s after the epoch); check the clocks")]
    Expired(i64),
    #[error("the leaf does not verify against the trust bundle: {0}")]
    Untrusted(String),
    #[error("the leaf is not for our key: {0}")]
    KeyMismatch(String),
    #[error("cannot make a key or CSR: {0}")]
    Csr(String),
}

/// The trust bundle as the TLS layer and `/config_dump` use it.
#[derive(Debug, Clone)]
pub(crate) struct Bundle {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) fingerprints: Arc<[String]>,
    pub(crate) trust_domain: Arc<str>,
    /// The roots as DER, to trust the CA's serving certificate by them too.
    pub(crate) ders: Vec<CertificateDer<'static>>,
}

/// A key made here and the CSR that carries its public half. The CSR names
/// no identity: the CA takes it from the token.
pub(crate) struct KeyAndCsr {
    pub(crate) key: rcgen::KeyPair,
    pub(crate) csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr").finish_non_exhaustive()
    }
}

pub(crate) fn key_and_csr() -> Result<KeyAndCsr, MaterialError> {
    let csr_err = |e: rcgen::Error| MaterialError::Csr(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(csr_err)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(csr_err)?;
    Ok(KeyAndCsr { key, csr_pem })
}

/// One PEM `CERTIFICATE` block as DER.
fn certificate(what: &str, text: &str) -> Result<CertificateDer<'static>, MaterialError> {
    let bad = |reason: String| MaterialError::Pem {
        what: what.to_owned(),
        reason,
    };
    let blocks = pem::parse_many(text).map_err(|e| bad(e.to_string()))?;
    match blocks.as_slice() {
        [one] if one.tag() == "CERTIFICATE" => Ok(CertificateDer::from(one.contents().to_vec())),
        [one] => Err(bad(format!("found a {:?} block", one.tag()))),
        many => Err(bad(format!("found {} blocks", many.len()))),
    }
}

/// SHA-256 of `der`, lowercase hex.
fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses a `TrustBundle` answer.
pub(crate) fn bundle(trust_domain: &str, roots_pem: &[String]) -> Result<Bundle, MaterialError> {
    if roots_pem.is_empty() {
        return Err(MaterialError::EmptyBundle);
    }
    if roots_pem.len() > MAX_ROOTS {
        return Err(MaterialError::TooManyRoots(roots_pem.len()));
    }
    if rustls::pki_types::DnsName::try_from(trust_domain).is_err() {
        return Err(MaterialError::TrustDomain(trust_domain.to_owned()));
    }
    let mut store = RootCertStore::empty();
    let mut fingerprints = Vec::with_capacity(roots_pem.len());
    let mut ders = Vec::with_capacity(roots_pem.len());
    for (index, text) in roots_pem.iter().enumerate() {
        let der = certificate(&format!("root {index} of the trust bundle"), text)?;
        store.add(der.clone()).map_err(|e| MaterialError::Root {
            index,
            reason: e.to_string(),
        })?;
        fingerprints.push(fingerprint(&der));
        ders.push(der);
    }
    Ok(Bundle {
        roots: Arc::new(store),
        fingerprints: fingerprints.into(),
        trust_domain: Arc::from(trust_domain),
        ders,
    })
}

/// Checks a `CreateCertificate` answer against our key and the bundle, and
/// assembles the credentials.
pub(crate) fn credentials(
    key: &rcgen::KeyPair,
    leaf_pem: &str,
    chain_pem: &[String],
    identity: &str,
    bundle: &Bundle,
    now: SystemTime,
) -> Result<Credentials, MaterialError> {
    if chain_pem.len() > MAX_CHAIN {
        return Err(MaterialError::LongChain(chain_pem.len()));
    }
    let leaf = certificate("the leaf", leaf_pem)?;
    let mut chain = vec![leaf.clone()];
    for (index, text) in chain_pem.iter().enumerate() {
        chain.push(certificate(&format!("intermediate {index}"), text)?);
    }
    if !identity.starts_with(&format!("spiffe://{}/", bundle.trust_domain)) {
        return Err(MaterialError::ForeignIdentity {
            identity: identity.to_owned(),
            trust_domain: bundle.trust_domain.to_string(),
        });
    }

    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| MaterialError::Leaf(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            names.push(match name {
                GeneralName::URI(uri) => (*uri).to_owned(),
                other => other.to_string(),
            });
        }
    }
    if names != [identity] {
        return Err(MaterialError::IdentityMismatch {
            expected: identity.to_owned(),
            found: names,
        });
    }
    let not_after_unix = parsed.validity().not_after.timestamp();
    let not_after = u64::try_from(not_after_unix)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        .filter(|t| *t > now)
        .ok_or(MaterialError::Expired(not_after_unix))?;
    let serial_hex = parsed.raw_serial_as_string().replace(':', "");

    // As a peer will check it: chain to a bundle root, valid now, clientAuth.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        bundle.roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| MaterialError::Untrusted(e.to_string()))?;
    let unix_now = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    verifier
        .verify_client_cert(&leaf, &chain[1..], unix_now)
        .map_err(|e| MaterialError::Untrusted(e.to_string()))?;

    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| MaterialError::KeyMismatch(e.to_string()))?;
    let certified_key = CertifiedKey::new(chain, signing_key);
    certified_key
        .keys_match()
        .map_err(|e| MaterialError::KeyMismatch(e.to_string()))?;
    Ok(Credentials {
        identity: Identity::new(identity),
        certified_key: Arc::new(certified_key),
        serial_hex,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

    const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

    /// A root and a leaf for `key` signed by it, as the CA would.
    struct Ca {
        root_pem: String,
        root: rcgen::Certificate,
        root_key: KeyPair,
    }

    fn ca() -> Ca {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        // Roots have names of their own, as remora-cp's do.
        let name = format!("root {}", fingerprint(root_key.public_key_raw()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let root = params.self_signed(&root_key).unwrap();
        Ca {
            root_pem: root.pem(),
            root,
            root_key,
        }
    }

    fn leaf(ca: &Ca, key: &KeyPair, sans: &[&str], life: Duration) -> String {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::URI((*s).try_into().unwrap()))
            .collect();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + life;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc, 0xde]));
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.root.der(), &ca.root_key).unwrap();
        params.signed_by(key, &issuer).unwrap().pem()
    }

    #[test]
    fn a_bundle_may_hold_several_roots_and_never_none() {
        let (a, b) = (ca(), ca());
        let one = bundle("cluster.local", std::slice::from_ref(&a.root_pem)).unwrap();
        assert_eq!(one.roots.len(), 1);
        let two = bundle("cluster.local", &[a.root_pem.clone(), b.root_pem.clone()]).unwrap();
        assert_eq!(two.roots.len(), 2);
        assert_eq!(two.fingerprints.len(), 2);
        assert_eq!(two.fingerprints[0], one.fingerprints[0]);
        assert_eq!(two.fingerprints[0].len(), 64);
        assert_ne!(two.fingerprints[0], two.fingerprints[1]);
        assert_eq!(&*two.trust_domain, "cluster.local");

        for (roots, want) in [
            (vec![], "the trust bundle is empty".to_owned()),
            (
                vec!["garbage".to_owned()],
                "root 0 of the trust bundle is not one PEM CERTIFICATE: found 0 blocks".to_owned(),
            ),
            (
                vec![a.root_pem.clone() + &b.root_pem],
                "root 0 of the trust bundle is not one PEM CERTIFICATE: found 2 blocks".to_owned(),
            ),
            (
                vec![a.root_pem.clone(); 17],
                "the trust bundle has 17 roots; at most 16 are accepted".to_owned(),
            ),
        ] {
            assert_eq!(
                bundle("cluster.local", &roots).unwrap_err().to_string(),
                want
            );
        }
        let key_pem = KeyPair::generate().unwrap().serialize_pem();
        let err = bundle("cluster.local", &[key_pem]).unwrap_err().to_string();
        assert_eq!(
            err,
            "root 0 of the trust bundle is not one PEM CERTIFICATE: found a \"PRIVATE KEY\" block"
        );
        let err = bundle("not a domain", &[a.root_pem])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the trust bundle's trust domain \"not a domain\" is not a DNS name"
        );
    }

    #[test]
    fn a_good_answer_becomes_credentials() {
        let ca = ca();
        let bundle = bundle("cluster.local", std::slice::from_ref(&ca.root_pem)).unwrap();
        let mine = key_and_csr().unwrap();
        assert!(mine
            .csr_pem
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let pem = leaf(&ca, &mine.key, &[ID], Duration::from_secs(3600));
        let now = SystemTime::now();
        let creds = credentials(&mine.key, &pem, &[], ID, &bundle, now).unwrap();
        assert_eq!(creds.identity.as_str(), ID);
        assert_eq!(creds.serial_hex, "0abcde");
        let left = creds.not_after.duration_since(now).unwrap();
        assert!(
            left > Duration::from_secs(3590) && left <= Duration::from_secs(3600),
            "{left:?}"
        );
        assert_eq!(creds.certified_key.cert.len(), 1);
    }

    #[test]
    fn a_bad_answer_is_refused_with_the_reason() {
        let ca = ca();
        let other = self::ca();
        let trusted = bundle("cluster.local", std::slice::from_ref(&ca.root_pem)).unwrap();
        let mine = key_and_csr().unwrap();
        let theirs = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let hour = Duration::from_secs(3600);
        let now = SystemTime::now();
        let db = "spiffe://cluster.local/ns/prod/sa/db";
        let cases = [
            (leaf(&ca, &mine.key, &[db], hour), ID, format!("the leaf carries [\"{db}\"], not exactly the identity \"{ID}\" the CA named")),
            (leaf(&ca, &mine.key, &[ID, db], hour), ID, format!("the leaf carries [\"{ID}\", \"{db}\"], not exactly the identity \"{ID}\" the CA named")),
            (leaf(&ca, &mine.key, &[ID], hour), "spiffe://other.domain/ns/a/sa/b", "the identity \"spiffe://other.domain/ns/a/sa/b\" is not in the trust domain \"cluster.local\"".to_owned()),
            (leaf(&other, &mine.key, &[ID], hour), ID, "the leaf does not verify against the trust bundle: invalid peer certificate: UnknownIssuer".to_owned()),
            (leaf(&ca, &theirs, &[ID], hour), ID, "the leaf is not for our key: keys may not be consistent: KeyMismatch".to_owned()),
        ];
        for (pem, identity, want) in cases {
            let err = credentials(&mine.key, &pem, &[], identity, &trusted, now).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        // Expired: "now" an hour and a minute later.
        let pem = leaf(&ca, &mine.key, &[ID], hour);
        let later = now + hour + Duration::from_secs(60);
        let err = credentials(&mine.key, &pem, &[], ID, &trusted, later).unwrap_err();
        assert!(matches!(err, MaterialError::Expired(_)), "{err}");
        let err = credentials(&mine.key, "nope", &[], ID, &trusted, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the leaf is not one PEM CERTIFICATE: found 0 blocks"
        );
        let err =
            credentials(&mine.key, &pem, &vec![pem.clone(); 5], ID, &trusted, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the chain has 5 intermediates; at most 4 are accepted"
        );
    }
}
