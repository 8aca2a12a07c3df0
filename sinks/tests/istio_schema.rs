//! Rendered DestinationRules and VirtualServices validate against Istio's real CRD schemas, and
//! deliberately wrong objects do not (so the validation provably checks something).

mod common;

use meshtune_sinks::istio::{destination_rule, virtual_service, IstioTarget};
use meshtune_sinks::schema::SchemaError;
use serde_json::{json, Value};

fn target() -> IstioTarget {
    IstioTarget::new("reviews.bookinfo.svc.cluster.local", "bookinfo")
}

#[test]
fn rendered_objects_match_the_crd_schemas() {
    let Some(crds) = common::crds() else { return };
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
    let Some(crds) = common::crds() else { return };
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
fn missing_crd_file_is_a_clear_error_when_required() {
    let dir = tempfile::tempdir().unwrap();
    let err = meshtune_sinks::CrdSchemas::locate(Some(dir.path().as_os_str()), true).unwrap_err();
    assert!(err.to_string().contains("crd-all.gen.yaml"), "{err}");
    assert!(
        meshtune_sinks::CrdSchemas::locate(Some(dir.path().as_os_str()), false)
            .unwrap()
            .is_none()
    );
}
