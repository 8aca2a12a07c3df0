//! Envoy configurations of the testbed (plain Envoy, for the demo and the benchmarks; the
//! Istio-shaped sidecar of the end-to-end tests is `meshtune_test_support::istio`): renders a
//! bootstrap (listener → route → `workload` cluster; optionally a wasm HTTP filter and the
//! `meshtune_controller` cluster the filter is configured to report to) and starts Envoy on it
//! with admin and listener on port 0. No bootstrap extension: the filter reports by itself.
//! Running Envoy (launch, readiness, admin reads, stop on drop) is
//! [`meshtune_test_support::envoy`]'s [`EnvoyProcess`], re-exported here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

pub use meshtune_test_support::envoy::{EnvoyError, EnvoyProcess, Launch, DEFAULT_START_TIMEOUT};

/// Name of the upstream cluster the listener routes to.
pub const WORKLOAD_CLUSTER: &str = "workload";
/// Name of the gRPC cluster the filter reports to (plain Envoy: set as the filter's
/// `controller_cluster`; in Istio the default outbound cluster is used instead).
pub const CONTROLLER_CLUSTER: &str = "meshtune_controller";
/// The filter's VM id.
pub const VM_ID: &str = "meshtune";
/// Root id of the meshtune HTTP filter.
pub const FILTER_ROOT_ID: &str = "meshtune";
/// Default worker threads.
pub const DEFAULT_CONCURRENCY: u32 = 2;

/// The meshtune filter's plugin configuration (the JSON in the filter's StringValue).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginConfig {
    pub controller_cluster: String,
    pub flush_interval_ms: u32,
    pub report_timeout_ms: u32,
    pub namespace: String,
    pub workload: String,
    pub pod: String,
    pub max_upstreams: u32,
    pub max_queued_windows: u32,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            controller_cluster: CONTROLLER_CLUSTER.into(),
            flush_interval_ms: 1000,
            report_timeout_ms: 500,
            namespace: "testbed".into(),
            workload: "client".into(),
            pod: "client-0".into(),
            max_upstreams: 256,
            max_queued_windows: 64,
        }
    }
}

impl PluginConfig {
    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
}

/// A wasm HTTP filter to put in front of the router.
#[derive(Debug, Clone)]
pub struct WasmFilter {
    pub wasm: PathBuf,
    pub vm_id: String,
    pub root_id: String,
    /// Plugin configuration text (StringValue).
    pub configuration: String,
}

impl WasmFilter {
    /// The no-op filter (benchmark baseline).
    pub fn noop(wasm: &Path) -> Self {
        Self {
            wasm: wasm.to_path_buf(),
            vm_id: "noop".into(),
            root_id: "noop".into(),
            configuration: String::new(),
        }
    }

    /// The no-op filter as a probe making the host calls `spec` names on every request.
    pub fn probe(wasm: &Path, spec: &str) -> Self {
        Self {
            configuration: spec.to_string(),
            ..Self::noop(wasm)
        }
    }

    /// The meshtune filter.
    pub fn meshtune(wasm: &Path, cfg: &PluginConfig) -> Self {
        Self::meshtune_raw(wasm, cfg.to_json())
    }

    /// The meshtune filter with a raw configuration text (for bad-config tests).
    pub fn meshtune_raw(wasm: &Path, configuration: String) -> Self {
        Self {
            wasm: wasm.to_path_buf(),
            vm_id: VM_ID.into(),
            root_id: FILTER_ROOT_ID.into(),
            configuration,
        }
    }

    fn plugin(&self, root_id: &str) -> Value {
        json!({
            "name": root_id,
            "root_id": root_id,
            "vm_config": {
                "vm_id": self.vm_id,
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": self.wasm.display().to_string()}}
            },
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": self.configuration
            },
            "failure_policy": "FAIL_OPEN"
        })
    }
}

/// Upstream attempts per request that went upstream, from a cluster's `upstream_rq_total`
/// (attempts, retries included) and `upstream_rq_retry`; `None` when nothing went upstream.
pub fn attempts_per_request(attempts: u64, retries: u64) -> Option<f64> {
    let first = attempts.saturating_sub(retries);
    (first > 0).then(|| attempts as f64 / first as f64)
}

/// What Envoy runs.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    /// The `workload` cluster's single endpoint.
    pub upstream: SocketAddr,
    /// The controller's gRPC address (adds the `meshtune_controller` cluster).
    pub controller: Option<SocketAddr>,
    pub filter: Option<WasmFilter>,
    /// `--concurrency`.
    pub concurrency: u32,
    /// Route timeout.
    pub route_timeout: Duration,
    /// `-l` log level.
    pub log_level: String,
    /// Circuit-breaker thresholds of the workload cluster (max connections / pending /
    /// requests); high by default so only the filter's hints limit traffic.
    pub max_requests: u32,
    /// Run Envoy pinned to these CPUs (a `taskset -c` list such as `0`); None = unpinned.
    pub cpu_affinity: Option<String>,
    /// mTLS to the controller (a controller started with `--tls-cert/--tls-key/--client-ca`);
    /// None = plaintext.
    pub controller_tls: Option<ControllerTls>,
}

/// The client side of mTLS to the controller: Envoy's certificate (with the reporter's SPIFFE
/// URI SAN), its key, and the CA that signed the controller's certificate (PEM files).
#[derive(Debug, Clone)]
pub struct ControllerTls {
    pub cert_chain: PathBuf,
    pub private_key: PathBuf,
    pub trusted_ca: PathBuf,
    /// SNI and the name the controller's certificate must carry (e.g. `localhost`).
    pub server_name: String,
}

impl ControllerTls {
    /// The `transport_socket` of the controller cluster (HTTP/2 over TLS, ALPN `h2`).
    pub fn transport_socket(&self) -> Value {
        let file = |p: &Path| json!({"filename": p.display().to_string()});
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": self.server_name,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [{
                        "certificate_chain": file(&self.cert_chain),
                        "private_key": file(&self.private_key)
                    }],
                    "validation_context": {
                        "trusted_ca": file(&self.trusted_ca),
                        "match_typed_subject_alt_names": [{
                            "san_type": "DNS",
                            "matcher": {"exact": self.server_name}
                        }]
                    }
                }
            }
        })
    }
}

impl EnvoyConfig {
    /// Envoy in front of `upstream` with no filter.
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            upstream,
            controller: None,
            filter: None,
            concurrency: DEFAULT_CONCURRENCY,
            route_timeout: Duration::from_secs(15),
            log_level: "info".into(),
            max_requests: 100_000,
            cpu_affinity: None,
            controller_tls: None,
        }
    }

    /// With the meshtune filter reporting to `controller`.
    pub fn with_meshtune(
        upstream: SocketAddr,
        controller: SocketAddr,
        wasm: &Path,
        plugin: &PluginConfig,
    ) -> Self {
        let mut c = Self::new(upstream);
        c.controller = Some(controller);
        c.filter = Some(WasmFilter::meshtune(wasm, plugin));
        c
    }
}

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

/// The bootstrap as JSON (Envoy reads `.json` bootstraps).
pub fn render_bootstrap(cfg: &EnvoyConfig) -> Value {
    let mut http_filters = Vec::new();
    if let Some(f) = &cfg.filter {
        http_filters.push(json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": f.plugin(&f.root_id)
            }
        }));
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let timeout = format!("{:.3}s", cfg.route_timeout.as_secs_f64());
    let listener = json!({
        "name": "ingress",
        "address": socket("127.0.0.1:0".parse().expect("addr")),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ingress",
                "route_config": {
                    "name": "local",
                    "virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"},
                                    "route": {"cluster": WORKLOAD_CLUSTER, "timeout": timeout}}]
                    }]
                },
                "http_filters": http_filters
            }
        }]}]
    });
    let m = cfg.max_requests;
    let mut clusters = vec![json!({
        "name": WORKLOAD_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "circuit_breakers": {"thresholds": [{
            "max_connections": m, "max_pending_requests": m, "max_requests": m, "max_retries": 1000
        }]},
        "load_assignment": {
            "cluster_name": WORKLOAD_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(cfg.upstream)}}]}]
        }
    })];
    if let Some(c) = cfg.controller {
        let mut cluster = json!({
            "name": CONTROLLER_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "load_assignment": {
                "cluster_name": CONTROLLER_CLUSTER,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(c)}}]}]
            }
        });
        if let Some(tls) = &cfg.controller_tls {
            cluster["transport_socket"] = tls.transport_socket();
        }
        clusters.push(cluster);
    }
    json!({
        "node": {"id": "testbed", "cluster": "testbed"},
        "admin": {"address": socket("127.0.0.1:0".parse().expect("addr"))},
        "static_resources": {"listeners": [listener], "clusters": clusters}
    })
}

impl EnvoyConfig {
    /// How to launch Envoy for this configuration.
    pub fn launch(&self, bin: &Path) -> Launch {
        Launch {
            concurrency: self.concurrency,
            log_level: self.log_level.clone(),
            cpu_affinity: self.cpu_affinity.clone(),
            ..Launch::new(bin)
        }
    }

    /// Starts Envoy on [`render_bootstrap`] and waits until it is ready.
    pub fn start(&self, bin: &Path) -> Result<EnvoyProcess, EnvoyError> {
        self.start_with_timeout(bin, DEFAULT_START_TIMEOUT)
    }

    /// Starts Envoy and waits up to `timeout` for readiness.
    pub fn start_with_timeout(
        &self,
        bin: &Path,
        timeout: Duration,
    ) -> Result<EnvoyProcess, EnvoyError> {
        let launch = Launch {
            start_timeout: timeout,
            ..self.launch(bin)
        };
        EnvoyProcess::start(&launch, &render_bootstrap(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;

    #[test]
    fn renders_meshtune_bootstrap() {
        let cfg = EnvoyConfig::with_meshtune(
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:9090".parse().unwrap(),
            Path::new("/x/meshtune_filter.wasm"),
            &PluginConfig::default(),
        );
        let b = render_bootstrap(&cfg);
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let wasm = &hcm["http_filters"][0]["typed_config"]["config"];
        assert_eq!(wasm["root_id"], "meshtune");
        assert_eq!(wasm["vm_config"]["vm_id"], "meshtune");
        assert_eq!(wasm["failure_policy"], "FAIL_OPEN");
        let conf: Value =
            serde_json::from_str(wasm["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(conf["controller_cluster"], "meshtune_controller");
        assert_eq!(conf["max_queued_windows"], 64);
        assert_eq!(hcm["http_filters"][1]["name"], "envoy.filters.http.router");
        assert!(
            b.get("bootstrap_extensions").is_none(),
            "no singleton reporter"
        );
        let ctl = &b["static_resources"]["clusters"][1];
        assert_eq!(ctl["name"], "meshtune_controller");
        assert_eq!(
            ctl["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            9090
        );
        let plain = render_bootstrap(&EnvoyConfig::new("127.0.0.1:8080".parse().unwrap()));
        assert!(plain.get("bootstrap_extensions").is_none());
        assert_eq!(
            plain["static_resources"]["clusters"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    /// Real Envoy, no filter: start, proxy, stats, stop. Skipped if Envoy is not installed
    /// (fails instead under CI).
    #[test]
    fn real_envoy_proxies_to_workload() {
        let Some(bin) = meshtune_test_support::envoy::binary() else {
            return;
        };
        let srv = crate::workload::WorkloadServer::start(Default::default()).unwrap();
        let mut envoy = EnvoyConfig::new(srv.addr()).start(&bin).unwrap();
        for _ in 0..5 {
            assert_eq!(http::get(envoy.listener(), "/", &[]).unwrap().status, 200);
        }
        assert_eq!(
            http::get(envoy.listener(), "/fail", &[]).unwrap().status,
            503
        );
        let stats = envoy.stats().unwrap();
        assert_eq!(stats["cluster.workload.upstream_rq_200"], 5);
        assert_eq!(stats["cluster.workload.upstream_rq_503"], 1);
        assert!(envoy.clusters().unwrap().contains("workload::"));
        assert!(crate::procstat::cpu_ticks(envoy.pid()).is_ok());
        assert!(crate::procstat::cpu_ns(envoy.pid()).unwrap() > 0);
        assert_eq!(srv.counters().requests, 6);
        envoy.stop();
        assert!(!envoy.is_running());
    }
}
