//! Prometheus in and out, against a real Prometheus (Debian package `prometheus`) started on
//! 127.0.0.1 with a generated config and a short scrape interval. It scrapes two real Envoys'
//! `/stats/prometheus` under the testbed's load generator, an exporter in this test serving
//! Istio-format series with known rates, and the controller's own `/metrics`. The windows the
//! Prometheus source derives are checked against the load generator's counts and the known
//! rates; the decision cycle runs with the filter and Prometheus together (the filter wins);
//! `record` writes dataset rows from a range query; Prometheus reads `meshtune_build_info`
//! and the controller's latency histogram back.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{const_model, report, upstream};
use meshtune_controller::decision::Naming;
use meshtune_controller::policy_loop::{LoopConfig, PolicyLoop, Sources};
use meshtune_controller::prometheus::{
    self as prom, now_unix_secs, PromSource, RecordArgs, RecordFrom, SourcedWindow,
};
use meshtune_controller::{Config, Controller};
use meshtune_core::availability::Field;
use meshtune_core::dataset::DatasetRow;
use meshtune_core::knobs::{Knobs, KNOB_COUNT};
use meshtune_test_support::prometheus::{self as promproc, Job, PrometheusProcess};
use meshtune_testbed::envoy::EnvoyConfig;
use meshtune_testbed::loadgen::{self, LoadConfig};
use meshtune_testbed::workload::{ServiceTime, WorkloadConfig, WorkloadServer};

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const RATINGS: &str = "ratings.default.svc.cluster.local";
const SCRAPE: Duration = Duration::from_millis(250);

/// Known per-second rates of the exporter's `reporter="source"` series for `reviews`:
/// (response_code, response_flags, rps).
const REVIEWS_CODES: [(&str, &str, f64); 4] = [
    ("200", "-", 36.0),
    ("503", "UO", 2.0),
    ("504", "UT", 1.2),
    ("503", "UF,URX", 0.8),
];
const REVIEWS_RPS: f64 = 40.0;
/// Cumulative share of `reviews` requests at or below each `le` (ms).
const REVIEWS_BUCKETS: [(&str, f64); 6] = [
    ("5", 0.1),
    ("10", 0.5),
    ("25", 0.9),
    ("50", 0.99),
    ("100", 1.0),
    ("+Inf", 1.0),
];
const REVIEWS_RETRY_RPS: f64 = 3.0;
const REVIEWS_ACTIVE: f64 = 6.0;
/// `ratings`: 20 rps, all 200, all in (25, 50] ms; no Envoy statistics.
const RATINGS_RPS: f64 = 20.0;

/// Istio-format exposition `secs` after the exporter started: counters grow at the known
/// rates; `reporter="destination"` series (which the source must ignore) grow 10× faster.
fn istio_exposition(secs: f64) -> String {
    let c = |rate: f64| (rate * secs).floor();
    let mut out = String::from("# TYPE istio_requests_total counter\n");
    for reporter in ["source", "destination"] {
        let k = if reporter == "source" { 1.0 } else { 10.0 };
        for (code, flags, rps) in REVIEWS_CODES {
            out += &format!(
                "istio_requests_total{{reporter=\"{reporter}\",destination_service=\"{REVIEWS}\",response_code=\"{code}\",response_flags=\"{flags}\"}} {}\n",
                c(rps * k)
            );
        }
        out += &format!(
            "istio_requests_total{{reporter=\"{reporter}\",destination_service=\"{RATINGS}\",response_code=\"200\",response_flags=\"-\"}} {}\n",
            c(RATINGS_RPS * k)
        );
    }
    out += "# TYPE istio_request_duration_milliseconds histogram\n";
    let total = c(REVIEWS_RPS);
    for (le, share) in REVIEWS_BUCKETS {
        out += &format!(
            "istio_request_duration_milliseconds_bucket{{reporter=\"source\",destination_service=\"{REVIEWS}\",le=\"{le}\"}} {}\n",
            (total * share).floor()
        );
    }
    out += &format!("istio_request_duration_milliseconds_sum{{reporter=\"source\",destination_service=\"{REVIEWS}\"}} {}\n", total * 15.0);
    out += &format!("istio_request_duration_milliseconds_count{{reporter=\"source\",destination_service=\"{REVIEWS}\"}} {total}\n");
    let r = c(RATINGS_RPS);
    for (le, v) in [("25", 0.0), ("50", r), ("+Inf", r)] {
        out += &format!(
            "istio_request_duration_milliseconds_bucket{{reporter=\"source\",destination_service=\"{RATINGS}\",le=\"{le}\"}} {v}\n"
        );
    }
    out += &format!("istio_request_duration_milliseconds_sum{{reporter=\"source\",destination_service=\"{RATINGS}\"}} {}\n", r * 37.5);
    out += &format!("istio_request_duration_milliseconds_count{{reporter=\"source\",destination_service=\"{RATINGS}\"}} {r}\n");
    out += "# TYPE istio_request_bytes histogram\n";
    out += &format!(
        "istio_request_bytes_sum{{reporter=\"source\",destination_service=\"{REVIEWS}\"}} {}\n",
        total * 300.0
    );
    out += &format!("istio_request_bytes_count{{reporter=\"source\",destination_service=\"{REVIEWS}\"}} {total}\n");
    let cluster = format!("outbound|9080||{REVIEWS}");
    out += "# TYPE envoy_cluster_upstream_rq_retry counter\n";
    out += &format!(
        "envoy_cluster_upstream_rq_retry{{cluster_name=\"{cluster}\"}} {}\n",
        c(REVIEWS_RETRY_RPS)
    );
    out += "# TYPE envoy_cluster_upstream_rq_active gauge\n";
    out += &format!(
        "envoy_cluster_upstream_rq_active{{cluster_name=\"{cluster}\"}} {REVIEWS_ACTIVE}\n"
    );
    out += "# TYPE envoy_cluster_upstream_rq_total counter\n";
    out += &format!(
        "envoy_cluster_upstream_rq_total{{cluster_name=\"inbound|9080||\"}} {}\n",
        c(1.0)
    );
    out
}

async fn serve(router: axum::Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await });
    addr
}

async fn exporter() -> SocketAddr {
    let started = Instant::now();
    serve(axum::Router::new().route(
        "/metrics",
        axum::routing::get(
            move || async move { istio_exposition(started.elapsed().as_secs_f64()) },
        ),
    ))
    .await
}

fn find<'a>(w: &'a [SourcedWindow], cluster: &str) -> &'a SourcedWindow {
    w.iter()
        .find(|w| w.cluster == cluster)
        .unwrap_or_else(|| panic!("no window for {cluster} in {w:#?}"))
}

fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} ± {tol}"
    );
}

/// One instant query's value (the first series), from the Prometheus HTTP API.
async fn query_value(url: &str, q: &str) -> Option<(HashMap<String, String>, f64)> {
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let first = body["data"]["result"].get(0)?;
    let labels = serde_json::from_value(first["metric"].clone()).ok()?;
    let v = first["value"][1].as_str()?.parse().ok()?;
    Some((labels, v))
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_source_matches_the_load_and_the_known_series() {
    let Some(envoy_bin) = meshtune_test_support::envoy::binary() else {
        return;
    };
    let Some(prom_bin) = promproc::binary() else {
        return;
    };
    // Upstream: 20 ms per request, every 10th request a 503; two Envoys in front of it.
    let work = WorkloadServer::start(WorkloadConfig {
        capacity: 64,
        service_time: ServiceTime::Constant(Duration::from_millis(20)),
        fail_every_n: Some(10),
    })
    .unwrap();
    let mut envoys = Vec::new();
    for _ in 0..2 {
        let mut cfg = EnvoyConfig::new(work.addr());
        cfg.concurrency = 1;
        envoys.push(cfg.start(&envoy_bin).unwrap());
    }
    // Warm-up: every status-class counter and histogram exists before the first scrape.
    for e in &envoys {
        let r = loadgen::run(&LoadConfig::count(e.listener(), 100.0, 20), None).await;
        assert_eq!(r.completed, 20, "warm-up through {}", e.listener());
    }

    // The controller in process: admin served (Prometheus scrapes it), a constant policy.
    let controller = Arc::new(Controller::new(Config::default()).unwrap());
    let admin = serve(meshtune_controller::admin::router(controller.clone())).await;
    let exporter_started = now_unix_secs();
    let exporter = exporter().await;
    let prometheus = PrometheusProcess::start(
        &prom_bin,
        SCRAPE,
        &[
            Job::new(
                "envoy",
                "/stats/prometheus",
                envoys.iter().map(|e| e.admin()).collect(),
            ),
            Job::new("istio", "/metrics", vec![exporter]),
            Job::new("meshtune", "/metrics", vec![admin]),
        ],
    )
    .unwrap();
    let url = prometheus.url();
    // Every target up before the load starts.
    eventually(20, "all targets up", || {
        let url = url.clone();
        async move {
            let (_, v) = query_value(&url, "sum(up)").await?;
            (v == 4.0).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Load: 50 rps through each Envoy for 8 s.
    let load_start = now_unix_secs();
    let runs: Vec<_> = envoys
        .iter()
        .map(|e| loadgen::spawn(LoadConfig::count(e.listener(), 50.0, 400), None))
        .collect();
    let reports: Vec<_> = runs.into_iter().map(|h| h.join().unwrap()).collect();
    let completed: u64 = reports.iter().map(|r| r.completed).sum();
    let e5: u64 = reports.iter().map(|r| r.class_count(5)).sum();
    let lg_p50 = reports[0].quantile_ms(0.5);
    assert_eq!(completed, 800, "{}", reports[0].summary());
    // Two more scrapes after the load, then one window over all of it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = now_unix_secs();
    let window = (t - load_start + 2.0).ceil() as u64;
    let src = PromSource::new(&url, prom::DEFAULT_REPORTER, prom::DEFAULT_TIMEOUT).unwrap();
    let windows = src.windows_at(t, window).await.unwrap();

    // Real Envoys (plain Envoy cluster statistics, summed over both): the loadgen's counts.
    // `increase()` extrapolates the sampled span to the window's edges when the nearest sample
    // is within 1.1 scrape intervals of an edge, so a count may exceed the truth by up to
    // 2.2 intervals over the sampled span.
    let w = find(&windows, "workload");
    let edge = 2.2 * SCRAPE.as_secs_f64();
    let share = edge / (window as f64 - edge);
    let tol = |n: u64| n as f64 * share + 2.0;
    close(
        "workload requests",
        w.stats.requests as f64,
        completed as f64,
        tol(completed),
    );
    close(
        "workload 5xx",
        w.stats.status_5xx as f64,
        e5 as f64,
        tol(e5),
    );
    assert_eq!(w.stats.retries, 0, "no retry policy: Envoy retried nothing");
    assert_eq!((w.stats.flag_uo, w.stats.flag_ut), (0, 0));
    assert!(
        w.stats.inflight_avg > 0.0 && w.stats.inflight_avg < 10.0 && w.stats.inflight_max >= 1,
        "in flight from envoy_cluster_upstream_rq_active: {:?}",
        w.stats
    );
    let p50 = w.stats.latency.quantile_us(0.5) / 1000.0;
    eprintln!(
        "workload over {window} s: prometheus {} requests, {} 5xx, p50 {p50:.1} ms, in flight avg {:.2} max {}; loadgen {completed} requests, {e5} 5xx, p50 {lg_p50:.1} ms",
        w.stats.requests, w.stats.status_5xx, w.stats.inflight_avg, w.stats.inflight_max
    );
    // Envoy's rq_time buckets are (10, 25] ms around the 20 ms service time.
    assert!((10.0..=25.0).contains(&p50), "p50 {p50} ms");
    assert!((10.0..=25.0).contains(&lg_p50), "loadgen p50 {lg_p50} ms");
    assert!(!w.availability.is_missing(Field::Latency));
    assert!(!w.availability.is_missing(Field::Inflight));
    assert!(w.availability.is_missing(Field::Protocol));
    assert!(w.availability.decidable());
    assert!(
        windows.iter().all(|w| !w.cluster.starts_with("inbound|")),
        "inbound clusters skipped"
    );

    // Istio series with known rates (reporter="source" only) joined with Envoy statistics,
    // over a window inside the exporter's life (it started before the load).
    let istio_window = 8;
    assert!(t - exporter_started > istio_window as f64 + 1.0);
    let windows = src.windows_at(t, istio_window).await.unwrap();
    let rv = find(&windows, &format!("outbound|9080||{REVIEWS}"));
    let f = rv.stats.features(&meshtune_core::Context::initial(250.0));
    eprintln!("reviews over {istio_window} s: {f:?}");
    close(
        "reviews rps",
        f.get("rps").unwrap(),
        REVIEWS_RPS,
        REVIEWS_RPS * 0.05,
    );
    // Rates are ratios of counts rounded from `increase()` over ~320 requests: ±0.01.
    close("reviews 5xx", f.get("error_5xx_rate").unwrap(), 0.1, 0.01);
    close(
        "reviews overflow",
        f.get("overflow_rate").unwrap(),
        0.05,
        0.01,
    );
    close(
        "reviews timeout",
        f.get("timeout_rate").unwrap(),
        0.03,
        0.01,
    );
    close(
        "reviews connection failures",
        f.get("connection_failure_rate").unwrap(),
        0.02,
        0.01,
    );
    close("reviews retries", f.get("retry_rate").unwrap(), 0.075, 0.01);
    close(
        "reviews in flight",
        f.get("inflight_avg").unwrap(),
        REVIEWS_ACTIVE,
        0.01,
    );
    close("reviews p50", f.get("latency_p50_ms").unwrap(), 10.0, 1.0);
    close("reviews p90", f.get("latency_p90_ms").unwrap(), 25.0, 1.5);
    close(
        "reviews request bytes",
        rv.stats.request_bytes as f64 / rv.stats.requests as f64,
        300.0,
        15.0,
    );
    assert!(
        rv.availability.missing_features() == vec!["http2_fraction"],
        "{:?}",
        rv.availability
    );

    // ratings: Istio series only. In flight and retries are missing and fall back (Little's law).
    let ra = find(&windows, &format!("outbound|||{RATINGS}"));
    assert_eq!(
        ra.availability.missing_features(),
        vec![
            "retry_rate",
            "inflight_avg",
            "inflight_max",
            "http2_fraction"
        ]
    );
    let policy = meshtune_core::availability::policy_stats(&ra.stats, ra.availability);
    let pf = policy.features(&meshtune_core::Context::initial(250.0));
    close(
        "ratings rps",
        pf.get("rps").unwrap(),
        RATINGS_RPS,
        RATINGS_RPS * 0.05,
    );
    let little = pf.get("rps").unwrap() * pf.get("latency_mean_ms").unwrap() / 1000.0;
    close(
        "ratings in flight (Little's law)",
        pf.get("inflight_avg").unwrap(),
        little,
        1e-9,
    );
    close("ratings in flight ≈ 20 rps × 37.5 ms", little, 0.75, 0.1);

    // The decision cycle with both sources: the filter reports reviews (it wins), Prometheus
    // adds ratings; `workload` is not an Istio name and is ignored under Istio naming.
    let up = upstream(&format!("outbound|9080||{REVIEWS}"), 100, 0, 30_000);
    controller
        .handle_report(&report("pod-a", 1, vec![up]))
        .expect("report accepted");
    let model =
        meshtune_policy::OnnxPolicy::from_bytes(&const_model([0.5; KNOB_COUNT], "const"), "test")
            .unwrap();
    let lp = PolicyLoop::new(
        controller.clone(),
        Some(model),
        vec![],
        Arc::new(meshtune_sinks::LogSink::new(Box::new(std::io::sink()))),
        None,
        LoopConfig {
            min_requests: 1,
            naming: Naming::IstioHost,
            ..LoopConfig::default()
        },
    );
    lp.set_sources(Sources {
        filter: true,
        prometheus: Some((src.clone(), istio_window)),
    });
    let s = lp.cycle().await.unwrap();
    assert_eq!(s.destinations, 2, "{s:?}");
    // Observe mode (the default) recommends for both.
    assert_eq!(s.recommended, 2, "{s:?}");
    // Prometheus alone, observe mode: no filter at all, both destinations from Prometheus.
    let alone = Arc::new(Controller::new(Config::default()).unwrap());
    let lp2 = PolicyLoop::new(
        alone.clone(),
        Some(
            meshtune_policy::OnnxPolicy::from_bytes(
                &const_model([0.5; KNOB_COUNT], "const"),
                "test",
            )
            .unwrap(),
        ),
        vec![],
        Arc::new(meshtune_sinks::LogSink::new(Box::new(std::io::sink()))),
        None,
        LoopConfig {
            min_requests: 1,
            naming: Naming::IstioHost,
            ..LoopConfig::default()
        },
    );
    lp2.set_sources(Sources {
        filter: false,
        prometheus: Some((src.clone(), istio_window)),
    });
    let s2 = lp2.cycle().await.unwrap();
    assert_eq!((s2.destinations, s2.recommended), (2, 2), "{s2:?}");
    assert!(alone
        .metrics_text()
        .contains("meshtune_destinations_selected{source=\"prometheus\"} 2"));
    let text = controller.metrics_text();
    for line in [
        "meshtune_destinations_selected{source=\"filter\"} 1",
        "meshtune_destinations_selected{source=\"prometheus\"} 1",
        "meshtune_policy_input_missing_total{feature=\"inflight_avg\"} 1",
        "meshtune_policy_input_missing_total{feature=\"retry_rate\"} 1",
        "meshtune_prometheus_fetches_total{result=\"ok\"} 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }

    // Prometheus out: it scraped the controller, whose latency is a histogram in seconds.
    let (labels, v) = eventually(20, "meshtune_build_info in Prometheus", || {
        let url = url.clone();
        async move { query_value(&url, "meshtune_build_info").await }
    })
    .await;
    assert_eq!(v, 1.0);
    assert_eq!(
        labels.get("version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let (_, p50_s) = eventually(20, "the controller's latency histogram in Prometheus", || {
        let url = url.clone();
        async move {
            query_value(
                &url,
                "histogram_quantile(0.5, sum by (le) (meshtune_destination_request_duration_seconds_bucket))",
            )
            .await
            .filter(|(_, v)| v.is_finite())
        }
    })
    .await;
    // 30 ms reported: inside the (25 ms, 50 ms] bucket.
    assert!((0.025..=0.05).contains(&p50_s), "p50 {p50_s} s");
    let (_, sel) = eventually(20, "meshtune_destinations_selected in Prometheus", || {
        let url = url.clone();
        async move {
            query_value(
                &url,
                "meshtune_destinations_selected{source=\"prometheus\"}",
            )
            .await
            .filter(|(_, v)| *v == 1.0)
        }
    })
    .await;
    assert_eq!(sel, 1.0);

    // Training data from history: 2 s windows over the load.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prom.csv");
    let args = RecordArgs {
        from: RecordFrom::Prometheus,
        prometheus_url: url.clone(),
        prometheus_reporter: prom::DEFAULT_REPORTER.into(),
        start: format!("{:.0}", load_start.floor() + 2.0),
        end: format!("{:.0}", t.floor()),
        step: "2s".into(),
        out: out.clone(),
        scenario: "prometheus-test".into(),
        slo_ms: 100.0,
        min_requests: 1,
    };
    let summary = prom::record(&args).await.unwrap();
    eprintln!("record: {summary:?}");
    assert!(summary.rows > 0 && summary.destinations >= 3, "{summary:?}");
    let mut rdr = csv::Reader::from_path(&out).unwrap();
    meshtune_core::dataset::check_header(&rdr.headers().unwrap().iter().collect::<Vec<_>>())
        .unwrap();
    let rows: Vec<DatasetRow> = rdr
        .records()
        .map(|r| DatasetRow::from_record(&r.unwrap().iter().collect::<Vec<_>>()).unwrap())
        .collect();
    assert_eq!(rows.len(), summary.rows);
    assert!(rows.iter().all(|r| r.source == prom::PROMETHEUS_SOURCE
        && r.scenario == "prometheus-test"
        && r.knobs == Knobs::istio_defaults()));
    let reviews: Vec<_> = rows.iter().filter(|r| r.destination == REVIEWS).collect();
    assert!(reviews.len() >= 3, "{} reviews rows", reviews.len());
    for r in &reviews {
        close(
            "recorded reviews rps",
            r.features.get("rps").unwrap(),
            REVIEWS_RPS,
            REVIEWS_RPS * 0.15,
        );
        close(
            "recorded reviews 5xx",
            r.features.get("error_5xx_rate").unwrap(),
            0.1,
            0.03,
        );
        assert!(r.outcomes.offered_rps > 0.0);
    }
    // The workload's windows add up to the loadgen's requests.
    let recorded: f64 = rows
        .iter()
        .filter(|r| r.destination == "workload")
        .map(|r| r.features.get("rps").unwrap() * 2.0)
        .sum();
    close(
        "recorded workload requests",
        recorded,
        completed as f64,
        completed as f64 * 0.1,
    );
    drop(prometheus);
}
