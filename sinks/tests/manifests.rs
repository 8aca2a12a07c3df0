//! Every document in manifests/*.yaml: Istio kinds validate against the real CRD schemas;
//! the rest pass structural checks (references between objects resolve, RBAC covers what the
//! controller does, ports and labels line up); the EnvoyFilter's controller cluster passes
//! `envoy --mode validate`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshtune_sinks::schema::yaml_documents;
use serde_json::{json, Value};

struct Doc {
    file: String,
    value: Value,
}

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn load_all() -> Vec<Doc> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .expect("manifests/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
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

#[test]
fn istio_manifests_match_the_crd_schemas() {
    let crds = common::crds();
    let docs = load_all();
    let mut istio = 0;
    for d in &docs {
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
    assert!(
        istio >= 2,
        "expected the EnvoyFilter and WasmPlugin, found {istio} Istio documents"
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
    for d in load_all() {
        let v = &d.value;
        assert!(v["apiVersion"].is_string(), "{}: apiVersion", id(&d));
        assert!(v["kind"].is_string(), "{}: kind", id(&d));
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{}: metadata.name must be a DNS-1123 label",
            id(&d)
        );
        let cluster_scoped = matches!(
            v["kind"].as_str(),
            Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
        );
        assert_eq!(
            v["metadata"]["namespace"].is_string(),
            !cluster_scoped,
            "{}: namespace set iff namespaced",
            id(&d)
        );
    }
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

#[test]
fn controller_objects_reference_each_other() {
    let docs = load_all();
    let ns = "meshtune-system";
    find(&docs, "Namespace", ns);
    let dep = find(&docs, "Deployment", "meshtune-controller");
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
        find(&docs, "ServiceAccount", sa)["metadata"]["namespace"],
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

    let svc = find(&docs, "Service", "meshtune-controller");
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

    // RBAC: what the Istio sink and the model watch do.
    let has = |rules: &Value, group: &str, resource: &str, verbs: &[&str]| {
        rules.as_array().unwrap().iter().any(|r| {
            let s = |k: &str| {
                r[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            };
            s("apiGroups").contains(&group.to_string())
                && s("resources").contains(&resource.to_string())
                && verbs.iter().all(|v| s("verbs").contains(&v.to_string()))
        })
    };
    let cr = find(&docs, "ClusterRole", "meshtune-controller");
    for res in ["destinationrules", "virtualservices"] {
        assert!(
            has(
                &cr["rules"],
                "networking.istio.io",
                res,
                &["get", "list", "watch", "patch", "create"]
            ),
            "ClusterRole lacks {res}"
        );
    }
    let role = find(&docs, "Role", "meshtune-controller");
    assert!(has(
        &role["rules"],
        "",
        "configmaps",
        &["get", "list", "watch", "patch"]
    ));
    for (kind, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let b = find(&docs, kind, "meshtune-controller");
        assert_eq!(b["roleRef"]["kind"], role_kind);
        find(&docs, role_kind, b["roleRef"]["name"].as_str().unwrap());
        assert_eq!(b["subjects"][0]["name"], sa);
        assert_eq!(b["subjects"][0]["namespace"], ns);
    }

    let cm = find(&docs, "ConfigMap", "meshtune-model");
    assert_eq!(cm["metadata"]["namespace"], ns);
}

#[test]
fn envoyfilter_wires_filter_reporter_and_controller_cluster() {
    let docs = load_all();
    let ef = find(&docs, "EnvoyFilter", "meshtune");
    let patches = ef["spec"]["configPatches"].as_array().unwrap();
    let by = |apply: &str| {
        patches
            .iter()
            .find(|p| p["applyTo"] == apply)
            .unwrap_or_else(|| panic!("no {apply} patch"))
    };
    let http = by("HTTP_FILTER");
    assert_eq!(http["match"]["context"], "SIDECAR_OUTBOUND");
    assert_eq!(http["patch"]["operation"], "INSERT_BEFORE");
    assert_eq!(
        http["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
        "envoy.filters.http.router"
    );
    let filter_cfg = &http["patch"]["value"]["typed_config"]["config"];
    assert_eq!(filter_cfg["failure_policy"], "FAIL_OPEN");

    let boot = &by("BOOTSTRAP")["patch"]["value"]["bootstrap_extensions"][0]["typed_config"];
    assert_eq!(boot["singleton"], true);
    assert_eq!(
        boot["config"]["vm_config"]["vm_id"], filter_cfg["vm_config"]["vm_id"],
        "reporter and filter must share the VM id"
    );

    let cluster = &by("CLUSTER")["patch"]["value"];
    for cfg in [filter_cfg, &boot["config"]] {
        let json: Value =
            serde_json::from_str(cfg["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(json["controller_cluster"], cluster["name"]);
    }
    let sock = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    let svc = find(&docs, "Service", "meshtune-controller");
    assert_eq!(
        sock["address"],
        format!(
            "{}.{}.svc.cluster.local",
            svc["metadata"]["name"].as_str().unwrap(),
            svc["metadata"]["namespace"].as_str().unwrap()
        )
    );
    let grpc = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["appProtocol"] == "grpc")
        .unwrap();
    assert_eq!(sock["port_value"], grpc["port"]);
    assert!(
        cluster["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
            ["http2_protocol_options"]
            .is_object(),
        "controller cluster must speak HTTP/2"
    );

    // The cluster patch is real Envoy config.
    if let Some(bin) = meshtune_test_support::envoy::binary() {
        let b = json!({"static_resources": {"clusters": [cluster]}});
        if let Err(e) = meshtune_test_support::envoy::validate(&bin, &b) {
            panic!("controller cluster rejected by Envoy: {e}");
        }
    }
}
