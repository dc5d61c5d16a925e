//! Latency histograms on atomics: recording is a few relaxed atomic adds and
//! takes no lock. [`Buckets`] has the fixed bounds the Prometheus
//! exposition shows; [`LogHistogram`] has fine log-linear buckets for
//! percentiles (benchmarks, `pidmap status`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bucket upper bounds, in nanoseconds, for API request handling: 10 µs
/// (a table lookup) to 10 s in 1-2.5-5 steps.
pub const REQUEST_BOUNDS_NS: &[u64] = &[
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
pub const RESOLVABLE_BOUNDS_NS: &[u64] = REQUEST_BOUNDS_NS.split_at(3).1;

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

/// Sub-buckets per power of two in a [`LogHistogram`]: values are kept
/// within 1/8 (12.5 %) of their true size.
const SUB_BITS: u32 = 3;
const SUBS: usize = 1 << SUB_BITS;
/// Buckets of a [`LogHistogram`]: every u64 has one.
const LOG_BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUBS;

/// A histogram of nanosecond values in log-linear buckets (8 per power of
/// two) on atomics, for percentiles without a lock.
#[derive(Debug)]
pub struct LogHistogram {
    counts: Box<[AtomicU64]>,
}

impl Default for LogHistogram {
    fn default() -> Self {
        Self {
            counts: (0..LOG_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LogHistogram {
    /// The bucket of `v`: exact below 8, then 8 per power of two.
    fn index(v: u64) -> usize {
        if v < SUBS as u64 {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros(); // ≥ SUB_BITS
        let sub = (v >> (exp - SUB_BITS)) as usize & (SUBS - 1);
        (exp - SUB_BITS + 1) as usize * SUBS + sub
    }

    /// The largest value that falls in bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < SUBS {
            return i as u64;
        }
        let exp = (i / SUBS) as u32 + SUB_BITS - 1;
        let sub = (i % SUBS) as u64;
        let low = (1u64 << exp) | (sub << (exp - SUB_BITS));
        low.saturating_add((1u64 << (exp - SUB_BITS)) - 1)
    }

    /// Counts one value.
    pub fn record(&self, v: u64) {
        if let Some(c) = self.counts.get(Self::index(v)) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Number of values counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// A copy of the counts now (to take percentiles of what was counted
    /// between two copies, see [`Counts::since`]).
    pub fn counts(&self) -> Counts {
        Counts(self.counts.iter().map(|c| c.load(Relaxed)).collect())
    }

    /// The value at quantile `q` (0 to 1), as its bucket's upper end (at
    /// most 12.5 % above the true value); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        self.counts().quantile(q)
    }
}

/// A copy of a [`LogHistogram`]'s counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts(Vec<u64>);

impl Counts {
    /// What was counted after `earlier` (a copy of the same histogram).
    pub fn since(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .zip(earlier.0.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
        )
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The value at quantile `q` (0 to 1), as its bucket's upper end (at
    /// most 12.5 % above the true value); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LogHistogram::upper(i));
            }
        }
        None
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
    fn log_histogram_quantiles_are_within_an_eighth() {
        let h = LogHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.record(v * 1_000);
        }
        assert_eq!(h.count(), 1000);
        for (q, want) in [(0.5, 500_000f64), (0.99, 990_000.0), (1.0, 1_000_000.0)] {
            let got = h.quantile(q).unwrap() as f64;
            assert!(got >= want && got <= want * 1.125, "q{q}: {got} vs {want}");
        }
        let before = h.counts();
        h.record(5_000_000);
        let since = h.counts().since(&before);
        assert_eq!(since.count(), 1);
        assert!(since.quantile(0.5).unwrap() >= 5_000_000);
        for v in [0, 1, 7, 8, 9, 1023, 1024, u64::MAX] {
            let i = LogHistogram::index(v);
            assert!(LogHistogram::upper(i) >= v, "{v}");
            assert!(i == 0 || LogHistogram::upper(i - 1) < v, "{v}");
        }
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
