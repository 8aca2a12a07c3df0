//! `meshtune status -n NS` and `meshtune approve` against the mocked Kubernetes API server
//! (kube-rs tower-test pattern, `meshtune_test_support::kube_mock`): the requests they make,
//! the patch body, what they print and how they fail.

use http::{Method, StatusCode};
use meshtune_core::knobs::Knobs;
use meshtune_crd::cli::{approve_with, status_with, ApproveArgs, CliError, StatusArgs};
use meshtune_crd::{recommendation_id, PerKnob};
use meshtune_test_support::kube_mock::{self, ok, pair, status};
use serde_json::{json, Value};

const POLICIES: &str = "/apis/meshtune.io/v1alpha1/namespaces/demo/meshtunepolicies";
const REVIEWS: &str = "reviews.demo.svc.cluster.local";
const RATINGS: &str = "ratings.demo.svc.cluster.local";

fn knobs() -> PerKnob<f64> {
    let mut k = Knobs::istio_defaults();
    k.set(meshtune_core::knobs::Knob::Http2MaxRequests, 64.0);
    k.set(meshtune_core::knobs::Knob::RouteTimeoutMs, 800.0);
    PerKnob::from_knobs(&k)
}

fn policy(approvals: Value) -> Value {
    let id = recommendation_id(&knobs());
    let other = PerKnob {
        timeout: Some(1500.0),
        ..PerKnob::default()
    };
    json!({
        "apiVersion": "meshtune.io/v1alpha1", "kind": "MeshtunePolicy",
        "metadata": {"name": "default", "namespace": "demo", "generation": 4,
            "resourceVersion": "812"},
        "spec": {"mode": "recommend", "slo": {"latencyMs": 300},
            "bounds": {"timeout": {"min": 200}}, "approvals": approvals},
        "status": {
            "observedGeneration": 4,
            "conditions": [
                {"type": "Valid", "status": "True", "reason": "Resolved", "message": "policy resolved",
                 "lastTransitionTime": "2026-11-30T09:00:00Z"},
                {"type": "Refused", "status": "True", "reason": "NotApproved",
                 "message": "ratings: waiting for approval", "lastTransitionTime": "2026-11-30T09:05:00Z"}],
            "recommendations": [
                {"host": REVIEWS, "id": id, "knobs": serde_json::to_value(knobs()).unwrap(),
                 "expectedEffect": {"summary": "p99 1200 -> 180 ms", "values": {"p99Ms": 180}},
                 "features": {"rps": 120.5, "p99_ms": 1200},
                 "modelVersion": "supervised-v2", "createdAt": "2026-11-30T09:04:00Z"},
                {"host": RATINGS, "id": recommendation_id(&other),
                 "knobs": serde_json::to_value(&other).unwrap(),
                 "modelVersion": "supervised-v2", "createdAt": "2026-11-30T09:04:30Z"}],
            "applied": [{"host": REVIEWS, "id": id, "at": "2026-11-30T09:06:00Z"}]
        }
    })
}

fn status_args(name: Option<&str>) -> StatusArgs {
    StatusArgs {
        namespace: "demo".into(),
        name: name.map(str::to_string),
    }
}

async fn run_status(
    args: StatusArgs,
    serve: impl AsyncFnOnce(&mut kube_mock::ApiServer),
) -> Result<String, CliError> {
    let (client, mut server) = pair();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        status_with(client, &args, &mut out)
            .await
            .map(|()| String::from_utf8(out).unwrap())
    });
    serve(&mut server).await;
    task.await.unwrap()
}

#[tokio::test]
async fn status_lists_the_namespace_policies_and_prints_them() {
    let id = recommendation_id(&knobs());
    let approvals = json!([{"host": REVIEWS, "recommendation": id}]);
    let out = run_status(status_args(None), async |s| {
        let list = kube_mock::list(
            "meshtune.io/v1alpha1",
            "MeshtunePolicy",
            "812",
            vec![policy(approvals)],
        );
        s.expect_get(POLICIES, ok(&list)).await;
    })
    .await
    .unwrap();
    println!("{out}");
    for want in [
        "MeshtunePolicy demo/default (generation 4, status for generation 4)",
        "mode:       recommend",
        "SLO:        p99 latency <= 300 ms",
        "bounds:     timeout 200ms..*",
        &format!("{REVIEWS}  id {id}  approved, applied 2026-11-30T09:06:00Z"),
        "http.http2MaxRequests=64",
        "tcp.maxConnections=unlimited",
        "timeout=800ms",
        "expected:  p99 1200 -> 180 ms; p99Ms=180",
        "features:  p99_ms=1200 rps=120.5",
        "model:     supervised-v2, made 2026-11-30T09:04:00Z",
        &format!("{RATINGS}  id "),
        "not approved, not applied",
        "Valid    True     Resolved     2026-11-30T09:00:00Z  policy resolved",
        "Refused  True     NotApproved  2026-11-30T09:05:00Z  ratings: waiting for approval",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    // Destinations in host order.
    assert!(out.find(RATINGS).unwrap() < out.find(REVIEWS).unwrap());
}

#[tokio::test]
async fn status_of_a_named_policy_with_an_invalid_spec_says_so() {
    let mut p = policy(json!([]));
    p["spec"]["slo"] = json!({"latencyMs": 300, "availability": 0.99});
    let out = run_status(status_args(Some("default")), async |s| {
        s.expect_get(&format!("{POLICIES}/default"), ok(&p)).await;
    })
    .await
    .unwrap();
    assert!(
        out.contains("INVALID SPEC: spec.slo: set either latencyMs/percentile or availability"),
        "{out}"
    );
    // The status is still shown.
    assert!(out.contains("recommendations (2):"), "{out}");
}

#[tokio::test]
async fn status_without_a_policy_prints_the_defaults() {
    let out = run_status(status_args(None), async |s| {
        let empty = kube_mock::list("meshtune.io/v1alpha1", "MeshtunePolicy", "1", vec![]);
        s.expect_get(POLICIES, ok(&empty)).await;
    })
    .await
    .unwrap();
    assert_eq!(
        out,
        "no MeshtunePolicy in namespace demo: the defaults apply (mode observe, SLO p99 latency <= 250 ms).\n"
    );
}

#[tokio::test]
async fn status_errors_name_what_is_missing() {
    let e = run_status(status_args(None), async |s| {
        s.expect_get(POLICIES, kube_mock::not_found("meshtunepolicies"))
            .await;
    })
    .await
    .unwrap_err();
    assert!(matches!(e, CliError::CrdMissing), "{e}");
    assert!(e
        .to_string()
        .contains("kubectl apply -k manifests/overlays/observe"));

    let e = run_status(status_args(Some("strict")), async |s| {
        s.expect_get(
            &format!("{POLICIES}/strict"),
            kube_mock::not_found("strict"),
        )
        .await;
    })
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "no MeshtunePolicy \"strict\" in namespace demo"
    );

    let e = run_status(status_args(None), async |s| {
        s.expect_get(
            POLICIES,
            status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "cannot list meshtunepolicies",
            ),
        )
        .await;
    })
    .await
    .unwrap_err();
    assert!(
        e.to_string().starts_with("list MeshtunePolicies in demo: "),
        "{e}"
    );
}

fn approve_args(host: &str, id: Option<String>) -> ApproveArgs {
    ApproveArgs {
        namespace: "demo".into(),
        name: "default".into(),
        host: host.into(),
        id,
    }
}

async fn run_approve(
    args: ApproveArgs,
    serve: impl AsyncFnOnce(&mut kube_mock::ApiServer),
) -> Result<String, CliError> {
    let (client, mut server) = pair();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        approve_with(client, &args, &mut out)
            .await
            .map(|()| String::from_utf8(out).unwrap())
    });
    serve(&mut server).await;
    let r = task.await.unwrap();
    server
        .expect_no_request(std::time::Duration::from_millis(50), "after approve")
        .await;
    r
}

#[tokio::test]
async fn approve_patches_the_hosts_entry_with_a_precondition() {
    let id = recommendation_id(&knobs());
    let out = run_approve(approve_args(REVIEWS, Some(id.clone())), async |s| {
        s.expect_get(&format!("{POLICIES}/default"), ok(&policy(json!([]))))
            .await;
        s.expect(Method::PATCH, &format!("{POLICIES}/default"), |c| {
            assert_eq!(
                c.content_type.as_deref(),
                Some("application/merge-patch+json")
            );
            // Exactly the body the README's `kubectl patch --type merge` sends, plus the
            // resourceVersion read (409 Conflict if the policy changed meanwhile).
            assert_eq!(
                c.body,
                json!({"metadata": {"resourceVersion": "812"},
                    "spec": {"approvals": [{"host": REVIEWS, "recommendation": id}]}})
            );
            ok(&policy(c.body["spec"]["approvals"].clone()))
        })
        .await;
    })
    .await
    .unwrap();
    assert_eq!(
        out,
        format!("approved recommendation {id} for {REVIEWS} in demo/default\n")
    );
}

#[tokio::test]
async fn approve_keeps_other_hosts_and_replaces_this_hosts_approval() {
    let ratings_id = {
        let other = PerKnob {
            timeout: Some(1500.0),
            ..PerKnob::default()
        };
        recommendation_id(&other)
    };
    let existing = json!([
        {"host": REVIEWS, "recommendation": "000000000000"},
        {"host": "details.demo.svc.cluster.local", "recommendation": "111111111111"}
    ]);
    run_approve(approve_args(RATINGS, None), async |s| {
        s.expect_get(
            &format!("{POLICIES}/default"),
            ok(&policy(existing.clone())),
        )
        .await;
        s.expect(Method::PATCH, &format!("{POLICIES}/default"), |c| {
            assert_eq!(
                c.body["spec"]["approvals"],
                json!([
                    {"host": REVIEWS, "recommendation": "000000000000"},
                    {"host": "details.demo.svc.cluster.local", "recommendation": "111111111111"},
                    {"host": RATINGS, "recommendation": ratings_id}
                ])
            );
            ok(&policy(c.body["spec"]["approvals"].clone()))
        })
        .await;
    })
    .await
    .unwrap();
    // Re-approving a host replaces its entry.
    let id = recommendation_id(&knobs());
    run_approve(approve_args(REVIEWS, None), async |s| {
        s.expect_get(
            &format!("{POLICIES}/default"),
            ok(&policy(existing.clone())),
        )
        .await;
        s.expect(Method::PATCH, &format!("{POLICIES}/default"), |c| {
            let approvals = c.body["spec"]["approvals"].as_array().unwrap().clone();
            assert_eq!(approvals.len(), 2, "{approvals:?}");
            assert_eq!(approvals[1], json!({"host": REVIEWS, "recommendation": id}));
            ok(&policy(json!(approvals)))
        })
        .await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn approve_refuses_a_stale_id_an_unknown_host_and_reports_a_conflict() {
    let e = run_approve(
        approve_args(REVIEWS, Some("abcdefabcdef".into())),
        async |s| {
            s.expect_get(&format!("{POLICIES}/default"), ok(&policy(json!([]))))
                .await;
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, CliError::StaleId { .. }), "{e}");
    assert!(e.to_string().contains("not abcdefabcdef"), "{e}");

    let e = run_approve(
        approve_args("nope.demo.svc.cluster.local", None),
        async |s| {
            s.expect_get(&format!("{POLICIES}/default"), ok(&policy(json!([]))))
                .await;
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "demo/default: no recommendation for host \"nope.demo.svc.cluster.local\" \
             (hosts with one: {REVIEWS}, {RATINGS})"
        )
    );

    let e = run_approve(approve_args(REVIEWS, None), async |s| {
        s.expect_get(&format!("{POLICIES}/default"), ok(&policy(json!([]))))
            .await;
        s.expect(Method::PATCH, &format!("{POLICIES}/default"), |_| {
            status(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified",
            )
        })
        .await;
    })
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("patch MeshtunePolicy demo/default: "),
        "{e}"
    );

    let e = run_approve(approve_args(REVIEWS, None), async |s| {
        s.expect_get(
            &format!("{POLICIES}/default"),
            kube_mock::not_found("default"),
        )
        .await;
    })
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "no MeshtunePolicy \"default\" in namespace demo"
    );
}
