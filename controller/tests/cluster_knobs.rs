//! The knobs in force of destinations meshtune has not pushed to come from the cluster's own
//! DestinationRules/VirtualServices, watched through a mocked Kubernetes API server at the
//! HTTP level (kube-rs tower-test pattern): a hand-tuned destination (http2MaxRequests 50,
//! outlier detection, a route timeout behind a canary route) shows those knobs in its
//! features, its recommendation's `before`, the knob gauges and the admin API; a destination
//! without objects shows Istio's defaults; a DestinationRule changed through the watch is
//! picked up; the loop decides nothing before the first list; the watch costs one list and one
//! watch per kind, whatever the number of destinations. The Istio sink refuses to create a
//! client-side object that would hide another namespace's richer one (subsets, a canary route).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{const_model, report, upstream};
use http::{Response, StatusCode};
use kube::client::Body;
use meshtune_controller::cluster_knobs::ClusterKnobs;
use meshtune_controller::decision::Naming;
use meshtune_controller::policy_loop::{LoopConfig, PolicyLoop};
use meshtune_controller::recorder::Recorder;
use meshtune_controller::{Config, Controller};
use meshtune_core::dataset::DatasetRow;
use meshtune_core::knobs::{Knob, Knobs, KNOB_COUNT};
use meshtune_core::DestKey;
use meshtune_policy::guardrails::{self, Mode};
use meshtune_policy::OnnxPolicy;
use meshtune_sinks::istio_foreign::Lookup;
use meshtune_sinks::sink::{ApplyFuture, ApplyReport, ItemReport, Outcome};
use meshtune_sinks::{Decision, Sink};
use meshtune_test_support::kube_mock::{self, pair, ApiServer};
use serde_json::{json, Value};

const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local";
const RATINGS: &str = "ratings.bookinfo.svc.cluster.local";
const CLIENT_NS: &str = "frontend";
const DRS: &str = "/apis/networking.istio.io/v1/destinationrules";
const VSS: &str = "/apis/networking.istio.io/v1/virtualservices";

fn cluster(host: &str) -> String {
    format!("outbound|9080||{host}")
}

/// The service owner's DestinationRule for reviews (in the service's namespace, exported to
/// every namespace by default), with `http2MaxRequests`.
fn reviews_rule(http2: u32, rv: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "bookinfo", "resourceVersion": rv,
            "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"host": "reviews", "trafficPolicy": {
            "connectionPool": {"http": {"http2MaxRequests": http2, "http1MaxPendingRequests": 20}},
            "outlierDetection": {"consecutive5xxErrors": 3, "baseEjectionTime": "1m",
                "maxEjectionPercent": 20}}}})
}

/// Its VirtualService: a canary route for one user first, then the default route (3 s timeout,
/// one retry).
fn reviews_routes() -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "bookinfo", "resourceVersion": "3",
            "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"hosts": ["reviews"], "http": [
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "timeout": "10s",
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"timeout": "3s", "retries": {"attempts": 1, "perTryTimeout": "1s"},
             "route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]}})
}

fn hand_tuned(http2: f64) -> Knobs {
    let mut k = Knobs::istio_defaults();
    k.set(Knob::Http2MaxRequests, http2);
    k.set(Knob::Http1MaxPendingRequests, 20.0);
    k.set(Knob::Consecutive5xxErrors, 3.0);
    k.set(Knob::BaseEjectionTimeMs, 60_000.0);
    k.set(Knob::MaxEjectionPercent, 20.0);
    k.set(Knob::RouteTimeoutMs, 3_000.0);
    k.set(Knob::RetryAttempts, 1.0);
    k.set(Knob::PerTryTimeoutMs, 1_000.0);
    k
}

/// The log sink: keeps every recommendation.
#[derive(Default)]
struct Recording(Mutex<Vec<Decision>>);

impl Sink for Recording {
    fn name(&self) -> &'static str {
        "log"
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
                        outcome: Outcome::Logged { changes: 0 },
                    })
                    .collect(),
            })
        })
    }
}

impl Recording {
    fn take(&self) -> Vec<Decision> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// What the mocked API server saw, and the watch event to send next.
#[derive(Default)]
struct Seen {
    lists: Vec<String>,
    watches: Vec<String>,
    /// A DestinationRule watch event to deliver (`MODIFIED` line).
    dr_event: Option<Value>,
}

/// Serves the watchers: lists of the given objects; DestinationRule watches are held open
/// until a test queues an event (then answered with it, and the next watch held again);
/// VirtualService watches stay open.
async fn serve(mut server: ApiServer, drs: Vec<Value>, vss: Vec<Value>, seen: Arc<Mutex<Seen>>) {
    let mut held = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(20), server.next_request()).await;
        match next {
            Ok(None) => return,
            Ok(Some((req, send))) => {
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or_default().to_string();
                assert!(path == DRS || path == VSS, "unexpected request {path}");
                if query.contains("watch=true") {
                    seen.lock().unwrap().watches.push(path.clone());
                    held.push((path, send));
                } else {
                    seen.lock().unwrap().lists.push(path.clone());
                    let (items, kind) = if path == DRS {
                        (drs.clone(), "DestinationRule")
                    } else {
                        (vss.clone(), "VirtualService")
                    };
                    send.send_response(kube_mock::ok(&kube_mock::list(
                        "networking.istio.io/v1",
                        kind,
                        "5",
                        items,
                    )));
                }
            }
            Err(_) => {}
        }
        let event = seen.lock().unwrap().dr_event.take();
        if let Some(object) = event {
            let i = held
                .iter()
                .position(|(p, _)| p == DRS)
                .expect("a DestinationRule watch is open");
            let (_, send) = held.remove(i);
            let line = json!({"type": "MODIFIED", "object": object}).to_string();
            send.send_response(
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(Body::from(format!("{line}\n").into_bytes()))
                    .unwrap(),
            );
        }
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn rows(path: &std::path::Path) -> Vec<DatasetRow> {
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records()
        .map(|rec| DatasetRow::from_record(&rec.unwrap().iter().collect::<Vec<_>>()).unwrap())
        .collect()
}

#[tokio::test]
async fn hand_tuned_objects_are_the_knobs_in_force_until_meshtune_pushes() {
    let controller = Arc::new(Controller::new(Config::default()).unwrap());
    let reports = |seq: u64| {
        let mut r = report(
            "client-0",
            seq,
            vec![
                upstream(&cluster(REVIEWS), 200, 0, 40_000),
                upstream(&cluster(RATINGS), 200, 0, 40_000),
            ],
        );
        r.reporter.as_mut().unwrap().namespace = CLIENT_NS.into();
        r
    };
    for seq in 1..=3 {
        controller.handle_report(&reports(seq)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("live.csv");
    let log = Arc::new(Recording::default());
    let model = OnnxPolicy::from_bytes(&const_model([0.4; KNOB_COUNT], "const"), "t").unwrap();
    let policy = PolicyLoop::new(
        controller.clone(),
        Some(model),
        Vec::new(),
        log.clone(),
        Some(Recorder::open(&csv_path).unwrap()),
        LoopConfig {
            min_requests: 1,
            naming: Naming::IstioHost,
            guardrails: guardrails::Config {
                mode: Mode::Observe,
                ..guardrails::Config::default()
            },
            ..LoopConfig::default()
        },
    );
    let store = Arc::new(ClusterKnobs::new(
        Lookup::default(),
        controller.metrics().cluster_knobs.clone(),
    ));
    policy.set_cluster_knobs(store.clone());
    let (client, server) = pair();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watching = tokio::spawn(store.clone().run(client, async move {
        let _ = stop_rx.await;
    }));

    // Nothing listed yet: nothing decided (it would decide from Istio's defaults).
    let s = policy.cycle().await.unwrap();
    assert_eq!(s.destinations, 0, "{s:?}");
    assert!(log.take().is_empty());

    let seen = Arc::new(Mutex::new(Seen::default()));
    let served = tokio::spawn(serve(
        server,
        vec![reviews_rule(50, "2")],
        vec![reviews_routes()],
        seen.clone(),
    ));
    until("both kinds listed", || store.synced()).await;

    let s = policy.cycle().await.unwrap();
    assert_eq!((s.destinations, s.recommended), (2, 2), "{s:?}");
    let recs = log.take();
    let before = |host: &str, recs: &[Decision]| {
        recs.iter()
            .find(|d| d.destination == host)
            .and_then(|d| d.previous)
            .unwrap_or_else(|| panic!("no recommendation for {host}: {recs:?}"))
    };
    assert_eq!(before(REVIEWS, &recs), hand_tuned(50.0));
    assert_eq!(before(RATINGS, &recs), Knobs::istio_defaults());
    // The features the policy saw and the knobs recorded with the window.
    let recorded = rows(&csv_path);
    let row = |host: &str, rows: &[DatasetRow]| {
        rows.iter()
            .rev()
            .find(|r| r.destination == host)
            .cloned()
            .unwrap()
    };
    let r = row(REVIEWS, &recorded);
    assert_eq!(r.knobs, hand_tuned(50.0));
    let norm = hand_tuned(50.0).normalised();
    for k in Knob::ALL {
        let f = r.features.get(&format!("knob.{}", k.name())).unwrap();
        assert!((f - norm[k as usize] as f64).abs() < 1e-6, "{k:?}: {f}");
    }
    assert!(r.features.get("knob.http.http2MaxRequests").unwrap() < 1.0);
    let r = row(RATINGS, &recorded);
    assert_eq!(r.knobs, Knobs::istio_defaults());
    assert_eq!(r.features.get("knob.http.http2MaxRequests"), Some(1.0));
    // Admin API and metrics say where the knobs come from.
    let status = controller
        .policy_status(&DestKey::new(CLIENT_NS, cluster(REVIEWS).as_str()))
        .unwrap();
    assert_eq!(status.knobs_source.as_deref(), Some("cluster"));
    assert_eq!(
        status.knobs_objects,
        vec![
            "DestinationRule bookinfo/reviews".to_string(),
            "VirtualService bookinfo/reviews (route 2 of 2, the default route)".to_string()
        ]
    );
    assert_eq!(status.knobs.unwrap()["http.http2MaxRequests"], 50.0);
    let ratings = controller
        .policy_status(&DestKey::new(CLIENT_NS, cluster(RATINGS).as_str()))
        .unwrap();
    assert_eq!(ratings.knobs_source.as_deref(), Some("istio_defaults"));
    let json = controller.destinations_json();
    let d = json
        .destinations
        .iter()
        .find(|d| d.name == cluster(REVIEWS))
        .unwrap();
    assert_eq!(d.knobs_source.as_deref(), Some("cluster"));
    let text = controller.metrics_text();
    for want in [
        format!(
            r#"meshtune_knob{{namespace="frontend",destination="{REVIEWS}",knob="http.http2MaxRequests"}} 50"#
        ),
        format!(
            r#"meshtune_knob{{namespace="frontend",destination="{REVIEWS}",knob="timeout"}} 3"#
        ),
        r#"meshtune_destinations_knobs_source{source="cluster"} 1"#.to_string(),
        r#"meshtune_destinations_knobs_source{source="istio_defaults"} 1"#.to_string(),
        r#"meshtune_istio_objects_watched{kind="DestinationRule"} 1"#.to_string(),
    ] {
        assert!(text.contains(&want), "{want} missing:\n{text}");
    }

    // The owner changes the rule: the next cycle decides from the new value.
    seen.lock().unwrap().dr_event = Some(reviews_rule(64, "9"));
    until("the changed rule is seen", || {
        store
            .index()
            .resolve(CLIENT_NS, REVIEWS)
            .knobs
            .get(Knob::Http2MaxRequests)
            == 64.0
    })
    .await;
    let s = policy.cycle().await.unwrap();
    assert_eq!(s.recommended, 2, "{s:?}");
    assert_eq!(before(REVIEWS, &log.take()), hand_tuned(64.0));

    // Bounded: one list per kind (at cluster scope), however many destinations.
    let (mut lists, watches) = {
        let seen_now = seen.lock().unwrap();
        (seen_now.lists.clone(), seen_now.watches.clone())
    };
    lists.sort();
    assert_eq!(lists, vec![DRS.to_string(), VSS.to_string()]);
    assert!(watches.len() <= 4, "{watches:?}");
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watching)
        .await
        .expect("the watch stops on shutdown")
        .unwrap();
    served.abort();
}

/// A store holding `objects` (as the watch would have listed them).
fn store_of(drs: Vec<Value>, vss: Vec<Value>) -> Arc<ClusterKnobs> {
    use kube::runtime::watcher::Event;
    use meshtune_sinks::istio_foreign::Kind;
    let store = Arc::new(ClusterKnobs::new(
        Lookup::default(),
        meshtune_controller::cluster_knobs::ClusterKnobsMetrics::default(),
    ));
    for (kind, objects) in [(Kind::DestinationRule, drs), (Kind::VirtualService, vss)] {
        store.handle(kind, Event::Init);
        for o in objects {
            store.handle(kind, Event::InitApply(serde_json::from_value(o).unwrap()));
        }
        store.handle(kind, Event::InitDone);
    }
    store
}

#[tokio::test]
async fn the_sink_does_not_hide_another_namespaces_richer_objects() {
    use meshtune_sinks::{IstioSink, IstioSinkConfig};
    const NAME: &str = "reviews-bookinfo-svc-cluster-local";
    const DR: &str = "/apis/networking.istio.io/v1/namespaces/frontend/destinationrules";
    const VS: &str = "/apis/networking.istio.io/v1/namespaces/frontend/virtualservices";
    let decision = Decision {
        destination: REVIEWS.into(),
        namespace: CLIENT_NS.into(),
        knobs: hand_tuned(32.0),
        previous: None,
    };
    let refused = |report: &ApplyReport| match &report.items[0].outcome {
        Outcome::Refused { reason } => reason.clone(),
        o => panic!("expected a refusal: {o:?}"),
    };

    // The service owner's rule defines subsets: a client-side rule of meshtune's would drop
    // them for frontend's sidecars (and break the routes to them). Refused after one GET.
    let mut with_subsets = reviews_rule(50, "2");
    with_subsets["spec"]["subsets"] = json!([{"name": "v1", "labels": {"version": "v1"}}]);
    let (client, mut server) = pair();
    let sink = IstioSink::new(client, IstioSinkConfig::default())
        .with_shadow_check(store_of(vec![with_subsets], vec![]));
    let served = tokio::spawn(async move {
        server
            .expect_get(&format!("{DR}/{NAME}"), kube_mock::not_found(NAME))
            .await;
        server
            .expect_no_request(Duration::from_millis(200), "nothing after the refusal")
            .await;
    });
    let report = sink.apply(std::slice::from_ref(&decision)).await.unwrap();
    served.await.unwrap();
    let reason = refused(&report);
    for want in [
        "DestinationRule bookinfo/reviews",
        "/subsets",
        "frontend/reviews-bookinfo-svc-cluster-local",
        "coManage",
    ] {
        assert!(reason.contains(want), "{want}: {reason}");
    }

    // A rule with knobs only is fine; the VirtualService with a canary route is not.
    let (client, mut server) = pair();
    let sink = IstioSink::new(client, IstioSinkConfig::default()).with_shadow_check(store_of(
        vec![reviews_rule(50, "2")],
        vec![reviews_routes()],
    ));
    let served = tokio::spawn(async move {
        server
            .expect_absent(DR, NAME, "networking.istio.io/v1", "DestinationRule")
            .await;
        server
            .expect_get(&format!("{VS}/{NAME}"), kube_mock::not_found(NAME))
            .await;
        server
            .expect_no_request(Duration::from_millis(200), "nothing applied")
            .await;
    });
    let report = sink.apply(std::slice::from_ref(&decision)).await.unwrap();
    served.await.unwrap();
    let reason = refused(&report);
    assert!(
        reason.contains("VirtualService bookinfo/reviews") && reason.contains("/http/0/match"),
        "{reason}"
    );

    // Nothing richer elsewhere: the push goes ahead (both objects applied).
    let (client, mut server) = pair();
    let sink = IstioSink::new(client, IstioSinkConfig::default())
        .with_shadow_check(store_of(vec![reviews_rule(50, "2")], vec![]));
    let served = tokio::spawn(async move {
        for (list, kind) in [(DR, "DestinationRule"), (VS, "VirtualService")] {
            server
                .expect_absent(list, NAME, "networking.istio.io/v1", kind)
                .await;
        }
        server.expect_apply(&format!("{DR}/{NAME}")).await;
        server.expect_apply(&format!("{VS}/{NAME}")).await;
    });
    let report = sink.apply(std::slice::from_ref(&decision)).await.unwrap();
    served.await.unwrap();
    assert!(
        matches!(report.items[0].outcome, Outcome::Applied { .. }),
        "{report:?}"
    );
}
