//! The closed loop with the Istio sink and the ConfigMap model source inside the controller,
//! against a mocked Kubernetes API server at the HTTP level (kube-rs tower-test pattern):
//! reports → one decision cycle → the exact server-side apply calls (path, field manager,
//! body = the rendered DestinationRule/VirtualService for the knobs now in force, valid against
//! the Istio CRD schemas); a refused apply leaves nothing in force; the first model comes from
//! a ConfigMap and a corrupt one is refused naming it. Reach: the objects land in the
//! REPORTER's namespace with `exportTo: ["."]`; a reporter of another namespace gets no hints
//! of it and, when its namespace is not enabled, causes no write at all.

mod common;

use std::sync::Arc;

use common::{const_model, report, upstream};
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::ByteString;
use meshtune_controller::decision::Naming;
use meshtune_controller::gate::StaticGate;
use meshtune_controller::policy_loop::{LoopConfig, PolicyLoop};
use meshtune_controller::{Config, Controller};
use meshtune_core::knobs::{Knob, KNOB_COUNT};
use meshtune_core::DestKey;
use meshtune_policy::guardrails::{self, Mode};
use meshtune_policy::source::{load_initial, ModelSource};
use meshtune_policy::OnnxPolicy;
use meshtune_sinks::istio::{destination_rule, virtual_service, IstioTarget};
use meshtune_sinks::schema::CrdSchemas;
use meshtune_sinks::{IstioSink, IstioSinkConfig, LogSink, Sink};
use meshtune_test_support::kube_mock::{self, ok, pair, status};
use serde_json::{json, Value};

const HOST: &str = "reviews.bookinfo.svc.cluster.local";
const CLUSTER: &str = "outbound|9080||reviews.bookinfo.svc.cluster.local";
/// The reporters' namespace: where the client-side objects are written.
const CLIENT_NS: &str = "frontend";
/// Object name of the `reviews.bookinfo` host in another namespace.
const NAME: &str = "reviews-bookinfo-svc-cluster-local";
const DR: &str = "/apis/networking.istio.io/v1/namespaces/frontend/destinationrules";
const VS: &str = "/apis/networking.istio.io/v1/namespaces/frontend/virtualservices";

const ISTIO_API: &str = "networking.istio.io/v1";

/// Istio CRD schemas: `MESHTUNE_ISTIO_CRDS`, else the vendored `third_party/istio-crds/`.
/// Always required: a missing file fails the test, naming the path.
fn crds() -> Arc<CrdSchemas> {
    Arc::new(CrdSchemas::locate_from_env().unwrap_or_else(|e| panic!("{e}")))
}

/// Normalised policy output: every knob at 0.4 of its range.
const U: [f32; KNOB_COUNT] = [0.4; KNOB_COUNT];

/// A report of a reporter in `namespace`.
fn report_in(namespace: &str, pod: &str, seq: u64, n: u64) -> meshtune_proto::v1::ReportRequest {
    let mut r = report(pod, seq, vec![upstream(CLUSTER, n, 10.min(n), 40_000)]);
    r.reporter.as_mut().unwrap().namespace = namespace.into();
    r
}

/// A controller that has seen traffic from `frontend` to the `reviews` host, and a loop over
/// it (enforce, no dwell or step limit, Istio naming) with the constant model and `sink`.
fn setup(sink: Arc<dyn Sink>) -> Arc<PolicyLoop> {
    setup_gated(sink, Arc::new(StaticGate::All), &[CLIENT_NS])
}

fn setup_gated(
    sink: Arc<dyn Sink>,
    gate: Arc<dyn meshtune_controller::gate::NamespaceGate>,
    reporter_namespaces: &[&str],
) -> Arc<PolicyLoop> {
    let controller = Arc::new(Controller::new(Config::default()).unwrap());
    for ns in reporter_namespaces {
        for seq in 1..=3 {
            let r = controller.handle_report(&report_in(ns, "client-0", seq, 200));
            assert!(r.is_ok(), "report {seq}: {r:?}");
        }
    }
    let model = OnnxPolicy::from_bytes(&const_model(U, "const-istio"), "test").unwrap();
    PolicyLoop::new(
        controller,
        Some(model),
        vec![sink],
        Arc::new(LogSink::new(Box::new(std::io::sink()))),
        None,
        LoopConfig {
            min_requests: 1,
            naming: Naming::IstioHost,
            guardrails: guardrails::Config {
                mode: Mode::Enforce,
                min_dwell: std::time::Duration::ZERO,
                max_step_factor: 1e9,
                max_linear_step: 1.0,
                rollback_windows: 0,
                ..guardrails::Config::default()
            },
            gate,
            ..LoopConfig::default()
        },
    )
}

#[tokio::test]
async fn a_decision_is_applied_to_istio_by_server_side_apply_and_refusals_revert_it() {
    let (client, mut server) = pair();
    let schemas = crds();
    let sink = IstioSink::new(client, IstioSinkConfig::default()).with_schemas(schemas.clone());
    let policy = setup(Arc::new(sink));
    let served = tokio::spawn(async move {
        // The sink's look-ups: each object absent, no other object in the namespace.
        for (list, kind) in [(DR, "DestinationRule"), (VS, "VirtualService")] {
            server.expect_absent(list, NAME, ISTIO_API, kind).await;
        }
        let echo = |c: &kube_mock::Call| ok(&c.body);
        let dr = server
            .expect(Method::PATCH, &format!("{DR}/{NAME}"), echo)
            .await;
        let vs = server
            .expect(Method::PATCH, &format!("{VS}/{NAME}"), echo)
            .await;
        (dr, vs, server)
    });
    let summary = policy.cycle().await.expect("a model is loaded");
    let (dr_call, vs_call, mut server) = served.await.unwrap();
    let (dr, vs) = (&dr_call.body, &vs_call.body);
    assert_eq!(summary.destinations, 1, "{summary:?}");
    assert_eq!(summary.pushed, 1, "{summary:?}");
    assert_eq!(summary.push_failures, 0, "{summary:?}");
    assert_eq!(summary.model_version, "const-istio");

    // Server-side apply under the fixed field manager, forced (meshtune owns new objects).
    for call in [&dr_call, &vs_call] {
        assert_eq!(
            call.params(),
            [("fieldManager", "meshtune"), ("force", "true")].into()
        );
    }
    // The bodies are exactly the objects rendered for the knobs now in force, and those are
    // the model's output (no guardrail clamps these mid-range values away).
    let knobs = policy
        .knobs_in_force(&DestKey::new(CLIENT_NS, HOST))
        .await
        .expect("pushed knobs in force");
    let expected = meshtune_core::Knobs::from_normalised(&U);
    for k in Knob::ALL {
        let (got, want) = (knobs.get(k), expected.get(k));
        assert!(
            (got - want).abs() <= want.abs() * 1e-6 + 0.5,
            "{k:?}: in force {got}, model said {want}"
        );
    }
    // Apart from the time of the apply (`meshtune.io/applied-at`, read back at a restart so the
    // dwell holds), they are the rendered objects.
    let without_applied_at = |o: &serde_json::Value| {
        let mut o = o.clone();
        let at = o["metadata"]["annotations"]
            .as_object_mut()
            .and_then(|a| a.remove(meshtune_sinks::istio::APPLIED_AT_ANNOTATION))
            .expect("the apply time is recorded");
        let at = meshtune_sinks::istio::parse_applied_at(at.as_str().unwrap()).unwrap();
        let age = std::time::SystemTime::now()
            .duration_since(at)
            .unwrap_or_default();
        assert!(age < std::time::Duration::from_secs(60), "{age:?}");
        o
    };
    let target = IstioTarget::new(HOST, CLIENT_NS);
    assert_eq!(without_applied_at(dr), destination_rule(&target, &knobs));
    assert_eq!(without_applied_at(vs), virtual_service(&target, &knobs));
    // Client-side objects: in the reporters' namespace, visible only there.
    for o in [dr, vs] {
        assert_eq!(o["metadata"]["namespace"], CLIENT_NS);
        assert_eq!(o["spec"]["exportTo"], json!(["."]));
    }
    assert_eq!(
        dr["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshtune"
    );
    assert!(
        dr["spec"]["trafficPolicy"]["connectionPool"]["http"]["http1MaxPendingRequests"].is_i64()
    );
    schemas.validate(dr).unwrap();
    schemas.validate(vs).unwrap();

    // Second cycle with a different model: the API server refuses the apply (admission
    // webhook); the push is reported as failed and the previous knobs stay in force.
    let before = knobs;
    let u2 = [0.7; KNOB_COUNT];
    policy
        .store()
        .unwrap()
        .try_swap(&const_model(u2, "const-istio-2"), "test")
        .unwrap();
    let served = tokio::spawn(async move {
        for (list, kind) in [(DR, "DestinationRule"), (VS, "VirtualService")] {
            // The objects exist now, labelled as meshtune's.
            let object = json!({"apiVersion": ISTIO_API, "kind": kind,
                "metadata": {"name": NAME, "namespace": CLIENT_NS,
                    "labels": {"app.kubernetes.io/managed-by": "meshtune"},
                    "resourceVersion": "7"},
                "spec": {"host": HOST}});
            server
                .expect_get(&format!("{list}/{NAME}"), ok(&object))
                .await;
            let empty = kube_mock::list(ISTIO_API, kind, "7", vec![]);
            server.expect_get(list, ok(&empty)).await;
        }
        server
            .expect(Method::PATCH, &format!("{DR}/{NAME}"), |_| {
                status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "admission webhook denied the request",
                )
            })
            .await;
    });
    let summary = policy.cycle().await.expect("a model is loaded");
    served.await.unwrap();
    assert_eq!(summary.pushed, 1, "decided to push: {summary:?}");
    assert_eq!(summary.push_failures, 1, "{summary:?}");
    assert_eq!(summary.model_version, "const-istio-2");
    assert_eq!(
        policy.knobs_in_force(&DestKey::new(CLIENT_NS, HOST)).await,
        Some(before),
        "a refused apply leaves the previous knobs in force"
    );
}

/// Reach of a reporter: reporters of `frontend` (enabled) and `intruder` (not enabled) both
/// report heavy traffic to the same host. Only `frontend` is written to (the mocked API server
/// sees nothing else, ever), the refusal is counted, and `intruder`'s reporters get none of
/// `frontend`'s hints while `frontend`'s do.
#[tokio::test]
async fn a_reporter_cannot_reach_another_namespace_nor_one_not_enabled() {
    let (client, mut server) = pair();
    let schemas = crds();
    let sink = IstioSink::new(client, IstioSinkConfig::default()).with_schemas(schemas.clone());
    let gate = Arc::new(StaticGate::parse(&[CLIENT_NS]).unwrap());
    let policy = setup_gated(Arc::new(sink), gate, &[CLIENT_NS, "intruder"]);
    let served = tokio::spawn(async move {
        for (list, kind) in [(DR, "DestinationRule"), (VS, "VirtualService")] {
            server.expect_absent(list, NAME, ISTIO_API, kind).await;
        }
        let echo = |c: &kube_mock::Call| ok(&c.body);
        let dr = server
            .expect(Method::PATCH, &format!("{DR}/{NAME}"), echo)
            .await;
        let vs = server
            .expect(Method::PATCH, &format!("{VS}/{NAME}"), echo)
            .await;
        (dr, vs, server)
    });
    let summary = policy.cycle().await.expect("a model is loaded");
    let (dr, vs, mut server) = served.await.unwrap();
    assert_eq!(summary.destinations, 1, "only frontend's key: {summary:?}");
    assert_eq!(summary.pushed, 1, "{summary:?}");
    for o in [&dr.body, &vs.body] {
        assert_eq!(o["metadata"]["namespace"], CLIENT_NS);
        assert_eq!(o["spec"]["exportTo"], json!(["."]));
        schemas.validate(o).unwrap();
    }
    assert!(policy
        .knobs_in_force(&DestKey::new("intruder", HOST))
        .await
        .is_none());
    let controller = policy.controller().clone();
    let metrics = controller.metrics_text();
    assert!(
        metrics.contains("meshtune_tuning_refused_total{reason=\"namespace_not_enabled\"} 1"),
        "{metrics}"
    );
    // Hints: frontend's reporters get the hint of (frontend, cluster); intruder's get none,
    // although they report the same cluster.
    let mine = controller
        .handle_report(&report_in(CLIENT_NS, "client-0", 10, 5))
        .unwrap();
    assert_eq!(mine.hints.len(), 1, "{mine:?}");
    assert_eq!(mine.hints[0].cluster, CLUSTER);
    let theirs = controller
        .handle_report(&report_in("intruder", "client-0", 10, 5))
        .unwrap();
    assert!(theirs.hints.is_empty(), "{theirs:?}");
    // No other request ever reached the API server (no write to `intruder` or `bookinfo`).
    drop(policy);
    drop(controller);
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), server.next_request())
        .await
        .expect("the client is dropped");
    assert!(
        next.is_none(),
        "unexpected API call: {:?}",
        next.map(|(r, _)| r.uri().clone())
    );
}

fn configmap(bytes: &[u8]) -> Value {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("meshtune-model".into());
    cm.metadata.namespace = Some("meshtune-system".into());
    cm.metadata.resource_version = Some("3".into());
    cm.binary_data = Some(
        [(
            meshtune_policy::configmap::MODEL_KEY.to_string(),
            ByteString(bytes.to_vec()),
        )]
        .into(),
    );
    let mut v = serde_json::to_value(&cm).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("ConfigMap");
    v
}

const CM_PATH: &str = "/api/v1/namespaces/meshtune-system/configmaps/meshtune-model";

#[tokio::test]
async fn the_first_model_comes_from_a_configmap_and_a_corrupt_one_is_refused_by_name() {
    let good = const_model(U, "from-configmap");
    let (client, mut server) = pair();
    let served = tokio::spawn(async move {
        server.expect_get(CM_PATH, ok(&configmap(&good))).await;
        let bad_cm = configmap(b"not an onnx model");
        server.expect_get(CM_PATH, ok(&bad_cm)).await;
        let missing = status(StatusCode::NOT_FOUND, "NotFound", "not found");
        server.expect_get(CM_PATH, missing).await;
    });
    let source = [ModelSource::ConfigMap {
        namespace: "meshtune-system".into(),
        name: "meshtune-model".into(),
    }];
    let m = load_initial(&source, Some(&client))
        .await
        .expect("valid model in the ConfigMap")
        .expect("a ConfigMap source gives a model");
    assert_eq!(m.model_version(), "from-configmap");
    assert!(
        m.origin().contains("meshtune-system/meshtune-model"),
        "{}",
        m.origin()
    );

    let e = load_initial(&source, Some(&client))
        .await
        .expect_err("a corrupt model is refused");
    assert!(
        e.to_string().contains("meshtune-system/meshtune-model"),
        "the error names the ConfigMap: {e}"
    );
    let e = load_initial(&source, Some(&client))
        .await
        .expect_err("a missing ConfigMap is an error");
    assert!(e.to_string().contains("meshtune-model"), "{e}");
    served.await.unwrap();
}
