//! Supervised and PPO training of meshtune policies, ONNX export, evaluation.
//!
//! ONNX export, reading and running are `meshtune_policy`'s (`onnx::export_mlp`,
//! `OnnxPolicy`, the runtime the controller serves); this crate holds no exporter or runtime of
//! its own, and depends on `meshtune_policy` without its `kube` feature.
//!
//! - [`mlp`]: candle MLPs (weights in ONNX Gemm layout), copied out as `meshtune_policy` layers.
//! - [`ppo`]: PPO with GAE, clipped surrogate, learned log-std; NaN guard; checkpoints.
//! - [`supervised`]: best-knobs-per-context regression from dataset CSVs.
//! - [`export`]: model files through `meshtune_policy`'s exporter, validated by its runtime;
//!   PPO checkpoints back to layers.
//! - [`trace`]: CSV reward logs (per step and per update).
//! - [`guarded`]: the live loop's guardrails (bounds, hysteresis, step limits, dwell) around a
//!   policy in simulated time.
//! - [`live_env`]: the same live loop as the RL environment PPO can train in (`ppo --live`).
//! - [`evaluate`]: baselines and models on train / held-out scenarios: table and plots.
//! - [`plots`]: plotters charts (SVG + PNG).
//! - [`pipeline`]: training runs with file outputs (model written only on success).
//! - [`cli`]: `meshtune train supervised|ppo|eval|export`.

pub mod cli;
pub mod evaluate;
pub mod export;
pub mod guarded;
pub mod live_env;
pub mod mlp;
pub mod pipeline;
pub mod plots;
pub mod ppo;
pub mod supervised;
pub mod trace;
