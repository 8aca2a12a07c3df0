//! The controller's own metrics are a good Prometheus citizen: `promtool check metrics` (the
//! Debian package's linter) accepts the exposition with every family populated, units are
//! base units, latency is a histogram, `meshtune_build_info` exists, and the per-destination
//! series stay bounded. Also: every query of the Grafana dashboard
//! (`manifests/grafana/meshtune.json`) names a metric the controller or Istio exposes.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{const_model, report, upstream};
use meshtune_controller::metrics::{LATENCY_BUCKETS_SECONDS, MAX_METRIC_DESTINATIONS};
use meshtune_controller::policy_loop::{LoopConfig, PolicyLoop, Sources};
use meshtune_controller::prometheus::PromSource;
use meshtune_controller::{Config, Controller};
use meshtune_core::knobs::KNOB_COUNT;

/// A controller whose every metric family has samples: reports for two destinations and a
/// refused one, one enforce-mode decision cycle through the log sink (knob gauges, decisions,
/// pushes, inference) with an unreachable Prometheus source (fetch errors), a refused model,
/// and one policy-input fallback.
async fn populated() -> (Arc<Controller>, Arc<PolicyLoop>) {
    let controller = Arc::new(Controller::new(Config::default()).unwrap());
    controller
        .handle_report(&report(
            "pod-a",
            1,
            vec![
                upstream("svc-a", 100, 5, 30_000),
                upstream("svc-b", 50, 0, 2_000),
            ],
        ))
        .expect("report accepted");
    assert!(controller
        .handle_report(&meshtune_proto::v1::ReportRequest::default())
        .is_err());
    let model =
        meshtune_policy::OnnxPolicy::from_bytes(&const_model([0.5; KNOB_COUNT], "m1"), "test")
            .unwrap();
    let log: Arc<dyn meshtune_sinks::Sink> =
        Arc::new(meshtune_sinks::LogSink::new(Box::new(std::io::sink())));
    let lp = PolicyLoop::new(
        controller.clone(),
        Some(model),
        vec![log.clone()],
        log,
        None,
        LoopConfig {
            min_requests: 1,
            guardrails: meshtune_policy::guardrails::Config {
                mode: meshtune_policy::guardrails::Mode::Enforce,
                min_dwell: std::time::Duration::ZERO,
                ..meshtune_policy::guardrails::Config::default()
            },
            ..LoopConfig::default()
        },
    );
    // Nothing listens on port 9 (discard): every fetch fails, the filter's windows are used.
    lp.set_sources(Sources {
        filter: true,
        prometheus: Some((
            PromSource::new(
                "http://127.0.0.1:9",
                meshtune_controller::prometheus::DEFAULT_REPORTER,
                std::time::Duration::from_secs(2),
            )
            .unwrap(),
            60,
        )),
    });
    let s = lp.cycle().await.unwrap();
    assert_eq!(s.destinations, 2, "{s:?}");
    assert!(lp
        .store()
        .unwrap()
        .try_swap(b"not a model", "test")
        .is_err());
    controller.metrics().count_missing(&["inflight_avg"]);
    (controller, lp)
}

/// Sample names of an exposition (without labels).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn promtool_accepts_the_metrics_and_units_are_base_units() {
    let (controller, _lp) = populated().await;
    let text = controller.metrics_text();
    for line in [
        "meshtune_build_info{version=\"",
        "meshtune_destination_request_duration_seconds_bucket{le=\"0.05\",namespace=\"default\",destination=\"svc-a\"} 100",
        "meshtune_destination_request_duration_seconds_bucket{le=\"0.025\",namespace=\"default\",destination=\"svc-a\"} 0",
        "meshtune_prometheus_fetches_total{result=\"error\"} 1",
        "meshtune_pushes_total{sink=\"log\",result=\"ok\"} 2",
        "meshtune_destination_requests_total{namespace=\"default\",destination=\"svc-a\",code_class=\"5xx\"} 5",
        "meshtune_knob{namespace=\"default\",destination=\"svc-a\",knob=\"timeout\"}",
        "meshtune_destinations_selected{source=\"filter\"} 2",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    let names = sample_names(&text);
    for n in &names {
        assert!(
            !n.ends_with("_ms") && !n.contains("_p99") && !n.contains("quantile"),
            "{n}: base units and histograms only"
        );
    }
    // Route timeout (a duration knob) is exported in seconds: within the knob's bounds / 1000.
    let timeout = text
        .lines()
        .find(|l| {
            l.starts_with(
                "meshtune_knob{namespace=\"default\",destination=\"svc-a\",knob=\"timeout\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    let spec = meshtune_core::knobs::Knob::RouteTimeoutMs.spec();
    assert!(
        timeout >= spec.min / 1000.0 && timeout <= spec.max / 1000.0,
        "timeout {timeout} s"
    );

    let Some(promtool) = meshtune_test_support::prometheus::promtool() else {
        return;
    };
    // What a scraper without `Accept` (curl, promtool) gets from the admin server: Prometheus
    // text 0.0.4; a scraper asking for OpenMetrics gets OpenMetrics.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = l.local_addr().unwrap();
    let router = meshtune_controller::admin::router(controller.clone());
    tokio::spawn(async move { axum::serve(l, router).await });
    let get = |accept: &'static str| {
        tokio::task::spawn_blocking(move || {
            let headers: Vec<(&str, &str)> = if accept.is_empty() {
                vec![]
            } else {
                vec![("accept", accept)]
            };
            meshtune_test_support::http::get(admin, "/metrics", &headers).unwrap()
        })
    };
    let om = get("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
        .await
        .unwrap();
    assert!(om
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(om.text().ends_with("# EOF\n"));
    let plain = get("").await.unwrap();
    assert!(plain
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = plain.text();
    assert!(
        text.contains("# TYPE meshtune_decision_cycles_total counter"),
        "{text}"
    );
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}\n--- exposition ---\n{text}"
    );
}

#[tokio::test]
async fn per_destination_series_are_bounded() {
    let controller = Arc::new(Controller::new(Config::default()).unwrap());
    let n = MAX_METRIC_DESTINATIONS + 25;
    let ups: Vec<_> = (0..n)
        .map(|i| upstream(&format!("svc-{i:04}"), 1 + i as u64, 0, 1_000))
        .collect();
    controller
        .handle_report(&report("pod-a", 1, ups))
        .expect("report accepted");
    let text = controller.metrics_text();
    let destinations: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("meshtune_destination_requests_total{"))
        // {namespace="default",destination="svc-…",…}: the destination is the fourth field.
        .filter_map(|l| l.split('"').nth(3))
        .collect();
    assert_eq!(destinations.len(), MAX_METRIC_DESTINATIONS);
    // The busiest are kept: svc-0000 (1 request) is dropped, the last one kept.
    assert!(!destinations.contains("svc-0000"));
    assert!(destinations.contains(format!("svc-{:04}", n - 1).as_str()));
    assert!(
        text.contains("meshtune_metric_destinations_omitted 25"),
        "{text}"
    );
    let per_dest = text
        .lines()
        .filter(|l| l.contains(&format!("destination=\"svc-{:04}\"", n - 1)))
        .count();
    // 4 status classes + 3 flags + retries + unmeasured requests + buckets (+Inf included)
    // + sum + count.
    assert_eq!(
        per_dest,
        4 + 3 + 1 + 1 + LATENCY_BUCKETS_SECONDS.len() + 1 + 2
    );
}

/// Istio's standard metrics (https://istio.io/latest/docs/reference/config/metrics/), as
/// Prometheus names them.
const ISTIO_METRICS: [&str; 8] = [
    "istio_requests_total",
    "istio_request_duration_milliseconds",
    "istio_request_bytes",
    "istio_response_bytes",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
];

#[tokio::test]
async fn every_dashboard_query_names_an_exposed_metric() {
    let (controller, _lp) = populated().await;
    let text = controller.metrics_text();
    // Families (from # TYPE) and their sample names.
    let mut exposed: BTreeSet<String> = sample_names(&text);
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut it = l.split_whitespace().skip(2);
        let (name, kind) = (it.next().unwrap(), it.next().unwrap());
        exposed.insert(name.to_string());
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[],
        };
        exposed.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    for m in ISTIO_METRICS {
        exposed.insert(m.to_string());
        if !m.ends_with("_total") {
            for s in ["_bucket", "_sum", "_count"] {
                exposed.insert(format!("{m}{s}"));
            }
        }
    }
    let path = meshtune_test_support::workspace_root().join("manifests/grafana/meshtune.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(
        exprs.len() >= 15,
        "only {} queries in {}",
        exprs.len(),
        path.display()
    );
    let mut panels_seen = BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "query names no metric: {e}");
        for n in names {
            assert!(
                exposed.contains(&n),
                "{}: `{n}` in `{e}` is neither a controller metric nor an Istio standard metric",
                path.display()
            );
            panels_seen.insert(n);
        }
    }
    // The dashboard covers what the issue asks for.
    for needed in [
        "meshtune_destination_requests_total",
        "meshtune_knob",
        "meshtune_decisions_total",
        "meshtune_model_refused_total",
        "meshtune_reports_accepted_total",
        "meshtune_reports_rejected_total",
    ] {
        assert!(panels_seen.contains(needed), "dashboard lacks {needed}");
    }
    // The negative case: a misspelt metric is caught.
    assert!(!metric_names("rate(meshtune_decision_total[5m])")
        .iter()
        .all(|n| exposed.contains(n)));
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// Identifiers of a PromQL expression that name meshtune, Istio or Envoy metrics (label names
/// and values, functions and `by (...)` lists never start with these prefixes here).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_quotes = false;
    let mut cur = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        if !in_quotes && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            cur.push(c);
            continue;
        }
        if ["meshtune_", "istio_", "envoy_"]
            .iter()
            .any(|p| cur.starts_with(p))
        {
            names.push(cur.clone());
        }
        cur.clear();
    }
    names
}
