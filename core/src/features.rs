//! The policy's input: a fixed-order feature vector per destination, and its normalisation.
//!
//! The filter reports raw counters ([`crate::window::WindowStats`]); the controller and the
//! simulator both turn them into these features the same way, so a policy trained in the
//! simulator sees live traffic in the same units.

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

/// Number of features.
pub const FEATURE_COUNT: usize = 14;

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

/// Raw feature values, in [`FEATURE_SPECS`] order and units.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Features(pub [f64; FEATURE_COUNT]);

impl Features {
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
