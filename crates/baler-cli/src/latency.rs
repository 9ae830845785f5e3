//! Per-record latency, from submit to commit, in a histogram of fixed size.
//!
//! Values are kept in microseconds in log-linear buckets: exact below 128 µs,
//! and above that 64 buckets per power of two, so a percentile is off by at
//! most 1/64 (1.6 %) of its value. Memory does not grow with the number of
//! records, whatever the input's length.

use std::time::Duration;

/// Sub-buckets per power of two.
const SUB: u64 = 64;
/// Powers of two covered above the exact range: up to 2^46 µs (two years).
const POWERS: usize = 40;

/// A histogram of durations.
///
/// ```
/// use std::time::Duration;
/// use baler_cli::latency::Histogram;
///
/// let mut h = Histogram::new();
/// for ms in 1..=100 {
///     h.record(Duration::from_millis(ms));
/// }
/// let p50 = h.percentile(50.0).unwrap();
/// assert!(p50 >= Duration::from_millis(49) && p50 <= Duration::from_millis(51));
/// ```
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; (2 * SUB) as usize + POWERS * SUB as usize],
            total: 0,
            max: 0,
        }
    }

    fn index(micros: u64) -> usize {
        if micros < 2 * SUB {
            return micros as usize;
        }
        // micros in [2^k, 2^(k+1)) with k >= 7: shift it into [64, 128).
        let k = 63 - u64::from(micros.leading_zeros());
        let shift = k - 6;
        let sub = micros >> shift; // in [64, 128)
        let i = (2 * SUB + (shift - 1) * SUB + (sub - SUB)) as usize;
        i.min((2 * SUB) as usize + POWERS * SUB as usize - 1)
    }

    /// The smallest value of bucket `i`, and the width of the bucket.
    fn bucket(i: usize) -> (u64, u64) {
        let i = i as u64;
        if i < 2 * SUB {
            return (i, 1);
        }
        let shift = (i - 2 * SUB) / SUB + 1;
        let sub = (i - 2 * SUB) % SUB + SUB;
        (sub << shift, 1 << shift)
    }

    /// Adds one value.
    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::index(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    /// How many values were added.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value below which `p` percent of the values fall (the middle of
    /// its bucket, never above the largest value); `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((p / 100.0).clamp(0.0, 1.0) * self.total as f64)
            .ceil()
            .max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = Self::bucket(i);
                let mid = low + (width - 1) / 2;
                return Some(Duration::from_micros(mid.min(self.max)));
            }
        }
        Some(Duration::from_micros(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_a_bucket_that_contains_it() {
        for micros in (0..5000).chain([1 << 20, (1 << 33) + 12345, u64::from(u32::MAX)]) {
            let (low, width) = Histogram::bucket(Histogram::index(micros));
            assert!(
                low <= micros && micros < low + width,
                "{micros} in [{low}, +{width})"
            );
            assert!(
                width * 64 <= low.max(64),
                "bucket of {micros} too wide: {width}"
            );
        }
    }

    #[test]
    fn percentiles_are_within_two_percent_of_the_exact_ones() {
        let mut h = Histogram::new();
        let values: Vec<u64> = (1..=10_000).map(|i| i * 37).collect();
        for &v in &values {
            h.record(Duration::from_micros(v));
        }
        for p in [50.0, 90.0, 99.0, 100.0] {
            let exact = values[((p / 100.0) * values.len() as f64).ceil() as usize - 1] as f64;
            let got = h.percentile(p).unwrap().as_micros() as f64;
            assert!((got - exact).abs() / exact < 0.02, "p{p}: {got} vs {exact}");
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(Histogram::new().percentile(50.0), None);
    }
}
