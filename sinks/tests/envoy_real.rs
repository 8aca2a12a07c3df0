//! Rendered Envoy config checked by the real Envoy binary: `--mode validate` accepts the
//! rendered cluster and route (and rejects a broken one), and a running Envoy picks up knobs the
//! file sink writes to its CDS/RDS files.

mod common;

use std::time::{Duration, Instant};

use meshtune_core::{Knob, Knobs};
use meshtune_sinks::envoy::{self, EnvoyCluster, DEFAULT_RETRY_ON};
use meshtune_sinks::{
    Decision, EnvoyDestination, EnvoyFileConfig, EnvoyFileSink, EnvoyRoute, Outcome, Sink,
};
use meshtune_test_support::envoy::{binary, validate, EnvoyProcess, Launch};
use serde_json::{json, Value};

/// How long a change may take to show in Envoy's admin.
const WAIT: Duration = Duration::from_secs(10);

fn validation_bootstrap(k: &Knobs, http2: bool) -> Value {
    let mut c = EnvoyCluster::new(
        "reviews",
        vec!["127.0.0.1:9080".into(), "reviews.example:9080".into()],
    );
    c.http2 = http2;
    // Mixed IP/DNS endpoints render STRICT_DNS; keep a pure-IP cluster too.
    let c2 = EnvoyCluster::new("ratings", vec!["127.0.0.1:9081".into()]);
    let rc = envoy::route_configuration(
        "local",
        vec![
            envoy::virtual_host(
                "reviews",
                &["reviews".into()],
                "/",
                "reviews",
                k,
                DEFAULT_RETRY_ON,
            ),
            envoy::virtual_host(
                "ratings",
                &["*".into()],
                "/",
                "ratings",
                k,
                DEFAULT_RETRY_ON,
            ),
        ],
    );
    envoy::static_bootstrap(
        0,
        rc,
        vec![
            envoy::cluster(&c, k).unwrap(),
            envoy::cluster(&c2, k).unwrap(),
        ],
    )
}

#[test]
fn envoy_validates_rendered_clusters_and_routes() {
    let Some(bin) = binary() else {
        return;
    };
    for (i, k) in common::knob_sets().iter().enumerate() {
        if let Err(e) = validate(&bin, &validation_bootstrap(k, i % 2 == 0)) {
            panic!("knob set {i} rejected by envoy --mode validate:\n{e}");
        }
    }
}

#[test]
fn envoy_rejects_a_broken_cluster() {
    let Some(bin) = binary() else {
        return;
    };
    let mut b = validation_bootstrap(&common::tuned(), false);
    b["static_resources"]["clusters"][0]["circuit_breakers"]["thresholds"][0]["max_connections"] =
        json!("many");
    assert!(
        validate(&bin, &b).is_err(),
        "a string max_connections must not validate"
    );
    let mut b = validation_bootstrap(&common::tuned(), false);
    b["static_resources"]["clusters"][0]["outlier_detection"]["max_ejection_percent"] = json!(-1);
    assert!(validate(&bin, &b).is_err());
}

fn has_thresholds(
    body: &str,
    cluster: &str,
    conns: u64,
    pending: u64,
    rq: u64,
    retries: u64,
) -> bool {
    let p = format!("{cluster}::default_priority::");
    body.contains(&format!("{p}max_connections::{conns}\n"))
        && body.contains(&format!("{p}max_pending_requests::{pending}\n"))
        && body.contains(&format!("{p}max_requests::{rq}\n"))
        && body.contains(&format!("{p}max_retries::{retries}\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_envoy_picks_up_file_sink_changes() {
    let Some(bin) = binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = EnvoyFileConfig::new(
        dir.path().join("cds.json"),
        vec![EnvoyDestination {
            destination: "backend".into(),
            cluster: EnvoyCluster::new("backend", vec!["127.0.0.1:9".into()]),
            route: Some(EnvoyRoute {
                virtual_host: "backend".into(),
                domains: vec!["*".into()],
                prefix: "/".into(),
            }),
        }],
    );
    config.rds_path = Some(dir.path().join("rds.yaml"));
    let sink = EnvoyFileSink::new(config).unwrap();
    sink.write_current().unwrap();
    let bootstrap = envoy::file_xds_bootstrap(
        &dir.path().join("cds.json"),
        Some((&dir.path().join("rds.yaml"), "meshtune_routes")),
        0,
        0,
    );
    let mut envoy = EnvoyProcess::start(&Launch::new(&bin).concurrency(1), &bootstrap).unwrap();

    // Istio defaults: unlimited (2^32-1) thresholds, no route timeout.
    let u = 4_294_967_295;
    envoy
        .wait_for("/clusters", WAIT, |b| {
            has_thresholds(b, "backend", u, u, u, u)
        })
        .unwrap();

    let mut k = Knobs::istio_defaults();
    k.set(Knob::MaxConnections, 77.0);
    k.set(Knob::Http1MaxPendingRequests, 33.0);
    k.set(Knob::Http2MaxRequests, 55.0);
    k.set(Knob::MaxRetries, 4.0);
    k.set(Knob::RouteTimeoutMs, 800.0);
    k.set(Knob::RetryAttempts, 1.0);
    k.set(Knob::MaxRequestsPerConnection, 10.0);
    k.set(Knob::Consecutive5xxErrors, 7.0);
    k.set(Knob::BaseEjectionTimeMs, 45_000.0);
    let t0 = Instant::now();
    let report = sink
        .apply(&[Decision {
            destination: "backend".into(),
            namespace: "local".into(),
            knobs: k,
            previous: Some(Knobs::istio_defaults()),
        }])
        .await
        .unwrap();
    assert!(matches!(report.items[0].outcome, Outcome::Applied { .. }));
    envoy
        .wait_for("/clusters", WAIT, |b| {
            has_thresholds(b, "backend", 77, 33, 55, 4)
        })
        .unwrap();
    let cds_wait = t0.elapsed();
    let dump = envoy
        .wait_for("/config_dump?resource=dynamic_route_configs", WAIT, |b| {
            b.contains("\"timeout\": \"0.800s\"")
        })
        .unwrap();
    let rds_wait = t0.elapsed();
    assert!(dump.contains("\"num_retries\": 1"), "{dump}");
    let clusters = envoy
        .wait_for("/config_dump?resource=dynamic_active_clusters", WAIT, |b| {
            b.contains("\"consecutive_5xx\": 7")
        })
        .unwrap();
    assert!(
        clusters.contains("\"max_requests_per_connection\": 10"),
        "{clusters}"
    );
    assert!(
        clusters.contains("\"base_ejection_time\": \"45s\""),
        "{clusters}"
    );
    eprintln!(
        "new thresholds visible in Envoy admin {} ms, new route {} ms after the apply call started",
        cds_wait.as_millis(),
        rds_wait.as_millis()
    );

    envoy.stop();
}
