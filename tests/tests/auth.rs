//! Reporter authentication with real Envoy and real TLS (certificates generated here): the
//! real filter in a real Envoy reports to the real `meshtune controller` over mTLS (client
//! certificate with a SPIFFE URI SAN on the controller cluster) and is accepted with its
//! identity recorded; and a real Envoy in front of the controller as its sidecar (downstream
//! mTLS, `forward_client_cert_details: SANITIZE_SET`, URI set) with `--trust-xfcc`: a good
//! client is accepted, a forged namespace refused, a client-sent XFCC overwritten, untrusted
//! or missing certificates and plaintext refused. Loopback only, bounded, processes stopped
//! on drop; skipped (unless `CI`) when Envoy, the .wasm or the binary is missing.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use meshtune_e2e::{prereqs, serial};
use meshtune_proto::v1::feature_service_client::FeatureServiceClient;
use meshtune_proto::v1::{ReportRequest, Reporter, UpstreamWindow};
use meshtune_test_support::certs::{spiffe_id, tls_report_client as tls_client, Pem, TestCa};
use meshtune_test_support::envoy::{EnvoyProcess, Launch};
use meshtune_testbed::controller::{Controller, ControllerConfig};
use meshtune_testbed::envoy::{ControllerTls, EnvoyConfig, PluginConfig};
use meshtune_testbed::workload::{WorkloadConfig, WorkloadServer};
use serde_json::{json, Value};
use tonic::transport::Channel;

fn destinations(c: &Controller) -> Value {
    serde_json::from_str(&c.admin_get("/api/destinations").expect("admin")).expect("json")
}

fn report(namespace: &str, seq: u64) -> ReportRequest {
    ReportRequest {
        reporter: Some(Reporter {
            namespace: namespace.into(),
            workload: "client".into(),
            pod: "client-0".into(),
            vm_id: "vm".into(),
            filter_version: "test".into(),
            node_id: String::new(),
        }),
        sequence: seq,
        window_start_unix_ms: 1,
        window_length_ms: 1000,
        upstreams: vec![UpstreamWindow {
            cluster: "workload".into(),
            requests: 1,
            status_2xx: 1,
            ..Default::default()
        }],
        dropped_reports: 0,
    }
}

#[test]
fn the_filter_reports_over_mtls_and_its_identity_is_recorded() {
    let Some(paths) = prereqs(false) else { return };
    let _g = serial();
    let dir = tempfile_dir("auth-filter");
    let ca = TestCa::new(&dir, "mesh");
    let server = ca.server();
    let client = ca.spiffe_client("e2e", "client");
    let mut ccfg = ControllerConfig::new(&paths.meshtune_bin);
    ccfg.extra_args = vec![
        format!("--tls-cert={}", server.cert_path.display()),
        format!("--tls-key={}", server.key_path.display()),
        format!("--client-ca={}", ca.cert_path.display()),
    ];
    let controller = Controller::start(ccfg).expect("controller starts with TLS");
    let workload = WorkloadServer::start(WorkloadConfig::default()).expect("workload");
    let plugin = PluginConfig {
        namespace: "e2e".into(),
        ..PluginConfig::default()
    };
    let mut ecfg = EnvoyConfig::with_meshtune(
        workload.addr(),
        controller.grpc(),
        &paths.filter_wasm,
        &plugin,
    );
    ecfg.concurrency = 1;
    ecfg.controller_tls = Some(ControllerTls {
        cert_chain: client.cert_path.clone(),
        private_key: client.key_path.clone(),
        trusted_ca: ca.cert_path.clone(),
        server_name: "localhost".into(),
    });
    let envoy = ecfg.start(&paths.envoy).expect("Envoy starts");
    for _ in 0..20 {
        let r = meshtune_test_support::http::get(envoy.listener(), "/", &[]).expect("request");
        assert_eq!(r.status, 200);
    }
    let (ok, d) = controller
        .wait_for(Duration::from_secs(15), |d| {
            d.destinations.iter().any(|x| x.lifetime.requests >= 20)
        })
        .expect("admin");
    assert!(
        ok,
        "no report arrived over mTLS: {d:?}\n{}",
        envoy.log_tail(4000)
    );
    let j = destinations(&controller);
    assert_eq!(j["auth"], "client-cert");
    assert_eq!(j["destinations"][0]["namespace"], "e2e", "{j}");
    assert_eq!(
        j["identities"][0]["spiffe_id"],
        spiffe_id("e2e", "client"),
        "{j}"
    );
    assert!(j["identities"][0]["reports"].as_u64().unwrap() >= 1);
    assert_eq!(j["reports_rejected"], 0);
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    meshtune_test_support::process::run_dir(name).expect("run dir")
}

/// The controller's sidecar: downstream mTLS (client certificate required, signed by `ca`),
/// XFCC `SANITIZE_SET` with the URI, HTTP/2 to the controller's plaintext gRPC port.
fn sidecar_bootstrap(server: &Pem, ca: &Path, controller: SocketAddr) -> Value {
    let file = |p: &Path| json!({"filename": p.display().to_string()});
    let addr = |a: SocketAddr| json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}});
    json!({
        "node": {"id": "controller-sidecar", "cluster": "meshtune-controller"},
        "admin": {"address": addr("127.0.0.1:0".parse().unwrap())},
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": addr("127.0.0.1:0".parse().unwrap()),
                "filter_chains": [{
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": {
                                "alpn_protocols": ["h2"],
                                "tls_certificates": [{
                                    "certificate_chain": file(&server.cert_path),
                                    "private_key": file(&server.key_path)
                                }],
                                "validation_context": {"trusted_ca": file(ca)}
                            }
                        }
                    },
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "inbound",
                            "codec_type": "AUTO",
                            "forward_client_cert_details": "SANITIZE_SET",
                            "set_current_client_cert_details": {"uri": true},
                            "route_config": {"name": "inbound", "virtual_hosts": [{
                                "name": "controller", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"},
                                            "route": {"cluster": "controller", "timeout": "5s"}}]
                            }]},
                            "http_filters": [{
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                            }]
                        }
                    }]
                }]
            }],
            "clusters": [{
                "name": "controller",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": {"cluster_name": "controller", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": addr(controller)}}
                ]}]}
            }]
        }
    })
}

/// Not accepted: the connection or the call fails (never an OK response).
async fn not_accepted(
    client: Result<FeatureServiceClient<Channel>, tonic::transport::Error>,
    r: ReportRequest,
) -> String {
    match client {
        Err(e) => format!("connect: {e}"),
        Ok(mut c) => match c.report(r).await {
            Err(s) => format!("call: {} {}", s.code(), s.message()),
            Ok(resp) => panic!("accepted: {resp:?}"),
        },
    }
}

#[test]
fn behind_its_sidecar_the_controller_trusts_xfcc_and_refuses_forgeries() {
    let Some(paths) = prereqs(false) else { return };
    let _g = serial();
    let dir = tempfile_dir("auth-sidecar");
    let ca = TestCa::new(&dir, "mesh");
    let other = TestCa::new(&dir, "untrusted");
    let server = ca.server();
    let good = ca.spiffe_client("e2e", "client");
    let untrusted = other.spiffe_client("e2e", "client");
    let mut ccfg = ControllerConfig::new(&paths.meshtune_bin);
    ccfg.extra_args = vec!["--trust-xfcc".into()];
    let controller = Controller::start(ccfg).expect("controller starts");
    let sidecar = EnvoyProcess::start(
        &Launch::new(&paths.envoy).concurrency(1),
        &sidecar_bootstrap(&server, &ca.cert_path, controller.grpc()),
    )
    .expect("sidecar Envoy starts");
    let front = sidecar.listener();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = tls_client(front, &ca.cert, Some(&good))
            .await
            .expect("mTLS to the sidecar");
        c.report(report("e2e", 1))
            .await
            .expect("the good client is accepted");
        let e = c.report(report("payments", 2)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        // The client's own XFCC claiming `payments` is replaced by the sidecar (SANITIZE_SET).
        let mut r = tonic::Request::new(report("payments", 3));
        r.metadata_mut().insert(
            "x-forwarded-client-cert",
            format!("URI={}", spiffe_id("payments", "x"))
                .parse()
                .unwrap(),
        );
        let e = c.report(r).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        eprintln!(
            "untrusted: {}",
            not_accepted(
                tls_client(front, &ca.cert, Some(&untrusted)).await,
                report("e2e", 4)
            )
            .await
        );
        eprintln!(
            "no certificate: {}",
            not_accepted(tls_client(front, &ca.cert, None).await, report("e2e", 5)).await
        );
        let plain = async {
            let mut p = FeatureServiceClient::connect(format!("http://{front}"))
                .await
                .map_err(|e| e.to_string())?;
            p.report(report("e2e", 6)).await.map_err(|s| s.to_string())
        };
        let r = tokio::time::timeout(Duration::from_secs(10), plain)
            .await
            .expect("bounded");
        eprintln!("plaintext: {:?}", r.as_ref().err());
        assert!(r.is_err(), "plaintext to the sidecar was accepted");
        // Directly to the controller, without the sidecar: no header, no identity.
        let mut direct = FeatureServiceClient::connect(format!("http://{}", controller.grpc()))
            .await
            .unwrap();
        let e = direct.report(report("e2e", 7)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    });
    let j = destinations(&controller);
    assert_eq!(j["auth"], "xfcc");
    assert_eq!(j["reports_accepted"], 1, "{j}");
    assert_eq!(j["identities"].as_array().unwrap().len(), 1, "{j}");
    assert_eq!(j["identities"][0]["spiffe_id"], spiffe_id("e2e", "client"));
    assert_eq!(j["destinations"][0]["namespace"], "e2e");
    let m = controller.admin_get("/metrics").unwrap();
    assert!(
        m.contains(r#"meshtune_reports_unauthorized_total{reason="namespace_mismatch"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"meshtune_reports_unauthorized_total{reason="no_identity"} 1"#),
        "{m}"
    );
    drop(sidecar);
    let _ = std::fs::remove_dir_all(&dir);
}
