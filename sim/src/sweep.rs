//! Dataset generation: every (scenario, static knob setting, seed) episode, one CSV row per
//! window in `meshtune_core::dataset` format (source = "sim").

use crate::baselines::{KnobGrid, StaticPolicy};
use crate::episode::{run_episode, Objective};
use crate::scenario::Scenario;
use crate::SimError;
use meshtune_core::dataset::{header, DatasetRow};
use meshtune_core::Knobs;

/// Destination name written in sim dataset rows.
pub const SIM_DESTINATION: &str = "upstream.sim";
/// Episodes simulated in parallel before their rows are written (bounds memory).
const BATCH: usize = 64;

/// What a sweep produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepStats {
    pub episodes: u64,
    pub rows: u64,
    /// Client requests simulated.
    pub requests: u64,
    pub elapsed_s: f64,
}

/// Runs the sweep without a progress bar. See [`sweep_with_progress`].
pub fn sweep(
    scenarios: &[Scenario],
    grid: &KnobGrid,
    seeds: &[u64],
    objective: &Objective,
    writer: impl std::io::Write,
) -> Result<SweepStats, SimError> {
    sweep_with_progress(
        scenarios,
        grid,
        seeds,
        objective,
        writer,
        &indicatif::ProgressBar::hidden(),
    )
}

/// Runs every (scenario, grid setting, seed) episode with a static policy and writes one
/// dataset row per window, in that order (deterministic). `progress` advances per episode.
pub fn sweep_with_progress(
    scenarios: &[Scenario],
    grid: &KnobGrid,
    seeds: &[u64],
    objective: &Objective,
    writer: impl std::io::Write,
    progress: &indicatif::ProgressBar,
) -> Result<SweepStats, SimError> {
    let started = std::time::Instant::now();
    let settings = grid.settings();
    let mut jobs: Vec<(usize, Knobs, u64)> = Vec::new();
    for (si, _) in scenarios.iter().enumerate() {
        for k in &settings {
            for &seed in seeds {
                jobs.push((si, *k, seed));
            }
        }
    }
    progress.set_length(jobs.len() as u64);
    let mut w = csv::Writer::from_writer(writer);
    w.write_record(header())?;
    let mut stats = SweepStats::default();
    for batch in jobs.chunks(BATCH) {
        let results = crate::par_map_progress(
            batch,
            |&(si, knobs, seed)| {
                let mut p = StaticPolicy {
                    name: "sweep".into(),
                    knobs,
                };
                run_episode(&scenarios[si], &mut p, seed, objective)
            },
            &|| progress.inc(1),
        );
        for (&(si, _, _), ep) in batch.iter().zip(results) {
            stats.episodes += 1;
            stats.requests += ep.summary.offered;
            for (i, step) in ep.steps.iter().enumerate() {
                let row = DatasetRow {
                    source: "sim".into(),
                    scenario: scenarios[si].name.clone(),
                    destination: SIM_DESTINATION.into(),
                    window: i as u64,
                    features: step.features,
                    knobs: step.knobs,
                    outcomes: step.outcomes,
                };
                w.write_record(row.to_record())?;
                stats.rows += 1;
            }
        }
    }
    w.flush().map_err(|source| SimError::Io {
        path: "dataset".into(),
        source,
    })?;
    progress.finish_and_clear();
    stats.elapsed_s = started.elapsed().as_secs_f64();
    Ok(stats)
}
