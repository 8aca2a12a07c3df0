//! The Istio-shaped variants of the filter-overhead benchmark: no filter, the no-op wasm
//! filter and the meshtune filter in the sidecar [`meshtune_test_support::istio`] builds from
//! `manifests/` (the WasmPlugin's filter delivered by ECDS and inserted before the router as
//! istiod does, Istio's outbound listener, route and cluster shapes, node metadata), with
//! several workers. The no-op filter replaces the module in the same WasmPlugin filter (no
//! configuration); "no filter" is the same sidecar with that filter removed.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use meshtune_test_support::envoy::{EnvoyProcess, Launch};
use meshtune_test_support::istio::{self, Delivery, Manifests, Service, Sidecar};

use crate::paths::Paths;

/// Namespace, workload and pod of the benchmark's client sidecars.
const NAMESPACE: &str = "bench";
/// The upstream service of the sidecars.
const WORKLOAD_HOST: &str = "workload.bench.svc.cluster.local";
const WORKLOAD_PORT: u16 = 8080;

/// A directory for the sidecars' ECDS files, removed on drop.
#[derive(Debug)]
pub struct BenchDir(PathBuf);

impl BenchDir {
    pub fn new() -> Result<Self> {
        Ok(Self(meshtune_test_support::process::run_dir(
            "bench-istio",
        )?))
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the Istio-shaped variants add to the three base ones.
#[derive(Debug, Clone, Default)]
pub struct Extra<'a> {
    /// Plugin configuration fields over the manifest's (a JSON object) of `meshtune B`.
    pub compare_config: Option<&'a str>,
    /// Another meshtune build as `meshtune B` (with `compare_config` when given).
    pub compare_wasm: Option<&'a std::path::Path>,
    /// No-op filter probes (`probe LIST`), configured as `{"probe": "LIST"}`.
    pub probes: &'a [String],
}

/// Starts the three Istio-shaped Envoys (`no filter`, `no-op wasm`, `meshtune`), each with
/// `concurrency` workers, pinned to `affinity` when given; with `extra.compare_config` (plugin
/// configuration fields over the manifest's, a JSON object) or `extra.compare_wasm` also
/// `meshtune B`, and one `probe LIST` per probe.
pub fn start_variants(
    paths: &Paths,
    dir: &BenchDir,
    workload: SocketAddr,
    controller: SocketAddr,
    concurrency: u32,
    affinity: Option<String>,
    extra: &Extra<'_>,
) -> Result<Vec<(String, EnvoyProcess)>> {
    let manifests = Manifests::project().context("manifests/")?;
    let controller = istio::controller_service(&manifests, controller)?;
    let launch = Launch {
        cpu_affinity: affinity,
        ..Launch::new(&paths.envoy).concurrency(concurrency)
    };
    let mut variants: Vec<(String, PathBuf, Option<serde_json::Value>, bool)> = vec![
        ("no filter".into(), paths.filter_wasm.clone(), None, true),
        (
            "no-op wasm".into(),
            paths.noop_wasm.clone(),
            Some(serde_json::json!({})),
            false,
        ),
        ("meshtune".into(), paths.filter_wasm.clone(), None, false),
    ];
    if extra.compare_config.is_some() || extra.compare_wasm.is_some() {
        let mut v = manifests.only("WasmPlugin")?["spec"]["pluginConfig"].clone();
        if v.is_null() {
            v = serde_json::json!({});
        }
        if let Some(o) = extra.compare_config {
            let o: serde_json::Value =
                serde_json::from_str(o).with_context(|| format!("--compare-config {o:?}"))?;
            let (Some(dst), Some(src)) = (v.as_object_mut(), o.as_object()) else {
                anyhow::bail!("--compare-config must be a JSON object, got {o}");
            };
            for (k, x) in src {
                dst.insert(k.clone(), x.clone());
            }
        }
        let wasm = extra
            .compare_wasm
            .map_or_else(|| paths.filter_wasm.clone(), std::path::Path::to_path_buf);
        variants.push(("meshtune B".into(), wasm, Some(v), false));
    }
    for spec in extra.probes {
        variants.push((
            format!("probe {spec}"),
            paths.noop_wasm.clone(),
            Some(serde_json::json!({ "probe": spec })),
            false,
        ));
    }
    let mut out = Vec::new();
    for (i, (name, wasm, plugin_config, strip)) in variants.into_iter().enumerate() {
        let sidecar = Sidecar {
            namespace: NAMESPACE.into(),
            workload: "client".into(),
            pod: format!("client-{i}"),
            delivery: Delivery::WasmPlugin,
            wasm,
            upstream: Service {
                host: WORKLOAD_HOST.into(),
                port: WORKLOAD_PORT,
                protocol: "http".into(),
                endpoint: workload,
            },
            controller: controller.clone(),
            plugin_config,
            route_timeout: std::time::Duration::from_secs(15),
        };
        let sub = dir.0.join(format!("v{i}"));
        std::fs::create_dir_all(&sub)?;
        let mut cfg = istio::sidecar(&manifests, &sidecar, &sub)?;
        if strip {
            let filters = cfg.bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
                ["filters"][0]["typed_config"]["http_filters"]
                .as_array_mut()
                .context("sidecar listener without http_filters")?;
            filters.retain(|f| f["name"] != cfg.filter_name.as_str());
            cfg.ecds = None;
        }
        cfg.write()?;
        let envoy = EnvoyProcess::start(&launch, &cfg.bootstrap)
            .with_context(|| format!("Istio-shaped sidecar ({name})"))?;
        out.push((name, envoy));
    }
    Ok(out)
}
