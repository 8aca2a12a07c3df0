//! Simulator scenario files on real Envoy (`meshtune_testbed::realrun`): hosts with timed
//! faults behind several client Envoys, static knobs rendered as the controller's Envoy sink
//! renders them, Envoy's adaptive concurrency filter, and meshtune enforcing through CDS/RDS
//! files. Short scenarios (a few 1 s windows); loopback only; processes stop on drop.

use meshtune_core::{Knob, Knobs};
use meshtune_e2e::{prereqs, serial};
use meshtune_sim::scenario::Scenario;
use meshtune_testbed::realrun::{self, Arm};

fn scenario(toml: &str) -> Scenario {
    Scenario::from_toml_str(toml, "test").expect("valid scenario")
}

/// Host 1 of 2 is down from 2 s to 4 s; without retries or outlier detection about half of
/// the requests fail exactly then, and both clients see it.
#[test]
fn down_host_fails_requests_only_while_down() {
    let Some(paths) = prereqs(false) else { return };
    let _g = serial();
    let sc = scenario(
        r#"
name = "down"
seed = 1
window_s = 1.0
windows = 7
slo_ms = 200.0
clients = 2
[hosts]
count = 2
concurrency = 16
service = { dist = "constant", ms = 2.0 }
[[hosts.failures]]
kind = "down"
host = 1
at_s = 2.0
until_s = 4.0
[load]
profile = "constant"
rps = 200.0
"#,
    );
    let mut knobs = Knobs::istio_defaults();
    knobs.set(Knob::RetryAttempts, 0.0);
    knobs.set(Knob::Consecutive5xxErrors, 0.0);
    let r = realrun::run(
        &paths,
        &sc,
        &Arm::Static {
            name: "no retries".into(),
            knobs,
        },
        7,
        |_| {},
    )
    .expect("scenario runs");
    assert_eq!(r.windows.len(), 7);
    let frac = |i: usize| r.windows[i].errors as f64 / r.windows[i].sent.max(1) as f64;
    for i in [0, 1, 5, 6] {
        assert!(frac(i) < 0.05, "window {i} while up: {:?}", r.windows[i]);
    }
    for i in [2, 3] {
        assert!(
            (0.25..0.75).contains(&frac(i)),
            "window {i} while down: {:?}",
            r.windows[i]
        );
    }
    // 200 rps for 7 s, Poisson.
    assert!((1_200..1_600).contains(&r.offered), "{}", r.offered);
    assert_eq!(r.max_attempts(), 1.0, "no retries configured");
}

/// With retries on connect failures the same outage is hidden from the clients, and the
/// attempts per request show the retries.
#[test]
fn retries_hide_a_down_host_and_count_as_attempts() {
    let Some(paths) = prereqs(false) else { return };
    let _g = serial();
    let sc = scenario(
        r#"
name = "down-retried"
seed = 2
window_s = 1.0
windows = 4
slo_ms = 200.0
clients = 1
[hosts]
count = 2
concurrency = 16
service = { dist = "constant", ms = 2.0 }
[[hosts.failures]]
kind = "down"
host = 1
at_s = 1.0
until_s = 3.0
[load]
profile = "constant"
rps = 200.0
"#,
    );
    let mut knobs = Knobs::istio_defaults();
    knobs.set(Knob::RetryAttempts, 2.0);
    knobs.set(Knob::Consecutive5xxErrors, 0.0);
    let r = realrun::run(
        &paths,
        &sc,
        &Arm::Static {
            name: "retries".into(),
            knobs,
        },
        3,
        |_| {},
    )
    .expect("scenario runs");
    assert!(
        r.total.errors * 100 < r.offered,
        "retries should hide the outage: {:?}",
        r.total
    );
    assert!(r.max_attempts() > 1.1, "{:?}", r.attempts);
}

/// Envoy accepts the adaptive concurrency arm, and meshtune's arm pushes a configuration
/// through CDS/RDS files that every client Envoy then serves with.
#[test]
fn adaptive_and_meshtune_arms_serve_and_meshtune_pushes() {
    let Some(paths) = prereqs(false) else { return };
    let _g = serial();
    let sc = scenario(
        r#"
name = "overload"
seed = 3
window_s = 1.0
windows = 8
slo_ms = 250.0
clients = 2
[hosts]
count = 1
concurrency = 4
service = { dist = "constant", ms = 20.0 }
[load]
profile = "constant"
rps = 300.0
"#,
    );
    let ac = realrun::run(&paths, &sc, &Arm::AdaptiveConcurrency, 1, |_| {}).expect("runs");
    assert!(ac.total.ok > 500, "{:?}", ac.total);
    let mt = realrun::run(&paths, &sc, &Arm::Meshtune { model: None }, 1, |_| {}).expect("runs");
    assert!(mt.total.ok > 500, "{:?}", mt.total);
    assert!(
        mt.pushes >= 1,
        "the controller never pushed under 150 % overload"
    );
}

/// BookInfo on real processes: productpage's and reviews' sidecars both report, so the one
/// controller sees all three destinations; requests flow through both hops before the fault,
/// and a failing `ratings` shows up only in the requests that need it.
#[test]
fn bookinfo_reports_every_hop_and_isolates_ratings_failures() {
    use meshtune_testbed::bookinfo::{self, BookinfoConfig, RatingsFault};
    let Some(paths) = prereqs(false) else { return };
    let _g = serial();
    let r = bookinfo::run(
        &paths,
        &BookinfoConfig {
            rate: 80.0,
            secs: 10,
            fault_at: std::time::Duration::from_secs(4),
            fault: RatingsFault::Failing(1.0),
            enforce: false,
            ..BookinfoConfig::default()
        },
    )
    .expect("bookinfo runs");
    let mut d = r.destinations.clone();
    d.sort();
    assert_eq!(d, vec!["details", "ratings", "reviews"]);
    for s in [&r.lite_before, &r.full_before, &r.lite_after] {
        assert!(s.sent > 100 && s.errors * 20 <= s.sent, "{s:?}");
    }
    // Every ratings attempt fails: the requests that need ratings fail (after retries).
    assert!(
        r.full_after.errors * 10 >= r.full_after.sent * 9,
        "{:?}",
        r.full_after
    );
    let ratings = r.attempts.iter().find(|(d, _)| d == "ratings").unwrap().1;
    assert!(
        ratings > 1.5,
        "Istio's 2 retries on a failing host: {ratings}"
    );
}
