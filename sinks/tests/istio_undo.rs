//! Undo and recovery of what the Istio sink wrote, against the mocked Kubernetes API server
//! (kube-rs tower-test pattern): a rollback to Istio defaults deletes owned objects instead of
//! writing default-valued ones; co-managed objects record and get back their previous fields;
//! per-namespace and cluster-wide removal (and their dry runs); the knobs in force read back
//! from listed objects.

mod common;

use std::time::Duration;

use http::{Method, StatusCode};
use meshtune_core::{Knob, Knobs};
use meshtune_sinks::istio::{
    self, destination_rule, virtual_service, IstioTarget, APPLIED_ANNOTATION, PREVIOUS_ANNOTATION,
};
use meshtune_sinks::istio_undo::{self, AppliedAt, UndoAction, RESTORE_FIELD_MANAGER};
use meshtune_sinks::{Decision, IstioSink, IstioSinkConfig, Outcome, Sink};
use meshtune_test_support::kube_mock::{self, ok, pair, status};
use serde_json::{json, Value};

const HOST: &str = "reviews.bookinfo.svc.cluster.local";
const ISTIO_API: &str = "networking.istio.io/v1";
const DR_LIST: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules";
const VS_LIST: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices";
const DR_PATH: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules/reviews";
const VS_PATH: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices/reviews";
const SILENCE: Duration = Duration::from_millis(300);

/// An object as the API server returns it: rendered by the sink, with a resource version.
fn stored(mut v: Value, rv: &str) -> Value {
    v["metadata"]["resourceVersion"] = json!(rv);
    v["metadata"]["uid"] = json!(format!("uid-{rv}"));
    v
}

fn owned_dr(k: &Knobs) -> Value {
    stored(
        destination_rule(&IstioTarget::new(HOST, "bookinfo"), k),
        "11",
    )
}

fn owned_vs(k: &Knobs) -> Value {
    stored(
        virtual_service(&IstioTarget::new(HOST, "bookinfo"), k),
        "12",
    )
}

/// A DestinationRule someone else created (outlier detection set by them), now co-managed by
/// meshtune with `previous` recorded.
fn co_managed_dr(previous: &str) -> Value {
    let mut t = IstioTarget::new(HOST, "bookinfo");
    t.owned = false;
    t.previous = Some(previous.to_string());
    let mut v = stored(destination_rule(&t, &common::tuned()), "21");
    v["metadata"]["labels"] = json!({"team": "reviews"});
    v
}

fn foreign_dr() -> Value {
    json!({"apiVersion": ISTIO_API, "kind": "DestinationRule",
        "metadata": {"name": "ratings", "namespace": "bookinfo", "resourceVersion": "5"},
        "spec": {"host": "ratings"}})
}

#[tokio::test]
async fn rollback_to_istio_defaults_deletes_owned_objects_instead_of_writing_defaults() {
    let (client, mut server) = pair();
    let sink = IstioSink::new(client, IstioSinkConfig::default()).with_schemas(common::crds());
    let served = tokio::spawn(async move {
        server
            .expect_get(DR_PATH, ok(&owned_dr(&common::tuned())))
            .await;
        let del = server
            .expect(Method::DELETE, DR_PATH, |_| ok(&json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})))
            .await;
        assert_eq!(
            del.body["preconditions"]["resourceVersion"], "11",
            "{}",
            del.body
        );
        server
            .expect_get(VS_PATH, ok(&owned_vs(&common::tuned())))
            .await;
        let del = server
            .expect(Method::DELETE, VS_PATH, |c| ok(&c.body))
            .await;
        assert_eq!(del.body["preconditions"]["resourceVersion"], "12");
        server
            .expect_no_request(SILENCE, "nothing is applied for a removal")
            .await;
    });
    let rollback = Decision {
        destination: HOST.into(),
        namespace: "bookinfo".into(),
        knobs: Knobs::istio_defaults(),
        previous: Some(common::tuned()),
    };
    assert!(rollback.is_removal());
    let report = sink.apply(&[rollback]).await.unwrap();
    drop(sink);
    served.await.unwrap();
    assert_eq!(
        report.items[0].outcome,
        Outcome::Applied {
            objects: vec![
                "deleted DestinationRule bookinfo/reviews".into(),
                "deleted VirtualService bookinfo/reviews".into()
            ]
        }
    );
}

#[tokio::test]
async fn a_changed_object_is_not_deleted_and_the_rollback_fails() {
    let (client, mut server) = pair();
    let sink = IstioSink::new(client, IstioSinkConfig::default());
    let served = tokio::spawn(async move {
        server
            .expect_get(DR_PATH, ok(&owned_dr(&common::tuned())))
            .await;
        server
            .expect(Method::DELETE, DR_PATH, |_| {
                status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                )
            })
            .await;
        server
            .expect_get(VS_PATH, kube_mock::not_found("reviews"))
            .await;
    });
    let d = Decision {
        destination: HOST.into(),
        namespace: "bookinfo".into(),
        knobs: Knobs::istio_defaults(),
        previous: None,
    };
    let report = sink.apply(&[d]).await.unwrap();
    served.await.unwrap();
    match &report.items[0].outcome {
        Outcome::Failed { error } => assert!(
            error.contains("failed to delete DestinationRule bookinfo/reviews"),
            "{error}"
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn co_managed_objects_record_their_previous_fields_once() {
    let (client, mut server) = pair();
    let config = IstioSinkConfig {
        allowed_hosts: vec![HOST.into()],
        ..IstioSinkConfig::default()
    };
    let sink = IstioSink::new(client, config);
    let theirs = json!({"apiVersion": ISTIO_API, "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "bookinfo", "resourceVersion": "3"},
        "spec": {"host": HOST, "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 7}}}});
    let served = tokio::spawn(async move {
        server.expect_get(DR_PATH, ok(&theirs)).await;
        let list = kube_mock::list(ISTIO_API, "DestinationRule", "1", vec![]);
        server.expect_get(DR_LIST, ok(&list)).await;
        server
            .expect_absent(VS_LIST, "reviews", ISTIO_API, "VirtualService")
            .await;
        let dr = server.expect_apply(DR_PATH).await;
        server.expect_apply(VS_PATH).await;
        dr.body
    });
    let d = Decision {
        destination: HOST.into(),
        namespace: "bookinfo".into(),
        knobs: common::tuned(),
        previous: None,
    };
    sink.apply(&[d]).await.unwrap();
    let dr = served.await.unwrap();
    let ann = &dr["metadata"]["annotations"];
    let previous: Value = serde_json::from_str(ann[PREVIOUS_ANNOTATION].as_str().unwrap()).unwrap();
    assert_eq!(
        previous,
        json!({"/spec/trafficPolicy/connectionPool": null,
            "/spec/trafficPolicy/outlierDetection": {"consecutive5xxErrors": 7}})
    );
    let applied: Value = serde_json::from_str(ann[APPLIED_ANNOTATION].as_str().unwrap()).unwrap();
    assert_eq!(applied["outlierDetection.consecutive5xxErrors"], 4.0);

    // The next apply carries the recorded value over instead of recording meshtune's own.
    let (client, mut server) = pair();
    let config = IstioSinkConfig {
        allowed_hosts: vec![HOST.into()],
        ..IstioSinkConfig::default()
    };
    let sink = IstioSink::new(client, config);
    let first = serde_json::to_string(&previous).unwrap();
    let now = co_managed_dr(&first);
    let served = tokio::spawn(async move {
        server.expect_get(DR_PATH, ok(&now)).await;
        let list = kube_mock::list(ISTIO_API, "DestinationRule", "1", vec![]);
        server.expect_get(DR_LIST, ok(&list)).await;
        server
            .expect_absent(VS_LIST, "reviews", ISTIO_API, "VirtualService")
            .await;
        let dr = server.expect_apply(DR_PATH).await;
        server.expect_apply(VS_PATH).await;
        dr.body
    });
    let mut k = common::tuned();
    k.set(Knob::Consecutive5xxErrors, 9.0);
    let d = Decision {
        destination: HOST.into(),
        namespace: "bookinfo".into(),
        knobs: k,
        previous: None,
    };
    sink.apply(&[d]).await.unwrap();
    let dr = served.await.unwrap();
    assert_eq!(
        dr["metadata"]["annotations"][PREVIOUS_ANNOTATION],
        first.as_str()
    );
}

#[tokio::test]
async fn namespace_removal_deletes_owned_restores_co_managed_and_leaves_the_rest() {
    let (client, mut server) = pair();
    let config = IstioSinkConfig::default();
    let previous = json!({"/spec/trafficPolicy/connectionPool": null,
        "/spec/trafficPolicy/outlierDetection": {"consecutive5xxErrors": 7}})
    .to_string();
    let co = co_managed_dr(&previous);
    let served = tokio::spawn(async move {
        let drs = kube_mock::list(ISTIO_API, "DestinationRule", "9", vec![co, foreign_dr()]);
        server.expect_get(DR_LIST, ok(&drs)).await;
        // Release: a bare apply under meshtune's field manager, without force.
        let release = server
            .expect_apply_with(DR_PATH, |_| {
                // What the API server leaves: the other manager's host, meshtune's fields gone
                // (here the outlier detection meshtune overwrote without a conflict, because
                // nobody owned it in managedFields).
                ok(&json!({"apiVersion": ISTIO_API, "kind": "DestinationRule",
                    "metadata": {"name": "reviews", "namespace": "bookinfo"},
                    "spec": {"host": HOST}}))
            })
            .await;
        assert_eq!(release.params(), [("fieldManager", "meshtune")].into());
        assert!(release.body.get("spec").is_none(), "{}", release.body);
        assert!(release.body["metadata"].get("annotations").is_none());
        let restore = server.expect(Method::PATCH, DR_PATH, |c| ok(&c.body)).await;
        assert_eq!(
            restore.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(
            restore.params().get("fieldManager"),
            Some(&RESTORE_FIELD_MANAGER)
        );
        assert_eq!(
            restore.body,
            json!({"spec": {"trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 7}}}})
        );
        let vss = kube_mock::list(
            ISTIO_API,
            "VirtualService",
            "9",
            vec![owned_vs(&common::tuned())],
        );
        server.expect_get(VS_LIST, ok(&vss)).await;
        server
            .expect(Method::DELETE, VS_PATH, |c| ok(&c.body))
            .await;
        server
            .expect_no_request(SILENCE, "the foreign DestinationRule is left alone")
            .await;
    });
    let done = istio_undo::remove_namespace(&client, &config, "bookinfo", false)
        .await
        .unwrap();
    drop(client);
    served.await.unwrap();
    let lines: Vec<String> = done.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "restored DestinationRule bookinfo/reviews",
            "deleted VirtualService bookinfo/reviews"
        ]
    );
    assert_eq!(done[0].action, UndoAction::Restore);
}

#[tokio::test]
async fn dry_run_everywhere_only_reads() {
    let (client, mut server) = pair();
    let served = tokio::spawn(async move {
        let drs = kube_mock::list(
            ISTIO_API,
            "DestinationRule",
            "9",
            vec![owned_dr(&common::tuned()), foreign_dr()],
        );
        server
            .expect_get("/apis/networking.istio.io/v1/destinationrules", ok(&drs))
            .await;
        let vss = kube_mock::list(
            ISTIO_API,
            "VirtualService",
            "9",
            vec![owned_vs(&common::tuned())],
        );
        server
            .expect_get("/apis/networking.istio.io/v1/virtualservices", ok(&vss))
            .await;
        server
            .expect_no_request(SILENCE, "a dry run writes nothing")
            .await;
    });
    let done = istio_undo::remove_all(&client, &IstioSinkConfig::default(), true)
        .await
        .unwrap();
    drop(client);
    served.await.unwrap();
    let lines: Vec<String> = done.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "would delete DestinationRule bookinfo/reviews",
            "would delete VirtualService bookinfo/reviews"
        ]
    );
}

#[tokio::test]
async fn recovery_reads_the_knobs_in_force_back_from_listed_objects() {
    let (client, mut server) = pair();
    let mut other = common::tuned();
    other.set(Knob::Http2MaxRequests, 12.0);
    let mut ratings = IstioTarget::new("ratings.shop.svc.cluster.local", "shop");
    let applied = std::time::UNIX_EPOCH + Duration::from_millis(1_796_030_400_250);
    ratings.applied_at = Some(istio::applied_at_value(applied));
    let served = tokio::spawn(async move {
        let drs = kube_mock::list(
            ISTIO_API,
            "DestinationRule",
            "9",
            vec![
                owned_dr(&common::tuned()),
                foreign_dr(),
                stored(destination_rule(&ratings, &other), "30"),
            ],
        );
        server
            .expect_get("/apis/networking.istio.io/v1/destinationrules", ok(&drs))
            .await;
        let vss = kube_mock::list(
            ISTIO_API,
            "VirtualService",
            "9",
            vec![owned_vs(&common::tuned())],
        );
        server
            .expect_get("/apis/networking.istio.io/v1/virtualservices", ok(&vss))
            .await;
    });
    let got = istio_undo::recover(&client, None).await.unwrap();
    served.await.unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].namespace.as_str(), got[0].destination.as_str()),
        ("bookinfo", HOST)
    );
    assert_eq!(got[0].knobs, common::tuned());
    assert_eq!(got[0].objects.len(), 2);
    // Objects without the applied-at annotation: the time is unknown (named).
    assert_eq!(
        got[0].applied_at,
        AppliedAt::Missing {
            object: "DestinationRule bookinfo/reviews".into()
        }
    );
    assert_eq!(got[1].destination, "ratings.shop.svc.cluster.local");
    assert_eq!(got[1].applied_at, AppliedAt::At(applied));
    // Only a DestinationRule: the route knobs are Istio's defaults.
    let mut want = other;
    for k in [
        Knob::RouteTimeoutMs,
        Knob::RetryAttempts,
        Knob::PerTryTimeoutMs,
    ] {
        want.set(k, Knobs::istio_defaults().get(k));
    }
    assert_eq!(got[1].knobs, want);
}
