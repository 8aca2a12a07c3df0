//! Baseline policies to compare learned policies against: Istio defaults, static configs
//! (a hand-tuned one), a gradient concurrency controller modelled on Envoy's adaptive
//! concurrency filter, and an oracle that grid-searches the best static config per scenario.

use crate::episode::{run_episode, Objective, Summary};
use crate::scenario::Scenario;
use meshtune_core::env::Policy;
use meshtune_core::knobs::ISTIO_UNLIMITED;
use meshtune_core::{Features, Knob, Knobs};

/// What a mesh runs with when nothing is configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct IstioDefaults;

impl Policy for IstioDefaults {
    fn name(&self) -> &str {
        "istio-defaults"
    }
    fn decide(&mut self, _f: &Features, _k: &Knobs) -> Knobs {
        Knobs::istio_defaults()
    }
}

/// The same knobs every window.
#[derive(Debug, Clone)]
pub struct StaticPolicy {
    pub name: String,
    pub knobs: Knobs,
}

impl Policy for StaticPolicy {
    fn name(&self) -> &str {
        &self.name
    }
    fn decide(&mut self, _f: &Features, _k: &Knobs) -> Knobs {
        self.knobs
    }
}

/// A reasonable human configuration, per client Envoy (see sim/README.md for the reasoning):
/// maxConnections 100 (the value of Istio's own examples), 50 pending, max requests 100
/// (HTTP/1.1 cannot use more than the connections), unlimited requests per connection
/// (keep-alive), at most 10 outstanding retries (stops retry storms), route timeout 1 s,
/// 2 retries with a 400 ms per-try timeout (two tries and back-off fit in the route
/// timeout), outlier detection after 5 consecutive 5xx for 30 s, up to 50 % of hosts.
pub fn hand_tuned() -> StaticPolicy {
    let mut k = Knobs::istio_defaults();
    k.set(Knob::MaxConnections, 100.0);
    k.set(Knob::Http1MaxPendingRequests, 50.0);
    k.set(Knob::Http2MaxRequests, 100.0);
    k.set(Knob::MaxRequestsPerConnection, 0.0);
    k.set(Knob::MaxRetries, 10.0);
    k.set(Knob::RouteTimeoutMs, 1000.0);
    k.set(Knob::RetryAttempts, 2.0);
    k.set(Knob::PerTryTimeoutMs, 400.0);
    k.set(Knob::Consecutive5xxErrors, 5.0);
    k.set(Knob::BaseEjectionTimeMs, 30_000.0);
    k.set(Knob::MaxEjectionPercent, 50.0);
    StaticPolicy {
        name: "hand-tuned".into(),
        knobs: k,
    }
}

/// Default minimum concurrency limit (Envoy adaptive concurrency `min_concurrency`).
pub const DEFAULT_MIN_CONCURRENCY: f64 = 3.0;
/// Default maximum concurrency limit (Envoy `max_concurrency_limit`).
pub const DEFAULT_MAX_CONCURRENCY: f64 = 1000.0;
/// Default buffer added to minRTT (Envoy `min_rtt_calc_params.buffer`, 25 %).
pub const DEFAULT_BUFFER: f64 = 0.25;
/// Default windows between minRTT probes (Envoy `min_rtt_calc_params.interval`, 60 s at
/// 2 s windows ≈ 30).
pub const DEFAULT_PROBE_EVERY: u64 = 30;

/// Gradient concurrency controller modelled on Envoy's adaptive concurrency filter: each
/// window, `gradient = clamp((minRTT * (1 + buffer)) / sampleRTT, 0.5, 2)` and
/// `limit = clamp(gradient * limit + sqrt(limit), min, max)`; the limit is applied as
/// `http.http2MaxRequests` (per client Envoy) on top of `base`. minRTT is measured in a probe
/// window with the limit pinned to the minimum: first, then every `probe_every` windows.
/// sampleRTT is the window's mean latency with overflow (≈0 ms local replies) removed:
/// `mean / (1 - overflow_rate)`.
#[derive(Debug, Clone)]
pub struct GradientController {
    pub base: Knobs,
    pub min_limit: f64,
    pub max_limit: f64,
    pub buffer: f64,
    pub probe_every: u64,
    limit: f64,
    min_rtt_ms: Option<f64>,
    windows: u64,
    probing: bool,
    saved_limit: f64,
}

impl Default for GradientController {
    fn default() -> Self {
        Self::new(Knobs::istio_defaults())
    }
}

impl GradientController {
    pub fn new(base: Knobs) -> Self {
        GradientController {
            base,
            min_limit: DEFAULT_MIN_CONCURRENCY,
            max_limit: DEFAULT_MAX_CONCURRENCY,
            buffer: DEFAULT_BUFFER,
            probe_every: DEFAULT_PROBE_EVERY,
            limit: DEFAULT_MIN_CONCURRENCY,
            min_rtt_ms: None,
            windows: 0,
            probing: false,
            saved_limit: DEFAULT_MIN_CONCURRENCY,
        }
    }

    /// Current concurrency limit.
    pub fn limit(&self) -> f64 {
        self.limit
    }

    pub fn min_rtt_ms(&self) -> Option<f64> {
        self.min_rtt_ms
    }

    fn knobs(&self, limit: f64) -> Knobs {
        let mut k = self.base;
        k.set(Knob::Http2MaxRequests, limit.round().max(1.0));
        k
    }
}

impl Policy for GradientController {
    fn name(&self) -> &str {
        "gradient"
    }

    fn decide(&mut self, f: &Features, _in_force: &Knobs) -> Knobs {
        let first = self.windows == 0;
        self.windows += 1;
        if first {
            self.probing = true;
            self.saved_limit = self.min_limit;
            return self.knobs(self.min_limit);
        }
        let rps = f.0[0];
        let mean = f.0[4];
        let overflow = f.0[7].min(0.999);
        let sample = if rps > 0.0 && mean > 0.0 {
            Some(mean / (1.0 - overflow))
        } else {
            None
        };
        if self.probing {
            self.probing = false;
            if let Some(s) = sample {
                self.min_rtt_ms = Some(s);
            }
            self.limit = self.saved_limit;
        } else if let (Some(s), Some(min_rtt)) = (sample, self.min_rtt_ms) {
            let gradient = (min_rtt * (1.0 + self.buffer) / s).clamp(0.5, 2.0);
            self.limit =
                (gradient * self.limit + self.limit.sqrt()).clamp(self.min_limit, self.max_limit);
        }
        if self.probe_every > 0 && self.windows.is_multiple_of(self.probe_every) {
            self.probing = true;
            self.saved_limit = self.limit;
            return self.knobs(self.min_limit);
        }
        self.knobs(self.limit)
    }
}

/// A grid of static configurations: every combination of the axes' values on top of `base`.
#[derive(Debug, Clone, PartialEq)]
pub struct KnobGrid {
    pub base: Knobs,
    pub axes: Vec<(Knob, Vec<f64>)>,
}

impl KnobGrid {
    /// The oracle's default grid (6 x 4 x 4 x 3 = 288 configs): max requests (concurrency per
    /// client), pending, route timeout, retries; other knobs as in [`hand_tuned`] with
    /// connections unlimited.
    pub fn oracle_default() -> Self {
        KnobGrid {
            base: grid_base(),
            axes: vec![
                (
                    Knob::Http2MaxRequests,
                    vec![8.0, 16.0, 32.0, 64.0, 128.0, ISTIO_UNLIMITED],
                ),
                (
                    Knob::Http1MaxPendingRequests,
                    vec![1.0, 8.0, 64.0, ISTIO_UNLIMITED],
                ),
                (Knob::RouteTimeoutMs, vec![0.0, 200.0, 500.0, 2000.0]),
                (Knob::RetryAttempts, vec![0.0, 1.0, 2.0]),
            ],
        }
    }

    /// A small grid (3 x 2 x 2 x 2 = 24 configs) for quick sweeps and tests.
    pub fn small() -> Self {
        KnobGrid {
            base: grid_base(),
            axes: vec![
                (Knob::Http2MaxRequests, vec![16.0, 64.0, ISTIO_UNLIMITED]),
                (Knob::Http1MaxPendingRequests, vec![8.0, ISTIO_UNLIMITED]),
                (Knob::RouteTimeoutMs, vec![0.0, 500.0]),
                (Knob::RetryAttempts, vec![0.0, 2.0]),
            ],
        }
    }

    /// A wide grid for dataset sweeps (4 x 3 x 3 x 2 x 2 x 2 x 2 = 576 configs): besides the
    /// oracle's knobs it varies the per-try timeout and outlier detection, so a supervised
    /// model sees those knobs change.
    pub fn wide() -> Self {
        KnobGrid {
            base: grid_base(),
            axes: vec![
                (
                    Knob::Http2MaxRequests,
                    vec![8.0, 32.0, 128.0, ISTIO_UNLIMITED],
                ),
                (
                    Knob::Http1MaxPendingRequests,
                    vec![1.0, 16.0, ISTIO_UNLIMITED],
                ),
                (Knob::RouteTimeoutMs, vec![0.0, 250.0, 1000.0]),
                (Knob::RetryAttempts, vec![0.0, 2.0]),
                (Knob::PerTryTimeoutMs, vec![0.0, 100.0]),
                (Knob::Consecutive5xxErrors, vec![2.0, 20.0]),
                (Knob::MaxEjectionPercent, vec![10.0, 50.0]),
            ],
        }
    }

    /// Number of configurations.
    pub fn len(&self) -> usize {
        self.axes.iter().map(|(_, v)| v.len()).product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th configuration (last axis varies fastest).
    pub fn get(&self, mut i: usize) -> Knobs {
        let mut k = self.base;
        for (knob, values) in self.axes.iter().rev() {
            k.set(*knob, values[i % values.len()]);
            i /= values.len();
        }
        k
    }

    pub fn settings(&self) -> Vec<Knobs> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}

fn grid_base() -> Knobs {
    let mut k = hand_tuned().knobs;
    k.set(Knob::MaxConnections, ISTIO_UNLIMITED);
    k.set(Knob::PerTryTimeoutMs, 0.0);
    k
}

/// Evaluates every grid configuration as a static policy on the scenario (same seed) and
/// returns the one with the highest total reward (ties: the earliest). Runs on all cores.
pub fn oracle_grid_search(
    scenario: &Scenario,
    seed: u64,
    objective: &Objective,
    grid: &KnobGrid,
) -> (Knobs, Summary) {
    let settings = grid.settings();
    assert!(!settings.is_empty(), "oracle grid is empty");
    let results = crate::par_map(&settings, |k| {
        let mut p = StaticPolicy {
            name: "oracle".into(),
            knobs: *k,
        };
        run_episode(scenario, &mut p, seed, objective).summary
    });
    let mut best = 0;
    for (i, r) in results.iter().enumerate() {
        if r.total_reward > results[best].total_reward {
            best = i;
        }
    }
    (settings[best], results[best].clone())
}
