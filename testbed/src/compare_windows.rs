//! The features the live controller computes next to the simulator's, window by window, on the
//! same load (`testbed compare-windows`, `cargo xtask bench compare-windows`).
//!
//! **Live**: the scenario runs on real Envoy with a static setting ([`Arm::Observe`]): the
//! meshtune filter in every client reports, the controller (`--mode observe`, nothing pushed,
//! no hints) decides every second on its last `W` seconds (`--window-secs W`) and records each
//! decision's features (`--record`). **Sim**: the same scenario, seed and knobs in the
//! simulator, the last `W` one-second windows merged after each window
//! ([`meshtune_sim::windows::sliding_features`], what `run_episode_with` feeds the policy).
//!
//! **Alignment** ([`align`]) is by time since the load started: a recorded row carries the
//! decision's unix second `S`; the decision loop's phase `ψ` (ms into the second, read from
//! the controller's last decision; it stays put with a 1 s interval) gives the decision time
//! `S + ψ`. The controller's window holds the reports *received* before that time, each
//! covering the reporter's previous flush interval (1 s); the newest one ended on average half
//! a flush interval before the decision. So the live window ends at about `S + ψ − 0.5 s`, and
//! is paired with the simulated window ending at the nearest whole second since the load
//! started, `e = round(S + ψ − 0.5 − t0)`. The residual misalignment is within ±0.5 s (the
//! reporters' flush phases are not known), small next to `W`. Rows with `e ≤ W + 1` (warm-up,
//! [`WARMUP_EXTRA_S`]) and
//! `e > windows` (after the load) are dropped, as is a second row landing on the same `e` (a
//! late cycle). The warm-up includes `e = W`: the first report after the load started covers
//! more than one second of traffic (an idle filter ticks at its heartbeat period, 10 s, so
//! its first busy window is longer), and the controller counts a report whole in the second
//! it arrived: the first windows holding it count more than `W` seconds of traffic over `W`.
//!
//! Relative error = |sim − live| / max(|live|, floor), with a floor per feature
//! ([`COMPARED`]) so near-zero figures (rates of 0, a few ms) do not turn tiny absolute
//! differences into huge relative ones.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use meshtune_core::dataset::DatasetRow;
use meshtune_core::{Features, Knob, Knobs};
use meshtune_sim::scenario::Scenario;
use meshtune_sim::windows::{sliding_features, SlidingWindow};

use crate::calibrate::{median, relative_error};
use crate::paths::Paths;
use crate::progress::{bar, say};
use crate::realrun::{self, Arm, Observation};

/// The controller's default sliding window (`meshtune controller --window-secs`).
pub const DEFAULT_WINDOW_SECS: u32 = 10;
/// Settings run by default (`--setting`).
pub const DEFAULT_SETTINGS: [&str; 2] = ["istio-defaults", "sim-oracle"];
/// The newest report in the controller's window ended on average this long before the
/// decision (half the filter's 1 s flush interval).
pub const REPORT_LAG_MS: f64 = 500.0;

/// One compared feature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compared {
    /// Name in the feature schema (`meshtune_core::FEATURE_NAMES`).
    pub name: &'static str,
    /// Column label.
    pub label: &'static str,
    /// Smallest denominator of the relative error.
    pub floor: f64,
    /// Shown as a percentage (rates).
    pub percent: bool,
}

const fn cmp(name: &'static str, label: &'static str, floor: f64, percent: bool) -> Compared {
    Compared {
        name,
        label,
        floor,
        percent,
    }
}

/// The features compared, in table order.
pub const COMPARED: [Compared; 11] = [
    cmp("rps", "rps", 1.0, false),
    cmp("latency_p50_ms", "p50 ms", 1.0, false),
    cmp("latency_p90_ms", "p90 ms", 1.0, false),
    cmp("latency_p99_ms", "p99 ms", 1.0, false),
    cmp("inflight_avg", "in-flight avg", 1.0, false),
    cmp("inflight_max", "in-flight max", 1.0, false),
    cmp("error_5xx_rate", "5xx", 0.01, true),
    cmp("overflow_rate", "overflow", 0.01, true),
    cmp("timeout_rate", "timeout", 0.01, true),
    cmp("clients", "clients", 1.0, false),
    cmp("endpoints", "endpoints", 1.0, false),
];

/// A static setting by name: `istio-defaults`, `hand-tuned` or `sim-oracle` (the simulator's
/// oracle for `sc`, as `bench calibrate` uses).
pub fn setting(sc: &Scenario, name: &str) -> Result<(String, Knobs)> {
    Ok(match name {
        "istio-defaults" => ("istio defaults".into(), Knobs::istio_defaults()),
        "hand-tuned" => (
            "hand-tuned".into(),
            meshtune_sim::baselines::hand_tuned().knobs,
        ),
        "sim-oracle" => crate::calibrate::settings(sc).remove(2),
        other => bail!("setting `{other}`: expected istio-defaults, hand-tuned or sim-oracle"),
    })
}

/// Where a recorded row lands on the simulator's windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aligned {
    /// Index of the row in the recording.
    pub row: usize,
    /// Scenario windows completed when the live window ends (its end, in seconds since the
    /// load started).
    pub end: u32,
}

/// What [`align`] kept and dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Alignment {
    pub pairs: Vec<Aligned>,
    /// Rows up to the first full window (`end <= W`, see the module docs).
    pub warmup: usize,
    /// Rows after the load (`end > windows`).
    pub after: usize,
    /// Rows landing on an `end` already taken.
    pub duplicates: usize,
}

/// The live window's end in seconds since the load started, for a row recorded at unix second
/// `unix_s` by a decision loop with phase `phase_ms` (unknown: mid-second).
pub fn live_window_end_s(unix_s: u64, t0_unix_ms: u64, phase_ms: Option<u64>) -> f64 {
    let decided_ms = (unix_s * 1000 + phase_ms.unwrap_or(500).min(999)) as f64;
    (decided_ms - REPORT_LAG_MS - t0_unix_ms as f64) / 1000.0
}

/// Seconds after the first full window still counted as warm-up: with the ±0.5 s alignment
/// the window ending at `e = W + 1` can still hold the first (long) report, whose idle time
/// dilutes the in-flight average (seen: sim 4.24, live 2.73 at `e = 11`, W = 10, in 2 of 9
/// runs of the e2e test).
pub const WARMUP_EXTRA_S: u32 = 1;

/// Pairs each recorded row (decision unix second, in order) with the simulated window ending
/// at the nearest second since the load started; see the module docs.
pub fn align(
    unix_secs: &[u64],
    t0_unix_ms: u64,
    phase_ms: Option<u64>,
    window_secs: u32,
    windows: u32,
) -> Alignment {
    let mut a = Alignment::default();
    for (row, &s) in unix_secs.iter().enumerate() {
        let end = live_window_end_s(s, t0_unix_ms, phase_ms).round();
        if end <= f64::from(window_secs.max(1) + WARMUP_EXTRA_S) {
            a.warmup += 1;
        } else if end > f64::from(windows) {
            a.after += 1;
        } else if a.pairs.iter().any(|p| f64::from(p.end) == end) {
            a.duplicates += 1;
        } else {
            a.pairs.push(Aligned {
                row,
                end: end as u32,
            });
        }
    }
    a
}

/// One decision time: the simulator's and the controller's features side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowPair {
    /// Seconds since the load started at the window's end.
    pub end: u32,
    /// Requests the load generator sent per second over the window's seconds (a reference
    /// for `rps`, which counts completions).
    pub sent_rps: f64,
    pub sim: Features,
    pub live: Features,
    /// Knobs in force: the simulated setting, and what the controller believes is in force.
    pub sim_knobs: Knobs,
    pub live_knobs: Knobs,
}

impl WindowPair {
    /// Relative error of one compared feature.
    pub fn error(&self, c: &Compared) -> f64 {
        let (s, l) = (
            self.sim.get(c.name).unwrap_or(f64::NAN),
            self.live.get(c.name).unwrap_or(f64::NAN),
        );
        relative_error(s, l, c.floor)
    }

    /// Knobs whose value differs between the two sides.
    pub fn knobs_differing(&self) -> Vec<Knob> {
        Knob::ALL
            .into_iter()
            .filter(|k| self.sim_knobs.get(*k) != self.live_knobs.get(*k))
            .collect()
    }
}

/// Pairs the aligned rows with the simulated windows (`sim[e - 1]` ends at `e`); `sent` is
/// the load generator's requests per scenario window.
pub fn pairs(
    rows: &[DatasetRow],
    alignment: &Alignment,
    sim: &[SlidingWindow],
    knobs: &Knobs,
    sent: &[u64],
) -> Vec<WindowPair> {
    alignment
        .pairs
        .iter()
        .filter_map(|a| {
            let s = sim.get((a.end as usize).checked_sub(1)?)?;
            let r = rows.get(a.row)?;
            let from = (a.end - s.merged) as usize;
            let sent_rps = sent.get(from..a.end as usize).map_or(f64::NAN, |w| {
                w.iter().sum::<u64>() as f64 / f64::from(s.merged)
            });
            Some(WindowPair {
                end: a.end,
                sent_rps,
                sim: s.features,
                live: r.features,
                sim_knobs: *knobs,
                live_knobs: r.knobs,
            })
        })
        .collect()
}

/// The `q` quantile (linear between order statistics; NaN for none).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Median and 90th percentile of one feature's relative error over the windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorSummary {
    pub feature: Compared,
    pub median: f64,
    pub p90: f64,
}

/// Per compared feature, the median and 90th-percentile relative error over `pairs`.
pub fn summarise(pairs: &[WindowPair]) -> Vec<ErrorSummary> {
    COMPARED
        .iter()
        .map(|c| {
            let e: Vec<f64> = pairs.iter().map(|p| p.error(c)).collect();
            ErrorSummary {
                feature: *c,
                median: median(&e),
                p90: quantile(&e, 0.9),
            }
        })
        .collect()
}

/// Fraction of windows in which both sides have the same knobs in force.
pub fn knobs_agree(pairs: &[WindowPair]) -> f64 {
    if pairs.is_empty() {
        return f64::NAN;
    }
    pairs
        .iter()
        .filter(|p| p.knobs_differing().is_empty())
        .count() as f64
        / pairs.len() as f64
}

fn value(c: &Compared, x: f64) -> String {
    if c.percent {
        format!("{:.2}%", 100.0 * x)
    } else if x.abs() >= 100.0 || matches!(c.name, "clients" | "endpoints") {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// The per-decision markdown table (`sim / live / error` per feature, knobs in force), then
/// the per-feature summary.
pub fn table(pairs: &[WindowPair]) -> String {
    let mut s = String::from("| t s | sent/s |");
    for c in &COMPARED {
        s.push_str(&format!(" {} sim / live / err |", c.label));
    }
    s.push_str(" knobs in force |\n|---:| ---: |");
    for _ in &COMPARED {
        s.push_str(" --- |");
    }
    s.push_str(" --- |\n");
    for p in pairs {
        s.push_str(&format!("| {} | {:.0} |", p.end, p.sent_rps));
        for c in &COMPARED {
            s.push_str(&format!(
                " {} / {} / {:.0}% |",
                value(c, p.sim.get(c.name).unwrap_or(f64::NAN)),
                value(c, p.live.get(c.name).unwrap_or(f64::NAN)),
                100.0 * p.error(c)
            ));
        }
        let d = p.knobs_differing();
        if d.is_empty() {
            s.push_str(" same |\n");
        } else {
            let names: Vec<&str> = d.iter().map(|k| k.name()).collect();
            s.push_str(&format!(" differ: {} |\n", names.join(", ")));
        }
    }
    s.push_str("\n| feature | median rel. error | p90 rel. error |\n| --- | ---: | ---: |\n");
    for e in summarise(pairs) {
        s.push_str(&format!(
            "| {} | {:.1}% | {:.1}% |\n",
            e.feature.label,
            100.0 * e.median,
            100.0 * e.p90
        ));
    }
    s.push_str(&format!(
        "| knobs in force | same in {:.0}% of windows | |\n",
        100.0 * knobs_agree(pairs)
    ));
    s
}

/// The pairs as CSV: `t_s`, then per compared feature `sim.<name>,live.<name>,err.<name>`, then
/// `knobs_differing`.
pub fn csv(pairs: &[WindowPair]) -> String {
    let mut s = String::from("t_s,sent_rps");
    for c in &COMPARED {
        s.push_str(&format!(",sim.{0},live.{0},err.{0}", c.name));
    }
    s.push_str(",knobs_differing\n");
    for p in pairs {
        s.push_str(&format!("{},{}", p.end, p.sent_rps));
        for c in &COMPARED {
            s.push_str(&format!(
                ",{},{},{}",
                p.sim.get(c.name).unwrap_or(f64::NAN),
                p.live.get(c.name).unwrap_or(f64::NAN),
                p.error(c)
            ));
        }
        let names: Vec<&str> = p.knobs_differing().iter().map(|k| k.name()).collect();
        s.push_str(&format!(",{}\n", names.join(" ")));
    }
    s
}

/// One compared run.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub scenario: String,
    pub setting: String,
    pub window_secs: u32,
    pub alignment: Alignment,
    pub pairs: Vec<WindowPair>,
    /// The controller's recorded rows (all of them, warm-up included).
    pub live_rows: Vec<DatasetRow>,
    /// When the load started (unix ms) and the decision loop's phase.
    pub t0_unix_ms: u64,
    pub decision_phase_ms: Option<u64>,
    /// Reports accepted by the controller and lost by the filters (see [`Observation`]).
    pub reports_accepted: u64,
    pub reports_dropped: Option<u64>,
}

/// Summary markdown of several runs: per scenario × setting, each feature's median relative
/// error over its windows, and how often the knobs in force agree.
pub fn summary_table(runs: &[Comparison]) -> String {
    let mut s = String::from("| scenario | setting | windows |");
    for c in &COMPARED {
        s.push_str(&format!(" {} |", c.label));
    }
    s.push_str(" knobs same |\n| --- | --- | ---: |");
    for _ in &COMPARED {
        s.push_str(" ---: |");
    }
    s.push_str(" ---: |\n");
    for r in runs {
        s.push_str(&format!(
            "| {} | {} | {} |",
            r.scenario,
            r.setting,
            r.pairs.len()
        ));
        for e in summarise(&r.pairs) {
            s.push_str(&format!(" {:.1}% |", 100.0 * e.median));
        }
        s.push_str(&format!(" {:.0}% |\n", 100.0 * knobs_agree(&r.pairs)));
    }
    s
}

/// Runs `sc` on real Envoy with `knobs` observed by the controller, and in the simulator, and
/// pairs their windows.
pub fn compare(
    paths: &Paths,
    sc: &Scenario,
    setting: &str,
    knobs: &Knobs,
    window_secs: u32,
    progress: impl FnMut(u32),
) -> Result<Comparison> {
    if (sc.window_s.0 - 1.0).abs() > 1e-9 {
        bail!(
            "{}: window_s is {} s; compare-windows needs 1 s scenario windows (the controller's buckets and the filter's flushes are 1 s)",
            sc.origin,
            sc.window_s.0
        );
    }
    let run = realrun::run(
        paths,
        sc,
        &Arm::Observe {
            name: setting.to_string(),
            knobs: *knobs,
            window_secs,
        },
        sc.seed,
        progress,
    )?;
    let Observation {
        t0_unix_ms,
        rows,
        decision_phase_ms,
        reports_accepted,
        reports_dropped,
        ..
    } = run
        .observation
        .context("the observe arm returned no observation")?;
    let sim = sliding_features(sc, knobs, sc.seed, window_secs as usize);
    let secs: Vec<u64> = rows.iter().map(|r| r.window).collect();
    let alignment = align(
        &secs,
        t0_unix_ms,
        decision_phase_ms,
        window_secs,
        sc.windows.0,
    );
    let sent: Vec<u64> = run.windows.iter().map(|w| w.sent).collect();
    let pairs = pairs(&rows, &alignment, &sim, knobs, &sent);
    if pairs.is_empty() {
        bail!(
            "{}: the controller recorded {} rows, none in a full window after the warm-up ({:?})",
            sc.name,
            rows.len(),
            alignment
        );
    }
    Ok(Comparison {
        scenario: sc.name.clone(),
        setting: setting.to_string(),
        window_secs,
        alignment,
        pairs,
        live_rows: rows,
        t0_unix_ms,
        decision_phase_ms,
        reports_accepted,
        reports_dropped,
    })
}

/// The recorded rows as the controller wrote them (dataset CSV), with the load's start and
/// the decision phase in a leading comment line.
pub fn live_csv(c: &Comparison) -> String {
    let mut s = format!(
        "# load started at unix ms {}, decision phase {:?} ms\n",
        c.t0_unix_ms, c.decision_phase_ms
    );
    s.push_str(&meshtune_core::dataset::header().join(","));
    s.push('\n');
    for r in &c.live_rows {
        s.push_str(&r.to_record().join(","));
        s.push('\n');
    }
    s
}

/// Options of `testbed compare-windows`.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// A scenario file or directory.
    pub scenarios: PathBuf,
    /// Setting names (`istio-defaults`, `hand-tuned`, `sim-oracle`).
    pub settings: Vec<String>,
    pub window_secs: u32,
    pub out_dir: PathBuf,
}

/// `target/runs/compare-windows`.
pub fn default_out_dir(paths: &Paths) -> PathBuf {
    paths.target_dir.join("runs").join("compare-windows")
}

fn file_stem(scenario: &str, setting: &str) -> String {
    format!("{scenario}_{setting}").replace(|c: char| !c.is_ascii_alphanumeric(), "_")
}

/// Runs every scenario × setting, prints each table and the summary, writes them to
/// `out_dir` (`<scenario>_<setting>.md` / `.csv`, `summary.md`).
pub fn run(paths: &Paths, cfg: &CompareConfig) -> Result<Vec<Comparison>> {
    let missing = paths.missing(false);
    if !missing.is_empty() {
        bail!("missing prerequisites:\n  {}", missing.join("\n  "));
    }
    let scenarios = crate::calibrate::load_scenarios(&cfg.scenarios)?;
    std::fs::create_dir_all(&cfg.out_dir)
        .with_context(|| format!("creating {}", cfg.out_dir.display()))?;
    let total: u64 = scenarios
        .iter()
        .map(|s| u64::from(s.windows.0) * cfg.settings.len() as u64)
        .sum();
    let pb = bar(total, "windows");
    let mut runs = Vec::new();
    let mut failed = Vec::new();
    for sc in &scenarios {
        for name in &cfg.settings {
            let (setting, knobs) = setting(sc, name)?;
            pb.set_message(format!("{} / {setting}", sc.name));
            // One failed run (e.g. the load generator out of file descriptors under an
            // unbounded queue) is reported and the others still run.
            let c = match compare(paths, sc, &setting, &knobs, cfg.window_secs, |_| pb.inc(1)) {
                Ok(c) => c,
                Err(e) => {
                    say(&pb, format!("\n{} / {setting}: FAILED: {e:#}", sc.name));
                    failed.push(format!("{} / {setting}: {e:#}", sc.name));
                    continue;
                }
            };
            let t = table(&c.pairs);
            say(
                &pb,
                format!(
                    "\n{} / {} (W = {} s; {} windows compared, dropped: {} warm-up, {} after the load, {} duplicates; reports accepted {}, lost by the filters {}; load average {})\n{t}",
                    c.scenario,
                    c.setting,
                    c.window_secs,
                    c.pairs.len(),
                    c.alignment.warmup,
                    c.alignment.after,
                    c.alignment.duplicates,
                    c.reports_accepted,
                    c.reports_dropped.map_or("?".into(), |d| d.to_string()),
                    load_average()
                ),
            );
            let stem = file_stem(&c.scenario, &c.setting);
            write(&cfg.out_dir.join(format!("{stem}.md")), &t)?;
            write(&cfg.out_dir.join(format!("{stem}.csv")), &csv(&c.pairs))?;
            write(&cfg.out_dir.join(format!("{stem}.live.csv")), &live_csv(&c))?;
            runs.push(c);
        }
    }
    pb.finish_and_clear();
    let s = summary_table(&runs);
    let mut s = format!("{s}\n(load average at the end: {})\n", load_average());
    for f in &failed {
        s.push_str(&format!("\nFAILED: {f}\n"));
    }
    println!(
        "\nMedian relative error per feature (sim vs live, windows of {} s):\n\n{s}",
        cfg.window_secs
    );
    write(&cfg.out_dir.join("summary.md"), &s)?;
    println!("tables written to {}", cfg.out_dir.display());
    if runs.is_empty() {
        bail!("every run failed:\n  {}", failed.join("\n  "));
    }
    Ok(runs)
}

/// The 1-minute load average (`/proc/loadavg`), for the record next to each figure.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn write(p: &Path, text: &str) -> Result<()> {
    std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_core::{Context, WindowStats};

    #[test]
    fn live_window_ends_half_a_flush_before_the_decision() {
        // Load started at unix 1000.200 s; decision at 1012.700 s: window ends 12.0 s in.
        assert!((live_window_end_s(1012, 1_000_200, Some(700)) - 12.0).abs() < 1e-9);
        // Unknown phase: mid-second.
        assert!((live_window_end_s(1012, 1_000_000, None) - 12.0).abs() < 1e-9);
    }

    #[test]
    fn align_drops_warmup_after_the_load_and_duplicates() {
        // t0 = 1000.000 s, phase 500 ms: row at unix second S ends at S - 1000.
        let secs = [1001, 1002, 1003, 1004, 1005, 1005, 1006, 1007, 1008];
        let a = align(&secs, 1_000_000, Some(500), 3, 6);
        assert_eq!(
            a.warmup, 4,
            "ends 1, 2, 3 (up to the first full 3 s window) and 4 (WARMUP_EXTRA_S)"
        );
        assert_eq!(a.duplicates, 1);
        assert_eq!(a.after, 2, "ends 7 and 8 are after a 6 s load");
        let ends: Vec<u32> = a.pairs.iter().map(|p| p.end).collect();
        assert_eq!(ends, vec![5, 6]);
        assert_eq!(
            a.pairs[0].row, 4,
            "the first row of a duplicate end is kept"
        );
        // A later phase moves the window's end: 1003.9 - 0.5 - 1000 = 3.4 -> 3.
        let b = align(&[1003], 1_000_000, Some(900), 1, 6);
        assert_eq!(b.pairs[0].end, 3);
        let c = align(&[1003], 1_000_000, Some(999), 1, 6);
        assert_eq!(c.pairs[0].end, 3, "3.499 rounds to 3");
        let d = align(&[1003], 999_400, Some(999), 1, 6);
        assert_eq!(d.pairs[0].end, 4, "t0 earlier by 0.6 s: 4.099 rounds to 4");
    }

    fn features(rps: f64, p50_ms: f64) -> Features {
        let mut w = WindowStats {
            duration_s: 1.0,
            requests: rps as u64,
            status_2xx: rps as u64,
            endpoints: 2,
            ..WindowStats::default()
        };
        for _ in 0..rps as u64 {
            w.latency.record((p50_ms * 1000.0) as u64);
        }
        w.features(&Context::initial(250.0))
    }

    #[test]
    fn pairs_take_the_sim_window_ending_at_the_aligned_second() {
        let sim: Vec<SlidingWindow> = (1..=4)
            .map(|e| SlidingWindow {
                end: e,
                merged: e.min(2),
                stats: WindowStats::default(),
                features: features(100.0 * f64::from(e), 10.0),
            })
            .collect();
        let row = |f| DatasetRow {
            source: "live".into(),
            scenario: String::new(),
            destination: "workload".into(),
            window: 0,
            features: f,
            knobs: Knobs::istio_defaults(),
            outcomes: Default::default(),
        };
        let rows = vec![row(features(290.0, 11.0)), row(features(400.0, 10.0))];
        let a = Alignment {
            pairs: vec![Aligned { row: 0, end: 3 }, Aligned { row: 1, end: 4 }],
            ..Alignment::default()
        };
        let mut hand = Knobs::istio_defaults();
        hand.set(Knob::Http2MaxRequests, 10.0);
        let p = pairs(&rows, &a, &sim, &hand, &[100, 200, 300, 500]);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].sim.get("rps"), Some(300.0));
        let rps = &COMPARED[0];
        assert!((p[0].error(rps) - 10.0 / 290.0).abs() < 1e-9);
        assert_eq!(p[1].error(rps), 0.0);
        assert!(p[0].error(&COMPARED[1]) > 0.05, "p50 10 vs 11 ms");
        assert_eq!(p[0].knobs_differing(), vec![Knob::Http2MaxRequests]);
        assert_eq!(knobs_agree(&p), 0.0);
        let s = summarise(&p);
        assert!((s[0].median - 5.0 / 290.0).abs() < 1e-9);
        let t = table(&p);
        assert!(t.contains("| 3 | 250 | 300 / 290 / 3% |"), "{t}");
        assert_eq!(p[1].sent_rps, 400.0, "seconds 2..4 of the load");
        assert!(t.contains("differ: http.http2MaxRequests"), "{t}");
        assert_eq!(csv(&p).lines().count(), 3);
    }

    #[test]
    fn quantile_interpolates() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0];
        assert_eq!(quantile(&v, 0.9), 10.0);
        assert_eq!(quantile(&v, 0.5), 6.0);
        assert_eq!(quantile(&[0.0, 1.0], 0.9), 0.9);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn settings_by_name() {
        let sc = crate::calibrate::load_scenarios(&meshtune_sim::calibration_dir()).unwrap();
        assert_eq!(
            setting(&sc[0], "istio-defaults").unwrap().1,
            Knobs::istio_defaults()
        );
        let e = setting(&sc[0], "optimal").unwrap_err().to_string();
        assert!(e.contains("optimal") && e.contains("sim-oracle"), "{e}");
    }
}
