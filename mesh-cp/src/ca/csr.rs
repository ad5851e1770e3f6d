//! What a workload's CSR may ask for, checked before anything is signed.
//!
//! A CSR contributes exactly one thing to a leaf: its public key. Everything
//! else it asks for must be nothing, or must agree with the identity the
//! caller proved: at most one URI SAN equal to that identity; no other SAN;
//! no CA basic constraint; no certificate- or CRL-signing key usage; no
//! extension this CA does not understand. The key must be ECDSA P-256 and the
//! CSR's signature must verify with it (proof the caller holds the key).

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer;

use crate::identity::Identity;

/// The largest CSR accepted, in PEM bytes.
pub const MAX_CSR_PEM: usize = 16 * 1024;

/// Why a CSR was refused. `reason()` is the metric label; `denied()` says
/// whether the CSR asked for something the caller may not have (as opposed
/// to being malformed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("CSR is {0} bytes; at most {MAX_CSR_PEM} are accepted")]
    TooLarge(usize),
    #[error("CSR is not one PEM CERTIFICATE REQUEST block: {0}")]
    Pem(String),
    #[error("CSR is not a PKCS#10 certification request: {0}")]
    Der(String),
    #[error("CSR signature does not verify with its own key: the CSR was altered or not signed by the key it carries")]
    Signature,
    #[error("CSR key is {0}; remora-cp signs ECDSA P-256 keys only (generate the key with P-256)")]
    WeakKey(String),
    #[error("CSR asks for URI SAN {asked:?}, but the token proves {allowed:?}; a workload gets only its own identity")]
    OtherIdentity { asked: String, allowed: String },
    #[error("CSR asks for more than one URI SAN; a workload certificate carries exactly one, its identity")]
    SeveralUris,
    #[error("CSR asks for SAN {0}; workload certificates carry no DNS, IP, email or other names")]
    ExtraSan(String),
    #[error("CSR asks to be a CA (basicConstraints CA:TRUE); workload certificates never are")]
    CaRequested,
    #[error("CSR asks for key usage {0}; workload certificates may only sign TLS handshakes")]
    KeyUsage(&'static str),
    #[error("CSR asks for extension {0}, which remora-cp does not grant; drop it from the CSR")]
    Extension(String),
}

impl CsrError {
    /// The metric label for this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too_large",
            Self::Pem(_) | Self::Der(_) => "bad_csr",
            Self::Signature => "bad_signature",
            Self::WeakKey(_) => "weak_key",
            Self::OtherIdentity { .. } => "identity_mismatch",
            Self::SeveralUris | Self::ExtraSan(_) => "extra_san",
            Self::CaRequested => "ca_requested",
            Self::KeyUsage(_) => "key_usage",
            Self::Extension(_) => "extension",
        }
    }

    /// True when the CSR is well formed but asks for more than the caller
    /// may have (PermissionDenied rather than InvalidArgument).
    pub fn denied(&self) -> bool {
        matches!(
            self,
            Self::OtherIdentity { .. }
                | Self::SeveralUris
                | Self::ExtraSan(_)
                | Self::CaRequested
                | Self::KeyUsage(_)
                | Self::Extension(_)
        )
    }
}

/// A CSR that passed every check; holds only its public key.
#[derive(Debug)]
pub struct CheckedCsr {
    key: rcgen::SubjectPublicKeyInfo,
}

impl CheckedCsr {
    pub fn public_key(&self) -> &rcgen::SubjectPublicKeyInfo {
        &self.key
    }
}

/// Checks `csr_pem` against the identity the caller proved.
pub fn check(csr_pem: &str, identity: &Identity) -> Result<CheckedCsr, CsrError> {
    if csr_pem.len() > MAX_CSR_PEM {
        return Err(CsrError::TooLarge(csr_pem.len()));
    }
    let blocks = pem::parse_many(csr_pem).map_err(|e| CsrError::Pem(e.to_string()))?;
    let [block] = blocks.as_slice() else {
        return Err(CsrError::Pem(format!("found {} PEM blocks", blocks.len())));
    };
    if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::Pem(format!("the block is {:?}", block.tag())));
    }
    let (rest, csr) = X509CertificationRequest::from_der(block.contents())
        .map_err(|e| CsrError::Der(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Der(format!(
            "{} bytes after the request",
            rest.len()
        )));
    }

    // The key first: an RSA or P-384 CSR is "weak key", whatever else it says.
    let spki = &csr.certification_request_info.subject_pki;
    let alg = &spki.algorithm;
    if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        return Err(CsrError::WeakKey("RSA".to_owned()));
    }
    let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if alg.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve.as_ref() != Some(&OID_EC_P256) {
        let what = match curve {
            Some(oid) if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY => {
                format!("EC on curve {oid}")
            }
            _ => format!("algorithm {}", alg.algorithm),
        };
        return Err(CsrError::WeakKey(what));
    }
    csr.verify_signature().map_err(|_| CsrError::Signature)?;

    let allowed = identity.uri();
    let mut uris = 0;
    for attr in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
            // challengePassword and the like carry no capability.
            continue;
        };
        for ext in &req.extensions {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(uri) if *uri == allowed => {
                                uris += 1;
                                if uris > 1 {
                                    return Err(CsrError::SeveralUris);
                                }
                            }
                            GeneralName::URI(uri) => {
                                return Err(CsrError::OtherIdentity {
                                    asked: (*uri).to_owned(),
                                    allowed,
                                })
                            }
                            other => return Err(CsrError::ExtraSan(describe(other))),
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(CsrError::CaRequested)
                }
                ParsedExtension::BasicConstraints(_) => {}
                ParsedExtension::KeyUsage(ku) => {
                    if ku.key_cert_sign() {
                        return Err(CsrError::KeyUsage("keyCertSign"));
                    }
                    if ku.crl_sign() {
                        return Err(CsrError::KeyUsage("cRLSign"));
                    }
                }
                // Ignored: the leaf always gets serverAuth and clientAuth.
                ParsedExtension::ExtendedKeyUsage(_) => {}
                _ => return Err(CsrError::Extension(ext.oid.to_id_string())),
            }
        }
    }

    let key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| CsrError::Der(format!("public key: {e}")))?;
    Ok(CheckedCsr { key })
}

fn describe(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(n) => format!("DNS:{n}"),
        GeneralName::RFC822Name(n) => format!("email:{n}"),
        GeneralName::IPAddress(b) => format!("IP ({} bytes)", b.len()),
        GeneralName::DirectoryName(n) => format!("dirName:{n}"),
        GeneralName::OtherName(oid, _) => format!("otherName:{oid}"),
        GeneralName::RegisteredID(oid) => format!("registeredID:{oid}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, IsCa, KeyPair, KeyUsagePurpose, SanType};

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "default", sa).unwrap()
    }

    fn csr_with(edit: impl FnOnce(&mut CertificateParams)) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        csr_for_key(&key, edit)
    }

    fn csr_for_key(key: &KeyPair, edit: impl FnOnce(&mut CertificateParams)) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        edit(&mut params);
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    fn uri(u: &str) -> SanType {
        SanType::URI(u.try_into().unwrap())
    }

    #[test]
    fn plain_csr_and_own_identity_pass() {
        assert!(check(&csr_with(|_| {}), &id("web")).is_ok());
        let own = csr_with(|p| p.subject_alt_names = vec![uri(&id("web").uri())]);
        assert!(check(&own, &id("web")).is_ok());
    }

    #[test]
    fn other_identity_is_denied() {
        let csr = csr_with(|p| p.subject_alt_names = vec![uri(&id("db").uri())]);
        let err = check(&csr, &id("web")).unwrap_err();
        assert!(matches!(err, CsrError::OtherIdentity { .. }), "{err}");
        assert!(err.denied());
    }

    #[test]
    fn own_identity_twice_or_extra_names_are_denied() {
        let twice =
            csr_with(|p| p.subject_alt_names = vec![uri(&id("web").uri()), uri(&id("web").uri())]);
        assert_eq!(
            check(&twice, &id("web")).unwrap_err(),
            CsrError::SeveralUris
        );
        let dns = csr_with(|p| {
            p.subject_alt_names = vec![
                uri(&id("web").uri()),
                SanType::DnsName("web.default.svc".try_into().unwrap()),
            ]
        });
        assert_eq!(
            check(&dns, &id("web")).unwrap_err(),
            CsrError::ExtraSan("DNS:web.default.svc".to_owned())
        );
        let ip = csr_with(|p| p.subject_alt_names = vec![SanType::IpAddress([10, 0, 0, 1].into())]);
        assert_eq!(check(&ip, &id("web")).unwrap_err().reason(), "extra_san");
    }

    #[test]
    fn ca_flag_and_cert_signing_are_denied() {
        let ca = csr_with(|p| p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained));
        assert_eq!(check(&ca, &id("web")).unwrap_err(), CsrError::CaRequested);
        let not_ca = csr_with(|p| p.is_ca = IsCa::ExplicitNoCa);
        assert!(check(&not_ca, &id("web")).is_ok());
        let ku = csr_with(|p| p.key_usages = vec![KeyUsagePurpose::KeyCertSign]);
        assert_eq!(
            check(&ku, &id("web")).unwrap_err(),
            CsrError::KeyUsage("keyCertSign")
        );
    }

    #[test]
    fn other_keys_are_weak() {
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let err = check(&csr_for_key(&p384, |_| {}), &id("web")).unwrap_err();
        assert_eq!(err.reason(), "weak_key", "{err}");
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(
            check(&csr_for_key(&ed, |_| {}), &id("web"))
                .unwrap_err()
                .reason(),
            "weak_key"
        );
    }

    #[test]
    fn garbage_is_invalid() {
        for junk in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let err = check(junk, &id("web")).unwrap_err();
            assert_eq!(err.reason(), "bad_csr", "{junk:?}: {err}");
            assert!(!err.denied());
        }
        let two = format!("{}{}", csr_with(|_| {}), csr_with(|_| {}));
        assert_eq!(check(&two, &id("web")).unwrap_err().reason(), "bad_csr");
        assert_eq!(
            check(&"A".repeat(MAX_CSR_PEM + 1), &id("web")).unwrap_err(),
            CsrError::TooLarge(MAX_CSR_PEM + 1)
        );
    }

    #[test]
    fn tampered_signature_is_refused() {
        let pem_text = csr_with(|_| {});
        let mut block = pem::parse(&pem_text).unwrap();
        let mut der = block.contents().to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01; // inside the signature value
        block = pem::Pem::new("CERTIFICATE REQUEST", der);
        let err = check(&pem::encode(&block), &id("web")).unwrap_err();
        assert_eq!(err, CsrError::Signature);
    }
}
