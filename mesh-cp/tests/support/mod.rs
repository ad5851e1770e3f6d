//! Shared by the remora-cp integration tests: start a real control plane on
//! loopback ports, talk to it with a real tonic client over TLS, make CSRs,
//! verify chains with rustls's own client-certificate verifier, and read
//! /metrics over a real HTTP connection.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use remora_cp::config::{Cli, Config};
use remora_cp::proto::certificates_client::CertificatesClient;
use remora_cp::proto::{CreateCertificateRequest, CreateCertificateResponse, TrustBundleRequest};
use remora_cp::Running;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub const TOKENS: &str = "\
tokens:
  - token: token-web
    namespace: default
    serviceAccount: web
  - token: token-db
    namespace: prod
    serviceAccount: db
";

pub const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
pub const DB: &str = "spiffe://cluster.local/ns/prod/sa/db";

/// A scratch directory with a token file and a state directory.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokens.yaml"), TOKENS).unwrap();
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Flags every test needs: loopback ports, this directory's files.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = [
            "remora-cp",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--dns-name",
            "localhost",
            "--drain-deadline",
            "2s",
            "--log-format",
            "text",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.push("--token-file".into());
        argv.push(self.path("tokens.yaml").display().to_string());
        if !extra
            .iter()
            .any(|a| *a == "--state-dir" || *a == "--root-cert")
        {
            argv.push("--state-dir".into());
            argv.push(self.path("state").display().to_string());
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    pub async fn start(&self, extra: &[&str]) -> anyhow::Result<Running> {
        let cli = <Cli as clap::Parser>::try_parse_from(self.args(extra))?;
        remora_cp::start(Config::from_args(cli.serve)?).await
    }
}

/// A tonic client that trusts `root_pem` for the control plane's serving
/// certificate and checks the DNS name `localhost` in it.
pub async fn client(running: &Running, root_pem: &str) -> CertificatesClient<Channel> {
    CertificatesClient::new(channel(running, root_pem, None).await)
}

/// A channel to the gRPC port like `client`'s, showing `identity` (a client
/// certificate) when given.
pub async fn channel(
    running: &Running,
    root_pem: &str,
    identity: Option<tonic::transport::Identity>,
) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    Endpoint::from_shared(format!("https://{}", running.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// A P-256 key and a CSR for it with `edit` applied.
pub fn csr(edit: impl FnOnce(&mut CertificateParams)) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = csr_for(&key, edit);
    (key, pem)
}

pub fn csr_for(key: &KeyPair, edit: impl FnOnce(&mut CertificateParams)) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    edit(&mut params);
    params.serialize_request(key).unwrap().pem().unwrap()
}

pub fn uri_san(uri: &str) -> SanType {
    SanType::URI(uri.try_into().unwrap())
}

pub fn request(csr_pem: &str, token: &str) -> CreateCertificateRequest {
    CreateCertificateRequest {
        csr_pem: csr_pem.to_owned(),
        token: token.to_owned(),
        lifetime_seconds: 0,
    }
}

pub async fn bundle(client: &mut CertificatesClient<Channel>) -> Vec<String> {
    client
        .trust_bundle(TrustBundleRequest {})
        .await
        .unwrap()
        .into_inner()
        .roots_pem
}

pub fn der(pem_text: &str) -> CertificateDer<'static> {
    CertificateDer::from(pem::parse(pem_text).unwrap().into_contents())
}

/// Verifies leaf + chain against `roots` as a mesh peer would: rustls's
/// WebPKI client-certificate verifier (chain, validity, clientAuth EKU),
/// then a handshake signature made with the leaf's key.
pub fn verify(
    issued: &CreateCertificateResponse,
    roots: &[String],
    key: &KeyPair,
) -> Result<(), String> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(der(root)).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(store),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let leaf = der(&issued.leaf_pem);
    let chain: Vec<_> = issued.chain_pem.iter().map(|p| der(p)).collect();
    verifier
        .verify_client_cert(&leaf, &chain, UnixTime::now())
        .map_err(|e| e.to_string())?;
    // The leaf carries the CSR's key, not one the CA chose.
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| e.to_string())?;
    if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(key).as_slice() {
        return Err("the leaf's key is not the CSR's key".to_owned());
    }
    Ok(())
}

/// The body of GET `path` on the admin port, and its status code.
pub async fn admin_get(running: &Running, path: &str) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(running.admin_addr)
        .await
        .unwrap();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        conn.read_to_string(&mut text),
    )
    .await
    .unwrap()
    .unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// One sample's value from /metrics text, or 0 if absent.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

/// A control plane started with the default flags: its scratch directory
/// (keep it alive), the running server, its root, and a client.
pub async fn started() -> (Scratch, Running, String, CertificatesClient<Channel>) {
    let scratch = Scratch::new();
    let cp = scratch.start(&[]).await.unwrap();
    let root = read(&scratch.path("state/root-cert.pem"));
    let client = client(&cp, &root).await;
    (scratch, cp, root, client)
}

/// A raw TLS handshake to the gRPC port with one protocol version.
pub async fn handshake(
    running: &Running,
    root_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(root_pem)).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(running.grpc_addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Asks for a certificate and expects one.
pub async fn issue(
    client: &mut CertificatesClient<Channel>,
    request: CreateCertificateRequest,
) -> CreateCertificateResponse {
    client
        .create_certificate(request)
        .await
        .unwrap()
        .into_inner()
}

/// A certificate's SANs as x509-parser prints them, e.g. `URI(spiffe://…)`.
pub fn sans(cert_der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| n.to_string())
                .collect()
        })
        .unwrap_or_default()
}
