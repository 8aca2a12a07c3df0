//! Evaluation: baselines (Istio defaults, best static knobs by grid search = oracle,
//! hand-tuned, gradient controller) and ONNX models on the train and held-out scenarios.
//! One table (per scenario + mean, splits reported separately) and plots.

use crate::guarded::GuardedPolicy;
use crate::live_env::LiveEnv;
use crate::plots::{latency_cdf, write_chart, Chart, PlotError, Series};
use crate::ppo::NamedEnv;
use crate::trace::{read_updates, TraceError};
use indicatif::{ProgressBar, ProgressStyle};
use meshtune_core::env::Policy;
use meshtune_core::knobs::{Knob, KNOB_NAMES};
use meshtune_core::{Features, Knobs, LatencyHistogram, KNOB_COUNT};
use meshtune_policy::guardrails::{misses_slo, Config as GuardrailConfig};
use meshtune_policy::{ModelError, OnnxPolicy};
use meshtune_sim::scenario::{load_dir, Scenario, ScenarioError};
use meshtune_sim::{
    oracle_grid_search, run_episode_with, scenarios_dir, EpisodeResult, GradientController,
    IstioDefaults, KnobGrid, MeshEnv, Objective, StaticPolicy,
};
use std::path::{Path, PathBuf};

/// Why evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("scenarios: {0}")]
    Scenario(#[from] ScenarioError),
    #[error("no train scenarios in {0}")]
    NoScenarios(PathBuf),
    #[error("model {name}: {source}")]
    Model {
        name: String,
        #[source]
        source: Box<ModelError>,
    },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// The train and held-out scenarios.
#[derive(Debug, Clone)]
pub struct ScenarioSet {
    pub root: PathBuf,
    pub train: Vec<Scenario>,
    pub heldout: Vec<Scenario>,
}

impl ScenarioSet {
    /// Loads `<root>/train` and `<root>/heldout` (root defaults to the sim's bundled set).
    pub fn load(root: Option<&Path>) -> Result<Self, EvalError> {
        let root = root.map(Path::to_path_buf).unwrap_or_else(scenarios_dir);
        let train = load_dir(&root.join("train"))?;
        if train.is_empty() {
            return Err(EvalError::NoScenarios(root.join("train")));
        }
        let heldout_dir = root.join("heldout");
        let heldout = if heldout_dir.is_dir() {
            load_dir(&heldout_dir)?
        } else {
            vec![]
        };
        Ok(ScenarioSet {
            root,
            train,
            heldout,
        })
    }

    pub fn train_envs(&self) -> Vec<NamedEnv> {
        self.train_envs_with(None, 0.0)
    }

    pub fn heldout_envs(&self) -> Vec<NamedEnv> {
        self.heldout_envs_with(None, 0.0)
    }

    /// [`Self::train_envs`], or with `Some(secs)` each run as the live loop runs a model
    /// ([`LiveEnv`]: deciding on the last `secs` merged, behind the shipped guardrails).
    /// With `service_jitter` > 0 each episode's service times are scaled by a seeded factor
    /// ([`MeshEnv::with_service_jitter`]).
    pub fn train_envs_with(
        &self,
        live_window_secs: Option<f64>,
        service_jitter: f64,
    ) -> Vec<NamedEnv> {
        Self::envs_with(&self.train, live_window_secs, service_jitter)
    }

    /// [`Self::heldout_envs`], optionally in the live loop (see [`Self::train_envs_with`]).
    pub fn heldout_envs_with(
        &self,
        live_window_secs: Option<f64>,
        service_jitter: f64,
    ) -> Vec<NamedEnv> {
        Self::envs_with(&self.heldout, live_window_secs, service_jitter)
    }

    fn envs_with(
        list: &[Scenario],
        live_window_secs: Option<f64>,
        service_jitter: f64,
    ) -> Vec<NamedEnv> {
        list.iter()
            .map(|s| {
                let mesh = MeshEnv::new(s.clone(), Objective::default())
                    .with_service_jitter(service_jitter);
                let env: Box<dyn meshtune_core::env::Environment> = match live_window_secs {
                    Some(secs) => {
                        let windows = (secs / s.window_s.0).round().max(1.0) as usize;
                        Box::new(LiveEnv::new(mesh, GuardrailConfig::default(), windows))
                    }
                    None => Box::new(mesh),
                };
                NamedEnv {
                    name: s.name.clone(),
                    env,
                }
            })
            .collect()
    }
}

/// An ONNX policy file in the controller's runtime ([`OnnxPolicy`]: validated as the controller
/// validates a model before serving it), under the name given on the command line (`default`
/// and `ppo-v1` may be the same file).
#[derive(Debug)]
pub struct OnnxFilePolicy {
    name: String,
    policy: OnnxPolicy,
}

impl OnnxFilePolicy {
    /// Reads and validates `path` (contract, signature, smoke test).
    pub fn load(name: &str, path: &Path) -> Result<Self, EvalError> {
        let policy = meshtune_policy::validate_path(path).map_err(|source| EvalError::Model {
            name: name.to_string(),
            source: Box::new(source),
        })?;
        Ok(OnnxFilePolicy {
            name: name.to_string(),
            policy,
        })
    }
}

impl Policy for OnnxFilePolicy {
    fn name(&self) -> &str {
        &self.name
    }

    /// The controller's decision: batch-of-one inference; knobs in force kept on a failure.
    fn decide(&mut self, features: &Features, in_force: &Knobs) -> Knobs {
        self.policy.decide(features, in_force)
    }
}

/// Which static grid the oracle searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OracleGrid {
    /// `KnobGrid::oracle_default()` (288 configurations).
    Default,
    /// `KnobGrid::small()` (24 configurations).
    Small,
}

/// Evaluation options.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Episode seeds per scenario (0..seeds, offset).
    pub seeds: u64,
    /// The oracle's grid (best static knobs per scenario).
    pub oracle_grid: OracleGrid,
    pub out_dir: PathBuf,
    /// PPO run folder with `updates.csv`.
    pub ppo_run: Option<PathBuf>,
    /// Also run every model as the live controller runs it (`<name>+guardrails` rows): behind
    /// the shipped guardrails, deciding after every window on the last
    /// `decision_window_s` seconds.
    pub guardrails: bool,
    /// The live controller's sliding window (its `--window-secs`, default 10 s).
    pub decision_window_s: f64,
    pub progress: bool,
}

/// Seeds used for evaluation episodes are `EVAL_SEED_BASE + i` (training uses random seeds).
pub const EVAL_SEED_BASE: u64 = 900_000;

/// One (scenario, policy) result, averaged over seeds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalRow {
    pub split: String,
    pub scenario: String,
    pub policy: String,
    pub slo_goodput_fraction: f64,
    /// SLO goodput fraction relative to the oracle's on the same scenario and seeds, in %.
    pub pct_of_oracle: f64,
    pub p99_ms: f64,
    pub error_rate: f64,
    pub shed_rate: f64,
    pub total_reward: f64,
    /// Largest upstream attempts per client request of any window (1 + the window's retry
    /// rate, capped at 2; windows with at least 10 requests).
    pub max_attempts_per_request: f64,
    /// Knob changes per minute of simulated time.
    pub changes_per_min: f64,
    /// Longest run of consecutive windows missing the SLO (p99 above it or > 10 % errors
    /// other than sheds, `guardrails::misses_slo`), the worst seed.
    pub longest_slo_miss_windows: f64,
}

/// All rows plus per-split means.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    pub rows: Vec<EvalRow>,
    pub means: Vec<EvalRow>,
    pub policies: Vec<String>,
    pub oracle_knobs: Vec<(String, Vec<(String, f64)>)>,
}

impl EvalReport {
    /// The table as markdown: one section per split, rows per scenario × policy, then means.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        for split in ["train", "heldout"] {
            let rows: Vec<&EvalRow> = self.rows.iter().filter(|r| r.split == split).collect();
            if rows.is_empty() {
                continue;
            }
            s.push_str(&format!("\n### {split} scenarios\n\n"));
            s.push_str("| scenario | policy | SLO goodput | % of oracle | p99 ms | error | shed | reward | max attempts/req | changes/min | longest SLO miss |\n");
            s.push_str(
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            );
            let fmt = |r: &EvalRow, label: &str| {
                format!(
                    "| {label} | {} | {:.3} | {:.1} | {:.1} | {:.3} | {:.3} | {:.2} | {:.2} | {:.1} | {:.0} |\n",
                    r.policy,
                    r.slo_goodput_fraction,
                    r.pct_of_oracle,
                    r.p99_ms,
                    r.error_rate,
                    r.shed_rate,
                    r.total_reward,
                    r.max_attempts_per_request,
                    r.changes_per_min,
                    r.longest_slo_miss_windows
                )
            };
            for r in &rows {
                s.push_str(&fmt(r, &r.scenario));
            }
            for m in self.means.iter().filter(|r| r.split == split) {
                s.push_str(&fmt(m, "**mean**"));
            }
        }
        s
    }
}

fn mean_row(split: &str, scenario: &str, policy: &str, rs: &[&EvalRow]) -> EvalRow {
    let n = rs.len().max(1) as f64;
    let avg = |f: fn(&EvalRow) -> f64| rs.iter().map(|r| f(r)).sum::<f64>() / n;
    EvalRow {
        split: split.into(),
        scenario: scenario.into(),
        policy: policy.into(),
        slo_goodput_fraction: avg(|r| r.slo_goodput_fraction),
        pct_of_oracle: avg(|r| r.pct_of_oracle),
        p99_ms: avg(|r| r.p99_ms),
        error_rate: avg(|r| r.error_rate),
        shed_rate: avg(|r| r.shed_rate),
        total_reward: avg(|r| r.total_reward),
        max_attempts_per_request: rs
            .iter()
            .map(|r| r.max_attempts_per_request)
            .fold(0.0, f64::max),
        changes_per_min: avg(|r| r.changes_per_min),
        longest_slo_miss_windows: rs
            .iter()
            .map(|r| r.longest_slo_miss_windows)
            .fold(0.0, f64::max),
    }
}

struct PolicyRun {
    name: String,
    goodput: f64,
    p99: f64,
    err: f64,
    shed: f64,
    reward: f64,
    max_attempts: f64,
    changes_per_min: f64,
    longest_slo_miss: f64,
    latency: LatencyHistogram,
    /// Normalised knobs per window (first seed).
    knobs: Vec<[f32; KNOB_COUNT]>,
}

fn run_policy<P: Policy>(sc: &Scenario, policy: &mut P, seeds: u64, obj: &Objective) -> PolicyRun {
    run_policy_with(sc, policy, seeds, obj, 1, |_| {})
}

/// [`run_policy`] deciding on the last `decision_windows` windows, calling `before_episode`
/// before each seed's episode (to reset state).
fn run_policy_with<P: Policy>(
    sc: &Scenario,
    policy: &mut P,
    seeds: u64,
    obj: &Objective,
    decision_windows: usize,
    mut before_episode: impl FnMut(&mut P),
) -> PolicyRun {
    let mut run = PolicyRun {
        name: policy.name().to_string(),
        goodput: 0.0,
        p99: 0.0,
        err: 0.0,
        shed: 0.0,
        reward: 0.0,
        max_attempts: 0.0,
        changes_per_min: 0.0,
        longest_slo_miss: 0.0,
        latency: LatencyHistogram::new(),
        knobs: vec![],
    };
    for i in 0..seeds {
        before_episode(policy);
        let res: EpisodeResult =
            run_episode_with(sc, policy, EVAL_SEED_BASE + i, obj, decision_windows);
        let s = &res.summary;
        run.goodput += s.slo_goodput_fraction / seeds as f64;
        run.p99 += s.p99_ms / seeds as f64;
        run.err += s.error_rate / seeds as f64;
        run.shed += s.shed_rate / seeds as f64;
        run.reward += s.total_reward / seeds as f64;
        run.latency.merge(&res.latency);
        for st in &res.steps {
            let requests = st.features.get("rps").unwrap_or(0.0) * sc.window_s.0;
            if requests >= 10.0 {
                let attempts = 1.0 + st.features.get("retry_rate").unwrap_or(0.0);
                run.max_attempts = run.max_attempts.max(attempts);
            }
        }
        let mut streak = 0u32;
        for st in &res.steps {
            let f = |name: &str| st.features.get(name).unwrap_or(0.0);
            if misses_slo(
                f("rps"),
                f("latency_p99_ms"),
                f("error_5xx_rate"),
                f("overflow_rate"),
                sc.slo_ms.0,
            ) {
                streak += 1;
                run.longest_slo_miss = run.longest_slo_miss.max(f64::from(streak));
            } else {
                streak = 0;
            }
        }
        let changes = res
            .steps
            .windows(2)
            .filter(|w| w[0].knobs != w[1].knobs)
            .count();
        let minutes = res.steps.len() as f64 * sc.window_s.0 / 60.0;
        run.changes_per_min += changes as f64 / minutes.max(1e-9) / seeds as f64;
        if i == 0 {
            run.knobs = res
                .steps
                .iter()
                .map(|st| crate::supervised::policy_target(&st.knobs))
                .collect();
        }
    }
    run
}

/// Runs every policy on every scenario and writes `table.md`, `eval.json` and plots.
pub fn evaluate(
    set: &ScenarioSet,
    models: &[(String, PathBuf)],
    opts: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| EvalError::Io {
        path: opts.out_dir.clone(),
        message: e.to_string(),
    })?;
    let obj = Objective::default();
    let mut loaded = Vec::new();
    for (name, path) in models {
        loaded.push(OnnxFilePolicy::load(name, path)?);
    }
    let total = (set.train.len() + set.heldout.len()) as u64;
    let pb = if opts.progress {
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template("eval {bar:30} {pos}/{len} scenarios {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut rows = Vec::new();
    let mut oracle_knobs = Vec::new();
    let mut policies: Vec<String> = Vec::new();
    for (split, list) in [("train", &set.train), ("heldout", &set.heldout)] {
        for sc in list.iter() {
            pb.set_message(sc.name.clone());
            let grid = match opts.oracle_grid {
                OracleGrid::Default => KnobGrid::oracle_default(),
                OracleGrid::Small => KnobGrid::small(),
            };
            let (best, _) = oracle_grid_search(sc, EVAL_SEED_BASE, &obj, &grid);
            oracle_knobs.push((
                sc.name.clone(),
                KNOB_NAMES
                    .iter()
                    .zip(best.0)
                    .map(|(n, v)| (n.to_string(), v))
                    .collect(),
            ));
            let mut runs = Vec::new();
            let mut oracle = StaticPolicy {
                name: "oracle".into(),
                knobs: best,
            };
            runs.push(run_policy(sc, &mut oracle, opts.seeds, &obj));
            let mut istio = IstioDefaults;
            runs.push(run_policy(sc, &mut istio, opts.seeds, &obj));
            let mut hand = meshtune_sim::hand_tuned();
            runs.push(run_policy(sc, &mut hand, opts.seeds, &obj));
            let mut grad = GradientController::default();
            runs.push(run_policy(sc, &mut grad, opts.seeds, &obj));
            for m in loaded.iter_mut() {
                runs.push(run_policy(sc, m, opts.seeds, &obj));
            }
            if opts.guardrails {
                for m in loaded.iter_mut() {
                    let mut guarded =
                        GuardedPolicy::new(m, GuardrailConfig::default(), sc.window_s.0);
                    let windows =
                        (opts.decision_window_s / sc.window_s.0).round().max(1.0) as usize;
                    runs.push(run_policy_with(
                        sc,
                        &mut guarded,
                        opts.seeds,
                        &obj,
                        windows,
                        |g| g.reset(),
                    ));
                }
            }
            let oracle_g = runs[0].goodput.max(1e-9);
            for r in &runs {
                if !policies.contains(&r.name) {
                    policies.push(r.name.clone());
                }
                rows.push(EvalRow {
                    split: split.into(),
                    scenario: sc.name.clone(),
                    policy: r.name.clone(),
                    slo_goodput_fraction: r.goodput,
                    pct_of_oracle: 100.0 * r.goodput / oracle_g,
                    p99_ms: r.p99,
                    error_rate: r.err,
                    shed_rate: r.shed,
                    total_reward: r.reward,
                    max_attempts_per_request: r.max_attempts,
                    changes_per_min: r.changes_per_min,
                    longest_slo_miss_windows: r.longest_slo_miss,
                });
            }
            let plots = opts.out_dir.join("plots");
            write_chart(
                &plots,
                &format!("latency-cdf-{split}-{}", sc.name),
                &Chart {
                    title: format!("latency CDF: {} ({split})", sc.name),
                    x_label: "latency (ms, log)".into(),
                    y_label: "fraction of requests".into(),
                    log_x: true,
                    series: runs
                        .iter()
                        .map(|r| Series {
                            name: r.name.clone(),
                            points: latency_cdf(&r.latency),
                        })
                        .collect(),
                },
            )?;
            let key_knobs = [
                Knob::Http1MaxPendingRequests,
                Knob::Http2MaxRequests,
                Knob::RouteTimeoutMs,
            ];
            let mut series = Vec::new();
            for r in runs
                .iter()
                .filter(|r| r.name != "oracle" && r.name != "istio-defaults")
            {
                for k in key_knobs {
                    series.push(Series {
                        name: format!("{} {}", r.name, k.name()),
                        points: r
                            .knobs
                            .iter()
                            .enumerate()
                            .map(|(i, u)| (i as f64, u[k as usize] as f64))
                            .collect(),
                    });
                }
            }
            write_chart(
                &plots,
                &format!("knobs-{split}-{}", sc.name),
                &Chart {
                    title: format!("knob trajectories (normalised): {} ({split})", sc.name),
                    x_label: "window".into(),
                    y_label: "normalised knob".into(),
                    log_x: false,
                    series,
                },
            )?;
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let mut means = Vec::new();
    for split in ["train", "heldout"] {
        for p in &policies {
            let rs: Vec<&EvalRow> = rows
                .iter()
                .filter(|r| r.split == split && &r.policy == p)
                .collect();
            if !rs.is_empty() {
                means.push(mean_row(split, "mean", p, &rs));
            }
        }
    }
    if let Some(run) = &opts.ppo_run {
        let ups = read_updates(&run.join("updates.csv"))?;
        write_chart(
            &opts.out_dir.join("plots"),
            "ppo-reward",
            &Chart {
                title: "PPO training: mean reward per step".into(),
                x_label: "update".into(),
                y_label: "reward / step".into(),
                log_x: false,
                series: vec![Series {
                    name: "rollout mean step reward".into(),
                    points: ups
                        .iter()
                        .map(|u| (u.update as f64, u.mean_step_reward))
                        .collect(),
                }],
            },
        )?;
    }
    let report = EvalReport {
        rows,
        means,
        policies,
        oracle_knobs,
    };
    let md = opts.out_dir.join("table.md");
    std::fs::write(&md, report.markdown()).map_err(|e| EvalError::Io {
        path: md.clone(),
        message: e.to_string(),
    })?;
    let js = opts.out_dir.join("eval.json");
    std::fs::write(
        &js,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| EvalError::Io {
        path: js.clone(),
        message: e.to_string(),
    })?;
    Ok(report)
}
