//! The simulator checked against real Envoy (`cargo xtask bench calibrate`): every scenario of
//! a directory under three static knob settings (Istio defaults, the hand-tuned config, and the
//! simulator's oracle for that scenario), once in `meshtune-sim` and once on real processes
//! ([`crate::realrun`]), side by side with the relative error of the simulator.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use meshtune_core::Knobs;
use meshtune_sim::baselines::{hand_tuned, oracle_grid_search, KnobGrid, StaticPolicy};
use meshtune_sim::episode::{run_episode, Objective, Summary};
use meshtune_sim::scenario::{load_path, Scenario};

use crate::paths::Paths;
use crate::progress::{bar, say};
use crate::realrun::{self, Arm, RunResult};

/// Target: median relative error of the simulator on SLO goodput and on p99.
pub const TARGET_MEDIAN_ERROR: f64 = 0.20;

/// The figures compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// 2xx within the SLO over offered requests.
    pub slo_goodput: f64,
    /// Circuit-breaker overflow over offered requests.
    pub overflow: f64,
}

impl Figures {
    pub fn from_sim(s: &Summary) -> Self {
        Self {
            p50_ms: s.p50_ms,
            p99_ms: s.p99_ms,
            slo_goodput: s.slo_goodput_fraction,
            overflow: s.shed_rate * s.requests as f64 / s.offered.max(1) as f64,
        }
    }
    pub fn from_real(r: &RunResult) -> Self {
        Self {
            p50_ms: r.p50_ms,
            p99_ms: r.total.p99_ms,
            slo_goodput: r.slo_goodput_fraction(),
            overflow: r.overflow_fraction(),
        }
    }
}

/// |sim − real| / real, with `floor` as the smallest denominator (so near-zero figures do
/// not turn tiny absolute differences into huge relative ones).
pub fn relative_error(sim: f64, real: f64, floor: f64) -> f64 {
    (sim - real).abs() / real.abs().max(floor)
}

/// Median (NaN for an empty slice).
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One compared row.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub setting: String,
    pub sim: Figures,
    pub real: Figures,
}

impl Row {
    pub fn goodput_error(&self) -> f64 {
        relative_error(self.sim.slo_goodput, self.real.slo_goodput, 0.01)
    }
    pub fn p99_error(&self) -> f64 {
        relative_error(self.sim.p99_ms, self.real.p99_ms, 1.0)
    }
}

/// The three static settings of a scenario: Istio defaults, hand-tuned, the sim's oracle.
pub fn settings(sc: &Scenario) -> Vec<(String, Knobs)> {
    let (oracle, _) = oracle_grid_search(
        sc,
        sc.seed,
        &Objective::default(),
        &KnobGrid::oracle_default(),
    );
    vec![
        ("istio defaults".into(), Knobs::istio_defaults()),
        ("hand-tuned".into(), hand_tuned().knobs),
        ("sim oracle".into(), oracle),
    ]
}

/// The simulator's figures for a static setting.
pub fn simulate(sc: &Scenario, knobs: &Knobs) -> Figures {
    let mut p = StaticPolicy {
        name: "static".into(),
        knobs: *knobs,
    };
    Figures::from_sim(&run_episode(sc, &mut p, sc.seed, &Objective::default()).summary)
}

/// Markdown table of the rows and the medians.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| scenario | setting | p50 ms sim / real | p99 ms sim / real | p99 err | SLO goodput sim / real | goodput err | overflow sim / real |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.1} / {:.1} | {:.0} / {:.0} | {:.0}% | {:.1}% / {:.1}% | {:.0}% | {:.1}% / {:.1}% |\n",
            r.scenario,
            r.setting,
            r.sim.p50_ms,
            r.real.p50_ms,
            r.sim.p99_ms,
            r.real.p99_ms,
            100.0 * r.p99_error(),
            100.0 * r.sim.slo_goodput,
            100.0 * r.real.slo_goodput,
            100.0 * r.goodput_error(),
            100.0 * r.sim.overflow,
            100.0 * r.real.overflow,
        ));
    }
    let g: Vec<f64> = rows.iter().map(Row::goodput_error).collect();
    let p: Vec<f64> = rows.iter().map(Row::p99_error).collect();
    s.push_str(&format!(
        "\nMedian relative error: SLO goodput {:.1}%, p99 {:.1}% (target ≤ {:.0}%).\n",
        100.0 * median(&g),
        100.0 * median(&p),
        100.0 * TARGET_MEDIAN_ERROR
    ));
    s
}

/// Options.
#[derive(Debug, Clone)]
pub struct CalibrateConfig {
    /// A scenario file or directory (e.g. `meshtune_sim::calibration_dir()`).
    pub scenarios: PathBuf,
    /// Where to write the markdown table (also printed).
    pub out: Option<PathBuf>,
}

/// Runs the calibration and prints the table.
pub fn run(paths: &Paths, cfg: &CalibrateConfig) -> Result<Vec<Row>> {
    let missing = paths.missing(false);
    if !missing.is_empty() {
        bail!("missing prerequisites:\n  {}", missing.join("\n  "));
    }
    let scenarios = load_scenarios(&cfg.scenarios)?;
    let plans: Vec<(Scenario, Vec<(String, Knobs)>)> = scenarios
        .into_iter()
        .map(|sc| {
            let s = settings(&sc);
            (sc, s)
        })
        .collect();
    let windows: u64 = plans
        .iter()
        .map(|(sc, s)| u64::from(sc.windows.0) * s.len() as u64)
        .sum();
    let pb = bar(windows, "windows");
    let mut rows = Vec::new();
    for (sc, settings) in &plans {
        for (name, knobs) in settings {
            pb.set_message(format!("{} / {name}", sc.name));
            let sim = simulate(sc, knobs);
            let real = realrun::run(
                paths,
                sc,
                &Arm::Static {
                    name: name.clone(),
                    knobs: *knobs,
                },
                sc.seed,
                |_| pb.inc(1),
            )?;
            let row = Row {
                scenario: sc.name.clone(),
                setting: name.clone(),
                sim,
                real: Figures::from_real(&real),
            };
            say(&pb, format!(
                "{:<22} {:<15} p99 sim {:>7.0} real {:>7.0} ms  SLO goodput sim {:>5.1}% real {:>5.1}%",
                row.scenario,
                row.setting,
                row.sim.p99_ms,
                row.real.p99_ms,
                100.0 * row.sim.slo_goodput,
                100.0 * row.real.slo_goodput
            ));
            rows.push(row);
        }
    }
    pb.finish_and_clear();
    let t = table(&rows);
    println!("\n{t}");
    if let Some(out) = &cfg.out {
        std::fs::write(out, &t)?;
        println!("table written to {}", out.display());
    }
    Ok(rows)
}

/// Loads a scenario file or directory.
pub fn load_scenarios(p: &Path) -> Result<Vec<Scenario>> {
    Ok(load_path(p)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_uses_the_real_figure_and_a_floor() {
        assert!((relative_error(120.0, 100.0, 1.0) - 0.2).abs() < 1e-12);
        assert!((relative_error(80.0, 100.0, 1.0) - 0.2).abs() < 1e-12);
        // Real 0: the floor is the denominator.
        assert!((relative_error(0.005, 0.0, 0.01) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[f64::NAN, 1.0]), 1.0);
    }

    #[test]
    fn calibration_scenarios_load_and_give_three_settings() {
        let scs = load_scenarios(&meshtune_sim::calibration_dir()).unwrap();
        assert!(scs.len() >= 4, "{}", scs.len());
        for sc in &scs {
            // Every scenario's hosts can be built as workload servers.
            for h in 0..sc.hosts.count.0 {
                realrun::host_config(sc, h).unwrap();
            }
        }
        // (The oracle search is slow in a debug build: one scenario.)
        let s = settings(&scs[2]);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].1, Knobs::istio_defaults());
        assert_ne!(s[2].1, s[0].1, "the oracle limits something");
    }
}
