//! The policy's output: Istio connection-pool, timeout, retry and outlier-detection knobs.
//!
//! Each knob has a unit, hard bounds (the widest values meshtune will ever set), Istio's
//! default (what a mesh without meshtune runs with; may lie outside the bounds, e.g. 2^32-1 for
//! "unlimited" or 0 for "no timeout"), and a scale mapping it to the policy's normalised
//! range [0, 1].

use serde::{Deserialize, Serialize};

/// Istio's "effectively unlimited" default for connection-pool limits.
pub const ISTIO_UNLIMITED: f64 = 4_294_967_295.0;

/// How a knob maps to the normalised range [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// u = (x - min) / (max - min)
    Linear,
    /// u = ln(x / min) / ln(max / min); min > 0.
    Log,
}

/// One knob's schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnobSpec {
    pub knob: Knob,
    /// Name as in Istio's API and in ONNX metadata (`meshtune.knobs`).
    pub name: &'static str,
    pub unit: &'static str,
    pub min: f64,
    pub max: f64,
    /// What Istio uses when the field is unset.
    pub istio_default: f64,
    pub scale: Scale,
    /// Whole numbers only (counts, milliseconds).
    pub integer: bool,
    /// 0 means "none" / "unlimited" in Istio (no timeout, no per-connection request limit):
    /// it normalises to the top of the range, not to the lower bound.
    pub zero_is_unlimited: bool,
    pub help: &'static str,
}

/// Number of knobs.
pub const KNOB_COUNT: usize = 11;

/// The knobs, in policy output order. Changing it is a contract version bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Knob {
    MaxConnections = 0,
    Http1MaxPendingRequests = 1,
    Http2MaxRequests = 2,
    MaxRequestsPerConnection = 3,
    MaxRetries = 4,
    RouteTimeoutMs = 5,
    RetryAttempts = 6,
    PerTryTimeoutMs = 7,
    Consecutive5xxErrors = 8,
    BaseEjectionTimeMs = 9,
    MaxEjectionPercent = 10,
}

impl Knob {
    pub const ALL: [Knob; KNOB_COUNT] = [
        Knob::MaxConnections,
        Knob::Http1MaxPendingRequests,
        Knob::Http2MaxRequests,
        Knob::MaxRequestsPerConnection,
        Knob::MaxRetries,
        Knob::RouteTimeoutMs,
        Knob::RetryAttempts,
        Knob::PerTryTimeoutMs,
        Knob::Consecutive5xxErrors,
        Knob::BaseEjectionTimeMs,
        Knob::MaxEjectionPercent,
    ];

    pub fn spec(self) -> &'static KnobSpec {
        &KNOB_SPECS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn from_name(name: &str) -> Option<Knob> {
        KNOB_SPECS.iter().find(|s| s.name == name).map(|s| s.knob)
    }
}

/// Knob schema, indexed by `Knob as usize`.
pub const KNOB_SPECS: [KnobSpec; KNOB_COUNT] = [
    KnobSpec {
        knob: Knob::MaxConnections,
        name: "tcp.maxConnections",
        unit: "connections",
        min: 1.0,
        max: 65_536.0,
        istio_default: ISTIO_UNLIMITED,
        scale: Scale::Log,
        integer: true,
        zero_is_unlimited: false,
        help: "max TCP connections to the destination (per Envoy)",
    },
    KnobSpec {
        knob: Knob::Http1MaxPendingRequests,
        name: "http.http1MaxPendingRequests",
        unit: "requests",
        min: 1.0,
        max: 65_536.0,
        istio_default: ISTIO_UNLIMITED,
        scale: Scale::Log,
        integer: true,
        zero_is_unlimited: false,
        help: "max requests queued waiting for a connection",
    },
    KnobSpec {
        knob: Knob::Http2MaxRequests,
        name: "http.http2MaxRequests",
        unit: "requests",
        min: 1.0,
        max: 65_536.0,
        istio_default: ISTIO_UNLIMITED,
        scale: Scale::Log,
        integer: true,
        zero_is_unlimited: false,
        help: "max active requests to the destination (Envoy max_requests)",
    },
    KnobSpec {
        knob: Knob::MaxRequestsPerConnection,
        name: "http.maxRequestsPerConnection",
        unit: "requests",
        min: 1.0,
        max: 65_536.0,
        istio_default: 0.0,
        scale: Scale::Log,
        integer: true,
        zero_is_unlimited: true,
        help: "requests per connection before it is recycled (0 = unlimited)",
    },
    KnobSpec {
        knob: Knob::MaxRetries,
        name: "http.maxRetries",
        unit: "retries",
        min: 1.0,
        max: 1_024.0,
        istio_default: ISTIO_UNLIMITED,
        scale: Scale::Log,
        integer: true,
        zero_is_unlimited: false,
        help: "max outstanding retries across the cluster (Envoy max_retries)",
    },
    KnobSpec {
        knob: Knob::RouteTimeoutMs,
        name: "timeout",
        unit: "ms",
        min: 10.0,
        max: 60_000.0,
        istio_default: 0.0,
        scale: Scale::Log,
        integer: true,
        zero_is_unlimited: true,
        help: "route timeout (0 = none)",
    },
    KnobSpec {
        knob: Knob::RetryAttempts,
        name: "retries.attempts",
        unit: "attempts",
        min: 0.0,
        max: 5.0,
        istio_default: 2.0,
        scale: Scale::Linear,
        integer: true,
        zero_is_unlimited: false,
        help: "retry attempts per request",
    },
    KnobSpec {
        knob: Knob::PerTryTimeoutMs,
        name: "retries.perTryTimeout",
        unit: "ms",
        min: 5.0,
        max: 60_000.0,
        istio_default: 0.0,
        scale: Scale::Log,
        integer: true,
        zero_is_unlimited: true,
        help: "timeout per attempt (0 = the route timeout)",
    },
    KnobSpec {
        knob: Knob::Consecutive5xxErrors,
        name: "outlierDetection.consecutive5xxErrors",
        unit: "errors",
        min: 1.0,
        max: 100.0,
        istio_default: 5.0,
        scale: Scale::Log,
        integer: true,
        zero_is_unlimited: false,
        help: "consecutive 5xx before a host is ejected",
    },
    KnobSpec {
        knob: Knob::BaseEjectionTimeMs,
        name: "outlierDetection.baseEjectionTime",
        unit: "ms",
        min: 1_000.0,
        max: 300_000.0,
        istio_default: 30_000.0,
        scale: Scale::Log,
        integer: true,
        zero_is_unlimited: false,
        help: "minimum ejection duration",
    },
    KnobSpec {
        knob: Knob::MaxEjectionPercent,
        name: "outlierDetection.maxEjectionPercent",
        unit: "percent",
        min: 0.0,
        max: 100.0,
        istio_default: 10.0,
        scale: Scale::Linear,
        integer: true,
        zero_is_unlimited: false,
        help: "max % of hosts ejected at once",
    },
];

/// Knob names in policy output order.
pub const KNOB_NAMES: [&str; KNOB_COUNT] = {
    let mut names = [""; KNOB_COUNT];
    let mut i = 0;
    while i < KNOB_COUNT {
        names[i] = KNOB_SPECS[i].name;
        i += 1;
    }
    names
};

/// Retry budget: a client Envoy's outstanding retries (`http.maxRetries`) are at most this share
/// of its request limit (`http.http2MaxRequests`), as Envoy's own `retry_budget` and Linkerd's
/// 20 % budget do, so retries cannot multiply the load on a struggling destination.
pub const RETRY_BUDGET_FRACTION: f64 = 0.2;
/// The budget never goes below this many outstanding retries (Envoy's
/// `min_retry_concurrency` default), so a low request limit still allows some retries.
pub const MIN_RETRY_CONCURRENCY: f64 = 3.0;

/// One value per knob, in the knob's own unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Knobs(pub [f64; KNOB_COUNT]);

impl Knobs {
    /// What an Istio mesh runs with when nothing is configured.
    pub fn istio_defaults() -> Self {
        Knobs(KNOB_SPECS.map(|s| s.istio_default))
    }

    pub fn get(&self, k: Knob) -> f64 {
        self.0[k as usize]
    }

    pub fn set(&mut self, k: Knob, v: f64) {
        self.0[k as usize] = v;
    }

    /// Builds knobs from normalised policy output: clamps each to [0, 1] (NaN → 0.5), maps to
    /// the knob's unit and rounds integer knobs, then applies the retry budget
    /// ([`Knobs::apply_retry_budget`]). Always within hard bounds.
    pub fn from_normalised(u: &[f32; KNOB_COUNT]) -> Self {
        let mut out = [0.0; KNOB_COUNT];
        for (i, spec) in KNOB_SPECS.iter().enumerate() {
            out[i] = denormalise(spec, u[i] as f64);
        }
        let mut knobs = Knobs(out);
        knobs.apply_retry_budget();
        knobs
    }

    /// The retry budget: `http.maxRetries` at most `max(MIN_RETRY_CONCURRENCY,
    /// floor(RETRY_BUDGET_FRACTION × http.http2MaxRequests))`. Returns the value it replaced,
    /// if it lowered it.
    pub fn apply_retry_budget(&mut self) -> Option<f64> {
        let budget = (RETRY_BUDGET_FRACTION * self.get(Knob::Http2MaxRequests))
            .floor()
            .max(MIN_RETRY_CONCURRENCY);
        let retries = self.get(Knob::MaxRetries);
        (retries > budget).then(|| {
            self.set(Knob::MaxRetries, budget);
            retries
        })
    }

    /// Normalised representation (values outside the bounds are clamped first).
    pub fn normalised(&self) -> [f32; KNOB_COUNT] {
        let mut out = [0f32; KNOB_COUNT];
        for (i, spec) in KNOB_SPECS.iter().enumerate() {
            out[i] = normalise(spec, self.0[i]) as f32;
        }
        out
    }

    /// Clamps every knob into its hard bounds (integers rounded). Returns which knobs changed.
    pub fn clamp_to_bounds(&mut self) -> Vec<Knob> {
        let mut changed = Vec::new();
        for (i, spec) in KNOB_SPECS.iter().enumerate() {
            let v = clamp(spec, self.0[i]);
            if v != self.0[i] {
                changed.push(spec.knob);
                self.0[i] = v;
            }
        }
        changed
    }
}

fn clamp(spec: &KnobSpec, x: f64) -> f64 {
    let x = if x.is_nan() {
        spec.min
    } else {
        x.clamp(spec.min, spec.max)
    };
    if spec.integer {
        x.round()
    } else {
        x
    }
}

/// Maps a knob value to [0, 1] (clamped to bounds first).
pub fn normalise(spec: &KnobSpec, x: f64) -> f64 {
    if spec.zero_is_unlimited && x == 0.0 {
        return 1.0;
    }
    let x = clamp(spec, x);
    match spec.scale {
        Scale::Linear => (x - spec.min) / (spec.max - spec.min),
        Scale::Log => (x / spec.min).ln() / (spec.max / spec.min).ln(),
    }
}

/// Maps normalised `u` (clamped to [0, 1]; NaN → 0.5) to the knob's unit within bounds.
pub fn denormalise(spec: &KnobSpec, u: f64) -> f64 {
    let u = if u.is_nan() { 0.5 } else { u.clamp(0.0, 1.0) };
    let x = match spec.scale {
        Scale::Linear => spec.min + u * (spec.max - spec.min),
        Scale::Log => spec.min * (spec.max / spec.min).powf(u),
    };
    clamp(spec, x)
}

/// Upstream attempts per client request meshtune allows (Linkerd's default retry budget: 20 %
/// extra load). The concurrency budget above bounds outstanding retries; this bounds the ratio.
pub const MAX_RETRY_AMPLIFICATION: f64 = 1.2;

/// Estimated probability that one upstream attempt fails, from a window: with no retries in
/// force it is the share of requests that failed upstream (`upstream_failures`); with `retries`
/// in force it solves `e + e² + … + e^retries = attempts_per_request − 1` (independent
/// attempts), so retries that hide failures still reveal them. Clamped to [0, 1].
pub fn attempt_failure_estimate(
    retries: u32,
    attempts_per_request: f64,
    upstream_failures: f64,
) -> f64 {
    if retries == 0 || !attempts_per_request.is_finite() {
        return upstream_failures.clamp(0.0, 1.0);
    }
    let extra = (attempts_per_request - 1.0).max(0.0);
    if extra == 0.0 {
        return 0.0;
    }
    let sum = |e: f64| (1..=retries).map(|i| e.powi(i as i32)).sum::<f64>();
    if extra >= sum(1.0) {
        return 1.0;
    }
    // sum(e) is increasing on [0, 1]: bisect.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..40 {
        let mid = (lo + hi) / 2.0;
        if sum(mid) < extra {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The most retries per request that keep the expected attempts per request within
/// `max_amplification` when each attempt fails with probability `e` (`1 + e + … + e^r`);
/// `None` when any number of retries does (`e ≤ 1 − 1/max_amplification`).
pub fn max_retries_within(e: f64, max_amplification: f64) -> Option<u32> {
    let e = e.clamp(0.0, 1.0);
    if e <= 1.0 - 1.0 / max_amplification {
        return None;
    }
    let (mut r, mut attempts, mut term) = (0u32, 1.0f64, 1.0f64);
    loop {
        term *= e;
        if attempts + term > max_amplification + 1e-12 {
            return Some(r);
        }
        attempts += term;
        r += 1;
    }
}

impl Knobs {
    /// Lowers `retries.attempts` so that, at per-attempt failure probability `e`, the expected
    /// upstream attempts per request stay within [`MAX_RETRY_AMPLIFICATION`]. Returns the value
    /// it replaced, if it lowered it.
    pub fn cap_retries_for_failures(&mut self, e: f64) -> Option<f64> {
        let cap = f64::from(max_retries_within(e, MAX_RETRY_AMPLIFICATION)?);
        let r = self.get(Knob::RetryAttempts);
        (r > cap).then(|| {
            self.set(Knob::RetryAttempts, cap);
            r
        })
    }

    /// Whether the retries in force send more than [`MAX_RETRY_AMPLIFICATION`] upstream
    /// attempts per request at per-attempt failure probability `e`: a change that caps them is
    /// as urgent as missing the SLO (the guardrails' short dwell).
    pub fn retries_amplify(&self, e: f64) -> bool {
        let mut k = *self;
        k.cap_retries_for_failures(e).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_so_attempts_stay_within_the_amplification() {
        // Below 1 - 1/1.2 = 16.7 % failing attempts even endless retries add ≤ 20 %.
        assert_eq!(max_retries_within(0.1, 1.2), None);
        assert_eq!(max_retries_within(0.0, 1.2), None);
        // 18 %: one retry (1.18), not two (1.2124).
        assert_eq!(max_retries_within(0.18, 1.2), Some(1));
        // Half the attempts failing: no retry at all (1.5 > 1.2).
        assert_eq!(max_retries_within(0.5, 1.2), Some(0));
        assert_eq!(max_retries_within(1.0, 1.2), Some(0));
        let mut k = Knobs::istio_defaults();
        k.set(Knob::RetryAttempts, 2.0);
        assert_eq!(k.cap_retries_for_failures(0.5), Some(2.0));
        assert_eq!(k.get(Knob::RetryAttempts), 0.0);
        assert_eq!(k.cap_retries_for_failures(0.5), None, "already within");
        assert!(!k.retries_amplify(0.5));
        k.set(Knob::RetryAttempts, 2.0);
        assert!(
            k.retries_amplify(0.5),
            "Istio's 2 retries at half failing: ×1.75"
        );
        assert!(!k.retries_amplify(0.1));
        k.set(Knob::RetryAttempts, 3.0);
        assert_eq!(k.cap_retries_for_failures(0.05), None);
    }

    #[test]
    fn attempt_failures_are_recovered_from_attempts_per_request() {
        // No retries: the failed share is the estimate.
        assert_eq!(attempt_failure_estimate(0, 1.0, 0.3), 0.3);
        // Two retries at e = 0.4: 1 + 0.4 + 0.16 = 1.56 attempts per request.
        let e = attempt_failure_estimate(2, 1.56, 0.064);
        assert!((e - 0.4).abs() < 1e-6, "{e}");
        assert_eq!(attempt_failure_estimate(2, 1.0, 0.0), 0.0);
        assert_eq!(attempt_failure_estimate(1, 3.0, 1.0), 1.0);
        assert_eq!(attempt_failure_estimate(1, f64::NAN, 0.2), 0.2);
    }

    #[test]
    fn specs_are_indexed_by_knob() {
        for (i, s) in KNOB_SPECS.iter().enumerate() {
            assert_eq!(s.knob as usize, i);
            assert_eq!(Knob::ALL[i], s.knob);
            assert_eq!(Knob::from_name(s.name), Some(s.knob));
            assert!(s.min < s.max, "{}", s.name);
            if s.scale == Scale::Log {
                assert!(s.min > 0.0, "{} log scale needs min > 0", s.name);
            }
        }
    }

    #[test]
    fn normalise_round_trips_within_rounding() {
        for spec in &KNOB_SPECS {
            for u in [0.0, 0.1, 0.37, 0.5, 0.9, 1.0] {
                let x = denormalise(spec, u);
                assert!(x >= spec.min && x <= spec.max, "{} {x}", spec.name);
                let back = denormalise(spec, normalise(spec, x));
                assert_eq!(back, x, "{} u={u}", spec.name);
            }
        }
    }

    #[test]
    fn out_of_range_policy_output_is_clamped() {
        let mut u = [0.5f32; KNOB_COUNT];
        u[0] = 7.0;
        u[1] = -3.0;
        u[2] = f32::NAN;
        let k = Knobs::from_normalised(&u);
        assert_eq!(k.get(Knob::MaxConnections), 65_536.0);
        assert_eq!(k.get(Knob::Http1MaxPendingRequests), 1.0);
        assert!(k.get(Knob::Http2MaxRequests).is_finite());
    }

    #[test]
    fn retry_budget_caps_outstanding_retries() {
        let mut u = [1.0f32; KNOB_COUNT];
        u[Knob::Http2MaxRequests as usize] = 0.0; // 1 request
        let k = Knobs::from_normalised(&u);
        assert_eq!(k.get(Knob::MaxRetries), MIN_RETRY_CONCURRENCY);
        let mut k = Knobs::istio_defaults();
        k.set(Knob::Http2MaxRequests, 100.0);
        k.set(Knob::MaxRetries, 50.0);
        assert_eq!(k.apply_retry_budget(), Some(50.0));
        assert_eq!(k.get(Knob::MaxRetries), 20.0);
        assert_eq!(k.apply_retry_budget(), None, "already within the budget");
    }

    #[test]
    fn zero_meaning_none_normalises_to_the_top() {
        let d = Knobs::istio_defaults().normalised();
        assert_eq!(
            d[Knob::RouteTimeoutMs as usize],
            1.0,
            "no timeout is not 10 ms"
        );
        assert_eq!(d[Knob::PerTryTimeoutMs as usize], 1.0);
        assert_eq!(d[Knob::MaxRequestsPerConnection as usize], 1.0);
        assert_eq!(normalise(Knob::RouteTimeoutMs.spec(), 10.0), 0.0);
        assert_eq!(
            normalise(Knob::RetryAttempts.spec(), 0.0),
            0.0,
            "0 retries is 0"
        );
    }

    #[test]
    fn istio_defaults_clamp_to_bounds() {
        let mut k = Knobs::istio_defaults();
        let changed = k.clamp_to_bounds();
        assert!(changed.contains(&Knob::MaxConnections));
        assert!(changed.contains(&Knob::RouteTimeoutMs));
        assert_eq!(k.get(Knob::RetryAttempts), 2.0);
    }
}
