//! What a window's traffic achieved ([`Outcomes`]) and how good that is ([`Objective`]): the one
//! definition of each rate, used by the controller (live windows, rollback objective, recorder),
//! the simulator (RL reward, sweeps) and therefore the dataset the trainer learns from.

use crate::histogram::bucket_bounds;
use crate::knobs::KNOB_COUNT;
use crate::window::WindowStats;
use serde::{Deserialize, Serialize};

/// Default latency SLO (ms) for SLO goodput.
pub const DEFAULT_SLO_MS: f64 = 250.0;
/// Default weight of SLO goodput (fraction of offered requests answered 2xx within the SLO).
pub const DEFAULT_GOODPUT_WEIGHT: f64 = 1.0;
/// Default penalty per unit error rate (any 5xx, including sheds and timeouts).
pub const DEFAULT_ERROR_PENALTY: f64 = 0.25;
/// Default extra penalty per unit shed rate.
pub const DEFAULT_SHED_PENALTY: f64 = 0.05;
/// Default extra penalty per unit timeout (UT) rate.
pub const DEFAULT_TIMEOUT_PENALTY: f64 = 0.25;
/// Default penalty per unit mean absolute change of the normalised knobs between windows.
pub const DEFAULT_CHURN_PENALTY: f64 = 0.1;

/// What happened in a window under the knobs in force. Rates are fractions of the requests
/// completed in the window (0 when none completed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcomes {
    /// Arrival rate of client requests.
    pub offered_rps: f64,
    /// Successful (2xx) responses within the latency SLO, per second.
    pub slo_goodput_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Requests that failed with any 5xx (including sheds and timeouts).
    pub error_rate: f64,
    /// Requests shed: circuit-breaker overflow (Envoy flag UO) plus the filter's local shedding.
    pub shed_rate: f64,
    /// Requests that timed out upstream (Envoy flag UT).
    pub timeout_rate: f64,
    /// The [`Objective`]'s value for this window.
    pub reward: f64,
}

/// How many of a window's 2xx responses met the latency SLO.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SloGood {
    /// Estimated from the window's latency histogram: 2xx × the share of latencies in buckets
    /// whose upper bound is within `slo_ms` (what the controller can know from reports).
    FromHistogram { slo_ms: f64 },
    /// Counted exactly per request (the simulator sees every request).
    Exact(u64),
}

impl Outcomes {
    /// Outcomes of window `w` with `offered` client requests arriving in it (the controller
    /// sees only completions, so it passes `w.requests`; the simulator its arrivals), scored
    /// by `objective` with knob `churn` (see [`churn`]).
    pub fn of_window(
        w: &WindowStats,
        offered: u64,
        good: SloGood,
        objective: &Objective,
        churn: f64,
    ) -> Outcomes {
        let dur = if w.duration_s > 0.0 {
            w.duration_s
        } else {
            1.0
        };
        let rate = |x: u64| {
            if w.requests == 0 {
                0.0
            } else {
                (x as f64 / w.requests as f64).min(1.0)
            }
        };
        let good = match good {
            SloGood::Exact(n) => n as f64,
            SloGood::FromHistogram { slo_ms } => {
                w.status_2xx as f64 * share_within(&w.latency, slo_ms * 1000.0)
            }
        };
        let mut o = Outcomes {
            offered_rps: offered as f64 / dur,
            slo_goodput_rps: good / dur,
            p50_ms: w.latency.quantile_us(0.50) / 1000.0,
            p99_ms: w.latency.quantile_us(0.99) / 1000.0,
            error_rate: rate(w.status_5xx),
            shed_rate: rate(w.flag_uo + w.shed),
            timeout_rate: rate(w.flag_ut),
            reward: 0.0,
        };
        o.reward = objective.reward(&o, churn);
        o
    }
}

/// Share of the histogram's latencies in buckets whose upper bound is ≤ `slo_us` (0 if empty).
fn share_within(h: &crate::histogram::LatencyHistogram, slo_us: f64) -> f64 {
    let total = h.count();
    if total == 0 {
        return 0.0;
    }
    let within: u64 = h
        .nonzero_buckets()
        .filter(|(i, _)| (bucket_bounds(*i as usize).1 as f64) <= slo_us)
        .map(|(_, c)| c)
        .sum();
    within as f64 / total as f64
}

/// The reward of one window:
///
/// `goodput * min(1, slo_goodput_rps / offered_rps) - error_penalty * error_rate
///  - shed_penalty * shed_rate - timeout_penalty * timeout_rate - churn_penalty * churn`
///
/// where `churn` is the mean absolute change of the normalised knobs (in [0, 1]) from the
/// previous window. With no offered load the goodput term is `goodput` (nothing was lost).
/// See sim/README.md.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    pub goodput: f64,
    pub error_penalty: f64,
    pub shed_penalty: f64,
    pub timeout_penalty: f64,
    pub churn_penalty: f64,
}

impl Default for Objective {
    fn default() -> Self {
        Objective {
            goodput: DEFAULT_GOODPUT_WEIGHT,
            error_penalty: DEFAULT_ERROR_PENALTY,
            shed_penalty: DEFAULT_SHED_PENALTY,
            timeout_penalty: DEFAULT_TIMEOUT_PENALTY,
            churn_penalty: DEFAULT_CHURN_PENALTY,
        }
    }
}

impl Objective {
    /// Reward for a window's outcomes (its `reward` field is ignored) and knob churn.
    pub fn reward(&self, o: &Outcomes, churn: f64) -> f64 {
        let g = if o.offered_rps > 0.0 {
            (o.slo_goodput_rps / o.offered_rps).min(1.0)
        } else {
            1.0
        };
        self.goodput * g
            - self.error_penalty * o.error_rate
            - self.shed_penalty * o.shed_rate
            - self.timeout_penalty * o.timeout_rate
            - self.churn_penalty * churn
    }
}

/// Mean absolute difference of two normalised knob vectors.
pub fn churn(a: &[f32; KNOB_COUNT], b: &[f32; KNOB_COUNT]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / KNOB_COUNT as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 s with `requests` requests, `ok` of them 2xx and the rest 5xx, all `latency_ms` long.
    fn window(requests: u64, ok: u64, latency_ms: u64) -> WindowStats {
        let mut latency = crate::histogram::LatencyHistogram::new();
        latency.record_n(latency_ms * 1000, requests);
        let (status_2xx, status_5xx) = (ok, requests - ok);
        WindowStats {
            duration_s: 10.0,
            requests,
            status_2xx,
            status_5xx,
            latency,
            ..WindowStats::default()
        }
    }

    fn from_histogram(w: &WindowStats, slo_ms: f64) -> Outcomes {
        Outcomes::of_window(
            w,
            w.requests,
            SloGood::FromHistogram { slo_ms },
            &Objective::default(),
            0.0,
        )
    }

    #[test]
    fn goodput_counts_2xx_within_the_slo_only() {
        let fast = from_histogram(&window(100, 90, 5), 100.0);
        assert!((fast.offered_rps - 10.0).abs() < 1e-9);
        assert!((fast.slo_goodput_rps - 9.0).abs() < 1e-9);
        assert!((fast.error_rate - 0.1).abs() < 1e-9);
        let slow = from_histogram(&window(100, 90, 500), 100.0);
        assert_eq!(slow.slo_goodput_rps, 0.0);
        assert!(slow.reward < fast.reward);
    }

    #[test]
    fn shed_rate_counts_overflow_and_local_shedding_once_each() {
        let mut w = window(100, 70, 5);
        w.flag_uo = 10;
        w.shed = 20;
        w.flag_ut = 5;
        let o = from_histogram(&w, 100.0);
        assert!((o.shed_rate - 0.3).abs() < 1e-9, "{o:?}");
        assert!((o.timeout_rate - 0.05).abs() < 1e-9, "{o:?}");
        // Exact SLO counts and arrivals (the simulator's view) use the same rates.
        let exact = Outcomes::of_window(&w, 120, SloGood::Exact(50), &Objective::default(), 0.0);
        assert_eq!(exact.shed_rate, o.shed_rate);
        assert!((exact.offered_rps - 12.0).abs() < 1e-9);
        assert!((exact.slo_goodput_rps - 5.0).abs() < 1e-9);
    }

    #[test]
    fn an_empty_window_has_zero_rates_and_full_goodput_reward() {
        let o = from_histogram(&WindowStats::default(), 100.0);
        assert_eq!((o.error_rate, o.shed_rate, o.timeout_rate), (0.0, 0.0, 0.0));
        assert_eq!(o.reward, DEFAULT_GOODPUT_WEIGHT);
    }

    #[test]
    fn reward_weighs_goodput_penalties_and_churn() {
        let obj = Objective::default();
        let o = Outcomes {
            offered_rps: 100.0,
            slo_goodput_rps: 50.0,
            error_rate: 0.2,
            shed_rate: 0.1,
            timeout_rate: 0.1,
            ..Outcomes::default()
        };
        let expected = 0.5 - 0.25 * 0.2 - 0.05 * 0.1 - 0.25 * 0.1 - 0.1 * 0.4;
        assert!((obj.reward(&o, 0.4) - expected).abs() < 1e-12);
        let a = [0.0; KNOB_COUNT];
        let mut b = [0.0; KNOB_COUNT];
        b[0] = 1.0;
        assert!((churn(&a, &b) - 1.0 / KNOB_COUNT as f64).abs() < 1e-12);
    }
}
