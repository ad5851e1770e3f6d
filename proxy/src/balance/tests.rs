//! Balancer tests: policies over real endpoint state, ejection, panic mode
//! and config updates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use remora_api as api;

use super::*;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8], 8080))
}

fn endpoint(i: usize, weight: u32) -> api::Endpoint {
    api::Endpoint {
        address: addr(i),
        weight,
        identity: None,
        zone: None,
    }
}

fn backend(n: usize, lb: api::LoadBalancer) -> api::Backend {
    api::Backend {
        endpoints: (0..n).map(|i| endpoint(i, 1)).collect(),
        load_balancer: lb,
        health_check: None,
        outlier_detection: api::OutlierDetection::default(),
        circuit_breaker: api::CircuitBreaker::default(),
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        retry_budget: api::RetryBudget::default(),
    }
}

fn pick_index(b: &Balancer, hash: Option<u64>, now: Instant, rng: &mut StdRng) -> usize {
    let picked = b.pick_with(hash, now, rng).expect("an endpoint");
    usize::from(match picked.address().ip() {
        std::net::IpAddr::V4(ip) => ip.octets()[3],
        std::net::IpAddr::V6(_) => unreachable!(),
    })
}

fn fail(b: &Balancer, i: usize, outcome: Outcome, times: u32, now: Instant) {
    let e = b.endpoints()[i].clone();
    for _ in 0..times {
        e.start_request_at(now).finish_at(outcome, now);
    }
}

#[test]
fn round_robin_is_exactly_even() {
    let b = Balancer::new("reviews", &backend(3, api::LoadBalancer::RoundRobin), None);
    let mut counts = [0; 3];
    for _ in 0..3000 {
        counts[pick_index(&b, None, Instant::now(), &mut StdRng::seed_from_u64(0))] += 1;
    }
    assert_eq!(counts, [1000, 1000, 1000]);
}

#[test]
fn an_empty_backend_picks_nothing() {
    for lb in [
        api::LoadBalancer::RoundRobin,
        api::LoadBalancer::LeastRequest,
        api::LoadBalancer::ConsistentHash(api::HashOn::SourceIp),
    ] {
        assert!(Balancer::new("empty", &backend(0, lb), None)
            .pick(Some(1))
            .is_none());
    }
}

#[test]
fn consecutive_5xx_eject_and_the_endpoint_returns_after_base_ejection_time() {
    let counter = prometheus::IntCounter::new("ejections", "test").unwrap();
    let b = Balancer::new(
        "reviews",
        &backend(3, api::LoadBalancer::RoundRobin),
        Some(counter.clone()),
    );
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(0);
    fail(&b, 1, Outcome::Status(500), 4, t0);
    assert_eq!(b.ejected_at(t0), 0, "four of five");
    fail(&b, 1, Outcome::Status(500), 1, t0);
    assert_eq!(b.ejected_at(t0), 1);
    assert_eq!(b.ejections_total(), 1);
    assert_eq!(counter.get(), 1);

    let mut counts = [0; 3];
    for _ in 0..3000 {
        counts[pick_index(&b, None, t0, &mut rng)] += 1;
    }
    assert_eq!(counts, [1500, 0, 1500]);

    // baseEjectionTime is 30 s by default.
    let later = t0 + Duration::from_secs(31);
    assert_eq!(b.ejected_at(later), 0);
    let mut counts = [0; 3];
    for _ in 0..3000 {
        counts[pick_index(&b, None, later, &mut rng)] += 1;
    }
    assert_eq!(counts, [1000, 1000, 1000]);
}

#[test]
fn max_ejection_percent_holds_the_rest_in() {
    // 4 endpoints at 50%: two may be out.
    let b = Balancer::new("reviews", &backend(4, api::LoadBalancer::RoundRobin), None);
    let t0 = Instant::now();
    for i in 0..4 {
        fail(&b, i, Outcome::ConnectFailure, 5, t0);
    }
    assert_eq!(b.ejected_at(t0), 2);
    assert_eq!(b.ejections_total(), 2);
}

#[test]
fn when_everything_is_out_every_endpoint_is_used() {
    let mut be = backend(2, api::LoadBalancer::RoundRobin);
    be.outlier_detection.max_ejection_percent = 100;
    let b = Balancer::new("reviews", &be, None);
    let t0 = Instant::now();
    fail(&b, 0, Outcome::Status(503), 5, t0);
    fail(&b, 1, Outcome::Status(503), 5, t0);
    assert_eq!(b.ejected_at(t0), 2);
    let mut rng = StdRng::seed_from_u64(0);
    let mut counts = [0; 2];
    for _ in 0..100 {
        counts[pick_index(&b, None, t0, &mut rng)] += 1;
    }
    assert_eq!(counts, [50, 50]);
}

#[test]
fn every_policy_skips_ejected_and_unhealthy_endpoints() {
    let mut rng = StdRng::seed_from_u64(9);
    for lb in [
        api::LoadBalancer::RoundRobin,
        api::LoadBalancer::LeastRequest,
        api::LoadBalancer::ConsistentHash(api::HashOn::SourceIp),
    ] {
        let b = Balancer::new("reviews", &backend(4, lb.clone()), None);
        let t0 = Instant::now();
        fail(&b, 0, Outcome::Status(502), 5, t0);
        let hc = api::HealthCheck {
            path: "/".into(),
            port: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        };
        b.endpoints()[3].health.observe(false, &hc);
        for k in 0..500u64 {
            let i = pick_index(&b, Some(hash::stable_hash(&k.to_be_bytes())), t0, &mut rng);
            assert!(i == 1 || i == 2, "{lb:?} picked {i}");
        }
    }
}

#[test]
fn least_request_prefers_the_idle_and_the_fast() {
    let b = Balancer::new(
        "reviews",
        &backend(2, api::LoadBalancer::LeastRequest),
        None,
    );
    let mut rng = StdRng::seed_from_u64(5);
    let t0 = Instant::now();
    let busy = b.endpoints()[0].clone();
    let guards: Vec<RequestGuard> = (0..3).map(|_| busy.start_request_at(t0)).collect();
    assert_eq!(busy.in_flight(), 3);
    for _ in 0..50 {
        assert_eq!(pick_index(&b, None, t0, &mut rng), 1);
    }
    drop(guards);
    assert_eq!(busy.in_flight(), 0, "dropped guards end the count");

    // Now endpoint 1 answers slowly.
    let slow = b.endpoints()[1].clone();
    slow.start_request_at(t0)
        .finish_at(Outcome::Success, t0 + Duration::from_secs(2));
    let t1 = t0 + Duration::from_secs(2);
    for _ in 0..50 {
        assert_eq!(pick_index(&b, None, t1, &mut rng), 0);
    }
}

#[test]
fn least_request_honours_weight() {
    let mut be = backend(2, api::LoadBalancer::LeastRequest);
    be.endpoints[1].weight = 4;
    let b = Balancer::new("reviews", &be, None);
    let mut rng = StdRng::seed_from_u64(5);
    let t0 = Instant::now();
    // Same latency estimate: two in flight on the weight-4 endpoint cost
    // (2+1)/4 of one, less than the idle weight-1 endpoint's (0+1)/1.
    let heavy = b.endpoints()[1].clone();
    let _g: Vec<RequestGuard> = (0..2).map(|_| heavy.start_request_at(t0)).collect();
    for _ in 0..50 {
        assert_eq!(pick_index(&b, None, t0, &mut rng), 1);
    }
}

#[test]
fn consistent_hash_keeps_a_key_on_its_endpoint() {
    let on = api::LoadBalancer::ConsistentHash(api::HashOn::Header("x-user".into()));
    let b = Balancer::new("reviews", &backend(5, on), None);
    let mut rng = StdRng::seed_from_u64(1);
    let t0 = Instant::now();
    for k in 0..100u64 {
        let key = Some(hash::stable_hash(&k.to_be_bytes()));
        let first = pick_index(&b, key, t0, &mut rng);
        for _ in 0..5 {
            assert_eq!(pick_index(&b, key, t0, &mut rng), first);
        }
    }
}

#[test]
fn update_keeps_the_state_of_surviving_endpoints() {
    let b = Balancer::new("reviews", &backend(3, api::LoadBalancer::RoundRobin), None);
    let t0 = Instant::now();
    fail(&b, 1, Outcome::Status(503), 5, t0);
    let before = b.endpoints();
    assert_eq!(b.ejected_at(t0), 1);

    // Drop endpoint 0, add endpoint 3, change endpoint 2's weight, switch
    // to least request.
    let mut be = backend(4, api::LoadBalancer::LeastRequest);
    be.endpoints.remove(0);
    be.endpoints[1].weight = 3;
    b.update(&be);

    let after = b.endpoints();
    assert_eq!(after.len(), 3);
    assert!(
        Arc::ptr_eq(&before[1], &after[0]),
        "unchanged endpoint kept as is"
    );
    assert!(
        after[0].outlier.is_ejected(epoch_nanos(t0)),
        "ejection survives"
    );
    assert!(!Arc::ptr_eq(&before[2], &after[1]), "new weight, new state");
    assert_eq!(after[1].weight(), 3);
    assert_eq!(b.ejected_at(t0), 1);
    let mut rng = StdRng::seed_from_u64(0);
    for _ in 0..100 {
        assert_ne!(pick_index(&b, None, t0, &mut rng), 1);
    }

    // An update that carries over an ejected endpoint with a new weight
    // keeps it ejected too.
    let mut be2 = be.clone();
    be2.endpoints[0].weight = 2;
    b.update(&be2);
    assert_eq!(b.ejected_at(t0), 1);
}

#[test]
fn dropping_health_checks_brings_endpoints_back() {
    let mut be = backend(2, api::LoadBalancer::RoundRobin);
    let hc = api::HealthCheck {
        path: "/".into(),
        port: None,
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        healthy_threshold: 1,
        unhealthy_threshold: 1,
    };
    be.health_check = Some(hc.clone());
    let b = Balancer::new("reviews", &be, None);
    b.endpoints()[0].health.observe(false, &hc);
    b.update(&be);
    assert!(!b.endpoints()[0].is_healthy(), "still checked: still out");
    be.health_check = None;
    b.update(&be);
    assert!(b.endpoints()[0].is_healthy());
}

#[test]
fn a_guard_from_a_removed_endpoint_does_not_eject() {
    let b = Balancer::new("reviews", &backend(3, api::LoadBalancer::RoundRobin), None);
    let gone = b.endpoints()[0].clone();
    b.update(&backend(0, api::LoadBalancer::RoundRobin));
    let t0 = Instant::now();
    for _ in 0..10 {
        gone.start_request_at(t0)
            .finish_at(Outcome::Status(500), t0);
    }
    assert_eq!(b.ejections_total(), 0);
}

#[tokio::test]
async fn health_checks_take_a_dead_endpoint_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = up.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down_addr = down.local_addr().unwrap();
    drop(down);

    let check = api::HealthCheck {
        path: "/healthz".into(),
        port: None,
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
        healthy_threshold: 1,
        unhealthy_threshold: 2,
    };
    let mut be = backend(0, api::LoadBalancer::RoundRobin);
    for a in [up_addr, down_addr] {
        be.endpoints.push(api::Endpoint {
            address: a,
            weight: 1,
            identity: None,
            zone: None,
        });
    }
    be.health_check = Some(check.clone());
    let b = Arc::new(Balancer::new("reviews", &be, None));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let connector = Arc::new(crate::transport::Connector::plaintext());
    let task = spawn_health_checks(b.clone(), check, connector, async move {
        let _ = stopped.await;
    });

    let deadline = Instant::now() + Duration::from_secs(5);
    while b.endpoints()[1].is_healthy() {
        assert!(
            Instant::now() < deadline,
            "the dead endpoint was never taken out"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(b.endpoints()[0].is_healthy());
    for _ in 0..20 {
        assert_eq!(b.pick(None).unwrap().address(), up_addr);
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the task stops on drain")
        .unwrap();
}

#[test]
fn concurrent_picks_and_finishes_leave_nothing_in_flight() {
    let b = Arc::new(Balancer::new(
        "reviews",
        &backend(4, api::LoadBalancer::LeastRequest),
        None,
    ));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                for n in 0..5_000 {
                    let guard = b.pick(None).expect("an endpoint").start_request();
                    match n % 3 {
                        0 => guard.finish(Outcome::Success),
                        1 => drop(guard),
                        _ => guard.finish(Outcome::Status(if t == 0 { 503 } else { 200 })),
                    }
                    if n % 1000 == 0 {
                        b.update(&backend(4, api::LoadBalancer::LeastRequest));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(b.endpoints().iter().all(|e| e.in_flight() == 0));
}
