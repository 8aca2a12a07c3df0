//! Episodes: the objective (reward), running a policy through a scenario, and the RL
//! environment [`MeshEnv`].

use crate::engine::{Engine, WindowResult};
use crate::scenario::Scenario;
use meshtune_core::env::{Environment, Policy, Step};
use meshtune_core::outcomes::{Outcomes, SloGood};
use meshtune_core::{
    Context, Features, Knobs, LatencyHistogram, WindowStats, FEATURE_COUNT, KNOB_COUNT,
};

pub use meshtune_core::outcomes::{churn, Objective};

/// Outcomes of a simulated window: arrivals are the offered load and the SLO is met per
/// request exactly; the rates are `meshtune_core`'s (the same as the controller's).
pub fn window_outcomes(r: &WindowResult, objective: &Objective, churn: f64) -> Outcomes {
    Outcomes::of_window(
        &r.stats,
        r.arrivals,
        SloGood::Exact(r.slo_good),
        objective,
        churn,
    )
}

/// The destination's state the policy sees next to a simulated window: the knobs that were in
/// force, the scenario's client Envoys and SLO, and the time since the knobs last changed.
pub fn context(scenario: &Scenario, knobs: &Knobs, since_change: &ChangeClock) -> Context {
    Context {
        knobs: *knobs,
        clients: scenario.clients.0,
        secs_since_change: since_change.secs(scenario.window_s.0),
        slo_target_ms: scenario.slo_ms.0,
    }
}

/// Features before any window ran: an empty window with Istio defaults in force.
pub fn initial_features(scenario: &Scenario) -> Features {
    WindowStats::default().features(&context(
        scenario,
        &Knobs::istio_defaults(),
        &ChangeClock::default(),
    ))
}

/// Windows since the knobs in force last changed (`None` = never changed since Istio defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChangeClock {
    windows: Option<u32>,
}

impl ChangeClock {
    /// One window ran with `knobs`, which replaced `previous` at its start.
    pub fn tick(&mut self, previous: &Knobs, knobs: &Knobs) {
        self.windows = if previous != knobs {
            Some(1)
        } else {
            self.windows.map(|w| w.saturating_add(1))
        };
    }

    /// Seconds since the change, `None` if the knobs never changed.
    pub fn secs(&self, window_s: f64) -> Option<f64> {
        self.windows.map(|w| f64::from(w) * window_s)
    }
}

/// Totals of an episode.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Requests answered 2xx within the SLO / requests offered.
    pub slo_goodput_fraction: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Fractions of completed requests.
    pub error_rate: f64,
    pub shed_rate: f64,
    pub timeout_rate: f64,
    pub total_reward: f64,
    /// Completed client requests.
    pub requests: u64,
    /// Offered client requests.
    pub offered: u64,
    /// Retry attempts.
    pub retries: u64,
}

/// One episode's steps, summary, and the latency of every completed request.
#[derive(Debug, Clone)]
pub struct EpisodeResult {
    pub steps: Vec<Step>,
    pub summary: Summary,
    pub latency: LatencyHistogram,
}

/// Runs `policy` through the scenario for `scenario.windows` windows. The policy first decides
/// from empty features with Istio defaults in force, then once after every window. Knobs are
/// used as the policy returns them (not clamped), so Istio's unlimited defaults stay unlimited.
pub fn run_episode(
    scenario: &Scenario,
    policy: &mut dyn Policy,
    seed: u64,
    objective: &Objective,
) -> EpisodeResult {
    run_episode_with(scenario, policy, seed, objective, 1)
}

/// [`run_episode`] where the policy decides, after every window, from the features of the
/// last `decision_windows` windows merged (the live controller's sliding window: it decides
/// every second on the last 10 s). The steps keep each window's own features.
pub fn run_episode_with(
    scenario: &Scenario,
    policy: &mut dyn Policy,
    seed: u64,
    objective: &Objective,
    decision_windows: usize,
) -> EpisodeResult {
    let mut recent = crate::windows::RecentWindows::new(decision_windows);
    let mut knobs = policy.decide(&initial_features(scenario), &Knobs::istio_defaults());
    let mut engine = Engine::new(scenario, seed, &knobs);
    let mut clock = ChangeClock::default();
    let mut in_force = Knobs::istio_defaults();
    let windows = scenario.windows.0 as usize;
    let mut steps = Vec::with_capacity(windows);
    let mut latency = LatencyHistogram::new();
    let mut prev: Option<[f32; KNOB_COUNT]> = None;
    let mut total_reward = 0.0;
    for w in 0..windows {
        if w > 0 {
            engine.set_knobs(&knobs);
        }
        let res = engine.run_window();
        let norm = knobs.normalised();
        let ch = prev.map(|p| churn(&p, &norm)).unwrap_or(0.0);
        prev = Some(norm);
        let outcomes = window_outcomes(&res, objective, ch);
        total_reward += outcomes.reward;
        latency.merge(&res.stats.latency);
        clock.tick(&in_force, &knobs);
        in_force = knobs;
        let ctx = context(scenario, &knobs, &clock);
        let features = res.stats.features(&ctx);
        let decision_features = if decision_windows > 1 {
            recent.push(res.stats.clone()).features(&ctx)
        } else {
            features
        };
        steps.push(Step {
            observation: features.normalised(),
            features,
            knobs,
            outcomes,
            reward: outcomes.reward,
            done: w + 1 == windows,
        });
        if w + 1 < windows {
            knobs = policy.decide(&decision_features, &knobs);
        }
    }
    let t = engine.totals();
    let n = t.completed.max(1) as f64;
    let summary = Summary {
        slo_goodput_fraction: if t.arrivals == 0 {
            1.0
        } else {
            t.slo_good as f64 / t.arrivals as f64
        },
        p50_ms: latency.quantile_us(0.5) / 1000.0,
        p99_ms: latency.quantile_us(0.99) / 1000.0,
        error_rate: (t.completed - t.ok) as f64 / n,
        shed_rate: t.overflow as f64 / n,
        timeout_rate: t.timeouts as f64 / n,
        total_reward,
        requests: t.completed,
        offered: t.arrivals,
        retries: t.retries,
    };
    EpisodeResult {
        steps,
        summary,
        latency,
    }
}

/// Stream of the episode seed the service-time factor is drawn from (apart from the engine's).
const SERVICE_JITTER_STREAM: u64 = 0x5e7_1ce5_ca1e;

/// The RL environment: one step = one window of the scenario under the action's knobs.
///
/// Observation = `Features::normalised()` of the window just run and the destination's state
/// ([`context`]; after `reset`, an empty window with Istio defaults in force). Action = normalised knobs, clamped to [0, 1] and mapped with
/// `Knobs::from_normalised` (always within meshtune's hard bounds). Reward = the
/// [`Objective`]. `done` is set on the scenario's last window; call `reset` to start again.
#[derive(Debug)]
pub struct MeshEnv {
    scenario: Scenario,
    /// Per-episode service-time scale range ([`MeshEnv::with_service_jitter`]); 0 = off.
    service_jitter: f64,
    objective: Objective,
    engine: Engine,
    window: u32,
    prev: Option<[f32; KNOB_COUNT]>,
    in_force: Knobs,
    clock: ChangeClock,
}

impl MeshEnv {
    pub fn new(scenario: Scenario, objective: Objective) -> Self {
        let engine = Engine::new(&scenario, scenario.seed, &Knobs::istio_defaults());
        MeshEnv {
            scenario,
            service_jitter: 0.0,
            objective,
            engine,
            window: 0,
            prev: None,
            in_force: Knobs::istio_defaults(),
            clock: ChangeClock::default(),
        }
    }

    /// Every episode scales the hosts' service times by a factor drawn log-uniformly from
    /// [1/(1+j), 1+j] with the episode's seed (domain randomisation): a real workload's
    /// capacity is not the scenario's to the percent (a loaded machine serves ~20 % slower),
    /// so a policy trained this way prefers settings that hold when capacity is off.
    pub fn with_service_jitter(mut self, j: f64) -> Self {
        self.service_jitter = if j.is_finite() { j.max(0.0) } else { 0.0 };
        self
    }

    /// The service-time factor of the episode started with `seed` (1 without jitter).
    pub fn service_factor(&self, seed: u64) -> f64 {
        if self.service_jitter <= 0.0 {
            return 1.0;
        }
        let u = crate::rng::Rng::new(seed ^ SERVICE_JITTER_STREAM).uniform();
        (1.0 + self.service_jitter).powf(2.0 * u - 1.0)
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    pub fn objective(&self) -> &Objective {
        &self.objective
    }

    /// Windows run since the last reset.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// The destination's state after the last window: knobs in force, clients, SLO and the
    /// time since the knobs changed (what [`MeshEnv::step`]'s features carry).
    pub fn context(&self) -> Context {
        context(&self.scenario, &self.in_force, &self.clock)
    }
}

impl Environment for MeshEnv {
    fn reset(&mut self, seed: u64) -> [f32; FEATURE_COUNT] {
        let factor = self.service_factor(seed);
        self.engine = if factor == 1.0 {
            Engine::new(&self.scenario, seed, &Knobs::istio_defaults())
        } else {
            let mut sc = self.scenario.clone();
            sc.hosts.service = sc.hosts.service.scaled(factor);
            Engine::new(&sc, seed, &Knobs::istio_defaults())
        };
        self.window = 0;
        self.prev = None;
        self.in_force = Knobs::istio_defaults();
        self.clock = ChangeClock::default();
        initial_features(&self.scenario).normalised()
    }

    fn step(&mut self, action: &[f32; KNOB_COUNT]) -> Step {
        self.step_knobs(&Knobs::from_normalised(action)).0
    }
}

impl MeshEnv {
    /// One window under `knobs` as given (not clamped: a wrapper that applies its own rules,
    /// such as the live loop's guardrails, decides them); also returns the window's statistics,
    /// so a wrapper can merge windows as the controller's sliding window does.
    pub fn step_knobs(&mut self, knobs: &Knobs) -> (Step, WindowStats) {
        let knobs = *knobs;
        self.engine.set_knobs(&knobs);
        let res = self.engine.run_window();
        let norm = knobs.normalised();
        let ch = self.prev.map(|p| churn(&p, &norm)).unwrap_or(0.0);
        self.prev = Some(norm);
        let outcomes = window_outcomes(&res, &self.objective, ch);
        self.clock.tick(&self.in_force, &knobs);
        self.in_force = knobs;
        let features = res
            .stats
            .features(&context(&self.scenario, &knobs, &self.clock));
        self.window += 1;
        let step = Step {
            observation: features.normalised(),
            features,
            knobs,
            outcomes,
            reward: outcomes.reward,
            done: self.window >= self.scenario.windows.0,
        };
        (step, res.stats)
    }
}
