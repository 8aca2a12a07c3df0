//! The live loop as an RL environment: the agent decides as the controller does, on the last
//! `decision_windows` windows merged, and its proposal passes the shipped guardrails and the
//! dwell before it reaches the simulated mesh; while the dwell holds the knobs, windows run
//! without asking the agent.
//!
//! Why: a model trained one window at a time, every output applied at once, is not the model a
//! cluster runs. Behind a 30 s dwell the push made when the dwell opens decides the next 30 s,
//! so the agent is asked only at those moments (a semi-Markov step) and a step's reward is the
//! sum over every window until it is asked again. Hysteresis and step limits shape what a
//! proposal becomes, and the controller's retry cap applies, as in [`crate::guarded::GuardedPolicy`] (which evaluates models
//! the same way). Not modelled, as there: the rollback watch.

use meshtune_core::env::{Environment, Step};
use meshtune_core::{Features, Knobs, WindowStats, FEATURE_COUNT, KNOB_COUNT};
use meshtune_policy::guardrails::{guard_with, Config, Situation};
use meshtune_sim::episode::MeshEnv;
use meshtune_sim::windows::RecentWindows;

use crate::guarded::{dwell_secs, situation, NAMESPACE};

/// The controller's default sliding window (`--window-secs`), in 1 s windows.
pub const DEFAULT_DECISION_WINDOWS: usize = 10;

/// [`MeshEnv`] run as the live loop runs a model (see the module docs).
#[derive(Debug)]
pub struct LiveEnv {
    inner: MeshEnv,
    config: Config,
    recent: RecentWindows,
    in_force: Knobs,
    /// Simulated seconds since the last push; `None` = never pushed.
    since_push_s: Option<f64>,
    /// Merged features of the last `decision_windows` windows (what the agent sees).
    features: Features,
    /// Their merged statistics (for the retry cap).
    merged: WindowStats,
    done: bool,
    /// Windows run in the current episode and pushes made (for tests and traces).
    windows: u32,
    pushes: u32,
}

impl LiveEnv {
    /// `inner` behind `config`, deciding on the last `decision_windows` windows merged.
    pub fn new(inner: MeshEnv, config: Config, decision_windows: usize) -> Self {
        LiveEnv {
            inner,
            config,
            recent: RecentWindows::new(decision_windows),
            in_force: Knobs::istio_defaults(),
            since_push_s: None,
            features: Features([0.0; FEATURE_COUNT]),
            merged: WindowStats::default(),
            done: false,
            windows: 0,
            pushes: 0,
        }
    }

    /// Windows run and pushes made since the last reset.
    pub fn counts(&self) -> (u32, u32) {
        (self.windows, self.pushes)
    }

    fn window_s(&self) -> f64 {
        self.inner.scenario().window_s.0
    }

    /// The decision window's situation as the controller judges it.
    fn situation(&self) -> Situation {
        let failure_rate = self.merged.attempt_failure_rate(&self.in_force);
        situation(&self.features, &self.in_force, failure_rate)
    }

    /// Whether the controller would decide now: there is traffic and the dwell is over.
    fn may_push(&self) -> bool {
        if self.features.get("rps").unwrap_or(0.0) <= 0.0 {
            return false;
        }
        let dwell = dwell_secs(&self.config, self.situation().urgent);
        match self.since_push_s {
            Some(s) => s + 1e-9 >= dwell,
            None => true,
        }
    }

    /// Runs one window under the knobs in force; returns it as a step (own window's outcomes).
    fn run_window(&mut self) -> Step {
        let (step, stats) = self.inner.step_knobs(&self.in_force);
        self.windows += 1;
        let window_s = self.window_s();
        if let Some(s) = self.since_push_s.as_mut() {
            *s += window_s;
        }
        self.merged = self.recent.push(stats);
        self.features = self.merged.features(&self.inner.context());
        self.done = step.done;
        step
    }

    /// Runs windows until the agent may push again or the episode ends; the reward is summed.
    fn advance(&mut self, mut reward: f64) -> Step {
        loop {
            let step = self.run_window();
            reward += step.reward;
            if self.done || self.may_push() {
                return Step {
                    observation: self.features.normalised(),
                    features: self.features,
                    knobs: self.in_force,
                    outcomes: step.outcomes,
                    reward,
                    done: self.done,
                };
            }
        }
    }
}

impl Environment for LiveEnv {
    fn reset(&mut self, seed: u64) -> [f32; FEATURE_COUNT] {
        self.inner.reset(seed);
        self.recent.clear();
        self.in_force = Knobs::istio_defaults();
        self.since_push_s = None;
        self.done = false;
        self.windows = 0;
        self.pushes = 0;
        // The controller has no report before the first window: Istio defaults serve it and
        // any window without traffic. Their reward is not the agent's (it could not act).
        loop {
            self.run_window();
            if self.done || self.may_push() {
                break;
            }
        }
        self.features.normalised()
    }

    fn step(&mut self, action: &[f32; KNOB_COUNT]) -> Step {
        if self.done {
            // Called past the end (the trainer resets on `done`): nothing left to run.
            return Step {
                observation: self.features.normalised(),
                features: self.features,
                knobs: self.in_force,
                outcomes: Default::default(),
                reward: 0.0,
                done: true,
            };
        }
        let mut proposed = Knobs::from_normalised(action);
        // The controller's retry cap (upstream attempts within 1.2 per request).
        let failure_rate = self.merged.attempt_failure_rate(&self.in_force);
        proposed.cap_retries_for_failures(failure_rate);
        let (knobs, _) = guard_with(
            &self.config,
            NAMESPACE,
            &proposed,
            &self.in_force,
            situation(&self.features, &self.in_force, failure_rate),
        );
        if knobs != self.in_force {
            self.in_force = knobs;
            self.since_push_s = Some(0.0);
            self.pushes += 1;
        }
        self.advance(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_core::knobs::Knob;
    use meshtune_sim::episode::Objective;
    use meshtune_sim::Scenario;

    fn scenario(rps: f64, windows: u32) -> Scenario {
        let text = format!(
            r#"
name = "live_env_test"
seed = 7
window_s = 1.0
windows = {windows}
slo_ms = 250.0
[hosts]
count = 1
concurrency = 8
service = {{ dist = "lognormal", mean_ms = 20.0, sigma = 0.4 }}
[load]
profile = "constant"
rps = {rps}
"#
        );
        Scenario::from_toml_str(&text, "live_env_test").expect("valid scenario")
    }

    /// Proposes an `http2MaxRequests` far from the one in force, every time.
    fn wobbly(env: &LiveEnv) -> [f32; KNOB_COUNT] {
        let mut k = env.in_force;
        let next = if k.get(Knob::Http2MaxRequests) <= 64.0 {
            1024.0
        } else {
            16.0
        };
        k.set(Knob::Http2MaxRequests, next);
        k.normalised()
    }

    #[test]
    fn the_dwell_spaces_pushes_and_every_window_is_rewarded_once() {
        // 200 rps against ~400 rps of capacity: within the SLO, so the 30 s dwell applies.
        let sc = scenario(200.0, 120);
        let mut env = LiveEnv::new(
            MeshEnv::new(sc, Objective::default()),
            Config::default(),
            DEFAULT_DECISION_WINDOWS,
        );
        env.reset(3);
        assert_eq!(
            env.counts(),
            (1, 0),
            "the first window runs on Istio defaults"
        );
        let mut asks = 0;
        let mut total = 0.0;
        loop {
            asks += 1;
            let step = env.step(&wobbly(&env));
            total += step.reward;
            if step.done {
                break;
            }
        }
        let (windows, pushes) = env.counts();
        assert_eq!(windows, 120);
        // A push at window 1, then one every 30 windows: 1, 31, 61, 91.
        assert_eq!(pushes, 4, "asked {asks} times");
        assert_eq!(
            asks, 4,
            "the agent is asked only when the dwell allows a push"
        );
        // Reward is per window: at most 1 per window (the goodput term), over the 119 windows
        // after the first.
        assert!(total > 0.5 * 119.0 && total <= 119.0 + 1e-9, "{total}");
    }

    #[test]
    fn a_proposal_equal_to_what_is_in_force_runs_one_window() {
        let sc = scenario(200.0, 60);
        let mut env = LiveEnv::new(
            MeshEnv::new(sc, Objective::default()),
            Config::default(),
            DEFAULT_DECISION_WINDOWS,
        );
        env.reset(3);
        // A push at window 1 holds until the dwell is over at window 31.
        let s = env.step(&wobbly(&env));
        assert_eq!(env.counts(), (31, 1));
        // Proposing what is in force pushes nothing and runs one window, then asks again.
        let hold = s.knobs.normalised();
        let s2 = env.step(&hold);
        assert_eq!(env.counts(), (32, 1));
        assert_eq!(s2.knobs, s.knobs);
        assert!(!s2.done);
    }
}
