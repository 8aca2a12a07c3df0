//! Closed-form and exact-count checks of the engine's Envoy and queueing semantics.

use meshtune_core::{Knob, Knobs};
use meshtune_sim::scenario::Scenario;
use meshtune_sim::Engine;

fn scenario(toml: &str) -> Scenario {
    Scenario::from_toml_str(toml, "test.toml").unwrap()
}

/// Knobs with every limit unlimited, no timeouts, no retries; `f` adjusts them.
fn knobs(f: impl FnOnce(&mut Knobs)) -> Knobs {
    let mut k = Knobs::istio_defaults();
    k.set(Knob::RetryAttempts, 0.0);
    f(&mut k);
    k
}

fn run(sc: &Scenario, k: &Knobs, seed: u64) -> Engine {
    let mut e = Engine::new(sc, seed, k);
    for _ in 0..sc.windows.0 {
        e.run_window();
    }
    e
}

/// Erlang C probability of waiting for an M/M/c queue with offered load a = λ/μ.
fn erlang_c(c: u32, a: f64) -> f64 {
    let mut term = 1.0;
    let mut sum = 1.0; // k = 0
    for k in 1..c {
        term *= a / k as f64;
        sum += term;
    }
    let last = term * a / c as f64 * (c as f64 / (c as f64 - a));
    last / (sum + last)
}

#[test]
fn mmc_queue_matches_erlang_c() {
    // One host = M/M/4: λ = 320/s, μ = 100/s, ρ = 0.8.
    let sc = scenario(
        r#"
name = "mmc"
window_s = 100.0
windows = 10
slo_ms = 1000.0
connect_ms = 0.0
rtt_ms = 0.0
[hosts]
count = 1
concurrency = 4
service = { dist = "exponential", mean_ms = 10.0 }
[load]
profile = "constant"
rps = 320.0
"#,
    );
    let (c, lambda, mu) = (4u32, 320.0, 100.0);
    let a = lambda / mu;
    let wq = erlang_c(c, a) / (c as f64 * mu - lambda);
    let w_expected_ms = (wq + 1.0 / mu) * 1000.0;
    let mut means = vec![];
    for seed in [42, 43, 44] {
        let mut e = Engine::new(&sc, seed, &knobs(|_| {}));
        let mut hist = meshtune_core::LatencyHistogram::new();
        let mut inflight = 0.0;
        for _ in 0..10 {
            let w = e.run_window();
            inflight += w.stats.inflight_avg / 10.0;
            hist.merge(&w.stats.latency);
        }
        let w_ms = hist.mean_us() / 1000.0;
        // Little's law: time-averaged in-flight = arrival rate x mean time in system.
        let little = lambda * w_ms / 1000.0;
        assert!(
            (inflight - little).abs() / little < 0.02,
            "in-flight {inflight} vs Little {little}"
        );
        eprintln!("M/M/4 seed {seed}: simulated mean {w_ms:.3} ms, Erlang C {w_expected_ms:.3} ms");
        assert!(hist.count() > 300_000, "{}", hist.count());
        assert!(
            (w_ms - w_expected_ms).abs() / w_expected_ms < 0.05,
            "seed {seed}: mean response {w_ms:.3} ms, Erlang C says {w_expected_ms:.3} ms"
        );
        let util = e.host_utilisation()[0];
        assert!((util - 0.8).abs() < 0.015, "utilisation {util}");
        assert_eq!(e.totals().ok, e.totals().completed);
        means.push(w_ms);
    }
    let mean = means.iter().sum::<f64>() / means.len() as f64;
    assert!(
        (mean - w_expected_ms).abs() / w_expected_ms < 0.03,
        "mean over seeds {mean:.3} ms vs Erlang C {w_expected_ms:.3} ms"
    );
    // A wrong model (e.g. one server fewer: M/M/3 is unstable here, M/M/5 much faster) would
    // be far outside these tolerances.
    let w_mm5 = (erlang_c(5, a) / (5.0 * mu - lambda) + 1.0 / mu) * 1000.0;
    assert!((w_mm5 - w_expected_ms).abs() / w_expected_ms > 0.2);
}

const DETERMINISTIC: &str = r#"
name = "det"
window_s = 0.1
windows = 1
slo_ms = 1000.0
connect_ms = 0.0
rtt_ms = 0.0
arrivals = "uniform"
[hosts]
count = 1
concurrency = 100
service = { dist = "constant", ms = 1000.0 }
[load]
profile = "constant"
rps = 100.0
"#;

#[test]
fn pending_overflow_counts_are_exact() {
    // Arrivals at 10, 20, ..., 90 ms; each request takes 1 s, so none completes in the window.
    let sc = scenario(DETERMINISTIC);
    let cases = [
        // (max connections, pending, max requests, expected UO)
        (2.0, 3.0, f64::MAX, 4), // 2 connected, 3 pending, 4 overflow
        (2.0, 1.0, f64::MAX, 6),
        (5.0, 0.0, f64::MAX, 4),
        (1e9, 1e9, 3.0, 6), // max_requests: 3 attached, 6 overflow
        (1e9, 1e9, 1e9, 0),
    ];
    for (conns, pending, maxreq, uo) in cases {
        let k = knobs(|k| {
            k.set(Knob::MaxConnections, conns);
            k.set(Knob::Http1MaxPendingRequests, pending);
            k.set(Knob::Http2MaxRequests, maxreq);
        });
        let mut e = Engine::new(&sc, 1, &k);
        let w = e.run_window();
        assert_eq!(w.arrivals, 9);
        assert_eq!(
            w.stats.flag_uo, uo,
            "conns {conns} pending {pending} maxreq {maxreq}"
        );
        assert_eq!(
            w.stats.requests, uo,
            "only overflows complete within the window"
        );
        assert_eq!(w.stats.status_5xx, uo);
        if uo > 0 {
            assert_eq!(
                w.stats.latency.max_us(),
                0,
                "overflow is an immediate local reply"
            );
        }
    }
}

#[test]
fn pending_requests_are_served_in_order_when_connections_free_up() {
    // 1 connection, 10 pending, 100 ms service, arrivals every 10 ms for 1 s: the connection
    // serves 10 requests back to back; pending never overflows until the queue holds 10.
    let sc = scenario(
        &DETERMINISTIC
            .replace("window_s = 0.1", "window_s = 1.0")
            .replace("ms = 1000.0", "ms = 100.0"),
    );
    let k = knobs(|k| {
        k.set(Knob::MaxConnections, 1.0);
        k.set(Knob::Http1MaxPendingRequests, 10.0);
    });
    let mut e = Engine::new(&sc, 1, &k);
    let w = e.run_window();
    // First request at 10 ms; completions at 110, 210, ..., 910 ms = 9 completed OK.
    assert_eq!(w.stats.status_2xx, 9);
    // 99 arrivals; 9 served, 1 in flight, 10 pending at the end; the rest overflowed.
    assert_eq!(w.arrivals, 99);
    assert_eq!(w.stats.flag_uo, 99 - 9 - 1 - 10);
}

#[test]
fn route_timeout_cuts_every_slow_request_at_the_timeout() {
    let sc = scenario(
        &DETERMINISTIC
            .replace("window_s = 0.1", "window_s = 1.0")
            .replace("windows = 1", "windows = 3")
            .replace("ms = 1000.0", "ms = 500.0")
            .replace("rps = 100.0", "rps = 50.0"),
    );
    let e = run(&sc, &knobs(|k| k.set(Knob::RouteTimeoutMs, 200.0)), 3);
    let t = e.totals();
    assert!(t.completed > 100);
    assert_eq!(t.timeouts, t.completed, "every request times out");
    assert_eq!(t.ok, 0);

    let mut e = Engine::new(&sc, 3, &knobs(|k| k.set(Knob::RouteTimeoutMs, 200.0)));
    let w = e.run_window();
    assert_eq!(w.stats.flag_ut, w.stats.requests);
    assert_eq!(w.stats.latency.min_us(), 200_000);
    assert_eq!(w.stats.latency.max_us(), 200_000);

    // Without a timeout the same requests succeed after the service time.
    let mut e = Engine::new(&sc, 3, &knobs(|_| {}));
    let w = e.run_window();
    assert_eq!(w.stats.flag_ut, 0);
    assert_eq!(w.stats.status_2xx, w.stats.requests);
    assert_eq!(w.stats.latency.min_us(), 500_000);

    // A timeout above the service time cuts nothing.
    let e = run(&sc, &knobs(|k| k.set(Knob::RouteTimeoutMs, 600.0)), 3);
    assert_eq!(e.totals().timeouts, 0);
}

#[test]
fn per_try_timeout_retries_then_route_timeout_caps_latency() {
    let sc = scenario(
        &DETERMINISTIC
            .replace("window_s = 0.1", "window_s = 1.0")
            .replace("windows = 1", "windows = 3")
            .replace("ms = 1000.0", "ms = 500.0")
            .replace("rps = 100.0", "rps = 20.0"),
    );
    let k = knobs(|k| {
        k.set(Knob::RouteTimeoutMs, 1000.0);
        k.set(Knob::PerTryTimeoutMs, 100.0);
        k.set(Knob::RetryAttempts, 2.0);
    });
    let mut e = Engine::new(&sc, 9, &k);
    let w = e.run_window();
    assert!(w.stats.requests > 5);
    assert_eq!(w.stats.flag_ut, w.stats.requests);
    // 3 tries of 100 ms plus back-offs of at most 25 ms and 75 ms.
    assert!(w.stats.latency.min_us() >= 300_000);
    assert!(w.stats.latency.max_us() <= 400_000);
}

/// All responses 503; load stops after 1 s so every request completes by the end.
const ALL_ERRORS: &str = r#"
name = "errors"
window_s = 1.0
windows = 3
slo_ms = 1000.0
[hosts]
count = 3
concurrency = 50
service = { dist = "exponential", mean_ms = 5.0 }
error_rate = 1.0
[load]
profile = "step"
rps = 300.0
to_rps = 0.0
at_s = 1.0
"#;

#[test]
fn retries_are_bounded_by_attempts() {
    let sc = scenario(ALL_ERRORS);
    for attempts in [0u64, 1, 2, 4] {
        let k = knobs(|k| {
            k.set(Knob::RetryAttempts, attempts as f64);
            k.set(Knob::Consecutive5xxErrors, 100_000.0);
        });
        let e = run(&sc, &k, 11);
        let t = e.totals();
        assert!(t.arrivals > 200);
        assert_eq!(t.completed, t.arrivals, "all requests completed");
        assert_eq!(t.upstream_503, t.completed);
        assert_eq!(t.retries, attempts * t.completed, "attempts {attempts}");
        let tries: u64 = t.attempts_per_host.iter().sum();
        assert_eq!(tries, (attempts + 1) * t.completed);
    }
}

#[test]
fn retries_are_bounded_by_the_cluster_retry_budget() {
    let sc = scenario(
        &ALL_ERRORS
            .replace("rps = 300.0", "rps = 2000.0")
            .replace("mean_ms = 5.0", "mean_ms = 50.0"),
    );
    let unlimited = run(
        &sc,
        &knobs(|k| {
            k.set(Knob::RetryAttempts, 2.0);
            k.set(Knob::Consecutive5xxErrors, 100_000.0);
        }),
        5,
    );
    let budget = run(
        &sc,
        &knobs(|k| {
            k.set(Knob::RetryAttempts, 2.0);
            k.set(Knob::MaxRetries, 3.0);
            k.set(Knob::Consecutive5xxErrors, 100_000.0);
        }),
        5,
    );
    let (u, b) = (unlimited.totals(), budget.totals());
    assert_eq!(u.retries, 2 * u.completed);
    assert!(u.max_active_retries > 3, "{}", u.max_active_retries);
    assert_eq!(
        b.max_active_retries, 3,
        "never more than 3 outstanding retries"
    );
    assert!(
        b.retries > 0 && b.retries < u.retries / 2,
        "{} vs {}",
        b.retries,
        u.retries
    );
}

#[test]
fn retries_go_to_another_host() {
    // Host 0 always fails, host 1 never: one retry always lands on host 1.
    let sc = scenario(&ALL_ERRORS.replace("count = 3", "count = 2").replace(
        "error_rate = 1.0",
        "error_rate = 0.0\nfailures = [{ kind = \"errors\", host = 0, error_rate = 1.0 }]",
    ));
    let e = run(
        &sc,
        &knobs(|k| {
            k.set(Knob::RetryAttempts, 1.0);
            k.set(Knob::Consecutive5xxErrors, 100_000.0);
        }),
        8,
    );
    let t = e.totals();
    assert_eq!(t.ok, t.completed);
    assert!(
        t.retries > 50,
        "host 0 got traffic and its failures were retried"
    );
}

#[test]
fn outlier_detection_ejects_the_bad_host() {
    let sc = scenario(
        r#"
name = "eject"
window_s = 1.0
windows = 10
slo_ms = 1000.0
[hosts]
count = 3
concurrency = 50
service = { dist = "exponential", mean_ms = 5.0 }
failures = [{ kind = "errors", host = 0, error_rate = 1.0 }]
[load]
profile = "constant"
rps = 300.0
"#,
    );
    let k = knobs(|k| {
        k.set(Knob::Consecutive5xxErrors, 5.0);
        k.set(Knob::BaseEjectionTimeMs, 300_000.0);
        // One host of three is 33 %: a cap of 10 % (Istio's default) would eject none.
        k.set(Knob::MaxEjectionPercent, 50.0);
    });
    let mut e = Engine::new(&sc, 4, &k);
    let first = e.run_window();
    // The `endpoints` feature counts the hosts that got attempts (what the filter sees): all
    // three before the ejection, two once host 0 is out.
    assert_eq!(first.stats.endpoints, 3);
    let mut later_errors = 0;
    for _ in 1..10 {
        let w = e.run_window();
        later_errors += w.stats.status_5xx;
        assert_eq!(w.stats.endpoints, 2, "the ejected host is not seen");
    }
    let t = e.totals();
    assert_eq!(t.ejections_per_host, vec![1, 0, 0]);
    assert!((5..=10).contains(&t.upstream_503), "{}", t.upstream_503);
    assert!(first.stats.status_5xx >= 5);
    assert_eq!(later_errors, 0, "no traffic reaches the ejected host");

    // Without ejection (threshold never reached) a third of the requests fail.
    let k2 = knobs(|k| k.set(Knob::Consecutive5xxErrors, 100_000.0));
    let e2 = run(&sc, &k2, 4);
    let frac = e2.totals().upstream_503 as f64 / e2.totals().completed as f64;
    assert!(frac > 0.2, "{frac}");
}

#[test]
fn max_ejection_percent_limits_ejections() {
    let sc = scenario(
        r#"
name = "eject2"
window_s = 1.0
windows = 3
slo_ms = 1000.0
[hosts]
count = 4
concurrency = 50
service = { dist = "exponential", mean_ms = 5.0 }
failures = [{ kind = "errors", host = 0, error_rate = 1.0 }, { kind = "errors", host = 1, error_rate = 1.0 }]
[load]
profile = "constant"
rps = 400.0
"#,
    );
    let eject = |pct: f64| {
        let k = knobs(|k| {
            k.set(Knob::Consecutive5xxErrors, 3.0);
            k.set(Knob::BaseEjectionTimeMs, 300_000.0);
            k.set(Knob::MaxEjectionPercent, pct);
        });
        run(&sc, &k, 2).totals().ejections
    };
    // As Envoy without `always_eject_one_host` (Istio does not set it): one host of four is
    // 25 %, over a 10 % cap, so nothing is ejected; 25 % lets one go, 50 % two.
    assert_eq!(eject(10.0), 0, "one host of four is over a 10 % cap");
    assert_eq!(eject(25.0), 1);
    assert_eq!(eject(50.0), 2);
}

#[test]
fn same_seed_same_result_different_seed_different() {
    let sc = scenario(
        r#"
name = "repro"
window_s = 1.0
windows = 5
slo_ms = 100.0
clients = 3
[hosts]
count = 4
concurrency = 4
service = { dist = "lognormal", mean_ms = 20.0, sigma = 0.7 }
error_rate = 0.05
failures = [{ kind = "slow", host = 1, at_s = 2.0, factor = 4.0 }]
[load]
profile = "bursts"
rps = 500.0
burst_rps = 1200.0
every_s = 2.0
duration_s = 0.5
"#,
    );
    let k = meshtune_sim::hand_tuned().knobs;
    let windows = |seed| {
        let mut e = Engine::new(&sc, seed, &k);
        (0..5).map(|_| e.run_window().stats).collect::<Vec<_>>()
    };
    assert_eq!(windows(7), windows(7));
    assert_ne!(windows(7), windows(8));
}

#[test]
fn istio_defaults_are_unlimited() {
    let l = meshtune_sim::Limits::from_knobs(&Knobs::istio_defaults());
    assert_eq!(l.max_connections, u64::MAX);
    assert_eq!(l.max_pending, u64::MAX);
    assert_eq!(l.max_requests, u64::MAX);
    assert_eq!(l.max_retries, u64::MAX);
    assert_eq!(l.route_timeout_us, 0);
    assert_eq!(l.per_try_timeout_us, 0);
    assert_eq!(l.retry_attempts, 2);
    assert_eq!(l.max_requests_per_connection, 0);
}

#[test]
fn max_requests_per_connection_forces_new_connections() {
    // Sequential requests (one every 10 ms, 5 ms service): with keep-alive only the first
    // pays the 2 ms connect; with 1 request per connection every request does.
    let sc = scenario(
        &DETERMINISTIC
            .replace("window_s = 0.1", "window_s = 1.0")
            .replace("connect_ms = 0.0", "connect_ms = 2.0")
            .replace("ms = 1000.0", "ms = 5.0"),
    );
    let mut keep = Engine::new(&sc, 1, &knobs(|_| {}));
    let w = keep.run_window().stats.latency;
    assert_eq!((w.min_us(), w.max_us()), (5_000, 7_000));
    let mut recycle = Engine::new(
        &sc,
        1,
        &knobs(|k| k.set(Knob::MaxRequestsPerConnection, 1.0)),
    );
    let w = recycle.run_window().stats.latency;
    assert_eq!((w.min_us(), w.max_us()), (7_000, 7_000));
}

#[test]
fn a_down_host_fails_connections_and_retries_recover() {
    let sc = scenario(
        r#"
name = "down"
window_s = 1.0
windows = 3
slo_ms = 1000.0
[hosts]
count = 2
concurrency = 50
service = { dist = "exponential", mean_ms = 5.0 }
failures = [{ kind = "down", host = 1 }]
[load]
profile = "constant"
rps = 200.0
"#,
    );
    let no_retry = run(
        &sc,
        &knobs(|k| k.set(Knob::Consecutive5xxErrors, 100_000.0)),
        6,
    );
    let t = no_retry.totals();
    let frac = t.conn_failures as f64 / t.completed as f64;
    assert!(
        (0.3..0.7).contains(&frac),
        "about half the requests hit the down host: {frac}"
    );
    let retry = run(
        &sc,
        &knobs(|k| {
            k.set(Knob::RetryAttempts, 1.0);
            k.set(Knob::Consecutive5xxErrors, 100_000.0);
        }),
        6,
    );
    assert_eq!(retry.totals().conn_failures, 0);
    assert_eq!(retry.totals().ok, retry.totals().completed);
}
