//! Prints the aggregator's approximate memory per tracked destination and its ingest rate for
//! a synthetic load (N destinations, one report per second per reporter, a full window).
//! Run: `cargo run --release -p meshtune-controller --example footprint`.

use meshtune_controller::aggregate::{Aggregator, Limits};
use meshtune_controller::validate::{ReporterKey, ValidReport};
use meshtune_core::WindowStats;
use std::time::Instant;

fn main() {
    let destinations = 1000usize;
    let reporters = 10usize;
    let window_secs = 10u64;
    let mut a = Aggregator::new(Limits {
        window_secs,
        ..Limits::default()
    });
    let mk = |d: usize, s: u64| {
        let mut w = WindowStats {
            duration_s: 1.0,
            requests: 100,
            status_2xx: 100,
            ..Default::default()
        };
        // ~30 distinct latency buckets per window.
        (0..100u64).for_each(|i| w.latency.record(800 + (i * 37 + s * 11 + d as u64) % 4000));
        w
    };
    let t0 = 1_700_000_000_000u64;
    let started = Instant::now();
    let mut reports = 0u64;
    for s in 0..window_secs {
        for r in 0..reporters {
            // Each reporter reports 1/reporters of the destinations.
            let upstreams = (0..destinations)
                .filter(|d| d % reporters == r)
                .map(|d| {
                    (
                        format!("outbound|8080||svc-{d}.ns.svc.cluster.local"),
                        mk(d, s),
                    )
                })
                .collect();
            let rep = ValidReport {
                reporter: ReporterKey {
                    namespace: "ns".into(),
                    workload: "w".into(),
                    pod: format!("pod-{r}"),
                    vm_id: "vm".into(),
                },
                sequence: s + 1,
                dropped_reports: 0,
                window_length_ms: 1000,
                upstreams,
            };
            a.ingest(&rep, t0 + s * 1000 + r as u64);
            reports += 1;
        }
    }
    let ingest = started.elapsed();
    let upstream_windows = reports as usize * destinations / reporters;
    let bytes = a.approx_memory_bytes();
    // Best of 20 (the machine is shared).
    let mut snap_time = std::time::Duration::MAX;
    let mut snap = Vec::new();
    for _ in 0..20 {
        let snap_started = Instant::now();
        snap = a.snapshot(t0 + window_secs * 1000 - 1);
        snap_time = snap_time.min(snap_started.elapsed());
    }
    println!(
        "destinations {} reporters {} window {}s: ~{} bytes per destination ({} KiB total)",
        snap.len(),
        reporters,
        window_secs,
        bytes / destinations,
        bytes / 1024
    );
    println!(
        "ingest: {:.1} µs per upstream window ({} windows); snapshot of all destinations: {:.2} ms",
        ingest.as_secs_f64() * 1e6 / upstream_windows as f64,
        upstream_windows,
        snap_time.as_secs_f64() * 1e3
    );
}
