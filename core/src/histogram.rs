//! Mergeable log-linear latency histogram with bounded memory.
//!
//! Values are microseconds. Values below `2^SUB_BUCKET_BITS` get one exact bucket each; above,
//! every power of two is split into `2^SUB_BUCKET_BITS` equal sub-buckets (HdrHistogram's
//! layout). With `SUB_BUCKET_BITS = 4` a bucket is at most 1/16 of its lower bound wide, and a
//! quantile is reported as its bucket's midpoint, so:
//!
//! **Documented error:** a reported quantile is within [`RELATIVE_ERROR`] (3.125 %) of the
//! true sample value at that rank, plus at most 1 µs. Values above [`MAX_VALUE_US`] (~12.7
//! days) are clamped. Memory is fixed: [`BUCKET_COUNT`] counters.

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two, as a bit count.
pub const SUB_BUCKET_BITS: u32 = 4;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Largest recordable value; larger ones are clamped to it.
pub const MAX_VALUE_US: u64 = (1 << 40) - 1;
/// Number of buckets (fixed memory).
pub const BUCKET_COUNT: usize =
    (SUB_BUCKETS + (40 - SUB_BUCKET_BITS as u64) * SUB_BUCKETS) as usize;
/// Worst-case relative error of a reported quantile (half a bucket width).
pub const RELATIVE_ERROR: f64 = 1.0 / (2 * SUB_BUCKETS) as f64;

/// Errors building a histogram from external (wire) data.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HistogramError {
    #[error("histogram sub_bucket_bits is {0}, expected {SUB_BUCKET_BITS}")]
    Layout(u32),
    #[error("histogram bucket index {0} is out of range (max {max})", max = BUCKET_COUNT - 1)]
    IndexOutOfRange(u32),
    #[error("histogram has {indices} bucket indices but {counts} counts")]
    LengthMismatch { indices: usize, counts: usize },
    #[error("histogram bucket indices are not strictly ascending")]
    NotAscending,
    #[error("histogram total count overflows")]
    Overflow,
}

/// Bucket index of a value in microseconds.
#[inline]
pub fn bucket_index(value_us: u64) -> usize {
    let v = value_us.min(MAX_VALUE_US);
    if v < SUB_BUCKETS {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // floor(log2 v) >= SUB_BUCKET_BITS
    let shift = exp - SUB_BUCKET_BITS;
    let sub = (v >> shift) & (SUB_BUCKETS - 1);
    (SUB_BUCKETS + (shift as u64) * SUB_BUCKETS + sub) as usize
}

/// Inclusive lower and exclusive upper bound (µs) of bucket `index`.
pub fn bucket_bounds(index: usize) -> (u64, u64) {
    let i = index as u64;
    if i < SUB_BUCKETS {
        return (i, i + 1);
    }
    let shift = (i - SUB_BUCKETS) / SUB_BUCKETS;
    let sub = (i - SUB_BUCKETS) % SUB_BUCKETS;
    let lo = (SUB_BUCKETS + sub) << shift;
    (lo, lo + (1 << shift))
}

/// Value reported for a bucket: its midpoint (exact for the linear buckets).
pub fn bucket_value(index: usize) -> f64 {
    let (lo, hi) = bucket_bounds(index);
    if hi - lo == 1 {
        lo as f64
    } else {
        (lo + hi) as f64 / 2.0
    }
}

/// A latency histogram in microseconds; see the module docs for layout and error.
///
/// Only the range of buckets between the smallest and the largest value recorded is stored
/// (a window's latencies usually span a few dozen of the [`BUCKET_COUNT`] buckets), so an
/// empty histogram allocates nothing and clones and merges touch only that range. Memory is
/// still bounded by [`BUCKET_COUNT`] counters.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "SparseHistogram", into = "SparseHistogram")]
pub struct LatencyHistogram {
    /// Bucket index of `counts[0]`.
    offset: usize,
    /// Counts of buckets `offset..offset + counts.len()`.
    counts: Vec<u64>,
    total: u64,
    sum_us: u64,
    min_us: u64,
    max_us: u64,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("total", &self.total)
            .field("min_us", &self.min_us)
            .field("max_us", &self.max_us)
            .finish()
    }
}

/// Equal when they hold the same values (however much range each has allocated).
impl PartialEq for LatencyHistogram {
    fn eq(&self, o: &Self) -> bool {
        self.total == o.total
            && self.sum_us == o.sum_us
            && self.min_us() == o.min_us()
            && self.max_us == o.max_us
            && self.nonzero_buckets().eq(o.nonzero_buckets())
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram (allocates nothing).
    pub fn new() -> Self {
        Self {
            offset: 0,
            counts: Vec::new(),
            total: 0,
            sum_us: 0,
            min_us: u64::MAX,
            max_us: 0,
        }
    }

    /// Widens the stored range to cover buckets `lo..hi` (`hi <= BUCKET_COUNT`).
    fn cover(&mut self, lo: usize, hi: usize) {
        if self.counts.is_empty() {
            self.offset = lo;
            self.counts.resize(hi - lo, 0);
            return;
        }
        let end = self.offset + self.counts.len();
        if lo >= self.offset && hi <= end {
            return;
        }
        let new_lo = lo.min(self.offset);
        let new_hi = hi.max(end);
        if new_lo < self.offset {
            let mut grown = vec![0; new_hi - new_lo];
            grown[self.offset - new_lo..end - new_lo].copy_from_slice(&self.counts);
            self.counts = grown;
            self.offset = new_lo;
        } else {
            self.counts.resize(new_hi - self.offset, 0);
        }
    }

    /// Records one value.
    #[inline]
    pub fn record(&mut self, value_us: u64) {
        self.record_n(value_us, 1);
    }

    /// Records `n` occurrences of a value.
    #[inline]
    pub fn record_n(&mut self, value_us: u64, n: u64) {
        if n == 0 {
            return;
        }
        let v = value_us.min(MAX_VALUE_US);
        let i = bucket_index(v);
        if i < self.offset || i >= self.offset + self.counts.len() {
            self.cover(i, i + 1);
        }
        let c = &mut self.counts[i - self.offset];
        *c = c.saturating_add(n);
        self.total = self.total.saturating_add(n);
        self.sum_us = self.sum_us.saturating_add(v.saturating_mul(n));
        self.min_us = self.min_us.min(v);
        self.max_us = self.max_us.max(v);
    }

    /// Adds another histogram's counts (same layout: histograms are always mergeable).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.counts.is_empty() {
            return;
        }
        self.cover(other.offset, other.offset + other.counts.len());
        let at = other.offset - self.offset;
        // Saturating: counts come from reports, which a buggy or hostile reporter controls.
        for (a, b) in self.counts[at..].iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.total = self.total.saturating_add(other.total);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Empties the histogram, keeping its allocation for reuse.
    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
        self.sum_us = 0;
        self.min_us = u64::MAX;
        self.max_us = 0;
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Sum of the recorded values (saturating), for the mean.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Smallest recorded value (0 when empty).
    pub fn min_us(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min_us
        }
    }

    /// Largest recorded value (0 when empty).
    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    pub fn mean_us(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.total as f64
        }
    }

    /// Value at quantile `q` in [0, 1] (NaN is treated as 0.5): the midpoint of the bucket
    /// holding the sample of rank ceil(q·n), clamped to the observed min/max. 0 when empty.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // Never report beyond the observed extremes.
                return bucket_value(self.offset + i).clamp(self.min_us as f64, self.max_us as f64);
            }
        }
        self.max_us as f64
    }

    /// Non-empty buckets as `(index, count)`, ascending (the wire format).
    pub fn nonzero_buckets(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let offset = self.offset;
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(move |(i, &c)| ((offset + i) as u32, c))
    }

    /// Bytes of heap this histogram holds (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<u64>()
    }

    /// Builds a histogram from its wire form, validating the layout and the buckets.
    pub fn from_sparse(
        sub_bucket_bits: u32,
        indices: &[u32],
        counts: &[u64],
        sum_us: u64,
        min_us: u64,
        max_us: u64,
    ) -> Result<Self, HistogramError> {
        if sub_bucket_bits != SUB_BUCKET_BITS {
            return Err(HistogramError::Layout(sub_bucket_bits));
        }
        if indices.len() != counts.len() {
            return Err(HistogramError::LengthMismatch {
                indices: indices.len(),
                counts: counts.len(),
            });
        }
        let mut prev: Option<u32> = None;
        for &i in indices {
            if (i as usize) >= BUCKET_COUNT {
                return Err(HistogramError::IndexOutOfRange(i));
            }
            if prev.is_some_and(|p| p >= i) {
                return Err(HistogramError::NotAscending);
            }
            prev = Some(i);
        }
        let mut h = Self::new();
        if let (Some(&first), Some(&last)) = (indices.first(), indices.last()) {
            h.cover(first as usize, last as usize + 1);
        }
        for (&i, &c) in indices.iter().zip(counts) {
            h.counts[i as usize - h.offset] = c;
            h.total = h.total.checked_add(c).ok_or(HistogramError::Overflow)?;
        }
        if h.total > 0 {
            h.sum_us = sum_us;
            h.min_us = min_us.min(MAX_VALUE_US);
            h.max_us = max_us.min(MAX_VALUE_US);
        }
        Ok(h)
    }

    /// Builds a histogram from the counts of consecutive buckets `offset..offset +
    /// counts.len()` (the cheap path for a caller that summed bucket ranges itself).
    pub fn from_range(
        offset: usize,
        counts: Vec<u64>,
        sum_us: u64,
        min_us: u64,
        max_us: u64,
    ) -> Result<Self, HistogramError> {
        if offset + counts.len() > BUCKET_COUNT {
            let last = offset + counts.len() - 1;
            return Err(HistogramError::IndexOutOfRange(
                u32::try_from(last).unwrap_or(u32::MAX),
            ));
        }
        let mut total: u64 = 0;
        for &c in &counts {
            total = total.checked_add(c).ok_or(HistogramError::Overflow)?;
        }
        let mut h = Self {
            offset,
            counts,
            total,
            ..Self::new()
        };
        if total > 0 {
            h.sum_us = sum_us;
            h.min_us = min_us.min(MAX_VALUE_US);
            h.max_us = max_us.min(MAX_VALUE_US);
        }
        Ok(h)
    }
}

/// Serialized form of [`LatencyHistogram`]: its non-empty buckets (as on the wire).
#[derive(Serialize, Deserialize)]
struct SparseHistogram {
    sub_bucket_bits: u32,
    index: Vec<u32>,
    count: Vec<u64>,
    sum_us: u64,
    min_us: u64,
    max_us: u64,
}

impl From<LatencyHistogram> for SparseHistogram {
    fn from(h: LatencyHistogram) -> Self {
        let (index, count) = h.nonzero_buckets().unzip();
        Self {
            sub_bucket_bits: SUB_BUCKET_BITS,
            index,
            count,
            sum_us: h.sum_us,
            min_us: h.min_us(),
            max_us: h.max_us,
        }
    }
}

impl TryFrom<SparseHistogram> for LatencyHistogram {
    type Error = HistogramError;

    fn try_from(s: SparseHistogram) -> Result<Self, HistogramError> {
        Self::from_sparse(
            s.sub_bucket_bits,
            &s.index,
            &s.count,
            s.sum_us,
            s.min_us,
            s.max_us,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn buckets_are_contiguous_and_contain_their_values() {
        let mut prev_hi = 0;
        for i in 0..BUCKET_COUNT {
            let (lo, hi) = bucket_bounds(i);
            assert_eq!(
                lo,
                prev_hi,
                "bucket {i} starts where {} ended",
                i.saturating_sub(1)
            );
            assert_eq!(bucket_index(lo), i);
            assert_eq!(bucket_index(hi - 1), i);
            prev_hi = hi;
        }
        assert_eq!(bucket_index(MAX_VALUE_US), BUCKET_COUNT - 1);
        assert_eq!(bucket_index(u64::MAX), BUCKET_COUNT - 1);
    }

    #[test]
    fn bucket_width_is_within_documented_error() {
        for i in SUB_BUCKETS as usize..BUCKET_COUNT {
            let (lo, hi) = bucket_bounds(i);
            let mid = bucket_value(i);
            assert!((mid - lo as f64) / lo as f64 <= RELATIVE_ERROR + 1e-12);
            assert!((hi as f64 - 1.0 - mid) / (hi as f64 - 1.0) <= RELATIVE_ERROR + 1e-12);
        }
    }

    #[test]
    fn quantiles_match_exact_within_documented_error() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut h = LatencyHistogram::new();
        let mut values: Vec<u64> = (0..50_000)
            .map(|_| {
                // lognormal-ish spread from 50 µs to seconds
                let e: f64 = rng.random_range(0.0..1.0f64);
                (50.0 * (e * 10.0).exp()) as u64
            })
            .collect();
        values.iter().for_each(|&v| h.record(v));
        values.sort_unstable();
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let rank = ((q * values.len() as f64).ceil() as usize).max(1);
            let exact = values[rank - 1] as f64;
            let got = h.quantile_us(q);
            assert!(
                (got - exact).abs() <= exact * RELATIVE_ERROR + 1.0,
                "q={q}: got {got}, exact {exact}"
            );
        }
        assert_eq!(h.count(), values.len() as u64);
        assert_eq!(h.min_us(), values[0]);
        assert_eq!(h.max_us(), *values.last().unwrap());
    }

    #[test]
    fn merge_equals_recording_everything_once() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        let mut all = LatencyHistogram::new();
        for v in 0..5000u64 {
            let x = v * v % 100_003;
            if v % 3 == 0 {
                a.record(x)
            } else {
                b.record(x)
            }
            all.record(x);
        }
        a.merge(&b);
        assert_eq!(a, all);
    }

    #[test]
    fn sparse_round_trip_and_validation() {
        let mut h = LatencyHistogram::new();
        [3, 900, 900, 12_345, 7_000_000]
            .iter()
            .for_each(|&v| h.record(v));
        let (idx, cnt): (Vec<u32>, Vec<u64>) = h.nonzero_buckets().unzip();
        let back = LatencyHistogram::from_sparse(
            SUB_BUCKET_BITS,
            &idx,
            &cnt,
            h.sum_us(),
            h.min_us(),
            h.max_us(),
        )
        .unwrap();
        assert_eq!(back, h);
        assert_eq!(
            LatencyHistogram::from_sparse(5, &idx, &cnt, 0, 0, 0),
            Err(HistogramError::Layout(5))
        );
        assert_eq!(
            LatencyHistogram::from_sparse(SUB_BUCKET_BITS, &[9999], &[1], 0, 0, 0),
            Err(HistogramError::IndexOutOfRange(9999))
        );
        assert_eq!(
            LatencyHistogram::from_sparse(SUB_BUCKET_BITS, &[5, 5], &[1, 1], 0, 0, 0),
            Err(HistogramError::NotAscending)
        );
        assert!(matches!(
            LatencyHistogram::from_sparse(SUB_BUCKET_BITS, &[1], &[1, 2], 0, 0, 0),
            Err(HistogramError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn range_grows_both_ways_and_merges_disjoint_ranges() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // Values arriving in an order that forces growth below and above the stored range.
        let values: Vec<u64> = (0..2000)
            .map(|i| match i % 3 {
                0 => rng.random_range(1_000..2_000),
                1 => rng.random_range(1..50),
                _ => rng.random_range(100_000..5_000_000),
            })
            .collect();
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let mut a = LatencyHistogram::new();
        values.iter().for_each(|&v| a.record(v));
        let mut ascending = LatencyHistogram::new();
        sorted.iter().for_each(|&v| ascending.record(v));
        let mut descending = LatencyHistogram::new();
        sorted.iter().rev().for_each(|&v| descending.record(v));
        assert_eq!(a, ascending);
        assert_eq!(a, descending);
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(a.quantile_us(q), ascending.quantile_us(q));
        }
        // Merging histograms with disjoint ranges, in both orders.
        let (mut low, mut high) = (LatencyHistogram::new(), LatencyHistogram::new());
        sorted[..1000].iter().for_each(|&v| low.record(v));
        sorted[1000..].iter().for_each(|&v| high.record(v));
        let mut lh = low.clone();
        lh.merge(&high);
        let mut hl = high.clone();
        hl.merge(&low);
        assert_eq!(lh, a);
        assert_eq!(hl, a);
        // Merging an empty histogram changes nothing, into an empty one copies.
        let mut e = LatencyHistogram::new();
        e.merge(&a);
        assert_eq!(e, a);
        lh.merge(&LatencyHistogram::new());
        assert_eq!(lh, a);
    }

    #[test]
    fn stores_only_the_recorded_range() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.heap_bytes(), 0, "an empty histogram allocates nothing");
        (1_000..5_000).for_each(|v| h.record(v));
        let span = bucket_index(4_999) - bucket_index(1_000) + 1;
        assert!(h.heap_bytes() <= 2 * span * 8, "{} bytes", h.heap_bytes());
        assert!(span < BUCKET_COUNT / 10);
        // clear keeps the allocation and forgets the values; equality ignores the range.
        h.clear();
        assert!(h.is_empty());
        assert_eq!(h, LatencyHistogram::new());
        h.record(7);
        let mut fresh = LatencyHistogram::new();
        fresh.record(7);
        assert_eq!(h, fresh);
        assert_eq!(h.quantile_us(0.5), 7.0);
    }

    #[test]
    fn from_range_validates_and_matches_sparse() {
        let mut h = LatencyHistogram::new();
        [900, 950, 2_000].iter().for_each(|&v| h.record(v));
        let (idx, cnt): (Vec<u32>, Vec<u64>) = h.nonzero_buckets().unzip();
        let lo = idx[0] as usize;
        let mut dense = vec![0; idx[idx.len() - 1] as usize + 1 - lo];
        for (&i, &c) in idx.iter().zip(&cnt) {
            dense[i as usize - lo] = c;
        }
        let r = LatencyHistogram::from_range(lo, dense, h.sum_us(), h.min_us(), h.max_us());
        assert_eq!(r.unwrap(), h);
        assert_eq!(
            LatencyHistogram::from_range(BUCKET_COUNT - 1, vec![1, 1], 0, 0, 0),
            Err(HistogramError::IndexOutOfRange(BUCKET_COUNT as u32))
        );
        assert_eq!(
            LatencyHistogram::from_range(0, vec![u64::MAX, 1], 0, 0, 0),
            Err(HistogramError::Overflow)
        );
    }

    #[test]
    fn serde_round_trips_through_the_sparse_form_and_validates() {
        let mut h = LatencyHistogram::new();
        [3, 900, 12_345].iter().for_each(|&v| h.record(v));
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("\"index\""), "{json}");
        let back: LatencyHistogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        let bad =
            r#"{"sub_bucket_bits":4,"index":[7,3],"count":[1,1],"sum_us":0,"min_us":0,"max_us":0}"#;
        let err = serde_json::from_str::<LatencyHistogram>(bad).unwrap_err();
        assert!(err.to_string().contains("ascending"), "{err}");
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = LatencyHistogram::new();
        assert_eq!(h.quantile_us(0.99), 0.0);
        assert_eq!(h.min_us(), 0);
        assert_eq!(h.mean_us(), 0.0);
    }
}
