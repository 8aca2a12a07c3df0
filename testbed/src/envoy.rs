//! Envoy launcher: renders a bootstrap (listener → route → `workload` cluster; optionally a
//! wasm HTTP filter, the meshtune singleton reporter service and the `meshtune_controller`
//! cluster), starts Envoy with admin and listener on port 0 (real ports read back from the
//! admin), waits for `/ready`, reads `/stats` and `/clusters`, and stops it (also on drop).
//! Envoy's output goes to a log file in the run directory, kept when a test panics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::http;

/// Name of the upstream cluster the listener routes to.
pub const WORKLOAD_CLUSTER: &str = "workload";
/// Name of the gRPC cluster the filter reports to.
pub const CONTROLLER_CLUSTER: &str = "meshtune_controller";
/// The filter's VM id.
pub const VM_ID: &str = "meshtune";
/// Root id of the meshtune HTTP filter.
pub const FILTER_ROOT_ID: &str = "meshtune";
/// Root id of the singleton reporter service.
pub const REPORTER_ROOT_ID: &str = "meshtune_reporter";
/// How long to wait for Envoy to be ready.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default worker threads.
pub const DEFAULT_CONCURRENCY: u32 = 2;

/// Errors running Envoy.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    #[error("envoy: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("envoy: cannot start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("envoy exited during start-up ({status}); log {log_path}:\n{log}")]
    Exited {
        status: String,
        log_path: PathBuf,
        log: String,
    },
    #[error("envoy not ready after {0:?}; log {log_path}:\n{log}", log_path = .1.display(), log = .2)]
    NotReady(Duration, PathBuf, String),
    #[error("envoy admin: {0}")]
    Admin(#[from] http::HttpError),
    #[error("envoy admin: unexpected {what}: {detail}")]
    AdminFormat { what: &'static str, detail: String },
}

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
    /// Root id of a singleton `envoy.bootstrap.wasm` service with the same VM id and
    /// configuration (the meshtune reporter); None for no service.
    pub service_root_id: Option<String>,
}

impl WasmFilter {
    /// The no-op filter (benchmark baseline).
    pub fn noop(wasm: &Path) -> Self {
        Self {
            wasm: wasm.to_path_buf(),
            vm_id: "noop".into(),
            root_id: "noop".into(),
            configuration: String::new(),
            service_root_id: None,
        }
    }

    /// The no-op filter as a probe making the host calls `spec` names on every request.
    pub fn probe(wasm: &Path, spec: &str) -> Self {
        Self {
            configuration: spec.to_string(),
            ..Self::noop(wasm)
        }
    }

    /// The meshtune filter and its reporter service.
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
            service_root_id: Some(REPORTER_ROOT_ID.into()),
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
        clusters.push(json!({
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
        }));
    }
    let mut boot = json!({
        "node": {"id": "testbed", "cluster": "testbed"},
        "admin": {"address": socket("127.0.0.1:0".parse().expect("addr"))},
        "static_resources": {"listeners": [listener], "clusters": clusters}
    });
    if let Some(f) = &cfg.filter {
        if let Some(root) = &f.service_root_id {
            boot["bootstrap_extensions"] = json!([{
                "name": "envoy.bootstrap.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                    "singleton": true,
                    "config": f.plugin(root)
                }
            }]);
        }
    }
    boot
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory for one run's config and logs under the system temp dir.
pub fn run_dir(prefix: &str) -> std::io::Result<PathBuf> {
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "meshtune-{prefix}-{}-{n}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Last `max` bytes of a file (lossy).
pub fn tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

/// A running Envoy; killed on drop.
#[derive(Debug)]
pub struct Envoy {
    child: Option<Child>,
    pid: u32,
    admin: SocketAddr,
    listener: SocketAddr,
    dir: PathBuf,
    log_path: PathBuf,
}

impl Envoy {
    /// Checks a configuration with `--mode validate`; Err carries Envoy's output.
    pub fn validate(bin: &Path, cfg: &EnvoyConfig) -> Result<(), EnvoyError> {
        let dir = run_dir("envoy-validate").map_err(|source| EnvoyError::Write {
            path: std::env::temp_dir(),
            source,
        })?;
        let config_path = write_config(&dir, cfg)?;
        let out = Command::new(bin)
            .args(["--mode", "validate", "-c"])
            .arg(&config_path)
            .arg("--disable-hot-restart")
            .output()
            .map_err(|source| EnvoyError::Spawn {
                bin: bin.to_path_buf(),
                source,
            })?;
        if out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        } else {
            let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
            log.push_str(&String::from_utf8_lossy(&out.stderr));
            Err(EnvoyError::Exited {
                status: out.status.to_string(),
                log_path: config_path,
                log,
            })
        }
    }

    /// Starts Envoy and waits until it is ready.
    pub fn start(bin: &Path, cfg: &EnvoyConfig) -> Result<Self, EnvoyError> {
        Self::start_with_timeout(bin, cfg, DEFAULT_START_TIMEOUT)
    }

    /// Starts Envoy and waits up to `timeout` for readiness.
    pub fn start_with_timeout(
        bin: &Path,
        cfg: &EnvoyConfig,
        timeout: Duration,
    ) -> Result<Self, EnvoyError> {
        let dir = run_dir("envoy").map_err(|source| EnvoyError::Write {
            path: std::env::temp_dir(),
            source,
        })?;
        let config_path = write_config(&dir, cfg)?;
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin-address");
        let log = std::fs::File::create(&log_path).map_err(|source| EnvoyError::Write {
            path: log_path.clone(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| EnvoyError::Write {
            path: log_path.clone(),
            source,
        })?;
        // `taskset -c <cpus> envoy …` execs Envoy: the child's pid is Envoy's.
        let child = crate::procstat::pinned_command(bin, cfg.cpu_affinity.as_deref())
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--disable-hot-restart")
            .args(["--concurrency", &cfg.concurrency.to_string()])
            .args(["-l", &cfg.log_level])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|source| EnvoyError::Spawn {
                bin: bin.to_path_buf(),
                source,
            })?;
        let pid = child.id();
        let mut envoy = Envoy {
            child: Some(child),
            pid,
            admin: "127.0.0.1:0".parse().expect("addr"),
            listener: "127.0.0.1:0".parse().expect("addr"),
            dir,
            log_path,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = envoy.exited() {
                return Err(EnvoyError::Exited {
                    status,
                    log_path: envoy.log_path.clone(),
                    log: tail(&envoy.log_path, 8000),
                });
            }
            if Instant::now() > deadline {
                return Err(EnvoyError::NotReady(
                    timeout,
                    envoy.log_path.clone(),
                    tail(&envoy.log_path, 8000),
                ));
            }
            if envoy.admin.port() == 0 {
                if let Ok(text) = std::fs::read_to_string(&admin_path) {
                    if let Ok(a) = text.trim().parse() {
                        envoy.admin = a;
                    }
                }
            }
            if envoy.admin.port() != 0 {
                if let Ok(r) = http::get(envoy.admin, "/ready", &[]) {
                    if r.status == 200 {
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        envoy.listener = envoy.listener_addr("ingress")?;
        Ok(envoy)
    }

    fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    fn listener_addr(&self, name: &str) -> Result<SocketAddr, EnvoyError> {
        let r = http::get(self.admin, "/listeners?format=json", &[])?;
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| EnvoyError::AdminFormat {
            what: "/listeners",
            detail: e.to_string(),
        })?;
        let list = v["listener_statuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for l in list {
            if l["name"] == name {
                let sa = &l["local_address"]["socket_address"];
                let ip = sa["address"].as_str().unwrap_or("127.0.0.1");
                let port = sa["port_value"].as_u64().unwrap_or(0);
                return format!("{ip}:{port}")
                    .parse()
                    .map_err(|_| EnvoyError::AdminFormat {
                        what: "/listeners",
                        detail: l.to_string(),
                    });
            }
        }
        Err(EnvoyError::AdminFormat {
            what: "/listeners",
            detail: format!("no listener {name}: {}", r.text()),
        })
    }

    /// The HTTP listener (send traffic here).
    pub fn listener(&self) -> SocketAddr {
        self.listener
    }
    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Path of Envoy's log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        self.exited().is_none() && self.child.is_some()
    }

    /// All counters and gauges from `/stats` (histograms skipped).
    pub fn stats(&self) -> Result<HashMap<String, u64>, EnvoyError> {
        let r = http::get(self.admin, "/stats", &[])?;
        Ok(parse_stats(&r.text()))
    }

    /// One counter or gauge (0 if absent).
    pub fn stat(&self, name: &str) -> Result<u64, EnvoyError> {
        Ok(self.stats()?.get(name).copied().unwrap_or(0))
    }

    /// `/clusters` text.
    pub fn clusters(&self) -> Result<String, EnvoyError> {
        Ok(http::get(self.admin, "/clusters", &[])?.text())
    }

    /// utime + stime of Envoy (clock ticks).
    pub fn cpu_ticks(&self) -> Result<u64, crate::procstat::ProcError> {
        crate::procstat::cpu_ticks(self.pid)
    }

    /// CPU time of Envoy's threads in ns (`/proc/<pid>/task/*/schedstat`).
    pub fn cpu_ns(&self) -> Result<u64, crate::procstat::ProcError> {
        crate::procstat::cpu_ns(self.pid)
    }

    /// Stops Envoy: `/quitquitquit`, then kill if it has not exited within 2 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = http::request(
            self.admin,
            "POST",
            "/quitquitquit",
            &[],
            &[],
            Duration::from_millis(500),
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("envoy log kept at {}", self.log_path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn write_config(dir: &Path, cfg: &EnvoyConfig) -> Result<PathBuf, EnvoyError> {
    let path = dir.join("envoy.json");
    let text = serde_json::to_string_pretty(&render_bootstrap(cfg)).expect("serialisable");
    std::fs::write(&path, text).map_err(|source| EnvoyError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Parses Envoy's text `/stats` (`name: value` lines; histogram lines are skipped).
pub fn parse_stats(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stats_text() {
        let s = parse_stats(
            "cluster.workload.upstream_rq_200: 12\nhttp.ingress.rq_total: 3\ncluster.x.upstream_rq_time: P0(nan,1) P25(nan,2)\n",
        );
        assert_eq!(s["cluster.workload.upstream_rq_200"], 12);
        assert_eq!(s["http.ingress.rq_total"], 3);
        assert_eq!(s.len(), 2);
    }

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
        let svc = &b["bootstrap_extensions"][0]["typed_config"];
        assert_eq!(svc["singleton"], true);
        assert_eq!(svc["config"]["root_id"], "meshtune_reporter");
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
    /// (the e2e crate enforces presence under CI).
    #[test]
    fn real_envoy_proxies_to_workload() {
        let paths = crate::paths::Paths::from_env();
        if !paths.envoy.is_file() {
            eprintln!("SKIP: Envoy not found at {}", paths.envoy.display());
            return;
        }
        let srv = crate::workload::WorkloadServer::start(Default::default()).unwrap();
        let mut envoy = Envoy::start(&paths.envoy, &EnvoyConfig::new(srv.addr())).unwrap();
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
        assert!(envoy.cpu_ticks().is_ok());
        assert!(envoy.cpu_ns().unwrap() > 0);
        assert_eq!(srv.counters().requests, 6);
        envoy.stop();
        assert!(!envoy.is_running());
    }
}
