//! Supervision of the decision loop, in process over real sockets: a panicking sink is caught,
//! counted and the loop goes on; a stalled loop makes `/readyz` fail; a real ONNX model whose
//! output is NaN holds the knobs in force (no push, counted).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{const_model, report, upstream};
use meshtune_controller::decision::Naming;
use meshtune_controller::policy_loop::{serve_closed_loop, LoopConfig, PolicyLoop};
use meshtune_controller::top::http_get;
use meshtune_controller::{Config, Controller};
use meshtune_core::features::FEATURE_COUNT;
use meshtune_core::knobs::KNOB_COUNT;
use meshtune_policy::guardrails::{self, Mode};
use meshtune_policy::onnx::{export_mlp, Activation, MlpLayer, ModelMeta};
use meshtune_policy::OnnxPolicy;
use meshtune_proto::v1::feature_service_client::FeatureServiceClient;
use meshtune_sinks::sink::{ApplyFuture, ApplyReport, ItemReport, Outcome};
use meshtune_sinks::{Decision, Sink};
use tokio::net::TcpListener;

/// What the test sink does on each call.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Panics on the first call, applies every later one.
    PanicOnce,
    /// Never answers.
    Hang,
}

struct TestSink {
    behaviour: Behaviour,
    calls: AtomicUsize,
    applied: AtomicUsize,
}

impl TestSink {
    fn new(behaviour: Behaviour) -> Arc<Self> {
        Arc::new(Self {
            behaviour,
            calls: AtomicUsize::new(0),
            applied: AtomicUsize::new(0),
        })
    }
}

impl Sink for TestSink {
    fn name(&self) -> &'static str {
        "test"
    }

    fn apply<'a>(&'a self, decisions: &'a [Decision]) -> ApplyFuture<'a> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            match self.behaviour {
                Behaviour::PanicOnce if call == 0 => panic!("injected sink panic"),
                Behaviour::Hang => std::future::pending::<()>().await,
                _ => {}
            }
            self.applied.fetch_add(1, Ordering::SeqCst);
            Ok(ApplyReport {
                items: decisions
                    .iter()
                    .map(|d| ItemReport {
                        destination: d.destination.clone(),
                        namespace: d.namespace.clone(),
                        outcome: Outcome::Applied { objects: vec![] },
                    })
                    .collect(),
            })
        })
    }
}

/// Enforce mode, every cycle may push.
fn fast_loop(interval: Duration) -> LoopConfig {
    LoopConfig {
        interval,
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
    controller: Arc<Controller>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), meshtune_controller::ControllerError>>,
}

async fn start(model: OnnxPolicy, sink: Arc<dyn Sink>, config: LoopConfig) -> Running {
    let g = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = format!("http://{}", g.local_addr().unwrap());
    let admin = format!("http://{}", a.local_addr().unwrap());
    // The tests report faster than a filter would: no per-reporter rate.
    let controller = Arc::new(
        Controller::new(Config {
            reports_per_sec: 0.0,
            ..Config::default()
        })
        .unwrap(),
    );
    let policy = PolicyLoop::new(
        controller.clone(),
        Some(model),
        vec![sink],
        Arc::new(meshtune_sinks::LogSink::new(Box::new(std::io::sink()))),
        None,
        config,
    );
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_closed_loop(
        controller.clone(),
        policy,
        Vec::new(),
        None,
        g,
        a,
        async move {
            let _ = rx.await;
        },
    ));
    Running {
        grpc,
        admin,
        controller,
        stop,
        task,
    }
}

impl Running {
    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stops within 10 s, even with a cycle stuck in a sink")
            .unwrap()
            .unwrap();
    }
}

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
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends a report for "svc" (a new sequence each call).
async fn send(grpc: &str, seq: u64) {
    let mut client = FeatureServiceClient::connect(grpc.to_string())
        .await
        .unwrap();
    client
        .report(report("p", seq, vec![upstream("svc", 200, 0, 20_000)]))
        .await
        .unwrap();
}

fn mid_model() -> OnnxPolicy {
    OnnxPolicy::from_bytes(&const_model([0.5; KNOB_COUNT], "mid"), "test").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_cycle_is_caught_counted_and_the_loop_goes_on() {
    let sink = TestSink::new(Behaviour::PanicOnce);
    let run = start(
        mid_model(),
        sink.clone(),
        fast_loop(Duration::from_millis(50)),
    )
    .await;
    let mut seq = 0;
    // Report until the sink applied a push after the panic.
    eventually(20, "a push applied after the panicking one", || {
        seq += 1;
        let (grpc, sink) = (run.grpc.clone(), sink.clone());
        let s = seq;
        async move {
            send(&grpc, s).await;
            (sink.applied.load(Ordering::SeqCst) > 0).then_some(())
        }
    })
    .await;
    assert!(sink.calls.load(Ordering::SeqCst) >= 2);
    let (_, text) = http_get(&run.admin, "/metrics").await.unwrap();
    assert_eq!(
        metric(&text, "meshtune_decision_cycle_panics_total"),
        1.0,
        "{text}"
    );
    let (status, _) = http_get(&run.admin, "/readyz").await.unwrap();
    assert_eq!(status, 200, "cycles complete again: ready");
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_the_loop_stalls() {
    let sink = TestSink::new(Behaviour::Hang);
    let run = start(
        mid_model(),
        sink.clone(),
        fast_loop(Duration::from_millis(100)),
    )
    .await;
    // Without traffic cycles complete (nothing to push): ready.
    eventually(10, "ready", || async {
        matches!(http_get(&run.admin, "/readyz").await, Ok((200, _))).then_some(())
    })
    .await;
    assert!(run.controller.loop_stalled().is_none());
    // Traffic: the next cycle pushes into a sink that never answers.
    send(&run.grpc, 1).await;
    let body = eventually(20, "/readyz to fail", || async {
        match http_get(&run.admin, "/readyz").await {
            Ok((503, body)) => Some(body),
            _ => None,
        }
    })
    .await;
    assert!(body.contains("decision loop"), "{body}");
    assert_eq!(
        sink.calls.load(Ordering::SeqCst),
        1,
        "stuck in the first push"
    );
    assert!(run.controller.loop_stalled().unwrap() > Duration::from_millis(300));
    run.shutdown().await;
}

/// A real ONNX model (the repository's MLP exporter) whose output is NaN for any input with a
/// positive feature: the first layer overflows to +inf and -inf, the second adds them. All
/// weights are finite, so the model loads; it bypasses the smoke test the way a model would
/// whose NaN only shows on live inputs.
fn nan_model() -> OnnxPolicy {
    let big = 3.0e38_f32;
    let bytes = export_mlp(
        &[
            MlpLayer {
                in_dim: FEATURE_COUNT,
                out_dim: 2,
                weight: [vec![big; FEATURE_COUNT], vec![-big; FEATURE_COUNT]].concat(),
                bias: vec![big, -big],
                activation: Activation::Identity,
            },
            MlpLayer {
                in_dim: 2,
                out_dim: KNOB_COUNT,
                weight: vec![1.0; 2 * KNOB_COUNT],
                bias: vec![0.0; KNOB_COUNT],
                activation: Activation::Identity,
            },
        ],
        &ModelMeta {
            model_version: "nan".into(),
            provenance: "supervision test".into(),
        },
    )
    .unwrap();
    OnnxPolicy::from_bytes(&bytes, "nan-test").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_model_output_holds_the_knobs_in_force() {
    let model = nan_model();
    // The model really outputs NaN for a live-like input, and a finite value for zeros.
    let out = model.infer(&[[0.5; FEATURE_COUNT]]).unwrap();
    assert!(out[0].iter().all(|v| v.is_nan()), "{out:?}");
    let out = model.infer(&[[0.0; FEATURE_COUNT]]).unwrap();
    assert!(out[0].iter().all(|v| v.is_finite()), "{out:?}");

    let sink = TestSink::new(Behaviour::PanicOnce);
    let run = start(model, sink.clone(), fast_loop(Duration::from_millis(50))).await;
    let mut seq = 0;
    let text = eventually(20, "non-finite outputs to be counted", || {
        seq += 1;
        let (grpc, admin) = (run.grpc.clone(), run.admin.clone());
        let s = seq;
        async move {
            send(&grpc, s).await;
            let (_, text) = http_get(&admin, "/metrics").await.ok()?;
            (metric(&text, "meshtune_policy_nonfinite_outputs_total") >= 3.0).then_some(text)
        }
    })
    .await;
    assert_eq!(sink.calls.load(Ordering::SeqCst), 0, "nothing pushed");
    assert_eq!(metric(&text, "meshtune_decision_cycle_panics_total"), 0.0);
    let (_, body) = http_get(&run.admin, "/api/destinations").await.unwrap();
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    let svc = &d["destinations"][0];
    assert_eq!(
        svc["last_decision"]["outcome"], "hold_invalid_output",
        "{svc}"
    );
    assert_eq!(
        svc["knobs_source"], "istio_defaults",
        "nothing of meshtune's in force: {svc}"
    );
    assert!(svc["hint"].is_null(), "no hint from a NaN: {svc}");
    run.shutdown().await;
}
