//! End-to-end tests that do not run the meshtune filter in a sidecar (those are in
//! `istio.rs`, on the Istio-shaped harness): the controller's gRPC validation, and the
//! benchmark's no-op and probe filters in the testbed's plain Envoy. Loopback only, bounded in
//! time; every process is stopped on drop. Skipped with a message when prerequisites are
//! missing, unless `CI` is set.

use std::time::Duration;

use meshtune_e2e::{prereqs, serial};
use meshtune_testbed::envoy::{EnvoyConfig, EnvoyError, WasmFilter};
use meshtune_testbed::loadgen::{self, LoadConfig};

/// (iv-b) A malformed report to the controller gets INVALID_ARGUMENT and is counted.
#[test]
fn malformed_report_gets_invalid_argument() {
    use meshtune_proto::v1::feature_service_client::FeatureServiceClient;
    use meshtune_proto::v1::{LatencyHistogram, ReportRequest, Reporter, UpstreamWindow};
    let Some(paths) = prereqs(false) else { return };
    let _g = serial();
    let controller = meshtune_testbed::controller::Controller::start(
        meshtune_testbed::controller::ControllerConfig::new(&paths.meshtune_bin),
    )
    .expect("controller starts");
    let reporter = Reporter {
        namespace: "e2e".into(),
        workload: "client".into(),
        pod: "client-0".into(),
        vm_id: "meshtune".into(),
        filter_version: "test".into(),
        node_id: "n".into(),
    };
    let window = |hist: LatencyHistogram| UpstreamWindow {
        cluster: "workload".into(),
        requests: 1,
        status_2xx: 1,
        latency: Some(hist),
        ..Default::default()
    };
    let good = ReportRequest {
        reporter: Some(reporter.clone()),
        sequence: 1,
        window_start_unix_ms: 1,
        window_length_ms: 1000,
        upstreams: vec![window(LatencyHistogram {
            sub_bucket_bits: meshtune_core::histogram::SUB_BUCKET_BITS,
            bucket_index: vec![20],
            bucket_count: vec![1],
            sum_us: 20,
            min_us: 20,
            max_us: 20,
        })],
        dropped_reports: 0,
    };
    let mut bad_layout = good.clone();
    bad_layout.sequence = 2;
    bad_layout.upstreams[0]
        .latency
        .as_mut()
        .unwrap()
        .sub_bucket_bits = 9;
    let mut bad_lengths = good.clone();
    bad_lengths.sequence = 3;
    bad_lengths.upstreams[0]
        .latency
        .as_mut()
        .unwrap()
        .bucket_count = vec![1, 2];
    let url = format!("http://{}", controller.grpc());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = FeatureServiceClient::connect(url).await.expect("connect");
        client
            .report(good)
            .await
            .expect("a well-formed report is accepted");
        for bad in [bad_layout, bad_lengths] {
            let err = client
                .report(bad)
                .await
                .expect_err("malformed report must be rejected");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            assert!(!err.message().is_empty());
            eprintln!("rejected: {}", err.message());
        }
    });
    let d = controller.destinations().unwrap();
    assert_eq!(d.reports_accepted, 1);
    assert_eq!(d.reports_rejected, 2);
}

/// The benchmark baseline: the no-op wasm filter loads and passes traffic.
#[test]
fn noop_filter_passes_traffic() {
    let Some(paths) = prereqs(true) else { return };
    let _g = serial();
    let workload = meshtune_testbed::workload::WorkloadServer::start(Default::default()).unwrap();
    let mut cfg = EnvoyConfig::new(workload.addr());
    cfg.filter = Some(WasmFilter::noop(&paths.noop_wasm));
    let envoy = cfg.start(&paths.envoy).expect("envoy with no-op filter");
    let r = loadgen::run_blocking(&LoadConfig::count(envoy.listener(), 200.0, 100), None);
    assert_eq!(r.status_count(200), 100, "{}", r.summary());
    assert_eq!(workload.counters().requests, 100);
}

/// The benchmark's probes: the no-op filter making every probed host call passes traffic, and
/// an unknown probe name is refused with a log line naming it.
#[test]
fn probe_filter_passes_traffic_and_refuses_unknown_probes() {
    let Some(paths) = prereqs(true) else { return };
    let _g = serial();
    let workload = meshtune_testbed::workload::WorkloadServer::start(Default::default()).unwrap();
    let mut cfg = EnvoyConfig::new(workload.addr());
    cfg.filter = Some(WasmFilter::probe(
        &paths.noop_wasm,
        "clock,cluster,status,status-header,attempts",
    ));
    let envoy = cfg
        .start(&paths.envoy)
        .expect("envoy with the probe filter");
    let r = loadgen::run_blocking(&LoadConfig::count(envoy.listener(), 200.0, 100), None);
    assert_eq!(r.status_count(200), 100, "{}", r.summary());
    drop(envoy);

    cfg.filter = Some(WasmFilter::probe(&paths.noop_wasm, "status,bogus"));
    let log = match cfg.start_with_timeout(&paths.envoy, Duration::from_secs(20)) {
        Err(EnvoyError::Exited { log, .. }) => log,
        Err(e) => panic!("unexpected error: {e}"),
        Ok(envoy) => envoy.log(),
    };
    assert!(
        log.contains("unknown probe \"bogus\""),
        "unknown probe accepted silently:\n{log}"
    );
}
