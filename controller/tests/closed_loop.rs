//! The closed loop in process: reports over real gRPC → decision cycle with a real ONNX model
//! (tract) → Envoy file sink → CDS/RDS files, hints in ReportResponse, status JSON, metrics,
//! recorder; hot swap of the model file (a bad one refused, the old kept); and with a real
//! Envoy: the pushed thresholds appear in `/clusters` and excess load is shed as overflow.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::const_model;
use common::{report, upstream};
use meshtune_controller::decision::Naming;
use meshtune_controller::policy_loop::{serve_closed_loop, LoopConfig, PolicyLoop};
use meshtune_controller::recorder::Recorder;
use meshtune_controller::top::http_get;
use meshtune_controller::{Config, Controller};
use meshtune_core::dataset::DatasetRow;
use meshtune_core::knobs::{Knob, Knobs, KNOB_COUNT};
use meshtune_policy::guardrails::{self, Mode};
use meshtune_policy::source::ModelSource;
use meshtune_proto::v1::feature_service_client::FeatureServiceClient;
use meshtune_sinks::envoy::EnvoyCluster;
use meshtune_sinks::{EnvoyDestination, EnvoyFileConfig, EnvoyFileSink, EnvoyRoute, Sink};
use meshtune_test_support::envoy::{EnvoyProcess, Launch};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Replaces a file by rename (what the watchers and Envoy expect).
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Enforce mode, no dwell, no step limit, no rollback watching: every cycle may push.
fn fast_loop() -> LoopConfig {
    LoopConfig {
        interval: Duration::from_millis(100),
        min_requests: 1,
        naming: Naming::Cluster,
        guardrails: guardrails::Config {
            mode: Mode::Enforce,
            min_dwell: Duration::ZERO,
            max_step_factor: 1e9,
            max_linear_step: 1.0,
            rollback_windows: 0,
            ..guardrails::Config::default()
        },
        ..LoopConfig::default()
    }
}

struct Running {
    grpc: String,
    admin: String,
    policy: Arc<PolicyLoop>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), meshtune_controller::ControllerError>>,
}

async fn start(
    model: &Path,
    sinks: Vec<Arc<dyn Sink>>,
    record: Option<&Path>,
    config: LoopConfig,
) -> Running {
    let g = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = format!("http://{}", g.local_addr().unwrap());
    let admin = format!("http://{}", a.local_addr().unwrap());
    let controller = Arc::new(Controller::new(Config::default()).unwrap());
    let first = meshtune_policy::OnnxPolicy::from_path(model).unwrap();
    let policy = PolicyLoop::new(
        controller.clone(),
        Some(first),
        sinks,
        Arc::new(meshtune_sinks::LogSink::new(Box::new(std::io::sink()))),
        record.map(|p| Recorder::open(p).unwrap()),
        config,
    );
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let sources = vec![ModelSource::File {
        path: model.to_path_buf(),
        poll: Duration::from_millis(50),
    }];
    let task = tokio::spawn(serve_closed_loop(
        controller,
        policy.clone(),
        sources,
        None,
        g,
        a,
        async move {
            let _ = rx.await;
        },
    ));
    let t0 = Instant::now();
    while !matches!(http_get(&admin, "/readyz").await, Ok((200, _))) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "controller not ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        grpc,
        admin,
        policy,
        stop,
        task,
    }
}

impl Running {
    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

/// Polls `f` every 50 ms until it returns `Some` (at most `secs`).
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cds_threshold(cds: &Path, cluster: &str, field: &str) -> Option<u64> {
    let v: Value = serde_json::from_slice(&std::fs::read(cds).ok()?).ok()?;
    v["resources"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == cluster)?["circuit_breakers"]["thresholds"][0][field]
        .as_u64()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn normalised(pending: f32, max_rq: f32, timeout: f32) -> [f32; KNOB_COUNT] {
    let mut u = Knobs::istio_defaults().normalised();
    u[Knob::MaxConnections as usize] = 0.5;
    u[Knob::Http1MaxPendingRequests as usize] = pending;
    u[Knob::Http2MaxRequests as usize] = max_rq;
    u[Knob::RouteTimeoutMs as usize] = timeout;
    u[Knob::RetryAttempts as usize] = 0.2; // 1 attempt
    u
}

fn expected(u: &[f32; KNOB_COUNT], k: Knob) -> u64 {
    Knobs::from_normalised(u).get(k).round() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_drive_decisions_into_cds_hints_status_and_recorder_and_bad_models_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    let u1 = normalised(0.5, 0.6, 0.5);
    replace(&model, &const_model(u1, "const-1"));
    let cds = dir.path().join("cds.json");
    let mut ecfg = EnvoyFileConfig::new(
        &cds,
        vec![EnvoyDestination {
            destination: "svc".into(),
            cluster: EnvoyCluster::new("svc", vec!["127.0.0.1:9".into()]),
            route: Some(EnvoyRoute {
                virtual_host: "svc".into(),
                domains: vec!["*".into()],
                prefix: "/".into(),
            }),
        }],
    );
    ecfg.rds_path = Some(dir.path().join("rds.json"));
    let sink = Arc::new(EnvoyFileSink::new(ecfg).unwrap());
    let record = dir.path().join("live.csv");
    let r = start(&model, vec![sink.clone()], Some(&record), fast_loop()).await;
    let mut client = FeatureServiceClient::connect(r.grpc.clone()).await.unwrap();

    // Traffic for "svc" (and one cluster the sink does not know: refused, reverted).
    client
        .report(report(
            "p",
            1,
            vec![
                upstream("svc", 200, 2, 20_000),
                upstream("other", 50, 0, 5_000),
            ],
        ))
        .await
        .unwrap();
    let pending = expected(&u1, Knob::Http1MaxPendingRequests);
    let max_rq = expected(&u1, Knob::Http2MaxRequests);
    let timeout = expected(&u1, Knob::RouteTimeoutMs);
    assert_ne!(pending, u32::MAX as u64);
    eventually(
        10,
        "the CDS file to carry the policy's thresholds",
        || async {
            (cds_threshold(&cds, "svc", "max_pending_requests") == Some(pending)
                && cds_threshold(&cds, "svc", "max_requests") == Some(max_rq))
            .then_some(())
        },
    )
    .await;
    // The RDS file is replaced right after the CDS file.
    let want = format!(
        "\"{}\"",
        meshtune_sinks::duration::format_ms(timeout as f64)
    );
    let rds_path = dir.path().join("rds.json");
    eventually(10, "the RDS file to carry the route timeout", || async {
        std::fs::read_to_string(&rds_path)
            .ok()?
            .contains(&want)
            .then_some(())
    })
    .await;

    // The next report's response carries hints derived from the same knobs. The cycle
    // publishes hints after the sinks wrote their files: wait for the loop's hint set first
    // (on a loaded machine the report could otherwise overtake the publish stage).
    eventually(10, "the loop to publish its hints", || async {
        use meshtune_controller::HintSource;
        (!r.policy
            .hints()
            .hints_for("", &["svc".to_string()])
            .is_empty())
        .then_some(())
    })
    .await;
    let resp = client
        .report(report("p", 2, vec![upstream("svc", 100, 0, 20_000)]))
        .await
        .unwrap()
        .into_inner();
    let h = resp
        .hints
        .iter()
        .find(|h| h.cluster == "svc")
        .expect("hint for svc");
    assert_eq!(h.timeout_ms as u64, timeout);
    assert_eq!(h.concurrency_limit as u64, max_rq);
    assert_eq!(h.max_retries, Some(1));
    assert!(resp.hints.iter().all(|h| h.cluster != "other"));

    // Status JSON and model API.
    let (_, body) = http_get(&r.admin, "/api/destinations").await.unwrap();
    let j: Value = serde_json::from_str(&body).unwrap();
    let svc = j["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "svc")
        .unwrap();
    assert_eq!(
        svc["knobs"]["http.http1MaxPendingRequests"].as_f64(),
        Some(pending as f64)
    );
    assert_eq!(svc["last_decision"]["mode"], "enforce");
    let other = j["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "other")
        .unwrap();
    // A refused push is not in force: Istio's defaults are (nothing else configures it).
    assert_eq!(other["knobs_source"], "istio_defaults", "{other}");
    assert_eq!(
        other["knobs"]["http.http2MaxRequests"].as_f64(),
        Some(meshtune_core::knobs::ISTIO_UNLIMITED)
    );
    assert_eq!(svc["knobs_source"], "pushed");
    assert_eq!(other["last_decision"]["outcome"], "push_failed");
    let (_, body) = http_get(&r.admin, "/api/model").await.unwrap();
    let m: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["version"], "const-1");
    assert_eq!(m["mode"], "enforce");

    // A bad model file is refused; decisions continue with the old model.
    let (_, text) = http_get(&r.admin, "/metrics").await.unwrap();
    assert_eq!(metric(&text, "meshtune_model_refused_total"), 0.0);
    let cycles_before = metric(&text, "meshtune_decision_cycles_total");
    replace(&model, b"this is not an onnx model");
    let text = eventually(10, "the bad model to be refused", || async {
        let (_, t) = http_get(&r.admin, "/metrics").await.ok()?;
        (metric(&t, "meshtune_model_refused_total") >= 1.0).then_some(t)
    })
    .await;
    assert!(
        text.contains("meshtune_model_info{version=\"const-1\"} 1"),
        "{text}"
    );
    client
        .report(report("p", 3, vec![upstream("svc", 100, 0, 20_000)]))
        .await
        .unwrap();
    eventually(10, "decision cycles after the refusal", || async {
        let (_, t) = http_get(&r.admin, "/metrics").await.ok()?;
        (metric(&t, "meshtune_decision_cycles_total") > cycles_before + 1.0).then_some(())
    })
    .await;
    assert_eq!(
        r.policy.store().unwrap().current().model_version(),
        "const-1"
    );
    assert_eq!(
        cds_threshold(&cds, "svc", "max_pending_requests"),
        Some(pending)
    );

    // A good new model is swapped in and its knobs pushed.
    let u2 = normalised(0.25, 0.3, 0.4);
    replace(&model, &const_model(u2, "const-2"));
    let pending2 = expected(&u2, Knob::Http1MaxPendingRequests);
    assert_ne!(pending2, pending);
    let mut seq = 4;
    eventually(10, "the second model's thresholds", || {
        seq += 1;
        let s = seq;
        let mut c = client.clone();
        let cds = cds.clone();
        async move {
            c.report(report("p", s, vec![upstream("svc", 100, 0, 20_000)]))
                .await
                .ok()?;
            (cds_threshold(&cds, "svc", "max_pending_requests") == Some(pending2)).then_some(())
        }
    })
    .await;
    // Metrics are updated right after the sink returns.
    let text = eventually(10, "push metrics", || async {
        let (_, t) = http_get(&r.admin, "/metrics").await.ok()?;
        (metric(
            &t,
            "meshtune_pushes_total{sink=\"envoy-file\",result=\"ok\"",
        ) >= 2.0)
            .then_some(t)
    })
    .await;
    assert!(
        text.contains("meshtune_model_info{version=\"const-2\"} 1"),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "meshtune_pushes_total{sink=\"envoy-file\",result=\"ok\""
        ) >= 2.0,
        "{text}"
    );
    assert!(metric(&text, "meshtune_decisions_total{mode=\"enforce\"") >= 2.0);
    assert!(
        text.contains("meshtune_knob{namespace=\"default\",destination=\"svc\",knob=\"http.http1MaxPendingRequests\"}"),
        "{text}"
    );
    assert!(text.contains("meshtune_inference_seconds_count"));
    r.shutdown().await;

    // Recorder rows parse as dataset rows.
    let mut rdr = csv::Reader::from_path(&record).unwrap();
    let rows: Vec<DatasetRow> = rdr
        .records()
        .map(|rec| DatasetRow::from_record(&rec.unwrap().iter().collect::<Vec<_>>()).unwrap())
        .collect();
    assert!(rows.len() >= 3, "{} rows", rows.len());
    assert!(rows.iter().all(|r| r.source == "live"));
    let svc_rows: Vec<&DatasetRow> = rows.iter().filter(|r| r.destination == "svc").collect();
    assert!(!svc_rows.is_empty());
    // The first row was measured under Istio defaults; later rows under the pushed knobs.
    assert_eq!(svc_rows[0].knobs, Knobs::istio_defaults());
    assert!(svc_rows
        .iter()
        .any(|r| r.knobs.get(Knob::Http1MaxPendingRequests) == pending as f64));
    assert!(svc_rows.iter().all(|r| r.outcomes.offered_rps > 0.0));
    assert!(svc_rows[0].outcomes.error_rate > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_writes_nothing_and_serves_no_hints() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    replace(&model, &const_model(normalised(0.5, 0.5, 0.5), "const-o"));
    let cds = dir.path().join("cds.json");
    let sink = Arc::new(
        EnvoyFileSink::new(EnvoyFileConfig::new(
            &cds,
            vec![EnvoyDestination {
                destination: "svc".into(),
                cluster: EnvoyCluster::new("svc", vec!["127.0.0.1:9".into()]),
                route: None,
            }],
        ))
        .unwrap(),
    );
    let mut cfg = fast_loop();
    cfg.guardrails.mode = Mode::Observe;
    let r = start(&model, vec![sink], None, cfg).await;
    let mut client = FeatureServiceClient::connect(r.grpc.clone()).await.unwrap();
    client
        .report(report("p", 1, vec![upstream("svc", 100, 0, 5_000)]))
        .await
        .unwrap();
    let body = eventually(10, "a recommendation", || async {
        let (_, b) = http_get(&r.admin, "/api/destinations").await.ok()?;
        b.contains("\"recommended\"").then_some(b)
    })
    .await;
    let j: Value = serde_json::from_str(&body).unwrap();
    // Observe mode pushes nothing: the knobs in force are still Istio's defaults.
    assert_eq!(j["destinations"][0]["knobs_source"], "istio_defaults");
    assert_eq!(
        j["destinations"][0]["knobs"]["timeout"].as_f64(),
        Some(0.0),
        "{body}"
    );
    assert!(!j["destinations"][0]["last_decision"]["changed"]
        .as_array()
        .unwrap()
        .is_empty());
    let resp = client
        .report(report("p", 2, vec![upstream("svc", 100, 0, 5_000)]))
        .await
        .unwrap()
        .into_inner();
    assert!(resp.hints.is_empty());
    assert!(!cds.exists(), "observe mode must not write the CDS file");
    let (_, text) = http_get(&r.admin, "/metrics").await.unwrap();
    assert!(metric(&text, "meshtune_decisions_total{mode=\"observe\"") >= 1.0);
    assert_eq!(metric(&text, "meshtune_pushes_total"), 0.0);
    r.shutdown().await;
}

// ---------------------------------------------------------------- real Envoy

async fn raw_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Status line and headers of a GET (read until the blank line; Envoy delays closing the
/// connection after a local reply, so the time to the head is what a client waits).
async fn response_head(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_reaches_a_real_envoy_and_excess_load_is_shed_as_overflow() {
    let Some(bin) = meshtune_test_support::envoy::binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A slow upstream: 300 ms per request, plenty of capacity.
    let work = meshtune_testbed::workload::WorkloadServer::start(
        meshtune_testbed::workload::WorkloadConfig {
            capacity: 64,
            service_time: meshtune_testbed::workload::ServiceTime::Constant(Duration::from_millis(
                300,
            )),
            fail_every_n: None,
        },
    )
    .unwrap();
    let upstream_addr = work.addr().to_string();
    let cds = dir.path().join("cds.json");
    let rds = dir.path().join("rds.json");
    let mut ecfg = EnvoyFileConfig::new(
        &cds,
        vec![EnvoyDestination {
            destination: "backend".into(),
            cluster: EnvoyCluster::new("backend", vec![upstream_addr]),
            route: Some(EnvoyRoute {
                virtual_host: "backend".into(),
                domains: vec!["*".into()],
                prefix: "/".into(),
            }),
        }],
    );
    ecfg.rds_path = Some(rds.clone());
    let sink = Arc::new(EnvoyFileSink::new(ecfg.clone()).unwrap());
    sink.write_current().unwrap();

    // Envoy on the files.
    let bootstrap = meshtune_sinks::envoy::file_xds_bootstrap(
        &cds,
        Some((&rds, &ecfg.route_config_name)),
        0,
        0,
    );
    let envoy = EnvoyProcess::start(&Launch::new(&bin).concurrency(1), &bootstrap).unwrap();
    let listener = envoy.listener().to_string();
    // Before any decision: unlimited thresholds, so concurrent requests all succeed.
    eventually(10, "Envoy to serve the backend", || async {
        raw_get(&listener, "/")
            .await
            .ok()?
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;

    // The policy: at most 1 connection, 1 pending, 2 in flight; long timeout, no retries.
    let mut u = Knobs::istio_defaults().normalised();
    u[Knob::MaxConnections as usize] = 0.0;
    u[Knob::Http1MaxPendingRequests as usize] = 0.0;
    u[Knob::Http2MaxRequests as usize] = 0.0625; // 65536^0.0625 = 2
    u[Knob::RouteTimeoutMs as usize] = 0.8;
    u[Knob::RetryAttempts as usize] = 0.0;
    u[Knob::MaxRetries as usize] = 0.0;
    let model = dir.path().join("model.onnx");
    replace(&model, &const_model(u, "tight"));
    let r = start(&model, vec![sink], None, fast_loop()).await;
    let mut client = FeatureServiceClient::connect(r.grpc.clone()).await.unwrap();
    client
        .report(report("p", 1, vec![upstream("backend", 100, 0, 300_000)]))
        .await
        .unwrap();
    let p = "backend::default_priority::";
    // Envoy's /clusters shows the pushed thresholds (the controller runs on the other worker).
    tokio::task::block_in_place(|| {
        envoy.wait_for("/clusters", Duration::from_secs(10), |body| {
            body.contains(&format!("{p}max_connections::1\n"))
                && body.contains(&format!("{p}max_pending_requests::1\n"))
                && body.contains(&format!("{p}max_requests::2\n"))
        })
    })
    .unwrap();

    // Excess load: 12 concurrent requests against a 300 ms upstream. Most must be shed at
    // once as overflow (503 + x-envoy-overloaded), not queued behind the slow ones.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let l = listener.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let resp = response_head(&l, "/").await.unwrap_or_default();
            (resp, t.elapsed())
        }));
    }
    let mut ok = 0;
    let mut shed = 0;
    let mut shed_fast = 0;
    for t in tasks {
        let (resp, took) = t.await.unwrap();
        if resp.starts_with("HTTP/1.1 200") {
            ok += 1;
        } else if resp.starts_with("HTTP/1.1 503")
            && resp
                .to_ascii_lowercase()
                .contains("x-envoy-overloaded: true")
        {
            shed += 1;
            if took < Duration::from_millis(250) {
                shed_fast += 1;
            }
        }
    }
    let total = started.elapsed();
    assert!(ok >= 1, "some requests are served (ok {ok}, shed {shed})");
    assert!(
        shed >= 6,
        "excess requests are shed as overflow (ok {ok}, shed {shed})"
    );
    assert!(
        shed_fast >= 6,
        "overflow is immediate, not queued (fast {shed_fast} of {shed})"
    );
    assert!(ok + shed == 12, "every request is either served or shed");
    let overflow = envoy
        .stat("cluster.backend.upstream_rq_pending_overflow")
        .unwrap();
    assert!(
        overflow >= shed as u64,
        "Envoy counted {overflow} overflows, {shed} shed; total {total:?}"
    );
    r.shutdown().await;
    drop(envoy);
}
