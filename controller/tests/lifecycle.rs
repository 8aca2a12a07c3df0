//! Restart recovery, removal and leader election against the mocked Kubernetes API server
//! (kube-rs tower-test pattern): the Lease absent (created), held (followed), expired (taken
//! over with its resourceVersion), lost (a race, a new holder: leadership ends and the loop
//! writes nothing); recovery of the knobs in force from listed objects (no push when the
//! decision equals them, hints from them); observe mode and `meshtune uninstall` removing what
//! meshtune wrote.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{const_model, report, upstream};
use http::{Method, StatusCode};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use meshtune_controller::decision::Naming;
use meshtune_controller::leader::{self, Elector, LeaderMetrics, Leadership, LeaseConfig};
use meshtune_controller::lifecycle::{self, Lifecycle, UninstallArgs};
use meshtune_controller::policy_loop::{LoopConfig, PolicyLoop};
use meshtune_controller::{Config, Controller};
use meshtune_core::knobs::{Knobs, KNOB_COUNT};
use meshtune_policy::guardrails::{self, Mode};
use meshtune_policy::OnnxPolicy;
use meshtune_sinks::istio::{
    applied_at_value, destination_rule, parse_applied_at, virtual_service, IstioTarget,
    APPLIED_AT_ANNOTATION,
};
use meshtune_sinks::{IstioSink, IstioSinkConfig, LogSink};
use meshtune_test_support::kube_mock::{self, ok, pair, status, ApiServer};
use serde_json::{json, Value};

const HOST: &str = "reviews.bookinfo.svc.cluster.local";
/// The reporters' (and so the objects') namespace.
const NAMESPACE: &str = "bookinfo";

fn key(dest: &str) -> meshtune_core::DestKey {
    meshtune_core::DestKey::new(NAMESPACE, dest)
}
const CLUSTER: &str = "outbound|9080||reviews.bookinfo.svc.cluster.local";
const ISTIO_API: &str = "networking.istio.io/v1";
const ALL_DR: &str = "/apis/networking.istio.io/v1/destinationrules";
const ALL_VS: &str = "/apis/networking.istio.io/v1/virtualservices";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/meshtune-system/leases";
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/meshtune-system/leases/meshtune-controller";
const SILENCE: Duration = Duration::from_millis(300);
const U: [f32; KNOB_COUNT] = [0.4; KNOB_COUNT];

fn lease(holder: &str, renewed: Timestamp, rv: &str, transitions: i32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "meshtune-controller", "namespace": "meshtune-system",
            "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
            "renewTime": renewed.to_string(), "acquireTime": renewed.to_string(),
            "leaseTransitions": transitions}})
}

fn elector(client: kube::Client, identity: &str) -> Elector {
    Elector::new(client, LeaseConfig::new("meshtune-system", identity))
}

#[tokio::test]
async fn an_absent_lease_is_created_and_a_held_one_followed() {
    let (client, mut server) = pair();
    let e = elector(client, "pod-a");
    let now = Timestamp::now();
    let served = tokio::spawn(async move {
        server
            .expect_get(LEASE, kube_mock::not_found("meshtune-controller"))
            .await;
        let created = server.expect(Method::POST, LEASES, |c| ok(&c.body)).await;
        server
            .expect_get(LEASE, ok(&lease("pod-b", Timestamp::now(), "8", 1)))
            .await;
        server
            .expect_no_request(SILENCE, "a follower writes nothing")
            .await;
        created.body
    });
    assert!(e.step(now).await.unwrap(), "created: leader");
    assert!(
        !e.step(Timestamp::now()).await.unwrap(),
        "pod-b renewed: follower"
    );
    drop(e);
    let created = served.await.unwrap();
    assert_eq!(created["spec"]["holderIdentity"], "pod-a");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(created["spec"]["leaseTransitions"], 0);
    assert_eq!(created["metadata"]["name"], "meshtune-controller");
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let (client, mut server) = pair();
    let e = elector(client, "pod-a");
    let stale = Timestamp::now()
        .checked_sub(SignedDuration::from_secs(60))
        .unwrap();
    let served = tokio::spawn(async move {
        server
            .expect_get(LEASE, ok(&lease("pod-b", stale, "42", 3)))
            .await;
        let put = server.expect(Method::PUT, LEASE, |c| ok(&c.body)).await;
        put.body
    });
    assert!(e.step(Timestamp::now()).await.unwrap());
    let put = served.await.unwrap();
    assert_eq!(
        put["metadata"]["resourceVersion"], "42",
        "optimistic concurrency"
    );
    assert_eq!(put["spec"]["holderIdentity"], "pod-a");
    assert_eq!(put["spec"]["leaseTransitions"], 4);
    assert_ne!(put["spec"]["renewTime"], json!(stale.to_string()));
}

#[tokio::test]
async fn a_lost_race_is_not_leadership() {
    let (client, mut server) = pair();
    let e = elector(client, "pod-a");
    let stale = Timestamp::now()
        .checked_sub(SignedDuration::from_secs(60))
        .unwrap();
    let served = tokio::spawn(async move {
        server
            .expect_get(LEASE, ok(&lease("pod-b", stale, "42", 3)))
            .await;
        server
            .expect(Method::PUT, LEASE, |_| {
                status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                )
            })
            .await;
        // Another API error is an error, not a verdict.
        server
            .expect_get(
                LEASE,
                status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "etcd"),
            )
            .await;
    });
    assert!(
        !e.step(Timestamp::now()).await.unwrap(),
        "pod-c won the race"
    );
    let err = e.step(Timestamp::now()).await.unwrap_err().to_string();
    assert!(
        err.contains("Lease meshtune-system/meshtune-controller"),
        "{err}"
    );
    served.await.unwrap();
}

/// The election loop: leads after creating the Lease, stops leading as soon as another
/// replica holds it, and counts both transitions.
#[tokio::test]
async fn the_election_loop_publishes_leadership_and_its_loss() {
    let (client, mut server) = pair();
    let mut cfg = LeaseConfig::new("meshtune-system", "pod-a");
    cfg.retry_period = Duration::from_millis(50);
    let e = Elector::new(client, cfg);
    let (tx, mut leadership) = Leadership::channel();
    let metrics = LeaderMetrics::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(leader::run(e, tx, metrics.clone(), async move {
        let _ = stop_rx.await;
    }));
    server
        .expect_get(LEASE, kube_mock::not_found("meshtune-controller"))
        .await;
    server.expect(Method::POST, LEASES, |c| ok(&c.body)).await;
    tokio::time::timeout(Duration::from_secs(5), leadership.until_leader())
        .await
        .unwrap();
    server
        .expect_get(LEASE, ok(&lease("pod-b", Timestamp::now(), "9", 1)))
        .await;
    tokio::time::timeout(Duration::from_secs(5), leadership.until_follower())
        .await
        .unwrap();
    assert_eq!(metrics.transitions.get(), 2);
    assert_eq!(metrics.leader.get(), 0);
    stop_tx.send(()).unwrap();
    // One more round may be under way; answer it as a follower.
    let finish = async {
        while let Some((_, send)) = server.next_request().await {
            send.send_response(ok(&lease("pod-b", Timestamp::now(), "9", 1)));
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), finish).await;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

/// A leader that cannot renew (API errors) stops leading once its renew deadline has passed,
/// before its lease could expire for the others.
#[tokio::test]
async fn a_leader_that_cannot_renew_stops_at_its_renew_deadline() {
    let (client, mut server) = pair();
    let mut cfg = LeaseConfig::new("meshtune-system", "pod-a");
    cfg.lease_duration = Duration::from_secs(2);
    cfg.renew_deadline = Duration::from_millis(400);
    cfg.retry_period = Duration::from_millis(50);
    let e = Elector::new(client, cfg);
    let (tx, mut leadership) = Leadership::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(leader::run(e, tx, LeaderMetrics::default(), async move {
        let _ = stop_rx.await;
    }));
    server
        .expect_get(LEASE, kube_mock::not_found("meshtune-controller"))
        .await;
    server.expect(Method::POST, LEASES, |c| ok(&c.body)).await;
    tokio::time::timeout(Duration::from_secs(5), leadership.until_leader())
        .await
        .unwrap();
    let led = std::time::Instant::now();
    let failing = tokio::spawn(async move {
        let mut errors = 0;
        while let Some((_, send)) = server.next_request().await {
            errors += 1;
            send.send_response(status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "apiserver down",
            ));
        }
        errors
    });
    tokio::time::timeout(Duration::from_secs(5), leadership.until_follower())
        .await
        .unwrap();
    let held = led.elapsed();
    assert!(
        held >= Duration::from_millis(350),
        "kept leading through errors until the deadline: {held:?}"
    );
    assert!(
        held < Duration::from_secs(2),
        "stopped before the lease expired: {held:?}"
    );
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    let errors = failing.await.unwrap();
    assert!(errors >= 3, "it kept trying: {errors}");
}

/// A controller that has seen traffic to `reviews`, and an enforce loop over the Istio sink
/// (mocked API server) with the constant model `U`.
fn setup(client: kube::Client, mode: Mode) -> Arc<PolicyLoop> {
    setup_every(client, mode, LoopConfig::default().interval)
}

fn setup_every(client: kube::Client, mode: Mode, interval: Duration) -> Arc<PolicyLoop> {
    setup_with(
        client,
        interval,
        guardrails::Config {
            mode,
            min_dwell: Duration::ZERO,
            max_step_factor: 1e9,
            max_linear_step: 1.0,
            rollback_windows: 0,
            ..guardrails::Config::default()
        },
    )
}

fn setup_with(
    client: kube::Client,
    interval: Duration,
    guardrails: guardrails::Config,
) -> Arc<PolicyLoop> {
    let controller = Arc::new(Controller::new(Config::default()).unwrap());
    for seq in 1..=3 {
        // A client in the service's own namespace: its client-side objects are the
        // service's `reviews` objects in `bookinfo`.
        let mut rep = report("client-0", seq, vec![upstream(CLUSTER, 200, 10, 40_000)]);
        if let Some(r) = rep.reporter.as_mut() {
            r.namespace = NAMESPACE.into();
        }
        let r = controller.handle_report(&rep);
        assert!(r.is_ok(), "report {seq}: {r:?}");
    }
    let model = OnnxPolicy::from_bytes(&const_model(U, "const"), "test").unwrap();
    let sink = IstioSink::new(client.clone(), IstioSinkConfig::default());
    let policy = PolicyLoop::new(
        controller,
        Some(model),
        vec![Arc::new(sink)],
        Arc::new(LogSink::new(Box::new(std::io::sink()))),
        None,
        LoopConfig {
            interval,
            min_requests: 1,
            naming: Naming::IstioHost,
            guardrails,
            ..LoopConfig::default()
        },
    );
    policy.set_lifecycle(Lifecycle {
        client,
        sink: IstioSinkConfig::default(),
    });
    policy
}

fn stored(mut v: Value, rv: &str) -> Value {
    v["metadata"]["resourceVersion"] = json!(rv);
    v
}

/// Answers the recovery's two cluster-wide LISTs with meshtune's objects for `knobs`.
async fn answer_recovery(server: &mut ApiServer, knobs: &Knobs) {
    answer_recovery_applied(server, knobs, None).await
}

/// [`answer_recovery`] with objects whose `meshtune.io/applied-at` annotation is `applied_at`.
async fn answer_recovery_applied(server: &mut ApiServer, knobs: &Knobs, applied_at: Option<&str>) {
    let mut t = IstioTarget::new(HOST, "bookinfo");
    t.applied_at = applied_at.map(str::to_string);
    let drs = kube_mock::list(
        ISTIO_API,
        "DestinationRule",
        "5",
        vec![stored(destination_rule(&t, knobs), "3")],
    );
    server.expect_get(ALL_DR, ok(&drs)).await;
    let vss = kube_mock::list(
        ISTIO_API,
        "VirtualService",
        "5",
        vec![stored(virtual_service(&t, knobs), "4")],
    );
    server.expect_get(ALL_VS, ok(&vss)).await;
}

#[tokio::test]
async fn restart_recovery_puts_the_objects_knobs_in_force_so_an_equal_decision_pushes_nothing() {
    let (client, mut server) = pair();
    let policy = setup(client, Mode::Enforce);
    // What an earlier controller pushed for this model's decision.
    let pushed = Knobs::from_normalised(&U);
    let served = tokio::spawn(async move {
        answer_recovery(&mut server, &pushed).await;
        server
    });
    assert_eq!(policy.on_leading().await.unwrap(), 1);
    let mut server = served.await.unwrap();
    let text = policy.controller().metrics_text();
    assert!(text.contains("meshtune_recovered_destinations 1"), "{text}");
    let recovered = policy.knobs_in_force(&key(HOST)).await.expect("recovered");
    let t = IstioTarget::new(HOST, "bookinfo");
    assert_eq!(
        destination_rule(&t, &recovered)["spec"],
        destination_rule(&t, &pushed)["spec"]
    );

    let summary = policy.cycle().await.expect("a model is loaded");
    assert_eq!(summary.destinations, 1, "{summary:?}");
    assert_eq!(
        summary.pushed, 0,
        "the decision equals the recovered knobs: {summary:?}"
    );
    server
        .expect_no_request(SILENCE, "no default push after a restart")
        .await;
    // Hints are served from the recovered knobs.
    let hint = policy
        .hints()
        .get(&key(CLUSTER))
        .expect("a hint for the reporting cluster");
    assert_eq!(
        hint.timeout_ms,
        meshtune_sinks::hint::hint(CLUSTER, &recovered, 1).timeout_ms
    );
}

/// The running loop: a recovery that fails (API error) means no decisions, and is retried
/// every interval until it succeeds; then the decision equals what is in force: no push.
#[tokio::test]
async fn the_loop_decides_nothing_until_recovery_succeeds() {
    let (client, mut server) = pair();
    let policy = setup_every(client, Mode::Enforce, Duration::from_millis(100));
    let pushed = Knobs::from_normalised(&U);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(policy.clone().run(async move {
        let _ = stop_rx.await;
    }));
    for _ in 0..2 {
        server
            .expect_get(
                ALL_DR,
                status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "apiserver down",
                ),
            )
            .await;
    }
    answer_recovery(&mut server, &pushed).await;
    server
        .expect_no_request(
            Duration::from_millis(600),
            "no push: the recovered knobs are the decision",
        )
        .await;
    assert!(policy.knobs_in_force(&key(HOST)).await.is_some());
    let text = policy.controller().metrics_text();
    assert!(text.contains("meshtune_decision_cycles_total"), "{text}");
    assert!(
        !text.contains("meshtune_decision_cycles_total 0"),
        "cycles ran after the recovery: {text}"
    );
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

/// An enforce loop with a 30 s dwell (also while missing the SLO) that has just recovered, after
/// a restart, knobs other than the model's decision from objects whose applied-at annotation
/// is `applied_at` (`None`: no such annotation).
async fn recovered_with_dwell(applied_at: Option<&str>) -> (Arc<PolicyLoop>, ApiServer) {
    let (client, mut server) = pair();
    let policy = setup_with(
        client,
        LoopConfig::default().interval,
        guardrails::Config {
            mode: Mode::Enforce,
            min_dwell: Duration::from_secs(30),
            urgent_dwell: Duration::from_secs(30),
            max_step_factor: 1e9,
            max_linear_step: 1.0,
            rollback_windows: 0,
            ..guardrails::Config::default()
        },
    );
    // Knobs an earlier controller pushed, other than what the model decides now.
    let pushed = Knobs::from_normalised(&[0.6; KNOB_COUNT]);
    assert_ne!(pushed, Knobs::from_normalised(&U));
    let raw = applied_at.map(str::to_string);
    let served = tokio::spawn(async move {
        answer_recovery_applied(&mut server, &pushed, raw.as_deref()).await;
        server
    });
    assert_eq!(policy.on_leading().await.unwrap(), 1);
    let server = served.await.unwrap();
    assert_eq!(policy.knobs_in_force(&key(HOST)).await, Some(pushed));
    (policy, server)
}

fn last_outcome(policy: &PolicyLoop) -> String {
    policy
        .controller()
        .policy_status(&key(HOST).with_cluster(CLUSTER))
        .and_then(|s| s.last_decision)
        .map(|d| d.outcome)
        .unwrap_or_default()
}

/// The dwell holds across a restart: objects applied 5 s before it, with a 30 s dwell, mean
/// no push on the first cycle (a controller restarting in a loop cannot push at every start).
#[tokio::test]
async fn a_push_recovered_from_5_s_ago_holds_the_first_decision_for_the_dwell() {
    let five_s_ago = SystemTime::now() - Duration::from_secs(5);
    let (policy, mut server) = recovered_with_dwell(Some(&applied_at_value(five_s_ago))).await;
    let summary = policy.cycle().await.expect("a model is loaded");
    assert_eq!(summary.destinations, 1, "{summary:?}");
    assert_eq!(summary.pushed, 0, "held by the dwell: {summary:?}");
    assert_eq!(last_outcome(&policy), "hold_dwell");
    server
        .expect_no_request(SILENCE, "a push within the dwell after a restart")
        .await;
}

/// A missing or garbled applied-at annotation: the recovery counts as the last push.
#[tokio::test]
async fn an_unknown_recovered_push_time_counts_as_the_recovery() {
    for raw in [None, Some("soon after lunch")] {
        let (policy, mut server) = recovered_with_dwell(raw).await;
        let summary = policy.cycle().await.expect("a model is loaded");
        assert_eq!(summary.destinations, 1, "{raw:?}: {summary:?}");
        assert_eq!(summary.pushed, 0, "{raw:?}: {summary:?}");
        assert_eq!(last_outcome(&policy), "hold_dwell", "{raw:?}");
        server
            .expect_no_request(SILENCE, "a push right after a restart")
            .await;
    }
}

/// The control: objects applied long before the restart do not hold the decision.
#[tokio::test]
async fn a_push_recovered_from_long_ago_allows_a_push() {
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let (policy, mut server) = recovered_with_dwell(Some(&applied_at_value(hour_ago))).await;
    let served = tokio::spawn(async move {
        // The sink looks the objects up, then applies both.
        let dr = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules";
        let vs = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices";
        server
            .expect_absent(dr, "reviews", ISTIO_API, "DestinationRule")
            .await;
        server
            .expect_absent(vs, "reviews", ISTIO_API, "VirtualService")
            .await;
        let applied = server.expect_apply(&format!("{dr}/reviews")).await;
        server.expect_apply(&format!("{vs}/reviews")).await;
        applied
    });
    let summary = policy.cycle().await.expect("a model is loaded");
    let applied = served.await.unwrap();
    assert_eq!(summary.pushed, 1, "{summary:?}");
    assert_eq!(last_outcome(&policy), "pushed");
    // The new push records its own time, which the next restart would recover.
    let at = applied.body["metadata"]["annotations"][APPLIED_AT_ANNOTATION]
        .as_str()
        .expect("applied-at annotation");
    let at = parse_applied_at(at).unwrap();
    assert!(
        SystemTime::now().duration_since(at).unwrap() < Duration::from_secs(60),
        "{at:?}"
    );
}

#[tokio::test]
async fn without_recovery_the_same_decision_would_push() {
    // The control for the test above: nothing listed, so the decision is a push.
    let (client, mut server) = pair();
    let policy = setup(client, Mode::Enforce);
    let served = tokio::spawn(async move {
        server
            .expect_get(
                ALL_DR,
                ok(&kube_mock::list(ISTIO_API, "DestinationRule", "5", vec![])),
            )
            .await;
        server
            .expect_get(
                ALL_VS,
                ok(&kube_mock::list(ISTIO_API, "VirtualService", "5", vec![])),
            )
            .await;
        server
    });
    assert_eq!(policy.on_leading().await.unwrap(), 0);
    let mut server = served.await.unwrap();
    let served = tokio::spawn(async move {
        // The sink looks the objects up, then applies both.
        let dr = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules";
        let vs = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices";
        server
            .expect_absent(dr, "reviews", ISTIO_API, "DestinationRule")
            .await;
        server
            .expect_absent(vs, "reviews", ISTIO_API, "VirtualService")
            .await;
        server.expect_apply(&format!("{dr}/reviews")).await;
        server.expect_apply(&format!("{vs}/reviews")).await;
    });
    let summary = policy.cycle().await.unwrap();
    served.await.unwrap();
    assert_eq!(summary.pushed, 1, "{summary:?}");
}

#[tokio::test]
async fn a_lost_lease_stops_writes() {
    let (client, mut server) = pair();
    let policy = setup(client, Mode::Enforce);
    let (tx, leadership) = Leadership::channel();
    policy.set_leadership(leadership);
    tx.send_replace(true);
    assert!(policy.is_leader());
    // The Lease is lost between two cycles: the next cycle's push is not sent.
    tx.send_replace(false);
    let summary = policy.cycle().await.unwrap();
    assert_eq!(summary.push_failures, 1, "{summary:?}");
    server
        .expect_no_request(SILENCE, "a replica that lost the lease wrote")
        .await;
    assert_eq!(
        policy.knobs_in_force(&key(HOST)).await,
        None,
        "nothing in force"
    );
}

#[tokio::test]
async fn observe_mode_removes_what_meshtune_wrote() {
    // Removal lists and deletes kind by kind.
    let (client, mut server) = pair();
    let policy = setup(client, Mode::Observe);
    let knobs = Knobs::from_normalised(&U);
    let t = IstioTarget::new(HOST, "bookinfo");
    let served = tokio::spawn(async move {
        let drs = kube_mock::list(
            ISTIO_API,
            "DestinationRule",
            "5",
            vec![stored(destination_rule(&t, &knobs), "3")],
        );
        server.expect_get(ALL_DR, ok(&drs)).await;
        let del = server
            .expect(
                Method::DELETE,
                "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules/reviews",
                |c| ok(&c.body),
            )
            .await;
        assert_eq!(del.body["preconditions"]["resourceVersion"], "3");
        let vss = kube_mock::list(
            ISTIO_API,
            "VirtualService",
            "5",
            vec![stored(virtual_service(&t, &knobs), "4")],
        );
        server.expect_get(ALL_VS, ok(&vss)).await;
        server
            .expect(
                Method::DELETE,
                "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices/reviews",
                |c| ok(&c.body),
            )
            .await;
        server
    });
    assert_eq!(policy.on_leading().await.unwrap(), 2);
    let mut server = served.await.unwrap();
    let text = policy.controller().metrics_text();
    assert!(
        text.contains(r#"meshtune_undone_objects_total{action="delete",result="ok"} 2"#),
        "{text}"
    );
    let summary = policy.cycle().await.unwrap();
    assert_eq!(summary.pushed, 0, "observe mode never pushes: {summary:?}");
    server
        .expect_no_request(SILENCE, "observe mode writes nothing after the removal")
        .await;
}

#[tokio::test]
async fn uninstall_dry_run_prints_the_plan_and_writes_nothing() {
    let (client, mut server) = pair();
    let knobs = Knobs::from_normalised(&U);
    let t = IstioTarget::new(HOST, "bookinfo");
    let served = tokio::spawn(async move {
        let ns_dr = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules";
        let ns_vs = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices";
        let drs = kube_mock::list(
            ISTIO_API,
            "DestinationRule",
            "5",
            vec![stored(destination_rule(&t, &knobs), "3")],
        );
        server.expect_get(ns_dr, ok(&drs)).await;
        server
            .expect_get(
                ns_vs,
                ok(&kube_mock::list(ISTIO_API, "VirtualService", "5", vec![])),
            )
            .await;
        server
            .expect_no_request(SILENCE, "a dry run writes nothing")
            .await;
    });
    let args = UninstallArgs {
        namespaces: vec!["bookinfo".into()],
        dry_run: true,
        field_manager: "meshtune".into(),
    };
    let mut out = Vec::new();
    lifecycle::uninstall_with(client, &args, &mut out)
        .await
        .unwrap();
    served.await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        "would delete DestinationRule bookinfo/reviews\n1 objects would be undone\n"
    );
}

/// Only the leader is Ready: `/readyz` over real HTTP follows the leadership.
#[tokio::test]
async fn only_the_leader_is_ready() {
    let controller = Arc::new(Controller::new(Config::default()).unwrap());
    let (tx, leadership) = Leadership::channel();
    controller.set_leadership(leadership);
    let g = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = a.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller.clone().serve(g, a, async move {
        let _ = rx.await;
    }));
    let readyz = move || async move {
        tokio::task::spawn_blocking(move || {
            meshtune_test_support::http::get(admin, "/readyz", &[]).map(|r| r.status)
        })
        .await
        .unwrap()
    };
    // Serving (healthz answers) but following: 503.
    let mut healthy = false;
    for _ in 0..200 {
        let h = tokio::task::spawn_blocking(move || {
            meshtune_test_support::http::get(admin, "/healthz", &[]).map(|r| r.status)
        })
        .await
        .unwrap();
        if matches!(h, Ok(200)) {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(healthy, "admin server up");
    assert_eq!(readyz().await.unwrap(), 503, "a follower is not Ready");
    tx.send_replace(true);
    assert_eq!(readyz().await.unwrap(), 200, "the leader is Ready");
    tx.send_replace(false);
    assert_eq!(
        readyz().await.unwrap(),
        503,
        "a replica that lost the lease is not Ready"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
