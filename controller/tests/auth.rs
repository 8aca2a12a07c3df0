//! Reporter authentication over real TLS (certificates generated here with rcgen, tonic on
//! both sides, loopback): with client-certificate authentication a good SPIFFE client is
//! accepted and its identity recorded; a forged namespace is PERMISSION_DENIED; a missing or
//! untrusted certificate and plaintext fail the handshake; an XFCC header sent by the client
//! is ignored; every refusal changes nothing and is counted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{report, upstream};
use meshtune_controller::config::TlsPem;
use meshtune_controller::identity::AuthMode;
use meshtune_controller::{Config, Controller};
use meshtune_proto::v1::feature_service_client::FeatureServiceClient;
use meshtune_proto::v1::ReportRequest;
use meshtune_test_support::certs::{spiffe_id, tls_report_client as tls_client, TestCa};
use tokio::net::TcpListener;
use tonic::transport::Channel;

struct Server {
    controller: Arc<Controller>,
    grpc: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn serve(config: Config) -> Server {
    let controller = Arc::new(Controller::new(config).unwrap());
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let c = controller.clone();
    tokio::spawn(async move {
        c.serve(grpc, admin, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Server {
        controller,
        grpc: addr,
        stop: Some(tx),
    }
}

fn report_as(namespace: &str, seq: u64) -> ReportRequest {
    let mut r = report("client-0", seq, vec![upstream("workload", 10, 0, 5_000)]);
    r.reporter.as_mut().unwrap().namespace = namespace.into();
    r
}

/// The call fails (handshake refused or connection closed), whatever the layer says.
async fn refused(
    client: Result<FeatureServiceClient<Channel>, tonic::transport::Error>,
    r: ReportRequest,
) -> String {
    match client {
        Err(e) => format!("connect: {e}"),
        Ok(mut c) => match c.report(r).await {
            Err(s) => {
                assert_ne!(s.code(), tonic::Code::Ok);
                format!("call: {s}")
            }
            Ok(resp) => panic!("accepted: {resp:?}"),
        },
    }
}

#[tokio::test]
async fn client_certificates_authenticate_reporters_and_pin_their_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "mesh");
    let other = TestCa::new(dir.path(), "untrusted");
    let server_cert = ca.server();
    let good = ca.spiffe_client("shop", "web");
    let no_spiffe = ca.client_with_uri("https", "https://example.com/x");
    let untrusted = other.spiffe_client("shop", "web");
    let s = serve(Config {
        auth: AuthMode::ClientCert,
        tls: Some(TlsPem {
            cert: server_cert.cert.clone().into_bytes(),
            key: server_cert.key.clone().into_bytes(),
            client_ca: ca.cert.clone().into_bytes(),
        }),
        ..Config::default()
    })
    .await;

    // The good client: accepted, identity recorded.
    let mut c = tls_client(s.grpc, &ca.cert, Some(&good))
        .await
        .expect("mTLS connects");
    let ok = c.report(report_as("shop", 1)).await.expect("accepted");
    assert_eq!(ok.get_ref().accepted_sequence, 1);
    let j = s.controller.destinations_json();
    assert_eq!(j.auth, "client-cert");
    assert_eq!(j.identities.len(), 1);
    assert_eq!(j.identities[0].spiffe_id, spiffe_id("shop", "web"));
    assert_eq!(j.destinations[0].namespace, "shop");

    // Forged namespace from the same authenticated client: PERMISSION_DENIED, nothing merged.
    let e = c.report(report_as("payments", 2)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(
        e.message().contains("payments") && e.message().contains("ns/shop"),
        "{e}"
    );
    // An empty namespace means `default`: also not the identity's.
    let e = c.report(report_as("", 3)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");

    // An XFCC header sent by the client is ignored: the certificate decides.
    let mut r = tonic::Request::new(report_as("payments", 4));
    r.metadata_mut().insert(
        "x-forwarded-client-cert",
        format!("URI={}", spiffe_id("payments", "x"))
            .parse()
            .unwrap(),
    );
    let e = c.report(r).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let mut r = tonic::Request::new(report_as("shop", 5));
    r.metadata_mut().insert(
        "x-forwarded-client-cert",
        format!("URI={}", spiffe_id("payments", "x"))
            .parse()
            .unwrap(),
    );
    c.report(r)
        .await
        .expect("the certificate's namespace is accepted");

    // A certificate without a SPIFFE URI: the handshake succeeds, the call is UNAUTHENTICATED.
    let mut c2 = tls_client(s.grpc, &ca.cert, Some(&no_spiffe))
        .await
        .expect("connects");
    let e = c2.report(report_as("shop", 6)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");

    // No client certificate, an untrusted one, and plaintext: refused at the TLS layer.
    let why = refused(
        tls_client(s.grpc, &ca.cert, None).await,
        report_as("shop", 7),
    )
    .await;
    eprintln!("missing certificate: {why}");
    let why = refused(
        tls_client(s.grpc, &ca.cert, Some(&untrusted)).await,
        report_as("shop", 8),
    )
    .await;
    eprintln!("untrusted certificate: {why}");
    let why = match FeatureServiceClient::connect(format!("http://{}", s.grpc)).await {
        Err(e) => format!("connect: {e}"),
        Ok(mut p) => {
            let r = tokio::time::timeout(Duration::from_secs(5), p.report(report_as("shop", 9)))
                .await
                .expect("bounded");
            match r {
                Err(s) => format!("call: {s}"),
                Ok(resp) => panic!("plaintext accepted: {resp:?}"),
            }
        }
    };
    eprintln!("plaintext: {why}");

    // Only the good reports were merged; the refusals are counted by reason.
    let j = s.controller.destinations_json();
    assert_eq!(j.reports_accepted, 2, "{j:?}");
    assert_eq!(j.destinations.len(), 1);
    assert_eq!(j.destinations[0].namespace, "shop");
    assert_eq!(j.identities[0].reports, 2);
    let m = s.controller.metrics_text();
    assert!(
        m.contains(r#"meshtune_reports_unauthorized_total{reason="namespace_mismatch"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"meshtune_reports_unauthorized_total{reason="bad_identity"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn xfcc_is_trusted_only_when_configured() {
    let xfcc = |ns: &str| {
        format!(
            "By=spiffe://cluster.local/ns/meshtune-system/sa/meshtune;URI={}",
            spiffe_id(ns, "web")
        )
    };
    let call = |ns: &str, seq: u64, header: Option<String>| {
        let mut r = tonic::Request::new(report_as(ns, seq));
        if let Some(h) = header {
            r.metadata_mut()
                .insert("x-forwarded-client-cert", h.parse().unwrap());
        }
        r
    };
    // Trusted (behind the sidecar): the header's URI is the identity.
    let s = serve(Config {
        auth: AuthMode::Xfcc,
        ..Config::default()
    })
    .await;
    let mut c = FeatureServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap();
    c.report(call("shop", 1, Some(xfcc("shop"))))
        .await
        .expect("accepted");
    let e = c
        .report(call("payments", 2, Some(xfcc("shop"))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = c.report(call("shop", 3, None)).await.unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::Unauthenticated,
        "no header, no identity"
    );
    let m = s.controller.metrics_text();
    assert!(
        m.contains(r#"meshtune_reports_unauthorized_total{reason="no_identity"} 1"#),
        "{m}"
    );

    // Not trusted (--insecure-no-auth): the header changes nothing and records no identity.
    let s = serve(Config::default()).await;
    let mut c = FeatureServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap();
    c.report(call("payments", 1, Some(xfcc("shop"))))
        .await
        .expect("unauthenticated mode takes the claim");
    let j = s.controller.destinations_json();
    assert_eq!((j.auth.as_str(), j.identities.len()), ("none", 0));
    assert_eq!(j.destinations[0].namespace, "payments");
}
