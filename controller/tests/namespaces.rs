//! Issue 11 items 1 and 3 against the mocked Kubernetes API server (kube-rs tower-test
//! pattern): the namespace label watch (data-plane object applied — validated against the
//! Istio CRD schemas — and removed when the label goes or the namespace is deleted; strays
//! swept; followers write nothing), the namespace gate (reports of other namespaces counted
//! and ignored), the MeshtunePolicy watch (effective mode per namespace), the policy status
//! and Events, and recommend-mode approvals (exactly the approved recommendation is applied; a
//! stale approval is refused with a condition).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{const_model, report, upstream};
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::watcher::Event;
use meshtune_controller::decision::Naming;
use meshtune_controller::leader::Leadership;
use meshtune_controller::namespaces::{
    DataPlane, NamespaceConfig, NamespaceController, NamespaceMetrics, ENABLED_LABEL,
};
use meshtune_controller::policies::PolicyStore;
use meshtune_controller::policy_loop::{LoopConfig, PolicyLoop};
use meshtune_controller::review::StatusWriter;
use meshtune_controller::{Config, Controller};
use meshtune_core::knobs::{Knobs, KNOB_COUNT};
use meshtune_crd::{MeshtunePolicy, Mode};
use meshtune_policy::guardrails;
use meshtune_policy::OnnxPolicy;
use meshtune_sinks::schema::CrdSchemas;
use meshtune_sinks::sink::{ApplyFuture, ApplyReport, ItemReport, Outcome};
use meshtune_sinks::{Decision, LogSink, Sink};
use meshtune_test_support::kube_mock::{self, ok, pair, ApiServer, Call};
use serde_json::{json, Value};

const SILENCE: Duration = Duration::from_millis(300);
const WASMPLUGINS: &str = "/apis/extensions.istio.io/v1alpha1/wasmplugins";
const HOST: &str = "reviews.shop.svc.cluster.local";
const CLUSTER: &str = "outbound|9080||reviews.shop.svc.cluster.local";

fn wasmplugin(ns: &str) -> String {
    format!("/apis/extensions.istio.io/v1alpha1/namespaces/{ns}/wasmplugins/meshtune")
}

fn envoyfilter(ns: &str) -> String {
    format!("/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters/meshtune")
}

fn namespace(name: &str, label: Option<&str>) -> Namespace {
    let mut v = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    if let Some(l) = label {
        v["metadata"]["labels"] = json!({ ENABLED_LABEL: l });
    }
    serde_json::from_value(v).unwrap()
}

fn schemas() -> CrdSchemas {
    CrdSchemas::locate_from_env().expect("the vendored Istio CRDs (third_party/istio-crds)")
}

fn controller(
    client: kube::Client,
    data_plane: DataPlane,
    leadership: Option<Leadership>,
) -> NamespaceController {
    NamespaceController::new(
        client,
        NamespaceConfig {
            data_plane,
            module_sha256: Some("ab".repeat(32)),
            ..NamespaceConfig::default()
        },
        leadership,
        NamespaceMetrics::default(),
    )
}

/// Answers the undo of a namespace with nothing to undo (no DestinationRule/VirtualService).
async fn expect_nothing_to_undo(server: &mut ApiServer, ns: &str) {
    for (plural, kind) in [
        ("destinationrules", "DestinationRule"),
        ("virtualservices", "VirtualService"),
    ] {
        let empty = kube_mock::list("networking.istio.io/v1", kind, "1", vec![]);
        server
            .expect_get(
                &format!("/apis/networking.istio.io/v1/namespaces/{ns}/{plural}"),
                ok(&empty),
            )
            .await;
    }
}

fn deleted(name: &str) -> http::Response<kube::client::Body> {
    ok(
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success",
        "details": {"name": name}}),
    )
}

#[tokio::test]
async fn label_watch_applies_validated_objects_and_removes_them_when_the_label_goes() {
    let (client, mut server) = pair();
    let nc = Arc::new(controller(client, DataPlane::Wasmplugin, None));
    let gate = nc.gate();
    let served = tokio::spawn(async move {
        // The first list completes: strays are swept, the enabled namespace gets its object.
        let strays = kube_mock::list(
            "extensions.istio.io/v1alpha1",
            "WasmPlugin",
            "4",
            vec![
                json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                "metadata": {"name": "meshtune", "namespace": "gone",
                    "labels": {"app.kubernetes.io/managed-by": "meshtune"}}, "spec": {}}),
            ],
        );
        let listed = server
            .expect(Method::GET, WASMPLUGINS, |_| ok(&strays))
            .await;
        let applied = server.expect_apply(&wasmplugin("shop")).await;
        server
            .expect(Method::DELETE, &wasmplugin("gone"), |_| deleted("meshtune"))
            .await;
        expect_nothing_to_undo(&mut server, "gone").await;
        // An EnvoyFilter left from `--data-plane envoyfilter` is deleted (the filter would
        // load twice).
        let switched = kube_mock::list(
            "networking.istio.io/v1alpha3",
            "EnvoyFilter",
            "5",
            vec![
                json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                "metadata": {"name": "meshtune", "namespace": "shop",
                    "labels": {"app.kubernetes.io/managed-by": "meshtune"}}, "spec": {}}),
            ],
        );
        server
            .expect_get(
                "/apis/networking.istio.io/v1alpha3/envoyfilters",
                ok(&switched),
            )
            .await;
        server
            .expect(Method::DELETE, &envoyfilter("shop"), |_| {
                deleted("meshtune")
            })
            .await;
        // The label goes: the object is deleted and what meshtune wrote is undone.
        server
            .expect(Method::DELETE, &wasmplugin("shop"), |_| deleted("meshtune"))
            .await;
        expect_nothing_to_undo(&mut server, "shop").await;
        // A namespace labelled later gets its object; its deletion removes it again (404: gone
        // with the namespace is fine).
        let later = server.expect_apply(&wasmplugin("later")).await;
        server
            .expect(Method::DELETE, &wasmplugin("later"), |_| {
                kube_mock::not_found("meshtune")
            })
            .await;
        expect_nothing_to_undo(&mut server, "later").await;
        server
            .expect_no_request(SILENCE, "an unlabelled namespace needs nothing")
            .await;
        (listed, applied, later)
    });
    nc.handle(Event::Init).await;
    nc.handle(Event::InitApply(namespace("shop", Some("true"))))
        .await;
    nc.handle(Event::InitApply(namespace("plain", None))).await;
    nc.handle(Event::InitApply(namespace("off", Some("false"))))
        .await;
    nc.handle(Event::InitDone).await;
    assert_eq!(gate.enabled(), ["shop".to_string()].into());
    nc.handle(Event::Apply(namespace("shop", None))).await;
    assert!(gate.enabled().is_empty());
    nc.handle(Event::Apply(namespace("later", Some("true"))))
        .await;
    assert!(gate.enabled().contains("later"));
    nc.handle(Event::Delete(namespace("later", Some("true"))))
        .await;
    nc.handle(Event::Apply(namespace("plain", None))).await;
    let (listed, applied, later): (Call, Call, Call) = served.await.unwrap();
    assert_eq!(
        listed.params().get("labelSelector").copied(),
        Some("app.kubernetes.io%2Fmanaged-by%3Dmeshtune")
    );
    assert_eq!(applied.params().get("fieldManager"), Some(&"meshtune"));
    assert_eq!(applied.params().get("force"), Some(&"true"));
    let body = &applied.body;
    assert_eq!(body["kind"], "WasmPlugin");
    assert_eq!(body["metadata"]["namespace"], "shop");
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshtune"
    );
    assert_eq!(body["spec"]["sha256"], "ab".repeat(32));
    assert_eq!(body["spec"]["failStrategy"], "FAIL_OPEN");
    let schemas = schemas();
    schemas.validate(body).unwrap();
    schemas.validate(&later.body).unwrap();
    assert_eq!(later.body["metadata"]["namespace"], "later");
}

#[tokio::test]
async fn envoyfilter_data_plane_and_followers_write_nothing() {
    let (client, mut server) = pair();
    let (tx, leadership) = Leadership::channel();
    let nc = Arc::new(controller(client, DataPlane::Envoyfilter, Some(leadership)));
    let served = tokio::spawn(async move {
        server
            .expect_no_request(SILENCE, "a follower keeps the gate but writes nothing")
            .await;
        server
    });
    nc.handle(Event::Init).await;
    nc.handle(Event::InitApply(namespace("shop", Some("true"))))
        .await;
    nc.handle(Event::InitDone).await;
    nc.handle(Event::Apply(namespace("more", Some("true"))))
        .await;
    assert!(
        nc.gate().enabled().contains("more"),
        "the gate follows on followers"
    );
    let mut server = served.await.unwrap();
    tx.send(true).unwrap();
    let served = tokio::spawn(async move {
        let empty = kube_mock::list("networking.istio.io/v1alpha3", "EnvoyFilter", "1", vec![]);
        server
            .expect_get(
                "/apis/networking.istio.io/v1alpha3/envoyfilters",
                ok(&empty),
            )
            .await;
        let a = server.expect_apply(&envoyfilter("more")).await;
        let b = server.expect_apply(&envoyfilter("shop")).await;
        let none = kube_mock::list("extensions.istio.io/v1alpha1", "WasmPlugin", "1", vec![]);
        server.expect_get(WASMPLUGINS, ok(&none)).await;
        (a, b)
    });
    // Leading now: a full reconciliation applies every enabled namespace.
    nc.reconcile(true).await;
    let (a, b) = served.await.unwrap();
    let schemas = schemas();
    for c in [&a, &b] {
        assert_eq!(c.body["kind"], "EnvoyFilter");
        assert!(c.body["spec"].get("sha256").is_none());
        schemas.validate(&c.body).unwrap();
    }
    assert_eq!(b.body["metadata"]["namespace"], "shop");
}

/// A sink that records what it is asked to apply.
#[derive(Default)]
struct Recording(Mutex<Vec<Decision>>);

impl Sink for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn apply<'a>(&'a self, decisions: &'a [Decision]) -> ApplyFuture<'a> {
        Box::pin(async move {
            self.0.lock().unwrap().extend(decisions.iter().cloned());
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

fn policy_object(ns: &str, spec: Value) -> MeshtunePolicy {
    serde_json::from_value(
        json!({"apiVersion": "meshtune.io/v1alpha1", "kind": "MeshtunePolicy",
        "metadata": {"name": "default", "namespace": ns, "generation": 1, "uid": "u-1"},
        "spec": spec}),
    )
    .unwrap()
}

struct Loop {
    controller: Arc<Controller>,
    policy: Arc<PolicyLoop>,
    store: Arc<PolicyStore>,
    sink: Arc<Recording>,
}

/// A loop over the label gate `enabled`, policies watched, status written through `client`.
fn policy_loop(client: kube::Client, enabled: &[&str], u: f32) -> Loop {
    let controller = Arc::new(Controller::new(Config::default()).unwrap());
    // The gate is filled the way the namespace watch fills it (a follower: it writes nothing).
    let (_tx, follower) = Leadership::channel();
    let nc = controller_for_gate(follower);
    let gate = nc.gate();
    futures::executor::block_on(async {
        nc.handle(Event::Init).await;
        for n in enabled {
            nc.handle(Event::InitApply(namespace(n, Some("true"))))
                .await;
        }
        nc.handle(Event::InitDone).await;
    });
    let sink = Arc::new(Recording::default());
    let policy = PolicyLoop::new(
        controller.clone(),
        Some(OnnxPolicy::from_bytes(&const_model([u; KNOB_COUNT], "m-test"), "test").unwrap()),
        vec![sink.clone() as Arc<dyn Sink>],
        Arc::new(LogSink::new(Box::new(std::io::sink()))),
        None,
        LoopConfig {
            interval: Duration::from_millis(10),
            min_requests: 1,
            naming: Naming::IstioHost,
            gate,
            guardrails: guardrails::Config {
                min_dwell: Duration::ZERO,
                max_step_factor: 1e9,
                max_linear_step: 1.0,
                rollback_windows: 0,
                ..guardrails::Config::default()
            },
            ..LoopConfig::default()
        },
    );
    let store = Arc::new(PolicyStore::new(Mode::Observe));
    policy.set_policies(
        store.clone(),
        Some(Arc::new(StatusWriter::new(
            client,
            "meshtune",
            Duration::ZERO,
            Some("pod-a".into()),
        ))),
    );
    Loop {
        controller,
        policy,
        store,
        sink,
    }
}

fn controller_for_gate(leadership: Leadership) -> NamespaceController {
    // Never used to write: a follower (the client is a mock nobody answers).
    let (client, _server) = pair();
    std::mem::forget(_server);
    controller(client, DataPlane::None, Some(leadership))
}

fn report_from(ns: &str, pod: &str, seq: u64, cluster: &str) -> meshtune_proto::v1::ReportRequest {
    let mut r = report(pod, seq, vec![upstream(cluster, 200, 0, 20_000)]);
    r.reporter.as_mut().unwrap().namespace = ns.into();
    r
}

fn set_policies(store: &PolicyStore, policies: Vec<MeshtunePolicy>) {
    store.handle(Event::Init);
    for p in policies {
        store.handle(Event::InitApply(p));
    }
    store.handle(Event::InitDone);
}

/// Answers one Event POST in `ns` (echoing it) and returns its body.
async fn expect_event(server: &mut ApiServer, ns: &str) -> Value {
    server
        .expect(
            Method::POST,
            &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
            |c| ok(&c.body),
        )
        .await
        .body
}

async fn expect_status(server: &mut ApiServer, ns: &str) -> Call {
    server
        .expect_apply(&format!(
            "/apis/meshtune.io/v1alpha1/namespaces/{ns}/meshtunepolicies/default/status"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_namespaces_not_enabled_are_counted_and_ignored() {
    let (client, _server) = pair();
    let l = policy_loop(client, &["shop"], 0.4);
    l.controller
        .handle_report(&report_from("shop", "a", 1, CLUSTER))
        .unwrap();
    let s = cycle(&l).await;
    assert_eq!(
        s.destinations, 0,
        "policies not listed yet: nothing decided"
    );
    set_policies(&l.store, vec![]);
    l.controller
        .handle_report(&report_from(
            "other",
            "b",
            1,
            "outbound|9080||reviews.other.svc.cluster.local",
        ))
        .unwrap();
    let s = cycle(&l).await;
    assert_eq!(s.destinations, 1, "{s:?}");
    assert_eq!(
        s.recommended, 1,
        "shop has no policy: --mode observe recommends"
    );
    assert!(
        l.sink.0.lock().unwrap().is_empty(),
        "observe: nothing pushed"
    );
    let text = l.controller.metrics_text();
    assert!(
        text.contains(r#"meshtune_tuning_refused_total{reason="namespace_not_enabled"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_modes_per_namespace_exclusions_and_slo() {
    let (client, mut server) = pair();
    let l = policy_loop(client, &["shop", "pay"], 0.4);
    set_policies(
        &l.store,
        vec![
            policy_object(
                "shop",
                json!({"mode": "enforce", "slo": {"latencyMs": 100}}),
            ),
            policy_object(
                "pay",
                json!({"mode": "observe", "excludeHosts": ["reviews.pay.svc.cluster.local"]}),
            ),
        ],
    );
    assert_eq!(l.store.effective("shop").mode, Mode::Enforce);
    assert_eq!(l.store.effective("pay").mode, Mode::Observe);
    assert_eq!(l.store.effective("none").mode, Mode::Observe);
    l.controller
        .handle_report(&report_from("shop", "a", 1, CLUSTER))
        .unwrap();
    l.controller
        .handle_report(&report_from(
            "pay",
            "b",
            1,
            "outbound|9080||reviews.pay.svc.cluster.local",
        ))
        .unwrap();
    let served = tokio::spawn(async move {
        // shop: pushed → Applied Event and status; pay: excluded, nothing to say but its
        // status (Valid).
        // Namespaces in order; each one's Events before its status.
        let pay = expect_status(&mut server, "pay").await;
        let ev = expect_event(&mut server, "shop").await;
        let shop = expect_status(&mut server, "shop").await;
        (ev, pay, shop)
    });
    let s = cycle(&l).await;
    assert_eq!(s.destinations, 1, "pay's host is excluded: {s:?}");
    assert_eq!(s.pushed, 1, "{s:?}");
    let pushed = l.sink.0.lock().unwrap().clone();
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].namespace, "shop");
    let (ev, pay, shop) = served.await.unwrap();
    assert_eq!(ev["reason"], "Applied");
    assert_eq!(ev["regarding"]["kind"], "MeshtunePolicy");
    assert_eq!(ev["regarding"]["name"], "default");
    assert_eq!(ev["reportingController"], "meshtune");
    assert_eq!(pay.body["status"]["observedGeneration"], 1);
    assert!(pay.body["status"].get("recommendations").is_none());
    assert_eq!(shop.params().get("fieldManager"), Some(&"meshtune"));
    let applied = &shop.body["status"]["applied"];
    assert_eq!(applied[0]["host"], HOST);
    assert_eq!(
        applied[0]["id"],
        meshtune_controller::review::id_of(&pushed[0].knobs)
    );
    let text = l.controller.metrics_text();
    assert!(
        text.contains(r#"meshtune_tuning_refused_total{reason="excluded_host"} 1"#),
        "{text}"
    );
    let f = meshtune_core::features::FEATURE_NAMES
        .iter()
        .position(|n| *n == "slo_target_ms");
    assert!(f.is_some(), "the features carry the SLO target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_mode_applies_exactly_the_approved_recommendation() {
    let (client, mut server) = pair();
    let l = policy_loop(client, &["shop"], 0.4);
    set_policies(
        &l.store,
        vec![policy_object("shop", json!({"mode": "recommend"}))],
    );
    l.controller
        .handle_report(&report_from("shop", "a", 1, CLUSTER))
        .unwrap();
    // Cycle 1: a recommendation, written to status and as an Event; nothing pushed.
    let served = tokio::spawn(async move {
        let ev = expect_event(&mut server, "shop").await;
        let st = expect_status(&mut server, "shop").await;
        (server, ev, st)
    });
    let s = cycle(&l).await;
    assert_eq!(s.recommended, 1, "{s:?}");
    assert!(l.sink.0.lock().unwrap().is_empty());
    let (mut server, ev, st) = served.await.unwrap();
    assert_eq!(ev["reason"], "Recommended");
    assert_eq!(ev["type"], "Normal");
    let rec = &st.body["status"]["recommendations"][0];
    assert_eq!(rec["host"], HOST);
    assert_eq!(rec["modelVersion"], "m-test");
    let id = rec["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 12);
    assert!(rec["features"]["rps"].as_f64().unwrap() > 0.0, "{rec}");
    assert!(!rec["expectedEffect"]["summary"]
        .as_str()
        .unwrap()
        .is_empty());
    let knobs: meshtune_crd::PerKnob<f64> = serde_json::from_value(rec["knobs"].clone()).unwrap();
    let recommended: Knobs = knobs.to_knobs();

    // Cycle 2: same recommendation (same id), status unchanged: nothing written.
    let quiet = tokio::spawn(async move {
        server
            .expect_no_request(SILENCE, "status unchanged, no new recommendation")
            .await;
        server
    });
    let s = cycle(&l).await;
    assert_eq!(s.pushed, 0);
    let mut server = quiet.await.unwrap();

    // A stale approval: refused with a condition and a Warning Event; nothing pushed.
    l.store.handle(Event::Apply(policy_object(
        "shop",
        json!({"mode": "recommend", "approvals": [{"host": HOST, "recommendation": "0123456789ab"}]}),
    )));
    let served = tokio::spawn(async move {
        let ev = expect_event(&mut server, "shop").await;
        let st = expect_status(&mut server, "shop").await;
        (server, ev, st)
    });
    let s = cycle(&l).await;
    assert_eq!(s.pushed, 0, "{s:?}");
    assert!(l.sink.0.lock().unwrap().is_empty());
    let (mut server, ev, st) = served.await.unwrap();
    assert_eq!(ev["reason"], "StaleApproval");
    assert_eq!(ev["type"], "Warning");
    let refused = st.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Refused")
        .unwrap()
        .clone();
    assert_eq!(refused["status"], "True");
    assert_eq!(refused["reason"], "StaleApproval");
    assert!(
        refused["message"].as_str().unwrap().contains(&id),
        "{refused}"
    );

    // The current id approved: exactly that recommendation is applied.
    l.store.handle(Event::Apply(policy_object(
        "shop",
        json!({"mode": "recommend", "approvals": [{"host": HOST, "recommendation": id}]}),
    )));
    let served = tokio::spawn(async move {
        let ev = expect_event(&mut server, "shop").await;
        let st = expect_status(&mut server, "shop").await;
        (server, ev, st)
    });
    let s = cycle(&l).await;
    assert_eq!(s.pushed, 1, "{s:?}");
    let pushed = l.sink.0.lock().unwrap().clone();
    assert_eq!(pushed.len(), 1);
    assert_eq!(
        pushed[0].knobs, recommended,
        "the approved knobs, nothing else"
    );
    let (mut server, ev, st) = served.await.unwrap();
    assert_eq!(ev["reason"], "Applied");
    let status = &st.body["status"];
    assert_eq!(status["applied"][0]["id"], id.as_str());
    let cond = |t: &str| {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(cond("Applied"), "True");
    assert_eq!(cond("Refused"), "False");
    assert_eq!(cond("Enabled"), "True");
    assert_eq!(
        l.policy
            .knobs_in_force(&meshtune_core::DestKey::new("shop", HOST))
            .await,
        Some(recommended)
    );

    // Applied once: the same approval applies nothing again.
    let quiet = tokio::spawn(async move {
        server
            .expect_no_request(SILENCE, "nothing new after the apply")
            .await;
    });
    cycle(&l).await;
    assert_eq!(l.sink.0.lock().unwrap().len(), 1);
    quiet.await.unwrap();
}

/// One cycle, bounded (a write nobody answers would otherwise hang the test).
async fn cycle(l: &Loop) -> meshtune_controller::policy_loop::CycleSummary {
    // The namespace's decision interval (the loop's, 10 ms) has passed since the last cycle.
    tokio::time::sleep(Duration::from_millis(20)).await;
    tokio::time::timeout(Duration::from_secs(10), l.policy.cycle())
        .await
        .expect("a cycle within 10 s")
        .unwrap()
}

#[tokio::test]
async fn status_and_event_bodies_are_what_kubectl_shows() {
    // The status patch body carries apiVersion/kind/metadata and the status only.
    let st = meshtune_crd::MeshtunePolicyStatus {
        observed_generation: Some(4),
        ..Default::default()
    };
    let body = meshtune_controller::review::status_patch("shop", "default", &st);
    assert_eq!(body["apiVersion"], "meshtune.io/v1alpha1");
    assert_eq!(body["kind"], "MeshtunePolicy");
    assert_eq!(
        body["metadata"],
        json!({"name": "default", "namespace": "shop"})
    );
    assert_eq!(body["status"]["observedGeneration"], 4);
    assert!(
        body.get("spec").is_none(),
        "status only: the spec is the user's"
    );
    let _ = StatusCode::OK;
}

#[tokio::test]
async fn the_kube_runtime_watcher_drives_the_switch() {
    let (client, mut server) = pair();
    let nc = Arc::new(controller(client, DataPlane::Wasmplugin, None));
    let gate = nc.gate();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(nc.clone().run(async move {
        let _ = stop_rx.await;
    }));
    // The initial list: one labelled namespace.
    let list = kube_mock::list(
        "v1",
        "Namespace",
        "5",
        vec![serde_json::to_value(namespace("shop", Some("true"))).unwrap()],
    );
    let listed = server
        .expect(Method::GET, "/api/v1/namespaces", |_| ok(&list))
        .await;
    assert!(!listed.query.contains("watch=true"), "{}", listed.query);
    let empty = kube_mock::list("extensions.istio.io/v1alpha1", "WasmPlugin", "1", vec![]);
    server.expect_get(WASMPLUGINS, ok(&empty)).await;
    let applied = server.expect_apply(&wasmplugin("shop")).await;
    assert_eq!(applied.body["metadata"]["namespace"], "shop");
    let no_filters = kube_mock::list("networking.istio.io/v1alpha3", "EnvoyFilter", "1", vec![]);
    server
        .expect_get(
            "/apis/networking.istio.io/v1alpha3/envoyfilters",
            ok(&no_filters),
        )
        .await;
    assert!(gate.enabled().contains("shop"));
    // The watch: the label is removed.
    let mut unlabelled = serde_json::to_value(namespace("shop", None)).unwrap();
    unlabelled["metadata"]["resourceVersion"] = "6".into();
    let line = serde_json::to_string(&json!({"type": "MODIFIED", "object": unlabelled})).unwrap();
    let watched = server
        .expect(Method::GET, "/api/v1/namespaces", move |_| {
            http::Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(format!("{line}\n").into_bytes()))
                .unwrap()
        })
        .await;
    assert!(watched.query.contains("watch=true"), "{}", watched.query);
    server
        .expect(Method::DELETE, &wasmplugin("shop"), |_| deleted("meshtune"))
        .await;
    expect_nothing_to_undo(&mut server, "shop").await;
    assert!(gate.enabled().is_empty());
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the watch stops on shutdown")
        .unwrap();
}
