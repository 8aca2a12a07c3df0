//! Sampled per-request work above a rate threshold: which requests get their property reads
//! (the filter's whole per-request cost), and the weights that let a window's sampled counts
//! be scaled to all its requests without bias.
//!
//! The threshold applies to the **Envoy's** request rate (all its worker VMs together), not to
//! each worker's: below `sample_above_rps` requests per second every request is measured.
//! Above it, each request is measured with probability `1/N`, `N = envoy rate /
//! sample_above_rps` (a fraction, in steps of 1/1024, at most [`MAX_INTERVAL`]), the same `N`
//! on every worker, so the Envoy measures about `sample_above_rps` requests per second whatever
//! its rate and however many workers share it. Each worker learns the others' rates from a
//! small board in shared data ([`RATES_KEY`], [`update_rates`]): at the end of every window it
//! writes its own rate over that window and reads the sum of the others' (one read and one
//! compare-and-swap per window; records expire after 2 windows, so a VM that went away or
//! went idle stops counting). A worker keeps at least [`MIN_WORKER_SAMPLE_RPS`] measured
//! requests per second (or all its requests, if fewer), so a worker with little traffic on a
//! busy Envoy still has samples in every window (a window whose requests all went unmeasured
//! could not attribute them to clusters).
//!
//! Requests are drawn independently per request from a xorshift generator: no aliasing with
//! periodic traffic patterns (every 10th request failing, round-robin over endpoints). A
//! measured request carries an integer weight whose mean is `N`: `floor(N)`, or `floor(N) + 1`
//! with probability `N − floor(N)`, drawn independently too, so every request's expected weight
//! is exactly 1 (Horvitz–Thompson); at the end of a window the weighted counts are multiplied
//! by `finished / Σ weights`, where `finished` is the exact number of requests the worker saw
//! finish (counted on every request, no host call): the worker's total is then exact, a single
//! cluster's request count is exact, and every other count is an estimate whose error is
//! stated in `filter/README.md`. `N` is re-computed at every window boundary from the window's
//! arrival rate (so a burst shorter than a window is measured in full) and lowered at once on a
//! tick whose rate calls for less (so a window where traffic fell still has samples).
//!
//! Pure: time and the other workers' rates are passed in (unix ns, requests per second).

/// Largest sampling interval (1 in this many requests measured).
pub const MAX_INTERVAL: u32 = 1024;
/// Fixed-point unit of the sampling interval `N` (`N = ratio / RATIO_ONE`).
pub const RATIO_ONE: u32 = 1024;
/// A worker measures at least this many requests per second (all of them if it has fewer),
/// whatever the Envoy's rate: with ≈ this many expected samples per 1 s window, a window with
/// requests and no sample has a probability of about `e^-32`.
pub const MIN_WORKER_SAMPLE_RPS: u32 = 32;
/// Shared-data key of the per-worker rate board (see [`update_rates`]).
pub const RATES_KEY: &str = "meshtune.rates";
/// Bytes of one board record: worker id (u64 LE), rate in requests/s (u32 LE), expiry in unix
/// ms (u64 LE).
pub const RATE_RECORD_LEN: usize = 20;
/// Records kept on the board (the ones expiring last); more workers than this are not counted.
pub const MAX_RATE_RECORDS: usize = 256;

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
    /// The Envoy's rate over this worker's at the last window boundary, in units of
    /// 1/[`RATIO_ONE`] (at least [`RATIO_ONE`]): a tick scales its own rate by it.
    envoy_factor: u64,
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
            envoy_factor: u64::from(RATIO_ONE),
        }
    }

    /// The configured threshold (requests per second of the Envoy; 0 = never sample).
    pub fn threshold_rps(&self) -> u32 {
        self.threshold_rps
    }

    /// This worker's arrival rate since the last window boundary (requests per second,
    /// rounded), what it writes on the rate board before [`Sampler::adapt`].
    pub fn window_rate_rps(&self, now_ns: u64) -> u32 {
        let elapsed = now_ns.saturating_sub(self.since_ns);
        if elapsed == 0 {
            return 0;
        }
        let r = (u128::from(self.arrivals) * 1_000_000_000 + u128::from(elapsed) / 2)
            / u128::from(elapsed);
        u32::try_from(r).unwrap_or(u32::MAX)
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
        let n = self.ratio_from(self.tick_arrivals, elapsed, self.envoy_factor);
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

    /// Re-computes the interval once per window from the Envoy's rate: this worker's arrivals
    /// since the last call plus `others_rps`, the other workers' rates from the rate board
    /// (0 when unknown: then the worker's own rate is the Envoy's).
    pub fn adapt(&mut self, now_ns: u64, others_rps: u64) {
        let elapsed = now_ns.saturating_sub(self.since_ns);
        if elapsed == 0 {
            return;
        }
        // The others' requests over the same span as this worker's.
        let others = u128::from(others_rps) * u128::from(elapsed) / 1_000_000_000;
        let envoy = u128::from(self.arrivals) + others;
        self.envoy_factor = if self.arrivals == 0 {
            u64::from(RATIO_ONE)
        } else {
            u64::try_from(envoy * u128::from(RATIO_ONE) / u128::from(self.arrivals))
                .unwrap_or(u64::MAX)
        };
        self.ratio = self.ratio_from(self.arrivals, elapsed, self.envoy_factor);
        self.arrivals = 0;
        self.since_ns = now_ns;
    }

    /// `N` for `arrivals` of this worker over `elapsed_ns`, the Envoy's rate being
    /// `factor / RATIO_ONE` times this worker's: the Envoy's rate over the threshold, but at
    /// most this worker's rate over [`MIN_WORKER_SAMPLE_RPS`] (or the threshold, if lower).
    fn ratio_from(&self, arrivals: u64, elapsed_ns: u64, factor: u64) -> u32 {
        let envoy =
            u64::try_from(u128::from(arrivals) * u128::from(factor) / u128::from(RATIO_ONE))
                .unwrap_or(u64::MAX);
        let floor = MIN_WORKER_SAMPLE_RPS.min(self.threshold_rps);
        ratio_for(envoy, elapsed_ns, self.threshold_rps).min(ratio_for(arrivals, elapsed_ns, floor))
    }
}

/// One worker's turn on the rate board (the bytes under [`RATES_KEY`]; empty or malformed =
/// an empty board): its record is replaced by `rate_rps` valid until `now_ms + ttl_ms` (no
/// record when `rate_rps` is 0), expired records are dropped, at most [`MAX_RATE_RECORDS`]
/// are kept. Returns the new board and the sum of the *other* workers' live rates.
pub fn update_rates(
    board: &[u8],
    id: u64,
    rate_rps: u32,
    now_ms: u64,
    ttl_ms: u64,
) -> (Vec<u8>, u64) {
    let mut records: Vec<(u64, u32, u64)> = if board.len().is_multiple_of(RATE_RECORD_LEN) {
        board
            .chunks_exact(RATE_RECORD_LEN)
            .filter_map(|c| {
                let id = u64::from_le_bytes(c[0..8].try_into().ok()?);
                let rate = u32::from_le_bytes(c[8..12].try_into().ok()?);
                let until = u64::from_le_bytes(c[12..20].try_into().ok()?);
                Some((id, rate, until))
            })
            .filter(|&(other, _, until)| other != id && until > now_ms)
            .collect()
    } else {
        Vec::new()
    };
    let others = records.iter().map(|&(_, r, _)| u64::from(r)).sum();
    if rate_rps > 0 {
        records.push((id, rate_rps, now_ms.saturating_add(ttl_ms)));
    }
    if records.len() > MAX_RATE_RECORDS {
        records.sort_by_key(|&(_, _, until)| std::cmp::Reverse(until));
        records.truncate(MAX_RATE_RECORDS);
    }
    let mut out = Vec::with_capacity(records.len() * RATE_RECORD_LEN);
    for (id, rate, until) in records {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&until.to_le_bytes());
    }
    (out, others)
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
        s.adapt(S, 0);
        assert_eq!(s.interval(), 1);
        assert!((0..900).all(|_| s.admit() == Some(1)));
    }

    #[test]
    fn above_threshold_the_sample_is_unbiased() {
        let mut s = Sampler::new(1000, 42, 0);
        for _ in 0..8000 {
            s.admit();
        }
        s.adapt(S, 0);
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
        s.adapt(S, 0);
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
        s.adapt(S, 0); // 1,600 rps over the window
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
            s.adapt(S, 0); // a quiet window before the idle stretch
            if restart {
                s.restart(11 * S);
            }
            for _ in 0..6000 {
                s.admit();
            }
            s.adapt(12 * S, 0);
            s.interval()
        };
        assert_eq!(run(true), 12, "6,000 rps / 500");
        assert_eq!(run(false), 1, "6,000 requests over 11 s look like 545 rps");
    }

    #[test]
    fn the_threshold_applies_to_the_envoy_rate() {
        // 800 rps over 2 workers at 500: each worker sees 400, the Envoy 800 → N = 1.6 on both.
        let mut s = Sampler::new(500, 5, 0);
        for _ in 0..400 {
            assert_eq!(s.admit(), Some(1));
        }
        assert_eq!(s.window_rate_rps(S), 400);
        s.adapt(S, 400);
        assert!((s.ratio() - 1.6).abs() < 0.001, "N {}", s.ratio());
        // The same worker rate, the others unknown: its own rate is below the threshold.
        let mut own = Sampler::new(500, 5, 0);
        (0..400).for_each(|_| {
            let _ = own.admit();
        });
        own.adapt(S, 0);
        assert_eq!(own.ratio(), 1.0);
        // Below the threshold for the Envoy (450 rps over 2 workers): every request measured.
        let mut s = Sampler::new(500, 5, 0);
        (0..225).for_each(|_| {
            let _ = s.admit();
        });
        s.adapt(S, 225);
        assert_eq!(s.ratio(), 1.0);
        assert!((0..1000).all(|_| s.admit() == Some(1)));
        // A 250 ms tick at the same worker rate keeps N (the Envoy's rate is unchanged)...
        let mut s = Sampler::new(500, 5, 0);
        (0..2000).for_each(|_| {
            let _ = s.admit();
        });
        s.adapt(S, 2000); // 4,000 rps over 2 workers: N = 8
        assert!((s.ratio() - 8.0).abs() < 0.001);
        (0..500).for_each(|_| {
            let _ = s.admit();
        });
        s.tick(S + S / 4);
        assert!((s.ratio() - 8.0).abs() < 0.001, "N {}", s.ratio());
        // ...and lowers it at once when the worker's rate falls (Envoy ≈ 2 × 400 rps).
        (0..100).for_each(|_| {
            let _ = s.admit();
        });
        s.tick(S + S / 2);
        assert!((s.ratio() - 1.6).abs() < 0.001, "N {}", s.ratio());
    }

    #[test]
    fn a_quiet_worker_on_a_busy_envoy_keeps_samples() {
        // 10 rps on a 100k rps Envoy: below MIN_WORKER_SAMPLE_RPS, every request measured.
        let mut s = Sampler::new(500, 5, 0);
        (0..10).for_each(|_| {
            let _ = s.admit();
        });
        s.adapt(S, 100_000);
        assert_eq!(s.ratio(), 1.0);
        // 320 rps on it: N = 320 / 32 = 10, not 100,320 / 500.
        let mut s = Sampler::new(500, 5, 0);
        (0..320).for_each(|_| {
            let _ = s.admit();
        });
        s.adapt(S, 100_000);
        assert!((s.ratio() - 10.0).abs() < 0.001, "N {}", s.ratio());
        // A threshold below the floor: the threshold wins (5 rps → N = 64 at 320 rps).
        let mut s = Sampler::new(5, 5, 0);
        (0..320).for_each(|_| {
            let _ = s.admit();
        });
        s.adapt(S, 0);
        assert!((s.ratio() - 64.0).abs() < 0.001, "N {}", s.ratio());
    }

    #[test]
    fn the_rate_board_sums_the_other_live_workers() {
        let (b, others) = update_rates(&[], 1, 400, 1_000, 2_000);
        assert_eq!((b.len(), others), (RATE_RECORD_LEN, 0));
        let (b, others) = update_rates(&b, 2, 300, 1_100, 2_000);
        assert_eq!((b.len(), others), (2 * RATE_RECORD_LEN, 400));
        // Worker 1 again: its old record is replaced, worker 2 counted.
        let (b, others) = update_rates(&b, 1, 500, 2_000, 2_000);
        assert_eq!((b.len(), others), (2 * RATE_RECORD_LEN, 300));
        // Worker 2's record (written at 1,100, ttl 2,000) has expired at 3,100.
        let (b, others) = update_rates(&b, 1, 500, 3_100, 2_000);
        assert_eq!((b.len(), others), (RATE_RECORD_LEN, 0));
        // Rate 0: its record goes away.
        let (b, others) = update_rates(&b, 1, 0, 3_200, 2_000);
        assert_eq!((b.len(), others), (0, 0));
        // A malformed board counts as empty.
        let (b, others) = update_rates(&[1, 2, 3], 3, 10, 0, 10);
        assert_eq!((b.len(), others), (RATE_RECORD_LEN, 0));
        // Bounded: the records expiring last are kept.
        let mut b = Vec::new();
        for id in 0..(MAX_RATE_RECORDS as u64 + 10) {
            b = update_rates(&b, id, 1, id, 1_000_000).0;
        }
        assert_eq!(b.len(), MAX_RATE_RECORDS * RATE_RECORD_LEN);
        let (_, others) = update_rates(&b, u64::MAX, 1, 0, 1);
        assert_eq!(others, MAX_RATE_RECORDS as u64);
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
