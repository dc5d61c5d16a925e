//! Latency histograms on atomics: recording is a few relaxed atomic adds and
//! takes no lock. [`Buckets`] has the fixed bounds the Prometheus
//! exposition shows; fine percentiles (benchmarks) are an HDR histogram in
//! [`Latency`](super::Latency).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bucket upper bounds, in nanoseconds, for API request handling: 10 µs
/// (a table lookup) to 10 s in 1-2.5-5 steps.
pub(crate) const REQUEST_BOUNDS_NS: &[u64] = &[
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Bucket upper bounds, in nanoseconds, for latencies from a kernel or
/// containerd event to the process or container being resolvable:
/// 100 µs to 10 s in 1-2.5-5 steps (the request bounds from 100 µs on).
pub(crate) const RESOLVABLE_BOUNDS_NS: &[u64] = REQUEST_BOUNDS_NS.split_at(3).1;

/// Counts of observations per bucket (not cumulative), plus their sum.
///
/// Observations are counted one at a time without a lock, so a reader may
/// see a sum and counts that differ by the observations in flight; each
/// value on its own never goes backwards.
#[derive(Debug)]
pub struct Buckets {
    /// Sorted upper bounds in nanoseconds.
    bounds: &'static [u64],
    /// One count per bound, then one for `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// A copy of a histogram, in seconds, in the shape prometheus-client
/// encodes.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSample {
    /// Sum of all observations in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
    /// (upper bound in seconds, observations in this bucket alone); the
    /// last bound is `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
}

impl Buckets {
    /// An empty histogram with `bounds` (sorted, in nanoseconds).
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `ns` nanoseconds.
    pub fn observe(&self, ns: u64) {
        // The first bucket whose bound is ≥ ns; past the last is +Inf.
        let i = self.bounds.partition_point(|&bound| bound < ns);
        if let Some(count) = self.counts.get(i) {
            count.fetch_add(1, Relaxed);
        }
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// A copy for the exposition.
    pub fn sample(&self) -> HistogramSample {
        let upper = self
            .bounds
            .iter()
            .map(|&ns| ns as f64 / 1e9)
            .chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = upper
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        HistogramSample {
            sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_sorted() {
        for bounds in [RESOLVABLE_BOUNDS_NS, REQUEST_BOUNDS_NS] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Buckets::new(&[10, 20]);
        for ns in [0, 10, 11, 20, 21, u64::MAX / 2] {
            h.observe(ns);
        }
        let s = h.sample();
        assert_eq!(s.count, 6);
        assert_eq!(h.count(), 6);
        assert_eq!(
            s.buckets,
            vec![(1e-8, 2), (2e-8, 2), (f64::INFINITY, 2)],
            "le is inclusive; past the last bound is +Inf"
        );
    }

    #[test]
    fn sum_is_in_seconds() {
        let h = Buckets::new(RESOLVABLE_BOUNDS_NS);
        h.observe(1_500_000_000);
        h.observe(500_000_000);
        let s = h.sample();
        assert_eq!(s.sum_seconds, 2.0);
        assert_eq!(s.buckets.len(), RESOLVABLE_BOUNDS_NS.len() + 1);
        assert_eq!(s.buckets[0].0, 0.0001);
    }
}
