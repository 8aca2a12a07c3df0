//! Test certificates generated in the test (rcgen): a CA, a server certificate for
//! `localhost`/127.0.0.1, client certificates with a SPIFFE URI SAN, written as PEM files.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

/// A certificate and its key, as PEM text and as files.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A test certificate authority writing its files under `dir`.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM) and its file.
    pub cert: String,
    pub cert_path: PathBuf,
    dir: PathBuf,
    name: String,
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_path_buf()
}

impl TestCa {
    /// A new CA called `name` (files `name-ca.pem` etc. in `dir`).
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("meshtune test CA {name}"),
        );
        let cert = params.self_signed(&key).expect("CA certificate").pem();
        let cert_path = write(&dir.join(format!("{name}-ca.pem")), &cert);
        Self {
            issuer: Issuer::new(params, key),
            cert,
            cert_path,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    fn issue(&self, file: &str, params: CertificateParams) -> Pem {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf").pem();
        let key = key.serialize_pem();
        let base = format!("{}-{file}", self.name);
        Pem {
            cert_path: write(&self.dir.join(format!("{base}.pem")), &cert),
            key_path: write(&self.dir.join(format!("{base}-key.pem")), &key),
            cert,
            key,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Pem {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        self.issue("server", p)
    }

    /// A client certificate whose only SAN is the URI `spiffe://cluster.local/ns/NS/sa/SA`.
    pub fn spiffe_client(&self, namespace: &str, service_account: &str) -> Pem {
        let uri = spiffe_id(namespace, service_account);
        self.client_with_uri(&format!("{namespace}-{service_account}"), &uri)
    }

    /// A client certificate with URI SAN `uri`.
    pub fn client_with_uri(&self, file: &str, uri: &str) -> Pem {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().expect("IA5 URI")));
        self.issue(file, p)
    }
}

/// Istio's SPIFFE ID for a service account, trust domain `cluster.local`.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/{namespace}/sa/{service_account}")
}

/// A report-service client over TLS to `addr` (server name `localhost`), trusting the CA
/// certificate `ca` and presenting `client` when given; 5 s connect and call timeouts.
#[cfg(feature = "grpc")]
pub async fn tls_report_client(
    addr: std::net::SocketAddr,
    ca: &str,
    client: Option<&Pem>,
) -> Result<
    meshtune_proto::v1::feature_service_client::FeatureServiceClient<tonic::transport::Channel>,
    tonic::transport::Error,
> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(&c.cert, &c.key));
    }
    let ch = Channel::from_shared(format!("https://{addr}"))
        .expect("an https URI from a socket address")
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(5))
        .connect()
        .await?;
    Ok(meshtune_proto::v1::feature_service_client::FeatureServiceClient::new(ch))
}
