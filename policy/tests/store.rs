//! Model store hot swap and the file watcher, with real ONNX files: bad candidates are refused
//! (and counted) while the previous model keeps answering with its old outputs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshtune_policy::store::{ModelStore, SwapOutcome};
use meshtune_policy::watch::{watch_file, WatchEvent};
use meshtune_policy::{validate, ModelError};
use prometheus_client::registry::Registry;

fn metrics_text(registry: &Registry) -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
    s
}

#[test]
fn bad_candidates_are_refused_and_the_old_model_keeps_answering() {
    let mut registry = Registry::default();
    let store = ModelStore::new(
        validate(&good_model(1, "v1"), "v1.onnx").unwrap(),
        &mut registry,
    );
    let batch = random_batch(5, 16);
    let before = store.current().infer(&batch).unwrap();
    let snapshot = store.current();

    let bad: [(&str, Vec<u8>, &str); 7] = [
        ("corrupt", corrupt_model(), "decode"),
        ("wrong feature names", wrong_feature_names(), "contract"),
        (
            "wrong contract version",
            wrong_contract_version(),
            "contract",
        ),
        ("NaN output", nan_output_model(), "output"),
        ("NaN weights", nan_model(), "weights"),
        ("out of range output", out_of_range_model(), "output"),
        ("wrong output width", wrong_width_model(), "signature"),
    ];
    for (what, bytes, reason) in &bad {
        let origin = format!("candidate {what}");
        let e = store.try_swap(bytes, &origin).expect_err(what);
        assert_eq!(e.reason_label(), *reason, "{what}: {e}");
        assert!(
            e.to_string().contains(&origin),
            "{what}: error must name the source: {e}"
        );
        let current = store.current();
        assert_eq!(current.model_version(), "v1", "{what}");
        assert_eq!(
            current.infer(&batch).unwrap(),
            before,
            "{what}: old outputs changed"
        );
    }
    let text = metrics_text(&registry);
    assert!(
        text.contains("meshtune_model_refused_total{reason=\"contract\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("meshtune_model_refused_total{reason=\"output\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("meshtune_model_refused_total{reason=\"decode\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("meshtune_model_info{version=\"v1\"} 1"),
        "{text}"
    );

    // A valid candidate replaces it; identical bytes are a no-op.
    let v2 = good_model(2, "v2");
    assert_eq!(
        store.try_swap(&v2, "v2.onnx").unwrap(),
        SwapOutcome::Swapped {
            version: "v2".into()
        }
    );
    assert_eq!(
        store.try_swap(&v2, "v2.onnx").unwrap(),
        SwapOutcome::Unchanged
    );
    let after = store.current().infer(&batch).unwrap();
    assert_ne!(after, before);
    // A snapshot taken before the swap still answers with the old model.
    assert_eq!(snapshot.infer(&batch).unwrap(), before);
    let text = metrics_text(&registry);
    assert!(
        text.contains("meshtune_model_info{version=\"v2\"} 1"),
        "{text}"
    );
    assert!(!text.contains("version=\"v1\""), "{text}");
    assert!(text.contains("meshtune_model_swaps_total 1"), "{text}");
}

#[test]
fn concurrent_inference_during_swaps_never_fails() {
    let mut registry = Registry::default();
    let store = Arc::new(ModelStore::new(
        validate(&good_model(1, "a"), "a").unwrap(),
        &mut registry,
    ));
    let models = [good_model(1, "a"), good_model(2, "b")];
    let readers: Vec<_> = (0..2)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                let batch = random_batch(i, 32);
                for _ in 0..200 {
                    let rows = store.current().infer(&batch).unwrap();
                    assert!(rows.iter().flatten().all(|v| v.is_finite()));
                }
            })
        })
        .collect();
    for i in 0..10 {
        store.try_swap(&models[i % 2], "swap").unwrap();
        let _ = store.try_swap(&nan_model(), "nan");
    }
    for r in readers {
        r.join().unwrap();
    }
}

/// Replaces a file atomically (write + rename), as deployment tools and Envoy expect.
fn replace(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_watcher_swaps_valid_replacements_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.onnx");
    let v1 = good_model(1, "v1");
    std::fs::write(&path, &v1).unwrap();
    let mut registry = Registry::default();
    let store = Arc::new(ModelStore::new(
        validate(&v1, &path.display().to_string()).unwrap(),
        &mut registry,
    ));
    let batch = random_batch(8, 4);
    let before = store.current().infer(&batch).unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(watch_file(
        store.clone(),
        path.clone(),
        Duration::from_millis(20),
        Some(tx),
        async move {
            let _ = stopped.await;
        },
    ));
    // First poll sees the model already in service.
    assert_eq!(next(&mut rx).await, WatchEvent::Unchanged);

    replace(&path, &wrong_contract_version());
    match next(&mut rx).await {
        WatchEvent::Refused { reason, error } => {
            assert_eq!(reason, "contract");
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(store.current().model_version(), "v1");
    assert_eq!(store.current().infer(&batch).unwrap(), before);

    replace(&path, &nan_output_model());
    assert!(matches!(
        next(&mut rx).await,
        WatchEvent::Refused {
            reason: "output",
            ..
        }
    ));
    assert_eq!(store.current().infer(&batch).unwrap(), before);

    replace(&path, &good_model(2, "v2"));
    assert_eq!(
        next(&mut rx).await,
        WatchEvent::Swapped {
            version: "v2".into()
        }
    );
    assert_eq!(store.current().model_version(), "v2");
    assert_ne!(store.current().infer(&batch).unwrap(), before);

    // A deleted file keeps the model in service.
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.current().model_version(), "v2");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("watcher stops on shutdown")
        .unwrap();
    let text = metrics_text(&registry);
    assert!(
        text.contains("meshtune_model_refused_total{reason=\"contract\"} 1"),
        "{text}"
    );
}

#[test]
fn error_reason_labels_are_stable() {
    let e = ModelError::NoEmbedded;
    assert_eq!(e.reason_label(), "no_embedded");
}

#[tokio::test]
async fn file_source_must_hold_a_valid_model_at_start() {
    use meshtune_policy::source::{load_initial, ModelSource, SourceError};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, good_model(6, "start")).unwrap();
    let src: ModelSource = format!("file:{}", path.display()).parse().unwrap();
    // The file comes first: it is served, not the embedded model behind it.
    let sources = [src.clone(), ModelSource::Embedded];
    let m = load_initial(&sources, None).await.unwrap().unwrap();
    assert_eq!(m.model_version(), "start");
    // A bad file is an error naming it, never a fallback to the embedded model.
    std::fs::write(&path, wrong_contract_version()).unwrap();
    let e = load_initial(&sources, None).await.unwrap_err();
    assert_eq!(e.model_source(), &src);
    match &e {
        SourceError::Model { error, .. } => assert_eq!(error.reason_label(), "contract"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[tokio::test]
async fn configmap_source_without_a_client_is_an_error_naming_it() {
    use meshtune_policy::source::{load_initial, ModelSource};
    let src: ModelSource = "configmap:mesh/policy".parse().unwrap();
    let e = load_initial(&[src], None).await.unwrap_err();
    assert!(e.to_string().contains("configmap:mesh/policy"), "{e}");
}
