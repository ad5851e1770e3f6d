//! The certificate authority: a root, an intermediate it signs, and the
//! workload leaves the intermediate signs.
//!
//! Pure where it can be: every function takes `now` and returns certificates
//! as PEM; nothing here touches the network. Persisting the root is
//! `ca/store.rs`; checking what a CSR asks for is `ca/csr.rs`; deciding which
//! identity a caller may have is `auth.rs`. The leaf is always built from the
//! identity the caller proved, never from the CSR: the CSR only contributes
//! its public key.

pub mod csr;
pub mod store;

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::identity::Identity;

/// Leaves and the intermediate start this long before `now`, so a peer whose
/// clock is a little behind still accepts them.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// The shortest leaf lifetime a request or a flag may ask for.
pub const MIN_LEAF_LIFETIME: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("could not generate a key: {0}")]
    KeyGen(rcgen::Error),
    #[error("could not sign a certificate: {0}")]
    Sign(rcgen::Error),
    #[error("the root key is not usable: {0}; supply a PKCS#8 PEM ECDSA P-256 key (the one matching --root-cert)")]
    RootKey(rcgen::Error),
    #[error("the root certificate is not usable: {0}; supply the PEM certificate of a CA (basicConstraints CA:TRUE)")]
    RootCert(String),
    #[error(
        "the root key does not match the root certificate; pass the key that was generated with it"
    )]
    RootKeyMismatch,
    #[error("the root certificate expires at {0}, before the intermediate would; supply or generate a root that lives longer than --intermediate-lifetime")]
    RootExpiring(String),
    #[error("trust root {0}: {1}; each --extra-trust-root must be a PEM CA certificate")]
    ExtraRoot(String, String),
    #[error("lifetime {asked:?} is outside the allowed range {min:?}..={max:?}")]
    Lifetime {
        asked: Duration,
        min: Duration,
        max: Duration,
    },
    #[error("the signing intermediate expires at {0} and has no room left for a leaf; restart remora-cp to renew it")]
    IntermediateExpired(String),
}

/// A root as two PEM texts: the CA certificate and its PKCS#8 private key.
#[derive(Clone)]
pub struct RootMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for RootMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("RootMaterial").finish_non_exhaustive()
    }
}

/// How long the certificates this CA makes live.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// A leaf whose request names no lifetime.
    pub leaf_default: Duration,
    /// The longest leaf a request may ask for.
    pub leaf_max: Duration,
    /// The intermediate made at start.
    pub intermediate: Duration,
}

/// A signed leaf, ready to return to the caller.
#[derive(Debug, Clone)]
pub struct Issued {
    pub leaf_pem: String,
    /// Leaf's issuer first; the root is not included.
    pub chain_pem: Vec<String>,
    pub not_after: SystemTime,
    pub serial_hex: String,
}

/// The running CA: the signing root, the trust bundle, and the intermediate.
pub struct Ca {
    trust_domain: String,
    /// The signing root first, then every extra trust root; PEM, deduplicated.
    bundle: Vec<String>,
    intermediate: Issuer<'static, KeyPair>,
    intermediate_pem: String,
    intermediate_not_after: SystemTime,
    lifetimes: Lifetimes,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.bundle.len())
            .field("intermediate_not_after", &self.intermediate_not_after)
            .finish_non_exhaustive()
    }
}

/// Generates a new self-signed root for `trust_domain`.
pub fn generate_root(
    trust_domain: &str,
    lifetime: Duration,
    now: SystemTime,
) -> Result<RootMaterial, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::KeyGen)?;
    let mut params = ca_params(
        &format!("remora root {trust_domain} {}", name_tag(now)),
        now,
        lifetime,
        1,
    );
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key).map_err(CaError::Sign)?;
    Ok(RootMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl Ca {
    /// Loads the signing root, makes a fresh intermediate signed by it, and
    /// assembles the trust bundle from the root and `extra_roots` (PEM).
    pub fn new(
        trust_domain: &str,
        root: &RootMaterial,
        extra_roots: &[(String, String)],
        lifetimes: Lifetimes,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let root_key = KeyPair::from_pem(&root.key_pem).map_err(CaError::RootKey)?;
        let root_der = check_ca_pem(&root.cert_pem).map_err(CaError::RootCert)?;
        let (not_after, spki) = ca_cert_facts(&root_der).map_err(CaError::RootCert)?;
        if spki != root_key.subject_public_key_info() {
            return Err(CaError::RootKeyMismatch);
        }
        if not_after < now + lifetimes.intermediate {
            return Err(CaError::RootExpiring(
                humantime::format_rfc3339(not_after).to_string(),
            ));
        }
        let root_issuer = Issuer::from_ca_cert_der(&root_der, root_key)
            .map_err(|e| CaError::RootCert(e.to_string()))?;

        let mut bundle = vec![root.cert_pem.clone()];
        let mut seen = vec![root_der];
        for (name, pem) in extra_roots {
            let der = check_ca_pem(pem).map_err(|e| CaError::ExtraRoot(name.clone(), e))?;
            if !seen.contains(&der) {
                seen.push(der);
                bundle.push(pem.clone());
            }
        }

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::KeyGen)?;
        let mut params = ca_params(
            &format!("remora intermediate {trust_domain} {}", name_tag(now)),
            now,
            lifetimes.intermediate,
            0,
        );
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &root_issuer)
            .map_err(CaError::Sign)?;
        let intermediate_not_after = now + lifetimes.intermediate;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            bundle,
            intermediate: Issuer::new(params, key),
            intermediate_pem: cert.pem(),
            intermediate_not_after,
            lifetimes,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Every root a peer may chain to, the signing root first.
    pub fn trust_bundle(&self) -> &[String] {
        &self.bundle
    }

    pub fn intermediate_not_after(&self) -> SystemTime {
        self.intermediate_not_after
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// The lifetime a request gets: its own if it asked for one within the
    /// range, else the default.
    pub fn leaf_lifetime(&self, asked: Option<Duration>) -> Result<Duration, CaError> {
        let Some(asked) = asked else {
            return Ok(self.lifetimes.leaf_default);
        };
        if asked < MIN_LEAF_LIFETIME || asked > self.lifetimes.leaf_max {
            return Err(CaError::Lifetime {
                asked,
                min: MIN_LEAF_LIFETIME,
                max: self.lifetimes.leaf_max,
            });
        }
        Ok(asked)
    }

    /// Signs a workload leaf for `identity` over the key of a checked CSR.
    pub fn issue_leaf(
        &self,
        csr: &csr::CheckedCsr,
        identity: &Identity,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        let uri = identity.uri();
        let san = SanType::URI(
            uri.as_str()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Sign(e))?,
        );
        self.sign(csr.public_key(), vec![san], lifetime, now)
    }

    /// Signs the control plane's own serving certificate: its SPIFFE id plus
    /// the DNS names proxies dial. The key is made here and returned, as
    /// PKCS#8 DER, with the certificate.
    pub fn issue_server(
        &self,
        identity: &Identity,
        dns_names: &[String],
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<(Issued, Vec<u8>), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::KeyGen)?;
        let mut sans = Vec::with_capacity(dns_names.len() + 1);
        sans.push(SanType::URI(
            identity.uri().as_str().try_into().map_err(CaError::Sign)?,
        ));
        for name in dns_names {
            sans.push(SanType::DnsName(
                name.as_str().try_into().map_err(CaError::Sign)?,
            ));
        }
        let issued = self.sign(&key, sans, lifetime, now)?;
        Ok((issued, key.serialize_der()))
    }

    fn sign(
        &self,
        key: &impl rcgen::PublicKeyData,
        sans: Vec<SanType>,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        let not_after = now + lifetime;
        if not_after > self.intermediate_not_after {
            return Err(CaError::IntermediateExpired(
                humantime::format_rfc3339(self.intermediate_not_after).to_string(),
            ));
        }
        let mut params = CertificateParams::default();
        // An empty subject: the identity lives in the SAN, which rcgen then
        // marks critical as RFC 5280 asks.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        // TLS 1.3 with ECDSA keys only ever signs: no key encipherment.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = OffsetDateTime::from(now - BACKDATE);
        params.not_after = OffsetDateTime::from(not_after);
        let serial = random_serial();
        let serial_hex = hex(serial.as_ref());
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(key, &self.intermediate)
            .map_err(CaError::Sign)?;
        Ok(Issued {
            leaf_pem: cert.pem(),
            chain_pem: vec![self.intermediate_pem.clone()],
            not_after: truncate_to_seconds(not_after),
            serial_hex,
        })
    }
}

/// A CA certificate's parameters: root (`path_len` 1) or intermediate (0).
fn ca_params(
    common_name: &str,
    now: SystemTime,
    lifetime: Duration,
    path_len: u8,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "remora");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::from(now - BACKDATE);
    params.not_after = OffsetDateTime::from(now + lifetime);
    params
}

/// Decodes one PEM CERTIFICATE block and checks it is a CA certificate.
fn check_ca_pem(pem_text: &str) -> Result<CertificateDer<'static>, String> {
    let block = pem::parse(pem_text).map_err(|e| format!("not PEM: {e}"))?;
    if block.tag() != "CERTIFICATE" {
        return Err(format!("PEM block is {:?}, not CERTIFICATE", block.tag()));
    }
    let der = CertificateDer::from(block.into_contents());
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(der),
        _ => Err("not a CA certificate (basicConstraints CA:TRUE missing)".to_owned()),
    }
}

/// A CA certificate's notAfter and its SubjectPublicKeyInfo (DER).
fn ca_cert_facts(der: &[u8]) -> Result<(SystemTime, Vec<u8>), String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not X.509: {e}"))?;
    let secs = cert.validity().not_after.timestamp();
    let not_after = u64::try_from(secs)
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        .map_err(|_| "notAfter before 1970".to_owned())?;
    Ok((not_after, cert.public_key().raw.to_vec()))
}

/// 16 random bytes with the top bit clear: positive, and unguessable so a
/// chosen-prefix collision cannot be prepared.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01 << 6; // never leading zero: a fixed 16-byte encoding
    SerialNumber::from_slice(&bytes)
}

/// Makes each CA's subject unique: the creation time and a random tag. Two
/// roots with one subject would make a verifier try the wrong key
/// (BadSignature) instead of reporting an unknown issuer.
fn name_tag(now: SystemTime) -> String {
    let tag: [u8; 4] = rand::random();
    format!("{} {}", unix_seconds(now), hex(&tag))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// X.509 times have whole seconds; report what the certificate says.
fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(unix_seconds(t))
}
