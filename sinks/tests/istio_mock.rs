//! The Istio sink against a mocked Kubernetes API server at HTTP level (kube-rs tower-test
//! pattern): what it GETs, what it PATCHes (method, path, query, content type, body), and that it
//! refuses objects meshtune does not manage.

mod common;

use std::time::Duration;

use http::StatusCode;
use meshtune_sinks::{Decision, IstioSink, IstioSinkConfig, Outcome, Sink};
use meshtune_test_support::kube_mock::{self, not_found, ok, pair, status, ApiServer};
use serde_json::{json, Value};

const DR_PATH: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules/reviews";
const VS_PATH: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices/reviews";
const HOST: &str = "reviews.bookinfo.svc.cluster.local";
/// How long to wait for a request that must not come.
const SILENCE: Duration = Duration::from_millis(300);

fn decision() -> Decision {
    Decision {
        destination: HOST.into(),
        namespace: "bookinfo".into(),
        knobs: common::tuned(),
        previous: None,
    }
}

fn existing(kind: &str, labels: Value) -> Value {
    json!({"apiVersion": ISTIO_API, "kind": kind,
        "metadata": {"name": "reviews", "namespace": "bookinfo", "labels": labels,
            "resourceVersion": "12"},
        "spec": {"host": HOST}})
}

const DR_LIST: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules";
const VS_LIST: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices";

const ISTIO_API: &str = "networking.istio.io/v1";

/// Answers the sink's look-ups when neither object nor any other for the host exists.
async fn expect_both_absent(server: &mut ApiServer) {
    server
        .expect_absent(DR_LIST, "reviews", ISTIO_API, "DestinationRule")
        .await;
    server
        .expect_absent(VS_LIST, "reviews", ISTIO_API, "VirtualService")
        .await;
}

/// Answers the namespace LIST the sink makes to find other objects for the same host.
async fn expect_list(server: &mut ApiServer, path: &str, kind: &str, items: Vec<Value>) {
    let list = kube_mock::list(ISTIO_API, kind, "1", items);
    server.expect_get(path, ok(&list)).await;
}

#[tokio::test]
async fn new_objects_are_created_by_forced_server_side_apply() {
    let (client, mut server) = pair();
    let sink = IstioSink::new(client, IstioSinkConfig::default()).with_schemas(common::crds());
    let served = tokio::spawn(async move {
        expect_both_absent(&mut server).await;
        let dr = server.expect_apply(DR_PATH).await;
        let q = &dr.query;
        assert!(q.starts_with('&'), "kube-rs form: ?&...: {q}");
        assert_eq!(
            dr.params(),
            [("fieldManager", "meshtune"), ("force", "true")].into()
        );
        let vs = server.expect_apply(VS_PATH).await;
        assert_eq!(vs.params(), dr.params());
        (dr.body, vs.body)
    });
    let before = std::time::SystemTime::now();
    let report = sink.apply(&[decision()]).await.unwrap();
    let after = std::time::SystemTime::now();
    let (dr, vs) = served.await.unwrap();
    // Both objects record when they were applied (read back by restart recovery).
    for obj in [&dr, &vs] {
        let at = obj["metadata"]["annotations"][meshtune_sinks::istio::APPLIED_AT_ANNOTATION]
            .as_str()
            .expect("applied-at annotation");
        let at = meshtune_sinks::istio::parse_applied_at(at).unwrap();
        let ms =
            |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        assert!(ms(before) <= ms(at) && ms(at) <= ms(after), "{obj}");
    }
    assert_eq!(
        report.items[0].outcome,
        Outcome::Applied {
            objects: vec![
                "DestinationRule bookinfo/reviews".into(),
                "VirtualService bookinfo/reviews".into()
            ]
        }
    );
    assert_eq!(dr["kind"], "DestinationRule");
    assert_eq!(
        dr["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshtune"
    );
    assert_eq!(dr["spec"]["host"], HOST);
    assert_eq!(
        dr["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["maxConnections"],
        100
    );
    assert_eq!(
        dr["spec"]["trafficPolicy"]["outlierDetection"]["baseEjectionTime"],
        "30s"
    );
    assert_eq!(vs["kind"], "VirtualService");
    assert_eq!(vs["spec"]["http"][0]["timeout"], "2s");
    assert_eq!(vs["spec"]["http"][0]["retries"]["attempts"], 3);
}

#[tokio::test]
async fn owned_objects_are_updated_with_force() {
    let (client, mut server) = pair();
    let sink = IstioSink::new(client, IstioSinkConfig::default());
    let served = tokio::spawn(async move {
        let owned = json!({"app.kubernetes.io/managed-by": "meshtune"});
        server
            .expect_get(DR_PATH, ok(&existing("DestinationRule", owned.clone())))
            .await;
        expect_list(&mut server, DR_LIST, "DestinationRule", vec![]).await;
        server
            .expect_get(VS_PATH, ok(&existing("VirtualService", owned)))
            .await;
        expect_list(&mut server, VS_LIST, "VirtualService", vec![]).await;
        let dr = server.expect_apply(DR_PATH).await;
        assert_eq!(dr.params().get("force"), Some(&"true"), "{}", dr.query);
        server.expect_apply(VS_PATH).await;
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    served.await.unwrap();
    assert!(matches!(report.items[0].outcome, Outcome::Applied { .. }));
}

#[tokio::test]
async fn objects_not_managed_by_meshtune_are_refused_and_not_patched() {
    let (client, mut server) = pair();
    let sink = IstioSink::new(client, IstioSinkConfig::default());
    let served = tokio::spawn(async move {
        let theirs = json!({"app.kubernetes.io/managed-by": "helm"});
        server
            .expect_get(DR_PATH, ok(&existing("DestinationRule", theirs)))
            .await;
        // Nothing else may be sent: the next request must never come.
        server
            .expect_no_request(SILENCE, "sink sent a request after refusing")
            .await;
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    drop(sink);
    served.await.unwrap();
    match &report.items[0].outcome {
        Outcome::Refused { reason } => {
            assert!(
                reason.contains("DestinationRule bookinfo/reviews"),
                "{reason}"
            );
            assert!(reason.contains("not managed by meshtune"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn allow_listed_hosts_are_co_managed_without_force_or_label() {
    let (client, mut server) = pair();
    let config = IstioSinkConfig {
        allowed_hosts: vec![HOST.into()],
        ..IstioSinkConfig::default()
    };
    let sink = IstioSink::new(client, config);
    let served = tokio::spawn(async move {
        let theirs = json!({"team": "reviews"});
        server
            .expect_get(DR_PATH, ok(&existing("DestinationRule", theirs)))
            .await;
        expect_list(&mut server, DR_LIST, "DestinationRule", vec![]).await;
        server
            .expect_absent(VS_LIST, "reviews", ISTIO_API, "VirtualService")
            .await;
        let dr = server.expect_apply(DR_PATH).await;
        assert_eq!(dr.params(), [("fieldManager", "meshtune")].into());
        assert!(dr.body["metadata"].get("labels").is_none(), "{}", dr.body);
        let vs = server.expect_apply(VS_PATH).await;
        assert_eq!(
            vs.params().get("force"),
            Some(&"true"),
            "new VS is owned: {}",
            vs.query
        );
        assert_eq!(
            vs.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "meshtune"
        );
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    served.await.unwrap();
    assert!(matches!(report.items[0].outcome, Outcome::Applied { .. }));
}

/// A namespace's run-time allowlist (a MeshtunePolicy's `spec.coManage`): DestinationRule
/// `reviews` in `bookinfo` only.
struct PolicyAllowlist;

impl meshtune_sinks::istio_sink::CoManageAllowlist for PolicyAllowlist {
    fn allows(&self, namespace: &str, kind: &str, name: &str) -> bool {
        namespace == "bookinfo" && kind == "DestinationRule" && name == "reviews"
    }
}

#[tokio::test]
async fn run_time_allowlist_co_manages_the_named_object_only() {
    let (client, mut server) = pair();
    let sink = IstioSink::new(client, IstioSinkConfig::default())
        .with_co_manage(std::sync::Arc::new(PolicyAllowlist));
    let served = tokio::spawn(async move {
        let theirs = json!({"team": "reviews"});
        server
            .expect_get(DR_PATH, ok(&existing("DestinationRule", theirs.clone())))
            .await;
        expect_list(&mut server, DR_LIST, "DestinationRule", vec![]).await;
        // The VirtualService of the same name is not on the list: refused, nothing written.
        server
            .expect_get(VS_PATH, ok(&existing("VirtualService", theirs)))
            .await;
        server
            .expect_no_request(SILENCE, "nothing written after the refusal")
            .await;
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    drop(sink);
    served.await.unwrap();
    match &report.items[0].outcome {
        Outcome::Refused { reason } => {
            assert!(
                reason.contains("VirtualService bookinfo/reviews"),
                "{reason}"
            )
        }
        other => panic!("expected the VirtualService refused, got {other:?}"),
    }

    // With the VirtualService absent, the listed DestinationRule is co-managed (no force,
    // no label).
    let (client, mut server) = pair();
    let sink = IstioSink::new(client, IstioSinkConfig::default())
        .with_co_manage(std::sync::Arc::new(PolicyAllowlist));
    let served = tokio::spawn(async move {
        server
            .expect_get(DR_PATH, ok(&existing("DestinationRule", json!({}))))
            .await;
        expect_list(&mut server, DR_LIST, "DestinationRule", vec![]).await;
        server
            .expect_absent(VS_LIST, "reviews", ISTIO_API, "VirtualService")
            .await;
        let dr = server.expect_apply(DR_PATH).await;
        server.expect_apply(VS_PATH).await;
        dr
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    let dr = served.await.unwrap();
    assert!(matches!(report.items[0].outcome, Outcome::Applied { .. }));
    assert_eq!(dr.params(), [("fieldManager", "meshtune")].into());
    assert!(dr.body["metadata"].get("labels").is_none(), "{}", dr.body);
}

#[tokio::test]
async fn api_conflict_is_reported_as_failure() {
    let (client, mut server) = pair();
    let sink = IstioSink::new(client, IstioSinkConfig::default());
    let served = tokio::spawn(async move {
        expect_both_absent(&mut server).await;
        server
            .reply_next(|_| {
                status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "Apply failed with 1 conflict",
                )
            })
            .await;
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    served.await.unwrap();
    match &report.items[0].outcome {
        Outcome::Failed { error } => {
            assert!(
                error.contains("apply DestinationRule bookinfo/reviews"),
                "{error}"
            );
            assert!(error.contains("conflict"), "{error}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn another_object_for_the_same_host_blocks_the_destination() {
    let (client, mut server) = pair();
    let sink = IstioSink::new(client, IstioSinkConfig::default());
    let served = tokio::spawn(async move {
        server
            .expect_absent(DR_LIST, "reviews", ISTIO_API, "DestinationRule")
            .await;
        server.expect_get(VS_PATH, not_found("reviews")).await;
        let mut canary = existing("VirtualService", json!({"team": "reviews"}));
        canary["metadata"]["name"] = json!("reviews-canary");
        canary["spec"] = json!({"hosts": ["reviews"], "http": []});
        expect_list(&mut server, VS_LIST, "VirtualService", vec![canary]).await;
        server
            .expect_no_request(SILENCE, "sink patched despite a conflicting VirtualService")
            .await;
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    drop(sink);
    served.await.unwrap();
    match &report.items[0].outcome {
        Outcome::Refused { reason } => {
            assert!(
                reason.contains("VirtualService bookinfo/reviews-canary"),
                "{reason}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
