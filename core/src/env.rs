//! Interfaces between the simulator, the trainer and the evaluation: an RL environment and a
//! policy. Pure traits so trainer code can be tested against toy environments.

use crate::dataset::Outcomes;
use crate::features::{Features, FEATURE_COUNT};
use crate::knobs::{Knobs, KNOB_COUNT};

/// Result of one environment step (one decision window).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Normalised features of the window that just ran (the next observation).
    pub observation: [f32; FEATURE_COUNT],
    /// Raw features of that window.
    pub features: Features,
    /// Knobs that were in force during the window (after clamping the action).
    pub knobs: Knobs,
    pub outcomes: Outcomes,
    pub reward: f64,
    /// The episode ended with this step.
    pub done: bool,
}

/// An episodic environment: observation = normalised features, action = normalised knobs.
pub trait Environment {
    /// Starts a new episode; returns the first observation.
    fn reset(&mut self, seed: u64) -> [f32; FEATURE_COUNT];
    /// Applies normalised knobs (clamped to [0, 1]) for one window and runs it.
    fn step(&mut self, action: &[f32; KNOB_COUNT]) -> Step;
}

/// Anything that decides knobs from a window's features: trained models, baselines, oracles.
pub trait Policy {
    fn name(&self) -> &str;
    /// Knobs for the next window, given the last window's features and the knobs in force.
    fn decide(&mut self, features: &Features, in_force: &Knobs) -> Knobs;
}
