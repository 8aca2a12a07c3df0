//! Rendered DestinationRules and VirtualServices validate against Istio's real CRD schemas, and
//! deliberately wrong objects do not (so the validation provably checks something).

mod common;

use meshtune_sinks::istio::{destination_rule, virtual_service, IstioTarget};
use meshtune_sinks::schema::{
    crd_path, vendored_crd_path, SchemaError, CRD_FILE, CRD_PATH_ENV, VENDORED_DIR,
};
use meshtune_sinks::CrdSchemas;
use serde_json::{json, Value};

fn target() -> IstioTarget {
    IstioTarget::new("reviews.bookinfo.svc.cluster.local", "bookinfo")
}

#[test]
fn rendered_objects_match_the_crd_schemas() {
    let crds = common::crds();
    assert!(crds.knows("networking.istio.io/v1", "DestinationRule"));
    assert!(crds.knows("networking.istio.io/v1", "VirtualService"));
    for (i, k) in common::knob_sets().iter().enumerate() {
        for mut t in [target(), IstioTarget::new("api.example.com", "edge")] {
            for owned in [true, false] {
                t.owned = owned;
                let dr = destination_rule(&t, k);
                crds.validate(&dr)
                    .unwrap_or_else(|e| panic!("knob set {i}: {e}\n{dr:#}"));
                let vs = virtual_service(&t, k);
                crds.validate(&vs)
                    .unwrap_or_else(|e| panic!("knob set {i}: {e}\n{vs:#}"));
            }
        }
    }
}

fn expect_invalid(crds: &meshtune_sinks::CrdSchemas, obj: &Value, pointer: &str) {
    match crds.validate(obj) {
        Err(SchemaError::Invalid { errors, .. }) => assert!(
            errors.iter().any(|e| e.contains(pointer)),
            "expected an error at {pointer}, got {errors:?}"
        ),
        other => panic!("expected {pointer} to be invalid, got {other:?}"),
    }
}

#[test]
fn wrong_objects_are_rejected_with_their_path() {
    let crds = common::crds();
    let k = common::tuned();
    let dr = destination_rule(&target(), &k);
    let vs = virtual_service(&target(), &k);
    let pool = "/spec/trafficPolicy/connectionPool";

    let mut bad = dr.clone();
    bad["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["maxConnections"] = json!("100");
    expect_invalid(&crds, &bad, &format!("{pool}/tcp/maxConnections"));

    let mut bad = dr.clone();
    bad["spec"]["trafficPolicy"]["connectionPool"]["maxConnections"] = json!(100);
    expect_invalid(&crds, &bad, pool);

    let mut bad = dr.clone();
    bad["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"] =
        json!(4_294_967_295u64);
    expect_invalid(&crds, &bad, &format!("{pool}/http/http2MaxRequests"));

    let mut bad = dr.clone();
    bad["spec"]["trafficPolicy"]["outlierDetection"]["baseEjectionTime"] = json!("30");
    expect_invalid(
        &crds,
        &bad,
        "/spec/trafficPolicy/outlierDetection/baseEjectionTime",
    );

    let mut bad = dr.clone();
    bad["spec"]["host"] = json!(["reviews"]);
    expect_invalid(&crds, &bad, "/spec/host");

    let mut bad = vs.clone();
    bad["spec"]["http"][0]["timeout"] = json!("0s");
    expect_invalid(&crds, &bad, "/spec/http/0/timeout");

    let mut bad = vs.clone();
    bad["spec"]["http"][0]["retries"]["attempts"] = json!("three");
    expect_invalid(&crds, &bad, "/spec/http/0/retries/attempts");

    let mut bad = vs.clone();
    bad["spec"]["http"][0]["retries"]["perTryTimeot"] = json!("1s");
    expect_invalid(&crds, &bad, "/spec/http/0/retries");

    let mut wrong_kind = dr.clone();
    wrong_kind["apiVersion"] = json!("networking.istio.io/v9");
    assert!(matches!(
        crds.validate(&wrong_kind),
        Err(SchemaError::UnknownKind { .. })
    ));
}

#[test]
fn a_missing_crd_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nowhere").join(CRD_FILE);
    let err = CrdSchemas::load(&file).unwrap_err();
    let SchemaError::Missing { path } = &err else {
        panic!("expected SchemaError::Missing, got {err:?}")
    };
    assert_eq!(path, &file);
    let msg = err.to_string();
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(
        msg.contains(VENDORED_DIR) && msg.contains(CRD_PATH_ENV),
        "{msg}"
    );
    // A folder override without the file: the error names the file looked for in it.
    match CrdSchemas::locate(Some(dir.path().as_os_str())) {
        Err(SchemaError::Missing { path }) => assert_eq!(path, dir.path().join(CRD_FILE)),
        other => panic!("expected SchemaError::Missing, got {other:?}"),
    }
}

/// The helper every schema test loads the schemas with fails (it does not skip) when the file
/// is missing, naming the path.
#[test]
#[should_panic(expected = "nowhere/crd-all.gen.yaml not found")]
fn schema_tests_fail_when_the_crd_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere").join(CRD_FILE);
    common::required(CrdSchemas::locate(Some(missing.as_os_str())));
}

#[test]
fn the_vendored_crds_are_in_the_repository() {
    let file = crd_path(None);
    assert_eq!(file, vendored_crd_path());
    assert!(
        file.ends_with(format!("{VENDORED_DIR}/{CRD_FILE}")),
        "{}",
        file.display()
    );
    let dir = file.parent().unwrap();
    for beside in ["LICENSE", "README.md"] {
        assert!(
            dir.join(beside).is_file(),
            "{} missing",
            dir.join(beside).display()
        );
    }
    let crds = CrdSchemas::load(&file).expect("vendored Istio CRDs load");
    for (av, kind) in [
        ("networking.istio.io/v1", "DestinationRule"),
        ("networking.istio.io/v1", "VirtualService"),
        ("networking.istio.io/v1alpha3", "EnvoyFilter"),
        ("extensions.istio.io/v1alpha1", "WasmPlugin"),
    ] {
        assert!(crds.knows(av, kind), "no schema for {av} {kind}");
    }
}
