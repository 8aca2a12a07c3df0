//! Supervised policy: from dataset rows (features, knobs in force, outcomes), pick for each
//! context the knobs with the best reward and fit a multi-output MLP features → best knobs
//! (normalised, sigmoid output) with mean squared error.
//!
//! A context is (scenario, destination, window) by default: the same traffic window replayed
//! under different knob settings by `meshtune sim sweep`. Every row of a context becomes one
//! example (its observed features → the context's best knobs), so the model learns to move
//! from whatever it observes to the best setting. The train/validation split is by context.

use crate::mlp::{Mlp, MlpError};
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use meshtune_core::dataset::{check_header, DatasetError, DatasetRow};
use meshtune_core::knobs::{Knobs, KNOB_NAMES, KNOB_SPECS};
use meshtune_core::{FEATURE_COUNT, KNOB_COUNT};
use meshtune_policy::onnx::{mlp_forward, Activation, MlpLayer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why supervised training failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisedError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}{}: {message}", .column.as_ref().map(|c| format!(", column `{c}`")).unwrap_or_default())]
    Dataset {
        path: PathBuf,
        line: u64,
        column: Option<String>,
        message: String,
    },
    #[error("the dataset has {0} usable contexts; need at least 2 (one for validation)")]
    TooLittleData(usize),
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Mlp(#[from] MlpError),
    #[error("training diverged at epoch {epoch}: loss is not finite; no model written")]
    NonFinite { epoch: usize },
}

/// What makes rows comparable when picking the best knobs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum ContextKey {
    /// (scenario, destination, window): best knobs per traffic window.
    Window,
    /// (scenario, destination): best static knobs per scenario (mean reward over windows).
    Scenario,
}

/// Supervised training options.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SupervisedConfig {
    pub seed: u64,
    pub hidden: Vec<usize>,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Fraction of contexts held out for validation.
    pub val_fraction: f64,
    pub context: ContextKey,
    pub progress: bool,
}

impl Default for SupervisedConfig {
    fn default() -> Self {
        SupervisedConfig {
            seed: 1,
            hidden: vec![32, 32],
            epochs: 300,
            batch: 64,
            lr: 3e-3,
            weight_decay: 1e-4,
            val_fraction: 0.2,
            context: ContextKey::Window,
            progress: false,
        }
    }
}

/// Reads and validates dataset CSVs; errors name the file, line and column.
pub fn load_dataset(paths: &[PathBuf]) -> Result<Vec<DatasetRow>, SupervisedError> {
    let mut rows = Vec::new();
    for p in paths {
        rows.extend(load_file(p)?);
    }
    Ok(rows)
}

fn dataset_err(path: &Path, line: u64, e: DatasetError) -> SupervisedError {
    let column = match &e {
        DatasetError::HeaderColumn { expected, .. } => Some(expected.clone()),
        DatasetError::NotANumber { column, .. } => Some(column.clone()),
        _ => None,
    };
    SupervisedError::Dataset {
        path: path.to_path_buf(),
        line,
        column,
        message: e.to_string(),
    }
}

fn load_file(path: &Path) -> Result<Vec<DatasetRow>, SupervisedError> {
    let file = std::fs::File::open(path).map_err(|source| SupervisedError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(file);
    let header = r.headers().map_err(|e| SupervisedError::Dataset {
        path: path.to_path_buf(),
        line: 1,
        column: None,
        message: e.to_string(),
    })?;
    let h: Vec<String> = header.iter().map(str::to_string).collect();
    check_header(&h).map_err(|e| dataset_err(path, 1, e))?;
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| SupervisedError::Dataset {
            path: path.to_path_buf(),
            line: e.position().map(|p| p.line()).unwrap_or(0),
            column: None,
            message: e.to_string(),
        })?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let fields: Vec<&str> = rec.iter().collect();
        out.push(DatasetRow::from_record(&fields).map_err(|e| dataset_err(path, line, e))?);
    }
    Ok(out)
}

/// Normalised policy target for knobs as recorded in a dataset. Knobs whose Istio value 0
/// means "none/unlimited" (route and per-try timeout, requests per connection) map 0 to 1.0
/// (the largest bound) instead of clamping it to the smallest, which would mean the opposite.
/// Values above the bounds (e.g. Istio's 2^32-1 "unlimited") clamp to 1.0 as usual.
pub fn policy_target(knobs: &Knobs) -> [f32; KNOB_COUNT] {
    let mut u = knobs.normalised();
    for (i, spec) in KNOB_SPECS.iter().enumerate() {
        if knobs.0[i] == 0.0 && spec.istio_default == 0.0 && spec.min > 0.0 {
            u[i] = 1.0;
        }
    }
    u
}

/// One training example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub context: String,
    pub input: [f32; FEATURE_COUNT],
    pub target: [f32; KNOB_COUNT],
    /// Reward of the chosen best knobs in this context.
    pub best_reward: f64,
}

/// Groups rows into contexts, picks the best-reward knobs of each, and returns one example per
/// row (its features → its context's best knobs).
pub fn best_knob_examples(rows: &[DatasetRow], key: ContextKey) -> Vec<Example> {
    let ctx = |r: &DatasetRow| match key {
        ContextKey::Window => format!("{}|{}|{}", r.scenario, r.destination, r.window),
        ContextKey::Scenario => format!("{}|{}", r.scenario, r.destination),
    };
    let mut groups: BTreeMap<String, Vec<&DatasetRow>> = BTreeMap::new();
    for r in rows {
        groups.entry(ctx(r)).or_default().push(r);
    }
    let mut out = Vec::new();
    for (c, members) in groups {
        // Per knob setting: mean reward over the context's rows (several windows in `Scenario`).
        let mut by_knobs: BTreeMap<String, (f64, usize, [f32; KNOB_COUNT])> = BTreeMap::new();
        for r in &members {
            let u = policy_target(&r.knobs);
            let k = format!("{:?}", r.knobs.0);
            let e = by_knobs.entry(k).or_insert((0.0, 0, u));
            e.0 += r.outcomes.reward;
            e.1 += 1;
        }
        let best = by_knobs.values().map(|(s, n, u)| (s / *n as f64, *u)).fold(
            None::<(f64, [f32; KNOB_COUNT])>,
            |acc, (m, u)| match acc {
                Some((bm, _)) if bm >= m => acc,
                _ => Some((m, u)),
            },
        );
        let Some((best_reward, target)) = best else {
            continue;
        };
        for r in members {
            out.push(Example {
                context: c.clone(),
                input: r.features.normalised(),
                target,
                best_reward,
            });
        }
    }
    out
}

/// Result of a supervised fit.
#[derive(Debug, Clone)]
pub struct SupervisedOutcome {
    pub layers: Vec<MlpLayer>,
    pub train_examples: usize,
    pub val_examples: usize,
    pub contexts: usize,
    pub best_epoch: usize,
    pub train_mse: f64,
    pub val_mse: f64,
    /// Validation MSE of always predicting the mean training target (a floor to beat).
    pub val_mse_mean_baseline: f64,
    /// Validation MSE per knob (normalised units), in knob order.
    pub val_mse_per_knob: Vec<(String, f64)>,
    pub elapsed_s: f64,
}

fn mse(layers: &[MlpLayer], ex: &[&Example]) -> (f64, [f64; KNOB_COUNT]) {
    let mut per = [0f64; KNOB_COUNT];
    for e in ex {
        let y = mlp_forward(layers, &e.input);
        for k in 0..KNOB_COUNT {
            per[k] += ((y[k] - e.target[k]) as f64).powi(2);
        }
    }
    let n = ex.len().max(1) as f64;
    per.iter_mut().for_each(|p| *p /= n);
    (per.iter().sum::<f64>() / KNOB_COUNT as f64, per)
}

/// Fits the MLP; keeps the parameters with the best validation MSE.
pub fn fit(
    examples: &[Example],
    cfg: &SupervisedConfig,
) -> Result<SupervisedOutcome, SupervisedError> {
    let start = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut contexts: Vec<&str> = examples.iter().map(|e| e.context.as_str()).collect();
    contexts.sort_unstable();
    contexts.dedup();
    if contexts.len() < 2 {
        return Err(SupervisedError::TooLittleData(contexts.len()));
    }
    for i in (1..contexts.len()).rev() {
        let j = rng.random_range(0..=i);
        contexts.swap(i, j);
    }
    let n_val =
        ((contexts.len() as f64 * cfg.val_fraction).round() as usize).clamp(1, contexts.len() - 1);
    let val_ctx: std::collections::HashSet<&str> = contexts[..n_val].iter().copied().collect();
    let (val, train): (Vec<&Example>, Vec<&Example>) = examples
        .iter()
        .partition(|e| val_ctx.contains(e.context.as_str()));

    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let mut sizes = vec![FEATURE_COUNT];
    sizes.extend(&cfg.hidden);
    sizes.push(KNOB_COUNT);
    let net = Mlp::new(
        &varmap,
        "policy",
        &sizes,
        Activation::Tanh,
        Activation::Sigmoid,
        1.0,
        &mut rng,
    )?;
    let mut opt = AdamW::new(
        net.vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let x_all = Tensor::from_vec(
        train
            .iter()
            .flat_map(|e| e.input.iter().copied())
            .collect::<Vec<f32>>(),
        (train.len(), FEATURE_COUNT),
        &dev,
    )?;
    let y_all = Tensor::from_vec(
        train
            .iter()
            .flat_map(|e| e.target.iter().copied())
            .collect::<Vec<f32>>(),
        (train.len(), KNOB_COUNT),
        &dev,
    )?;
    let pb = if cfg.progress {
        let pb = ProgressBar::new(cfg.epochs as u64);
        pb.set_style(
            ProgressStyle::with_template("supervised {bar:30} {pos}/{len} epochs {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut best = (f64::INFINITY, 0usize, net.to_layers()?);
    let mut idx: Vec<u32> = (0..train.len() as u32).collect();
    for epoch in 0..cfg.epochs {
        for i in (1..idx.len()).rev() {
            let j = rng.random_range(0..=i);
            idx.swap(i, j);
        }
        for chunk in idx.chunks(cfg.batch.max(1)) {
            let ids = Tensor::from_vec(chunk.to_vec(), chunk.len(), &dev)?;
            let x = x_all.index_select(&ids, 0)?;
            let y = y_all.index_select(&ids, 0)?;
            let loss = net.forward(&x)?.sub(&y)?.sqr()?.mean_all()?;
            if !loss.to_scalar::<f32>()?.is_finite() {
                return Err(SupervisedError::NonFinite { epoch });
            }
            opt.backward_step(&loss)?;
        }
        if !net.is_finite()? {
            return Err(SupervisedError::NonFinite { epoch });
        }
        let layers = net.to_layers()?;
        let (v, _) = mse(&layers, &val);
        if v < best.0 {
            best = (v, epoch, layers);
        }
        pb.set_message(format!("val mse {v:.5}"));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let (val_mse, per) = mse(&best.2, &val);
    let (train_mse, _) = mse(&best.2, &train);
    let mut mean_t = [0f64; KNOB_COUNT];
    for e in &train {
        for (m, t) in mean_t.iter_mut().zip(e.target) {
            *m += t as f64 / train.len() as f64;
        }
    }
    let base = val
        .iter()
        .map(|e| {
            (0..KNOB_COUNT)
                .map(|k| (e.target[k] as f64 - mean_t[k]).powi(2))
                .sum::<f64>()
                / KNOB_COUNT as f64
        })
        .sum::<f64>()
        / val.len().max(1) as f64;
    Ok(SupervisedOutcome {
        layers: best.2,
        train_examples: train.len(),
        val_examples: val.len(),
        contexts: contexts.len(),
        best_epoch: best.1,
        train_mse,
        val_mse,
        val_mse_mean_baseline: base,
        val_mse_per_knob: KNOB_NAMES
            .iter()
            .zip(per)
            .map(|(n, m)| (n.to_string(), m))
            .collect(),
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_core::knobs::{Knob, ISTIO_UNLIMITED};

    #[test]
    fn zero_means_none_for_timeouts() {
        let mut k = Knobs::istio_defaults();
        k.set(Knob::RouteTimeoutMs, 0.0);
        k.set(Knob::Http2MaxRequests, ISTIO_UNLIMITED);
        k.set(Knob::Http1MaxPendingRequests, 1.0);
        let u = policy_target(&k);
        assert_eq!(u[Knob::RouteTimeoutMs as usize], 1.0);
        assert_eq!(u[Knob::PerTryTimeoutMs as usize], 1.0);
        assert_eq!(u[Knob::Http2MaxRequests as usize], 1.0);
        assert_eq!(u[Knob::Http1MaxPendingRequests as usize], 0.0);
        // retries.attempts 2 of 0..5 stays linear
        assert!((u[Knob::RetryAttempts as usize] - 0.4).abs() < 1e-6);
        k.set(Knob::RouteTimeoutMs, 10.0);
        assert_eq!(policy_target(&k)[Knob::RouteTimeoutMs as usize], 0.0);
    }
}
