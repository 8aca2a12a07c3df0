//! ConfigMap watcher and `model push` against a mocked Kubernetes API server at the HTTP level
//! (kube-rs tower-test pattern): requests are asserted (method, path, query, headers, body) and
//! served with real JSON.
#![cfg(feature = "kube")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Method, Response};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::client::Body;
use meshtune_policy::cli::{run, ModelCommand};
use meshtune_policy::configmap::{
    model_configmap, push_model, watch_configmap, PushError, FIELD_MANAGER, MODEL_KEY,
    VERSION_ANNOTATION,
};
use meshtune_policy::store::ModelStore;
use meshtune_policy::validate;
use meshtune_policy::watch::WatchEvent;
use meshtune_test_support::kube_mock::{self, ok, pair, ApiServer};
use prometheus_client::registry::Registry;

const CONFIGMAPS: &str = "/api/v1/namespaces/mesh/configmaps";

fn cm_json(ns: &str, name: &str, bytes: &[u8], rv: &str) -> serde_json::Value {
    let mut cm = model_configmap(ns, name, bytes, "x");
    cm.metadata.resource_version = Some(rv.into());
    serde_json::to_value(&cm).unwrap()
}

/// A watch response body: one MODIFIED event per (model, resourceVersion).
fn watch_events(models: &[(&Vec<u8>, &str)]) -> Response<Body> {
    let mut body = Vec::new();
    for (bytes, rv) in models {
        let ev = serde_json::json!({ "type": "MODIFIED", "object": cm_json("mesh", "policy", bytes, rv) });
        body.extend(serde_json::to_vec(&ev).unwrap());
        body.push(b'\n');
    }
    Response::new(Body::from(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_watcher_lists_then_watches_and_swaps_only_valid_models() {
    let (client, mut server) = pair();
    let mut registry = Registry::default();
    let store = Arc::new(ModelStore::new(
        validate(&good_model(1, "v1"), "embedded").unwrap(),
        &mut registry,
    ));
    let batch = random_batch(3, 8);
    let v1_out = store.current().infer(&batch).unwrap();
    let (v2, bad, v3) = (good_model(2, "v2"), nan_output_model(), good_model(3, "v3"));

    let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
    let served = {
        let (v2, bad, v3) = (v2.clone(), bad.clone(), v3.clone());
        tokio::spawn(async move {
            // 1. initial list, restricted to the one ConfigMap
            server
                .expect(Method::GET, CONFIGMAPS, |c| {
                    let q = &c.query;
                    assert!(q.contains("fieldSelector=metadata.name%3Dpolicy"), "{q}");
                    assert!(!q.contains("watch=true"), "{q}");
                    let items = vec![cm_json("mesh", "policy", &v2, "10")];
                    ok(&kube_mock::list("v1", "ConfigMap", "10", items))
                })
                .await;
            // 2. watch from the list's resourceVersion: a model that outputs NaN
            server
                .expect(Method::GET, CONFIGMAPS, |c| {
                    let q = &c.query;
                    assert!(q.contains("watch=true"), "{q}");
                    assert!(q.contains("resourceVersion=10"), "{q}");
                    assert!(q.contains("fieldSelector=metadata.name%3Dpolicy"), "{q}");
                    watch_events(&[(&bad, "11")])
                })
                .await;
            // 3. the watch resumes from the last resourceVersion; once the test has checked the
            //    refusal, serve a good model
            let (req, send) = server.next_request().await.expect("re-watch request");
            let q = req.uri().query().unwrap_or_default().to_string();
            assert!(
                q.contains("watch=true") && q.contains("resourceVersion=11"),
                "{q}"
            );
            go.await.unwrap();
            send.send_response(watch_events(&[(&v3, "12")]));
            // 4. and again
            let (req, _send) = server
                .next_request()
                .await
                .expect("second re-watch request");
            let q = req.uri().query().unwrap_or_default().to_string();
            assert!(q.contains("resourceVersion=12"), "{q}");
            // keep the request pending until the test ends
            std::future::pending::<()>().await;
        })
    };

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn({
        let store = store.clone();
        async move {
            watch_configmap(store, client, "mesh", "policy", Some(tx), async move {
                let _ = stopped.await;
            })
            .await
        }
    });

    assert_eq!(
        next(&mut rx).await,
        WatchEvent::Swapped {
            version: "v2".into()
        }
    );
    let v2_out = store.current().infer(&batch).unwrap();
    assert_ne!(v2_out, v1_out);
    match next(&mut rx).await {
        WatchEvent::Refused { reason, error } => {
            assert_eq!(reason, "output");
            assert!(error.contains("configmap mesh/policy"), "{error}");
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    assert_eq!(store.current().model_version(), "v2");
    assert_eq!(store.current().infer(&batch).unwrap(), v2_out);
    go_tx.send(()).unwrap();
    assert_eq!(
        next(&mut rx).await,
        WatchEvent::Swapped {
            version: "v3".into()
        }
    );
    assert_eq!(store.current().model_version(), "v3");

    // The re-watch request was asserted before shutdown.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!served.is_finished() || served.await.is_ok());
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("watcher stops on shutdown")
        .unwrap();
}

/// Serves one server-side apply request and returns the ConfigMap that was sent.
async fn serve_apply(mut server: ApiServer, ns: &str, name: &str) -> ConfigMap {
    let path = format!("/api/v1/namespaces/{ns}/configmaps/{name}");
    let call = server
        .expect_apply_with(&path, |c| {
            let q = &c.query;
            assert!(q.contains(&format!("fieldManager={FIELD_MANAGER}")), "{q}");
            assert!(q.contains("force=true"), "{q}");
            assert_eq!(c.body["apiVersion"], "v1");
            assert_eq!(c.body["kind"], "ConfigMap");
            let mut echoed = c.body.clone();
            echoed["metadata"]["resourceVersion"] = "77".into();
            ok(&echoed)
        })
        .await;
    serde_json::from_value(call.body).unwrap()
}

#[tokio::test]
async fn push_validates_then_server_side_applies_the_configmap() {
    let (client, server) = pair();
    let bytes = good_model(4, "push-v1");
    let served = tokio::spawn(async move { serve_apply(server, "mesh", "policy").await });
    let (version, applied) = push_model(client, "mesh", "policy", &bytes, "m.onnx")
        .await
        .unwrap();
    assert_eq!(version, "push-v1");
    assert_eq!(applied.metadata.resource_version.as_deref(), Some("77"));
    let sent = served.await.unwrap();
    assert_eq!(sent.metadata.namespace.as_deref(), Some("mesh"));
    assert_eq!(sent.binary_data.unwrap()[MODEL_KEY].0, bytes);
    assert_eq!(
        sent.metadata.annotations.unwrap()[VERSION_ANNOTATION],
        "push-v1"
    );
}

#[tokio::test]
async fn push_refuses_an_invalid_model_without_calling_the_api() {
    let (client, mut server) = pair();
    let e = push_model(client, "mesh", "policy", &wrong_feature_names(), "bad.onnx")
        .await
        .unwrap_err();
    assert!(matches!(e, PushError::Invalid(_)), "{e}");
    assert!(e.to_string().contains("bad.onnx"), "{e}");
    // Either nothing arrives or the (dropped) client closed the channel: no request either way.
    server
        .expect_no_request(
            Duration::from_millis(100),
            "no request may reach the API server",
        )
        .await;
}

#[tokio::test]
async fn cli_push_goes_through_the_same_path() {
    let (client, server) = pair();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.onnx");
    let bytes = good_model(5, "cli-v1");
    std::fs::write(&file, &bytes).unwrap();
    let served = tokio::spawn(async move { serve_apply(server, "team-a", "meshtune-model").await });
    let mut out = Vec::new();
    run(
        ModelCommand::Push {
            file,
            namespace: "team-a".into(),
            name: "meshtune-model".into(),
        },
        &mut out,
        Some(client),
    )
    .await
    .unwrap();
    let sent = served.await.unwrap();
    assert_eq!(sent.binary_data.unwrap()[MODEL_KEY].0, bytes);
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("pushed model version cli-v1 to configmap team-a/meshtune-model"),
        "{out}"
    );
}
