//! Sampled per-request work above a rate threshold: which requests get their property reads
//! (the filter's whole per-request cost), and the weights that let a window's sampled counts
//! be scaled to all its requests without bias.
//!
//! Below `sample_above_rps` requests per second (per worker VM) every request is measured.
//! Above it, each request is measured with probability `1/N`, `N = rate / sample_above_rps`
//! (a fraction, in steps of 1/1024, at most [`MAX_INTERVAL`]; so a worker above the threshold
//! measures about `sample_above_rps` requests per second, whatever its rate), drawn
//! independently per request from a xorshift generator: no aliasing with periodic traffic
//! patterns (every 10th request failing, round-robin over endpoints). A measured request
//! carries an integer weight whose mean is `N`: `floor(N)`, or `floor(N) + 1` with probability
//! `N − floor(N)`, drawn independently too, so every request's expected weight is exactly 1
//! (Horvitz–Thompson); at the end of a window the weighted counts are multiplied by
//! `finished / Σ weights`, where
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
/// Fixed-point unit of the sampling interval `N` (`N = ratio / RATIO_ONE`).
pub const RATIO_ONE: u32 = 1024;

/// Per-worker sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    threshold_rps: u32,
    /// `N` in units of 1/[`RATIO_ONE`] ([`RATIO_ONE`] = every request measured).
    ratio: u32,
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
            ratio: RATIO_ONE,
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

    /// The current interval `N`, rounded down (1 = every request is measured, or `N` < 2).
    pub fn interval(&self) -> u32 {
        self.ratio / RATIO_ONE
    }

    /// The current interval `N` (1.0 = every request is measured).
    pub fn ratio(&self) -> f64 {
        f64::from(self.ratio) / f64::from(RATIO_ONE)
    }

    /// Called for every request when it starts: `Some(weight)` when it is to be measured.
    #[inline]
    pub fn admit(&mut self) -> Option<u32> {
        self.arrivals += 1;
        self.tick_arrivals += 1;
        if self.ratio <= RATIO_ONE {
            return Some(1);
        }
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        // Multiply-shift maps the high 32 bits uniformly onto 0..ratio: measured with
        // probability RATIO_ONE / ratio = 1/N.
        let r = ((x >> 32) * u64::from(self.ratio)) >> 32;
        if r >= u64::from(RATIO_ONE) {
            return None;
        }
        // Weight floor(N), or floor(N) + 1 with probability frac(N) (the low bits, independent
        // of the high ones above): its mean is N, so the expected weight per request is 1.
        let frac = u64::from(self.ratio % RATIO_ONE);
        let up = (x & u64::from(RATIO_ONE - 1)) < frac;
        Some(self.ratio / RATIO_ONE + u32::from(up))
    }

    /// Once per tick: lowers the interval at once when the rate since the last tick calls for
    /// a smaller one (traffic fell: a window must not end with requests but no sample); it is
    /// only raised at window boundaries ([`Sampler::adapt`]).
    pub fn tick(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.tick_since_ns);
        if elapsed == 0 {
            return;
        }
        let n = ratio_for(self.tick_arrivals, elapsed, self.threshold_rps);
        self.ratio = self.ratio.min(n);
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
        self.ratio = ratio_for(self.arrivals, elapsed, self.threshold_rps);
        self.arrivals = 0;
        self.since_ns = now_ns;
    }
}

/// `N = rate / threshold` in units of 1/[`RATIO_ONE`] (rounded down), at least 1, at most
/// [`MAX_INTERVAL`]; 1 when `threshold` is 0.
pub fn ratio_for(arrivals: u64, elapsed_ns: u64, threshold_rps: u32) -> u32 {
    if threshold_rps == 0 || elapsed_ns == 0 {
        return RATIO_ONE;
    }
    let n = u128::from(arrivals) * 1_000_000_000 * u128::from(RATIO_ONE)
        / (u128::from(elapsed_ns) * u128::from(threshold_rps));
    u32::try_from(n)
        .unwrap_or(u32::MAX)
        .clamp(RATIO_ONE, MAX_INTERVAL * RATIO_ONE)
}

/// `floor(N)` of [`ratio_for`]: `floor(rate / threshold)`, at least 1, at most
/// [`MAX_INTERVAL`]; 1 when `threshold` is 0.
pub fn interval_for(arrivals: u64, elapsed_ns: u64, threshold_rps: u32) -> u32 {
    ratio_for(arrivals, elapsed_ns, threshold_rps) / RATIO_ONE
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
    fn between_one_and_two_times_the_threshold_a_fraction_is_measured() {
        // 800 rps at a threshold of 500: N = 1.6, 62.5 % measured, weights 1 or 2 (mean 1.6).
        assert_eq!(
            ratio_for(800, S, 500),
            1638,
            "1.6 in 1/1024 steps, rounded down"
        );
        assert_eq!(ratio_for(400, S, 500), RATIO_ONE, "below: every request");
        assert_eq!(ratio_for(u64::MAX, 1, 1), MAX_INTERVAL * RATIO_ONE);
        assert_eq!(ratio_for(10, S, 0), RATIO_ONE, "0 = never sample");
        let mut s = Sampler::new(500, 11, 0);
        for _ in 0..800 {
            assert_eq!(s.admit(), Some(1), "the first window is measured in full");
        }
        s.adapt(S);
        assert_eq!(s.interval(), 1, "floor(1.6)");
        assert!((s.ratio() - 1.6).abs() < 0.001);
        let n = 400_000u64;
        let (mut measured, mut weights, mut twos) = (0u64, 0u64, 0u64);
        for _ in 0..n {
            if let Some(w) = s.admit() {
                assert!(w == 1 || w == 2, "weight {w}");
                measured += 1;
                weights += u64::from(w);
                twos += u64::from(w == 2);
            }
        }
        let share = measured as f64 / n as f64;
        assert!((share - 0.625).abs() < 0.005, "measured share {share}");
        let mean = weights as f64 / measured as f64;
        assert!((mean - 1.6).abs() < 0.01, "mean weight {mean}");
        assert!(twos > 0 && twos < measured);
        // Horvitz–Thompson: Σ weights estimates the request count (σ ≈ 0.1 %).
        let err = (weights as f64 - n as f64).abs() / n as f64;
        assert!(err < 0.005, "estimate {weights} of {n}");
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
