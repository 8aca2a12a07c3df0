//! One destination's raw counters over a window: what the filter reports (summed over
//! reporters by the controller) and what the simulator emits. [`WindowStats::features`] is the
//! single definition of the policy's input.

use crate::features::{Context, Features, FEATURE_COUNT};
use crate::histogram::LatencyHistogram;
use crate::knobs::{Knob, Knobs};
use serde::{Deserialize, Serialize};

/// Counters for one destination over `duration_s` seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    pub duration_s: f64,
    pub requests: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// Other outcomes: 1xx, 3xx, or no response code.
    pub status_other: u64,
    pub flag_uo: u64,
    pub flag_ut: u64,
    /// UF + UC + URX.
    pub flag_conn_failure: u64,
    pub retries: u64,
    pub shed: u64,
    pub inflight_max: u64,
    /// Time-averaged in-flight, summed over reporters.
    pub inflight_avg: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub http2_requests: u64,
    /// Distinct upstream endpoints (hosts) seen in the window; 0 = not reported. Merged by
    /// `max`: concurrent clients mostly see the same endpoints.
    #[serde(default)]
    pub endpoints: u32,
    /// Of `requests`, how many were not measured but estimated: the filter measures a random
    /// sample of the requests above its per-worker rate threshold and scales the window's
    /// counts, histogram and in-flight figures to all requests (unbiased; error in
    /// `filter/README.md`). `requests - unmeasured_requests` were measured. 0 = every
    /// request measured (also what other sources and older filters give).
    #[serde(default)]
    pub unmeasured_requests: u64,
    pub latency: LatencyHistogram,
}

impl WindowStats {
    /// Adds another reporter's (or another window's) counters. In-flight max and average add
    /// up across concurrent reporters; callers merging consecutive windows of one reporter
    /// should average instead (see `merge_sequential`).
    pub fn merge_concurrent(&mut self, o: &WindowStats) {
        self.duration_s = self.duration_s.max(o.duration_s);
        self.add_counts(o);
        self.inflight_max = self.inflight_max.saturating_add(o.inflight_max);
        self.inflight_avg += o.inflight_avg;
    }

    /// Appends a later window: durations add, in-flight average is time-weighted.
    pub fn merge_sequential(&mut self, o: &WindowStats) {
        let total = self.duration_s + o.duration_s;
        if total > 0.0 {
            self.inflight_avg =
                (self.inflight_avg * self.duration_s + o.inflight_avg * o.duration_s) / total;
        }
        self.duration_s = total;
        self.add_counts(o);
        self.inflight_max = self.inflight_max.max(o.inflight_max);
    }

    /// Saturating sums: the counts come from reports (a reporter cannot make this panic).
    fn add_counts(&mut self, o: &WindowStats) {
        self.requests = self.requests.saturating_add(o.requests);
        self.status_2xx = self.status_2xx.saturating_add(o.status_2xx);
        self.status_4xx = self.status_4xx.saturating_add(o.status_4xx);
        self.status_5xx = self.status_5xx.saturating_add(o.status_5xx);
        self.status_other = self.status_other.saturating_add(o.status_other);
        self.flag_uo = self.flag_uo.saturating_add(o.flag_uo);
        self.flag_ut = self.flag_ut.saturating_add(o.flag_ut);
        self.flag_conn_failure = self.flag_conn_failure.saturating_add(o.flag_conn_failure);
        self.retries = self.retries.saturating_add(o.retries);
        self.shed = self.shed.saturating_add(o.shed);
        self.request_bytes = self.request_bytes.saturating_add(o.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(o.response_bytes);
        self.http2_requests = self.http2_requests.saturating_add(o.http2_requests);
        self.endpoints = self.endpoints.max(o.endpoints);
        self.unmeasured_requests += o.unmeasured_requests;
        self.latency.merge(&o.latency);
    }

    /// Requests actually measured (the sample the figures come from; all of them when nothing
    /// was estimated). What `--min-requests` counts.
    pub fn measured_requests(&self) -> u64 {
        self.requests.saturating_sub(self.unmeasured_requests)
    }

    /// Whether the window's figures are (partly) estimates scaled from a sample.
    pub fn is_estimated(&self) -> bool {
        self.unmeasured_requests > 0
    }

    pub fn rps(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.requests as f64 / self.duration_s
        } else {
            0.0
        }
    }

    /// Estimated probability that one upstream attempt fails, from the window's attempts per
    /// request and upstream failures (5xx other than local overflow and sheds) under the
    /// retries in force ([`crate::knobs::attempt_failure_estimate`]). The controller and the
    /// simulator's live loop cap proposed retries with it.
    pub fn attempt_failure_rate(&self, in_force: &Knobs) -> f64 {
        let n = self.requests.max(1) as f64;
        let failed = self
            .status_5xx
            .saturating_sub(self.flag_uo.saturating_add(self.shed)) as f64
            / n;
        crate::knobs::attempt_failure_estimate(
            in_force.get(Knob::RetryAttempts).round().clamp(0.0, 100.0) as u32,
            1.0 + self.retries as f64 / n,
            failed,
        )
    }

    /// The policy's raw features for this window and the destination's state.
    pub fn features(&self, context: &Context) -> Features {
        let n = self.requests.max(1) as f64;
        let ms = |us: f64| us / 1000.0;
        let h = &self.latency;
        let mut f = [0.0; FEATURE_COUNT];
        f[0] = self.rps();
        f[1] = ms(h.quantile_us(0.50));
        f[2] = ms(h.quantile_us(0.90));
        f[3] = ms(h.quantile_us(0.99));
        f[4] = ms(h.mean_us());
        f[5] = self.status_5xx as f64 / n;
        f[6] = self.status_4xx as f64 / n;
        f[7] = self.flag_uo as f64 / n;
        f[8] = self.flag_ut as f64 / n;
        f[9] = self.flag_conn_failure as f64 / n;
        f[10] = (self.retries as f64 / n).min(1.0);
        f[11] = self.inflight_avg;
        f[12] = self.inflight_max as f64;
        f[13] = self.http2_requests as f64 / n;
        if self.requests == 0 {
            // No traffic: rates are undefined; report zeros rather than 0/1.
            f[5..11].iter_mut().for_each(|x| *x = 0.0);
            f[13] = 0.0;
        }
        context.fill(&mut f, self.endpoints);
        Features(f)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn merges_saturate_instead_of_overflowing() {
        use super::WindowStats;
        let mut w = WindowStats {
            duration_s: 1.0,
            requests: u64::MAX - 1,
            retries: u64::MAX,
            inflight_max: u64::MAX,
            ..WindowStats::default()
        };
        w.latency.record_n(1000, u64::MAX - 1);
        let o = w.clone();
        w.merge_concurrent(&o);
        w.merge_sequential(&o);
        assert_eq!(w.requests, u64::MAX);
        assert_eq!(w.retries, u64::MAX);
        assert_eq!(w.inflight_max, u64::MAX);
        assert_eq!(w.latency.count(), u64::MAX);
    }

    use super::*;
    use crate::features::FEATURE_NAMES;

    fn window(requests: u64, e5: u64, lat_us: u64) -> WindowStats {
        let mut w = WindowStats {
            duration_s: 2.0,
            requests,
            status_5xx: e5,
            status_2xx: requests - e5,
            ..Default::default()
        };
        (0..requests).for_each(|_| w.latency.record(lat_us));
        w.inflight_max = 3;
        w.inflight_avg = 1.5;
        w
    }

    #[test]
    fn attempt_failure_rate_reads_the_same_from_stats_and_features() {
        // 100 requests, 40 upstream 5xx (of which 10 local overflow), no retries in force.
        let mut w = window(100, 40, 20_000);
        w.flag_uo = 10;
        let defaults = Knobs::istio_defaults();
        let mut no_retries = defaults;
        no_retries.set(Knob::RetryAttempts, 0.0);
        assert!((w.attempt_failure_rate(&no_retries) - 0.3).abs() < 1e-9);
        let f = w.features(&Context::initial(250.0));
        assert!((f.attempt_failure_rate(&no_retries) - 0.3).abs() < 1e-9);
        // With 2 retries in force and 1.5 attempts per request: e + e² = 0.5, e ≈ 0.366.
        w.retries = 50;
        let mut two = defaults;
        two.set(Knob::RetryAttempts, 2.0);
        let e = w.attempt_failure_rate(&two);
        assert!((e + e * e - 0.5).abs() < 1e-6, "{e}");
        assert!(
            (w.features(&Context::initial(250.0))
                .attempt_failure_rate(&two)
                - e)
                .abs()
                < 1e-9
        );
    }

    #[test]
    fn features_follow_the_schema() {
        let f = window(100, 10, 20_000).features(&Context::initial(250.0));
        assert_eq!(f.get("rps"), Some(50.0));
        assert_eq!(f.get("error_5xx_rate"), Some(0.1));
        let p50 = f.get("latency_p50_ms").unwrap();
        assert!((p50 - 20.0).abs() <= 20.0 * crate::histogram::RELATIVE_ERROR);
        assert_eq!(FEATURE_NAMES.len(), f.0.len());
    }

    #[test]
    fn concurrent_merge_sums_inflight_sequential_averages() {
        let a = window(10, 0, 1000);
        let mut c = a.clone();
        c.merge_concurrent(&a);
        assert_eq!(c.requests, 20);
        assert_eq!(c.inflight_max, 6);
        assert_eq!(c.duration_s, 2.0);
        let mut s = a.clone();
        s.merge_sequential(&a);
        assert_eq!(s.duration_s, 4.0);
        assert_eq!(s.inflight_max, 3);
        assert!((s.inflight_avg - 1.5).abs() < 1e-12);
    }

    #[test]
    fn empty_window_has_zero_rates() {
        let f = WindowStats {
            duration_s: 1.0,
            ..Default::default()
        }
        .features(&Context::initial(250.0));
        let window = &f.0[..crate::features::WINDOW_FEATURE_COUNT];
        assert!(window.iter().all(|&x| x == 0.0));
        assert_eq!(
            f.get("slo_target_ms"),
            Some(250.0),
            "the state is still filled"
        );
    }
}
