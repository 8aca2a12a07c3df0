//! Every document in manifests/base/*.yaml, and every object the kustomize overlays
//! (`manifests/overlays/{observe,enforce}`, rendered by `kubectl kustomize`) install: Istio kinds
//! validate against the real CRD schemas; the rest pass structural checks (names, namespaces,
//! references between objects resolve, ports and labels line up; the exact RBAC verbs are
//! compared with the code in `controller/tests/rbac.rs`); the filter configurations pass the
//! filter's own parser and name the controller's Istio outbound cluster (real Envoy runs both
//! variants in the Istio-shaped end-to-end tests).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use meshtune_sinks::schema::yaml_documents;
use meshtune_test_support::kustomize;
use serde_json::{json, Value};

struct Doc {
    file: String,
    value: Value,
}

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/base")
}

/// Each overlay's rendered objects; None (after a SKIP note) without kubectl.
fn rendered_overlays() -> Option<Vec<(String, Vec<Doc>)>> {
    if !kustomize::require_kubectl() {
        return None;
    }
    Some(
        kustomize::OVERLAYS
            .iter()
            .map(|o| {
                let file = format!("overlays/{o}");
                let docs = kustomize::render_overlay(o)
                    .into_iter()
                    .map(|value| Doc {
                        file: file.clone(),
                        value,
                    })
                    .collect();
                (o.to_string(), docs)
            })
            .collect(),
    )
}

fn load_all() -> Vec<Doc> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .expect("manifests/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        // kustomize's own file, not an object (the overlays render it).
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests found");
    let mut docs = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        for value in yaml_documents(&text, &name).unwrap_or_else(|e| panic!("{e}")) {
            docs.push(Doc {
                file: name.clone(),
                value,
            });
        }
    }
    docs
}

fn id(d: &Doc) -> String {
    format!(
        "{}: {} {}",
        d.file, d.value["kind"], d.value["metadata"]["name"]
    )
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Value {
    &docs
        .iter()
        .find(|d| d.value["kind"] == kind && d.value["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in manifests"))
        .value
}

fn is_istio(api_version: &str) -> bool {
    api_version.contains("istio.io/")
}

/// Validates every Istio object of `docs` against the CRD schemas; returns how many there were.
fn check_istio(docs: &[Doc]) -> usize {
    let crds = common::crds();
    let mut istio = 0;
    for d in docs {
        let av = d.value["apiVersion"].as_str().unwrap_or_default();
        let kind = d.value["kind"].as_str().unwrap_or_default();
        if !is_istio(av) {
            continue;
        }
        istio += 1;
        assert!(
            crds.knows(av, kind),
            "{}: no served CRD version {av} {kind}",
            id(d)
        );
        crds.validate(&d.value)
            .unwrap_or_else(|e| panic!("{}: {e}", id(d)));
    }
    istio
}

#[test]
fn rendered_overlays_are_valid_objects() {
    let Some(overlays) = rendered_overlays() else {
        return;
    };
    for (overlay, docs) in &overlays {
        // The install: cluster-level objects only (the data plane is per namespace).
        let kinds: BTreeSet<&str> = docs
            .iter()
            .filter_map(|d| d.value["kind"].as_str())
            .collect();
        for kind in [
            "Namespace",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Service",
            "Deployment",
            "PeerAuthentication",
            "AuthorizationPolicy",
        ] {
            assert!(kinds.contains(kind), "overlay {overlay}: no {kind}");
        }
        assert!(
            !kinds.contains("WasmPlugin") && !kinds.contains("EnvoyFilter"),
            "overlay {overlay} installs a per-namespace data-plane object"
        );
        assert_eq!(
            check_istio(docs),
            2,
            "overlay {overlay}: PeerAuthentication + AuthorizationPolicy"
        );
        check_named(docs);
        check_controller_objects(docs);
        let mode: Vec<String> = controller_args(docs)
            .into_iter()
            .filter(|a| a.starts_with("--mode=") || a == "--mode")
            .collect();
        assert_eq!(mode, [format!("--mode={overlay}")], "overlay {overlay}");
    }
}

fn controller_args(docs: &[Doc]) -> Vec<String> {
    find(docs, "Deployment", "meshtune-controller")["spec"]["template"]["spec"]["containers"][0]
        ["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn istio_manifests_match_the_crd_schemas() {
    let crds = common::crds();
    let docs = load_all();
    let istio = check_istio(&docs);
    assert!(
        istio >= 4,
        "expected the EnvoyFilter, WasmPlugin, PeerAuthentication and AuthorizationPolicy, found {istio} Istio documents"
    );

    // The same validation rejects a broken EnvoyFilter and WasmPlugin.
    let mut ef = find(&docs, "EnvoyFilter", "meshtune").clone();
    ef["spec"]["configPatches"][0]["patch"]["operation"] = json!("INSERT_SOMEWHERE");
    assert!(
        crds.validate(&ef).is_err(),
        "bad EnvoyFilter operation accepted"
    );
    let mut ef = find(&docs, "EnvoyFilter", "meshtune").clone();
    ef["spec"]["configPatches"][0]["match"]["context"] = json!(7);
    assert!(
        crds.validate(&ef).is_err(),
        "bad EnvoyFilter context accepted"
    );
    let mut wp = find(&docs, "WasmPlugin", "meshtune").clone();
    wp["spec"]["failStrategy"] = json!("FAIL_SOMETIMES");
    assert!(
        crds.validate(&wp).is_err(),
        "bad WasmPlugin failStrategy accepted"
    );
    let mut wp = find(&docs, "WasmPlugin", "meshtune").clone();
    wp["spec"].as_object_mut().unwrap().remove("url");
    assert!(
        crds.validate(&wp).is_err(),
        "WasmPlugin without url accepted"
    );
}

#[test]
fn every_document_is_a_named_kubernetes_object() {
    check_named(&load_all());
}

fn check_named(docs: &[Doc]) {
    for d in docs {
        let v = &d.value;
        assert!(v["apiVersion"].is_string(), "{}: apiVersion", id(d));
        assert!(v["kind"].is_string(), "{}: kind", id(d));
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        if v["kind"] == "CustomResourceDefinition" {
            // `<plural>.<group>`, a DNS subdomain.
            let spec = &v["spec"];
            assert_eq!(
                name,
                format!(
                    "{}.{}",
                    spec["names"]["plural"].as_str().unwrap_or_default(),
                    spec["group"].as_str().unwrap_or_default()
                ),
                "{}: CRD name",
                id(d)
            );
            assert!(
                v["metadata"]["namespace"].is_null(),
                "{}: CRDs are cluster-scoped",
                id(d)
            );
            continue;
        }
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{}: metadata.name must be a DNS-1123 label",
            id(d)
        );
        let cluster_scoped = matches!(
            v["kind"].as_str(),
            Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
        );
        assert_eq!(
            v["metadata"]["namespace"].is_string(),
            !cluster_scoped,
            "{}: namespace set iff namespaced",
            id(d)
        );
    }
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

#[test]
fn controller_objects_reference_each_other() {
    check_controller_objects(&load_all());
}

fn check_controller_objects(docs: &[Doc]) {
    let ns = "meshtune-system";
    find(docs, "Namespace", ns);
    let dep = find(docs, "Deployment", "meshtune-controller");
    let pod = &dep["spec"]["template"];
    let pod_labels = labels(&pod["metadata"]["labels"]);
    for (k, v) in labels(&dep["spec"]["selector"]["matchLabels"]) {
        assert_eq!(
            pod_labels.get(&k),
            Some(&v),
            "selector label {k} not on pod"
        );
    }
    let sa = pod["spec"]["serviceAccountName"].as_str().unwrap();
    assert_eq!(
        find(docs, "ServiceAccount", sa)["metadata"]["namespace"],
        ns
    );
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    let container = &pod["spec"]["containers"][0];
    assert!(container["image"].as_str().is_some_and(|s| !s.is_empty()));
    let port_names: Vec<&str> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let metrics_port = ann["prometheus.io/port"].as_str().unwrap();
    assert!(
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["containerPort"]
                .as_u64()
                .map(|n| n.to_string())
                .as_deref()
                == Some(metrics_port)),
        "scrape port {metrics_port} is not a container port"
    );

    let svc = find(docs, "Service", "meshtune-controller");
    for (k, v) in labels(&svc["spec"]["selector"]) {
        assert_eq!(
            pod_labels.get(&k),
            Some(&v),
            "service selector {k} does not match pod"
        );
    }
    for p in svc["spec"]["ports"].as_array().unwrap() {
        let target = p["targetPort"].as_str().unwrap();
        assert!(
            port_names.contains(&target),
            "service targetPort {target} not a container port"
        );
    }

    // RBAC: the exact verbs per resource are compared with the code's access lists in
    // controller/tests/rbac.rs; here, that the bindings name the roles and the ServiceAccount.
    // Two replicas use the leader Lease.
    let deploy = find(docs, "Deployment", "meshtune-controller");
    assert_eq!(deploy["spec"]["replicas"], 2);
    // Only the leader is Ready: a rollout that waits for new Ready pods before removing old
    // ones would never finish.
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        "100%"
    );
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--leader-elect"), "{args:?}");
    let env_from_field = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
    };
    assert_eq!(env_from_field("POD_NAME"), Some(json!("metadata.name")));
    assert_eq!(
        env_from_field("POD_NAMESPACE"),
        Some(json!("metadata.namespace"))
    );
    for (kind, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let b = find(docs, kind, "meshtune-controller");
        assert_eq!(b["roleRef"]["kind"], role_kind);
        find(docs, role_kind, b["roleRef"]["name"].as_str().unwrap());
        assert_eq!(b["subjects"][0]["name"], sa);
        assert_eq!(b["subjects"][0]["namespace"], ns);
    }

    let cm = find(docs, "ConfigMap", "meshtune-model");
    assert_eq!(cm["metadata"]["namespace"], ns);
}

/// The controller's Istio outbound cluster, from its Service (the `grpc` port).
fn controller_outbound_cluster(docs: &[Doc]) -> String {
    let svc = find(docs, "Service", "meshtune-controller");
    let grpc = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["appProtocol"] == "grpc")
        .unwrap();
    format!(
        "outbound|{}||{}.{}.svc.cluster.local",
        grpc["port"],
        svc["metadata"]["name"].as_str().unwrap(),
        svc["metadata"]["namespace"].as_str().unwrap()
    )
}

/// A plugin configuration as the filter parses it (the filter's own validator).
fn filter_config(json: &str, origin: &str) -> meshtune_filter::config::Config {
    meshtune_filter::config::Config::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("{origin}: configuration refused by the filter: {e}"))
}

#[test]
fn envoyfilter_is_only_the_http_filter_reporting_to_the_istio_service() {
    let docs = load_all();
    let ef = find(&docs, "EnvoyFilter", "meshtune");
    let patches = ef["spec"]["configPatches"].as_array().unwrap();
    // Istio delivers no BOOTSTRAP patch since it removed its bootstrap discovery service
    // (istio/istio#48693); the controller is reached through Istio's own outbound cluster.
    let kinds: Vec<&str> = patches
        .iter()
        .map(|p| p["applyTo"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["HTTP_FILTER"], "only the HTTP filter patch");
    let http = &patches[0];
    assert_eq!(http["match"]["context"], "SIDECAR_OUTBOUND");
    assert_eq!(http["patch"]["operation"], "INSERT_BEFORE");
    assert_eq!(
        http["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
        "envoy.filters.http.router"
    );
    let filter_cfg = &http["patch"]["value"]["typed_config"]["config"];
    assert_eq!(filter_cfg["failure_policy"], "FAIL_OPEN");
    let cfg = filter_config(
        filter_cfg["configuration"]["value"].as_str().unwrap(),
        "envoyfilter.yaml",
    );
    assert_eq!(cfg.controller_cluster, controller_outbound_cluster(&docs));

    // Real Envoy runs this patch value with the real module in the Istio-shaped end-to-end
    // tests (tests/tests/istio.rs), which also build the sidecar from this file.
}

#[test]
fn wasmplugin_configuration_reports_to_the_istio_service() {
    let docs = load_all();
    let wp = docs
        .iter()
        .find(|d| d.value["kind"] == "WasmPlugin")
        .expect("a WasmPlugin");
    let spec = &wp.value["spec"];
    assert_eq!(spec["failStrategy"], "FAIL_OPEN");
    assert!(
        spec["vmConfig"].get("vmId").is_none(),
        "WasmPlugin has no vm id"
    );
    let cfg = filter_config(&spec["pluginConfig"].to_string(), "wasmplugin.yaml");
    assert_eq!(cfg.controller_cluster, controller_outbound_cluster(&docs));
}

/// Reporter authentication in the mesh: the controller runs with its sidecar and trusts its
/// XFCC; STRICT mTLS for its pods except the admin port Prometheus scrapes; the
/// AuthorizationPolicy allows only the report method from mesh identities on the gRPC port and
/// read-only GETs on the admin port. (Schema validity: `istio_manifests_match_the_crd_schemas`.)
#[test]
fn controller_runs_with_its_sidecar_strict_mtls_and_report_only_authorization() {
    let docs = load_all();
    let dep = find(&docs, "Deployment", "meshtune-controller");
    let pod = &dep["spec"]["template"];
    let pod_labels = labels(&pod["metadata"]["labels"]);
    assert_eq!(
        pod["metadata"]["annotations"]["sidecar.istio.io/inject"],
        "true"
    );
    let args: Vec<&str> = pod["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--trust-xfcc"), "{args:?}");
    assert!(!args.contains(&"--insecure-no-auth"), "{args:?}");
    // Namespaces opt in by label (the controller's namespace watch gates every key); a
    // static --tune-namespaces list would replace that watch.
    assert!(args.contains(&"--sink=istio"), "{args:?}");
    assert!(
        !args.iter().any(|a| a.starts_with("--tune-namespaces")),
        "{args:?}"
    );
    let selects_controller = |v: &Value| {
        let sel = labels(&v["spec"]["selector"]["matchLabels"]);
        !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    let metrics_port = pod["metadata"]["annotations"]["prometheus.io/port"]
        .as_str()
        .unwrap();

    let pa = find(&docs, "PeerAuthentication", "meshtune-controller");
    assert_eq!(pa["metadata"]["namespace"], "meshtune-system");
    assert!(selects_controller(pa));
    assert_eq!(pa["spec"]["mtls"]["mode"], "STRICT");
    let levels = pa["spec"]["portLevelMtls"].as_object().unwrap();
    assert_eq!(levels.len(), 1, "only the admin port is not STRICT");
    assert_eq!(levels[metrics_port]["mode"], "PERMISSIVE");

    let ap = find(&docs, "AuthorizationPolicy", "meshtune-controller");
    assert!(selects_controller(ap));
    assert_eq!(ap["spec"]["action"], "ALLOW");
    let svc = find(&docs, "Service", "meshtune-controller");
    let grpc_port = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["appProtocol"] == "grpc")
        .unwrap()["port"]
        .to_string();
    for rule in ap["spec"]["rules"].as_array().unwrap() {
        let op = &rule["to"][0]["operation"];
        let ports: Vec<String> = op["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        if ports == [grpc_port.clone()] {
            assert_eq!(op["paths"], json!(["/meshtune.v1.FeatureService/Report"]));
            assert_eq!(rule["from"][0]["source"]["principals"], json!(["*"]));
        } else {
            assert_eq!(ports, [metrics_port.to_string()], "{rule}");
            let methods = op["methods"].as_array().unwrap();
            assert!(methods.iter().all(|m| m == "GET" || m == "HEAD"), "{rule}");
        }
    }
}
