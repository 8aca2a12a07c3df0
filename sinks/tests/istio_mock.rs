//! The Istio sink against a mocked Kubernetes API server at HTTP level (kube-rs tower-test
//! pattern): what it GETs, what it PATCHes (method, path, query, content type, body), and that it
//! refuses objects meshtune does not manage.

mod common;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use meshtune_sinks::{Decision, IstioSink, IstioSinkConfig, Outcome, Sink};
use serde_json::{json, Value};
use tower_test::mock::{pair, Handle};

type MockHandle = Handle<Request<Body>, Response<Body>>;

const DR_PATH: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules/reviews";
const VS_PATH: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices/reviews";
const HOST: &str = "reviews.bookinfo.svc.cluster.local";

fn decision() -> Decision {
    Decision {
        destination: HOST.into(),
        namespace: "bookinfo".into(),
        knobs: common::tuned(),
        previous: None,
    }
}

/// Query parameters of a request (kube-rs writes `?&a=b&c=d`).
fn query(q: &str) -> std::collections::BTreeMap<&str, &str> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn not_found(name: &str) -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("\"{name}\" not found"), "reason": "NotFound", "code": 404}),
    )
}

fn existing(kind: &str, labels: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": kind,
        "metadata": {"name": "reviews", "namespace": "bookinfo", "labels": labels,
            "resourceVersion": "12"},
        "spec": {"host": HOST}})
}

const DR_LIST: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules";
const VS_LIST: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices";

/// Answers the namespace LIST the sink makes to find other objects for the same host.
async fn expect_list(handle: &mut MockHandle, path: &str, kind: &str, items: Vec<Value>) {
    let (req, send) = handle.next_request().await.expect("expected a LIST");
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri().path(), path);
    send.send_response(json_response(
        StatusCode::OK,
        &json!({"apiVersion": "networking.istio.io/v1", "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": "1"}, "items": items}),
    ));
}

async fn expect_get(handle: &mut MockHandle, path: &str, reply: Response<Body>) {
    let (req, send) = handle.next_request().await.expect("expected a GET");
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri().path(), path);
    send.send_response(reply);
}

/// Asserts a server-side apply PATCH and returns its query string and JSON body.
async fn expect_apply(handle: &mut MockHandle, path: &str) -> (String, Value) {
    let (req, send) = handle.next_request().await.expect("expected a PATCH");
    assert_eq!(req.method(), Method::PATCH);
    assert_eq!(req.uri().path(), path);
    assert_eq!(
        req.headers().get("content-type").unwrap(),
        "application/apply-patch+yaml"
    );
    let query = req.uri().query().unwrap_or_default().to_string();
    let body = req.into_body().collect_bytes().await.unwrap();
    let obj: Value = serde_json::from_slice(&body).unwrap();
    send.send_response(json_response(StatusCode::OK, &obj));
    (query, obj)
}

#[tokio::test]
async fn new_objects_are_created_by_forced_server_side_apply() {
    let (svc, mut handle) = pair::<Request<Body>, Response<Body>>();
    let mut sink = IstioSink::new(Client::new(svc, "default"), IstioSinkConfig::default());
    if let Some(crds) = common::crds() {
        sink = sink.with_schemas(crds);
    }
    let server = tokio::spawn(async move {
        expect_get(&mut handle, DR_PATH, not_found("reviews")).await;
        expect_list(&mut handle, DR_LIST, "DestinationRule", vec![]).await;
        expect_get(&mut handle, VS_PATH, not_found("reviews")).await;
        expect_list(&mut handle, VS_LIST, "VirtualService", vec![]).await;
        let (q, dr) = expect_apply(&mut handle, DR_PATH).await;
        assert!(q.starts_with('&'), "kube-rs form: ?&...: {q}");
        assert_eq!(
            query(&q),
            [("fieldManager", "meshtune"), ("force", "true")].into()
        );
        let (q2, vs) = expect_apply(&mut handle, VS_PATH).await;
        assert_eq!(query(&q2), query(&q));
        (dr, vs)
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    let (dr, vs) = server.await.unwrap();
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
    let (svc, mut handle) = pair::<Request<Body>, Response<Body>>();
    let sink = IstioSink::new(Client::new(svc, "default"), IstioSinkConfig::default());
    let server = tokio::spawn(async move {
        let owned = json!({"app.kubernetes.io/managed-by": "meshtune"});
        expect_get(
            &mut handle,
            DR_PATH,
            json_response(StatusCode::OK, &existing("DestinationRule", owned.clone())),
        )
        .await;
        expect_list(&mut handle, DR_LIST, "DestinationRule", vec![]).await;
        expect_get(
            &mut handle,
            VS_PATH,
            json_response(StatusCode::OK, &existing("VirtualService", owned)),
        )
        .await;
        expect_list(&mut handle, VS_LIST, "VirtualService", vec![]).await;
        let (q, _) = expect_apply(&mut handle, DR_PATH).await;
        assert_eq!(query(&q).get("force"), Some(&"true"), "{q}");
        expect_apply(&mut handle, VS_PATH).await;
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    server.await.unwrap();
    assert!(matches!(report.items[0].outcome, Outcome::Applied { .. }));
}

#[tokio::test]
async fn objects_not_managed_by_meshtune_are_refused_and_not_patched() {
    let (svc, mut handle) = pair::<Request<Body>, Response<Body>>();
    let sink = IstioSink::new(Client::new(svc, "default"), IstioSinkConfig::default());
    let server = tokio::spawn(async move {
        let theirs = json!({"app.kubernetes.io/managed-by": "helm"});
        expect_get(
            &mut handle,
            DR_PATH,
            json_response(StatusCode::OK, &existing("DestinationRule", theirs)),
        )
        .await;
        // Nothing else may be sent: the next request must never come.
        let next =
            tokio::time::timeout(std::time::Duration::from_millis(300), handle.next_request())
                .await;
        assert!(
            matches!(next, Err(_) | Ok(None)),
            "sink sent a request after refusing: {:?}",
            next.ok()
                .flatten()
                .map(|(r, _)| (r.method().clone(), r.uri().clone()))
        );
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    drop(sink);
    server.await.unwrap();
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
    let (svc, mut handle) = pair::<Request<Body>, Response<Body>>();
    let config = IstioSinkConfig {
        allowed_hosts: vec![HOST.into()],
        ..IstioSinkConfig::default()
    };
    let sink = IstioSink::new(Client::new(svc, "default"), config);
    let server = tokio::spawn(async move {
        let theirs = json!({"team": "reviews"});
        expect_get(
            &mut handle,
            DR_PATH,
            json_response(StatusCode::OK, &existing("DestinationRule", theirs)),
        )
        .await;
        expect_list(&mut handle, DR_LIST, "DestinationRule", vec![]).await;
        expect_get(&mut handle, VS_PATH, not_found("reviews")).await;
        expect_list(&mut handle, VS_LIST, "VirtualService", vec![]).await;
        let (q, dr) = expect_apply(&mut handle, DR_PATH).await;
        assert_eq!(query(&q), [("fieldManager", "meshtune")].into());
        assert!(dr["metadata"].get("labels").is_none(), "{dr}");
        let (q, vs) = expect_apply(&mut handle, VS_PATH).await;
        assert_eq!(
            query(&q).get("force"),
            Some(&"true"),
            "new VS is owned: {q}"
        );
        assert_eq!(
            vs["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "meshtune"
        );
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    server.await.unwrap();
    assert!(matches!(report.items[0].outcome, Outcome::Applied { .. }));
}

#[tokio::test]
async fn api_conflict_is_reported_as_failure() {
    let (svc, mut handle) = pair::<Request<Body>, Response<Body>>();
    let sink = IstioSink::new(Client::new(svc, "default"), IstioSinkConfig::default());
    let server = tokio::spawn(async move {
        expect_get(&mut handle, DR_PATH, not_found("reviews")).await;
        expect_list(&mut handle, DR_LIST, "DestinationRule", vec![]).await;
        expect_get(&mut handle, VS_PATH, not_found("reviews")).await;
        expect_list(&mut handle, VS_LIST, "VirtualService", vec![]).await;
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(json_response(
            StatusCode::CONFLICT,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Apply failed with 1 conflict", "reason": "Conflict", "code": 409}),
        ));
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    server.await.unwrap();
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
    let (svc, mut handle) = pair::<Request<Body>, Response<Body>>();
    let sink = IstioSink::new(Client::new(svc, "default"), IstioSinkConfig::default());
    let server = tokio::spawn(async move {
        expect_get(&mut handle, DR_PATH, not_found("reviews")).await;
        expect_list(&mut handle, DR_LIST, "DestinationRule", vec![]).await;
        expect_get(&mut handle, VS_PATH, not_found("reviews")).await;
        let mut canary = existing("VirtualService", json!({"team": "reviews"}));
        canary["metadata"]["name"] = json!("reviews-canary");
        canary["spec"] = json!({"hosts": ["reviews"], "http": []});
        expect_list(&mut handle, VS_LIST, "VirtualService", vec![canary]).await;
        let next =
            tokio::time::timeout(std::time::Duration::from_millis(300), handle.next_request())
                .await;
        assert!(
            matches!(next, Err(_) | Ok(None)),
            "sink patched despite a conflicting VirtualService"
        );
    });
    let report = sink.apply(&[decision()]).await.unwrap();
    drop(sink);
    server.await.unwrap();
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
