//! End-to-end training runs with file outputs: traces, checkpoints, ONNX model, JSON report.
//! A model file is written only after training finished with finite parameters.

use crate::export::{write_model, ExportError};
use crate::ppo::{self, NamedEnv, PpoConfig, PpoError};
use crate::supervised::{self, SupervisedConfig, SupervisedError};
use crate::trace::{write_updates, StepTrace, TraceError};
use meshtune_policy::onnx::ModelMeta;
use std::path::{Path, PathBuf};

/// Why a training run failed (no model was written).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Ppo(#[from] PpoError),
    #[error(transparent)]
    Supervised(#[from] SupervisedError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// Where a PPO run writes.
#[derive(Debug, Clone)]
pub struct PpoPaths {
    /// The exported ONNX model.
    pub model: PathBuf,
    /// Directory for `train_trace.csv`, `test_trace.csv`, `updates.csv`, `report.json`,
    /// and `checkpoints/`.
    pub run_dir: PathBuf,
}

/// Summary of a PPO run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PpoReport {
    pub config: PpoConfig,
    pub env_steps: usize,
    pub train_seconds: f64,
    pub first_mean_step_reward: f64,
    pub last_mean_step_reward: f64,
    pub final_log_std: Vec<f32>,
    /// Deterministic test episode returns: (scenario, total reward).
    pub test_returns: Vec<(String, f64)>,
    pub model: String,
    pub model_bytes: usize,
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<(), PipelineError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| PipelineError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(path, s).map_err(|e| PipelineError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Trains with PPO on `train_envs`, runs deterministic test episodes on `test_envs`, writes the
/// traces and, only if everything succeeded, the ONNX model.
pub fn ppo_to_files(
    train_envs: &mut [NamedEnv],
    test_envs: &mut [NamedEnv],
    cfg: &PpoConfig,
    meta: &ModelMeta,
    paths: &PpoPaths,
) -> Result<PpoReport, PipelineError> {
    std::fs::create_dir_all(&paths.run_dir).map_err(|e| PipelineError::Io {
        path: paths.run_dir.clone(),
        message: e.to_string(),
    })?;
    let mut cfg = cfg.clone();
    if cfg.checkpoint_dir.is_none() && cfg.checkpoint_every > 0 {
        cfg.checkpoint_dir = Some(paths.run_dir.join("checkpoints"));
    }
    let mut trace = StepTrace::create(&paths.run_dir.join("train_trace.csv"))?;
    let result = ppo::train(train_envs, &cfg, Some(&mut trace));
    let outcome = result?;
    write_updates(&paths.run_dir.join("updates.csv"), &outcome.history)?;
    let mut test_trace = StepTrace::create(&paths.run_dir.join("test_trace.csv"))?;
    let test_returns = ppo::test_episodes(
        &outcome.actor,
        test_envs,
        cfg.seed.wrapping_add(1_000_003),
        cfg.max_episode_steps,
        Some(&mut test_trace),
    )?;
    let model_bytes = write_model(&paths.model, &outcome.actor, meta)?;
    let report = PpoReport {
        first_mean_step_reward: outcome
            .history
            .first()
            .map(|h| h.mean_step_reward)
            .unwrap_or(f64::NAN),
        last_mean_step_reward: outcome
            .history
            .last()
            .map(|h| h.mean_step_reward)
            .unwrap_or(f64::NAN),
        config: cfg,
        env_steps: outcome.env_steps,
        train_seconds: outcome.elapsed_s,
        final_log_std: outcome.log_std,
        test_returns,
        model: paths.model.display().to_string(),
        model_bytes,
    };
    write_json(&paths.run_dir.join("report.json"), &report)?;
    Ok(report)
}

/// Summary of a supervised run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SupervisedReport {
    pub config: SupervisedConfig,
    pub datasets: Vec<String>,
    pub rows: usize,
    pub contexts: usize,
    pub train_examples: usize,
    pub val_examples: usize,
    pub best_epoch: usize,
    pub train_mse: f64,
    pub val_mse: f64,
    pub val_mse_mean_baseline: f64,
    pub val_mse_per_knob: Vec<(String, f64)>,
    pub train_seconds: f64,
    pub model: String,
    pub model_bytes: usize,
}

/// Loads datasets, fits, exports. The report goes next to the model as `<model>.report.json`.
pub fn supervised_to_files(
    datasets: &[PathBuf],
    cfg: &SupervisedConfig,
    meta: &ModelMeta,
    model: &Path,
) -> Result<SupervisedReport, PipelineError> {
    let rows = supervised::load_dataset(datasets)?;
    let examples = supervised::best_knob_examples(&rows, cfg.context);
    let out = supervised::fit(&examples, cfg)?;
    let model_bytes = write_model(model, &out.layers, meta)?;
    let report = SupervisedReport {
        config: cfg.clone(),
        datasets: datasets.iter().map(|p| p.display().to_string()).collect(),
        rows: rows.len(),
        contexts: out.contexts,
        train_examples: out.train_examples,
        val_examples: out.val_examples,
        best_epoch: out.best_epoch,
        train_mse: out.train_mse,
        val_mse: out.val_mse,
        val_mse_mean_baseline: out.val_mse_mean_baseline,
        val_mse_per_knob: out.val_mse_per_knob,
        train_seconds: out.elapsed_s,
        model: model.display().to_string(),
        model_bytes,
    };
    write_json(&model.with_extension("report.json"), &report)?;
    Ok(report)
}
