//! The certificate service end to end: a real remora-cp on loopback, a real
//! tonic client over TLS 1.3, real CSRs, and chains verified with rustls's
//! WebPKI verifier against the trust bundle the service serves.

mod support;

use std::time::Duration;

use rcgen::{BasicConstraints, IsCa, KeyPair, KeyUsagePurpose, SanType};
use support::*;
use tonic::Code;
use x509_parser::extensions::ParsedExtension;

#[tokio::test]
async fn a_token_for_web_gets_a_leaf_for_web_that_chains_to_the_bundle() {
    let (_scratch, cp, root, mut client) = started().await;
    let roots = bundle(&mut client).await;
    assert_eq!(roots, vec![root.clone()]);

    // The CSR says nothing about who it is: the identity comes from the token.
    let (key, csr_pem) = csr(|_| {});
    let before = std::time::SystemTime::now();
    let issued = issue(&mut client, request(&csr_pem, "token-web")).await;
    assert_eq!(issued.identity, WEB);
    assert_eq!(issued.chain_pem.len(), 1, "one intermediate, root excluded");
    verify(&issued, &roots, &key).unwrap();

    let leaf_der = der(&issued.leaf_pem);
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    assert_eq!(sans(&leaf_der), vec![format!("URI({WEB})")]);
    assert!(leaf.subject().iter().next().is_none(), "empty subject");
    let bc = leaf.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && eku.other.is_empty() && !eku.any);
    // 24 h by default, backdated one minute for clock skew.
    let validity = leaf.validity();
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        86_400 + 60
    );
    assert_eq!(issued.expires_unix_seconds, validity.not_after.timestamp());
    let want = before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 86_400;
    assert!(
        (issued.expires_unix_seconds - want).abs() <= 2,
        "expiry {} want ~{want}",
        issued.expires_unix_seconds
    );
    // An unknown extension would be a sign the CSR leaked into the leaf.
    for ext in leaf.extensions() {
        assert!(
            !matches!(
                ext.parsed_extension(),
                ParsedExtension::UnsupportedExtension { .. }
            ),
            "unexpected extension {}",
            ext.oid
        );
    }

    // A second leaf for the same key has a different, random serial, and a
    // requested lifetime within the range is honoured.
    let mut again = request(&csr_pem, "token-web");
    again.lifetime_seconds = 30;
    let second = client.create_certificate(again).await.unwrap().into_inner();
    let second_der = der(&second.leaf_pem);
    let (_, second_leaf) = x509_parser::parse_x509_certificate(&second_der).unwrap();
    assert_ne!(leaf.raw_serial(), second_leaf.raw_serial());
    assert_eq!(leaf.raw_serial().len(), 16);
    let v = second_leaf.validity();
    assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 30 + 60);

    // The same CSR asking explicitly for its own identity is fine too.
    let (key, own) = csr(|p| p.subject_alt_names = vec![uri_san(DB)]);
    let issued = issue(&mut client, request(&own, "token-db")).await;
    assert_eq!(issued.identity, DB);
    verify(&issued, &roots, &key).unwrap();

    let (_, metrics) = admin_get(&cp, "/metrics").await;
    assert_eq!(metric(&metrics, "remora_cp_certificates_issued_total"), 3);
    assert_eq!(metric(&metrics, "remora_cp_trust_bundle_roots"), 1);
    cp.shutdown().await;
}

/// Each hostile request gets the status and message that say why, is counted
/// by reason, and the server keeps answering afterwards.
#[tokio::test]
async fn hostile_requests_are_refused_with_a_reason_and_the_ca_keeps_serving() {
    let (_scratch, cp, _, mut client) = started().await;

    let plain = csr(|_| {}).1;
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cases: Vec<(&str, String, String, Code, &str, &str)> = vec![
        ("web asking for db", csr(|p| p.subject_alt_names = vec![uri_san(DB)]).1, "token-web".into(),
            Code::PermissionDenied, "but the token proves", "identity_mismatch"),
        ("unknown token", plain.clone(), "token-nobody".into(),
            Code::Unauthenticated, "not known", "unauthenticated"),
        ("no token", plain.clone(), String::new(),
            Code::Unauthenticated, "no token", "unauthenticated"),
        ("garbage CSR", "-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE REQUEST-----\n".into(),
            "token-web".into(), Code::InvalidArgument, "not a PKCS#10", "bad_csr"),
        ("not PEM", "hello".into(), "token-web".into(), Code::InvalidArgument, "PEM", "bad_csr"),
        ("own identity plus a DNS name", csr(|p| p.subject_alt_names = vec![uri_san(WEB), SanType::DnsName("web.default.svc".try_into().unwrap())]).1,
            "token-web".into(), Code::PermissionDenied, "DNS:web.default.svc", "extra_san"),
        ("an IP SAN", csr(|p| p.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())]).1,
            "token-web".into(), Code::PermissionDenied, "no DNS, IP", "extra_san"),
        ("two URIs", csr(|p| p.subject_alt_names = vec![uri_san(WEB), uri_san(WEB)]).1,
            "token-web".into(), Code::PermissionDenied, "more than one URI", "extra_san"),
        ("a CA flag", csr(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)).1,
            "token-web".into(), Code::PermissionDenied, "CA:TRUE", "ca_requested"),
        ("keyCertSign", csr(|p| p.key_usages = vec![KeyUsagePurpose::KeyCertSign]).1,
            "token-web".into(), Code::PermissionDenied, "keyCertSign", "key_usage"),
        ("a P-384 key", csr_for(&p384, |_| {}), "token-web".into(),
            Code::InvalidArgument, "ECDSA P-256 keys only", "weak_key"),
        ("an Ed25519 key", csr_for(&ed25519, |_| {}), "token-web".into(),
            Code::InvalidArgument, "ECDSA P-256 keys only", "weak_key"),
        ("a 17 KiB CSR", "A".repeat(17 * 1024), "token-web".into(),
            Code::InvalidArgument, "at most 16384", "too_large"),
        ("a 9 KiB token", plain.clone(), "t".repeat(9 * 1024),
            Code::InvalidArgument, "at most 8192", "too_large"),
    ];
    for (what, csr_pem, token, code, message, _) in &cases {
        let status = client
            .create_certificate(request(csr_pem, token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), *code, "{what}: {status:?}");
        assert!(
            status.message().contains(message),
            "{what}: {:?}",
            status.message()
        );
        // Still serving: the next honest request gets a certificate.
        let ok = client
            .create_certificate(request(&plain, "token-web"))
            .await;
        assert!(ok.is_ok(), "after {what}: {ok:?}");
    }

    // A lifetime out of range, and a message far beyond any limit.
    let mut long = request(&plain, "token-web");
    long.lifetime_seconds = 72 * 3600;
    let status = client.create_certificate(long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("outside the allowed range"),
        "{status:?}"
    );
    let status = client
        .create_certificate(request(&"A".repeat(1 << 20), "token-web"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("the limit is: 65536"),
        "{status:?}"
    );
    assert!(client
        .create_certificate(request(&plain, "token-web"))
        .await
        .is_ok());

    let (_, metrics) = admin_get(&cp, "/metrics").await;
    let mut want = std::collections::BTreeMap::<&str, u64>::new();
    for (.., reason) in &cases {
        *want.entry(reason).or_default() += 1;
    }
    *want.entry("lifetime").or_default() += 1;
    for (reason, count) in &want {
        let series = format!("remora_cp_certificates_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&metrics, &series), *count, "{series}\n{metrics}");
    }
    // One per case, plus the one after the oversize message.
    assert_eq!(
        metric(&metrics, "remora_cp_certificates_issued_total"),
        cases.len() as u64 + 1
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn a_tampered_csr_signature_is_refused() {
    let (_scratch, cp, _, mut client) = started().await;
    // Sign a CSR for one key, then swap in another key's SubjectPublicKeyInfo:
    // the caller does not hold the key it wants certified.
    let (key, signed) = csr(|_| {});
    let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut der = pem::parse(&signed).unwrap().into_contents();
    let ours = rcgen::PublicKeyData::subject_public_key_info(&key);
    let theirs = rcgen::PublicKeyData::subject_public_key_info(&other);
    assert_eq!(ours.len(), theirs.len());
    let at = der
        .windows(ours.len())
        .position(|w| w == ours.as_slice())
        .unwrap();
    der[at..at + theirs.len()].copy_from_slice(&theirs);
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let status = client
        .create_certificate(request(&tampered, "token-web"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("signature does not verify"),
        "{status:?}"
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn the_grpc_port_speaks_tls13_only_and_survives_junk() {
    let (_scratch, cp, root, _) = started().await;

    // Plaintext HTTP/2 and random bytes: the connection fails, nothing else.
    for junk in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0][..],
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(cp.grpc_addr).await.unwrap();
        conn.write_all(junk).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server closed the junk connection");
    }

    // A TLS 1.2-only client gets no handshake.
    let result = handshake(&cp, &root, &rustls::version::TLS12).await;
    assert!(result.is_err(), "TLS 1.2 accepted");

    // A TLS 1.3 client gets h2 and a serving certificate that names the
    // control plane's own identity and the DNS name it was dialled by.
    let tls = handshake(&cp, &root, &rustls::version::TLS13)
        .await
        .unwrap();
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    let chain = session.peer_certificates().unwrap();
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    let names = sans(&chain[0]);
    assert_eq!(
        names,
        vec![
            "URI(spiffe://cluster.local/ns/remora-system/sa/remora-cp)",
            "DNSName(localhost)"
        ]
    );
    drop(tls);

    let mut client = client(&cp, &root).await;
    let issued = issue(&mut client, request(&csr(|_| {}).1, "token-web")).await;
    assert_eq!(issued.identity, WEB);
    cp.shutdown().await;
}

/// Connections that never start a handshake do not keep an honest proxy
/// from its certificate, and are closed at the handshake timeout.
#[tokio::test]
async fn silent_connections_do_not_starve_the_service() {
    use tokio::io::AsyncReadExt;
    let (_scratch, cp, root, _) = started().await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(cp.grpc_addr).await.unwrap());
    }
    let opened = std::time::Instant::now();
    let honest = tokio::time::timeout(Duration::from_secs(2), async {
        let mut c = client(&cp, &root).await;
        issue(&mut c, request(&csr(|_| {}).1, "token-web")).await
    })
    .await
    .expect("an honest client waited behind 300 silent connections");
    assert_eq!(honest.identity, WEB);

    // Each silent connection is closed by the server (EOF), not before the
    // timeout and not long after it.
    let mut buf = [0u8; 1];
    for conn in &mut silent {
        let n = tokio::time::timeout(Duration::from_secs(8), conn.read(&mut buf))
            .await
            .expect("a silent connection stayed open past the handshake timeout")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(4500) && waited < Duration::from_secs(8),
        "closed after {waited:?}, want about {:?}",
        remora_cp::tls::HANDSHAKE_TIMEOUT
    );
    cp.shutdown().await;
}

/// A proxy's calls on one connection are not held back by Nagle and
/// delayed ACKs (which cost ~40 ms per call before TCP_NODELAY).
#[tokio::test]
async fn sequential_calls_on_one_connection_are_not_delayed() {
    let (_scratch, cp, _, mut client) = started().await;
    let (_, csr_pem) = csr(|_| {});
    issue(&mut client, request(&csr_pem, "token-web")).await;
    let started_at = std::time::Instant::now();
    for _ in 0..20 {
        issue(&mut client, request(&csr_pem, "token-web")).await;
    }
    let took = started_at.elapsed();
    assert!(took < Duration::from_millis(400), "20 calls took {took:?}");
    cp.shutdown().await;
}
