//! Sampled per-request work above a rate threshold: which requests get their property reads
//! (the filter's whole per-request cost), and the weights that let a window's sampled counts
//! be scaled to all its requests without bias.
//!
//! Below `sample_above_rps` requests per second (per worker VM) every request is measured.
//! Above it, each request is measured with probability `1/N`, `N = floor(rate /
//! sample_above_rps)` (so a worker above the threshold still measures at least
//! `sample_above_rps` requests per second), drawn independently per request from a
//! xorshift generator: no aliasing with periodic traffic patterns (every 10th request failing,
//! round-robin over endpoints). A measured request carries the weight `N` (Horvitz–Thompson);
//! at the end of a window the weighted counts are multiplied by `finished / Σ weights`, where
//! `finished` is the exact number of requests the worker saw finish (counted on every request,
//! no host call): the worker's total is then exact, a single cluster's request count is exact,
//! and every other count is an estimate whose error is stated in `filter/README.md`. `N` is
//! re-computed at every window boundary from the window's arrival rate (so a burst shorter than
//! a window is measured in full) and lowered at once on a tick whose rate calls for less (so
//! a window where traffic fell still has samples).
//!
//! Pure: time is passed in (unix ns).

/// Largest sampling interval (1 in this many requests measured).
pub const MAX_INTERVAL: u32 = 1024;

/// Per-worker sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    threshold_rps: u32,
    interval: u32,
    rng: u64,
    arrivals: u64,
    since_ns: u64,
    /// Arrivals since the last tick (for lowering `N` at once when the rate falls).
    tick_arrivals: u64,
    tick_since_ns: u64,
}

impl Sampler {
    /// A sampler measuring every request until the first [`Sampler::adapt`]. `threshold_rps`
    /// 0 never samples. `seed` only needs to differ between workers (0 is replaced).
    pub fn new(threshold_rps: u32, seed: u64, now_ns: u64) -> Self {
        Self {
            threshold_rps,
            interval: 1,
            rng: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
            arrivals: 0,
            since_ns: now_ns,
            tick_arrivals: 0,
            tick_since_ns: now_ns,
        }
    }

    /// The current interval `N` (1 = every request is measured).
    pub fn interval(&self) -> u32 {
        self.interval
    }

    /// Called for every request when it starts: `Some(weight)` when it is to be measured.
    #[inline]
    pub fn admit(&mut self) -> Option<u32> {
        self.arrivals += 1;
        self.tick_arrivals += 1;
        if self.interval <= 1 {
            return Some(1);
        }
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        // Multiply-shift maps the high 32 bits uniformly onto 0..interval.
        let r = ((x >> 32) * u64::from(self.interval)) >> 32;
        (r == 0).then_some(self.interval)
    }

    /// Once per tick: lowers the interval at once when the rate since the last tick calls for
    /// a smaller one (traffic fell: a window must not end with requests but no sample); it is
    /// only raised at window boundaries ([`Sampler::adapt`]).
    pub fn tick(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.tick_since_ns);
        if elapsed == 0 {
            return;
        }
        let n = interval_for(self.tick_arrivals, elapsed, self.threshold_rps);
        self.interval = self.interval.min(n);
        self.tick_arrivals = 0;
        self.tick_since_ns = now_ns;
    }

    /// Traffic resumes after an idle stretch (the VM ticked slowly, its window restarted):
    /// the rates restart now. Without this the first window boundary after idle would divide
    /// the window's arrivals by the idle time too, under-estimate the rate (up to
    /// `heartbeat / flush` times) and measure most requests of the next window as well.
    pub fn restart(&mut self, now_ns: u64) {
        self.arrivals = 0;
        self.since_ns = now_ns;
        self.tick_arrivals = 0;
        self.tick_since_ns = now_ns;
    }

    /// Re-computes the interval from the arrivals since the last call (once per window).
    pub fn adapt(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.since_ns);
        if elapsed == 0 {
            return;
        }
        self.interval = interval_for(self.arrivals, elapsed, self.threshold_rps);
        self.arrivals = 0;
        self.since_ns = now_ns;
    }
}

/// `N = floor(rate / threshold)`, at least 1, at most [`MAX_INTERVAL`]; 1 when `threshold`
/// is 0.
pub fn interval_for(arrivals: u64, elapsed_ns: u64, threshold_rps: u32) -> u32 {
    if threshold_rps == 0 || elapsed_ns == 0 {
        return 1;
    }
    let n =
        u128::from(arrivals) * 1_000_000_000 / (u128::from(elapsed_ns) * u128::from(threshold_rps));
    u32::try_from(n)
        .unwrap_or(MAX_INTERVAL)
        .clamp(1, MAX_INTERVAL)
}

/// `round(x × num / den)` in integers (`den > 0`).
#[inline]
pub fn scale(x: u64, num: u64, den: u64) -> u64 {
    if den == 0 {
        return x;
    }
    let v = (u128::from(x) * u128::from(num) * 2 + u128::from(den)) / (u128::from(den) * 2);
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Scales a group of counts that must keep their sum: cumulative rounding, so the scaled
/// group sums to `scale(sum)` and each part is within 1 of its own scaled value.
pub fn scale_group<const K: usize>(xs: [u64; K], num: u64, den: u64) -> [u64; K] {
    let mut out = [0; K];
    let (mut cum, mut prev) = (0u64, 0u64);
    for (o, x) in out.iter_mut().zip(xs) {
        cum = cum.saturating_add(x);
        let c = scale(cum, num, den);
        *o = c - prev;
        prev = c;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn interval_follows_the_rate() {
        assert_eq!(interval_for(500, S, 1000), 1, "below the threshold");
        assert_eq!(interval_for(1999, S, 1000), 1);
        assert_eq!(interval_for(2000, S, 1000), 2);
        assert_eq!(
            interval_for(4000, S / 4, 1000),
            16,
            "rate from a 250 ms tick"
        );
        assert_eq!(interval_for(u64::MAX, 1, 1), MAX_INTERVAL);
        assert_eq!(interval_for(1_000_000, S, 0), 1, "0 = never sample");
    }

    #[test]
    fn below_threshold_every_request_is_measured() {
        let mut s = Sampler::new(1000, 7, 0);
        for _ in 0..900 {
            assert_eq!(s.admit(), Some(1));
        }
        s.adapt(S);
        assert_eq!(s.interval(), 1);
        assert!((0..900).all(|_| s.admit() == Some(1)));
    }

    #[test]
    fn above_threshold_the_sample_is_unbiased() {
        let mut s = Sampler::new(1000, 42, 0);
        for _ in 0..8000 {
            s.admit();
        }
        s.adapt(S);
        assert_eq!(s.interval(), 8);
        // Weighted sample sizes estimate the request count: over 200k requests the
        // Horvitz–Thompson total is within 2% (σ ≈ 0.6%).
        let n = 200_000u64;
        let est: u64 = (0..n).filter_map(|_| s.admit()).map(u64::from).sum();
        let err = (est as f64 - n as f64).abs() / n as f64;
        assert!(err < 0.02, "estimate {est} of {n}");
        // No aliasing with a periodic pattern: every 8th request "fails"; the sample's
        // failure fraction is still ≈ 1/8.
        let (mut fails, mut all) = (0u64, 0u64);
        for i in 0..n {
            if s.admit().is_some() {
                all += 1;
                fails += u64::from(i % 8 == 0);
            }
        }
        let frac = fails as f64 / all as f64;
        assert!((frac - 0.125).abs() < 0.01, "fraction {frac}");
    }

    #[test]
    fn the_interval_falls_at_once_but_rises_only_per_window() {
        let mut s = Sampler::new(100, 9, 0);
        for _ in 0..1600 {
            s.admit();
        }
        s.tick(S / 4); // 6,400 rps over the tick: not raised by a tick
        assert_eq!(s.interval(), 1);
        s.adapt(S); // 1,600 rps over the window
        assert_eq!(s.interval(), 16);
        for _ in 0..10 {
            s.admit();
        }
        s.tick(S + S / 4); // 40 rps: measured in full again
        assert_eq!(s.interval(), 1);
    }

    #[test]
    fn after_idle_the_rate_counts_from_the_restart() {
        // 10 s idle (slow ticks), then 6,000 rps for one window from the wake-up.
        let run = |restart: bool| {
            let mut s = Sampler::new(500, 3, 0);
            s.adapt(S); // a quiet window before the idle stretch
            if restart {
                s.restart(11 * S);
            }
            for _ in 0..6000 {
                s.admit();
            }
            s.adapt(12 * S);
            s.interval()
        };
        assert_eq!(run(true), 12, "6,000 rps / 500");
        assert_eq!(run(false), 1, "6,000 requests over 11 s look like 545 rps");
    }

    #[test]
    fn scaling_rounds_and_keeps_group_sums() {
        assert_eq!(scale(10, 3, 2), 15);
        assert_eq!(scale(1, 3, 2), 2, "1.5 rounds up");
        assert_eq!(scale(7, 1, 1), 7);
        assert_eq!(scale(7, 5, 0), 7, "no denominator: unchanged");
        let g = scale_group([1, 1, 1, 0, 0, 0], 10, 6);
        assert_eq!(g.iter().sum::<u64>(), scale(3, 10, 6));
        for (x, y) in [1u64, 1, 1].iter().zip(g) {
            assert!(y.abs_diff(scale(*x, 10, 6)) <= 1);
        }
        assert_eq!(
            scale_group([5, 0, 3], 1, 1),
            [5, 0, 3],
            "factor 1: unchanged"
        );
    }
}
