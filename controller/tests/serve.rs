//! In-process controller over real sockets: a tonic client sends reports on 127.0.0.1:0 and
//! the admin HTTP API is read back.

mod common;

use common::{report, upstream};
use meshtune_controller::config::Config;
use meshtune_controller::top::http_get;
use meshtune_proto::v1::feature_service_client::FeatureServiceClient;
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpListener;

struct Running {
    grpc: String,
    admin: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), meshtune_controller::ControllerError>>,
}

async fn start(config: Config) -> Running {
    let g = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = format!("http://{}", g.local_addr().unwrap());
    let admin = format!("http://{}", a.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(meshtune_controller::serve(config, g, a, async move {
        let _ = rx.await;
    }));
    // Ready within a bounded time.
    let mut ready = false;
    for _ in 0..100 {
        if let Ok((200, _)) = http_get(&admin, "/readyz").await {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "controller not ready");
    Running {
        grpc,
        admin,
        stop,
        task,
    }
}

impl Running {
    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("controller stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

async fn destinations(admin: &str) -> Value {
    let (status, body) = http_get(admin, "/api/destinations").await.unwrap();
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn reports_are_aggregated_and_visible_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let hints = dir.path().join("hints.json");
    std::fs::write(
        &hints,
        r#"{"hints":[{"cluster":"svc-a","timeout_ms":50,"max_retries":0,"concurrency_limit":10,"ttl_ms":5000}]}"#,
    )
    .unwrap();
    let run = start(Config {
        hints_file: Some(hints.clone()),
        hints_poll: Duration::from_millis(50),
        ..Config::default()
    })
    .await;
    let (status, _) = http_get(&run.admin, "/healthz").await.unwrap();
    assert_eq!(status, 200);

    let mut client = FeatureServiceClient::connect(run.grpc.clone())
        .await
        .unwrap();
    let r1 = report(
        "pod-a",
        1,
        vec![
            upstream("svc-a", 10, 2, 20_000),
            upstream("svc-b", 4, 0, 1_000),
        ],
    );
    let resp = client.report(r1.clone()).await.unwrap().into_inner();
    assert_eq!(resp.accepted_sequence, 1);
    assert_eq!(resp.hints.len(), 1, "{resp:?}");
    assert_eq!(resp.hints[0].cluster, "svc-a");
    assert_eq!(resp.hints[0].timeout_ms, 50);
    assert_eq!(resp.hints[0].max_retries, Some(0));
    assert_eq!(resp.hints[0].concurrency_limit, 10);

    // A second reporter, and a duplicate of the first report (ignored).
    let resp = client
        .report(report("pod-b", 1, vec![upstream("svc-a", 5, 0, 40_000)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.accepted_sequence, 1);
    let resp = client.report(r1).await.unwrap().into_inner();
    assert_eq!(resp.accepted_sequence, 1);

    // Bad reports: INVALID_ARGUMENT naming the field, aggregates untouched.
    let mut bad = report("pod-c", 1, vec![upstream("svc-a", 10, 0, 100)]);
    bad.reporter = None;
    let e = client.report(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("reporter"), "{}", e.message());
    let mut bad = report("pod-c", 1, vec![upstream("svc-a", 10, 0, 100)]);
    bad.upstreams[0].latency.as_mut().unwrap().sub_bucket_bits = 9;
    let e = client.report(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("upstreams[0].latency"),
        "{}",
        e.message()
    );

    let d = destinations(&run.admin).await;
    assert_eq!(d["window_secs"], 10);
    assert_eq!(d["reports_accepted"], 2);
    assert_eq!(d["reports_rejected"], 2);
    let list = d["destinations"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let a = &list[0];
    assert_eq!(a["name"], "svc-a");
    assert_eq!(a["reporters"], 2);
    assert!(a["last_report_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(a["lifetime"]["requests"], 15);
    assert_eq!(a["lifetime"]["status_2xx"], 13);
    assert_eq!(a["lifetime"]["status_5xx"], 2);
    assert_eq!(a["lifetime"]["status_4xx"], 0);
    for k in ["flag_uo", "flag_ut", "flag_conn_failure", "retries", "shed"] {
        assert_eq!(a["lifetime"][k], 0, "{k}");
    }
    let p99 = a["lifetime"]["p99_ms"].as_f64().unwrap();
    assert!((p99 - 40.0).abs() <= 40.0 * 0.04, "{p99}");
    let w = &a["window"];
    assert_eq!(w["requests"], 15);
    assert!(w["rps"].as_f64().unwrap() > 0.0);
    let e5 = w["error_5xx_rate"].as_f64().unwrap();
    assert!((e5 - 2.0 / 15.0).abs() < 1e-9, "{e5}");
    for k in [
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "overflow_rate",
        "timeout_rate",
        "inflight_avg",
        "inflight_max",
    ] {
        assert!(w[k].is_number(), "window.{k} missing: {w}");
    }
    assert_eq!(w["inflight_max"], 4);
    assert_eq!(a["hint"]["timeout_ms"], 50);
    assert_eq!(list[1]["name"], "svc-b");
    assert_eq!(list[1]["lifetime"]["requests"], 4);
    assert!(list[1]["hint"].is_null());

    let (status, metrics) = http_get(&run.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for needle in [
        "meshtune_reports_accepted_total 2",
        "meshtune_reports_duplicate_total 1",
        "meshtune_reports_rejected_total{reason=\"reporter\"} 1",
        "meshtune_reports_rejected_total{reason=\"latency\"} 1",
        "meshtune_destinations_tracked 2",
        "meshtune_destination_requests_total{namespace=\"default\",destination=\"svc-a\",code_class=\"2xx\"}",
        "meshtune_destination_request_duration_seconds_count{namespace=\"default\",destination=\"svc-b\"} 4",
        "meshtune_destination_requests_total{namespace=\"default\",destination=\"svc-a\",code_class=\"5xx\"}",
        "meshtune_report_ingest_seconds_count 3",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }

    // The hints file changes: new hints within a bounded time.
    std::fs::write(&hints, r#"{"hints":[{"cluster":"svc-a","timeout_ms":75}]}"#).unwrap();
    let mut got = 0;
    for seq in 2..100 {
        let resp = client
            .report(report("pod-a", seq, vec![upstream("svc-a", 1, 0, 100)]))
            .await
            .unwrap()
            .into_inner();
        got = resp.hints.first().map(|h| h.timeout_ms).unwrap_or(0);
        if got == 75 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, 75, "reloaded hint not served");
    run.shutdown().await;
}

#[tokio::test]
async fn oversized_reports_are_invalid_argument() {
    let run = start(Config {
        max_report_bytes: 2000,
        ..Config::default()
    })
    .await;
    let mut client = FeatureServiceClient::connect(run.grpc.clone())
        .await
        .unwrap();
    let ups = (0..40)
        .map(|i| upstream(&format!("cluster-{i}"), 1, 0, 100))
        .collect();
    let big = report("p", 1, ups);
    let size = prost::Message::encoded_len(&big);
    assert!(size > 2000 && size < 4000, "{size}");
    let e = client.report(big).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("report:"), "{}", e.message());
    let d = destinations(&run.admin).await;
    assert_eq!(d["destinations"].as_array().unwrap().len(), 0);
    assert_eq!(d["reports_rejected"], 1);
    // A normal report still works.
    client
        .report(report("p", 1, vec![upstream("c", 3, 0, 100)]))
        .await
        .unwrap();
    assert_eq!(
        destinations(&run.admin).await["destinations"][0]["lifetime"]["requests"],
        3
    );
    run.shutdown().await;
}

#[tokio::test]
async fn hostile_reports_are_refused_before_decoding_and_rate_limited() {
    let run = start(Config {
        // One report per 100 s sustained, two at once: the third from one reporter is refused.
        reports_per_sec: 0.01,
        report_burst: 2.0,
        ..Config::default()
    })
    .await;
    let mut client = FeatureServiceClient::connect(run.grpc.clone())
        .await
        .unwrap();

    // More upstream windows than the shared per-report limit: refused by the pre-scan,
    // before decoding, naming the field.
    let limit = meshtune_proto::MAX_UPSTREAMS_PER_REPORT as usize;
    let ups = (0..=limit)
        .map(|i| upstream(&format!("c{i}"), 1, 0, 100))
        .collect();
    let e = client.report(report("many", 1, ups)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("upstreams:"), "{}", e.message());

    // Larger than the largest legitimate report: tonic refuses it before decoding.
    let mut huge = report("huge", 1, vec![upstream("c", 1, 0, 100)]);
    huge.upstreams[0].cluster = "x".repeat(Config::default().max_report_bytes + 1);
    let e = client.report(huge).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");

    // Rate: two reports pass, the excess is RESOURCE_EXHAUSTED and counted.
    let mut codes = Vec::new();
    for seq in 1..=5 {
        let r = client
            .report(report("chatty", seq, vec![upstream("svc", 5, 0, 100)]))
            .await;
        codes.push(r.map(|_| tonic::Code::Ok).unwrap_or_else(|e| e.code()));
    }
    assert_eq!(
        codes,
        [
            tonic::Code::Ok,
            tonic::Code::Ok,
            tonic::Code::ResourceExhausted,
            tonic::Code::ResourceExhausted,
            tonic::Code::ResourceExhausted
        ]
    );
    // Another reporter is not affected.
    client
        .report(report("quiet", 1, vec![upstream("svc", 5, 0, 100)]))
        .await
        .unwrap();
    let d = destinations(&run.admin).await;
    assert_eq!(d["destinations"][0]["lifetime"]["requests"], 15);
    let (_, metrics) = http_get(&run.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("meshtune_reports_rate_limited_total 3"),
        "{metrics}"
    );
    run.shutdown().await;
}
