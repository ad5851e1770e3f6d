//! Weighted choice of a route's backend (Gateway API traffic split).
//!
//! This module owns the backends of one route, their compiled filters, and a
//! cumulative weight table that turns a point into a backend in O(log n).
//! It does not own choosing an endpoint within a backend; that is the
//! balancer's job.
//!
//! The split is exact, not random: the n-th request of a route takes the
//! point `n * stride mod total` (total = the sum of the weights, stride
//! coprime to it), so every `total` consecutive requests visit each point
//! once and a 90/10 split sends exactly 90 of every 100 requests one way,
//! interleaved rather than in runs (stride is near total/phi).

use std::sync::atomic::{AtomicU64, Ordering};

use remora_api::BackendRef;

use super::{FieldError, Filters};

/// One `backendRefs` entry of a route, with its filters compiled.
#[derive(Debug)]
pub(crate) struct CompiledBackend {
    name: String,
    weight: u32,
    filters: Filters,
}

impl CompiledBackend {
    /// The key of the top-level `backends` map.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn weight(&self) -> u32 {
        self.weight
    }

    /// Filters applied only to requests sent to this backend, after the
    /// route's.
    pub(crate) fn filters(&self) -> &Filters {
        &self.filters
    }
}

/// A route's backends and the table to choose among them.
#[derive(Debug, Default)]
pub(crate) struct Split {
    backends: Vec<CompiledBackend>,
    /// (end of the backend's range on the weight line, index in
    /// `backends`), for weights above 0 only, ascending.
    cumulative: Vec<(u64, usize)>,
    /// Coprime to the total weight, so that `n * stride` visits every point.
    stride: u64,
    /// Requests this split has placed.
    next: AtomicU64,
}

impl Split {
    pub(super) fn compile(refs: &[BackendRef]) -> Result<Self, FieldError> {
        let mut backends = Vec::with_capacity(refs.len());
        for (index, backend) in refs.iter().enumerate() {
            let filters =
                Filters::compile(&backend.filters, &format!("backendRefs[{index}].filters"))?;
            backends.push(CompiledBackend {
                name: backend.name.clone(),
                weight: backend.weight,
                filters,
            });
        }
        Ok(Self::of(backends))
    }

    /// Backends by name and weight alone, without filters (traffic-split's
    /// `weighted_upstreams`).
    pub(crate) fn weighted(pairs: impl IntoIterator<Item = (String, u32)>) -> Self {
        Self::of(
            pairs
                .into_iter()
                .map(|(name, weight)| CompiledBackend {
                    name,
                    weight,
                    filters: Filters::default(),
                })
                .collect(),
        )
    }

    fn of(backends: Vec<CompiledBackend>) -> Self {
        let mut cumulative = Vec::with_capacity(backends.len());
        let mut total: u64 = 0;
        for (index, backend) in backends.iter().enumerate() {
            if backend.weight > 0 {
                total += u64::from(backend.weight);
                cumulative.push((total, index));
            }
        }
        Self {
            backends,
            cumulative,
            stride: stride(total),
            next: AtomicU64::new(0),
        }
    }

    #[cfg(test)]
    pub(super) fn backends(&self) -> &[CompiledBackend] {
        &self.backends
    }

    pub(crate) fn total_weight(&self) -> u64 {
        self.cumulative.last().map_or(0, |(end, _)| *end)
    }

    /// The next request's backend: over every `total` consecutive calls
    /// each backend is picked exactly `weight` times.
    pub(super) fn pick(&self) -> Option<&CompiledBackend> {
        let total = self.total_weight();
        if total == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % total;
        // Below total² ≤ 2^128: no overflow in u128.
        let point = (u128::from(n) * u128::from(self.stride) % u128::from(total)) as u64;
        self.at(point)
    }

    /// The backend whose range holds `point % total`.
    pub(crate) fn at(&self, point: u64) -> Option<&CompiledBackend> {
        let total = self.total_weight();
        if total == 0 {
            return None;
        }
        let point = point % total;
        let slot = self.cumulative.partition_point(|(end, _)| *end <= point);
        let (_, index) = self.cumulative.get(slot)?;
        self.backends.get(*index)
    }
}

/// A step through `0..total` that visits every point once per `total`
/// steps (coprime to `total`) and spreads neighbours apart: the first
/// coprime at or above `total / phi`.
fn stride(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    let mut stride = ((total as f64) * 0.618_033_988_75) as u64;
    stride = stride.clamp(1, total - 1);
    while gcd(stride, total) != 1 {
        stride += 1;
    }
    stride
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[(&str, u32)]) -> Split {
        let refs: Vec<BackendRef> = weights
            .iter()
            .map(|(name, weight)| BackendRef {
                name: (*name).to_owned(),
                weight: *weight,
                filters: Vec::new(),
            })
            .collect();
        Split::compile(&refs).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn name_at(split: &Split, point: u64) -> Option<&str> {
        split.at(point).map(CompiledBackend::name)
    }

    #[test]
    fn points_map_to_weight_ranges_and_weight_zero_gets_nothing() {
        let s = split(&[("a", 1), ("zero", 0), ("c", 3), ("d", 2)]);
        assert_eq!(s.total_weight(), 6);
        let picks: Vec<_> = (0..12).map(|p| name_at(&s, p)).collect();
        let expected = ["a", "c", "c", "c", "d", "d"].map(Some);
        assert_eq!(picks[..6], expected);
        // Points wrap around the total.
        assert_eq!(picks[6..], expected);
        assert_eq!(name_at(&s, u64::MAX), name_at(&s, u64::MAX % 6));
        // The zero-weight backend is still listed, for config dumps.
        assert_eq!(s.backends().len(), 4);
        assert_eq!(s.backends()[1].weight(), 0);
    }

    #[test]
    fn no_weight_means_no_backend() {
        for s in [split(&[]), split(&[("a", 0), ("b", 0)])] {
            assert_eq!(s.total_weight(), 0);
            assert!(s.at(0).is_none());
            assert!(s.pick().is_none());
        }
        let one = split(&[("zero", 0), ("only", 1)]);
        assert!((0..100).all(|_| one.pick().map(CompiledBackend::name) == Some("only")));
    }

    #[test]
    fn large_weights_do_not_overflow() {
        let s = split(&[("a", 1_000_000), ("b", u32::MAX), ("c", u32::MAX)]);
        assert_eq!(s.total_weight(), 1_000_000 + 2 * u64::from(u32::MAX));
        assert_eq!(name_at(&s, 999_999), Some("a"));
        assert_eq!(name_at(&s, 1_000_000), Some("b"));
        assert_eq!(name_at(&s, s.total_weight() - 1), Some("c"));
    }

    /// Picks of `n` requests, by backend name.
    fn counts(s: &Split, n: usize) -> std::collections::BTreeMap<&str, usize> {
        let mut out = std::collections::BTreeMap::new();
        for _ in 0..n {
            *out.entry(s.pick().map_or("none", CompiledBackend::name))
                .or_insert(0) += 1;
        }
        out
    }

    #[test]
    fn ninety_ten_is_exact_over_any_hundred_requests_and_interleaved() {
        let s = split(&[("stable", 90), ("canary", 10)]);
        // From a fresh split, and from any later start: each window of 100
        // consecutive requests is exactly 90/10.
        for _ in 0..7 {
            let window = counts(&s, 100);
            assert_eq!(window, [("canary", 10), ("stable", 90)].into());
            s.pick();
        }
        // Interleaved: the canary never takes two of three requests in a row.
        let fresh = split(&[("stable", 90), ("canary", 10)]);
        let picks: Vec<&str> = (0..100)
            .map(|_| fresh.pick().map_or("none", CompiledBackend::name))
            .collect();
        assert!(
            picks
                .windows(3)
                .all(|w| w.iter().filter(|n| **n == "canary").count() <= 1),
            "{picks:?}"
        );
    }

    #[test]
    fn every_total_picks_give_each_backend_its_weight() {
        for weights in [
            vec![("a", 1), ("b", 1)],
            vec![("a", 1), ("zero", 0), ("c", 3), ("d", 2)],
            vec![("a", 80), ("b", 20)],
            vec![("a", 7), ("b", 11), ("c", 13)],
            vec![("a", 1)],
        ] {
            let s = split(&weights);
            let total = s.total_weight() as usize;
            let got = counts(&s, total * 3);
            let want: std::collections::BTreeMap<&str, usize> = weights
                .iter()
                .filter(|(_, w)| *w > 0)
                .map(|(n, w)| (*n, *w as usize * 3))
                .collect();
            assert_eq!(got, want, "{weights:?}");
        }
    }

    #[test]
    fn strides_are_coprime_even_for_huge_totals() {
        for total in [1, 2, 3, 4, 100, 1 << 20, u64::from(u32::MAX) * 3, u64::MAX] {
            let s = stride(total);
            assert!(s >= 1 && (total < 2 || s < total), "{total}: {s}");
            assert_eq!(gcd(s, total.max(1)), 1, "{total}: {s}");
        }
        let s = split(&[("a", u32::MAX), ("b", u32::MAX), ("c", 1)]);
        assert!((0..1000).all(|_| s.pick().is_some()));
    }
}
