//! Guardrails between the policy and the mesh (pure, no I/O apart from reading the policy
//! file): hard bounds from the knob schema, per-namespace bounds, hysteresis, a maximum step per
//! decision, a minimum dwell time between pushes, and automatic rollback when the objective
//! worsens after a push (pushed → watching → confirmed | rolled back). In `observe` mode every
//! decision is only a recommendation.
//!
//! Policy file (TOML, or YAML with the same structure; every field optional):
//!
//! ```toml
//! mode = "enforce"            # observe | enforce
//! hysteresis = 0.05           # ignore relative changes below 5 %
//! max_step_factor = 2.0       # log-scale knobs move at most ×2 / ÷2 per decision (a value
//!                             # in force outside the bounds, e.g. Istio's "unlimited", has no
//!                             # step limit: the first push may go anywhere within the bounds)
//! max_linear_step = 0.25      # linear knobs move at most 25 % of their range per decision
//! min_dwell_secs = 30         # per destination, between pushes (at most 2 a minute) …
//! urgent_dwell_secs = 10      # … unless the destination misses its SLO: then this (and a
//!                             # push being watched may be superseded)
//! rollback_threshold = 0.2    # objective (a cost) worse by > 20 % of the baseline …
//! rollback_min_delta = 0.01   # … and by more than this absolute amount …
//! rollback_consecutive = 2    # … in this many consecutive windows …
//! rollback_windows = 5        # … within this many windows after a push → roll back,
//! rollback_max_load_change = 0.25  # unless the offered load (of the window, or of its last
//!                             # 3 s) moved by more than 25 % from the baseline window's: then
//!                             # the push cannot be judged (watch ends)
//! demand_headroom = 2.0       # a healthy destination's request limits stay ≥ 2 × its peak
//!                             # in flight per client (0 turns the floor off)
//! ejection_floor = true       # outlier detection keeps the reach to eject one of a
//!                             # destination's endpoints (false turns the floor off)
//! [hysteresis_per_knob]
//! "retries.attempts" = 0.0
//! [hard_bounds]               # replace the default hard bounds (within the knob schema)
//! "outlierDetection.maxEjectionPercent" = { max = 30 }
//! [namespaces.payments]
//! "tcp.maxConnections" = { min = 10, max = 2000 }
//! "timeout" = { min = 200 }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use foldhash::HashMap;
use meshtune_core::knobs::{Knob, KnobSpec, Knobs, Scale, KNOB_COUNT, KNOB_SPECS};
use serde::{Deserialize, Serialize};

pub const DEFAULT_HYSTERESIS: f64 = 0.05;
pub const DEFAULT_MAX_STEP_FACTOR: f64 = 2.0;
pub const DEFAULT_MAX_LINEAR_STEP: f64 = 0.25;
/// At most two pushes per destination per minute.
pub const DEFAULT_MIN_DWELL: Duration = Duration::from_secs(30);
/// Dwell while the destination misses its SLO: one default sliding window, so the next
/// decision sees only windows measured after the last push.
pub const DEFAULT_URGENT_DWELL: Duration = Duration::from_secs(10);
pub const DEFAULT_ROLLBACK_THRESHOLD: f64 = 0.2;
pub const DEFAULT_ROLLBACK_MIN_DELTA: f64 = 0.01;
pub const DEFAULT_ROLLBACK_CONSECUTIVE: u32 = 2;
pub const DEFAULT_ROLLBACK_WINDOWS: u32 = 5;
/// A watched window whose offered load differs from the baseline's by more than this share
/// says nothing about the push (a load step, not the change, moved the objective).
pub const DEFAULT_ROLLBACK_MAX_LOAD_CHANGE: f64 = 0.25;
/// A healthy destination's request limits are not lowered below this many times its peak
/// requests in flight per client proxy ([`Situation::healthy_demand`]): a destination that
/// meets its SLO and sheds nothing gains nothing from a limit its traffic would hit. Measured
/// need: the shipped models, trained where a handful of requests are in flight, proposed
/// `http2MaxRequests` ≈ 22 for a healthy destination with 75 in flight and shed half to 70 %
/// of its traffic (simulator, `busy_healthy`). 2× leaves room for a burst twice the window's
/// peak and for uneven clients (the figure is an average over client proxies).
pub const DEFAULT_DEMAND_HEADROOM: f64 = 2.0;
/// A window shedding more than this share of its requests is not healthy: its limits already
/// bite, so the floor of [`DEFAULT_DEMAND_HEADROOM`] does not apply.
pub const HEALTHY_MAX_SHED_RATE: f64 = 0.01;

/// Default hard bounds beyond the knob schema's ranges (which stay the model's
/// normalisation): settings whose extreme can take a healthy destination out of service are
/// excluded. Every decision, every rollback target and every namespace bound is kept inside
/// them; a guardrails file may replace them (`[hard_bounds]`, still within the schema).
///
/// | knob | bound | why |
/// | --- | --- | --- |
/// | `outlierDetection.maxEjectionPercent` | ≤ 50 | 100 % lets outlier detection eject every host: one bad deploy or a shared dependency failing makes the whole destination unavailable. At most half the hosts leave at once. |
/// | `outlierDetection.consecutive5xxErrors` | ≥ 3 | 1 or 2 errors eject healthy hosts on a single bad request (a client's malformed request answered 5xx), shrinking capacity under load. |
/// | `timeout` | ≥ 100 ms | a route timeout below the destination's normal latency fails every request (504). |
/// | `retries.perTryTimeout` | ≥ 50 ms | same per attempt: every attempt times out, and retries multiply the load. |
///
/// The load-shedding limits (`tcp.maxConnections`, `http.http1MaxPendingRequests`,
/// `http.http2MaxRequests`, `http.maxRetries`) keep the schema's floor of 1: limiting is their
/// purpose, each is per client Envoy, and the rollback watch undoes a limit that lowers
/// goodput. `http.maxRequestsPerConnection` = 1 only disables connection reuse, `retries.attempts`
/// = 0 only disables retries, and `outlierDetection.baseEjectionTime` ≤ 300 s (schema) with
/// at most half the hosts ejected cannot empty a destination.
pub const DEFAULT_HARD_BOUNDS: [Bound; KNOB_COUNT] = {
    let mut b = [Bound {
        min: None,
        max: None,
    }; KNOB_COUNT];
    b[Knob::MaxEjectionPercent as usize].max = Some(50.0);
    b[Knob::Consecutive5xxErrors as usize].min = Some(3.0);
    b[Knob::RouteTimeoutMs as usize].min = Some(100.0);
    b[Knob::PerTryTimeoutMs as usize].min = Some(50.0);
    b
};

/// Whether decisions are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Compute and report recommendations; never push.
    #[default]
    Observe,
    /// Push decisions that pass the guardrails.
    Enforce,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "observe" => Ok(Mode::Observe),
            "enforce" => Ok(Mode::Enforce),
            other => Err(format!(
                "unknown mode `{other}` (expected observe or enforce)"
            )),
        }
    }
}

/// Optional lower/upper bound for one knob, in the knob's unit.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Guardrail settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Observe (recommend only) or enforce (push).
    pub mode: Mode,
    /// Relative change below which a knob keeps its value in force, per knob.
    pub hysteresis: [f64; KNOB_COUNT],
    /// Log-scale knobs move at most ×/÷ this per decision (> 1).
    pub max_step_factor: f64,
    /// Linear knobs move at most this fraction of their range per decision (0, 1].
    pub max_linear_step: f64,
    /// Minimum time between two pushes to the same destination.
    pub min_dwell: Duration,
    /// Minimum time between pushes while the destination misses its SLO (`urgent`); such a
    /// push may also supersede one still being watched.
    pub urgent_dwell: Duration,
    /// Relative worsening of the objective (a cost) that counts as a regression.
    pub rollback_threshold: f64,
    /// Absolute worsening below which a change is noise, whatever the relative change.
    pub rollback_min_delta: f64,
    /// Consecutive regressed windows that trigger a rollback.
    pub rollback_consecutive: u32,
    /// Windows watched after a push before it is confirmed.
    pub rollback_windows: u32,
    /// Relative change of the offered load that ends a watch without a verdict on the push.
    pub rollback_max_load_change: f64,
    /// Request limits of a healthy destination stay ≥ this × its peak in flight per client
    /// ([`Situation::healthy_demand`]); 0 turns the floor off.
    pub demand_headroom: f64,
    /// `maxEjectionPercent` is not lowered below the share that ejects one of the destination's
    /// endpoints ([`Situation::endpoints`]); false turns the floor off.
    pub ejection_floor: bool,
    /// Per-namespace bounds (intersected with the hard bounds).
    pub namespaces: BTreeMap<String, [Bound; KNOB_COUNT]>,
    /// Hard bounds within the knob schema, for every namespace ([`DEFAULT_HARD_BOUNDS`]).
    pub hard_bounds: [Bound; KNOB_COUNT],
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::default(),
            hysteresis: [DEFAULT_HYSTERESIS; KNOB_COUNT],
            max_step_factor: DEFAULT_MAX_STEP_FACTOR,
            max_linear_step: DEFAULT_MAX_LINEAR_STEP,
            min_dwell: DEFAULT_MIN_DWELL,
            urgent_dwell: DEFAULT_URGENT_DWELL,
            rollback_threshold: DEFAULT_ROLLBACK_THRESHOLD,
            rollback_min_delta: DEFAULT_ROLLBACK_MIN_DELTA,
            rollback_consecutive: DEFAULT_ROLLBACK_CONSECUTIVE,
            rollback_windows: DEFAULT_ROLLBACK_WINDOWS,
            rollback_max_load_change: DEFAULT_ROLLBACK_MAX_LOAD_CHANGE,
            demand_headroom: DEFAULT_DEMAND_HEADROOM,
            ejection_floor: true,
            namespaces: BTreeMap::new(),
            hard_bounds: DEFAULT_HARD_BOUNDS,
        }
    }
}

/// Why a guardrail policy file was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GuardrailError {
    #[error("{origin}: cannot read: {reason}")]
    Read { origin: String, reason: String },
    #[error("{origin}: parse error: {reason}")]
    Parse { origin: String, reason: String },
    #[error("{origin}: unknown knob name(s) {names:?} in {section}; known knobs: {known}")]
    UnknownKnob {
        origin: String,
        section: String,
        names: Vec<String>,
        known: String,
    },
    #[error("{origin}: {field}: {reason}")]
    Invalid {
        origin: String,
        field: String,
        reason: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    mode: Option<Mode>,
    hysteresis: Option<f64>,
    #[serde(default)]
    hysteresis_per_knob: BTreeMap<String, f64>,
    max_step_factor: Option<f64>,
    max_linear_step: Option<f64>,
    min_dwell_secs: Option<f64>,
    urgent_dwell_secs: Option<f64>,
    rollback_threshold: Option<f64>,
    rollback_min_delta: Option<f64>,
    rollback_consecutive: Option<u32>,
    rollback_windows: Option<u32>,
    rollback_max_load_change: Option<f64>,
    demand_headroom: Option<f64>,
    ejection_floor: Option<bool>,
    #[serde(default)]
    namespaces: BTreeMap<String, BTreeMap<String, Bound>>,
    hard_bounds: Option<BTreeMap<String, Bound>>,
}

fn knob_map<V: Copy>(
    origin: &str,
    section: &str,
    map: &BTreeMap<String, V>,
) -> Result<Vec<(Knob, V)>, GuardrailError> {
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| Knob::from_name(k).is_none())
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(GuardrailError::UnknownKnob {
            origin: origin.into(),
            section: section.into(),
            names: unknown,
            known: meshtune_core::knobs::KNOB_NAMES.join(", "),
        });
    }
    Ok(map
        .iter()
        .filter_map(|(k, v)| Knob::from_name(k).map(|knob| (knob, *v)))
        .collect())
}

impl Config {
    /// Parses a TOML policy file's text.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, GuardrailError> {
        let file: File = toml::from_str(text).map_err(|e| GuardrailError::Parse {
            origin: origin.into(),
            reason: e.to_string(),
        })?;
        Config::from_file(file, origin)
    }

    /// Parses a YAML policy file's text.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Config, GuardrailError> {
        let file: File = serde_yaml::from_str(text).map_err(|e| GuardrailError::Parse {
            origin: origin.into(),
            reason: e.to_string(),
        })?;
        Config::from_file(file, origin)
    }

    /// Reads a policy file: YAML for `.yaml`/`.yml`, TOML otherwise.
    pub fn load(path: &Path) -> Result<Config, GuardrailError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| GuardrailError::Read {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Config::from_yaml_str(&text, &origin),
            _ => Config::from_toml_str(&text, &origin),
        }
    }

    fn from_file(f: File, origin: &str) -> Result<Config, GuardrailError> {
        let invalid = |field: &str, reason: String| GuardrailError::Invalid {
            origin: origin.into(),
            field: field.into(),
            reason,
        };
        let mut c = Config::default();
        if let Some(m) = f.mode {
            c.mode = m;
        }
        let fraction = |field: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(invalid(field, format!("{v} must be a finite number ≥ 0")))
            }
        };
        if let Some(h) = f.hysteresis {
            c.hysteresis = [fraction("hysteresis", h)?; KNOB_COUNT];
        }
        for (knob, h) in knob_map(origin, "hysteresis_per_knob", &f.hysteresis_per_knob)? {
            c.hysteresis[knob as usize] =
                fraction(&format!("hysteresis_per_knob.{}", knob.name()), h)?;
        }
        if let Some(v) = f.max_step_factor {
            if !(v.is_finite() && v > 1.0) {
                return Err(invalid("max_step_factor", format!("{v} must be > 1")));
            }
            c.max_step_factor = v;
        }
        if let Some(v) = f.max_linear_step {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return Err(invalid("max_linear_step", format!("{v} must be in (0, 1]")));
            }
            c.max_linear_step = v;
        }
        if let Some(v) = f.min_dwell_secs {
            c.min_dwell = Duration::try_from_secs_f64(fraction("min_dwell_secs", v)?)
                .map_err(|e| invalid("min_dwell_secs", e.to_string()))?;
        }
        if let Some(v) = f.urgent_dwell_secs {
            c.urgent_dwell = Duration::try_from_secs_f64(fraction("urgent_dwell_secs", v)?)
                .map_err(|e| invalid("urgent_dwell_secs", e.to_string()))?;
        }
        if let Some(v) = f.rollback_threshold {
            c.rollback_threshold = fraction("rollback_threshold", v)?;
        }
        if let Some(v) = f.rollback_min_delta {
            c.rollback_min_delta = fraction("rollback_min_delta", v)?;
        }
        if let Some(v) = f.rollback_consecutive {
            if v == 0 {
                return Err(invalid("rollback_consecutive", "must be ≥ 1".into()));
            }
            c.rollback_consecutive = v;
        }
        if let Some(v) = f.rollback_max_load_change {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(
                    "rollback_max_load_change",
                    format!("{v} must be > 0"),
                ));
            }
            c.rollback_max_load_change = v;
        }
        if let Some(v) = f.rollback_windows {
            c.rollback_windows = v;
        }
        if let Some(v) = f.demand_headroom {
            c.demand_headroom = fraction("demand_headroom", v)?;
        }
        if let Some(v) = f.ejection_floor {
            c.ejection_floor = v;
        }
        let check = |section: &str, knobs: &BTreeMap<String, Bound>| {
            let mut bounds = [Bound::default(); KNOB_COUNT];
            for (knob, b) in knob_map(origin, section, knobs)? {
                let field = format!("{section}.\"{}\"", knob.name());
                for v in [b.min, b.max].into_iter().flatten() {
                    if !v.is_finite() {
                        return Err(invalid(&field, format!("{v} is not a finite number")));
                    }
                }
                if let (Some(lo), Some(hi)) = (b.min, b.max) {
                    if lo > hi {
                        return Err(invalid(&field, format!("min {lo} > max {hi}")));
                    }
                }
                bounds[knob as usize] = b;
            }
            Ok::<_, GuardrailError>(bounds)
        };
        if let Some(hard) = &f.hard_bounds {
            // Replaces the defaults: knobs not named get the schema's range only.
            c.hard_bounds = check("hard_bounds", hard)?;
        }
        for (ns, knobs) in &f.namespaces {
            c.namespaces
                .insert(ns.clone(), check(&format!("namespaces.{ns}"), knobs)?);
        }
        Ok(c)
    }

    /// Hard `[min, max]` of a knob: the schema's range narrowed by [`Self::hard_bounds`].
    pub fn hard(&self, knob: Knob) -> (f64, f64) {
        let spec = knob.spec();
        let b = self.hard_bounds[knob as usize];
        let lo = b.min.map_or(spec.min, |m| m.clamp(spec.min, spec.max));
        let hi = b.max.map_or(spec.max, |m| m.clamp(spec.min, spec.max));
        (lo, hi.max(lo))
    }

    /// Effective `[min, max]` for a knob in a namespace: the namespace bounds intersected with
    /// the hard bounds (a namespace bound outside the hard bounds is pinned to them).
    pub fn bounds(&self, namespace: &str, knob: Knob) -> (f64, f64) {
        let (hard_lo, hard_hi) = self.hard(knob);
        let (mut lo, mut hi) = (hard_lo, hard_hi);
        if let Some(b) = self.namespaces.get(namespace).map(|b| b[knob as usize]) {
            if let Some(m) = b.min {
                lo = m.clamp(hard_lo, hard_hi);
            }
            if let Some(m) = b.max {
                hi = m.clamp(hard_lo, hard_hi);
            }
        }
        (lo, hi.max(lo))
    }

    /// A rollback target passed through the bounds of `namespace`: each knob clamped into
    /// [`Self::bounds`], except a knob at Istio's default (restoring it means unsetting the
    /// field, which is what the mesh runs without meshtune). Knobs recovered or remembered from
    /// before the bounds narrowed can thus never be pushed back outside them.
    pub fn bound_target(&self, namespace: &str, target: &Knobs) -> Knobs {
        let mut out = *target;
        for spec in &KNOB_SPECS {
            let i = spec.knob as usize;
            let v = target.0[i];
            if v == spec.istio_default {
                continue;
            }
            let (lo, hi) = self.bounds(namespace, spec.knob);
            out.0[i] = if v.is_nan() {
                spec.istio_default
            } else {
                round(spec, v.clamp(lo, hi)).clamp(lo, hi)
            };
        }
        out
    }
}

/// Which guardrail changed a knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustKind {
    /// Outside the knob's hard bounds (or not finite).
    HardBound,
    /// Outside the namespace's bounds.
    NamespaceBound,
    /// Further from the value in force than one step.
    StepLimit,
    /// Too small a change: the value in force is kept.
    Hysteresis,
    /// `http.maxRetries` lowered to the retry budget ([`Knobs::apply_retry_budget`]).
    RetryBudget,
    /// A request limit of a healthy destination raised to its demand floor
    /// ([`Situation::healthy_demand`]).
    DemandFloor,
    /// `maxEjectionPercent` raised to the share that ejects one of the destination's endpoints
    /// ([`Situation::endpoints`]).
    EjectionFloor,
}

/// One guardrail intervention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adjustment {
    pub knob: Knob,
    pub kind: AdjustKind,
    /// Value before this guardrail.
    pub from: f64,
    /// Value after it.
    pub to: f64,
}

fn round(spec: &KnobSpec, x: f64) -> f64 {
    if spec.integer {
        x.round()
    } else {
        x
    }
}

/// Relative size of a change: `|new/old - 1|` for log knobs, `|new - old| / range` for linear.
pub fn relative_change(spec: &KnobSpec, old: f64, new: f64) -> f64 {
    match spec.scale {
        Scale::Log => (new / old.max(spec.min) - 1.0).abs(),
        Scale::Linear => (new - old).abs() / (spec.max - spec.min),
    }
}

/// Whether lowering `knob` reduces the load a destination takes (a smaller connection pool,
/// shorter timeouts, fewer retries). Outlier detection is not: ejecting hosts removes capacity.
pub fn lowering_sheds_load(knob: Knob) -> bool {
    matches!(
        knob,
        Knob::MaxConnections
            | Knob::Http1MaxPendingRequests
            | Knob::Http2MaxRequests
            | Knob::MaxRequestsPerConnection
            | Knob::MaxRetries
            | Knob::RouteTimeoutMs
            | Knob::RetryAttempts
            | Knob::PerTryTimeoutMs
    )
}

/// Whether `knob` caps the requests (or HTTP/1.1 connections, one request each) a client
/// proxy has in flight to the destination: what the demand floor applies to.
pub fn limits_in_flight(knob: Knob) -> bool {
    matches!(knob, Knob::Http2MaxRequests | Knob::MaxConnections)
}

/// What the decision window says about a destination, for the guardrails.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Situation {
    /// It misses its SLO ([`misses_slo`]): short dwell, unstepped braking.
    pub urgent: bool,
    /// Healthy (meets its SLO, sheds at most [`HEALTHY_MAX_SHED_RATE`]): its peak requests in
    /// flight per client proxy. Its request limits ([`limits_in_flight`]) are not lowered
    /// below `demand_headroom` × this. `None`: no floor.
    pub healthy_demand: Option<f64>,
    /// The upstream endpoints its requests reached (0 = not reported). `maxEjectionPercent` is
    /// not lowered below the share that lets Envoy eject one of them ([`ejection_reach`]),
    /// healthy or not. Fewer than 2: no floor.
    pub endpoints: u32,
}

impl Situation {
    /// A destination missing its SLO (`urgent`) or meeting it with no demand known.
    pub fn urgent(urgent: bool) -> Situation {
        Situation {
            urgent,
            healthy_demand: None,
            endpoints: 0,
        }
    }

    /// The situation of a window: `urgent` as judged, `shed_rate` its share of shed requests,
    /// `inflight_max` its peak in flight summed over its `clients` reporting proxies,
    /// `endpoints` the upstream endpoints its requests reached (0 = not reported).
    pub fn of_window(
        urgent: bool,
        shed_rate: f64,
        inflight_max: f64,
        clients: u32,
        endpoints: u32,
    ) -> Situation {
        let healthy = !urgent && shed_rate <= HEALTHY_MAX_SHED_RATE;
        let demand = inflight_max / f64::from(clients.max(1));
        Situation {
            urgent,
            healthy_demand: (healthy && demand.is_finite() && demand > 0.0).then_some(demand),
            endpoints,
        }
    }

    /// The situation, urgent as well when the retries `in_force` send more than
    /// `MAX_RETRY_AMPLIFICATION` upstream attempts per request at the window's
    /// `attempt_failure_rate` ([`Knobs::retries_amplify`]): the retry cap must not wait out
    /// `min_dwell` (a failing dependency behind retries need not miss the SLO).
    pub fn or_amplifying(self, in_force: &Knobs, attempt_failure_rate: f64) -> Situation {
        if in_force.retries_amplify(attempt_failure_rate) {
            Situation {
                urgent: true,
                healthy_demand: None,
                ..self
            }
        } else {
            self
        }
    }
}

/// The smallest `maxEjectionPercent` (whole percent) at which Envoy ejects one of `endpoints`
/// hosts: it ejects only while 100 × (ejected + 1) / hosts ≤ maxEjectionPercent (its
/// `always_eject_one_host` is off by default and Istio never sets it), so Istio's 10 % ejects
/// nothing below 10 hosts.
pub fn ejection_reach(endpoints: u32) -> f64 {
    (100.0 / f64::from(endpoints.max(1))).ceil()
}

/// The pure per-knob pipeline: hard bounds → namespace bounds → step limit (from the value in
/// force, itself pinned into the bounds) → demand and ejection floors → hysteresis. Returns the guarded knobs
/// and every intervention. A destination meeting its SLO, demand unknown ([`guard_with`] with
/// `Situation::default()`).
pub fn guard(
    config: &Config,
    namespace: &str,
    proposed: &Knobs,
    in_force: &Knobs,
) -> (Knobs, Vec<Adjustment>) {
    guard_with(config, namespace, proposed, in_force, Situation::default())
}

/// Share of a window's requests failing for reasons other than shedding above which the
/// destination counts as missing its SLO.
pub const URGENT_ERROR_RATE: f64 = 0.1;

/// Whether a window misses its SLO, so a change is urgent (the guardrails' short dwell and
/// unstepped braking): the requests it served were too slow (p99 above the SLO) or failed
/// (more than [`URGENT_ERROR_RATE`] errors that are not sheds). Shedding alone is not: under
/// overload a destination that sheds the excess and serves the rest within the SLO is where
/// it should be, and pushing again would only churn. An idle window misses nothing.
pub fn misses_slo(
    offered_rps: f64,
    p99_ms: f64,
    error_rate: f64,
    shed_rate: f64,
    slo_ms: f64,
) -> bool {
    offered_rps > 0.0 && (p99_ms > slo_ms || error_rate - shed_rate > URGENT_ERROR_RATE)
}

/// [`guard`] in a `situation`. Missing its SLO (`urgent`), moves that shed load
/// ([`lowering_sheds_load`] knobs going down) are not step limited: like TCP's multiplicative
/// decrease, the brakes act at once while loosening stays gradual (the rollback watch still
/// guards every push). Healthy with a known demand, a request limit ([`limits_in_flight`]) is
/// not lowered below `demand_headroom` × the demand (nor raised by this rule above the value
/// in force): limiting a destination that meets its SLO and sheds nothing only turns served
/// requests into 503s. With its endpoints known, `maxEjectionPercent` is not lowered below
/// [`ejection_reach`] (nor below the value in force), urgent or not: a destination that is
/// healthy because a slow host is ejected looks like one that needs no outlier detection, and
/// one whose window still holds the seconds before the ejection looks like one whose
/// ejections hurt; switching ejection off brings the host back for good (seen on real Envoy,
/// `cal_slow_host`: 12 % timeouts for the rest of the run, 88 % of the oracle). The price, in
/// the simulator: a destination overloaded past its capacity, whose timeouts eject busy
/// hosts, keeps losing one of them (`bimodal_ramp` 98.6 → 95.5 % of the oracle).
pub fn guard_with(
    config: &Config,
    namespace: &str,
    proposed: &Knobs,
    in_force: &Knobs,
    situation: Situation,
) -> (Knobs, Vec<Adjustment>) {
    let urgent = situation.urgent;
    let mut out = *proposed;
    let mut adj = Vec::with_capacity(KNOB_COUNT);
    for spec in &KNOB_SPECS {
        let k = spec.knob;
        let i = k as usize;
        let mut note = |kind, from: f64, to: f64| {
            if from != to && !(from.is_nan() && to.is_nan()) {
                adj.push(Adjustment {
                    knob: k,
                    kind,
                    from,
                    to,
                });
            }
        };
        let raw = proposed.0[i];
        let (hard_lo, hard_hi) = config.hard(k);
        let mut x = if raw.is_nan() {
            in_force.0[i].clamp(hard_lo, hard_hi)
        } else {
            round(spec, raw.clamp(hard_lo, hard_hi)).clamp(hard_lo, hard_hi)
        };
        note(AdjustKind::HardBound, raw, x);
        let (lo, hi) = config.bounds(namespace, k);
        let y = round(spec, x.clamp(lo, hi)).clamp(lo, hi);
        note(AdjustKind::NamespaceBound, x, y);
        x = y;
        let current = if in_force.0[i].is_nan() {
            lo
        } else {
            in_force.0[i].clamp(lo, hi)
        };
        // A value in force outside the bounds is Istio's "unlimited" / "none" (or a value from
        // before the bounds narrowed): no finite base for a relative step, so the first push
        // may go anywhere within the bounds (the rollback watch still guards it).
        let in_bounds = in_force.0[i] >= lo && in_force.0[i] <= hi;
        let (step_lo, step_hi) = match spec.scale {
            Scale::Log => (
                current / config.max_step_factor,
                current * config.max_step_factor,
            ),
            Scale::Linear => {
                let d = config.max_linear_step * (spec.max - spec.min);
                let d = if spec.integer { d.max(1.0) } else { d };
                (current - d, current + d)
            }
        };
        // Round towards the current value so the step limit stays a limit.
        let braking = urgent && lowering_sheds_load(k) && x < current;
        let stepped = if in_bounds && !braking {
            x.clamp(step_lo, step_hi)
        } else {
            x
        };
        let stepped = if stepped == x || !spec.integer {
            stepped
        } else if stepped > current {
            stepped.floor()
        } else {
            stepped.ceil()
        };
        let stepped = stepped.clamp(lo, hi);
        note(AdjustKind::StepLimit, x, stepped);
        x = stepped;
        // The floors only stop lowering: never below the floor or the value in force,
        // whichever is lower.
        let floor = if x >= current {
            None
        } else if limits_in_flight(k) {
            situation
                .healthy_demand
                .filter(|_| !urgent)
                .map(|demand| (AdjustKind::DemandFloor, config.demand_headroom * demand))
        } else if k == Knob::MaxEjectionPercent && config.ejection_floor && situation.endpoints >= 2
        {
            Some((
                AdjustKind::EjectionFloor,
                ejection_reach(situation.endpoints),
            ))
        } else {
            None
        };
        if let Some((kind, floor)) = floor {
            let floored = x.max(floor.ceil().clamp(lo, hi).min(current));
            note(kind, x, floored);
            x = floored;
        }
        // Hysteresis compares with the value in force (pinned into bounds: an out-of-bounds value
        // in force, e.g. Istio's "unlimited", always changes).
        if in_bounds && x != current && relative_change(spec, current, x) < config.hysteresis[i] {
            note(AdjustKind::Hysteresis, x, current);
            x = current;
        }
        out.0[i] = x;
    }
    // After the per-knob steps (they may have moved the request limit): retries stay within
    // the budget, whatever the step limit allowed.
    if let Some(from) = out.apply_retry_budget() {
        adj.push(Adjustment {
            knob: Knob::MaxRetries,
            kind: AdjustKind::RetryBudget,
            from,
            to: out.get(Knob::MaxRetries),
        });
    }
    (out, adj)
}

/// Why nothing is pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// The guarded knobs equal the knobs in force.
    NoChange,
    /// The last push is more recent than the minimum dwell time.
    Dwell { remaining: Duration },
    /// The last push is still being watched for a regression.
    Watching,
    /// The policy's output had a NaN or infinite value: the knobs in force are held.
    InvalidOutput,
}

/// What to do with a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Enforce mode: apply the knobs now, then call [`Guardrails::record_push`].
    Push,
    /// Observe mode: report the knobs as a recommendation only.
    Recommend,
    Hold(HoldReason),
}

/// The guarded decision for one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub knobs: Knobs,
    pub action: Action,
    pub adjustments: Vec<Adjustment>,
    /// Knobs whose guarded value differs from the value in force.
    pub changed: Vec<Knob>,
}

/// Where a destination is in the push/rollback cycle.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Never pushed (or state forgotten).
    Idle,
    /// Pushed; the objective is being compared with the pre-push baseline.
    Watching {
        previous: Knobs,
        baseline: f64,
        /// Offered load (rps) of the baseline window; NaN = unknown (no load check).
        load: f64,
        seen: u32,
        bad_streak: u32,
    },
    /// The push survived its watch windows.
    Confirmed,
    /// The push regressed and was rolled back to `restored`.
    RolledBack { restored: Knobs },
}

/// Result of feeding one window's objective to [`Guardrails::observe`].
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing is being watched.
    Idle,
    /// Still watching (windows seen so far).
    Watching { seen: u32 },
    /// The push is confirmed.
    Confirmed,
    /// The offered load moved too far from the baseline's to judge the push: the watch ends
    /// (the push stays, like a confirmed one).
    LoadChanged,
    /// Regression: apply `restore` (the knobs before the push), then `record_rollback`.
    Rollback {
        restore: Knobs,
        baseline: f64,
        objective: f64,
    },
}

#[derive(Debug, Clone)]
struct DestState {
    last_push: Option<Instant>,
    phase: Phase,
}

/// Per-destination guardrail state machine around [`guard`].
#[derive(Debug, Clone)]
pub struct Guardrails {
    config: Config,
    dests: HashMap<String, DestState>,
}

impl Guardrails {
    pub fn new(config: Config) -> Self {
        Guardrails {
            config,
            dests: HashMap::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The settings, to change between decisions (e.g. namespace bounds from a policy
    /// resource); the per-destination state is kept.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Makes room for `additional` more destinations (no-op when there is room).
    pub fn reserve(&mut self, additional: usize) {
        self.dests.reserve(additional);
    }

    /// The push/rollback phase of a destination.
    pub fn phase(&self, dest: &str) -> Phase {
        self.dests
            .get(dest)
            .map_or(Phase::Idle, |d| d.phase.clone())
    }

    /// Guards a policy proposal for `dest` (in `namespace`) at time `now`, the destination
    /// meeting its SLO ([`Self::decide_with`] with `urgent = false`).
    pub fn decide(
        &self,
        dest: &str,
        namespace: &str,
        now: Instant,
        proposed: &Knobs,
        in_force: &Knobs,
    ) -> Decision {
        self.decide_with(
            dest,
            namespace,
            now,
            proposed,
            in_force,
            Situation::default(),
        )
    }

    /// Guards a policy proposal in a `situation` ([`guard_with`]). Missing its SLO
    /// (`situation.urgent`), the shorter `urgent_dwell` applies, a push being watched may be
    /// superseded, and load-shedding moves are not step limited.
    pub fn decide_with(
        &self,
        dest: &str,
        namespace: &str,
        now: Instant,
        proposed: &Knobs,
        in_force: &Knobs,
        situation: Situation,
    ) -> Decision {
        let urgent = situation.urgent;
        if proposed.0.iter().any(|v| !v.is_finite()) {
            return Decision {
                knobs: *in_force,
                action: Action::Hold(HoldReason::InvalidOutput),
                adjustments: Vec::new(),
                changed: Vec::new(),
            };
        }
        let (knobs, adjustments) =
            guard_with(&self.config, namespace, proposed, in_force, situation);
        let changed: Vec<Knob> = Knob::ALL
            .into_iter()
            .filter(|k| knobs.get(*k) != in_force.get(*k))
            .collect();
        let dwell = if urgent {
            self.config.urgent_dwell.min(self.config.min_dwell)
        } else {
            self.config.min_dwell
        };
        let action = if changed.is_empty() {
            Action::Hold(HoldReason::NoChange)
        } else if self.config.mode == Mode::Observe {
            Action::Recommend
        } else {
            let state = self.dests.get(dest);
            let since = state
                .and_then(|s| s.last_push)
                .map(|t| now.saturating_duration_since(t));
            match (state, since) {
                (_, Some(since)) if since < dwell => Action::Hold(HoldReason::Dwell {
                    remaining: dwell - since,
                }),
                (
                    Some(DestState {
                        phase: Phase::Watching { .. },
                        ..
                    }),
                    _,
                ) if !urgent => Action::Hold(HoldReason::Watching),
                _ => Action::Push,
            }
        };
        Decision {
            knobs,
            action,
            adjustments,
            changed,
        }
    }

    /// Records that `pushed` replaced `previous` at `now`; `baseline` is the objective (a cost:
    /// higher is worse) of the window before the push. Starts watching.
    pub fn record_push(&mut self, dest: &str, now: Instant, previous: Knobs, baseline: f64) {
        self.record_push_at_load(dest, now, previous, baseline, f64::NAN);
    }

    /// [`Self::record_push`] with the baseline window's offered load (rps), so a watched
    /// window at a different load ends the watch instead of blaming the push
    /// ([`Self::observe_at_load`]).
    pub fn record_push_at_load(
        &mut self,
        dest: &str,
        now: Instant,
        previous: Knobs,
        baseline: f64,
        load: f64,
    ) {
        let phase = if self.config.rollback_windows == 0 {
            Phase::Confirmed
        } else {
            Phase::Watching {
                previous,
                baseline,
                load,
                seen: 0,
                bad_streak: 0,
            }
        };
        self.dests.insert(
            dest.to_string(),
            DestState {
                last_push: Some(now),
                phase,
            },
        );
    }

    /// Records a push made before this process took over (restart recovery): the knobs in
    /// force were applied at `at`. The dwell runs from `at`; nothing is watched (the window
    /// before that push is unknown).
    pub fn record_recovered(&mut self, dest: &str, at: Instant) {
        self.dests.insert(
            dest.to_string(),
            DestState {
                last_push: Some(at),
                phase: Phase::Idle,
            },
        );
    }

    /// Records that a rollback to `restored` was applied at `now` (restarts the dwell time).
    pub fn record_rollback(&mut self, dest: &str, now: Instant, restored: Knobs) {
        self.dests.insert(
            dest.to_string(),
            DestState {
                last_push: Some(now),
                phase: Phase::RolledBack { restored },
            },
        );
    }

    /// Feeds the objective (a cost: higher is worse) of one window after a push.
    pub fn observe(&mut self, dest: &str, objective: f64) -> Verdict {
        self.observe_at_load(dest, objective, f64::NAN)
    }

    /// [`Self::observe`] for a window with offered load `load` (rps): when it differs from the
    /// baseline window's by more than `rollback_max_load_change`, the load, not the push,
    /// moved the objective, so the watch ends ([`Verdict::LoadChanged`]).
    pub fn observe_at_load(&mut self, dest: &str, objective: f64, load: f64) -> Verdict {
        self.observe_at_loads(dest, objective, &[load])
    }

    /// [`Self::observe_at_load`] with several measures of the offered load (rps; NaN = not
    /// known): the watch ends when any of them moved by more than `rollback_max_load_change`.
    /// The controller passes its sliding window's load and that of its last seconds: a load
    /// step shows in the window's mean only a tenth a second (10 s window), so two windows into
    /// a step the mean has moved by 6–12 % while the step's queueing already doubled the
    /// objective (seen on real Envoy, `cal_step_overload`: a push rolled back to Istio's
    /// unlimited defaults 1 s after a 2.5× step, 52 % of the offered load served within the SLO
    /// against 79 %).
    pub fn observe_at_loads(&mut self, dest: &str, objective: f64, loads: &[f64]) -> Verdict {
        let max_change = self.config.rollback_max_load_change;
        let Some(state) = self.dests.get_mut(dest) else {
            return Verdict::Idle;
        };
        let Phase::Watching {
            previous,
            baseline,
            load: baseline_load,
            seen,
            bad_streak,
        } = &mut state.phase
        else {
            return Verdict::Idle;
        };
        if baseline_load.is_finite() {
            let moved = |load: &f64| {
                load.is_finite()
                    && (load - *baseline_load).abs() / baseline_load.max(1.0) > max_change
            };
            if loads.iter().any(moved) {
                state.phase = Phase::Confirmed;
                return Verdict::LoadChanged;
            }
        }
        *seen += 1;
        let worse = objective - *baseline;
        let limit =
            (self.config.rollback_threshold * baseline.abs()).max(self.config.rollback_min_delta);
        if !objective.is_finite() || worse > limit {
            *bad_streak += 1;
        } else {
            *bad_streak = 0;
        }
        if *bad_streak >= self.config.rollback_consecutive {
            let verdict = Verdict::Rollback {
                restore: *previous,
                baseline: *baseline,
                objective,
            };
            // Stays watching until the caller confirms the rollback with record_rollback.
            return verdict;
        }
        if *seen >= self.config.rollback_windows {
            state.phase = Phase::Confirmed;
            return Verdict::Confirmed;
        }
        Verdict::Watching { seen: *seen }
    }

    /// Forgets a destination (e.g. it disappeared from the mesh).
    pub fn forget(&mut self, dest: &str) {
        self.dests.remove(dest);
    }

    /// Keeps only the destinations `keep` accepts (pruning after destinations expired).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.dests.retain(|d, _| keep(d));
    }

    /// Destinations with state.
    pub fn len(&self) -> usize {
        self.dests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dests.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mid() -> Knobs {
        // Comfortably inside every knob's bounds.
        let mut k = Knobs::from_normalised(&[0.5; KNOB_COUNT]);
        k.set(Knob::RetryAttempts, 2.0);
        k.set(Knob::MaxEjectionPercent, 50.0);
        k
    }

    fn enforce() -> Config {
        Config {
            mode: Mode::Enforce,
            ..Config::default()
        }
    }

    #[test]
    fn beyond_hard_bounds_is_clamped() {
        let in_force = mid();
        let mut proposed = mid();
        proposed.set(Knob::MaxConnections, 1e12);
        proposed.set(Knob::RetryAttempts, -4.0);
        proposed.set(Knob::RouteTimeoutMs, f64::NAN);
        let cfg = Config {
            max_step_factor: 1e9,
            max_linear_step: 1.0,
            ..enforce()
        };
        let (k, adj) = guard(&cfg, "default", &proposed, &in_force);
        assert_eq!(k.get(Knob::MaxConnections), 65_536.0);
        assert_eq!(k.get(Knob::RetryAttempts), 0.0);
        assert_eq!(
            k.get(Knob::RouteTimeoutMs),
            in_force.get(Knob::RouteTimeoutMs)
        );
        assert!(adj
            .iter()
            .any(|a| a.knob == Knob::MaxConnections && a.kind == AdjustKind::HardBound));
        assert!(adj
            .iter()
            .any(|a| a.knob == Knob::RetryAttempts && a.kind == AdjustKind::HardBound));
    }

    #[test]
    fn namespace_bounds_apply_only_to_their_namespace() {
        let cfg = Config::from_toml_str(
            "[namespaces.payments]\n\"tcp.maxConnections\" = { min = 10, max = 300 }\n",
            "test.toml",
        )
        .unwrap();
        let cfg = Config {
            max_step_factor: 1e9,
            ..cfg
        };
        let mut proposed = mid();
        proposed.set(Knob::MaxConnections, 5_000.0);
        let (k, adj) = guard(&cfg, "payments", &proposed, &mid());
        assert_eq!(k.get(Knob::MaxConnections), 300.0);
        assert_eq!(adj[0].kind, AdjustKind::NamespaceBound);
        let (k, _) = guard(&cfg, "shop", &proposed, &mid());
        assert_eq!(k.get(Knob::MaxConnections), 5_000.0);
    }

    #[test]
    fn unknown_knob_names_are_refused_by_name() {
        let e = Config::from_toml_str(
            "[namespaces.payments]\n\"tcp.maxConnection\" = { max = 3 }\n\"timeout\" = { min = 100 }\n",
            "g.toml",
        )
        .unwrap_err();
        match &e {
            GuardrailError::UnknownKnob {
                names,
                section,
                origin,
                ..
            } => {
                assert_eq!(names, &vec!["tcp.maxConnection".to_string()]);
                assert_eq!(section, "namespaces.payments");
                assert_eq!(origin, "g.toml");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("tcp.maxConnection"));
        let e =
            Config::from_yaml_str("hysteresis_per_knob:\n  retries: 0.1\n", "g.yaml").unwrap_err();
        assert!(matches!(e, GuardrailError::UnknownKnob { .. }), "{e}");
        let e = Config::from_toml_str(
            "[namespaces.a]\n\"timeout\" = { min = 900, max = 100 }\n",
            "g.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("min 900 > max 100"), "{e}");
        let e = Config::from_toml_str("mode = \"yolo\"\n", "g.toml").unwrap_err();
        assert!(matches!(e, GuardrailError::Parse { .. }), "{e}");
    }

    #[test]
    fn yaml_and_toml_agree() {
        let t = Config::from_toml_str(
            "mode = \"enforce\"\nhysteresis = 0.1\nmin_dwell_secs = 45\nurgent_dwell_secs = 7\n[hysteresis_per_knob]\n\"retries.attempts\" = 0.0\n[namespaces.a]\n\"timeout\" = { min = 100 }\n",
            "a.toml",
        )
        .unwrap();
        let y = Config::from_yaml_str(
            "mode: enforce\nhysteresis: 0.1\nmin_dwell_secs: 45\nurgent_dwell_secs: 7\nhysteresis_per_knob:\n  retries.attempts: 0.0\nnamespaces:\n  a:\n    timeout: {min: 100}\n",
            "a.yaml",
        )
        .unwrap();
        assert_eq!(t, y);
        assert_eq!(t.mode, Mode::Enforce);
        assert_eq!(t.min_dwell, Duration::from_secs(45));
        assert_eq!(t.urgent_dwell, Duration::from_secs(7));
        assert_eq!(t.hysteresis[Knob::RetryAttempts as usize], 0.0);
        assert_eq!(t.hysteresis[Knob::MaxConnections as usize], 0.1);
        assert_eq!(t.bounds("a", Knob::RouteTimeoutMs), (100.0, 60_000.0));
    }

    #[test]
    fn hysteresis_suppresses_tiny_changes() {
        let cfg = enforce();
        let in_force = mid();
        let mut proposed = in_force;
        let c = in_force.get(Knob::MaxConnections);
        proposed.set(Knob::MaxConnections, (c * 1.03).round()); // 3 % < 5 %
        proposed.set(
            Knob::RouteTimeoutMs,
            (in_force.get(Knob::RouteTimeoutMs) * 1.5).round(),
        );
        let g = Guardrails::new(cfg);
        let d = g.decide("svc", "default", Instant::now(), &proposed, &in_force);
        assert_eq!(d.knobs.get(Knob::MaxConnections), c);
        assert!(d
            .adjustments
            .iter()
            .any(|a| a.knob == Knob::MaxConnections && a.kind == AdjustKind::Hysteresis));
        assert_eq!(d.changed, vec![Knob::RouteTimeoutMs]);
        assert_eq!(d.action, Action::Push);
        // Only tiny changes: nothing to push.
        let mut tiny = in_force;
        tiny.set(Knob::MaxConnections, (c * 1.01).round());
        let d = g.decide("svc", "default", Instant::now(), &tiny, &in_force);
        assert_eq!(d.action, Action::Hold(HoldReason::NoChange));
    }

    #[test]
    fn step_limit_bounds_each_decision() {
        let cfg = enforce();
        let mut in_force = mid();
        in_force.set(Knob::MaxConnections, 100.0);
        in_force.set(Knob::MaxEjectionPercent, 10.0);
        let mut proposed = in_force;
        proposed.set(Knob::MaxConnections, 10_000.0);
        proposed.set(Knob::MaxEjectionPercent, 45.0); // within the hard bound of 50
        let (k, adj) = guard(&cfg, "default", &proposed, &in_force);
        assert_eq!(k.get(Knob::MaxConnections), 200.0); // ×2
        assert_eq!(k.get(Knob::MaxEjectionPercent), 35.0); // +25 % of 0..100
        assert!(adj.iter().all(|a| a.kind == AdjustKind::StepLimit));
        proposed.set(Knob::MaxConnections, 3.0);
        let (k, _) = guard(&cfg, "default", &proposed, &in_force);
        assert_eq!(k.get(Knob::MaxConnections), 50.0); // ÷2

        // Istio's "unlimited" (or "no timeout") in force: no finite base for a step, so the
        // first push goes straight to the proposal (within the bounds).
        let mut unlimited = in_force;
        unlimited.set(Knob::MaxConnections, meshtune_core::knobs::ISTIO_UNLIMITED);
        unlimited.set(Knob::RouteTimeoutMs, 0.0);
        proposed.set(Knob::RouteTimeoutMs, 250.0);
        let (k, adj) = guard(&cfg, "default", &proposed, &unlimited);
        assert_eq!(k.get(Knob::MaxConnections), 3.0);
        assert_eq!(k.get(Knob::RouteTimeoutMs), 250.0);
        assert!(
            !adj.iter().any(|a| a.kind == AdjustKind::StepLimit
                && matches!(a.knob, Knob::MaxConnections | Knob::RouteTimeoutMs)),
            "{adj:?}"
        );
        // From there on, steps are limited again.
        proposed.set(Knob::MaxConnections, 100.0);
        let (k, _) = guard(&cfg, "default", &proposed, &k);
        assert_eq!(k.get(Knob::MaxConnections), 6.0);
    }

    #[test]
    fn missing_the_slo_brakes_at_once_but_loosens_gradually() {
        let cfg = enforce();
        let mut in_force = mid();
        in_force.set(Knob::Http2MaxRequests, 4_000.0);
        in_force.set(Knob::RouteTimeoutMs, 6_000.0);
        in_force.set(Knob::Consecutive5xxErrors, 40.0);
        let mut proposed = in_force;
        proposed.set(Knob::Http2MaxRequests, 8.0);
        proposed.set(Knob::RouteTimeoutMs, 250.0);
        proposed.set(Knob::Consecutive5xxErrors, 2.0);
        let (calm, _) = guard_with(
            &cfg,
            "default",
            &proposed,
            &in_force,
            Situation::urgent(false),
        );
        assert_eq!(calm.get(Knob::Http2MaxRequests), 2_000.0);
        assert_eq!(calm.get(Knob::RouteTimeoutMs), 3_000.0);
        let (urgent, _) = guard_with(
            &cfg,
            "default",
            &proposed,
            &in_force,
            Situation::urgent(true),
        );
        assert_eq!(urgent.get(Knob::Http2MaxRequests), 8.0);
        assert_eq!(urgent.get(Knob::RouteTimeoutMs), 250.0);
        assert_eq!(
            urgent.get(Knob::Consecutive5xxErrors),
            20.0,
            "ejecting more hosts removes capacity: still stepped"
        );
        let mut looser = in_force;
        looser.set(Knob::Http2MaxRequests, 60_000.0);
        let (k, _) = guard_with(&cfg, "default", &looser, &in_force, Situation::urgent(true));
        assert_eq!(
            k.get(Knob::Http2MaxRequests),
            8_000.0,
            "loosening is stepped"
        );
    }

    #[test]
    fn a_healthy_destination_is_not_limited_below_its_demand() {
        let cfg = enforce();
        // Istio's unlimited in force: no step limit, so only the floor stands in the way.
        let in_force = Knobs::istio_defaults();
        let mut proposed = in_force;
        proposed.set(Knob::Http2MaxRequests, 22.0);
        proposed.set(Knob::MaxConnections, 10.0);
        proposed.set(Knob::Http1MaxPendingRequests, 5.0);
        // 150 in flight at peak over 2 client proxies, SLO met, nothing shed.
        let healthy = Situation::of_window(false, 0.0, 150.0, 2, 0);
        assert_eq!(healthy.healthy_demand, Some(75.0));
        let (k, adj) = guard_with(&cfg, "default", &proposed, &in_force, healthy);
        assert_eq!(k.get(Knob::Http2MaxRequests), 150.0, "2 x 75 per client");
        assert_eq!(k.get(Knob::MaxConnections), 150.0);
        assert_eq!(
            k.get(Knob::Http1MaxPendingRequests),
            5.0,
            "the pending queue is not in-flight demand"
        );
        assert!(adj
            .iter()
            .any(|a| a.kind == AdjustKind::DemandFloor && a.knob == Knob::Http2MaxRequests));
        // Above the floor the proposal stands.
        proposed.set(Knob::Http2MaxRequests, 400.0);
        let (k, _) = guard_with(&cfg, "default", &proposed, &in_force, healthy);
        assert_eq!(k.get(Knob::Http2MaxRequests), 400.0);
        // The floor never raises a limit above the one in force (it only stops lowering).
        let mut tight = in_force;
        tight.set(Knob::Http2MaxRequests, 100.0);
        proposed.set(Knob::Http2MaxRequests, 60.0);
        let (k, _) = guard_with(&cfg, "default", &proposed, &tight, healthy);
        assert_eq!(k.get(Knob::Http2MaxRequests), 100.0);
        // Missing the SLO, shedding, or demand unknown: no floor (braking is the point).
        proposed.set(Knob::Http2MaxRequests, 22.0);
        for s in [
            Situation::of_window(true, 0.0, 150.0, 2, 0),
            Situation::of_window(false, 0.05, 150.0, 2, 0),
            Situation::default(),
        ] {
            let (k, _) = guard_with(&cfg, "default", &proposed, &in_force, s);
            assert_eq!(k.get(Knob::Http2MaxRequests), 22.0, "{s:?}");
        }
        // A headroom of 0 turns it off.
        let off = Config {
            demand_headroom: 0.0,
            ..enforce()
        };
        let (k, _) = guard_with(&off, "default", &proposed, &in_force, healthy);
        assert_eq!(k.get(Knob::Http2MaxRequests), 22.0);
    }

    #[test]
    fn outlier_detection_keeps_the_reach_to_eject_one_endpoint() {
        assert_eq!(ejection_reach(3), 34.0, "100 x 1/3 <= 34");
        assert_eq!(ejection_reach(4), 25.0);
        assert_eq!(ejection_reach(10), 10.0, "Istio's 10 % reaches one of 10");
        let cfg = enforce();
        let mut in_force = Knobs::istio_defaults();
        in_force.set(Knob::MaxEjectionPercent, 50.0);
        let mut proposed = in_force;
        proposed.set(Knob::MaxEjectionPercent, 10.0);
        // Three endpoints, SLO met, nothing shed: the step limit's 25 % would eject none.
        let healthy = Situation::of_window(false, 0.0, 20.0, 2, 3);
        assert_eq!(healthy.endpoints, 3);
        // Healthy, missing the SLO (a window that still holds the slow host's seconds before
        // it was ejected), shedding, or urgent for amplifying retries: the floor holds.
        let mut retrying = in_force;
        retrying.set(Knob::RetryAttempts, 2.0);
        for s in [
            healthy,
            Situation::of_window(true, 0.0, 20.0, 2, 3),
            Situation::of_window(false, 0.05, 20.0, 2, 3),
            healthy.or_amplifying(&retrying, 0.5),
        ] {
            let (k, adj) = guard_with(&cfg, "default", &proposed, &in_force, s);
            assert_eq!(k.get(Knob::MaxEjectionPercent), 34.0, "{s:?}");
            assert!(adj
                .iter()
                .any(|a| a.kind == AdjustKind::EjectionFloor && a.from == 25.0 && a.to == 34.0));
        }
        // Lowering that keeps the reach stands; the floor never raises above the value in force.
        proposed.set(Knob::MaxEjectionPercent, 30.0);
        let (k, _) = guard_with(
            &cfg,
            "default",
            &proposed,
            &in_force,
            Situation::of_window(false, 0.0, 20.0, 2, 4),
        );
        assert_eq!(
            k.get(Knob::MaxEjectionPercent),
            30.0,
            "30 % reaches one of 4"
        );
        proposed.set(Knob::MaxEjectionPercent, 2.0);
        let (k, _) = guard_with(
            &cfg,
            "default",
            &proposed,
            &Knobs::istio_defaults(),
            healthy,
        );
        assert_eq!(
            k.get(Knob::MaxEjectionPercent),
            10.0,
            "Istio's 10 % kept, not raised to 34 %"
        );
        // One endpoint or none reported, or the floor off: no floor.
        proposed.set(Knob::MaxEjectionPercent, 10.0);
        let off = Config {
            ejection_floor: false,
            ..enforce()
        };
        for (c, s) in [
            (&cfg, Situation::of_window(false, 0.0, 20.0, 2, 1)),
            (&cfg, Situation::of_window(false, 0.0, 20.0, 2, 0)),
            (&off, healthy),
        ] {
            let (k, _) = guard_with(c, "default", &proposed, &in_force, s);
            assert_eq!(
                k.get(Knob::MaxEjectionPercent),
                25.0,
                "one step down: {s:?}"
            );
        }
        let c = Config::from_toml_str("ejection_floor = false", "g.toml").unwrap();
        assert!(!c.ejection_floor);
        assert!(Config::default().ejection_floor);
    }

    #[test]
    fn amplifying_retries_in_force_make_a_window_urgent() {
        let healthy = Situation::of_window(false, 0.0, 150.0, 2, 0);
        let mut k = Knobs::istio_defaults();
        k.set(Knob::RetryAttempts, 2.0);
        // Half the attempts failing: 2 retries make ×1.75 attempts.
        assert_eq!(healthy.or_amplifying(&k, 0.5), Situation::urgent(true));
        // The endpoints stay known (the ejection floor holds whatever the urgency).
        let three = Situation::of_window(false, 0.0, 150.0, 2, 3).or_amplifying(&k, 0.5);
        assert_eq!((three.urgent, three.endpoints), (true, 3));
        assert_eq!(healthy.or_amplifying(&k, 0.05), healthy);
        k.set(Knob::RetryAttempts, 0.0);
        assert_eq!(healthy.or_amplifying(&k, 0.5), healthy);
    }

    #[test]
    fn demand_headroom_is_read_and_checked() {
        let c = Config::from_toml_str("demand_headroom = 3.5", "g.toml").unwrap();
        assert_eq!(c.demand_headroom, 3.5);
        let e = Config::from_toml_str("demand_headroom = -1", "g.toml").unwrap_err();
        assert!(e.to_string().contains("demand_headroom"), "{e}");
        assert_eq!(Config::default().demand_headroom, DEFAULT_DEMAND_HEADROOM);
    }

    #[test]
    fn retry_budget_follows_the_guarded_request_limit() {
        let cfg = enforce();
        let mut in_force = mid();
        in_force.set(Knob::Http2MaxRequests, 100.0);
        in_force.set(Knob::MaxRetries, 20.0);
        let mut proposed = in_force;
        proposed.set(Knob::Http2MaxRequests, 10.0); // stepped to 50
        proposed.set(Knob::MaxRetries, 40.0); // stepped to 40, budget 10
        let (k, adj) = guard(&cfg, "default", &proposed, &in_force);
        assert_eq!(k.get(Knob::Http2MaxRequests), 50.0);
        assert_eq!(k.get(Knob::MaxRetries), 10.0);
        assert!(adj
            .iter()
            .any(|a| a.kind == AdjustKind::RetryBudget && a.from == 40.0 && a.to == 10.0));
    }

    #[test]
    fn missing_the_slo_shortens_the_dwell_and_supersedes_watching() {
        let mut g = Guardrails::new(enforce());
        let t0 = Instant::now();
        let in_force = mid();
        let mut proposed = in_force;
        proposed.set(
            Knob::RouteTimeoutMs,
            in_force.get(Knob::RouteTimeoutMs) * 1.5,
        );
        g.record_push("a", t0, in_force, 1.0);
        let t1 = t0 + DEFAULT_URGENT_DWELL / 2;
        assert!(matches!(
            g.decide_with("a", "ns", t1, &proposed, &in_force, Situation::urgent(true))
                .action,
            Action::Hold(HoldReason::Dwell { .. })
        ));
        let t2 = t0 + DEFAULT_URGENT_DWELL;
        assert_eq!(
            g.decide_with(
                "a",
                "ns",
                t2,
                &proposed,
                &in_force,
                Situation::urgent(false)
            )
            .action,
            Action::Hold(HoldReason::Dwell {
                remaining: DEFAULT_MIN_DWELL - DEFAULT_URGENT_DWELL
            }),
            "meeting the SLO: the full dwell"
        );
        assert!(matches!(g.phase("a"), Phase::Watching { .. }));
        assert_eq!(
            g.decide_with("a", "ns", t2, &proposed, &in_force, Situation::urgent(true))
                .action,
            Action::Push,
            "missing the SLO: the short dwell, even while watching"
        );
        let t3 = t0 + DEFAULT_MIN_DWELL;
        assert_eq!(
            g.decide_with(
                "a",
                "ns",
                t3,
                &proposed,
                &in_force,
                Situation::urgent(false)
            )
            .action,
            Action::Hold(HoldReason::Watching)
        );
    }

    #[test]
    fn dwell_time_holds_pushes_per_destination() {
        let mut g = Guardrails::new(Config {
            rollback_windows: 0,
            ..enforce()
        });
        let t0 = Instant::now();
        let in_force = mid();
        let mut proposed = in_force;
        proposed.set(
            Knob::RouteTimeoutMs,
            in_force.get(Knob::RouteTimeoutMs) * 1.5,
        );
        assert_eq!(
            g.decide("a", "ns", t0, &proposed, &in_force).action,
            Action::Push
        );
        g.record_push("a", t0, in_force, 1.0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            g.decide("a", "ns", t1, &proposed, &in_force).action,
            Action::Hold(HoldReason::Dwell {
                remaining: DEFAULT_MIN_DWELL - Duration::from_secs(10)
            })
        );
        // Another destination is not held.
        assert_eq!(
            g.decide("b", "ns", t1, &proposed, &in_force).action,
            Action::Push
        );
        let t2 = t0 + DEFAULT_MIN_DWELL;
        assert_eq!(
            g.decide("a", "ns", t2, &proposed, &in_force).action,
            Action::Push
        );
    }

    #[test]
    fn a_recovered_push_time_starts_the_dwell_without_a_watch() {
        let mut g = Guardrails::new(enforce());
        let t0 = Instant::now();
        let in_force = mid();
        let mut proposed = in_force;
        proposed.set(
            Knob::RouteTimeoutMs,
            in_force.get(Knob::RouteTimeoutMs) * 1.5,
        );
        // Applied 5 s before the restart (t0): held for the rest of the dwell.
        g.record_recovered("a", t0 - Duration::from_secs(5));
        assert_eq!(g.phase("a"), Phase::Idle, "nothing to watch");
        assert_eq!(
            g.decide("a", "ns", t0, &proposed, &in_force).action,
            Action::Hold(HoldReason::Dwell {
                remaining: DEFAULT_MIN_DWELL - Duration::from_secs(5)
            })
        );
        // Applied a dwell or more before: a push is allowed (not held as "watching").
        g.record_recovered("a", t0 - DEFAULT_MIN_DWELL);
        assert_eq!(
            g.decide("a", "ns", t0, &proposed, &in_force).action,
            Action::Push
        );
    }

    #[test]
    fn observe_mode_only_recommends() {
        let g = Guardrails::new(Config::default());
        let in_force = mid();
        let mut proposed = in_force;
        proposed.set(
            Knob::RouteTimeoutMs,
            in_force.get(Knob::RouteTimeoutMs) * 1.5,
        );
        assert_eq!(
            g.decide("a", "ns", Instant::now(), &proposed, &in_force)
                .action,
            Action::Recommend
        );
    }

    #[test]
    fn rollback_fires_on_regression_not_on_noise() {
        let before = mid();
        let cfg = Config {
            rollback_windows: 5,
            rollback_consecutive: 2,
            rollback_threshold: 0.2,
            ..enforce()
        };
        // Noise within the 20 % threshold, and one isolated spike (rollback needs 2 consecutive
        // regressed windows): confirmed after 5 windows.
        let mut g = Guardrails::new(cfg.clone());
        let t0 = Instant::now();
        g.record_push("a", t0, before, 1.0);
        for (i, cost) in [1.15, 0.9, 1.5, 1.19].into_iter().enumerate() {
            assert_eq!(
                g.observe("a", cost),
                Verdict::Watching { seen: i as u32 + 1 }
            );
        }
        assert_eq!(g.observe("a", 1.1), Verdict::Confirmed);
        assert_eq!(g.phase("a"), Phase::Confirmed);
        assert_eq!(g.observe("a", 5.0), Verdict::Idle);

        let mut g = Guardrails::new(cfg.clone());
        g.record_push("a", t0, before, 1.0);
        assert_eq!(g.observe("a", 2.0), Verdict::Watching { seen: 1 });
        assert_eq!(g.observe("a", 1.0), Verdict::Watching { seen: 2 });
        // Forced regression: +60 % twice in a row.
        assert_eq!(g.observe("a", 1.6), Verdict::Watching { seen: 3 });
        assert_eq!(
            g.observe("a", 1.6),
            Verdict::Rollback {
                restore: before,
                baseline: 1.0,
                objective: 1.6
            }
        );
        // While watching, new pushes are held.
        let mut proposed = before;
        proposed.set(Knob::RouteTimeoutMs, before.get(Knob::RouteTimeoutMs) * 1.5);
        let late = t0 + Duration::from_secs(3600);
        assert_eq!(
            g.decide("a", "ns", late, &proposed, &before).action,
            Action::Hold(HoldReason::Watching)
        );
        g.record_rollback("a", late, before);
        assert_eq!(g.phase("a"), Phase::RolledBack { restored: before });
        assert!(matches!(
            g.decide("a", "ns", late, &proposed, &before).action,
            Action::Hold(HoldReason::Dwell { .. })
        ));
    }

    #[test]
    fn a_load_step_ends_the_watch_instead_of_blaming_the_push() {
        let mut g = Guardrails::new(Config {
            rollback_consecutive: 1,
            ..enforce()
        });
        let t0 = Instant::now();
        g.record_push_at_load("a", t0, mid(), 0.1, 150.0);
        assert_eq!(
            g.observe_at_load("a", 0.12, 160.0),
            Verdict::Watching { seen: 1 }
        );
        // The load quadruples and the objective worsens: the load did it.
        assert_eq!(g.observe_at_load("a", 0.9, 600.0), Verdict::LoadChanged);
        assert_eq!(g.phase("a"), Phase::Confirmed);
        // At the same load, the same worsening rolls back.
        g.record_push_at_load("b", t0, mid(), 0.1, 150.0);
        assert!(matches!(
            g.observe_at_load("b", 0.9, 150.0),
            Verdict::Rollback { .. }
        ));
        // Unknown load: no load check.
        g.record_push("c", t0, mid(), 0.1);
        assert!(matches!(
            g.observe_at_load("c", 0.9, 600.0),
            Verdict::Rollback { .. }
        ));
        // A step the window's mean barely shows yet (+12 %) but its last seconds do (2.5×):
        // the load did it. Recent load unknown (NaN): the window's alone decides.
        g.record_push_at_load("d", t0, mid(), 0.1, 400.0);
        assert_eq!(
            g.observe_at_loads("d", 0.9, &[448.0, 1000.0]),
            Verdict::LoadChanged
        );
        g.record_push_at_load("e", t0, mid(), 0.1, 400.0);
        assert!(matches!(
            g.observe_at_loads("e", 0.9, &[448.0, f64::NAN]),
            Verdict::Rollback { .. }
        ));
    }

    #[test]
    fn tiny_absolute_changes_near_zero_are_noise() {
        let mut g = Guardrails::new(Config {
            rollback_consecutive: 1,
            ..enforce()
        });
        g.record_push("a", Instant::now(), mid(), 0.0);
        // +0.005 on a zero baseline is infinite relative change but below rollback_min_delta.
        assert_eq!(g.observe("a", 0.005), Verdict::Watching { seen: 1 });
        assert!(matches!(g.observe("a", 0.5), Verdict::Rollback { .. }));
    }

    #[test]
    fn default_hard_bounds_exclude_destructive_settings() {
        let cfg = Config {
            max_step_factor: 1e9,
            max_linear_step: 1.0,
            ..enforce()
        };
        let mut destructive = mid();
        destructive.set(Knob::MaxEjectionPercent, 100.0);
        destructive.set(Knob::Consecutive5xxErrors, 1.0);
        destructive.set(Knob::RouteTimeoutMs, 10.0);
        destructive.set(Knob::PerTryTimeoutMs, 5.0);
        let (k, adj) = guard(&cfg, "default", &destructive, &Knobs::istio_defaults());
        assert_eq!(k.get(Knob::MaxEjectionPercent), 50.0);
        assert_eq!(k.get(Knob::Consecutive5xxErrors), 3.0);
        assert_eq!(k.get(Knob::RouteTimeoutMs), 100.0);
        assert_eq!(k.get(Knob::PerTryTimeoutMs), 50.0);
        for knob in [
            Knob::MaxEjectionPercent,
            Knob::Consecutive5xxErrors,
            Knob::RouteTimeoutMs,
            Knob::PerTryTimeoutMs,
        ] {
            assert!(
                adj.iter()
                    .any(|a| a.knob == knob && a.kind == AdjustKind::HardBound),
                "{knob:?}: {adj:?}"
            );
        }
        // A namespace bound cannot widen them.
        let text = r#"
            [namespaces.payments]
            "outlierDetection.maxEjectionPercent" = { max = 100 }
        "#;
        let c = Config::from_toml_str(text, "t").unwrap();
        assert_eq!(c.bounds("payments", Knob::MaxEjectionPercent), (0.0, 50.0));
        // A guardrails file may replace them (within the schema).
        let text = r#"
            [hard_bounds]
            "outlierDetection.maxEjectionPercent" = { max = 100 }
            "timeout" = { min = 20 }
        "#;
        let c = Config::from_toml_str(text, "t").unwrap();
        assert_eq!(c.bounds("x", Knob::MaxEjectionPercent), (0.0, 100.0));
        assert_eq!(c.bounds("x", Knob::RouteTimeoutMs), (20.0, 60_000.0));
        assert_eq!(
            c.bounds("x", Knob::Consecutive5xxErrors),
            (1.0, 100.0),
            "replaced, not merged"
        );
        let e = Config::from_toml_str("[hard_bounds]\nnope = { max = 1 }", "t").unwrap_err();
        assert!(matches!(e, GuardrailError::UnknownKnob { .. }), "{e}");
    }

    #[test]
    fn a_non_finite_proposal_holds_the_knobs_in_force() {
        let g = Guardrails::new(enforce());
        let in_force = mid();
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut p = mid();
            p.set(
                Knob::MaxConnections,
                in_force.get(Knob::MaxConnections) * 4.0,
            );
            p.set(Knob::RouteTimeoutMs, bad);
            let d = g.decide("svc", "default", Instant::now(), &p, &in_force);
            assert_eq!(d.action, Action::Hold(HoldReason::InvalidOutput), "{bad}");
            assert_eq!(d.knobs, in_force);
            assert!(d.changed.is_empty());
        }
    }

    #[test]
    fn rollback_targets_pass_through_the_bounds() {
        let text = r#"
            [namespaces.payments]
            "tcp.maxConnections" = { max = 500 }
        "#;
        let c = Config::from_toml_str(text, "t").unwrap();
        let mut target = mid();
        target.set(Knob::MaxEjectionPercent, 100.0);
        target.set(Knob::MaxConnections, 5_000.0);
        target.set(Knob::RouteTimeoutMs, 0.0); // Istio's "no timeout": unset, kept
        let b = c.bound_target("payments", &target);
        assert_eq!(b.get(Knob::MaxEjectionPercent), 50.0);
        assert_eq!(b.get(Knob::MaxConnections), 500.0);
        assert_eq!(b.get(Knob::RouteTimeoutMs), 0.0);
        // Istio's defaults (no object) stay Istio's defaults.
        assert_eq!(
            c.bound_target("payments", &Knobs::istio_defaults()),
            Knobs::istio_defaults()
        );
    }
}
