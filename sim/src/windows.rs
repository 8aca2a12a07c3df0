//! Sliding-window features of a static configuration: what the live controller would compute
//! at each decision if the simulator's windows had been reported to it. Used to compare the
//! simulator's features with the live controller's, window by window, on the same load
//! (`testbed compare-windows`).
//!
//! The scenario runs with the same knobs throughout (as `run_episode_with` runs a
//! [`crate::StaticPolicy`]: same engine, seed and call sequence, so the windows are the same);
//! after window `w` the windows `w+1-W ..= w` are merged with
//! [`WindowStats::merge_sequential`], as `run_episode_with` merges its decision windows and as
//! the controller merges its one-second buckets, and turned into features with the state the
//! simulator gives the policy ([`crate::episode::context`]).

use crate::engine::Engine;
use crate::episode::{context, ChangeClock};
use crate::scenario::Scenario;
use meshtune_core::{Features, Knobs, WindowStats};
use std::collections::VecDeque;

/// One decision's sliding window in the simulator.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    /// Scenario windows completed when the decision is taken (the window covers scenario
    /// time `(end - merged) * window_s .. end * window_s` since the load started).
    pub end: u32,
    /// Scenario windows merged (`min(end, W)`).
    pub merged: u32,
    /// The merged counters.
    pub stats: WindowStats,
    /// The policy's features of the merged window.
    pub features: Features,
}

/// Runs `scenario` with `knobs` in force for its whole length (engine seeded with `seed`) and
/// returns, after every window, the features of the last `window_count` windows merged (one
/// entry per scenario window; `end` = 1, 2, …).
pub fn sliding_features(
    scenario: &Scenario,
    knobs: &Knobs,
    seed: u64,
    window_count: usize,
) -> Vec<SlidingWindow> {
    let mut engine = Engine::new(scenario, seed, knobs);
    let mut clock = ChangeClock::default();
    let mut in_force = Knobs::istio_defaults();
    let mut recent = RecentWindows::new(window_count);
    let mut out = Vec::with_capacity(scenario.windows.0 as usize);
    for w in 0..scenario.windows.0 {
        if w > 0 {
            engine.set_knobs(knobs);
        }
        let res = engine.run_window();
        clock.tick(&in_force, knobs);
        in_force = *knobs;
        let stats = recent.push(res.stats);
        let features = stats.features(&context(scenario, knobs, &clock));
        out.push(SlidingWindow {
            end: w + 1,
            merged: recent.len() as u32,
            stats,
            features,
        });
    }
    out
}

/// The last `W` windows of a destination, merged in order as the controller merges its
/// one-second buckets into its sliding window (`--window-secs`). One home for the simulator's
/// decision window: `run_episode_with`, [`sliding_features`] and the trainer's live loop.
#[derive(Debug, Clone)]
pub struct RecentWindows {
    count: usize,
    recent: VecDeque<WindowStats>,
}

impl RecentWindows {
    /// Keeps the last `count` windows (at least 1).
    pub fn new(count: usize) -> Self {
        let count = count.max(1);
        RecentWindows {
            count,
            recent: VecDeque::with_capacity(count),
        }
    }

    /// Forgets every window (a new episode).
    pub fn clear(&mut self) {
        self.recent.clear();
    }

    /// Windows held (`min(pushed, count)`).
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    /// Whether no window was pushed since the last clear.
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// Adds the window just run (dropping the oldest beyond `count`) and returns the held
    /// windows merged.
    pub fn push(&mut self, window: WindowStats) -> WindowStats {
        if self.recent.len() == self.count {
            self.recent.pop_front();
        }
        self.recent.push_back(window);
        merge_sequential(&self.recent)
    }
}

/// Consecutive windows merged in order (an empty window for none).
pub fn merge_sequential<'a>(windows: impl IntoIterator<Item = &'a WindowStats>) -> WindowStats {
    let mut it = windows.into_iter();
    let Some(first) = it.next() else {
        return WindowStats::default();
    };
    let mut merged = first.clone();
    for w in it {
        merged.merge_sequential(w);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::{run_episode_with, Objective};
    use meshtune_core::env::Policy;
    use meshtune_core::Knob;

    fn scenario() -> Scenario {
        Scenario::from_toml_str(
            r#"
name = "w"
seed = 5
window_s = 1.0
windows = 8
slo_ms = 200.0
clients = 2
[hosts]
count = 2
concurrency = 4
service = { dist = "exponential", mean_ms = 10.0 }
[load]
profile = "step"
rps = 200.0
to_rps = 900.0
at_s = 4.0
"#,
            "test",
        )
        .unwrap()
    }

    /// A static policy that keeps the features it is asked to decide from.
    struct Spy {
        knobs: Knobs,
        seen: Vec<Features>,
    }
    impl Policy for Spy {
        fn name(&self) -> &str {
            "spy"
        }
        fn decide(&mut self, f: &Features, _k: &Knobs) -> Knobs {
            self.seen.push(*f);
            self.knobs
        }
    }

    #[test]
    fn matches_the_decision_features_of_run_episode_with() {
        let sc = scenario();
        let mut knobs = Knobs::istio_defaults();
        knobs.set(Knob::Http2MaxRequests, 6.0);
        for w in [1usize, 3] {
            let mut spy = Spy {
                knobs,
                seen: Vec::new(),
            };
            run_episode_with(&sc, &mut spy, 9, &Objective::default(), w);
            let ours = sliding_features(&sc, &knobs, 9, w);
            assert_eq!(ours.len(), 8);
            // seen[0] is the initial decision; seen[i] follows window i-1 (none after the last).
            assert_eq!(spy.seen.len(), 8);
            for (i, s) in ours.iter().take(7).enumerate() {
                assert_eq!(s.features, spy.seen[i + 1], "W={w}, after window {i}");
                assert_eq!(s.end, i as u32 + 1);
                assert_eq!(s.merged, (i as u32 + 1).min(w as u32));
            }
        }
    }

    #[test]
    fn merged_window_counts_add_and_in_flight_averages() {
        let sc = scenario();
        let k = Knobs::istio_defaults();
        let one = sliding_features(&sc, &k, 3, 1);
        let three = sliding_features(&sc, &k, 3, 3);
        let sum: u64 = one[3..6].iter().map(|s| s.stats.requests).sum();
        assert_eq!(three[5].stats.requests, sum);
        assert!((three[5].stats.duration_s - 3.0).abs() < 1e-9);
        let avg: f64 = one[3..6].iter().map(|s| s.stats.inflight_avg).sum::<f64>() / 3.0;
        assert!((three[5].stats.inflight_avg - avg).abs() < 1e-9);
        let max = one[3..6]
            .iter()
            .map(|s| s.stats.inflight_max)
            .max()
            .unwrap();
        assert_eq!(three[5].stats.inflight_max, max);
        // The step shows in the rate: 200 rps before, ~900 after.
        assert!(one[1].features.0[0] < 300.0 && one[6].features.0[0] > 600.0);
        assert_eq!(merge_sequential([]), WindowStats::default());
    }
}
