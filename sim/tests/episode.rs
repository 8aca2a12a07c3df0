//! Episodes, the RL environment, dataset rows, baselines and the evaluation sanity check.

use meshtune_core::dataset::{check_header, header, DatasetRow};
use meshtune_core::env::{Environment, Policy};
use meshtune_core::knobs::KNOB_SPECS;
use meshtune_core::{Features, Knobs, FEATURE_COUNT, KNOB_COUNT};
use meshtune_sim::cli::{summary_header, summary_line};
use meshtune_sim::scenario::Scenario;
use meshtune_sim::*;

fn train(name: &str, windows: u32) -> Scenario {
    let mut s = load_dir(&train_dir())
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap();
    s.windows = meshtune_sim::scenario::AtLeastOne(windows);
    s
}

#[test]
fn run_episode_is_reproducible_and_seed_dependent() {
    let sc = train("slow_host", 12);
    let obj = Objective::default();
    let a = run_episode(&sc, &mut hand_tuned(), 3, &obj);
    let b = run_episode(&sc, &mut hand_tuned(), 3, &obj);
    let c = run_episode(&sc, &mut hand_tuned(), 4, &obj);
    assert_eq!(a.steps, b.steps);
    assert_eq!(a.summary, b.summary);
    assert_ne!(a.summary, c.summary);
    assert_eq!(a.steps.len(), 12);
    assert!(a.steps.last().unwrap().done && !a.steps[0].done);
    assert_eq!(a.latency.count(), a.summary.requests);
    let sum: f64 = a.steps.iter().map(|s| s.reward).sum();
    assert!((sum - a.summary.total_reward).abs() < 1e-9);
    for s in &a.steps {
        assert_eq!(s.observation, s.features.normalised());
        assert_eq!(s.knobs, hand_tuned().knobs);
    }
}

#[test]
fn objective_rewards_goodput_and_penalises_failures_and_churn() {
    let o = Objective::default();
    let mut out = meshtune_core::dataset::Outcomes {
        offered_rps: 100.0,
        slo_goodput_rps: 100.0,
        ..Default::default()
    };
    assert!((o.reward(&out, 0.0) - 1.0).abs() < 1e-12);
    let churned = o.reward(&out, 0.5);
    assert!(churned < 1.0);
    out.slo_goodput_rps = 50.0;
    out.error_rate = 0.5;
    out.shed_rate = 0.5;
    let shed = o.reward(&out, 0.0);
    out.shed_rate = 0.0;
    out.timeout_rate = 0.5;
    let timed_out = o.reward(&out, 0.0);
    assert!(
        shed < 0.5 && timed_out < shed,
        "a timeout costs more than a shed"
    );
}

#[test]
fn mesh_env_steps_through_an_episode() {
    let sc = train("bursts", 6);
    let mut env = MeshEnv::new(sc, Objective::default());
    let obs = env.reset(1);
    // No traffic yet; the state: Istio defaults in force (normalised 1 where unlimited),
    // never changed, the scenario's clients and SLO.
    let window = meshtune_core::features::WINDOW_FEATURE_COUNT;
    assert_eq!(
        obs[..window],
        [0.0; meshtune_core::features::WINDOW_FEATURE_COUNT]
    );
    assert_eq!(obs.len(), FEATURE_COUNT);
    assert_eq!(
        obs[meshtune_core::features::KNOB_FEATURE_OFFSET + 2],
        1.0,
        "http2MaxRequests unlimited"
    );
    assert_eq!(
        obs[FEATURE_COUNT - 2],
        1.0,
        "never changed reads as the cap"
    );
    assert!(obs[FEATURE_COUNT - 1] > 0.0, "the SLO target is an input");
    let mut rewards = vec![];
    for i in 0..6 {
        let action = [if i % 2 == 0 { 0.3 } else { 7.0 }; KNOB_COUNT];
        let step = env.step(&action);
        assert_eq!(step.done, i == 5);
        assert!(step.reward.is_finite());
        assert!(step.observation[0] > 0.0, "traffic is observed");
        assert_eq!(
            step.features.get("secs_since_change"),
            Some(1.0),
            "the action changes the knobs every window"
        );
        for (v, spec) in step.knobs.0.iter().zip(&KNOB_SPECS) {
            assert!(*v >= spec.min && *v <= spec.max, "{} = {v}", spec.name);
        }
        rewards.push(step.reward);
    }
    // Same seed, same actions: same rewards.
    env.reset(1);
    for (i, r) in rewards.iter().enumerate() {
        let action = [if i % 2 == 0 { 0.3 } else { 7.0 }; KNOB_COUNT];
        assert_eq!(env.step(&action).reward, *r);
    }
}

#[test]
fn sweep_rows_round_trip_through_the_core_parser() {
    let scs = vec![train("failing_host", 4), train("diurnal", 3)];
    let grid = KnobGrid::small();
    let mut buf = Vec::new();
    let stats = sweep(&scs, &grid, &[1, 2], &Objective::default(), &mut buf).unwrap();
    let expected_rows = (4 + 3) * grid.len() as u64 * 2;
    assert_eq!(stats.rows, expected_rows);
    assert_eq!(stats.episodes, 2 * 2 * grid.len() as u64);
    let mut rd = csv::Reader::from_reader(buf.as_slice());
    let hdr: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    check_header(&hdr).unwrap();
    assert_eq!(hdr, header());
    let mut n = 0;
    let mut knob_settings = std::collections::HashSet::new();
    for rec in rd.records() {
        let rec = rec.unwrap();
        let fields: Vec<&str> = rec.iter().collect();
        let row = DatasetRow::from_record(&fields).unwrap();
        assert_eq!(row.source, "sim");
        assert!(row.scenario == "failing_host" || row.scenario == "diurnal");
        assert_eq!(
            row.to_record(),
            fields,
            "row {n} is a fixed point of the format"
        );
        assert!(row.outcomes.offered_rps > 0.0);
        knob_settings.insert(format!("{:?}", row.knobs.0));
        n += 1;
    }
    assert_eq!(n, expected_rows);
    assert_eq!(knob_settings.len(), grid.len());
    // Deterministic output.
    let mut again = Vec::new();
    sweep(&scs, &grid, &[1, 2], &Objective::default(), &mut again).unwrap();
    assert_eq!(buf, again);
}

#[test]
fn grid_enumerates_every_combination() {
    let g = KnobGrid::oracle_default();
    let all = g.settings();
    assert_eq!(all.len(), 288);
    let unique: std::collections::HashSet<String> =
        all.iter().map(|k| format!("{:?}", k.0)).collect();
    assert_eq!(unique.len(), 288);
    assert_eq!(KnobGrid::wide().settings().len(), 576);
    assert_eq!(KnobGrid::small().len(), 24);
}

#[test]
fn gradient_controller_probes_then_adapts() {
    let mut g = GradientController::default();
    let k0 = g.decide(&Features::default(), &Knobs::istio_defaults());
    assert_eq!(
        k0.get(meshtune_core::Knob::Http2MaxRequests),
        3.0,
        "probe at min"
    );
    let mut f = Features::default();
    f.0[0] = 100.0; // rps
    f.0[4] = 10.0; // mean ms
    g.decide(&f, &k0);
    assert_eq!(g.min_rtt_ms(), Some(10.0));
    // Latency at minRTT: the limit grows; latency 4x minRTT: it shrinks.
    let before = g.limit();
    g.decide(&f, &k0);
    assert!(g.limit() > before);
    for _ in 0..5 {
        g.decide(&f, &k0);
    }
    let grown = g.limit();
    f.0[4] = 40.0;
    g.decide(&f, &k0);
    assert!(g.limit() < grown, "{} < {grown}", g.limit());
}

/// Evaluation sanity check (printed): under overload a tuned static config beats Istio
/// defaults on SLO goodput.
#[test]
fn tuned_static_config_beats_istio_defaults_under_overload() {
    let sc = train("overload_constant", 20);
    let obj = Objective::default();
    let seed = 42;
    let istio = run_episode(&sc, &mut IstioDefaults, seed, &obj).summary;
    let hand = run_episode(&sc, &mut hand_tuned(), seed, &obj).summary;
    let grad = run_episode(&sc, &mut GradientController::default(), seed, &obj).summary;
    let (oracle_knobs, oracle) = oracle_grid_search(&sc, seed, &obj, &KnobGrid::small());
    eprintln!(
        "scenario {} (capacity {:.0} rps)",
        sc.name,
        sc.capacity_rps()
    );
    eprintln!("{}", summary_header());
    eprintln!("{}", summary_line("istio-defaults", &istio));
    eprintln!("{}", summary_line("hand-tuned", &hand));
    eprintln!("{}", summary_line("gradient", &grad));
    eprintln!("{}", summary_line("oracle(small)", &oracle));
    eprintln!("oracle knobs {:?}", oracle_knobs.0);
    assert!(
        oracle.slo_goodput_fraction > istio.slo_goodput_fraction + 0.3,
        "oracle {} vs istio {}",
        oracle.slo_goodput_fraction,
        istio.slo_goodput_fraction
    );
    assert!(oracle.total_reward >= hand.total_reward && oracle.total_reward > istio.total_reward);
    assert!(grad.slo_goodput_fraction > istio.slo_goodput_fraction);
}

/// Records the request rate of every window it is asked to decide on.
struct RateRecorder(Vec<f64>);

impl Policy for RateRecorder {
    fn name(&self) -> &str {
        "rate-recorder"
    }
    fn decide(&mut self, features: &Features, in_force: &Knobs) -> Knobs {
        self.0.push(features.get("rps").unwrap_or(0.0));
        *in_force
    }
}

/// The live loop's sliding window: deciding on the last 3 windows sees the mean rate of
/// those windows (a step shows up gradually), while the steps keep each window's own figures.
#[test]
fn decisions_on_a_sliding_window_see_the_merged_windows() {
    let sc = train("step_overload", 30);
    let obj = Objective::default();
    let mut one = RateRecorder(Vec::new());
    let per_window = run_episode_with(&sc, &mut one, 5, &obj, 1);
    let mut three = RateRecorder(Vec::new());
    let sliding = run_episode_with(&sc, &mut three, 5, &obj, 3);
    // Same knobs (the recorder never changes them), so the same traffic and steps.
    assert_eq!(per_window.steps, sliding.steps);
    let rate: Vec<f64> = per_window
        .steps
        .iter()
        .map(|s| s.features.get("rps").unwrap())
        .collect();
    // Decision i (after window i-1; decision 0 is before any window).
    assert_eq!(one.0[1..], rate[..rate.len() - 1]);
    for w in 2..rate.len() - 1 {
        let mean = (rate[w - 2] + rate[w - 1] + rate[w]) / 3.0;
        assert!(
            (three.0[w + 1] - mean).abs() < 1e-6 * mean.max(1.0),
            "window {w}"
        );
    }
    // The step is visible: the sliding rate lags the per-window rate somewhere.
    assert!((2..rate.len() - 1).any(|w| (three.0[w + 1] - rate[w]).abs() > 0.05 * rate[w]));
}

#[test]
fn service_jitter_scales_each_episode_within_its_range() {
    let sc = train("light_steady", 6);
    let plain = MeshEnv::new(sc.clone(), Objective::default());
    assert_eq!(plain.service_factor(5), 1.0);
    let env = MeshEnv::new(sc.clone(), Objective::default()).with_service_jitter(0.25);
    let factors: Vec<f64> = (0..200).map(|s| env.service_factor(s)).collect();
    assert!(factors
        .iter()
        .all(|f| (1.0 / 1.25 - 1e-12..=1.25 + 1e-12).contains(f)));
    assert!(factors.iter().any(|f| *f < 0.85) && factors.iter().any(|f| *f > 1.15));
    assert_eq!(env.service_factor(7), env.service_factor(7), "seeded");
    let doubled = sc.hosts.service.scaled(2.0);
    assert!((doubled.mean_ms() - 2.0 * sc.hosts.service.mean_ms()).abs() < 1e-9);

    // The factor reaches the engine: the slowest episode's median latency is above the
    // fastest one's by about their ratio.
    let slow_seed = (0..200u64)
        .max_by(|a, b| factors[*a as usize].total_cmp(&factors[*b as usize]))
        .unwrap();
    let fast_seed = (0..200u64)
        .min_by(|a, b| factors[*a as usize].total_cmp(&factors[*b as usize]))
        .unwrap();
    let p50 = |seed: u64| {
        let mut e = MeshEnv::new(sc.clone(), Objective::default()).with_service_jitter(0.25);
        e.reset(seed);
        let mut last = 0.0;
        for _ in 0..4 {
            let s = e.step(&Knobs::istio_defaults().normalised());
            last = s.features.get("latency_p50_ms").unwrap();
        }
        last
    };
    let ratio = p50(slow_seed) / p50(fast_seed);
    let expected = factors[slow_seed as usize] / factors[fast_seed as usize];
    assert!(
        ratio > 0.8 * expected && ratio < 1.2 * expected,
        "{ratio} vs {expected}"
    );
}
