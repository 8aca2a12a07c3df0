//! The live controller's features against the simulator's, window by window, on the same
//! constant load (`meshtune_testbed::compare_windows`): real Envoy with the real filter in two
//! client Envoys, the real controller in observe mode recording its features, and the
//! simulator running the same scenario, seed and static knobs, merged over the same sliding
//! window. Loopback only; processes stop on drop.

use meshtune_core::Knobs;
use meshtune_e2e::{prereqs, serial};
use meshtune_sim::scenario::Scenario;
use meshtune_testbed::compare_windows::{compare, summarise};

/// A constant 400 rps over two client Envoys to two hosts serving 8 at once (~10 ms, a
/// quarter of their capacity), Istio defaults; the controller decides every second on its
/// last 10 s (4,000 requests a window: the two sides' independent Poisson arrivals differ by
/// ~2.2 % (1σ) a window; on a loaded machine late flushes move up to ~5 % more across a
/// window's edges). In every full window the live and simulated rates agree within
/// 10 %, the median latency within 50 % or 4 ms and the in-flight average (rate × latency)
/// within 50 % (the real path adds loopback, two Envoys and a loaded machine to the simulated
/// service time: +0.5–1 ms, +10–15 % in-flight when measured), both see 2 clients and 2
/// endpoints and no 5xx, with the same knobs in force.
#[test]
fn live_and_simulated_features_agree_window_by_window_at_constant_load() {
    let Some(paths) = prereqs(false) else { return };
    let _g = serial();
    let sc = Scenario::from_toml_str(
        r#"
name = "constant"
seed = 11
window_s = 1.0
windows = 17
slo_ms = 250.0
clients = 2
[hosts]
count = 2
concurrency = 8
service = { dist = "exponential", mean_ms = 10.0 }
[load]
profile = "constant"
rps = 400.0
"#,
        "test",
    )
    .expect("valid scenario");
    let knobs = Knobs::istio_defaults();
    let c = compare(&paths, &sc, "istio defaults", &knobs, 10, |_| {}).expect("runs");
    let t = meshtune_testbed::compare_windows::table(&c.pairs);
    eprintln!("{t}\n{:?}", c.alignment);
    assert!(
        c.pairs.len() >= 5,
        "windows 12..17 should be compared, got {:?}",
        c.alignment
    );
    for p in &c.pairs {
        let f = |side: &meshtune_core::Features, n: &str| side.get(n).expect("feature");
        let (sr, lr) = (f(&p.sim, "rps"), f(&p.live, "rps"));
        assert!(
            (sr - lr).abs() <= 0.10 * lr,
            "t={}: rps sim {sr:.1} live {lr:.1}\n{t}",
            p.end
        );
        let (si, li) = (f(&p.sim, "inflight_avg"), f(&p.live, "inflight_avg"));
        assert!(
            (si - li).abs() <= 0.50 * li,
            "t={}: in-flight sim {si:.2} live {li:.2}\n{t}",
            p.end
        );
        let (sp, lp) = (f(&p.sim, "latency_p50_ms"), f(&p.live, "latency_p50_ms"));
        assert!(
            (sp - lp).abs() <= (0.50 * lp).max(4.0),
            "t={}: p50 sim {sp:.1} live {lp:.1} ms\n{t}",
            p.end
        );
        for n in ["clients", "endpoints"] {
            assert_eq!(f(&p.sim, n), 2.0, "t={}: sim {n}", p.end);
            assert_eq!(f(&p.live, n), 2.0, "t={}: live {n}\n{t}", p.end);
        }
        assert!(p.knobs_differing().is_empty(), "t={}", p.end);
        assert_eq!(f(&p.live, "error_5xx_rate"), 0.0, "t={}\n{t}", p.end);
    }
    // The summary covers every compared feature.
    assert_eq!(summarise(&c.pairs).len(), 11);
}
