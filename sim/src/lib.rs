//! Discrete-event simulator of Envoy clusters in front of finite-capacity upstreams; the RL environment.
//!
//! - [`scenario`]: TOML scenario files (hosts, failures, load, clients), validated with
//!   file/line/field errors.
//! - [`engine`]: the event-driven simulator emitting per-window [`meshtune_core::WindowStats`].
//! - [`episode`]: window outcomes (rates and objective from `meshtune_core::outcomes`),
//!   [`run_episode`] and the RL environment [`MeshEnv`].
//! - [`baselines`]: Istio defaults, static and hand-tuned configs, a gradient concurrency
//!   controller, and the grid-search oracle.
//! - [`sweep`]: dataset generation (static knob grid x scenarios x seeds → CSV rows).
//! - [`windows`]: sliding-window features of a static configuration (the live controller's
//!   view), for comparing the simulator with the controller window by window.
//! - [`cli`]: `meshtune sim sweep|run|bench`.

pub mod baselines;
pub mod cli;
pub mod engine;
pub mod episode;
pub mod rng;
pub mod scenario;
pub mod sweep;
pub mod windows;

pub use baselines::{
    hand_tuned, oracle_grid_search, GradientController, IstioDefaults, KnobGrid, StaticPolicy,
};
pub use engine::{Engine, Limits, Totals, WindowResult};
pub use episode::{run_episode, run_episode_with, EpisodeResult, MeshEnv, Objective, Summary};
pub use scenario::{load_dir, Scenario, ScenarioError};
pub use sweep::{sweep, sweep_with_progress, SweepStats};

use std::path::PathBuf;

/// Errors of the simulator's I/O edges (scenarios, dataset output).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("writing dataset: {0}")]
    Csv(#[from] csv::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

/// The scenarios shipped with the crate: `<crate>/scenarios` with `train/`, `heldout/` and
/// `calibration/`.
pub fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// Training scenarios folder.
pub fn train_dir() -> PathBuf {
    scenarios_dir().join("train")
}

/// Calibration scenarios folder: sized to run on real Envoy on a small machine, used to
/// compare the simulator with real Envoy (never used for training).
pub fn calibration_dir() -> PathBuf {
    scenarios_dir().join("calibration")
}

/// Held-out scenarios folder (never used for training).
pub fn heldout_dir() -> PathBuf {
    scenarios_dir().join("heldout")
}

/// Maps `f` over `items` on all available cores (std threads), keeping order.
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    par_map_progress(items, f, &|| {})
}

/// [`par_map`] calling `done` after each item.
pub fn par_map_progress<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> R + Sync,
    done: &(dyn Fn() + Sync),
) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len().max(1));
    let next = AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            break;
                        }
                        mine.push((i, f(&items[i])));
                        done();
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("simulation thread panicked"))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}
