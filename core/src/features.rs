//! The policy's input: a fixed-order feature vector per destination, and its normalisation.
//!
//! The filter reports raw counters ([`crate::window::WindowStats`]); the controller and the
//! simulator both turn them into these features the same way, so a policy trained in the
//! simulator sees live traffic in the same units.
//!
//! Contract v2 adds the destination's **state** after the 14 window features: the knobs in
//! force (normalised), the number of reporting client proxies, the number of upstream
//! endpoints seen, the time since the knobs last changed and the destination's SLO target
//! ([`Context`]). Without them "fast because limited" and "fast because idle" look the same to
//! the policy, which then limits, relaxes and limits again.

use crate::knobs::{Knobs, KNOB_COUNT};

/// How a raw feature value is squashed into roughly [0, 1] for the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// Already a fraction in [0, 1].
    Rate,
    /// `ln(1 + x) / ln(1 + scale)`: for counts, rates per second and milliseconds.
    Log1p { scale: f64 },
}

/// One feature: its name (as in ONNX metadata and dataset headers), unit and normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureSpec {
    pub name: &'static str,
    pub unit: &'static str,
    pub transform: Transform,
    pub help: &'static str,
}

/// Number of window features (measured over the window; the first features).
pub const WINDOW_FEATURE_COUNT: usize = 14;
/// Number of context features after the knobs in force: clients, endpoints, time since the
/// last change, SLO target.
pub const CONTEXT_FEATURE_COUNT: usize = 4;
/// Number of features: window, knobs in force, context.
pub const FEATURE_COUNT: usize = WINDOW_FEATURE_COUNT + KNOB_COUNT + CONTEXT_FEATURE_COUNT;
/// Index of the first knob-in-force feature (`knob.<name>`, in knob order).
pub const KNOB_FEATURE_OFFSET: usize = WINDOW_FEATURE_COUNT;
/// Index of the first context feature.
pub const CONTEXT_FEATURE_OFFSET: usize = WINDOW_FEATURE_COUNT + KNOB_COUNT;
/// Time since the last change is capped here (and "never changed" reads as this value).
pub const MAX_SECS_SINCE_CHANGE: f64 = 600.0;

/// The feature of one knob in force: `knob.<name>`, normalised as the policy's output (so
/// already in [0, 1]). A test checks the names follow [`crate::knobs::KNOB_SPECS`].
macro_rules! knob_feature {
    ($name:literal) => {
        FeatureSpec {
            name: concat!("knob.", $name),
            unit: "normalised",
            transform: Transform::Rate,
            help: "knob in force, normalised as the policy output",
        }
    };
}

/// Feature schema, in policy input order. Changing it is a contract version bump.
pub const FEATURE_SPECS: [FeatureSpec; FEATURE_COUNT] = [
    FeatureSpec {
        name: "rps",
        unit: "1/s",
        transform: Transform::Log1p { scale: 100_000.0 },
        help: "requests per second",
    },
    FeatureSpec {
        name: "latency_p50_ms",
        unit: "ms",
        transform: Transform::Log1p { scale: 60_000.0 },
        help: "median latency",
    },
    FeatureSpec {
        name: "latency_p90_ms",
        unit: "ms",
        transform: Transform::Log1p { scale: 60_000.0 },
        help: "90th percentile latency",
    },
    FeatureSpec {
        name: "latency_p99_ms",
        unit: "ms",
        transform: Transform::Log1p { scale: 60_000.0 },
        help: "99th percentile latency",
    },
    FeatureSpec {
        name: "latency_mean_ms",
        unit: "ms",
        transform: Transform::Log1p { scale: 60_000.0 },
        help: "mean latency",
    },
    FeatureSpec {
        name: "error_5xx_rate",
        unit: "fraction",
        transform: Transform::Rate,
        help: "5xx responses / requests (includes overflow and timeouts)",
    },
    FeatureSpec {
        name: "error_4xx_rate",
        unit: "fraction",
        transform: Transform::Rate,
        help: "4xx responses / requests",
    },
    FeatureSpec {
        name: "overflow_rate",
        unit: "fraction",
        transform: Transform::Rate,
        help: "UO (circuit breaker overflow) / requests",
    },
    FeatureSpec {
        name: "timeout_rate",
        unit: "fraction",
        transform: Transform::Rate,
        help: "UT (upstream timeout) / requests",
    },
    FeatureSpec {
        name: "connection_failure_rate",
        unit: "fraction",
        transform: Transform::Rate,
        help: "UF+UC+URX / requests",
    },
    FeatureSpec {
        name: "retry_rate",
        unit: "fraction",
        transform: Transform::Rate,
        help: "retries / requests, capped at 1",
    },
    FeatureSpec {
        name: "inflight_avg",
        unit: "requests",
        transform: Transform::Log1p { scale: 10_000.0 },
        help: "time-averaged in-flight requests",
    },
    FeatureSpec {
        name: "inflight_max",
        unit: "requests",
        transform: Transform::Log1p { scale: 10_000.0 },
        help: "peak in-flight requests",
    },
    FeatureSpec {
        name: "http2_fraction",
        unit: "fraction",
        transform: Transform::Rate,
        help: "HTTP/2 (and 3) requests / requests",
    },
    knob_feature!("tcp.maxConnections"),
    knob_feature!("http.http1MaxPendingRequests"),
    knob_feature!("http.http2MaxRequests"),
    knob_feature!("http.maxRequestsPerConnection"),
    knob_feature!("http.maxRetries"),
    knob_feature!("timeout"),
    knob_feature!("retries.attempts"),
    knob_feature!("retries.perTryTimeout"),
    knob_feature!("outlierDetection.consecutive5xxErrors"),
    knob_feature!("outlierDetection.baseEjectionTime"),
    knob_feature!("outlierDetection.maxEjectionPercent"),
    FeatureSpec {
        name: "clients",
        unit: "proxies",
        transform: Transform::Log1p { scale: 1_000.0 },
        help: "client proxies reporting the destination in the window",
    },
    FeatureSpec {
        name: "endpoints",
        unit: "hosts",
        transform: Transform::Log1p { scale: 1_000.0 },
        help: "upstream endpoints seen in the window (0 = not reported)",
    },
    FeatureSpec {
        name: "secs_since_change",
        unit: "s",
        transform: Transform::Log1p {
            scale: MAX_SECS_SINCE_CHANGE,
        },
        help: "seconds since the knobs in force last changed, capped (never changed = cap)",
    },
    FeatureSpec {
        name: "slo_target_ms",
        unit: "ms",
        transform: Transform::Log1p { scale: 60_000.0 },
        help: "the destination's latency SLO target",
    },
];

/// Feature names in order.
pub const FEATURE_NAMES: [&str; FEATURE_COUNT] = {
    let mut names = [""; FEATURE_COUNT];
    let mut i = 0;
    while i < FEATURE_COUNT {
        names[i] = FEATURE_SPECS[i].name;
        i += 1;
    }
    names
};

/// The destination's state next to its window: the rest of the policy input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Context {
    /// Knobs in force while the window was measured (Istio defaults when nothing was set).
    pub knobs: Knobs,
    /// Client proxies (Envoys) reporting the destination in the window.
    pub clients: u32,
    /// Seconds since the knobs in force last changed; `None` = never changed.
    pub secs_since_change: Option<f64>,
    /// The destination's latency SLO target (ms).
    pub slo_target_ms: f64,
}

impl Context {
    /// Istio defaults in force, never changed, one client, the given SLO.
    pub fn initial(slo_target_ms: f64) -> Self {
        Context {
            knobs: Knobs::istio_defaults(),
            clients: 1,
            secs_since_change: None,
            slo_target_ms,
        }
    }

    /// Writes the knob and context features (everything after the window features).
    pub(crate) fn fill(&self, f: &mut [f64; FEATURE_COUNT], endpoints: u32) {
        let knobs = self.knobs.normalised();
        for (i, u) in knobs.iter().enumerate() {
            f[KNOB_FEATURE_OFFSET + i] = f64::from(*u);
        }
        let c = CONTEXT_FEATURE_OFFSET;
        f[c] = f64::from(self.clients);
        f[c + 1] = f64::from(endpoints);
        f[c + 2] = self
            .secs_since_change
            .filter(|s| s.is_finite())
            .map_or(MAX_SECS_SINCE_CHANGE, |s| {
                s.clamp(0.0, MAX_SECS_SINCE_CHANGE)
            });
        f[c + 3] = self.slo_target_ms;
    }
}

/// Raw feature values, in [`FEATURE_SPECS`] order and units.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Features(pub [f64; FEATURE_COUNT]);

impl Features {
    /// Features from raw window values (the first [`WINDOW_FEATURE_COUNT`], in schema order)
    /// and the destination's state; for fixed inputs (smoke tests, `model inspect`).
    pub fn from_parts(
        window: [f64; WINDOW_FEATURE_COUNT],
        context: &Context,
        endpoints: u32,
    ) -> Self {
        let mut f = [0.0; FEATURE_COUNT];
        f[..WINDOW_FEATURE_COUNT].copy_from_slice(&window);
        context.fill(&mut f, endpoints);
        Features(f)
    }

    /// Normalised policy input (f32, roughly [0, 1]; non-finite or negative raw values become 0).
    pub fn normalised(&self) -> [f32; FEATURE_COUNT] {
        let mut out = [0f32; FEATURE_COUNT];
        for (i, spec) in FEATURE_SPECS.iter().enumerate() {
            out[i] = normalise(spec.transform, self.0[i]) as f32;
        }
        out
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        FEATURE_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| self.0[i])
    }

    /// [`crate::WindowStats::attempt_failure_rate`] from a window's features, for callers
    /// that only have those (the simulator's evaluation): features carry no filter-side sheds
    /// (the simulator has none) and the retry rate is capped at 1 retry per request.
    pub fn attempt_failure_rate(&self, in_force: &Knobs) -> f64 {
        let get = |name: &str| self.get(name).unwrap_or(0.0);
        crate::knobs::attempt_failure_estimate(
            in_force
                .get(crate::knobs::Knob::RetryAttempts)
                .round()
                .clamp(0.0, 100.0) as u32,
            1.0 + get("retry_rate"),
            (get("error_5xx_rate") - get("overflow_rate")).max(0.0),
        )
    }
}

/// Normalises one raw value.
pub fn normalise(t: Transform, x: f64) -> f64 {
    let x = if x.is_finite() && x > 0.0 { x } else { 0.0 };
    match t {
        Transform::Rate => x.min(1.0),
        Transform::Log1p { scale } => (x.ln_1p() / scale.ln_1p()).min(1.5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_ordered() {
        let mut seen = std::collections::HashSet::new();
        for n in FEATURE_NAMES {
            assert!(seen.insert(n), "duplicate feature {n}");
        }
        assert_eq!(FEATURE_NAMES[0], "rps");
        assert_eq!(FEATURE_NAMES.len(), FEATURE_COUNT);
    }

    #[test]
    fn knob_features_follow_the_knob_schema() {
        for (i, k) in crate::knobs::KNOB_SPECS.iter().enumerate() {
            assert_eq!(
                FEATURE_NAMES[KNOB_FEATURE_OFFSET + i],
                format!("knob.{}", k.name)
            );
        }
        assert_eq!(FEATURE_NAMES[CONTEXT_FEATURE_OFFSET], "clients");
        assert_eq!(FEATURE_NAMES[FEATURE_COUNT - 1], "slo_target_ms");
    }

    #[test]
    fn context_fills_state_features() {
        let mut knobs = Knobs::istio_defaults();
        knobs.set(crate::knobs::Knob::Http2MaxRequests, 1.0);
        let ctx = Context {
            knobs,
            clients: 3,
            secs_since_change: Some(1e9),
            slo_target_ms: 250.0,
        };
        let mut f = [0.0; FEATURE_COUNT];
        ctx.fill(&mut f, 5);
        let h2 = KNOB_FEATURE_OFFSET + crate::knobs::Knob::Http2MaxRequests as usize;
        assert_eq!(f[h2], 0.0, "the lower bound normalises to 0");
        assert_eq!(f[CONTEXT_FEATURE_OFFSET], 3.0);
        assert_eq!(f[CONTEXT_FEATURE_OFFSET + 1], 5.0);
        assert_eq!(f[CONTEXT_FEATURE_OFFSET + 2], MAX_SECS_SINCE_CHANGE);
        assert_eq!(f[CONTEXT_FEATURE_OFFSET + 3], 250.0);
        let never = Context::initial(100.0);
        never.fill(&mut f, 0);
        assert_eq!(f[CONTEXT_FEATURE_OFFSET + 2], MAX_SECS_SINCE_CHANGE);
        assert_eq!(
            f[h2], 1.0,
            "Istio's unlimited default is the top of the range"
        );
    }

    #[test]
    fn normalisation_is_bounded_and_monotone() {
        let t = Transform::Log1p { scale: 1000.0 };
        assert_eq!(normalise(t, 0.0), 0.0);
        assert!((normalise(t, 1000.0) - 1.0).abs() < 1e-12);
        assert!(normalise(t, 10.0) < normalise(t, 20.0));
        assert_eq!(normalise(t, f64::NAN), 0.0);
        assert_eq!(normalise(t, 1e30), 1.5);
        assert_eq!(normalise(Transform::Rate, 3.0), 1.0);
    }
}
