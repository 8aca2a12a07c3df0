//! The live controller's guardrails around a policy, in simulated time, so the simulator
//! evaluates what a destination would see in a cluster, not the raw model output.
//!
//! Each window the wrapped policy proposes knobs, the controller's retry cap lowers its retries
//! to what the window's attempt failure rate allows; [`meshtune_policy::guardrails::guard_with`]
//! applies bounds, hysteresis, step limits (unstepped braking while the window misses its
//! SLO) and the demand floor of a healthy destination, and the dwell holds a change until `min_dwell` (`urgent_dwell` while missing the
//! SLO) has passed since the last push, as `Guardrails::decide_with` does live. A window with
//! no traffic decides nothing (the live controller has no report to decide from). Not
//! modelled: the rollback watch (a push that regresses is not undone here).

use meshtune_core::env::Policy;
use meshtune_core::{Features, Knobs};
use meshtune_policy::guardrails::{guard_with, misses_slo, Config, Situation};

/// Namespace whose bounds apply (the simulator has one; only the global bounds are used).
pub(crate) const NAMESPACE: &str = "default";

/// Whether a window's features miss the SLO as the guardrails judge it (the urgent dwell and
/// unstepped braking apply).
pub fn urgent(features: &Features) -> bool {
    let get = |name: &str| features.get(name).unwrap_or(0.0);
    misses_slo(
        get("rps"),
        get("latency_p99_ms"),
        get("error_5xx_rate"),
        get("overflow_rate"),
        get("slo_target_ms"),
    )
}

/// The window's situation as the controller judges it: urgent when it misses the SLO
/// ([`urgent`]) or the retries `in_force` amplify at the window's `attempt_failure_rate`, and
/// while healthy its peak in flight per client (the guardrails' demand floor); its endpoints
/// (the ejection floor).
pub fn situation(features: &Features, in_force: &Knobs, attempt_failure_rate: f64) -> Situation {
    let get = |name: &str| features.get(name).unwrap_or(0.0);
    Situation::of_window(
        urgent(features),
        get("overflow_rate"),
        get("inflight_max"),
        get("clients").max(1.0) as u32,
        get("endpoints").max(0.0) as u32,
    )
    .or_amplifying(in_force, attempt_failure_rate)
}

/// The dwell in seconds after a push: `urgent_dwell` (never longer than `min_dwell`) while the
/// SLO is missed, `min_dwell` otherwise.
pub fn dwell_secs(config: &Config, urgent: bool) -> f64 {
    if urgent {
        config.urgent_dwell.min(config.min_dwell)
    } else {
        config.min_dwell
    }
    .as_secs_f64()
}

/// A policy behind the guardrails (shipped defaults unless given a config).
pub struct GuardedPolicy<'a> {
    inner: &'a mut dyn Policy,
    name: String,
    config: Config,
    window_s: f64,
    /// Simulated seconds since the last push; `None` = never pushed.
    since_push_s: Option<f64>,
    decided_once: bool,
}

impl<'a> GuardedPolicy<'a> {
    /// `inner` deciding every `window_s` seconds behind `config`; named `<inner>+guardrails`.
    pub fn new(inner: &'a mut dyn Policy, config: Config, window_s: f64) -> Self {
        let name = format!("{}+guardrails", inner.name());
        GuardedPolicy {
            inner,
            name,
            config,
            window_s,
            since_push_s: None,
            decided_once: false,
        }
    }

    /// Starts a new episode (no push yet).
    pub fn reset(&mut self) {
        self.since_push_s = None;
        self.decided_once = false;
    }
}

impl Policy for GuardedPolicy<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide(&mut self, features: &Features, in_force: &Knobs) -> Knobs {
        // The episode's first call comes before any window; every later one after a window.
        if self.decided_once {
            if let Some(s) = self.since_push_s.as_mut() {
                *s += self.window_s;
            }
        } else {
            self.decided_once = true;
        }
        let offered = features.get("rps").unwrap_or(0.0);
        let mut proposed = self.inner.decide(features, in_force);
        // The controller's retry cap (upstream attempts within 1.2 per request).
        let failure_rate = features.attempt_failure_rate(in_force);
        proposed.cap_retries_for_failures(failure_rate);
        if offered <= 0.0 {
            return *in_force;
        }
        let situation = situation(features, in_force, failure_rate);
        let urgent = situation.urgent;
        let (knobs, _) = guard_with(&self.config, NAMESPACE, &proposed, in_force, situation);
        if knobs == *in_force {
            return *in_force;
        }
        let dwell = dwell_secs(&self.config, urgent);
        match self.since_push_s {
            Some(s) if s + 1e-9 < dwell => *in_force,
            _ => {
                self.since_push_s = Some(0.0);
                knobs
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_core::features::Context;
    use meshtune_core::knobs::Knob;
    use meshtune_core::FEATURE_COUNT;

    /// Always proposes an `http2MaxRequests` other than the one in force.
    struct Wobbly;

    impl Policy for Wobbly {
        fn name(&self) -> &str {
            "wobbly"
        }
        fn decide(&mut self, _: &Features, in_force: &Knobs) -> Knobs {
            let mut k = *in_force;
            let next = if in_force.get(Knob::Http2MaxRequests) == 100.0 {
                400.0
            } else {
                100.0
            };
            k.set(Knob::Http2MaxRequests, next);
            k
        }
    }

    fn window(rps: f64, p99_ms: f64) -> Features {
        let mut f = [0.0; FEATURE_COUNT];
        let mut set = |name: &str, v: f64| {
            let i = meshtune_core::FEATURE_NAMES
                .iter()
                .position(|n| *n == name)
                .unwrap();
            f[i] = v;
        };
        set("rps", rps);
        set("latency_p99_ms", p99_ms);
        set("slo_target_ms", Context::initial(250.0).slo_target_ms);
        Features(f)
    }

    fn pushes(p: &mut GuardedPolicy<'_>, windows: usize, f: &Features) -> usize {
        let mut in_force = Knobs::istio_defaults();
        let mut n = 0;
        for _ in 0..windows {
            let k = p.decide(f, &in_force);
            if k != in_force {
                n += 1;
                in_force = k;
            }
        }
        n
    }

    #[test]
    fn dwell_limits_pushes_in_simulated_time() {
        let cfg = Config {
            max_step_factor: 1e9,
            ..Config::default()
        };
        let mut w = Wobbly;
        // 120 one-second windows within the SLO: first push at once, then one per 30 s dwell.
        let mut p = GuardedPolicy::new(&mut w, cfg.clone(), 1.0);
        assert_eq!(pushes(&mut p, 120, &window(100.0, 50.0)), 4);
        // Missing the SLO: the 10 s urgent dwell.
        p.reset();
        assert_eq!(pushes(&mut p, 120, &window(100.0, 900.0)), 12);
        // No traffic: nothing decided.
        let mut p = GuardedPolicy::new(&mut w, cfg, 1.0);
        assert_eq!(pushes(&mut p, 120, &window(0.0, 0.0)), 0);
        assert_eq!(p.name(), "wobbly+guardrails");
    }
}
