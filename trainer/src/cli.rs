//! `meshtune train …` / `meshtune eval`: clap subcommands and their runner.

use crate::export::{actor_from_checkpoint, write_model};
use crate::pipeline::{self, PpoPaths};
use crate::ppo::PpoConfig;
use crate::supervised::{ContextKey, SupervisedConfig};
use meshtune_policy::onnx::ModelMeta;
use std::path::PathBuf;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error(transparent)]
    Eval(#[from] crate::evaluate::EvalError),
    #[error("{0}")]
    Usage(String),
}

fn parse_sizes(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|p| p.trim().parse::<usize>().map_err(|e| format!("`{p}`: {e}")))
        .collect()
}

/// Training, evaluation and export commands.
#[derive(Debug, clap::Subcommand)]
pub enum TrainCommand {
    /// Fit features → best knobs (per context) on dataset CSVs and export ONNX.
    Supervised {
        /// Dataset CSV files (`meshtune sim sweep` or the controller's recorder).
        #[arg(long = "data", required = true)]
        data: Vec<PathBuf>,
        /// Output ONNX model.
        #[arg(long, default_value = "models/supervised-v2.onnx")]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 300)]
        epochs: usize,
        /// Hidden layer sizes, comma-separated.
        #[arg(long, default_value = "32,32")]
        hidden: String,
        #[arg(long, default_value_t = 3e-3)]
        lr: f64,
        #[arg(long, value_enum, default_value_t = ContextKey::Window)]
        context: ContextKey,
        #[arg(long, default_value_t = 0.2)]
        val_fraction: f64,
        #[arg(long, default_value = "supervised-v2")]
        model_version: String,
    },
    /// Train with PPO against the simulator's train scenarios and export the mean network.
    Ppo {
        /// Folder with `train/` (and `heldout/`) scenario files; default: the sim's bundled set.
        #[arg(long)]
        scenarios: Option<PathBuf>,
        #[arg(long, default_value = "models/ppo-v2.onnx")]
        out: PathBuf,
        /// Traces, checkpoints and report.
        #[arg(long, default_value = "target/meshtune-train/ppo")]
        run_dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = crate::ppo::DEFAULT_UPDATES)]
        updates: usize,
        #[arg(long, default_value_t = crate::ppo::DEFAULT_STEPS_PER_UPDATE)]
        steps_per_update: usize,
        #[arg(long, default_value_t = 8)]
        epochs: usize,
        #[arg(long, default_value_t = 128)]
        minibatch: usize,
        #[arg(long, default_value = "32,32")]
        hidden: String,
        #[arg(long, default_value_t = 3e-3)]
        lr: f64,
        #[arg(long, default_value_t = 10)]
        checkpoint_every: usize,
        #[arg(long, default_value = "ppo-v2")]
        model_version: String,
        /// Train in the live loop (`live_env`): decide on the last `--decision-window-secs`
        /// merged, behind the shipped guardrails and dwell, asked only when a push may happen.
        #[arg(long)]
        live: bool,
        /// With `--live`: the controller's sliding window (`--window-secs`), in seconds.
        #[arg(long, default_value_t = 10.0)]
        decision_window_secs: f64,
        /// Scale each training episode's service times by a seeded factor in
        /// [1/(1+J), 1+J] (domain randomisation; 0 = the scenarios as written).
        #[arg(long, default_value_t = 0.0)]
        service_jitter: f64,
    },
    /// Run baselines and models on the train and held-out scenarios; print a table, write plots.
    Eval {
        #[arg(long)]
        scenarios: Option<PathBuf>,
        /// Models to evaluate, as NAME=PATH.onnx (repeatable).
        #[arg(long = "model")]
        models: Vec<String>,
        /// Output folder for table (markdown + JSON) and plots.
        #[arg(long, default_value = "target/meshtune-train/eval")]
        out_dir: PathBuf,
        /// PPO run folder (its updates.csv becomes the reward-curve plot).
        #[arg(long)]
        ppo_run: Option<PathBuf>,
        /// Episode seeds per scenario.
        #[arg(long, default_value_t = 2)]
        seeds: u64,
        /// The oracle's static grid.
        #[arg(long, value_enum, default_value_t = crate::evaluate::OracleGrid::Default)]
        oracle_grid: crate::evaluate::OracleGrid,
        /// Also run every model as the live controller does: behind the shipped guardrails
        /// (dwell, hysteresis, step limits), deciding on a sliding window of
        /// `--decision-window-secs`; rows named `<model>+guardrails`.
        #[arg(long)]
        guardrails: bool,
        /// The live controller's sliding window (`meshtune controller --window-secs`).
        #[arg(long, default_value_t = 10.0)]
        decision_window_secs: f64,
    },
    /// Export a PPO checkpoint (safetensors) to ONNX.
    Export {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "ppo-checkpoint")]
        model_version: String,
    },
}

fn provenance(cmd: &str) -> String {
    format!("meshtune-trainer {}: {cmd}", env!("CARGO_PKG_VERSION"))
}

/// Runs one command; prints a short summary on stdout.
pub fn run(cmd: TrainCommand) -> Result<(), CliError> {
    match cmd {
        TrainCommand::Supervised {
            data,
            out,
            seed,
            epochs,
            hidden,
            lr,
            context,
            val_fraction,
            model_version,
        } => {
            let hidden = parse_sizes(&hidden).map_err(CliError::Usage)?;
            let cfg = SupervisedConfig {
                seed,
                hidden: hidden.clone(),
                epochs,
                lr,
                context,
                val_fraction,
                progress: true,
                ..SupervisedConfig::default()
            };
            let cmdline = format!(
                "meshtune train supervised {} --out {} --seed {seed} --epochs {epochs} --hidden {} --lr {lr} --context {} --val-fraction {val_fraction}",
                data.iter().map(|d| format!("--data {}", d.display())).collect::<Vec<_>>().join(" "),
                out.display(),
                hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(","),
                match context { ContextKey::Window => "window", ContextKey::Scenario => "scenario" },
            );
            let meta = ModelMeta {
                model_version,
                provenance: provenance(&cmdline),
            };
            let rep = pipeline::supervised_to_files(&data, &cfg, &meta, &out)?;
            println!(
                "supervised: {} rows, {} contexts, train/val examples {}/{}, val MSE {:.5} (mean-target baseline {:.5}), best epoch {}, {:.1}s → {} ({} bytes)",
                rep.rows, rep.contexts, rep.train_examples, rep.val_examples, rep.val_mse,
                rep.val_mse_mean_baseline, rep.best_epoch, rep.train_seconds, rep.model, rep.model_bytes
            );
            for (k, m) in &rep.val_mse_per_knob {
                println!("  val MSE {k:<40} {m:.5}");
            }
            Ok(())
        }
        TrainCommand::Ppo {
            scenarios,
            out,
            run_dir,
            seed,
            updates,
            steps_per_update,
            epochs,
            minibatch,
            hidden,
            lr,
            checkpoint_every,
            model_version,
            live,
            decision_window_secs,
            service_jitter,
        } => {
            let hidden = parse_sizes(&hidden).map_err(CliError::Usage)?;
            if !(service_jitter.is_finite() && (0.0..=1.0).contains(&service_jitter)) {
                return Err(CliError::Usage(format!(
                    "--service-jitter must be within 0..=1, got {service_jitter}"
                )));
            }
            if !(decision_window_secs.is_finite() && decision_window_secs >= 1.0) {
                return Err(CliError::Usage(format!(
                    "--decision-window-secs must be at least 1, got {decision_window_secs}"
                )));
            }
            let cfg = PpoConfig {
                seed,
                updates,
                steps_per_update,
                epochs,
                minibatch,
                hidden: hidden.clone(),
                lr_policy: lr,
                lr_value: lr,
                checkpoint_every,
                progress: true,
                // A live step sums the rewards of every window the dwell holds (up to 30).
                reward_scale: if live { 0.1 } else { 1.0 },
                ..PpoConfig::default()
            };
            let cmdline = format!(
                "meshtune train ppo{} --out {} --seed {seed} --updates {updates} --steps-per-update {steps_per_update} --epochs {epochs} --minibatch {minibatch} --hidden {} --lr {lr}",
                scenarios.as_ref().map(|s| format!(" --scenarios {}", s.display())).unwrap_or_default(),
                out.display(),
                hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(","),
            ) + &if live {
                format!(" --live --decision-window-secs {decision_window_secs}")
            } else {
                String::new()
            } + &if service_jitter > 0.0 {
                format!(" --service-jitter {service_jitter}")
            } else {
                String::new()
            };
            let set = crate::evaluate::ScenarioSet::load(scenarios.as_deref())?;
            let live = live.then_some(decision_window_secs);
            let mut train = set.train_envs_with(live, service_jitter);
            // Test episodes run the scenarios as written.
            let mut test = set.train_envs_with(live, 0.0);
            test.extend(set.heldout_envs_with(live, 0.0));
            let meta = ModelMeta {
                model_version,
                provenance: provenance(&cmdline),
            };
            let rep = pipeline::ppo_to_files(
                &mut train,
                &mut test,
                &cfg,
                &meta,
                &PpoPaths {
                    model: out,
                    run_dir,
                },
            )?;
            println!(
                "ppo: {} env steps in {:.1}s; mean step reward {:.4} → {:.4}; model {} ({} bytes)",
                rep.env_steps,
                rep.train_seconds,
                rep.first_mean_step_reward,
                rep.last_mean_step_reward,
                rep.model,
                rep.model_bytes
            );
            for (s, r) in &rep.test_returns {
                println!("  test return {s:<32} {r:.3}");
            }
            Ok(())
        }
        TrainCommand::Eval {
            scenarios,
            models,
            out_dir,
            ppo_run,
            seeds,
            oracle_grid,
            guardrails,
            decision_window_secs,
        } => {
            let mut named = Vec::new();
            for m in models {
                let (name, path) = m.split_once('=').ok_or_else(|| {
                    CliError::Usage(format!("--model expects NAME=PATH, got `{m}`"))
                })?;
                named.push((name.to_string(), PathBuf::from(path)));
            }
            let set = crate::evaluate::ScenarioSet::load(scenarios.as_deref())?;
            let opts = crate::evaluate::EvalOptions {
                seeds,
                oracle_grid,
                out_dir,
                ppo_run,
                guardrails,
                decision_window_s: decision_window_secs,
                progress: true,
            };
            let report = crate::evaluate::evaluate(&set, &named, &opts)?;
            println!("{}", report.markdown());
            println!("plots and tables in {}", opts.out_dir.display());
            Ok(())
        }
        TrainCommand::Export {
            checkpoint,
            out,
            model_version,
        } => {
            let layers = actor_from_checkpoint(&checkpoint)?;
            let meta = ModelMeta {
                model_version,
                provenance: provenance(&format!(
                    "meshtune train export --checkpoint {} --out {}",
                    checkpoint.display(),
                    out.display()
                )),
            };
            let size = write_model(&out, &layers, &meta)?;
            println!("exported {} ({size} bytes)", out.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Args {
        #[command(subcommand)]
        cmd: TrainCommand,
    }

    #[test]
    fn commands_parse() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "t",
            "ppo",
            "--seed",
            "3",
            "--updates",
            "7",
            "--hidden",
            "8,4",
        ])
        .unwrap();
        assert!(matches!(
            a.cmd,
            TrainCommand::Ppo {
                seed: 3,
                updates: 7,
                ..
            }
        ));
        let a =
            Args::try_parse_from(["t", "eval", "--model", "x=m.onnx", "--oracle-grid", "small"])
                .unwrap();
        assert!(matches!(a.cmd, TrainCommand::Eval { .. }));
        assert!(
            Args::try_parse_from(["t", "supervised"]).is_err(),
            "--data is required"
        );
        assert_eq!(parse_sizes("32, 16").unwrap(), vec![32, 16]);
        assert!(parse_sizes("32,x").is_err());
    }

    #[test]
    fn bad_model_argument_is_a_usage_error() {
        let err = run(TrainCommand::Eval {
            scenarios: None,
            models: vec!["no-equals-sign".into()],
            out_dir: std::env::temp_dir().join("meshtune-eval-unused"),
            ppo_run: None,
            seeds: 1,
            oracle_grid: crate::evaluate::OracleGrid::Small,
            guardrails: false,
            decision_window_secs: 10.0,
        })
        .unwrap_err();
        assert!(err.to_string().contains("NAME=PATH"), "{err}");
    }
}
