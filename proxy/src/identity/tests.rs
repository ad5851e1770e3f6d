//! The state machine's edges: readiness text, and a certificate that
//! expires with no renewal is dropped at its notAfter.

use super::*;

fn credentials(not_after: SystemTime) -> Arc<Credentials> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .unwrap();
    Arc::new(Credentials {
        identity: crate::transport::Identity::new("spiffe://cluster.local/ns/default/sa/web"),
        certified_key: Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert.der().clone()],
            signing,
        )),
        serial_hex: "0abc".to_owned(),
        not_after,
    })
}

fn metrics() -> IdentityMetrics {
    IdentityMetrics::register(&prometheus::Registry::new()).unwrap()
}

#[test]
fn readiness_says_what_is_missing() {
    let mut state = IdentityState::empty();
    assert_eq!(
        state.readiness(),
        Err("identity: waiting for the first certificate".to_owned())
    );
    state.ca = CaStatus::Failing {
        reachable: true,
        error: Arc::from("the CA refused the request (Unauthenticated): unknown token"),
    };
    assert_eq!(
        state.readiness(),
        Err(
            "identity: no valid certificate: the CA refused the request (Unauthenticated): unknown token"
                .to_owned()
        )
    );
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    state.credentials = Some(credentials(not_after));
    state.ca = CaStatus::Failing {
        reachable: false,
        error: Arc::from("the CA at cp:15012 is unreachable: connection refused"),
    };
    assert_eq!(
        state.readiness(),
        Ok(Some(
            "identity: the CA at cp:15012 is unreachable: connection refused; \
             serving with the current certificate until 2027-01-15T08:00:00Z"
                .to_owned()
        ))
    );
    state.ca = CaStatus::Ok;
    assert_eq!(state.readiness(), Ok(None));
    assert!(
        !format!("{:?}", state.credentials).contains("key"),
        "the key is never printed"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_certificate_is_dropped_at_not_after() {
    let metrics = metrics();
    metrics.expiry.set(123);
    let mut state = IdentityState::empty();
    state.credentials = Some(credentials(SystemTime::now() + Duration::from_secs(2)));
    let (tx, mut rx) = watch::channel(Arc::new(state));
    rx.mark_unchanged();
    let waiting = tokio::spawn(async move {
        wait_or_expire(Duration::from_secs(30), &tx, &metrics).await;
        metrics
    });
    rx.changed().await.unwrap();
    let at = tokio::time::Instant::now();
    assert!(rx.borrow().credentials.is_none(), "expired: no certificate");
    let metrics = waiting.await.unwrap();
    assert_eq!(metrics.expiry.get(), 0);
    // The retry still happens at its own time, after the expiry.
    assert!(tokio::time::Instant::now() - at >= Duration::from_secs(27));
}

#[tokio::test(start_paused = true)]
async fn a_certificate_outliving_the_wait_is_kept() {
    let metrics = metrics();
    let mut state = IdentityState::empty();
    state.credentials = Some(credentials(SystemTime::now() + Duration::from_secs(3600)));
    let (tx, rx) = watch::channel(Arc::new(state));
    wait_or_expire(Duration::from_secs(30), &tx, &metrics).await;
    assert!(rx.borrow().credentials.is_some());
    assert!(!rx.has_changed().unwrap());
}
