//! Supervised and PPO training of meshtune policies, ONNX export, evaluation.
//!
//! - [`mlp`]: candle MLPs (weights in ONNX Gemm layout) and a plain-Rust forward pass.
//! - [`ppo`]: PPO with GAE, clipped surrogate, learned log-std; NaN guard; checkpoints.
//! - [`supervised`]: best-knobs-per-context regression from dataset CSVs.
//! - [`export`]: ONNX export per `meshtune_core::contract` and a tract loader.
//! - [`trace`]: CSV reward logs (per step and per update).
//! - [`evaluate`]: baselines and models on train / held-out scenarios: table and plots.
//! - [`plots`]: plotters charts (SVG + PNG).
//! - [`pipeline`]: training runs with file outputs (model written only on success).
//! - [`cli`]: `meshtune train supervised|ppo|eval|export`.

pub mod cli;
pub mod evaluate;
pub mod export;
pub mod mlp;
pub mod pipeline;
pub mod plots;
pub mod ppo;
pub mod supervised;
pub mod trace;
