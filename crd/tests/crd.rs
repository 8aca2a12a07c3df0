//! The generated CRD: the committed `manifests/base/meshtunepolicy-crd.yaml` is what
//! `meshtune crd` prints; MeshtunePolicy objects (the example in `manifests/examples/`, every
//! field set, typical mistakes) are checked against its schema with the same validator as the
//! Istio kinds (`meshtune_sinks::schema`), and against [`meshtune_crd::resolve`]; the rendered
//! overlays install exactly this CRD.

use std::path::PathBuf;

use meshtune_crd::{crd_yaml, resolve, MeshtunePolicy, MeshtunePolicySpec, CRD_MANIFEST_PATH};
use meshtune_sinks::schema::{yaml_documents, CrdSchemas};
use meshtune_test_support::{kustomize, workspace_root};
use serde_json::{json, Value};

fn committed_path() -> PathBuf {
    workspace_root().join(CRD_MANIFEST_PATH)
}

fn schemas() -> CrdSchemas {
    CrdSchemas::from_yaml(&crd_yaml(), "meshtune crd").unwrap()
}

/// `v` with every number as a float (YAML/JSON writers differ on `2000` vs `2000.0`).
fn norm(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(norm).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), norm(v))).collect()),
        other => other.clone(),
    }
}

fn policy(spec: Value) -> Value {
    json!({"apiVersion": "meshtune.io/v1alpha1", "kind": "MeshtunePolicy",
        "metadata": {"name": "default", "namespace": "demo"}, "spec": spec})
}

#[test]
fn committed_crd_is_the_generated_one() {
    let path = committed_path();
    let committed =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        committed == crd_yaml(),
        "{} differs from the CRD generated from crd/src/types.rs; regenerate it with\n  \
         cargo run -p meshtune -- crd > {CRD_MANIFEST_PATH}",
        path.display()
    );
}

#[test]
fn crd_names_group_scope_and_status_subresource() {
    let docs = yaml_documents(&crd_yaml(), "meshtune crd").unwrap();
    assert_eq!(docs.len(), 1);
    let crd = &docs[0];
    assert_eq!(crd["metadata"]["name"], "meshtunepolicies.meshtune.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["mtp"]));
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["served"], true);
    assert_eq!(v["storage"], true);
    assert_eq!(v["subresources"]["status"], json!({}));
    let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["mode"]["default"], "observe");
    // Approvals merge per host under server-side apply, and a host cannot appear twice.
    assert_eq!(
        spec["properties"]["approvals"]["x-kubernetes-list-type"],
        "map"
    );
    assert_eq!(
        spec["properties"]["approvals"]["x-kubernetes-list-map-keys"],
        json!(["host"])
    );
    // Kubernetes requires a structural schema: every property has a type.
    fn typed(path: &str, s: &Value) {
        if let Some(props) = s["properties"].as_object() {
            for (k, p) in props {
                assert!(p["type"].is_string(), "{path}.{k} has no type: {p}");
                typed(&format!("{path}.{k}"), p);
            }
        }
        if s["items"].is_object() {
            assert!(s["items"]["type"].is_string(), "{path}[] has no type");
            typed(&format!("{path}[]"), &s["items"]);
        }
        assert!(
            s.get("anyOf").is_none() && s.get("oneOf").is_none(),
            "{path}: {s}"
        );
    }
    typed("", &v["schema"]["openAPIV3Schema"]);
}

#[test]
fn example_policy_validates_and_resolves() {
    let path = workspace_root().join("manifests/examples/meshtunepolicy.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs = yaml_documents(&text, &path.display().to_string()).unwrap();
    assert_eq!(docs.len(), 1);
    let schemas = schemas();
    schemas
        .validate(&docs[0])
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let p: MeshtunePolicy = serde_json::from_value(docs[0].clone()).unwrap();
    let e = resolve(&p.spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(e.mode, meshtune_crd::Mode::Recommend);
    assert_eq!(e.bounds.len(), 3);
    assert!(e.excludes("ratings.demo.svc.cluster.local"));
}

#[test]
fn every_field_set_round_trips_through_the_schema() {
    let id = meshtune_crd::recommendation_id(&meshtune_crd::PerKnob::from_knobs(
        &meshtune_core::knobs::Knobs::istio_defaults(),
    ));
    let mut obj = policy(json!({
        "mode": "enforce",
        "slo": {"availability": 0.999},
        "bounds": {"retries.perTryTimeout": {"min": 50, "max": 2000}},
        "excludeHosts": ["a.demo.svc.cluster.local"],
        "coManage": {"destinationRules": ["a"], "virtualServices": ["a"]},
        "decisionIntervalSecs": 3600,
        "approvals": [{"host": "b.demo.svc.cluster.local", "recommendation": id}],
    }));
    obj["status"] = json!({
        "observedGeneration": 3,
        "conditions": [{"type": "Valid", "status": "True", "reason": "Resolved",
            "message": "", "lastTransitionTime": "2026-11-30T09:00:00Z"}],
        "recommendations": [{"host": "b.demo.svc.cluster.local", "id": id,
            "knobs": {"tcp.maxConnections": 100, "timeout": 2000},
            "expectedEffect": {"summary": "p99 1200 -> 180 ms", "values": {"p99Ms": 180}},
            "features": {"rps": 120.5}, "modelVersion": "supervised-v2",
            "createdAt": "2026-11-30T09:00:00Z"}],
        "applied": [{"host": "b.demo.svc.cluster.local", "id": id, "at": "2026-11-30T09:01:00Z"}],
    });
    schemas().validate(&obj).unwrap();
    let p: MeshtunePolicy = serde_json::from_value(obj.clone()).unwrap();
    resolve(&p.spec).unwrap();
    // What the Rust type writes back is the same object, and also valid.
    let back = serde_json::to_value(&p).unwrap();
    assert_eq!(norm(&back["spec"]), norm(&obj["spec"]));
    assert_eq!(norm(&back["status"]), norm(&obj["status"]));
    schemas().validate(&back).unwrap();
    // An empty spec is valid and means the defaults.
    schemas().validate(&policy(json!({}))).unwrap();
    assert_eq!(
        resolve(&MeshtunePolicySpec::default()).unwrap(),
        meshtune_crd::EffectivePolicy::default()
    );
}

#[test]
fn schema_refuses_typical_mistakes_naming_the_path() {
    let schemas = schemas();
    for (spec, needle) in [
        (json!({"mode": "auto"}), "/spec/mode"),
        (json!({"mod": "enforce"}), "mod"),
        (
            json!({"decisionIntervalSecs": 0}),
            "/spec/decisionIntervalSecs",
        ),
        (
            json!({"decisionIntervalSecs": 3601}),
            "/spec/decisionIntervalSecs",
        ),
        (json!({"slo": {"latencyMs": 0}}), "/spec/slo/latencyMs"),
        (
            json!({"slo": {"availability": 1.5}}),
            "/spec/slo/availability",
        ),
        (
            json!({"bounds": {"tcp.maxconnections": {"max": 5}}}),
            "tcp.maxconnections",
        ),
        (
            json!({"bounds": {"timeout": {"max": "2s"}}}),
            "/spec/bounds/timeout/max",
        ),
        (json!({"approvals": [{"host": "a"}]}), "recommendation"),
        (json!({"excludeHosts": "a.demo"}), "/spec/excludeHosts"),
    ] {
        let e = schemas
            .validate(&policy(spec.clone()))
            .expect_err(&format!("accepted {spec}"))
            .to_string();
        assert!(e.contains(needle), "{spec}: {e}");
        // The Rust type refuses the same (the controller reads policies with it).
        let parsed = serde_json::from_value::<MeshtunePolicySpec>(spec.clone())
            .map_err(|e| e.to_string())
            .and_then(|s| resolve(&s).map_err(|e| e.to_string()));
        assert!(parsed.is_err(), "{spec} parsed and resolved");
    }
}

#[test]
fn rendered_overlays_install_the_generated_crd() {
    if !kustomize::require_kubectl() {
        return;
    }
    let generated = &yaml_documents(&crd_yaml(), "meshtune crd").unwrap()[0];
    for overlay in kustomize::OVERLAYS {
        let docs = kustomize::render_overlay(overlay);
        let crds: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .collect();
        assert_eq!(crds.len(), 1, "overlay {overlay}");
        assert!(
            norm(crds[0]) == norm(generated),
            "overlay {overlay} renders another MeshtunePolicy CRD than `meshtune crd`"
        );
    }
}

/// RFC 7386 JSON merge patch (what `kubectl patch --type merge` sends).
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

#[test]
fn readme_patch_bodies_keep_the_example_policy_valid() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let example = workspace_root().join("manifests/examples/meshtunepolicy.yaml");
    let base = yaml_documents(&std::fs::read_to_string(&example).unwrap(), "example")
        .unwrap()
        .remove(0);
    let schemas = schemas();
    let mut n = 0;
    for line in readme
        .lines()
        .filter(|l| l.contains("patch mtp") && l.contains("--type merge"))
    {
        let body = line
            .split("-p '")
            .nth(1)
            .and_then(|b| b.split('\'').next())
            .unwrap_or_else(|| panic!("no -p '...' in {line}"));
        let patch: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{line}: {e}"));
        let mut p = base.clone();
        merge_patch(&mut p, &patch);
        schemas
            .validate(&p)
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        let policy: MeshtunePolicy = serde_json::from_value(p).unwrap();
        resolve(&policy.spec).unwrap_or_else(|e| panic!("{line}: {e}"));
        n += 1;
    }
    assert!(
        n >= 2,
        "expected the approval and the mode patches in the README, found {n}"
    );
}
