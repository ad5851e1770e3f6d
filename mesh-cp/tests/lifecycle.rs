//! remora-cp across restarts: the persisted root, a supplied root, the
//! three-step root rotation, a token file edited while running, and the
//! binary's own start, readiness and SIGTERM drain.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_remora-cp");

#[tokio::test]
async fn a_restart_with_the_same_state_dir_keeps_the_root() {
    let scratch = Scratch::new();
    let cp = scratch.start(&[]).await.unwrap();
    let root = read(&scratch.path("state/root-cert.pem"));
    let mut c = client(&cp, &root).await;
    let first_bundle = bundle(&mut c).await;
    let (key, csr_pem) = csr(|_| {});
    let before_restart = issue(&mut c, request(&csr_pem, "token-web")).await;
    cp.shutdown().await;

    let cp = scratch.start(&[]).await.unwrap();
    let mut c = client(&cp, &root).await;
    assert_eq!(bundle(&mut c).await, first_bundle);
    assert_eq!(read(&scratch.path("state/root-cert.pem")), root);
    // A leaf from before the restart still verifies against the bundle
    // served after it, and so does one from after.
    verify(&before_restart, &first_bundle, &key).unwrap();
    let after_restart = issue(&mut c, request(&csr_pem, "token-web")).await;
    verify(&after_restart, &first_bundle, &key).unwrap();
    cp.shutdown().await;

    // Another state directory means another root: the first leaf fails there.
    let other = Scratch::new();
    let cp = other.start(&[]).await.unwrap();
    let other_root = read(&other.path("state/root-cert.pem"));
    let mut c = client(&cp, &other_root).await;
    let other_bundle = bundle(&mut c).await;
    assert_ne!(other_bundle, first_bundle);
    let err = verify(&before_restart, &other_bundle, &key).unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    cp.shutdown().await;
}

fn generate_root(dir: &std::path::Path) {
    let out = Command::new(BIN)
        .args(["root", "generate", "--out-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        dir.join("root-cert.pem").display().to_string()
    );
}

/// The CA side of a rotation: at each step, every leaf a proxy may still
/// hold verifies against the bundle every other proxy may hold, until step 3
/// retires the old root.
#[tokio::test]
async fn a_root_rotates_in_three_steps_without_a_leaf_that_fails_in_between() {
    let scratch = Scratch::new();
    let old_dir = scratch.path("state");
    let new_dir = scratch.path("new-root");
    let old_cert = old_dir.join("root-cert.pem").display().to_string();
    let new_cert = new_dir.join("root-cert.pem").display().to_string();
    let (key, csr_pem) = csr(|_| {});

    // Step 0: the old root alone.
    let cp = scratch.start(&[]).await.unwrap();
    let old_root = read(&old_dir.join("root-cert.pem"));
    let mut c = client(&cp, &old_root).await;
    let bundle0 = bundle(&mut c).await;
    let leaf0 = issue(&mut c, request(&csr_pem, "token-web")).await;
    cp.shutdown().await;

    // Step 1: a new root, served in the bundle beside the old one; the old
    // root still signs. A second `root generate` into the same place refuses.
    generate_root(&new_dir);
    let again = Command::new(BIN)
        .args(["root", "generate", "--out-dir"])
        .arg(&new_dir)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let new_root = read(&new_dir.join("root-cert.pem"));
    let cp = scratch
        .start(&["--extra-trust-root", &new_cert])
        .await
        .unwrap();
    let mut c = client(&cp, &old_root).await;
    let bundle1 = bundle(&mut c).await;
    assert_eq!(bundle1, vec![old_root.clone(), new_root.clone()]);
    let leaf1 = issue(&mut c, request(&csr_pem, "token-web")).await;
    verify(&leaf1, &bundle0, &key).unwrap();
    verify(&leaf0, &bundle1, &key).unwrap();
    let (_, metrics) = admin_get(&cp, "/metrics").await;
    assert_eq!(metric(&metrics, "remora_cp_trust_bundle_roots"), 2);
    cp.shutdown().await;

    // Step 2: the new root signs (a new intermediate), the old one is still
    // trusted. New leaves verify against the step-1 bundle that proxies hold;
    // old leaves verify against the step-2 bundle.
    let cp = scratch
        .start(&[
            "--state-dir",
            &new_dir.display().to_string(),
            "--extra-trust-root",
            &old_cert,
        ])
        .await
        .unwrap();
    let mut c = client(&cp, &bundle1.concat()).await;
    let bundle2 = bundle(&mut c).await;
    assert_eq!(bundle2, vec![new_root.clone(), old_root.clone()]);
    let leaf2 = issue(&mut c, request(&csr_pem, "token-web")).await;
    verify(&leaf2, &bundle1, &key).unwrap();
    verify(&leaf1, &bundle2, &key).unwrap();
    let err = verify(&leaf2, &bundle0, &key).unwrap_err();
    assert!(
        err.contains("UnknownIssuer"),
        "a proxy still on step 0 would refuse: {err}"
    );
    cp.shutdown().await;

    // Step 3: the old root leaves the bundle; old leaves stop verifying.
    let cp = scratch
        .start(&["--state-dir", &new_dir.display().to_string()])
        .await
        .unwrap();
    let mut c = client(&cp, &new_root).await;
    let bundle3 = bundle(&mut c).await;
    assert_eq!(bundle3, vec![new_root.clone()]);
    let leaf3 = issue(&mut c, request(&csr_pem, "token-web")).await;
    verify(&leaf3, &bundle2, &key).unwrap();
    verify(&leaf2, &bundle3, &key).unwrap();
    let err = verify(&leaf1, &bundle3, &key).unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    cp.shutdown().await;
}

#[tokio::test]
async fn a_supplied_root_signs_and_a_mismatched_key_stops_the_start() {
    let scratch = Scratch::new();
    let a = scratch.path("a");
    let b = scratch.path("b");
    generate_root(&a);
    generate_root(&b);
    let path = |dir: &std::path::Path, file: &str| dir.join(file).display().to_string();

    let cp = scratch
        .start(&[
            "--root-cert",
            &path(&a, "root-cert.pem"),
            "--root-key",
            &path(&a, "root-key.pem"),
        ])
        .await
        .unwrap();
    let root = read(&a.join("root-cert.pem"));
    let mut c = client(&cp, &root).await;
    assert_eq!(bundle(&mut c).await, vec![root.clone()]);
    let (key, csr_pem) = csr(|_| {});
    verify(
        &issue(&mut c, request(&csr_pem, "token-db")).await,
        &[root],
        &key,
    )
    .unwrap();
    cp.shutdown().await;
    // A supplied root is not copied into the state directory.
    assert!(!scratch.path("state").exists());

    let err = scratch
        .start(&[
            "--root-cert",
            &path(&a, "root-cert.pem"),
            "--root-key",
            &path(&b, "root-key.pem"),
        ])
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("does not match the root certificate"),
        "{err:#}"
    );

    // A leaf-looking extra root is refused by name.
    let err = scratch
        .start(&["--extra-trust-root", &path(&a, "root-key.pem")])
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("root-key.pem"), "{err:#}");
}

#[tokio::test]
async fn a_token_file_edited_while_running_takes_effect_on_the_next_request() {
    let scratch = Scratch::new();
    let cp = scratch.start(&[]).await.unwrap();
    let mut c = client(&cp, &read(&scratch.path("state/root-cert.pem"))).await;
    let (_, csr_pem) = csr(|_| {});
    let refused = c
        .create_certificate(request(&csr_pem, "token-new"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let next = scratch.path("tokens.next");
    std::fs::write(
        &next,
        "tokens:\n  - token: token-new\n    namespace: batch\n    serviceAccount: jobs\n",
    )
    .unwrap();
    std::fs::rename(&next, scratch.path("tokens.yaml")).unwrap();
    let issued = issue(&mut c, request(&csr_pem, "token-new")).await;
    assert_eq!(issued.identity, "spiffe://cluster.local/ns/batch/sa/jobs");
    let gone = c
        .create_certificate(request(&csr_pem, "token-web"))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::Unauthenticated);

    // A broken edit keeps the last good tokens and is counted.
    std::fs::write(&next, "tokens: [").unwrap();
    std::fs::rename(&next, scratch.path("tokens.yaml")).unwrap();
    issue(&mut c, request(&csr_pem, "token-new")).await;
    let (_, metrics) = admin_get(&cp, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "remora_cp_token_file_reloads_total{result=\"ok\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &metrics,
            "remora_cp_token_file_reloads_total{result=\"error\"}"
        ),
        1
    );
    cp.shutdown().await;
}

/// The binary as an operator runs it: bad flags exit 2 naming the flag; a
/// good start becomes ready; SIGTERM drains and exits 0 within the deadline.
#[tokio::test]
async fn the_binary_starts_ready_and_drains_on_sigterm() {
    let scratch = Scratch::new();
    let bad = Command::new(BIN)
        .args(scratch.args(&["--cert-lifetime", "1s"])[1..].iter())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--cert-lifetime"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Fixed loopback ports picked by binding and releasing them.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (grpc, admin) = (free(), free());
    let mut args = scratch.args(&[]);
    for (flag, addr) in [("--grpc-addr", grpc), ("--admin-addr", admin)] {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = addr.to_string();
    }
    let mut child = Command::new(BIN)
        .args(args[1..].iter())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(admin).await.ok()?;
        conn.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).await.ok()?;
        text.get(9..12).map(str::to_owned)
    };
    let started = Instant::now();
    while get("/ready").await.as_deref() != Some("200") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "remora-cp never became ready: {:?}",
            child.try_wait()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get("/live").await.as_deref(), Some("200"));
    assert_eq!(get("/nope").await.as_deref(), Some("404"));
    // A client that got a certificate keeps its connection open across the
    // SIGTERM: the drain must not wait for it to go away on its own.
    let root = read(&scratch.path("state/root-cert.pem"));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&root))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = remora_cp::proto::certificates_client::CertificatesClient::new(channel);
    let issued = issue(&mut c, request(&csr(|_| {}).1, "token-web")).await;
    assert_eq!(issued.identity, WEB);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "no exit within the 2 s drain deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(
        logs.contains("remora-cp started") && logs.contains("draining") && logs.contains("stopped"),
        "{logs}"
    );
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "admin port still open"
    );
    drop(c);
}

/// Short lifetimes, so the renewals happen within the test: the
/// intermediate and the serving certificate are replaced while requests go
/// on, none fails, and every leaf verifies against the (unchanged) bundle.
#[tokio::test]
async fn the_intermediate_and_the_serving_certificate_renew_under_requests() {
    let scratch = Scratch::new();
    let cp = scratch
        .start(&[
            "--cert-lifetime",
            "10s",
            "--cert-max-lifetime",
            "10s",
            "--intermediate-lifetime",
            "20s",
        ])
        .await
        .unwrap();
    let root = read(&scratch.path("state/root-cert.pem"));
    let serving_serial = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        let chain = tls.get_ref().1.peer_certificates().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        cert.raw_serial().to_vec()
    };
    let first_serving = serving_serial(
        &handshake(&cp, &root, &rustls::version::TLS13)
            .await
            .unwrap(),
    );
    let mut c = client(&cp, &root).await;
    let roots = bundle(&mut c).await;
    let (key, csr_pem) = csr(|_| {});
    let first = issue(&mut c, request(&csr_pem, "token-web")).await;
    let (_, metrics) = admin_get(&cp, "/metrics").await;
    let first_expiry = metric(&metrics, "remora_cp_intermediate_expiry_seconds");

    // 12 s at 4 requests a second: past the first renewal of the
    // intermediate (~8 s), before the second (~16 s).
    let mut intermediates = std::collections::BTreeSet::new();
    for _ in 0..48 {
        let leaf = issue(&mut c, request(&csr_pem, "token-web")).await;
        verify(&leaf, &roots, &key).unwrap();
        intermediates.insert(leaf.chain_pem[0].clone());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(intermediates.contains(&first.chain_pem[0]));
    assert_eq!(
        intermediates.len(),
        2,
        "one renewal of the intermediate in 12 s"
    );
    assert_eq!(bundle(&mut c).await, roots);
    let (_, metrics) = admin_get(&cp, "/metrics").await;
    let expiry = metric(&metrics, "remora_cp_intermediate_expiry_seconds");
    assert!(
        (8..=12).contains(&(expiry - first_expiry)),
        "{first_expiry} -> {expiry}"
    );
    assert_eq!(metric(&metrics, "remora_cp_certificates_issued_total"), 49);

    // A fresh handshake gets a renewed serving certificate, and it verifies.
    let renewed = serving_serial(
        &handshake(&cp, &root, &rustls::version::TLS13)
            .await
            .unwrap(),
    );
    assert_ne!(renewed, first_serving);
    cp.shutdown().await;
}
