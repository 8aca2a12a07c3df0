//! CSV traces of episodes (a reward logger): one row per environment step, for training and
//! testing runs, plus one row per PPO update.

use meshtune_core::dataset::OUTCOME_NAMES;
use meshtune_core::env::Step;
use meshtune_core::knobs::KNOB_NAMES;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Why a trace could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trace {path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("trace {path} line {line}: column `{column}`: `{value}` is not a number")]
    Parse {
        path: PathBuf,
        line: u64,
        column: String,
        value: String,
    },
}

/// Step trace header: `phase,update,episode,step,scenario,reward,knob.*,outcome.*`.
pub fn step_header() -> Vec<String> {
    let mut h: Vec<String> = ["phase", "update", "episode", "step", "scenario", "reward"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    h.extend(KNOB_NAMES.iter().map(|k| format!("knob.{k}")));
    h.extend(OUTCOME_NAMES.iter().map(|o| format!("outcome.{o}")));
    h
}

/// Writes step rows.
#[derive(Debug)]
pub struct StepTrace {
    path: PathBuf,
    w: csv::Writer<File>,
}

impl StepTrace {
    pub fn create(path: &Path) -> Result<Self, TraceError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| TraceError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut w = csv::Writer::from_path(path).map_err(|source| TraceError::Csv {
            path: path.to_path_buf(),
            source,
        })?;
        w.write_record(step_header())
            .map_err(|source| TraceError::Csv {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(StepTrace {
            path: path.to_path_buf(),
            w,
        })
    }

    pub fn write(
        &mut self,
        phase: &str,
        update: usize,
        episode: usize,
        step_no: usize,
        scenario: &str,
        step: &Step,
    ) -> Result<(), TraceError> {
        let mut rec = vec![
            phase.to_string(),
            update.to_string(),
            episode.to_string(),
            step_no.to_string(),
            scenario.to_string(),
            format!("{:.6}", step.reward),
        ];
        rec.extend(step.knobs.0.iter().map(|k| format!("{k}")));
        rec.extend(step.outcomes.to_array().iter().map(|o| format!("{o:.6}")));
        self.w.write_record(rec).map_err(|source| TraceError::Csv {
            path: self.path.clone(),
            source,
        })
    }

    pub fn flush(&mut self) -> Result<(), TraceError> {
        self.w.flush().map_err(|source| TraceError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// One PPO update's statistics (a row of `updates.csv`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateStats {
    pub update: usize,
    pub env_steps: usize,
    pub episodes: usize,
    /// Mean undiscounted return of the episodes that ended in this update's rollout.
    pub mean_return: f64,
    /// Mean reward per step in this update's rollout.
    pub mean_step_reward: f64,
    pub policy_loss: f64,
    pub value_loss: f64,
    pub entropy: f64,
    pub approx_kl: f64,
    pub clip_fraction: f64,
    pub elapsed_s: f64,
}

/// Writes the per-update statistics.
pub fn write_updates(path: &Path, stats: &[UpdateStats]) -> Result<(), TraceError> {
    let mut w = csv::Writer::from_path(path).map_err(|source| TraceError::Csv {
        path: path.to_path_buf(),
        source,
    })?;
    for s in stats {
        w.serialize(s).map_err(|source| TraceError::Csv {
            path: path.to_path_buf(),
            source,
        })?;
    }
    w.flush().map_err(|source| TraceError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `updates.csv` back (for plots).
pub fn read_updates(path: &Path) -> Result<Vec<UpdateStats>, TraceError> {
    let mut r = csv::Reader::from_path(path).map_err(|source| TraceError::Csv {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for rec in r.deserialize() {
        out.push(rec.map_err(|source| TraceError::Csv {
            path: path.to_path_buf(),
            source,
        })?);
    }
    Ok(out)
}
