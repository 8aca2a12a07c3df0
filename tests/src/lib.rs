//! Cross-crate end-to-end tests with real Envoy, the real wasm filter, controller and workload.
//!
//! This library holds the shared harness: prerequisite discovery (skip with a message when
//! Envoy, the .wasm or the `meshtune` binary is missing, but fail when `CI` or
//! `MESHTUNE_E2E_REQUIRED` is set), test serialisation, and a [`Stack`] of real processes
//! (workload + controller + an Istio-shaped Envoy sidecar with the meshtune filter, built from
//! `manifests/` by [`meshtune_test_support::istio`]) cleaned up on drop.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use meshtune_test_support::envoy::{EnvoyProcess, Launch};
use meshtune_test_support::istio::{self, Delivery, Manifests, Service, Sidecar, SidecarConfig};
use meshtune_testbed::controller::{write_hints, Controller, ControllerConfig, Destination};
use meshtune_testbed::paths::Paths;
use meshtune_testbed::workload::{WorkloadConfig, WorkloadServer};

/// Namespace, workload and pod of the client sidecar.
pub const NAMESPACE: &str = "e2e";
pub const CLIENT_WORKLOAD: &str = "client";
pub const CLIENT_POD: &str = "client-0";
/// The upstream service the client calls.
pub const WORKLOAD_HOST: &str = "workload.e2e.svc.cluster.local";
pub const WORKLOAD_PORT: u16 = 8080;
/// Istio's outbound cluster of the upstream service (what the filter reports).
pub const WORKLOAD_CLUSTER: &str = "outbound|8080||workload.e2e.svc.cluster.local";

/// Is a CI-like "prerequisites are mandatory" flag set in this lookup?
pub use meshtune_test_support::prereq::required;

/// Decides from a lookup: Ok(paths) to run, Err(message) to skip; panics when prerequisites
/// are missing and [`required`].
pub fn prereqs_from(
    lookup: &dyn Fn(&str) -> Option<String>,
    need_noop: bool,
) -> Result<Paths, String> {
    let paths = Paths::resolve(lookup);
    let missing = paths.missing(need_noop);
    if missing.is_empty() {
        return Ok(paths);
    }
    let msg = format!(
        "end-to-end prerequisites missing:\n  {}\n(`cargo xtask test` installs and builds them)",
        missing.join("\n  ")
    );
    if required(lookup) {
        panic!("{msg}\nCI/MESHTUNE_E2E_REQUIRED is set, so this is a failure, not a skip");
    }
    Err(msg)
}

/// Prerequisites from the process environment; `None` = skip (message printed).
pub fn prereqs(need_noop: bool) -> Option<Paths> {
    match prereqs_from(&|k| std::env::var(k).ok(), need_noop) {
        Ok(p) => Some(p),
        Err(msg) => {
            eprintln!("SKIP: {msg}");
            None
        }
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs e2e tests one at a time (they measure latency and share 2 cores).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stack options.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub workload: WorkloadConfig,
    /// How the filter reaches the sidecar (from `manifests/`).
    pub delivery: Delivery,
    /// Replaces the manifest's plugin configuration (`None`: as in `manifests/`).
    pub plugin_config: Option<serde_json::Value>,
    /// Envoy worker threads (`--concurrency`).
    pub concurrency: u32,
    /// Start the controller with a hints file (initially no hints).
    pub hints: bool,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            workload: WorkloadConfig::default(),
            delivery: Delivery::WasmPlugin,
            plugin_config: None,
            concurrency: 2,
            hints: false,
        }
    }
}

/// The client sidecar's description for the Istio harness.
pub fn client_sidecar(
    paths: &Paths,
    delivery: Delivery,
    workload: std::net::SocketAddr,
    controller: std::net::SocketAddr,
    plugin_config: Option<serde_json::Value>,
) -> (Manifests, Sidecar) {
    let manifests = Manifests::project().expect("manifests/ readable");
    let controller = istio::controller_service(&manifests, controller)
        .expect("controller Service in manifests/");
    let sidecar = Sidecar {
        namespace: NAMESPACE.into(),
        workload: CLIENT_WORKLOAD.into(),
        pod: CLIENT_POD.into(),
        delivery,
        wasm: paths.filter_wasm.clone(),
        upstream: Service {
            host: WORKLOAD_HOST.into(),
            port: WORKLOAD_PORT,
            protocol: "http".into(),
            endpoint: workload,
        },
        controller,
        plugin_config,
        route_timeout: Duration::from_secs(15),
    };
    (manifests, sidecar)
}

/// Builds the sidecar's configuration (writing its ECDS file into `dir`) and starts Envoy
/// with `concurrency` workers; Envoy's wasm logs at info level.
pub fn start_sidecar(
    paths: &Paths,
    manifests: &Manifests,
    sidecar: &Sidecar,
    dir: &std::path::Path,
    concurrency: u32,
    start_timeout: Duration,
) -> (
    SidecarConfig,
    Result<EnvoyProcess, meshtune_test_support::envoy::EnvoyError>,
) {
    let cfg = istio::sidecar(manifests, sidecar, dir).expect("sidecar config from manifests/");
    cfg.write().expect("ECDS file written");
    let launch = Launch {
        log_level: "info".into(),
        start_timeout,
        ..Launch::new(&paths.envoy).concurrency(concurrency)
    };
    let envoy = EnvoyProcess::start(&launch, &cfg.bootstrap);
    (cfg, envoy)
}

/// Workload + controller + Envoy with the meshtune filter; everything stops on drop.
#[derive(Debug)]
pub struct Stack {
    // Drop order: Envoy first (it reports to the controller), then controller, workload.
    pub envoy: EnvoyProcess,
    pub controller: Controller,
    pub workload: WorkloadServer,
    pub hints_file: Option<PathBuf>,
    /// The sidecar as configured (bootstrap, ECDS resource).
    pub sidecar: SidecarConfig,
    pub concurrency: u32,
    _dir: TempDir,
}

/// A directory removed on drop (kept if the test panicked).
#[derive(Debug)]
pub struct TempDir(pub PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept at {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Stack {
    /// Starts everything and waits for Envoy's readiness.
    pub fn start(paths: &Paths, cfg: StackConfig) -> Stack {
        let dir = TempDir(meshtune_test_support::process::run_dir("e2e").expect("temp dir"));
        let workload = WorkloadServer::start(cfg.workload).expect("workload starts");
        let mut ccfg = ControllerConfig::new(&paths.meshtune_bin);
        let hints_file = cfg.hints.then(|| {
            let f = dir.0.join("hints.json");
            write_hints(&f, &serde_json::json!({"hints": []})).expect("hints file");
            f
        });
        ccfg.hints_file = hints_file.clone();
        let controller = Controller::start(ccfg).expect("controller starts");
        let (manifests, sidecar) = client_sidecar(
            paths,
            cfg.delivery,
            workload.addr(),
            controller.grpc(),
            cfg.plugin_config.clone(),
        );
        let (sidecar, envoy) = start_sidecar(
            paths,
            &manifests,
            &sidecar,
            &dir.0,
            cfg.concurrency,
            meshtune_test_support::envoy::DEFAULT_START_TIMEOUT,
        );
        let envoy = match envoy {
            Ok(e) => e,
            Err(e) => panic!("Istio-shaped sidecar with the meshtune filter did not start: {e}"),
        };
        Stack {
            envoy,
            controller,
            workload,
            hints_file,
            sidecar,
            concurrency: cfg.concurrency,
            _dir: dir,
        }
    }

    /// The filter's `wasmcustom.meshtune_<name>` counter.
    pub fn filter_stat(&self, name: &str) -> u64 {
        self.envoy
            .stat(&format!("wasmcustom.meshtune_{name}"))
            .unwrap_or(0)
    }

    /// Connections each worker accepted on the outbound listener (`worker_N` stats).
    pub fn connections_per_worker(&self) -> Vec<u64> {
        let stats = self.envoy.stats().unwrap_or_default();
        (0..self.concurrency)
            .map(|n| {
                stats
                    .iter()
                    .filter(|(k, _)| {
                        k.starts_with("listener.")
                            && k.ends_with(&format!(".worker_{n}.downstream_cx_total"))
                    })
                    .map(|(_, v)| *v)
                    .sum()
            })
            .collect()
    }

    /// Sets the hints file's content (atomically).
    pub fn set_hints(&self, hints: serde_json::Value) {
        let f = self.hints_file.as_ref().expect("stack started with hints");
        write_hints(f, &serde_json::json!({ "hints": hints })).expect("write hints");
    }

    /// The controller's view of the workload destination (None until reported).
    pub fn workload_destination(&self) -> Option<Destination> {
        self.controller
            .destinations()
            .ok()
            .and_then(|d| d.get(WORKLOAD_CLUSTER).cloned())
    }

    /// Waits until the controller's lifetime request count for the workload reaches `n`.
    pub fn wait_requests(&self, n: u64, timeout: Duration) -> Destination {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.workload_destination();
            if let Some(d) = &d {
                if d.lifetime.requests >= n {
                    return d.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "controller saw {:?} of {n} requests after {timeout:?}\ncontroller log:\n{}\nenvoy log tail:\n{}",
                    d.map(|d| d.lifetime.requests),
                    self.controller.log(),
                    self.envoy.log_tail(6000)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Diagnostics for assertion messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "controller log:\n{}\nenvoy log tail:\n{}",
            self.controller.log(),
            self.envoy.log_tail(6000)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn workload_cluster_is_istios_name() {
        assert_eq!(
            WORKLOAD_CLUSTER,
            istio::outbound_cluster(WORKLOAD_PORT, WORKLOAD_HOST)
        );
    }

    #[test]
    fn skip_or_fail_depends_on_ci() {
        let env: HashMap<&str, &str> = [("ENVOY_BIN", "/nonexistent/envoy")].into();
        let look = |k: &str| env.get(k).map(|s| s.to_string());
        let msg = prereqs_from(&look, false).unwrap_err();
        assert!(msg.contains("/nonexistent/envoy"), "{msg}");
        let ci: HashMap<&str, &str> = [("ENVOY_BIN", "/nonexistent/envoy"), ("CI", "true")].into();
        let look = |k: &str| ci.get(k).map(|s| s.to_string());
        let r = std::panic::catch_unwind(|| prereqs_from(&look, false));
        assert!(
            r.is_err(),
            "CI=true must turn a missing prerequisite into a failure"
        );
        assert!(!required(&|k| (k == "CI").then(|| "false".into())));
        assert!(required(
            &|k| (k == "MESHTUNE_E2E_REQUIRED").then(|| "1".into())
        ));
    }
}
