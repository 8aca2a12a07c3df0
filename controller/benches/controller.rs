//! Controller benchmarks (`cargo xtask bench controller`): the decision cycle for 10,000
//! destinations (snapshot → features → one batched ONNX inference → guardrails → Istio
//! rendering), report ingest throughput on one core (`Aggregator::ingest` and
//! `Controller::handle_report` with validation) and memory per tracked destination. Figures
//! are printed with their ratio to the targets; nothing here asserts a time.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use meshtune_controller::aggregate::{Aggregator, Limits};
use meshtune_controller::decision::{self, LoopState, Naming};
use meshtune_controller::validate::{ReporterKey, ValidReport};
use meshtune_controller::{Config, Controller};
use meshtune_core::histogram::SUB_BUCKET_BITS;
use meshtune_core::knobs::Knobs;
use meshtune_core::WindowStats;
use meshtune_policy::guardrails::{self, Guardrails, Mode};
use meshtune_policy::OnnxPolicy;
use meshtune_proto::v1::{LatencyHistogram as WireHist, ReportRequest, Reporter, UpstreamWindow};
use meshtune_sinks::istio::{DestinationRuleObject, IstioTarget, VirtualServiceObject};

/// The `meshtune` binary's allocator, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Destinations decided for in one cycle.
const DESTINATIONS: usize = 10_000;
/// Reporters (Envoys) feeding the aggregator; each reports once per second.
const REPORTERS: usize = 1_000;
const WINDOW_SECS: u64 = 10;
/// Issue 4 targets.
const CYCLE_TARGET: Duration = Duration::from_millis(50);
const INGEST_TARGET_PER_S: f64 = 100_000.0;
const T0_MS: u64 = 1_700_000_000_000;

/// Istio outbound cluster name of destination `d` (50 namespaces).
fn cluster_name(d: usize) -> String {
    format!("outbound|8080||svc-{d}.ns-{}.svc.cluster.local", d % 50)
}

/// One second of traffic to destination `d`: 200 requests, latencies spread over ~40
/// histogram buckets (1–5 ms), a few 5xx.
fn window(d: usize, s: u64) -> WindowStats {
    let requests = 200;
    let e5 = (d as u64 + s) % 4;
    let mut w = WindowStats {
        duration_s: 1.0,
        requests,
        status_2xx: requests - e5,
        status_5xx: e5,
        inflight_max: 8,
        inflight_avg: 3.0,
        ..Default::default()
    };
    for i in 0..requests {
        w.latency
            .record(1000 + (i * 97 + s * 13 + d as u64 * 7) % 4000);
    }
    w
}

fn reporter_key(r: usize) -> ReporterKey {
    ReporterKey {
        namespace: format!("ns-{}", r % 50),
        workload: format!("client-{}", r % 100),
        pod: format!("client-{r}-7d9f8c6b5-x2k4q"),
        vm_id: "vm-0".into(),
    }
}

/// An aggregator holding a full window for `destinations` destinations, each reported every
/// second by one of `REPORTERS` reporters (destination `d` by reporter `d % REPORTERS`).
fn filled(destinations: usize) -> Aggregator {
    let mut a = Aggregator::new(Limits {
        window_secs: WINDOW_SECS,
        max_destinations: destinations.max(1),
        // The figure is per destination at any count: no memory budget.
        max_bytes: usize::MAX,
        ..Limits::default()
    });
    let reporters = REPORTERS.min(destinations.max(1));
    let per_reporter: Vec<Vec<usize>> = (0..reporters)
        .map(|r| (r..destinations).step_by(reporters).collect())
        .collect();
    for s in 0..WINDOW_SECS {
        for (r, dests) in per_reporter.iter().enumerate() {
            let rep = ValidReport {
                reporter: reporter_key(r),
                sequence: s + 1,
                dropped_reports: 0,
                window_length_ms: 1000,
                upstreams: dests
                    .iter()
                    .map(|&d| (cluster_name(d), window(d, s)))
                    .collect(),
            };
            a.ingest(&rep, T0_MS + s * 1000 + r as u64 % 1000);
        }
    }
    a
}

/// The embedded default model, else `models/default.onnx`.
fn policy() -> OnnxPolicy {
    match meshtune_policy::embedded_default() {
        Ok(p) => p,
        Err(_) => {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default.onnx");
            OnnxPolicy::from_path(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        }
    }
}

/// Enforce mode with the default guardrails: every destination's first decision is a push
/// (as in a cold start, the most expensive cycle).
fn loop_state() -> LoopState {
    LoopState::new(Guardrails::new(guardrails::Config {
        mode: Mode::Enforce,
        ..guardrails::Config::default()
    }))
}

/// Stage timings of one decision cycle.
#[derive(Default, Clone, Copy)]
struct Stages {
    snapshot: Duration,
    select_features: Duration,
    inference: Duration,
    guardrails: Duration,
    render: Duration,
}

impl Stages {
    fn total(&self) -> Duration {
        self.snapshot + self.select_features + self.inference + self.guardrails + self.render
    }
}

/// One cycle as `policy_loop` runs it, with the Istio sink's rendering: DestinationRule +
/// VirtualService per pushed destination, serialised to the JSON bytes server-side apply
/// sends. Returns the rendered object count and their bytes.
fn cycle(
    a: &Aggregator,
    policy: &OnnxPolicy,
    state: &mut LoopState,
    st: &mut Stages,
) -> (usize, usize) {
    let now_ms = T0_MS + WINDOW_SECS * 1000 - 1;
    let t = Instant::now();
    let snapshot = a.snapshot(now_ms);
    st.snapshot += t.elapsed();

    let t = Instant::now();
    let selected = decision::select(snapshot, Naming::IstioHost, decision::DEFAULT_MIN_REQUESTS);
    let batch: Vec<_> = decision::features(&selected, state, Instant::now(), 250.0)
        .iter()
        .map(|f| f.normalised())
        .collect();
    st.select_features += t.elapsed();

    let t = Instant::now();
    let proposed: Vec<Knobs> = policy
        .infer(&batch)
        .expect("inference")
        .iter()
        .map(Knobs::from_normalised)
        .collect();
    st.inference += t.elapsed();

    let t = Instant::now();
    let c = decision::decide(
        &selected,
        &proposed,
        state,
        Instant::now(),
        decision::DEFAULT_SLO_MS,
    );
    st.guardrails += t.elapsed();

    let t = Instant::now();
    let (mut objects, mut bytes) = (0, 0);
    let mut buf = Vec::with_capacity(1024);
    for d in &c.pushes {
        let target = IstioTarget::new(&d.destination, &d.namespace);
        buf.clear();
        serde_json::to_writer(&mut buf, &DestinationRuleObject::new(&target, &d.knobs))
            .expect("render DestinationRule");
        bytes += black_box(&buf).len();
        buf.clear();
        serde_json::to_writer(&mut buf, &VirtualServiceObject::new(&target, &d.knobs))
            .expect("render VirtualService");
        bytes += black_box(&buf).len();
        objects += 2;
    }
    st.render += t.elapsed();
    (objects, bytes)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn bench_cycle(c: &mut Criterion) {
    let a = filled(DESTINATIONS);
    let policy = policy();
    let base = loop_state();

    // Printed figure: best of a few runs per stage (the machine is shared).
    let runs = 10;
    let mut best = Stages {
        snapshot: Duration::MAX,
        select_features: Duration::MAX,
        inference: Duration::MAX,
        guardrails: Duration::MAX,
        render: Duration::MAX,
    };
    let mut best_total = Duration::MAX;
    let mut sum = Duration::ZERO;
    let (mut objects, mut bytes) = (0, 0);
    for _ in 0..runs {
        let mut st = Stages::default();
        let mut state = base.clone();
        (objects, bytes) = cycle(&a, &policy, &mut state, &mut st);
        best_total = best_total.min(st.total());
        sum += st.total();
        best.snapshot = best.snapshot.min(st.snapshot);
        best.select_features = best.select_features.min(st.select_features);
        best.inference = best.inference.min(st.inference);
        best.guardrails = best.guardrails.min(st.guardrails);
        best.render = best.render.min(st.render);
    }
    println!(
        "decision cycle, {DESTINATIONS} destinations (model {}), {objects} Istio objects rendered \
         ({:.1} MB of JSON):\n  \
         best {:.1} ms, mean {:.1} ms of {runs}; target ≤ {} ms → {:.2}× the target ({})\n  \
         best per stage: snapshot {:.1} ms, select+features {:.1} ms, batched inference {:.1} ms, \
         guardrails {:.1} ms, render {:.1} ms",
        policy.model_version(),
        bytes as f64 / 1e6,
        ms(best_total),
        ms(sum / runs),
        CYCLE_TARGET.as_millis(),
        best_total.as_secs_f64() / CYCLE_TARGET.as_secs_f64(),
        if best_total <= CYCLE_TARGET {
            "within"
        } else {
            "OVER the target"
        },
        ms(best.snapshot),
        ms(best.select_features),
        ms(best.inference),
        ms(best.guardrails),
        ms(best.render),
    );

    // Steady state: the cycle after the cold start, every destination inside its dwell time
    // (guardrails hold; nothing to render).
    let mut warm = base.clone();
    cycle(&a, &policy, &mut warm, &mut Stages::default());
    let mut best_steady = Duration::MAX;
    for _ in 0..runs {
        let mut st = Stages::default();
        let mut state = warm.clone();
        let (objects, _) = cycle(&a, &policy, &mut state, &mut st);
        assert_eq!(objects, 0, "steady state pushes nothing");
        best_steady = best_steady.min(st.total());
    }
    println!(
        "decision cycle, steady state (every destination holding): best {:.1} ms → {:.2}× the target",
        ms(best_steady),
        best_steady.as_secs_f64() / CYCLE_TARGET.as_secs_f64()
    );

    let mut g = c.benchmark_group("decision_cycle_10k");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("snapshot_to_render", |b| {
        b.iter_batched(
            || base.clone(),
            // The state is returned so its drop is not timed: the controller keeps it.
            |mut state| {
                let r = cycle(&a, &policy, &mut state, &mut Stages::default());
                (state, r)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// A reporter's 1-upstream report for destination `d` at second `s`.
fn valid_report(r: usize, d: usize, s: u64) -> ValidReport {
    ValidReport {
        reporter: reporter_key(r),
        sequence: s + 1,
        dropped_reports: 0,
        window_length_ms: 1000,
        upstreams: vec![(cluster_name(d), window(d, s))],
    }
}

fn wire(d: usize, s: u64) -> UpstreamWindow {
    let w = window(d, s);
    let (idx, cnt): (Vec<u32>, Vec<u64>) = w.latency.nonzero_buckets().unzip();
    UpstreamWindow {
        cluster: cluster_name(d),
        requests: w.requests,
        status_2xx: w.status_2xx,
        status_5xx: w.status_5xx,
        inflight_max: w.inflight_max as u32,
        inflight_avg: w.inflight_avg,
        http1_requests: w.requests,
        request_bytes: w.requests * 300,
        response_bytes: w.requests * 2000,
        latency: Some(WireHist {
            sub_bucket_bits: SUB_BUCKET_BITS,
            bucket_index: idx,
            bucket_count: cnt,
            sum_us: w.latency.sum_us(),
            min_us: w.latency.min_us(),
            max_us: w.latency.max_us(),
        }),
        ..Default::default()
    }
}

fn wire_report(r: usize, d: usize, s: u64) -> ReportRequest {
    let k = reporter_key(r);
    ReportRequest {
        reporter: Some(Reporter {
            namespace: k.namespace,
            workload: k.workload,
            pod: k.pod,
            vm_id: k.vm_id,
            filter_version: "0.1.0".into(),
            node_id: format!("sidecar~10.0.0.{}~pod-{r}", r % 250),
        }),
        sequence: s + 1,
        window_start_unix_ms: T0_MS + s * 1000,
        window_length_ms: 1000,
        upstreams: vec![wire(d, s)],
        dropped_reports: 0,
    }
}

/// Ingests `secs` seconds of reports (every reporter once per second, receive times spread
/// over the second); returns the reports ingested.
fn ingest_seconds(
    a: &mut Aggregator,
    reports: &mut [ValidReport],
    first_sec: u64,
    secs: u64,
) -> u64 {
    let n = reports.len() as u64;
    for s in first_sec..first_sec + secs {
        for (i, rep) in reports.iter_mut().enumerate() {
            rep.sequence = s + 1;
            black_box(a.ingest(rep, T0_MS + s * 1000 + i as u64 * 1000 / n));
        }
    }
    n * secs
}

fn bench_ingest(c: &mut Criterion) {
    // 1,000 reporters × 1 upstream each, over 1,000 destinations; 40-bucket histograms.
    let buckets = window(0, 0).latency.nonzero_buckets().count();
    let mut reports: Vec<ValidReport> = (0..REPORTERS).map(|r| valid_report(r, r, 0)).collect();
    let mut a = Aggregator::new(Limits {
        window_secs: WINDOW_SECS,
        ..Limits::default()
    });
    let mut sec = 0;
    // Warm-up: a full window, so buckets are recycled as in steady state.
    sec += WINDOW_SECS;
    ingest_seconds(&mut a, &mut reports, 0, WINDOW_SECS);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let n = ingest_seconds(&mut a, &mut reports, sec, 20);
        sec += 20;
        best = best.min(t.elapsed().as_secs_f64() / n as f64);
    }
    let rate = 1.0 / best;
    println!(
        "ingest, Aggregator::ingest (1 upstream, {buckets} histogram buckets, {REPORTERS} reporters):\n  \
         {:.0} reports/s on one core ({:.2} µs/report); target ≥ {:.0}/s → {:.2}× the target",
        rate,
        best * 1e6,
        INGEST_TARGET_PER_S,
        rate / INGEST_TARGET_PER_S
    );

    // Through the gRPC handler's logic: validation, de-duplication, merge, metrics, hints.
    let controller = Controller::new(Config::default()).expect("controller");
    let mut wire_reports: Vec<ReportRequest> =
        (0..REPORTERS).map(|r| wire_report(r, r, 0)).collect();
    let mut seq = 0u64;
    let mut handle_all = |wire_reports: &mut [ReportRequest]| {
        seq += 1;
        for rep in wire_reports.iter_mut() {
            rep.sequence = seq;
            black_box(controller.handle_report(rep).expect("valid report"));
        }
        wire_reports.len() as u64
    };
    for _ in 0..WINDOW_SECS {
        handle_all(&mut wire_reports);
    }
    let mut best_handle = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let n: u64 = (0..20).map(|_| handle_all(&mut wire_reports)).sum();
        best_handle = best_handle.min(t.elapsed().as_secs_f64() / n as f64);
    }
    let rate_handle = 1.0 / best_handle;
    println!(
        "ingest, Controller::handle_report (validation + ingest + metrics + hints, same reports):\n  \
         {:.0} reports/s on one core ({:.2} µs/report); target ≥ {:.0}/s → {:.2}× the target",
        rate_handle,
        best_handle * 1e6,
        INGEST_TARGET_PER_S,
        rate_handle / INGEST_TARGET_PER_S
    );

    let mut g = c.benchmark_group("ingest");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.throughput(criterion::Throughput::Elements(REPORTERS as u64));
    g.bench_function("aggregator_ingest_1000_reports", |b| {
        b.iter(|| {
            ingest_seconds(&mut a, &mut reports, sec, 1);
            sec += 1;
        })
    });
    g.bench_function("handle_report_1000_reports", |b| {
        b.iter(|| handle_all(&mut wire_reports))
    });
    g.finish();
}

fn bench_memory(_c: &mut Criterion) {
    for destinations in [1_000, DESTINATIONS] {
        let a = filled(destinations);
        let bytes = a.approx_memory_bytes();
        println!(
            "memory, {destinations} destinations, full {WINDOW_SECS} s window, {} reporters: \
             ~{} bytes per tracked destination ({:.1} MiB in all, reporters included)",
            REPORTERS.min(destinations),
            bytes / destinations,
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
}

criterion_group!(benches, bench_memory, bench_ingest, bench_cycle);
criterion_main!(benches);
