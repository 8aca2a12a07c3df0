//! A toy environment with a known optimum, shared by the integration tests.
#![allow(dead_code)]

use meshtune_core::dataset::Outcomes;
use meshtune_core::env::{Environment, Step};
use meshtune_core::{Features, Knobs, FEATURE_COUNT, KNOB_COUNT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Each episode draws a context c in [0.1, 0.9], shown as observation[0]. The best action is
/// `target(c)`; reward = -10 × mean squared distance to it (optimum 0 per step).
pub struct ToyEnv {
    pub c: f32,
    pub t: usize,
    pub len: usize,
    /// Return NaN rewards (to exercise the NaN guard).
    pub poison: bool,
}

pub fn target(c: f32) -> [f32; KNOB_COUNT] {
    let mut t = [0.85f32; KNOB_COUNT];
    for (k, v) in t.iter_mut().enumerate().take(5) {
        *v = if k % 2 == 0 {
            0.2 + 0.6 * c
        } else {
            0.8 - 0.6 * c
        };
    }
    t
}

impl ToyEnv {
    pub fn new(len: usize) -> Self {
        ToyEnv {
            c: 0.5,
            t: 0,
            len,
            poison: false,
        }
    }

    pub fn obs(&self) -> [f32; FEATURE_COUNT] {
        let mut o = [0f32; FEATURE_COUNT];
        o[0] = self.c;
        o[1] = 1.0 - self.c;
        o
    }
}

pub fn sq_err(a: &[f32; KNOB_COUNT], c: f32) -> f64 {
    let t = target(c);
    a.iter()
        .zip(t)
        .map(|(a, t)| ((a.clamp(0.0, 1.0) - t) as f64).powi(2))
        .sum::<f64>()
        / KNOB_COUNT as f64
}

impl Environment for ToyEnv {
    fn reset(&mut self, seed: u64) -> [f32; FEATURE_COUNT] {
        let mut rng = StdRng::seed_from_u64(seed);
        self.c = rng.random_range(0.1..0.9);
        self.t = 0;
        self.obs()
    }

    fn step(&mut self, action: &[f32; KNOB_COUNT]) -> Step {
        self.t += 1;
        let reward = if self.poison {
            f64::NAN
        } else {
            -10.0 * sq_err(action, self.c)
        };
        Step {
            observation: self.obs(),
            features: Features::default(),
            knobs: Knobs::from_normalised(action),
            outcomes: Outcomes {
                reward,
                ..Default::default()
            },
            reward,
            done: self.t >= self.len,
        }
    }
}
