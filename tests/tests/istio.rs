//! End-to-end tests on an Istio-shaped sidecar: Envoy configured the way istiod would from the
//! project's `manifests/` (WasmPlugin via ECDS, or the EnvoyFilter patch; `outbound|PORT||HOST`
//! clusters; no bootstrap extension), the real .wasm, the real `meshtune controller` and the
//! testbed workload, with 2 and 4 Envoy worker threads. Loopback only, bounded in time; every
//! process stops on drop. Skipped with a message when prerequisites are missing, unless `CI`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshtune_core::histogram::RELATIVE_ERROR;
use meshtune_e2e::{
    client_sidecar, prereqs, serial, start_sidecar, Stack, StackConfig, WORKLOAD_CLUSTER,
};
use meshtune_test_support::envoy::EnvoyError;
use meshtune_test_support::istio::{write_atomically, Delivery};
use meshtune_testbed::http;
use meshtune_testbed::loadgen::{self, LoadConfig};
use meshtune_testbed::workload::{ServiceTime, WorkloadConfig, WorkloadServer};
use serde_json::json;

/// Sends `n` GETs of `path`, each on a fresh connection (so the kernel spreads them over all
/// of Envoy's workers), from `threads` threads; returns the statuses.
fn fresh_connection_gets(addr: SocketAddr, path: &str, n: usize, threads: usize) -> Vec<u16> {
    let per = n / threads;
    assert_eq!(per * threads, n, "n must be a multiple of threads");
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let path = path.to_string();
            std::thread::spawn(move || {
                (0..per)
                    .map(|_| http::get(addr, &path, &[]).map_or(0, |r| r.status))
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// Sends `n` concurrent GETs of `path` (fresh connections); (status, shed header, elapsed).
fn burst(addr: SocketAddr, path: &str, n: usize) -> Vec<(u16, bool, Duration)> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_string();
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = http::get(addr, &path, &[]).expect("request through envoy");
                (r.status, r.header("x-meshtune-shed").is_some(), t.elapsed())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Polls until `f` returns true (sending traffic is up to `f`), or panics after `timeout`.
fn eventually(what: &str, timeout: Duration, stack: &Stack, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            panic!(
                "{what}: not observed within {timeout:?}\n{}",
                stack.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stack(
    concurrency: u32,
    delivery: Delivery,
    workload: WorkloadConfig,
    hints: bool,
) -> Option<Stack> {
    let paths = prereqs(false)?;
    Some(Stack::start(
        &paths,
        StackConfig {
            workload,
            delivery,
            concurrency,
            hints,
            ..Default::default()
        },
    ))
}

/// 2,000 requests on fresh connections (spread over every worker), every 10th failed by the
/// workload server: the controller's lifetime counts are exactly 2,000 / 200 5xx / 1,800 2xx,
/// one reporter for the Envoy, no window dropped, no report failed. The 8 client threads send
/// ~1,000–2,000 rps, above the default `sample_above_rps` (a rate of the whole Envoy), so the
/// filter is configured to measure every request (`sample_above_rps` 0): this test is about
/// the merge of the workers' windows; the sampled figures are checked in `sampling.rs`.
fn counts_exact(concurrency: u32, delivery: Delivery) {
    let _g = serial();
    let workload = WorkloadConfig {
        capacity: 256,
        service_time: ServiceTime::Constant(Duration::from_millis(1)),
        fail_every_n: Some(10),
    };
    let Some(paths) = prereqs(false) else {
        return;
    };
    let stack = Stack::start(
        &paths,
        StackConfig {
            workload,
            delivery,
            concurrency,
            plugin_config: Some(json!({"flush_interval_ms": 1000, "sample_above_rps": 0})),
            ..Default::default()
        },
    );
    const N: usize = 2000;
    let statuses = fresh_connection_gets(stack.envoy.listener(), "/", N, 8);
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), N / 10);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), N - N / 10);
    let per_worker = stack.connections_per_worker();
    assert!(
        per_worker.iter().all(|c| *c > 0),
        "traffic must reach every worker: {per_worker:?}"
    );
    let d = stack.wait_requests(N as u64, Duration::from_secs(20));
    // Further flushes must not add anything (no double counting).
    std::thread::sleep(Duration::from_millis(2500));
    let d2 = stack.workload_destination().expect("destination");
    let all = stack.controller.destinations().unwrap();
    let diag = || stack.diagnostics();
    assert_eq!(d.lifetime.requests, N as u64, "{}", diag());
    assert_eq!(d2.lifetime.requests, N as u64, "{}", diag());
    assert_eq!(d2.lifetime.status_5xx, (N / 10) as u64, "{}", diag());
    assert_eq!(d2.lifetime.status_2xx, (N - N / 10) as u64, "{}", diag());
    assert_eq!(stack.workload.counters().requests, N as u64);
    // Every window reached the controller through one elected reporter.
    assert_eq!(stack.filter_stat("windows_dropped"), 0, "{}", diag());
    assert_eq!(stack.filter_stat("reports_failed"), 0, "{}", diag());
    assert_eq!(stack.filter_stat("requests_observed"), N as u64);
    assert_eq!(all.reporters, 1, "one reporter per Envoy: {}", diag());
    assert_eq!(all.reports_duplicate, 0);
    let sent = stack.filter_stat("reports_sent");
    assert!(
        sent.abs_diff(all.reports_accepted) <= 1,
        "filter sent {sent}, controller accepted {}",
        all.reports_accepted
    );
    eprintln!(
        "{concurrency} workers, {delivery:?}: connections per worker {per_worker:?}; controller \
         lifetime {} requests, {} 5xx, {} 2xx; {} reports accepted from {} reporter(s)",
        d2.lifetime.requests,
        d2.lifetime.status_5xx,
        d2.lifetime.status_2xx,
        all.reports_accepted,
        all.reporters
    );
}

#[test]
fn counts_exact_across_2_workers_wasmplugin() {
    counts_exact(2, Delivery::WasmPlugin);
}

#[test]
fn counts_exact_across_4_workers_wasmplugin() {
    counts_exact(4, Delivery::WasmPlugin);
}

#[test]
fn counts_exact_across_2_workers_envoyfilter() {
    counts_exact(2, Delivery::EnvoyFilter);
}

/// Open-loop load with 10 % injected 503s: exact counts, and the controller's p50/p99 agree
/// with the load generator's (client-side overhead allowance as in the testbed e2e tests).
#[test]
fn latency_quantiles_match_the_load_generator() {
    let _g = serial();
    let workload = WorkloadConfig {
        capacity: 64,
        service_time: ServiceTime::LogNormal {
            median: Duration::from_millis(8),
            sigma: 0.5,
        },
        fail_every_n: None,
    };
    let Some(stack) = stack(2, Delivery::WasmPlugin, workload, false) else {
        return;
    };
    const N: u64 = 1000;
    let mut cfg = LoadConfig::count(stack.envoy.listener(), 200.0, N);
    cfg.fail_every_n = Some(10);
    let r = loadgen::run_blocking(&cfg, None);
    assert_eq!(r.completed, N, "load: {}", r.summary());
    assert_eq!(r.status_count(503), N / 10, "load: {}", r.summary());
    stack.wait_requests(N, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(2500));
    let d = stack.workload_destination().expect("destination");
    assert_eq!(d.lifetime.requests, N, "{}", stack.diagnostics());
    assert_eq!(d.lifetime.status_5xx, N / 10);
    let (c50, c99) = (d.lifetime.p50_ms, d.lifetime.p99_ms);
    let (l50, l99) = (r.quantile_ms(0.5), r.quantile_ms(0.99));
    eprintln!(
        "controller p50 {c50:.3} ms p99 {c99:.3} ms; load generator p50 {l50:.3} p99 {l99:.3}"
    );
    // Client-side overhead Envoy does not see: loopback I/O and tokio scheduling.
    let within = |c: f64, l: f64, slack: f64| (c - l).abs() <= l * RELATIVE_ERROR + slack;
    assert!(within(c50, l50, 3.0), "p50: controller {c50} vs {l50}");
    assert!(within(c99, l99, 12.0), "p99: controller {c99} vs {l99}");
}

/// Hints reach every worker: a 50 ms timeout turns every slow request into a 504 whichever
/// worker serves it; a concurrency limit holds across workers (one per-Envoy counter); after
/// the TTL traffic is untouched.
fn hints_on_every_worker(concurrency: u32) {
    let _g = serial();
    let Some(stack) = stack(
        concurrency,
        Delivery::WasmPlugin,
        WorkloadConfig::default(),
        true,
    ) else {
        return;
    };
    let addr = stack.envoy.listener();
    const TTL_MS: u64 = 3000;
    stack.set_hints(json!([{"cluster": WORKLOAD_CLUSTER, "timeout_ms": 50, "ttl_ms": TTL_MS}]));
    eventually(
        "timeout hint applied",
        Duration::from_secs(15),
        &stack,
        || {
            let _ = http::get(addr, "/", &[]);
            http::get(addr, "/slow?ms=300", &[]).is_ok_and(|r| r.status == 504)
        },
    );
    // Let every worker pick the hint up (each reads it on its next tick).
    std::thread::sleep(Duration::from_millis(600));
    let before = stack.connections_per_worker();
    let n = 12 * concurrency as usize;
    let res = burst(addr, "/slow?ms=300", n);
    let after = stack.connections_per_worker();
    let served: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        served.iter().all(|c| *c > 0),
        "the burst must reach every worker: {served:?}"
    );
    for (status, _, t) in &res {
        assert_eq!(
            *status, 504,
            "slow request under a 50 ms timeout hint: {res:?}"
        );
        assert!(
            *t >= Duration::from_millis(45) && *t < Duration::from_millis(280),
            "504 after {t:?}: {res:?}"
        );
    }
    eprintln!("{concurrency} workers: timeout hint applied on {n} requests, per worker {served:?}");
    stack.set_hints(json!([]));
    std::thread::sleep(Duration::from_millis(TTL_MS + 2500));
    let res = burst(addr, "/slow?ms=300", n);
    assert!(res.iter().all(|(s, _, _)| *s == 200), "after TTL: {res:?}");

    // Concurrency limit, per Envoy across workers.
    const LIMIT: usize = 4;
    let burst_n = 6 * concurrency as usize;
    stack.set_hints(
        json!([{"cluster": WORKLOAD_CLUSTER, "concurrency_limit": LIMIT, "ttl_ms": TTL_MS}]),
    );
    eventually(
        "concurrency hint applied",
        Duration::from_secs(15),
        &stack,
        || {
            let _ = http::get(addr, "/", &[]);
            burst(addr, "/slow?ms=200", LIMIT + 4)
                .iter()
                .any(|(_, shed, _)| *shed)
        },
    );
    std::thread::sleep(Duration::from_millis(600));
    let res = burst(addr, "/slow?ms=500", burst_n);
    let ok = res.iter().filter(|(s, _, _)| *s == 200).count();
    let shed = res.iter().filter(|(_, shed, _)| *shed).count();
    assert!(
        (1..=LIMIT).contains(&ok),
        "{ok} passed with limit {LIMIT}: {res:?}"
    );
    assert_eq!(ok + shed, burst_n, "served or shed: {res:?}");
    eprintln!(
        "{concurrency} workers: concurrency limit {LIMIT}: {ok} served, {shed} shed of {burst_n}"
    );
    stack.set_hints(json!([]));
    std::thread::sleep(Duration::from_millis(TTL_MS + 2500));
    let res = burst(addr, "/slow?ms=200", burst_n);
    assert!(
        res.iter().all(|(s, shed, _)| *s == 200 && !shed),
        "after TTL: {res:?}"
    );
}

#[test]
fn hints_take_effect_on_every_worker_2() {
    hints_on_every_worker(2);
}

#[test]
fn hints_take_effect_on_every_worker_4() {
    hints_on_every_worker(4);
}

/// The controller is killed under load: zero client-visible errors; reports resume after it
/// restarts on the same port.
fn controller_down(concurrency: u32) {
    let _g = serial();
    let workload = WorkloadConfig {
        capacity: 64,
        service_time: ServiceTime::Constant(Duration::from_millis(2)),
        fail_every_n: None,
    };
    let Some(mut stack) = stack(concurrency, Delivery::WasmPlugin, workload, false) else {
        return;
    };
    let cfg = LoadConfig::constant(stack.envoy.listener(), 100.0, Duration::from_secs(12));
    let load = loadgen::spawn(cfg, None);
    stack.wait_requests(50, Duration::from_secs(10));
    stack.controller.kill();
    std::thread::sleep(Duration::from_secs(4));
    stack.controller.restart().expect("controller restarts");
    let (resumed, d) = stack
        .controller
        .wait_for(Duration::from_secs(10), |d| {
            d.reports_accepted >= 2
                && d.get(WORKLOAD_CLUSTER)
                    .is_some_and(|w| w.lifetime.requests > 0)
        })
        .unwrap();
    assert!(
        resumed,
        "reports did not resume: {d:?}\n{}",
        stack.diagnostics()
    );
    let r = load.join().unwrap();
    assert_eq!(
        r.failed(),
        0,
        "client-visible errors: {} {:?}",
        r.summary(),
        r.error_samples
    );
    assert_eq!(r.completed, r.sent);
    assert_eq!(r.status_count(200), r.completed, "non-200: {}", r.summary());
    assert!(
        stack.filter_stat("reports_dropped") > 0,
        "reports were dropped while down"
    );
    eprintln!(
        "{concurrency} workers: controller down 4 s under 100 rps: {} requests, 0 errors; {} reports dropped",
        r.completed,
        stack.filter_stat("reports_dropped")
    );
}

#[test]
fn controller_down_means_zero_client_errors_2() {
    controller_down(2);
}

#[test]
fn controller_down_means_zero_client_errors_4() {
    controller_down(4);
}

/// A bad plugin configuration is refused with the field named: through the WasmPlugin (ECDS)
/// Envoy rejects the update and logs the field; through the EnvoyFilter (inline) Envoy refuses
/// the listener and exits, naming the field.
#[test]
fn bad_plugin_configuration_is_refused_naming_the_field() {
    let Some(paths) = prereqs(false) else { return };
    let _g = serial();
    let workload = WorkloadServer::start(Default::default()).unwrap();
    let dir =
        meshtune_e2e::TempDir(meshtune_test_support::process::run_dir("e2e-bad").expect("dir"));
    let bad = json!({"flush_interval_secs": 1});
    for (delivery, workers) in [
        (Delivery::WasmPlugin, 2),
        (Delivery::WasmPlugin, 4),
        (Delivery::EnvoyFilter, 2),
        (Delivery::EnvoyFilter, 4),
    ] {
        let (m, s) = client_sidecar(
            &paths,
            delivery,
            workload.addr(),
            "127.0.0.1:9".parse().unwrap(),
            Some(bad.clone()),
        );
        let (cfg, envoy) = start_sidecar(&paths, &m, &s, &dir.0, workers, Duration::from_secs(20));
        let log = match envoy {
            Err(EnvoyError::Exited { log, .. }) => log,
            Err(e) => panic!("{delivery:?}: unexpected error: {e}"),
            Ok(envoy) => {
                // ECDS: Envoy stays up, the update is rejected, requests do not run a
                // misconfigured filter.
                let stat = format!(
                    "extension_config_discovery.http_filter.{}.update_rejected",
                    cfg.filter_name
                );
                let rejected = envoy
                    .wait_for("/stats", Duration::from_secs(10), |b| {
                        b.contains(&format!("{stat}: 1"))
                    })
                    .is_ok();
                assert!(rejected, "{delivery:?}: {stat} not 1:\n{}", envoy.log());
                envoy.log()
            }
        };
        let line = log
            .lines()
            .find(|l| l.contains("meshtune: invalid configuration"))
            .unwrap_or_else(|| panic!("{delivery:?}: no configuration error logged:\n{log}"));
        assert!(line.contains("flush_interval_secs"), "{delivery:?}: {line}");
        eprintln!("{delivery:?}, {workers} workers: {line}");
    }
}

/// The reporting worker stops (a new plugin configuration replaces every VM): another worker
/// takes the lease over, continues the sequence and the counts stay exact.
#[test]
fn reporting_survives_a_new_plugin_configuration() {
    let _g = serial();
    let Some(stack) = stack(4, Delivery::WasmPlugin, WorkloadConfig::default(), false) else {
        return;
    };
    let addr = stack.envoy.listener();
    let first = fresh_connection_gets(addr, "/", 400, 8);
    assert!(first.iter().all(|s| *s == 200));
    stack.wait_requests(400, Duration::from_secs(15));
    // istiod pushes a changed WasmPlugin: a new ECDS resource, new VMs.
    let (path, mut ecds) = stack.sidecar.ecds.clone().expect("ECDS file");
    let plugin = &mut ecds["resources"][0]["typed_config"]["config"];
    plugin["configuration"] = json!({
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": json!({"flush_interval_ms": 500}).to_string()
    });
    ecds["version_info"] = json!("2");
    write_atomically(&path, &ecds).unwrap();
    let stat = format!(
        "extension_config_discovery.http_filter.{}.update_success",
        stack.sidecar.filter_name
    );
    stack
        .envoy
        .wait_for("/stats", Duration::from_secs(10), |b| {
            b.contains(&format!("{stat}: 2"))
        })
        .unwrap_or_else(|e| panic!("ECDS update not applied: {e}\n{}", stack.diagnostics()));
    let second = fresh_connection_gets(addr, "/", 400, 8);
    assert!(second.iter().all(|s| *s == 200));
    let d = stack.wait_requests(800, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(2000));
    let d2 = stack.workload_destination().unwrap();
    let all = stack.controller.destinations().unwrap();
    assert_eq!(d.lifetime.requests, 800, "{}", stack.diagnostics());
    assert_eq!(d2.lifetime.requests, 800, "{}", stack.diagnostics());
    assert_eq!(
        all.reports_duplicate,
        0,
        "sequence continued: {}",
        stack.diagnostics()
    );
    let elections = stack
        .envoy
        .log()
        .lines()
        .filter(|l| l.contains("reports for this Envoy"))
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert!(
        elections.len() >= 2,
        "a second worker took over: {elections:#?}"
    );
    eprintln!(
        "takeover: {} elections, 800/800 requests counted:\n{}",
        elections.len(),
        elections.join("\n")
    );
}

/// The measurement behind the reporting design (figures in `filter/README.md`): the same
/// open-loop load (200 rps, 20 ms service time, so 4 requests in flight by Little's law) through
/// a 4-worker sidecar, once with the elected reporter and once with every worker reporting.
/// Both count exactly; what differs is the number of Reports and reporters the controller
/// handles and how well its in-flight figure matches the load.
#[test]
fn report_modes_elected_and_per_worker_compared() {
    let Some(paths) = prereqs(false) else { return };
    let _g = serial();
    const WORKERS: u32 = 4;
    let mut lines = Vec::new();
    for mode in ["elected", "per_worker"] {
        let stack = Stack::start(
            &paths,
            StackConfig {
                workload: WorkloadConfig {
                    capacity: 256,
                    service_time: ServiceTime::Constant(Duration::from_millis(20)),
                    fail_every_n: Some(10),
                },
                delivery: Delivery::WasmPlugin,
                plugin_config: Some(json!({"flush_interval_ms": 1000, "report_mode": mode})),
                concurrency: WORKERS,
                hints: false,
            },
        );
        // Warm up: let every worker open connections (the load generator keeps a pool).
        let _ = fresh_connection_gets(stack.envoy.listener(), "/", 64, 8);
        stack.wait_requests(64, Duration::from_secs(10));
        let before = stack.controller.destinations().unwrap();
        const SECS: u64 = 17;
        let cfg = LoadConfig::constant(stack.envoy.listener(), 200.0, Duration::from_secs(SECS));
        let ctl_cpu0 = stack
            .controller
            .pid()
            .and_then(|p| meshtune_testbed::procstat::cpu_ns(p).ok())
            .unwrap_or(0);
        let load = loadgen::spawn(cfg, None);
        // Sample the controller's in-flight view once per second once its sliding window
        // (10 s) lies inside the load.
        let mut inflight = Vec::new();
        std::thread::sleep(Duration::from_secs(11));
        for _ in 0..(SECS - 12) {
            if let Some(d) = stack.workload_destination() {
                inflight.push(d.window.inflight_avg);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let r = load.join().unwrap();
        assert_eq!(r.failed(), 0, "{}", r.summary());
        let total = 64 + r.completed;
        stack.wait_requests(total, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(2500));
        let after = stack.controller.destinations().unwrap();
        let d = after.get(WORKLOAD_CLUSTER).unwrap();
        assert_eq!(
            d.lifetime.requests,
            total,
            "{mode}: {}",
            stack.diagnostics()
        );
        assert_eq!(stack.filter_stat("windows_dropped"), 0, "{mode}");
        let ctl_cpu_ms = stack
            .controller
            .pid()
            .and_then(|p| meshtune_testbed::procstat::cpu_ns(p).ok())
            .unwrap_or(0)
            .saturating_sub(ctl_cpu0)
            / 1_000_000;
        let reports = after.reports_accepted - before.reports_accepted;
        let per_sec = reports as f64 / (SECS as f64 + 2.5);
        // Little's law: achieved rate × the workload's 20 ms service time (Envoy adds little).
        let expected = r.completed as f64 / SECS as f64 * 0.020;
        let mean = inflight.iter().sum::<f64>() / inflight.len().max(1) as f64;
        let worst = inflight
            .iter()
            .map(|v| (v - expected).abs())
            .fold(0.0, f64::max);
        let envoy_cpu_ms =
            meshtune_testbed::procstat::cpu_ns(stack.envoy.pid()).unwrap_or(0) / 1_000_000;
        let line = format!(
            "{mode:>10}: {reports} reports ({per_sec:.1}/s) from {} reporter(s); in-flight at the \
             controller mean {mean:.2} (samples {inflight:.2?}), worst error {worst:.2} vs {expected:.2} \
             expected; Envoy CPU {envoy_cpu_ms} ms, controller CPU {ctl_cpu_ms} ms; {} requests counted exactly",
            after.reporters, d.lifetime.requests
        );
        eprintln!("{line}");
        assert!(
            (mean - expected).abs() <= 0.25 * expected,
            "in-flight at the controller: {line}"
        );
        match mode {
            "elected" => {
                assert_eq!(after.reporters, 1);
                assert!(per_sec < 1.5, "{line}");
            }
            _ => {
                // Every worker VM (and Envoy's main-thread VM) reports on its own: each is a
                // reporter; those with traffic report every flush, the others only a heartbeat
                // (quiet when idle), so well over one Report per second either way.
                assert!(after.reporters >= u64::from(WORKERS), "{line}");
                assert!(per_sec > 1.5, "{line}");
            }
        }
        lines.push(line);
    }
    eprintln!("{}", lines.join("\n"));
}
