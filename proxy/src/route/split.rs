//! Weighted choice of a route's backend (Gateway API traffic split).
//!
//! This module owns the backends of one route, their compiled filters, and a
//! cumulative weight table that turns a random point into a backend in
//! O(log n). It does not own choosing an endpoint within a backend; that is
//! the balancer's job.

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
        }
    }

    #[cfg(test)]
    pub(super) fn backends(&self) -> &[CompiledBackend] {
        &self.backends
    }

    pub(crate) fn total_weight(&self) -> u64 {
        self.cumulative.last().map_or(0, |(end, _)| *end)
    }

    pub(super) fn pick<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Option<&CompiledBackend> {
        let total = self.total_weight();
        if total == 0 {
            return None;
        }
        self.at(rng.random_range(0..total))
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

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

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
        let mut rng = StdRng::seed_from_u64(1);
        for s in [split(&[]), split(&[("a", 0), ("b", 0)])] {
            assert_eq!(s.total_weight(), 0);
            assert!(s.at(0).is_none());
            assert!(s.pick(&mut rng).is_none());
        }
        let one = split(&[("zero", 0), ("only", 1)]);
        assert!((0..100).all(|_| one.pick(&mut rng).map(CompiledBackend::name) == Some("only")));
    }

    #[test]
    fn large_weights_do_not_overflow() {
        let s = split(&[("a", 1_000_000), ("b", u32::MAX), ("c", u32::MAX)]);
        assert_eq!(s.total_weight(), 1_000_000 + 2 * u64::from(u32::MAX));
        assert_eq!(name_at(&s, 999_999), Some("a"));
        assert_eq!(name_at(&s, 1_000_000), Some("b"));
        assert_eq!(name_at(&s, s.total_weight() - 1), Some("c"));
    }

    #[test]
    fn ninety_ten_split_lands_within_two_points() {
        let s = split(&[("stable", 90), ("canary", 10)]);
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let picks = 10_000;
        let canary = (0..picks)
            .filter(|_| s.pick(&mut rng).map(CompiledBackend::name) == Some("canary"))
            .count();
        let share = canary as f64 * 100.0 / f64::from(picks);
        assert!((8.0..=12.0).contains(&share), "canary got {share}%");
    }
}
