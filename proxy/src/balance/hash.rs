//! Consistent hashing: the request key and the hash ring.
//!
//! This file owns [`hash_key`] (which request property is hashed, and how)
//! and the [`Ring`] that maps a key to an endpoint. It does not know which
//! endpoints are ejected; the caller says which are usable.
//!
//! The hash is FNV-1a (64-bit) passed through MurmurHash3's `fmix64`
//! finaliser, both written out below. It is defined here rather than taken
//! from `std::hash`, whose algorithm may change between Rust releases, so
//! that every proxy of every version maps a key to the same endpoint.
//!
//! Each endpoint owns [`VNODES`] points on the ring (scaled by its weight
//! over the mean weight), placed by hashing its address and the point's
//! number. A key goes to the first point at or after its hash. With equal
//! weights, adding an endpoint to N moves about 1/(N+1) of the keys, all to
//! the new one, and removing one moves only its own keys. Past
//! [`MAX_POINTS`] points in all, each endpoint gets fewer (so a very large
//! backend trades some of that stability for memory).

use std::net::{IpAddr, SocketAddr};

use http::header::COOKIE;
use remora_api::HashOn;

/// Points per endpoint of mean weight.
pub(super) const VNODES: usize = 128;

/// The most points a ring has (1 MiB of 16-byte points).
pub(super) const MAX_POINTS: usize = 65_536;

/// The request's hash key under `on`: the named header's first value, the
/// named cookie's value, or the peer's IP address. `None` when the header
/// or cookie is missing; such requests are spread at random.
pub(crate) fn hash_key(on: &HashOn, req: &http::request::Parts, peer: SocketAddr) -> Option<u64> {
    match on {
        HashOn::Header(name) => req
            .headers
            .get(name.as_str())
            .map(|value| stable_hash(value.as_bytes())),
        HashOn::Cookie(name) => req
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k.trim() == name).then(|| stable_hash(v.trim().as_bytes()))
            }),
        HashOn::SourceIp => Some(match peer.ip().to_canonical() {
            IpAddr::V4(ip) => stable_hash(&ip.octets()),
            IpAddr::V6(ip) => stable_hash(&ip.octets()),
        }),
    }
}

/// FNV-1a 64 of `bytes`, finalised with `fmix64`.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = StableHasher::new();
    h.write(bytes);
    h.finish()
}

struct StableHasher(u64);

impl StableHasher {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Self(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn finish(&self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^= k >> 33;
        k
    }
}

/// Where a point of `address` sits on the ring.
fn point_hash(address: SocketAddr, point: u32) -> u64 {
    let mut h = StableHasher::new();
    match address.ip().to_canonical() {
        IpAddr::V4(ip) => h.write(&ip.octets()),
        IpAddr::V6(ip) => h.write(&ip.octets()),
    }
    h.write(&address.port().to_be_bytes());
    h.write(&point.to_be_bytes());
    h.finish()
}

/// Sorted points: (position, endpoint index).
#[derive(Debug)]
pub(super) struct Ring {
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// A ring over `endpoints` (address, weight), in the selector's order.
    pub(super) fn new(endpoints: &[(SocketAddr, u32)]) -> Self {
        if endpoints.is_empty() {
            return Self {
                points: Box::new([]),
            };
        }
        let n = endpoints.len();
        let per_endpoint = (MAX_POINTS / n).clamp(1, VNODES) as f64;
        let total_weight: f64 = endpoints.iter().map(|&(_, w)| f64::from(w.max(1))).sum();
        let mean = total_weight / n as f64;
        let mut points = Vec::new();
        for (index, &(address, weight)) in endpoints.iter().enumerate() {
            let share = (per_endpoint * f64::from(weight.max(1)) / mean).round();
            // At least one point; f64 -> u32 saturates.
            let count = (share as u32).max(1);
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            points.extend((0..count).map(|p| (point_hash(address, p), index)));
        }
        points.sort_unstable();
        Self {
            points: points.into_boxed_slice(),
        }
    }

    /// The endpoint owning `key`, walking on past unusable ones; the owner
    /// itself if none is usable. `None` only when empty.
    pub(super) fn pick(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let start = self.points.partition_point(|&(at, _)| at < key) % len;
        let owner = self.points[start].1 as usize;
        if usable(owner) {
            return Some(owner);
        }
        (1..len)
            .map(|step| self.points[(start + step) % len].1 as usize)
            .find(|&i| usable(i))
            .or(Some(owner))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 8080))
    }

    fn ring(n: usize) -> (Ring, Vec<SocketAddr>) {
        let addrs: Vec<SocketAddr> = (0..n).map(addr).collect();
        let nodes: Vec<(SocketAddr, u32)> = addrs.iter().map(|&a| (a, 1)).collect();
        (Ring::new(&nodes), addrs)
    }

    fn owners(ring: &Ring, addrs: &[SocketAddr], keys: u64) -> Vec<SocketAddr> {
        (0..keys)
            .map(|k| addrs[ring.pick(stable_hash(&k.to_be_bytes()), |_| true).unwrap()])
            .collect()
    }

    #[test]
    fn the_hash_is_pinned() {
        // Changing these changes which endpoint every key maps to, on every
        // proxy: don't, unless that is the point.
        // (Worked out independently of this code.)
        assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(stable_hash(b"user-42"), 0xa395_32c7_ab05_1e8d);
        assert_ne!(stable_hash(b"user-42"), stable_hash(b"user-43"));
    }

    #[test]
    fn keys_spread_evenly() {
        let (ring, addrs) = ring(5);
        let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
        for owner in owners(&ring, &addrs, 50_000) {
            *counts.entry(owner).or_default() += 1;
        }
        for (a, c) in counts {
            assert!((7_000..13_000).contains(&c), "{a} got {c} of 50000 keys");
        }
    }

    #[test]
    fn adding_an_endpoint_moves_about_its_share_and_only_to_it() {
        let (before, addrs) = ring(9);
        let (after, addrs10) = ring(10);
        let old = owners(&before, &addrs, 20_000);
        let new = owners(&after, &addrs10, 20_000);
        let mut moved = 0;
        for (o, n) in old.iter().zip(&new) {
            if o != n {
                moved += 1;
                assert_eq!(*n, addrs10[9], "a key moved between old endpoints");
            }
        }
        // 1/10 of the keys, within noise.
        assert!((1_400..2_600).contains(&moved), "{moved} of 20000 moved");
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        let (before, addrs) = ring(10);
        let nodes: Vec<(SocketAddr, u32)> = addrs[1..].iter().map(|&a| (a, 1)).collect();
        let after = Ring::new(&nodes);
        let old = owners(&before, &addrs, 20_000);
        let new = owners(&after, &addrs[1..], 20_000);
        for (o, n) in old.iter().zip(&new) {
            if *o != addrs[0] {
                assert_eq!(o, n, "a key of a surviving endpoint moved");
            }
        }
    }

    #[test]
    fn unusable_owners_hand_over_to_the_next_point_and_back() {
        let (ring, _) = ring(4);
        let key = stable_hash(b"k");
        let owner = ring.pick(key, |_| true).unwrap();
        let stand_in = ring.pick(key, |i| i != owner).unwrap();
        assert_ne!(stand_in, owner);
        assert_eq!(ring.pick(key, |_| false), Some(owner), "panic mode");
        assert_eq!(ring.pick(key, |_| true), Some(owner));
        assert_eq!(Ring::new(&[]).pick(key, |_| true), None);
    }

    #[test]
    fn weight_scales_the_share() {
        let nodes = [(addr(0), 3), (addr(1), 1)];
        let ring = Ring::new(&nodes);
        let heavy = (0..20_000u64)
            .filter(|k| ring.pick(stable_hash(&k.to_be_bytes()), |_| true) == Some(0))
            .count();
        assert!((13_500..16_500).contains(&heavy), "{heavy} of 20000");
    }

    #[test]
    fn ring_size_is_capped() {
        let nodes: Vec<(SocketAddr, u32)> = (0..2000).map(|i| (addr(i), 1)).collect();
        assert!(Ring::new(&nodes).points.len() <= MAX_POINTS);
    }

    fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut req = http::Request::builder().uri("/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hash_key_reads_the_header_the_cookie_or_the_peer() {
        let peer: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let header = HashOn::Header("x-user".into());
        let req = parts(&[("x-user", "alice")]);
        assert_eq!(hash_key(&header, &req, peer), Some(stable_hash(b"alice")));
        assert_eq!(hash_key(&header, &parts(&[]), peer), None);

        let cookie = HashOn::Cookie("session".into());
        let req = parts(&[("cookie", "a=1; session=abc ;b=2")]);
        assert_eq!(hash_key(&cookie, &req, peer), Some(stable_hash(b"abc")));
        let req = parts(&[("cookie", "a=1"), ("cookie", "session=xyz")]);
        assert_eq!(hash_key(&cookie, &req, peer), Some(stable_hash(b"xyz")));
        let req = parts(&[("cookie", "sessionid=1; a=session")]);
        assert_eq!(hash_key(&cookie, &req, peer), None);

        let ip = hash_key(&HashOn::SourceIp, &parts(&[]), peer);
        let other_port: SocketAddr = "10.1.2.3:50000".parse().unwrap();
        assert_eq!(ip, hash_key(&HashOn::SourceIp, &parts(&[]), other_port));
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:1".parse().unwrap();
        assert_eq!(ip, hash_key(&HashOn::SourceIp, &parts(&[]), mapped));
    }
}
