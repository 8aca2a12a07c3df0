//! An Istio-shaped sidecar for real-Envoy tests: builds the Envoy configuration istiod would
//! send a sidecar from the project's own `manifests/` (parsed, never copied), so tests run the
//! filter the way a mesh deploys it.
//!
//! What it reproduces (Istio 1.22+, `pilot/pkg/model/extensions.go` and
//! `pilot/pkg/networking/core/extension/extensionfilter.go` of istio/istio):
//! * an outbound HTTP listener per service port (`0.0.0.0_PORT`, route config named `PORT`)
//!   whose HTTP filters are the ones Istio's outbound chain has in upstream Envoy (fault, CORS)
//!   and the router last; routes go to clusters named `outbound|PORT||HOST`;
//! * the controller reached through `outbound|PORT||meshtune-controller.<ns>.svc.cluster.local`,
//!   built from the controller Service in `manifests/base/controller.yaml` (a `grpc` port gets
//!   HTTP/2 upstream options, as Istio does for gRPC ports);
//! * [`Delivery::EnvoyFilter`]: the `HTTP_FILTER` patch value of `manifests/base/envoyfilter.yaml`
//!   applied as istiod does (`INSERT_BEFORE` the sub-filter it names, on `SIDECAR_OUTBOUND`);
//! * [`Delivery::WasmPlugin`]: `manifests/base/wasmplugin.yaml` translated as istiod does: an HTTP
//!   filter named `extensions.istio.io/wasmplugin/<ns>.<name>` with `config_discovery` (ECDS,
//!   type URLs Wasm + RBAC, `initial_fetch_timeout: 0s`) inserted before the router
//!   (`UNSPECIFIED_PHASE`), and the ECDS resource (`TypedExtensionConfig`, here served from a
//!   file instead of ADS): `PluginConfig { name: "<ns>.<name>", root_id: pluginName,
//!   vm_config { runtime: v8, code, environment_variables }, configuration: StringValue(JSON of
//!   pluginConfig, absent when pluginConfig is empty), failure_policy from failStrategy }`;
//!   no `vm_id`. The module is loaded from a local file, as istio-agent does after fetching
//!   the `url` (the fetch and its `sha256` check are the agent's, not reproduced);
//! * node id `sidecar~IP~POD.NS~NS.svc.cluster.local` and node metadata `NAMESPACE`,
//!   `WORKLOAD_NAME`, `NAME` as istio-agent sets them; no bootstrap extensions.
//!
//! Not reproduced: mTLS transport sockets (no certificates here), EDS (endpoints are static),
//! Istio's own stats/metadata-exchange filters (not in upstream Envoy).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

/// Prefix istiod gives the ECDS name of a WasmPlugin's filter.
pub const WASMPLUGIN_RESOURCE_PREFIX: &str = "extensions.istio.io/wasmplugin/";
/// `vm_config.runtime` istiod sets.
pub const DEFAULT_RUNTIME: &str = "envoy.wasm.runtime.v8";
/// Type URL of the Wasm HTTP filter.
pub const WASM_HTTP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// Type URL of the RBAC HTTP filter (istiod lists it for ECDS: the fail-open stand-in).
pub const RBAC_HTTP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// Environment variable istiod sets in `vm_config` with the WasmPlugin's resource version.
pub const RESOURCE_VERSION_ENV: &str = "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION";
const HCM: &str = "envoy.filters.network.http_connection_manager";
const ROUTER: &str = "envoy.filters.http.router";

/// Errors building the sidecar configuration; each names the manifest and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum IstioError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {doc} is not valid YAML: {detail}")]
    Parse {
        path: PathBuf,
        doc: usize,
        detail: String,
    },
    #[error("manifests: no {kind} named {name}")]
    Missing { kind: String, name: String },
    #[error("{object}: {detail}")]
    Invalid { object: String, detail: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(object: &str, detail: impl Into<String>) -> IstioError {
    IstioError::Invalid {
        object: object.to_string(),
        detail: detail.into(),
    }
}

/// The Kubernetes objects of a manifests directory (every `*.yaml` document).
#[derive(Debug, Clone)]
pub struct Manifests {
    pub dir: PathBuf,
    pub docs: Vec<Value>,
}

impl Manifests {
    /// The project's `manifests/`.
    pub fn project() -> Result<Self, IstioError> {
        Self::load(&crate::workspace_root().join("manifests").join("base"))
    }

    /// Every document of every `*.yaml` / `*.yml` file in `dir`.
    pub fn load(dir: &Path) -> Result<Self, IstioError> {
        let read_err = |source| IstioError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| IstioError::Read {
                path: path.clone(),
                source,
            })?;
            docs.extend(parse_documents(&text, &path)?);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            docs,
        })
    }

    /// The object of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> Result<&Value, IstioError> {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .ok_or_else(|| IstioError::Missing {
                kind: kind.into(),
                name: name.into(),
            })
    }

    /// The only object of `kind`.
    pub fn only(&self, kind: &str) -> Result<&Value, IstioError> {
        let mut it = self.docs.iter().filter(|d| d["kind"] == kind);
        match (it.next(), it.next()) {
            (Some(d), None) => Ok(d),
            (None, _) => Err(IstioError::Missing {
                kind: kind.into(),
                name: "(any)".into(),
            }),
            (Some(_), Some(_)) => Err(invalid(kind, "more than one in manifests/")),
        }
    }
}

/// YAML documents of one file as JSON values (empty documents skipped).
pub fn parse_documents(text: &str, path: &Path) -> Result<Vec<Value>, IstioError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| IstioError::Parse {
            path: path.to_path_buf(),
            doc: i + 1,
            detail: e.to_string(),
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Istio's outbound cluster name for a service port.
pub fn outbound_cluster(port: u16, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

/// How the filter reaches the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// `manifests/base/envoyfilter.yaml` (its HTTP_FILTER patch).
    EnvoyFilter,
    /// `manifests/base/wasmplugin.yaml` (ECDS, as istiod generates it).
    WasmPlugin,
}

/// A Kubernetes service the sidecar calls, with the address of its one endpoint.
#[derive(Debug, Clone)]
pub struct Service {
    /// `name.namespace.svc.cluster.local`.
    pub host: String,
    pub port: u16,
    /// Service port protocol as Istio infers it (`http`, `grpc`, `http2`).
    pub protocol: String,
    pub endpoint: SocketAddr,
}

impl Service {
    /// The cluster Istio generates for it.
    pub fn cluster(&self) -> String {
        outbound_cluster(self.port, &self.host)
    }
}

/// The controller Service of `manifests/base/controller.yaml` (its `grpc` port), served by
/// `endpoint`.
pub fn controller_service(m: &Manifests, endpoint: SocketAddr) -> Result<Service, IstioError> {
    let svc = m.get("Service", "meshtune-controller")?;
    let ns = svc["metadata"]["namespace"]
        .as_str()
        .ok_or_else(|| invalid("Service meshtune-controller", "no metadata.namespace"))?;
    let ports = svc["spec"]["ports"]
        .as_array()
        .ok_or_else(|| invalid("Service meshtune-controller", "no spec.ports"))?;
    let grpc = ports
        .iter()
        .find(|p| {
            p["appProtocol"] == "grpc"
                || p["name"]
                    .as_str()
                    .is_some_and(|n| n == "grpc" || n.starts_with("grpc-"))
        })
        .ok_or_else(|| invalid("Service meshtune-controller", "no grpc port"))?;
    let port = grpc["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| invalid("Service meshtune-controller", "grpc port is not a port"))?;
    Ok(Service {
        host: format!("meshtune-controller.{ns}.svc.cluster.local"),
        port,
        protocol: "grpc".into(),
        endpoint,
    })
}

/// One sidecar to configure.
#[derive(Debug, Clone)]
pub struct Sidecar {
    pub namespace: String,
    pub workload: String,
    pub pod: String,
    pub delivery: Delivery,
    /// Where the module is on this machine (the sidecar's local file after the agent's fetch,
    /// or the EnvoyFilter's `code.local.filename`).
    pub wasm: PathBuf,
    /// The service the application calls (one outbound HTTP listener for its port).
    pub upstream: Service,
    /// The controller Service (see [`controller_service`]).
    pub controller: Service,
    /// Replaces the WasmPlugin's `pluginConfig` / the EnvoyFilter's configuration JSON, as a
    /// user editing the manifest would (`None`: the manifest's own).
    pub plugin_config: Option<Value>,
    /// Route timeout of the outbound route (Istio's default is none: 0s).
    pub route_timeout: Duration,
}

/// Envoy's configuration for a sidecar: the bootstrap and, for [`Delivery::WasmPlugin`], the
/// ECDS file it reads (written by [`SidecarConfig::write`]).
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub bootstrap: Value,
    /// (path, DiscoveryResponse) of the ECDS resource.
    pub ecds: Option<(PathBuf, Value)>,
    /// The name of the meshtune HTTP filter in the listener.
    pub filter_name: String,
}

impl SidecarConfig {
    /// Writes the ECDS file (rename into place, as Envoy's file watch expects).
    pub fn write(&self) -> Result<(), IstioError> {
        let Some((path, doc)) = &self.ecds else {
            return Ok(());
        };
        write_atomically(path, doc)
    }
}

/// Writes JSON to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, doc: &Value) -> Result<(), IstioError> {
    let tmp = path.with_extension("tmp");
    let w = |source| IstioError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, serde_json::to_vec_pretty(doc).expect("serialisable")).map_err(w)?;
    std::fs::rename(&tmp, path).map_err(w)
}

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

/// An outbound cluster as Istio builds it (static endpoint instead of EDS).
fn cluster(svc: &Service) -> Value {
    let name = svc.cluster();
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [{
            "max_connections": 4294967295u64, "max_pending_requests": 4294967295u64,
            "max_requests": 4294967295u64, "max_retries": 4294967295u64,
            "track_remaining": true
        }]},
        "common_lb_config": {},
        "metadata": {"filter_metadata": {"istio": {"services": [{
            "host": svc.host, "name": svc.host.split('.').next().unwrap_or_default(),
            "namespace": svc.host.split('.').nth(1).unwrap_or_default()
        }]}}},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(svc.endpoint)}}]}]
        }
    });
    if matches!(svc.protocol.as_str(), "grpc" | "http2" | "grpc-web") {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    c
}

/// The HTTP filters of Istio's outbound chain that exist in upstream Envoy, router last.
fn base_http_filters() -> Vec<Value> {
    vec![
        json!({"name": "envoy.filters.http.fault", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}),
        json!({"name": "envoy.filters.http.cors", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}),
        json!({"name": ROUTER, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    ]
}

/// Applies the EnvoyFilter's `HTTP_FILTER` patches to `filters` (of a `SIDECAR_OUTBOUND` HTTP
/// listener). Returns the inserted filter's name.
fn apply_envoyfilter(
    ef: &Value,
    filters: &mut Vec<Value>,
    s: &Sidecar,
) -> Result<String, IstioError> {
    let obj = format!(
        "EnvoyFilter {}",
        ef["metadata"]["name"].as_str().unwrap_or("?")
    );
    let patches = ef["spec"]["configPatches"]
        .as_array()
        .ok_or_else(|| invalid(&obj, "no spec.configPatches"))?;
    let mut inserted = None;
    for p in patches {
        let apply = p["applyTo"].as_str().unwrap_or_default();
        if apply != "HTTP_FILTER" {
            return Err(invalid(
                &obj,
                format!("patch applyTo {apply} is not applied by this harness (only HTTP_FILTER)"),
            ));
        }
        let ctx = p["match"]["context"].as_str().unwrap_or("ANY");
        if !matches!(ctx, "SIDECAR_OUTBOUND" | "ANY") {
            continue;
        }
        let fc = &p["match"]["listener"]["filterChain"]["filter"];
        if fc["name"] != HCM {
            return Err(invalid(&obj, "HTTP_FILTER patch must match the HCM"));
        }
        let sub = fc["subFilter"]["name"]
            .as_str()
            .ok_or_else(|| invalid(&obj, "HTTP_FILTER patch without subFilter.name"))?;
        let at = filters
            .iter()
            .position(|f| f["name"] == sub)
            .ok_or_else(|| invalid(&obj, format!("subFilter {sub} not in the chain")))?;
        let mut value = p["patch"]["value"].clone();
        let cfg = &mut value["typed_config"]["config"];
        // The module's location in this sidecar.
        cfg["vm_config"]["code"]["local"]["filename"] = json!(s.wasm.display().to_string());
        if let Some(pc) = &s.plugin_config {
            cfg["configuration"]["value"] = json!(pc.to_string());
        }
        let name = value["name"].as_str().unwrap_or_default().to_string();
        match p["patch"]["operation"].as_str() {
            Some("INSERT_BEFORE") => filters.insert(at, value),
            Some("INSERT_AFTER") => filters.insert(at + 1, value),
            other => {
                return Err(invalid(
                    &obj,
                    format!("patch operation {other:?} not supported by this harness"),
                ))
            }
        }
        inserted = Some(name);
    }
    inserted.ok_or_else(|| invalid(&obj, "no HTTP_FILTER patch for SIDECAR_OUTBOUND"))
}

/// The ECDS resource and the listener's filter for a WasmPlugin, as istiod builds them.
pub fn wasmplugin_filter(wp: &Value, s: &Sidecar) -> Result<(String, Value), IstioError> {
    let name = wp["metadata"]["name"].as_str().unwrap_or_default();
    let ns = wp["metadata"]["namespace"].as_str().unwrap_or(&s.namespace);
    let obj = format!("WasmPlugin {ns}/{name}");
    let spec = &wp["spec"];
    let kind = spec["type"].as_str().unwrap_or("HTTP");
    if !matches!(kind, "HTTP" | "UNSPECIFIED_PLUGIN_TYPE") {
        return Err(invalid(&obj, format!("type {kind} is not an HTTP filter")));
    }
    let phase = spec["phase"].as_str().unwrap_or("UNSPECIFIED_PHASE");
    if phase != "UNSPECIFIED_PHASE" {
        return Err(invalid(
            &obj,
            format!("phase {phase}: only UNSPECIFIED_PHASE (before the router) is built here"),
        ));
    }
    let modes: Vec<&str> = spec["match"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["mode"].as_str()).collect())
        .unwrap_or_default();
    if !(modes.is_empty()
        || modes
            .iter()
            .any(|m| matches!(*m, "CLIENT" | "CLIENT_AND_SERVER")))
    {
        return Err(invalid(&obj, "does not match outbound (CLIENT) traffic"));
    }
    spec["url"]
        .as_str()
        .ok_or_else(|| invalid(&obj, "spec.url is required"))?;
    let resource = format!("{ns}.{name}");
    let plugin_config = s
        .plugin_config
        .clone()
        .unwrap_or_else(|| spec["pluginConfig"].clone());
    let mut plugin = json!({
        "name": resource,
        "root_id": spec["pluginName"].as_str().unwrap_or_default(),
        "vm_config": {
            "runtime": DEFAULT_RUNTIME,
            "code": {"local": {"filename": s.wasm.display().to_string()}},
            "environment_variables": {"key_values": {RESOURCE_VERSION_ENV: "1"}}
        }
    });
    // istiod: configuration only when pluginConfig has fields (JSON of the Struct).
    if plugin_config.as_object().is_some_and(|o| !o.is_empty()) {
        plugin["configuration"] = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": plugin_config.to_string()
        });
    }
    match spec["failStrategy"].as_str() {
        Some("FAIL_OPEN") => plugin["failure_policy"] = json!("FAIL_OPEN"),
        Some("FAIL_RELOAD") => plugin["failure_policy"] = json!("FAIL_RELOAD"),
        // FAIL_CLOSE is proto3's default (unset) in Envoy's enum: istiod sets FAIL_CLOSED.
        _ => plugin["failure_policy"] = json!("FAIL_CLOSED"),
    }
    let filter_name = format!("{WASMPLUGIN_RESOURCE_PREFIX}{resource}");
    let ecds = json!({
        "version_info": "1",
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": filter_name,
            "typed_config": {"@type": WASM_HTTP_TYPE, "config": plugin}
        }]
    });
    Ok((filter_name, ecds))
}

/// Builds the sidecar's Envoy configuration from the manifests.
pub fn sidecar(m: &Manifests, s: &Sidecar, dir: &Path) -> Result<SidecarConfig, IstioError> {
    let mut filters = base_http_filters();
    let (filter_name, ecds) = match s.delivery {
        Delivery::EnvoyFilter => {
            let name = apply_envoyfilter(m.only("EnvoyFilter")?, &mut filters, s)?;
            (name, None)
        }
        Delivery::WasmPlugin => {
            let (name, ecds) = wasmplugin_filter(m.only("WasmPlugin")?, s)?;
            let path = dir.join("ecds.json");
            let at = filters
                .iter()
                .position(|f| f["name"] == ROUTER)
                .unwrap_or(0);
            filters.insert(
                at,
                json!({
                    "name": name,
                    "config_discovery": {
                        "config_source": {
                            "path_config_source": {"path": path.display().to_string()},
                            "resource_api_version": "V3",
                            "initial_fetch_timeout": "0s"
                        },
                        "type_urls": [WASM_HTTP_TYPE, RBAC_HTTP_TYPE]
                    }
                }),
            );
            (name, Some((path, ecds)))
        }
    };
    let up = &s.upstream;
    let port = up.port.to_string();
    let short = up.host.split('.').next().unwrap_or_default();
    let listener = json!({
        "name": format!("0.0.0.0_{port}"),
        // Istio binds 0.0.0.0:PORT behind iptables; tests bind loopback on a free port.
        "address": socket("127.0.0.1:0".parse().expect("addr")),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [{
            "name": HCM,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": format!("outbound_0.0.0.0_{port}"),
                "route_config": {
                    "name": port,
                    "validate_clusters": false,
                    "virtual_hosts": [{
                        "name": format!("{}:{port}", up.host),
                        // Istio lists the host, short names and the VIP; the tests' clients
                        // send the loopback address, so everything matches here.
                        "domains": [up.host, format!("{}:{port}", up.host), short, "*"],
                        "routes": [{
                            "name": "default",
                            "match": {"prefix": "/"},
                            "route": {
                                "cluster": up.cluster(),
                                "timeout": format!("{:.3}s", s.route_timeout.as_secs_f64()),
                                // Istio's default retry policy also retries 503
                                // (`retriable-status-codes`, [503]); left out here so that the
                                // workload's injected 503s reach the client (as with a
                                // VirtualService setting `retries.retryOn` without 503).
                                "retry_policy": {
                                    "retry_on": "connect-failure,refused-stream,unavailable,cancelled",
                                    "num_retries": 2,
                                    "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                                    "host_selection_retry_max_attempts": "5"
                                }
                            }
                        }]
                    }]
                },
                "http_filters": filters,
                "use_remote_address": false,
                "normalize_path": true,
                "path_with_escaped_slashes_action": "KEEP_UNCHANGED"
            }
        }]}]
    });
    let node_ip = "10.0.0.1";
    let bootstrap = json!({
        "node": {
            "id": format!("sidecar~{node_ip}~{}.{}~{}.svc.cluster.local", s.pod, s.namespace, s.namespace),
            "cluster": format!("{}.{}", s.workload, s.namespace),
            "metadata": {
                "NAMESPACE": s.namespace,
                "WORKLOAD_NAME": s.workload,
                "NAME": s.pod,
                "CLUSTER_ID": "Kubernetes",
                "INSTANCE_IPS": node_ip
            }
        },
        "admin": {"address": socket("127.0.0.1:0".parse().expect("addr"))},
        "static_resources": {
            "listeners": [listener],
            "clusters": [cluster(up), cluster(&s.controller)]
        }
    });
    Ok(SidecarConfig {
        bootstrap,
        ecds,
        filter_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar_for(delivery: Delivery) -> Sidecar {
        let m = Manifests::project().unwrap();
        Sidecar {
            namespace: "e2e".into(),
            workload: "client".into(),
            pod: "client-0".into(),
            delivery,
            wasm: PathBuf::from("/x/meshtune_filter.wasm"),
            upstream: Service {
                host: "workload.e2e.svc.cluster.local".into(),
                port: 8080,
                protocol: "http".into(),
                endpoint: "127.0.0.1:18080".parse().unwrap(),
            },
            controller: controller_service(&m, "127.0.0.1:15051".parse().unwrap()).unwrap(),
            plugin_config: None,
            route_timeout: Duration::from_secs(15),
        }
    }

    fn http_filters(b: &Value) -> Vec<Value> {
        b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The plugin configuration the filter gets, as JSON.
    fn configuration(plugin: &Value) -> Value {
        serde_json::from_str(plugin["configuration"]["value"].as_str().unwrap_or("{}")).unwrap()
    }

    #[test]
    fn controller_cluster_comes_from_the_service_manifest() {
        let m = Manifests::project().unwrap();
        let c = controller_service(&m, "127.0.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(
            c.cluster(),
            "outbound|50051||meshtune-controller.meshtune-system.svc.cluster.local"
        );
        let json = cluster(&c);
        assert!(json["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
            ["http2_protocol_options"]
            .is_object());
    }

    #[test]
    fn envoyfilter_inserts_its_patch_before_the_router() {
        let m = Manifests::project().unwrap();
        let s = sidecar_for(Delivery::EnvoyFilter);
        let cfg = sidecar(&m, &s, Path::new("/tmp")).unwrap();
        assert!(cfg.ecds.is_none());
        assert!(cfg.bootstrap.get("bootstrap_extensions").is_none());
        let f = http_filters(&cfg.bootstrap);
        let names: Vec<&str> = f.iter().map(|x| x["name"].as_str().unwrap()).collect();
        let at = names.iter().position(|n| *n == cfg.filter_name).unwrap();
        assert_eq!(names[at + 1], ROUTER, "{names:?}");
        assert_eq!(names.last(), Some(&ROUTER));
        let plugin = &f[at]["typed_config"]["config"];
        assert_eq!(
            plugin["vm_config"]["code"]["local"]["filename"],
            "/x/meshtune_filter.wasm"
        );
        // Whatever the manifest says about the controller, it must be the Istio cluster.
        let conf = configuration(plugin);
        let cluster = conf["controller_cluster"]
            .as_str()
            .unwrap_or("outbound|50051||meshtune-controller.meshtune-system.svc.cluster.local");
        assert_eq!(cluster, s.controller.cluster());
    }

    #[test]
    fn wasmplugin_is_translated_like_istiod() {
        let m = Manifests::project().unwrap();
        let wp = m.only("WasmPlugin").unwrap();
        let s = sidecar_for(Delivery::WasmPlugin);
        let cfg = sidecar(&m, &s, Path::new("/tmp/x")).unwrap();
        let ns = wp["metadata"]["namespace"].as_str().unwrap();
        let name = wp["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            cfg.filter_name,
            format!("extensions.istio.io/wasmplugin/{ns}.{name}")
        );
        let f = http_filters(&cfg.bootstrap);
        let at = f.iter().position(|x| x["name"] == cfg.filter_name).unwrap();
        assert_eq!(f[at + 1]["name"], ROUTER);
        let cd = &f[at]["config_discovery"];
        assert_eq!(cd["type_urls"], json!([WASM_HTTP_TYPE, RBAC_HTTP_TYPE]));
        assert_eq!(cd["config_source"]["initial_fetch_timeout"], "0s");
        let (path, ecds) = cfg.ecds.as_ref().unwrap();
        assert_eq!(path, Path::new("/tmp/x/ecds.json"));
        let r = &ecds["resources"][0];
        assert_eq!(r["name"], cfg.filter_name);
        let plugin = &r["typed_config"]["config"];
        assert_eq!(plugin["name"], format!("{ns}.{name}"));
        assert_eq!(plugin["root_id"], wp["spec"]["pluginName"]);
        assert_eq!(plugin["failure_policy"], "FAIL_OPEN");
        assert!(
            plugin["vm_config"].get("vm_id").is_none(),
            "istiod sets no vm_id"
        );
        assert_eq!(plugin["vm_config"]["runtime"], DEFAULT_RUNTIME);
        let spec_cfg = &wp["spec"]["pluginConfig"];
        if spec_cfg.as_object().is_some_and(|o| !o.is_empty()) {
            assert_eq!(&configuration(plugin), spec_cfg);
        } else {
            assert!(plugin.get("configuration").is_none());
        }
        // A replaced pluginConfig reaches the filter as JSON text.
        let mut s2 = s.clone();
        s2.plugin_config = Some(json!({"flush_interval_ms": 500}));
        let cfg2 = sidecar(&m, &s2, Path::new("/tmp/x")).unwrap();
        let p2 = &cfg2.ecds.unwrap().1["resources"][0]["typed_config"]["config"];
        assert_eq!(configuration(p2), json!({"flush_interval_ms": 500}));
    }

    #[test]
    fn istio_names_and_node_metadata() {
        let m = Manifests::project().unwrap();
        let cfg = sidecar(&m, &sidecar_for(Delivery::WasmPlugin), Path::new("/tmp")).unwrap();
        let b = &cfg.bootstrap;
        let names: Vec<&str> = b["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "outbound|8080||workload.e2e.svc.cluster.local",
                "outbound|50051||meshtune-controller.meshtune-system.svc.cluster.local"
            ]
        );
        assert_eq!(
            b["static_resources"]["listeners"][0]["name"],
            "0.0.0.0_8080"
        );
        assert_eq!(b["node"]["metadata"]["WORKLOAD_NAME"], "client");
        assert_eq!(b["node"]["metadata"]["NAMESPACE"], "e2e");
        assert!(b["node"]["id"].as_str().unwrap().starts_with("sidecar~"));
    }

    #[test]
    fn unsupported_manifest_content_is_named() {
        let mut m = Manifests::project().unwrap();
        let s = sidecar_for(Delivery::EnvoyFilter);
        for d in m.docs.iter_mut().filter(|d| d["kind"] == "EnvoyFilter") {
            d["spec"]["configPatches"].as_array_mut().unwrap().push(
                json!({"applyTo": "BOOTSTRAP", "patch": {"operation": "MERGE", "value": {}}}),
            );
        }
        let err = sidecar(&m, &s, Path::new("/tmp")).unwrap_err().to_string();
        assert!(err.contains("BOOTSTRAP"), "{err}");
    }
}
