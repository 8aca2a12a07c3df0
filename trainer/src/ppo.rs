//! Proximal Policy Optimisation (clipped surrogate, GAE, learned state-independent log-std).
//!
//! The actor is an MLP whose last layer is a sigmoid, so its mean is already a contract-valid
//! normalised knob vector; exploration adds Gaussian noise (`mean + σ·ε`) and the action sent
//! to the environment is clipped to [0, 1]. Only the deterministic mean network is exported.
//! The critic is a separate MLP. Everything random draws from one seeded [`StdRng`].

use crate::mlp::{Mlp, MlpError};
use crate::trace::{StepTrace, TraceError, UpdateStats};
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use meshtune_core::env::Environment;
use meshtune_core::{FEATURE_COUNT, KNOB_COUNT};
use meshtune_policy::onnx::{mlp_forward, Activation, MlpLayer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use std::path::PathBuf;
use std::time::Instant;

/// Default number of PPO updates.
pub const DEFAULT_UPDATES: usize = 60;
/// Default environment steps collected per update.
pub const DEFAULT_STEPS_PER_UPDATE: usize = 512;

/// PPO hyper-parameters and run options.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PpoConfig {
    /// Seeds the network initialisation, exploration noise, scenario order and episode seeds.
    pub seed: u64,
    /// Number of rollout + optimisation rounds.
    pub updates: usize,
    /// Environment steps per rollout.
    pub steps_per_update: usize,
    /// Optimisation passes over each rollout.
    pub epochs: usize,
    /// Minibatch size.
    pub minibatch: usize,
    /// Discount.
    pub gamma: f64,
    /// GAE λ.
    pub lambda: f64,
    /// Surrogate clip ε.
    pub clip: f64,
    pub lr_policy: f64,
    pub lr_value: f64,
    /// Entropy bonus coefficient.
    pub entropy_coef: f64,
    /// Global gradient-norm clip per network.
    pub max_grad_norm: f64,
    /// Hidden layer sizes (tanh) of both networks.
    pub hidden: Vec<usize>,
    /// Initial log standard deviation of the exploration noise.
    pub init_log_std: f64,
    /// Lower bound on log-std (keeps some exploration, avoids collapse to NaN).
    pub min_log_std: f64,
    /// Rewards are multiplied by this before learning (value targets stay O(1)).
    pub reward_scale: f64,
    /// Episodes longer than this are cut (treated as ending); 0 = never.
    pub max_episode_steps: usize,
    /// Save a safetensors checkpoint every N updates (0 = never).
    pub checkpoint_every: usize,
    /// Where checkpoints go (none = no checkpoints).
    pub checkpoint_dir: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            seed: 1,
            updates: DEFAULT_UPDATES,
            steps_per_update: DEFAULT_STEPS_PER_UPDATE,
            epochs: 8,
            minibatch: 128,
            gamma: 0.9,
            lambda: 0.9,
            clip: 0.2,
            lr_policy: 3e-3,
            lr_value: 3e-3,
            entropy_coef: 0.0,
            max_grad_norm: 1.0,
            hidden: vec![32, 32],
            init_log_std: -1.2,
            min_log_std: -4.0,
            reward_scale: 1.0,
            max_episode_steps: 0,
            checkpoint_every: 10,
            checkpoint_dir: None,
            progress: false,
        }
    }
}

/// Why PPO stopped.
#[derive(Debug, thiserror::Error)]
pub enum PpoError {
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Mlp(#[from] MlpError),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(
        "training diverged at update {update}: {what} is not finite (NaN/inf); no model written"
    )]
    NonFinite { update: usize, what: String },
    #[error("no training environments")]
    NoEnvironments,
    #[error("bad PPO config: {0}")]
    Config(String),
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
}

/// A named environment to train or test on.
pub struct NamedEnv {
    pub name: String,
    pub env: Box<dyn Environment>,
}

impl std::fmt::Debug for NamedEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedEnv")
            .field("name", &self.name)
            .finish()
    }
}

/// What a PPO run produced.
#[derive(Debug, Clone)]
pub struct PpoOutcome {
    /// The deterministic actor (mean network, sigmoid output): what gets exported.
    pub actor: Vec<MlpLayer>,
    /// Final exploration log-std per knob.
    pub log_std: Vec<f32>,
    pub history: Vec<UpdateStats>,
    pub env_steps: usize,
    pub elapsed_s: f64,
}

/// Generalised advantage estimation over one rollout.
///
/// `dones[t]` marks that the episode ended with step `t` (no bootstrap past it);
/// `last_value` is the critic's value of the observation after the final step.
/// Returns `(advantages, returns)` with `returns = advantages + values`.
pub fn gae(
    rewards: &[f64],
    values: &[f64],
    dones: &[bool],
    last_value: f64,
    gamma: f64,
    lambda: f64,
) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut running = 0.0;
    for t in (0..n).rev() {
        let next_value = if t + 1 == n {
            last_value
        } else {
            values[t + 1]
        };
        let nonterminal = if dones[t] { 0.0 } else { 1.0 };
        let delta = rewards[t] + gamma * next_value * nonterminal - values[t];
        running = delta + gamma * lambda * nonterminal * running;
        adv[t] = running;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// Log-density of `a` under N(mean, exp(log_std)²), summed over dimensions.
pub fn gaussian_log_prob(a: &[f32], mean: &[f32], log_std: &[f32]) -> f64 {
    let ln2pi = (2.0 * std::f64::consts::PI).ln();
    a.iter()
        .zip(mean)
        .zip(log_std)
        .map(|((a, m), ls)| {
            let s = (*ls as f64).exp();
            let z = (*a as f64 - *m as f64) / s;
            -0.5 * z * z - *ls as f64 - 0.5 * ln2pi
        })
        .sum()
}

struct Rollout {
    obs: Vec<[f32; FEATURE_COUNT]>,
    actions: Vec<[f32; KNOB_COUNT]>,
    logp: Vec<f64>,
    values: Vec<f64>,
    rewards: Vec<f64>,
    dones: Vec<bool>,
}

struct Cursor {
    env: usize,
    obs: [f32; FEATURE_COUNT],
    episode: usize,
    step: usize,
    ret: f64,
}

fn clip01(a: &[f32; KNOB_COUNT]) -> [f32; KNOB_COUNT] {
    a.map(|x| x.clamp(0.0, 1.0))
}

fn to_arr<const N: usize>(v: &[f32]) -> [f32; N] {
    let mut a = [0f32; N];
    a.copy_from_slice(&v[..N]);
    a
}

fn grad_clip(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[Var],
    max_norm: f64,
) -> Result<f64, PpoError> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sq.sqrt();
    if norm.is_finite() && max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = (g * s)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// Trains a policy with PPO on `envs` (episodes cycle through them in a seeded random order).
/// Every step of every training episode goes to `trace` (phase `train`). On a non-finite loss
/// or parameter the run stops with [`PpoError::NonFinite`] and returns no model.
pub fn train(
    envs: &mut [NamedEnv],
    cfg: &PpoConfig,
    mut trace: Option<&mut StepTrace>,
) -> Result<PpoOutcome, PpoError> {
    if envs.is_empty() {
        return Err(PpoError::NoEnvironments);
    }
    if cfg.minibatch == 0 || cfg.steps_per_update == 0 || cfg.epochs == 0 {
        return Err(PpoError::Config(
            "minibatch, steps_per_update and epochs must be > 0".into(),
        ));
    }
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let mut sizes = vec![FEATURE_COUNT];
    sizes.extend(&cfg.hidden);
    sizes.push(KNOB_COUNT);
    let actor = Mlp::new(
        &varmap,
        "actor",
        &sizes,
        Activation::Tanh,
        Activation::Sigmoid,
        0.01,
        &mut rng,
    )?;
    let log_std = Var::from_tensor(&Tensor::from_vec(
        vec![cfg.init_log_std as f32; KNOB_COUNT],
        KNOB_COUNT,
        &dev,
    )?)?;
    varmap
        .data()
        .lock()
        .expect("varmap lock")
        .insert("actor.log_std".into(), log_std.clone());
    let mut vsizes = vec![FEATURE_COUNT];
    vsizes.extend(&cfg.hidden);
    vsizes.push(1);
    let critic = Mlp::new(
        &varmap,
        "critic",
        &vsizes,
        Activation::Tanh,
        Activation::Identity,
        1.0,
        &mut rng,
    )?;
    let mut actor_vars = actor.vars();
    actor_vars.push(log_std.clone());
    let critic_vars = critic.vars();
    let mut opt_pi = AdamW::new(
        actor_vars.clone(),
        ParamsAdamW {
            lr: cfg.lr_policy,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut opt_v = AdamW::new(
        critic_vars.clone(),
        ParamsAdamW {
            lr: cfg.lr_value,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;

    let pb = if cfg.progress {
        let pb = ProgressBar::new(cfg.updates as u64);
        pb.set_style(
            ProgressStyle::with_template(
                "ppo {bar:30} {pos}/{len} updates [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };

    let first_env = rng.random_range(0..envs.len());
    let first_seed: u64 = rng.random();
    let mut cur = Cursor {
        env: first_env,
        obs: envs[first_env].env.reset(first_seed),
        episode: 0,
        step: 0,
        ret: 0.0,
    };
    let mut history = Vec::with_capacity(cfg.updates);
    let mut env_steps = 0usize;
    let mut last_log_std: Vec<f32> = vec![cfg.init_log_std as f32; KNOB_COUNT];

    for update in 0..cfg.updates {
        // ---- rollout with the current policy (plain forward: no graph needed) ----
        let actor_l = actor.to_layers()?;
        let critic_l = critic.to_layers()?;
        let ls: Vec<f32> = log_std.as_tensor().to_vec1::<f32>()?;
        if ls.iter().any(|x| !x.is_finite()) {
            return Err(PpoError::NonFinite {
                update,
                what: "log_std".into(),
            });
        }
        let mut ro = Rollout {
            obs: Vec::with_capacity(cfg.steps_per_update),
            actions: Vec::with_capacity(cfg.steps_per_update),
            logp: Vec::with_capacity(cfg.steps_per_update),
            values: Vec::with_capacity(cfg.steps_per_update),
            rewards: Vec::with_capacity(cfg.steps_per_update),
            dones: Vec::with_capacity(cfg.steps_per_update),
        };
        let mut finished_returns = Vec::new();
        let mut reward_sum = 0.0;
        for _ in 0..cfg.steps_per_update {
            let mean = mlp_forward(&actor_l, &cur.obs);
            let value = mlp_forward(&critic_l, &cur.obs)[0] as f64;
            let mut a = [0f32; KNOB_COUNT];
            for i in 0..KNOB_COUNT {
                let eps: f64 = rng.sample(StandardNormal);
                a[i] = mean[i] + (ls[i] as f64).exp() as f32 * eps as f32;
            }
            let logp = gaussian_log_prob(&a, &mean, &ls);
            let step = envs[cur.env].env.step(&clip01(&a));
            let r = step.reward;
            if let Some(t) = trace.as_deref_mut() {
                t.write(
                    "train",
                    update,
                    cur.episode,
                    cur.step,
                    &envs[cur.env].name,
                    &step,
                )?;
            }
            cur.step += 1;
            cur.ret += r;
            reward_sum += r;
            let done =
                step.done || (cfg.max_episode_steps > 0 && cur.step >= cfg.max_episode_steps);
            ro.obs.push(cur.obs);
            ro.actions.push(a);
            ro.logp.push(logp);
            ro.values.push(value);
            ro.rewards.push(r * cfg.reward_scale);
            ro.dones.push(done);
            env_steps += 1;
            if done {
                finished_returns.push(cur.ret);
                let e = rng.random_range(0..envs.len());
                let seed: u64 = rng.random();
                cur = Cursor {
                    env: e,
                    obs: envs[e].env.reset(seed),
                    episode: cur.episode + 1,
                    step: 0,
                    ret: 0.0,
                };
            } else {
                cur.obs = step.observation;
            }
        }
        let last_value = mlp_forward(&critic_l, &cur.obs)[0] as f64;
        let (adv, ret) = gae(
            &ro.rewards,
            &ro.values,
            &ro.dones,
            last_value,
            cfg.gamma,
            cfg.lambda,
        );
        if adv.iter().chain(&ret).any(|x| !x.is_finite()) {
            return Err(PpoError::NonFinite {
                update,
                what: "reward/advantage".into(),
            });
        }
        let n = adv.len();
        let mean_adv = adv.iter().sum::<f64>() / n as f64;
        let std_adv = (adv.iter().map(|a| (a - mean_adv).powi(2)).sum::<f64>() / n as f64)
            .sqrt()
            .max(1e-8);
        let adv_n: Vec<f32> = adv
            .iter()
            .map(|a| ((a - mean_adv) / std_adv) as f32)
            .collect();

        // ---- optimisation ----
        let obs_t = Tensor::from_vec(
            ro.obs
                .iter()
                .flat_map(|o| o.iter().copied())
                .collect::<Vec<f32>>(),
            (n, FEATURE_COUNT),
            &dev,
        )?;
        let act_t = Tensor::from_vec(
            ro.actions
                .iter()
                .flat_map(|o| o.iter().copied())
                .collect::<Vec<f32>>(),
            (n, KNOB_COUNT),
            &dev,
        )?;
        let oldlp_t = Tensor::from_vec(
            ro.logp.iter().map(|x| *x as f32).collect::<Vec<f32>>(),
            n,
            &dev,
        )?;
        let adv_t = Tensor::from_vec(adv_n, n, &dev)?;
        let ret_t = Tensor::from_vec(ret.iter().map(|x| *x as f32).collect::<Vec<f32>>(), n, &dev)?;
        let half_ln2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
        let (mut pl_sum, mut vl_sum, mut kl_sum, mut cf_sum, mut ent_last, mut batches) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0usize);
        let mut idx: Vec<u32> = (0..n as u32).collect();
        for _epoch in 0..cfg.epochs {
            // Fisher-Yates with our rng.
            for i in (1..idx.len()).rev() {
                let j = rng.random_range(0..=i);
                idx.swap(i, j);
            }
            for chunk in idx.chunks(cfg.minibatch) {
                let ids = Tensor::from_vec(chunk.to_vec(), chunk.len(), &dev)?;
                let o = obs_t.index_select(&ids, 0)?;
                let a = act_t.index_select(&ids, 0)?;
                let old = oldlp_t.index_select(&ids, 0)?;
                let ad = adv_t.index_select(&ids, 0)?;
                let rt = ret_t.index_select(&ids, 0)?;

                let mean = actor.forward(&o)?;
                let ls_t = log_std.as_tensor();
                let inv_std = ls_t.neg()?.exp()?;
                let z = a.sub(&mean)?.broadcast_mul(&inv_std)?;
                let lp = ((z.sqr()? * -0.5)?.broadcast_sub(ls_t)? - half_ln2pi)?.sum(1)?;
                let log_ratio = lp.sub(&old)?;
                let ratio = log_ratio.exp()?;
                let s1 = ratio.mul(&ad)?;
                let s2 = ratio.clamp(1.0 - cfg.clip, 1.0 + cfg.clip)?.mul(&ad)?;
                let pol_loss = s1.minimum(&s2)?.mean_all()?.neg()?;
                let entropy = (ls_t.sum_all()? + (KNOB_COUNT as f64 * (half_ln2pi + 0.5)))?;
                let loss_pi = (&pol_loss - (entropy.clone() * cfg.entropy_coef)?)?;
                let v = critic.forward(&o)?.squeeze(1)?;
                let loss_v = (v.sub(&rt)?.sqr()?.mean_all()? * 0.5)?;

                let lpi = loss_pi.to_scalar::<f32>()?;
                let lv = loss_v.to_scalar::<f32>()?;
                if !lpi.is_finite() || !lv.is_finite() {
                    return Err(PpoError::NonFinite {
                        update,
                        what: if lpi.is_finite() {
                            "value loss".into()
                        } else {
                            "policy loss".into()
                        },
                    });
                }
                let mut g = loss_pi.backward()?;
                grad_clip(&mut g, &actor_vars, cfg.max_grad_norm)?;
                opt_pi.step(&g)?;
                let mut g = loss_v.backward()?;
                grad_clip(&mut g, &critic_vars, cfg.max_grad_norm)?;
                opt_v.step(&g)?;
                // Keep exploration from collapsing.
                let clamped = log_std.as_tensor().clamp(cfg.min_log_std, 1.0)?;
                log_std.set(&clamped)?;

                // approx KL = E[(r - 1) - log r]
                let kl = ((ratio.clone() - 1.0)?.sub(&log_ratio)?)
                    .mean_all()?
                    .to_scalar::<f32>()?;
                let cf = ((ratio - 1.0)?
                    .abs()?
                    .gt(cfg.clip)?
                    .to_dtype(candle_core::DType::F32)?)
                .mean_all()?
                .to_scalar::<f32>()?;
                pl_sum += lpi as f64;
                vl_sum += lv as f64;
                kl_sum += kl as f64;
                cf_sum += cf as f64;
                ent_last = entropy.to_scalar::<f32>()? as f64;
                batches += 1;
            }
        }
        if !actor.is_finite()? || !critic.is_finite()? {
            return Err(PpoError::NonFinite {
                update,
                what: "network parameters".into(),
            });
        }
        last_log_std = log_std.as_tensor().to_vec1::<f32>()?;
        let mean_return = if finished_returns.is_empty() {
            f64::NAN
        } else {
            finished_returns.iter().sum::<f64>() / finished_returns.len() as f64
        };
        let stats = UpdateStats {
            update,
            env_steps,
            episodes: finished_returns.len(),
            mean_return,
            mean_step_reward: reward_sum / cfg.steps_per_update as f64,
            policy_loss: pl_sum / batches as f64,
            value_loss: vl_sum / batches as f64,
            entropy: ent_last,
            approx_kl: kl_sum / batches as f64,
            clip_fraction: cf_sum / batches as f64,
            elapsed_s: start.elapsed().as_secs_f64(),
        };
        pb.set_message(format!(
            "step reward {:.4} kl {:.4}",
            stats.mean_step_reward, stats.approx_kl
        ));
        pb.inc(1);
        history.push(stats);
        if let Some(dir) = &cfg.checkpoint_dir {
            if cfg.checkpoint_every > 0 && (update + 1) % cfg.checkpoint_every == 0 {
                std::fs::create_dir_all(dir).map_err(|e| PpoError::Checkpoint {
                    path: dir.clone(),
                    message: e.to_string(),
                })?;
                let path = dir.join(format!("ppo-{:04}.safetensors", update + 1));
                varmap.save(&path).map_err(|e| PpoError::Checkpoint {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            }
        }
    }
    if let Some(t) = trace {
        t.flush()?;
    }
    pb.finish_and_clear();
    Ok(PpoOutcome {
        actor: actor.to_layers()?,
        log_std: last_log_std,
        history,
        env_steps,
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}

/// Runs the deterministic actor for one episode per environment (seeded), writing each step to
/// `trace` (phase `test`). Returns the total reward per environment.
pub fn test_episodes(
    actor: &[MlpLayer],
    envs: &mut [NamedEnv],
    seed: u64,
    max_steps: usize,
    mut trace: Option<&mut StepTrace>,
) -> Result<Vec<(String, f64)>, PpoError> {
    let mut out = Vec::new();
    for (episode, ne) in envs.iter_mut().enumerate() {
        let mut obs = ne.env.reset(seed);
        let mut total = 0.0;
        let mut t = 0;
        loop {
            let a: [f32; KNOB_COUNT] = to_arr(&mlp_forward(actor, &obs));
            let step = ne.env.step(&clip01(&a));
            total += step.reward;
            if let Some(tr) = trace.as_deref_mut() {
                tr.write("test", 0, episode, t, &ne.name, &step)?;
            }
            t += 1;
            obs = step.observation;
            if step.done || (max_steps > 0 && t >= max_steps) {
                break;
            }
        }
        out.push((ne.name.clone(), total));
    }
    if let Some(tr) = trace {
        tr.flush()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_matches_hand_computation() {
        // gamma = 0.5, lambda = 0.5; episode ends after step 1; bootstrap 10 after step 2.
        let r = [1.0, 2.0, 3.0];
        let v = [0.5, 1.0, 2.0];
        let d = [false, true, false];
        let (adv, ret) = gae(&r, &v, &d, 10.0, 0.5, 0.5);
        // t=2: delta = 3 + 0.5*10 - 2 = 6; A2 = 6
        // t=1: terminal: delta = 2 - 1 = 1; A1 = 1
        // t=0: delta = 1 + 0.5*1.0 - 0.5 = 1; A0 = 1 + 0.25*1 = 1.25
        let want = [1.25, 1.0, 6.0];
        for (a, w) in adv.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adv:?}");
        }
        assert!((ret[0] - 1.75).abs() < 1e-12);
        assert!((ret[1] - 2.0).abs() < 1e-12);
        assert!((ret[2] - 8.0).abs() < 1e-12);
    }

    #[test]
    fn gae_with_lambda_one_is_discounted_return_minus_value() {
        let r = [1.0, 1.0, 1.0, 1.0];
        let v = [0.3, -0.2, 0.7, 0.1];
        let (adv, _) = gae(&r, &v, &[false, false, false, true], 99.0, 0.9, 1.0);
        let mut g = 0.0;
        for t in (0..4).rev() {
            g = r[t] + 0.9 * g;
            assert!((adv[t] - (g - v[t])).abs() < 1e-9);
        }
    }

    #[test]
    fn log_prob_of_standard_normal_at_mean() {
        let lp = gaussian_log_prob(&[0.0], &[0.0], &[0.0]);
        assert!((lp + 0.5 * (2.0 * std::f64::consts::PI).ln()).abs() < 1e-9);
    }
}
