//! A simulator scenario (`meshtune-sim` TOML, the same file the trainer uses) run on real
//! processes: one workload server per host (the scenario's concurrency, service-time
//! distribution, base errors and timed faults), one Envoy per client with every host as an
//! endpoint of its `workload` cluster, and the load profile split evenly across the clients as
//! seeded Poisson arrivals, measured per window. What differs between runs is the [`Arm`]: a
//! static configuration, Envoy's adaptive concurrency filter, meshtune (filter + controller
//! enforcing through CDS/RDS files), or a static configuration observed by meshtune (filter
//! reporting, controller computing and recording features without acting).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use meshtune_core::dataset::{check_header, DatasetRow};
use meshtune_core::Knobs;
use meshtune_sim::scenario::{Failure, Scenario, ServiceDist};
use meshtune_sinks::envoy::{self as render, EnvoyCluster, DEFAULT_RETRY_ON};
use serde_json::{json, Value};

use crate::controller::{Controller, ControllerConfig};
use crate::demo::{file_xds_bootstrap, slice, Slice, ROUTE_CONFIG};
use crate::envoy::{render_bootstrap, EnvoyConfig, EnvoyProcess, PluginConfig, WORKLOAD_CLUSTER};
use crate::loadgen::{self, Arrivals, LoadConfig, LoadReport};
use crate::paths::Paths;
use crate::workload::{Behaviour, Fault, FaultKind, ServiceTime, WorkloadConfig, WorkloadServer};

/// Envoy worker threads per client (Istio's sidecar default is 2).
pub const CLIENT_CONCURRENCY: u32 = 2;
/// Time after the last window for late responses and the last report.
pub const DRAIN: Duration = Duration::from_millis(1500);

/// What configures the client Envoys.
#[derive(Debug, Clone)]
pub enum Arm {
    /// The same knobs for the whole run, rendered into each client's cluster and route as the
    /// controller's Envoy sink renders them (no filter).
    Static { name: String, knobs: Knobs },
    /// Istio defaults plus Envoy's adaptive concurrency filter (gradient controller) in front
    /// of the router.
    AdaptiveConcurrency,
    /// The meshtune filter in every client, the controller enforcing through CDS/RDS files
    /// with its shipped guardrails; `model` None = the embedded default model.
    Meshtune { model: Option<PathBuf> },
    /// The static configuration of [`Arm::Static`] (the same cluster and route:
    /// [`observe_bootstrap`]) with the meshtune filter in every client reporting to a
    /// controller in `--mode observe` that decides every second on its last `window_secs`
    /// and records its features (`--record`); nothing is pushed and no hint is served. The
    /// recorded rows come back in [`RunResult::observation`].
    Observe {
        name: String,
        knobs: Knobs,
        window_secs: u32,
    },
}

impl Arm {
    /// Name for tables.
    pub fn name(&self) -> String {
        match self {
            Arm::Static { name, .. } => name.clone(),
            Arm::AdaptiveConcurrency => "adaptive concurrency".into(),
            Arm::Meshtune { model: None } => "meshtune".into(),
            Arm::Meshtune { model: Some(p) } => format!(
                "meshtune ({})",
                p.file_name().unwrap_or_default().to_string_lossy()
            ),
            Arm::Observe { name, .. } => format!("{name} (observed)"),
        }
    }
}

/// Parses an arm name: `istio-defaults`, `hand-tuned`, `adaptive`, `meshtune` (with `model`).
pub fn parse_arm(name: &str, model: Option<PathBuf>) -> Result<Arm> {
    Ok(match name {
        "istio-defaults" => Arm::Static {
            name: "istio defaults".into(),
            knobs: Knobs::istio_defaults(),
        },
        "hand-tuned" => Arm::Static {
            name: "hand-tuned".into(),
            knobs: meshtune_sim::baselines::hand_tuned().knobs,
        },
        "adaptive" => Arm::AdaptiveConcurrency,
        "meshtune" => Arm::Meshtune { model },
        other => bail!("arm `{other}`: expected istio-defaults, hand-tuned, adaptive or meshtune"),
    })
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub arm: String,
    /// Client-side figures per scenario window (all clients together).
    pub windows: Vec<Slice>,
    /// All windows together.
    pub total: Slice,
    /// p50 of every response, ms.
    pub p50_ms: f64,
    /// Requests sent (offered).
    pub offered: u64,
    /// Requests Envoy refused locally for a circuit breaker (`upstream_rq_pending_overflow`).
    pub overflow: u64,
    /// Upstream attempts per request sent upstream, per window (1 = no retries).
    pub attempts: Vec<f64>,
    /// Hosts ejected by outlier detection at the end of each window, summed over the clients.
    pub ejected: Vec<u64>,
    /// Controller pushes (meshtune arm).
    pub pushes: usize,
    /// What the observing controller computed ([`Arm::Observe`]; `None` for other arms).
    pub observation: Option<Observation>,
    /// The controller's log (its decisions and pushes); empty for arms without a controller.
    pub controller_log: String,
}

/// The features the controller computed during an [`Arm::Observe`] run.
#[derive(Debug, Clone)]
pub struct Observation {
    /// When the load started (unix ms): window `i` of the scenario is `t0 + i·window_s`.
    pub t0_unix_ms: u64,
    /// The controller's sliding window (`--window-secs`).
    pub window_secs: u32,
    /// The recorded dataset rows (`--record`), in order: `window` is the decision's unix
    /// second.
    pub rows: Vec<DatasetRow>,
    /// Milliseconds into its second of the last decision (`/api/destinations`
    /// `last_decision.unix_ms`): the decision loop's phase, which stays put (1 s interval).
    pub decision_phase_ms: Option<u64>,
    /// Reports the controller accepted, and the filters' reports lost on the way
    /// (`meshtune_filter_dropped_reports_total`: a report still outstanding at the next flush
    /// or slower than `report_timeout_ms` is dropped, and its second of traffic with it).
    pub reports_accepted: u64,
    pub reports_dropped: Option<u64>,
}

impl RunResult {
    /// 2xx within the SLO over offered requests.
    pub fn slo_goodput_fraction(&self) -> f64 {
        self.total.good as f64 / self.offered.max(1) as f64
    }
    /// Overflow over offered requests.
    pub fn overflow_fraction(&self) -> f64 {
        self.overflow as f64 / self.offered.max(1) as f64
    }
    /// The largest per-window attempts ratio.
    pub fn max_attempts(&self) -> f64 {
        self.attempts.iter().copied().fold(1.0, f64::max)
    }
}

/// The workload server configuration of `host` of the scenario.
pub fn host_config(sc: &Scenario, host: u32) -> Result<(WorkloadConfig, Behaviour)> {
    let h = &sc.hosts;
    if h.queue_limit.is_some() {
        bail!(
            "{}: hosts.queue_limit is not supported on real Envoy yet (the workload's queue is unbounded)",
            sc.origin
        );
    }
    let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
    let service_time = match h.service {
        ServiceDist::Constant { ms: m } => ServiceTime::Constant(ms(m.0)),
        ServiceDist::Exponential { mean_ms } => ServiceTime::Exponential {
            mean: ms(mean_ms.0),
        },
        // The scenario gives the mean; the workload takes the median (mean = median·e^{σ²/2}).
        ServiceDist::Lognormal { mean_ms, sigma } => ServiceTime::LogNormal {
            median: ms(mean_ms.0 * (-sigma.0 * sigma.0 / 2.0).exp()),
            sigma: sigma.0,
        },
        ServiceDist::Bimodal {
            fast_ms,
            slow_ms,
            slow_fraction,
        } => ServiceTime::Bimodal {
            fast: ms(fast_ms.0),
            slow: ms(slow_ms.0),
            slow_fraction: slow_fraction.0,
        },
    };
    let faults = h
        .failures
        .iter()
        .filter(|f| f.host() == host)
        .map(|f| {
            let (from, until) = f.interval_s();
            Fault {
                from: Duration::from_secs_f64(from),
                until: until.is_finite().then(|| Duration::from_secs_f64(until)),
                kind: match *f {
                    Failure::Slow { factor, .. } => FaultKind::Slow { factor: factor.0 },
                    Failure::Errors { error_rate, .. } => FaultKind::Errors { rate: error_rate.0 },
                    Failure::Down { .. } => FaultKind::Down,
                },
            }
        })
        .collect();
    Ok((
        WorkloadConfig {
            capacity: h.concurrency.0 as usize,
            service_time,
            fail_every_n: None,
        },
        Behaviour {
            error_rate: h.error_rate.0,
            faults,
            // The simulator's host does not notice a client's reset unless told to.
            finish_abandoned: !h.abandon_queued,
        },
    ))
}

/// Per-client offered rate of each window: the profile at the window's middle, split evenly.
pub fn window_rates(sc: &Scenario) -> Vec<f64> {
    let w = sc.window_s.0;
    let episode = sc.episode_s();
    (0..sc.windows.0)
        .map(|i| sc.load.rate((f64::from(i) + 0.5) * w, episode) / f64::from(sc.clients.0))
        .collect()
}

/// A static client bootstrap: the testbed bootstrap with the `workload` cluster rendered from
/// `knobs` over `endpoints` and the route's timeout and retries from `knobs`.
pub fn static_bootstrap(endpoints: &[SocketAddr], knobs: &Knobs) -> Result<Value> {
    let mut b = render_bootstrap(&client_base(endpoints[0]));
    apply_knobs(&mut b, endpoints, knobs)?;
    Ok(b)
}

/// [`static_bootstrap`] plus the meshtune filter in front of the router and the
/// `meshtune_controller` cluster it reports to (at `controller`): the `workload` cluster and
/// the route are the static ones, so the filter observes without changing routing or limits.
pub fn observe_bootstrap(
    endpoints: &[SocketAddr],
    knobs: &Knobs,
    controller: SocketAddr,
    wasm: &Path,
    plugin: &PluginConfig,
) -> Result<Value> {
    let mut m = EnvoyConfig::with_meshtune(endpoints[0], controller, wasm, plugin);
    m.concurrency = CLIENT_CONCURRENCY;
    m.log_level = "warn".into();
    let mut b = render_bootstrap(&m);
    apply_knobs(&mut b, endpoints, knobs)?;
    Ok(b)
}

/// Replaces the bootstrap's `workload` cluster (the first) with `knobs` rendered over
/// `endpoints` and its route action with `knobs`' timeout and retries.
fn apply_knobs(b: &mut Value, endpoints: &[SocketAddr], knobs: &Knobs) -> Result<()> {
    let eps = endpoints.iter().map(|a| a.to_string()).collect();
    let mut cluster = render::cluster(&EnvoyCluster::new(WORKLOAD_CLUSTER, eps), knobs)?;
    if let Some(o) = cluster.as_object_mut() {
        o.remove("@type");
    }
    b["static_resources"]["clusters"][0] = cluster;
    b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["routes"][0]["route"] =
        render::route_action(WORKLOAD_CLUSTER, knobs, DEFAULT_RETRY_ON);
    Ok(())
}

/// Envoy's adaptive concurrency filter with the gradient controller: p90 latency samples,
/// limit recalculated every 100 ms, minRTT measured every 60 s from 50 requests (the values
/// of Envoy's documentation example).
pub fn adaptive_concurrency_filter() -> Value {
    json!({
        "name": "envoy.filters.http.adaptive_concurrency",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency",
            "gradient_controller_config": {
                "sample_aggregate_percentile": {"value": 90},
                "concurrency_limit_params": {"concurrency_update_interval": "0.1s"},
                "min_rtt_calc_params": {"interval": "60s", "request_count": 50}
            }
        }
    })
}

/// Inserts `filter` before the router of the bootstrap's listener.
fn insert_http_filter(b: &mut Value, filter: Value) {
    if let Some(f) = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"]
        .as_array_mut()
    {
        let at = f.len().saturating_sub(1);
        f.insert(at, filter);
    }
}

fn client_base(upstream: SocketAddr) -> EnvoyConfig {
    let mut c = EnvoyConfig::new(upstream);
    c.concurrency = CLIENT_CONCURRENCY;
    c.log_level = "warn".into();
    c
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The outlier detector's gauge of hosts ejected now.
const EJECTIONS_ACTIVE: &str = "outlier_detection.ejections_active";

/// Cluster counters (and the ejection gauge) of the `workload` cluster summed over the clients.
fn cluster_counters(envoys: &[EnvoyProcess]) -> HashMap<&'static str, u64> {
    let mut out = HashMap::new();
    for e in envoys {
        let st = e.stats().unwrap_or_default();
        for k in [
            "upstream_rq_total",
            "upstream_rq_retry",
            "upstream_rq_pending_overflow",
            EJECTIONS_ACTIVE,
        ] {
            *out.entry(k).or_default() += st
                .get(&format!("cluster.{WORKLOAD_CLUSTER}.{k}"))
                .copied()
                .unwrap_or(0);
        }
    }
    out
}

/// Attempts per request sent upstream from two counter snapshots (1 when nothing went up).
pub fn attempts_ratio(before: &HashMap<&str, u64>, after: &HashMap<&str, u64>) -> f64 {
    let d = |k: &str| {
        after
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(k).copied().unwrap_or(0))
    };
    crate::envoy::attempts_per_request(d("upstream_rq_total"), d("upstream_rq_retry"))
        .unwrap_or(1.0)
}

/// Runs `sc` once with `arm`; `progress` is called after every window with its index.
pub fn run(
    paths: &Paths,
    sc: &Scenario,
    arm: &Arm,
    seed: u64,
    mut progress: impl FnMut(u32),
) -> Result<RunResult> {
    let dir = meshtune_test_support::process::run_dir("scenario")?;
    let mut hosts = Vec::new();
    for h in 0..sc.hosts.count.0 {
        let (cfg, behaviour) = host_config(sc, h)?;
        hosts.push(WorkloadServer::start_with(cfg, behaviour)?);
    }
    let endpoints: Vec<SocketAddr> = hosts.iter().map(|h| h.addr()).collect();
    let mut controller = None;
    let mut envoys = Vec::new();
    for c in 0..sc.clients.0 {
        let base = client_base(endpoints[0]);
        let envoy = match arm {
            Arm::Static { knobs, .. } => EnvoyProcess::start(
                &base.launch(&paths.envoy),
                &static_bootstrap(&endpoints, knobs)?,
            )?,
            Arm::AdaptiveConcurrency => {
                let mut b = static_bootstrap(&endpoints, &Knobs::istio_defaults())?;
                insert_http_filter(&mut b, adaptive_concurrency_filter());
                EnvoyProcess::start(&base.launch(&paths.envoy), &b)?
            }
            Arm::Observe {
                knobs, window_secs, ..
            } => {
                if controller.is_none() {
                    controller = Some(start_observer(
                        paths,
                        sc,
                        &dir.join(RECORD_FILE),
                        *window_secs,
                    )?);
                }
                let ctl: &Controller = controller.as_ref().expect("started above");
                let plugin = PluginConfig {
                    flush_interval_ms: 1000,
                    pod: format!("client-{c}"),
                    ..PluginConfig::default()
                };
                let base = client_base(endpoints[0]);
                EnvoyProcess::start(
                    &base.launch(&paths.envoy),
                    &observe_bootstrap(&endpoints, knobs, ctl.grpc(), &paths.filter_wasm, &plugin)?,
                )?
            }
            Arm::Meshtune { model } => {
                if controller.is_none() {
                    controller = Some(start_controller(
                        paths,
                        sc,
                        &dir,
                        &endpoints,
                        model.as_deref(),
                    )?);
                }
                let ctl: &Controller = controller.as_ref().expect("started above");
                let plugin = PluginConfig {
                    flush_interval_ms: 1000,
                    pod: format!("client-{c}"),
                    ..PluginConfig::default()
                };
                let mut m = EnvoyConfig::with_meshtune(
                    endpoints[0],
                    ctl.grpc(),
                    &paths.filter_wasm,
                    &plugin,
                );
                m.concurrency = CLIENT_CONCURRENCY;
                m.log_level = "warn".into();
                EnvoyProcess::start(
                    &m.launch(&paths.envoy),
                    &file_xds_bootstrap(
                        &m,
                        &dir.join("cds.json"),
                        &dir.join("rds.json"),
                        ROUTE_CONFIG,
                    ),
                )?
            }
        };
        envoys.push(envoy);
    }

    let rates = window_rates(sc);
    let window = Duration::from_secs_f64(sc.window_s.0);
    let clients = sc.clients.0;
    for h in &hosts {
        h.reset_epoch();
    }
    let t0 = Instant::now();
    let t0_unix = unix_ms();
    let mut handles: Vec<Vec<std::thread::JoinHandle<LoadReport>>> = Vec::new();
    let mut attempts = Vec::new();
    let mut ejected = Vec::new();
    let mut pushes = std::collections::BTreeSet::new();
    let mut last = cluster_counters(&envoys);
    for (w, rate) in rates.iter().enumerate() {
        let start = window * w as u32;
        while t0.elapsed() < start {
            std::thread::sleep(Duration::from_millis(5));
        }
        handles.push(
            (0..clients)
                .map(|c| {
                    let mut cfg =
                        LoadConfig::constant(envoys[c as usize].listener(), *rate, window);
                    cfg.arrivals = Arrivals::Poisson {
                        seed: seed ^ ((w as u64) << 16) ^ u64::from(c),
                    };
                    loadgen::spawn(cfg, None)
                })
                .collect(),
        );
        if w > 0 {
            let now = cluster_counters(&envoys);
            attempts.push(attempts_ratio(&last, &now));
            ejected.push(now.get(EJECTIONS_ACTIVE).copied().unwrap_or(0));
            last = now;
            if let Some(ctl) = &controller {
                pushes.extend(push_times(ctl));
            }
            progress(w as u32 - 1);
        }
    }
    while t0.elapsed() < window * rates.len() as u32 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let now = cluster_counters(&envoys);
    attempts.push(attempts_ratio(&last, &now));
    ejected.push(now.get(EJECTIONS_ACTIVE).copied().unwrap_or(0));
    progress(rates.len() as u32 - 1);
    let mut windows = Vec::new();
    let mut all = Vec::new();
    for hs in handles {
        let reports = hs
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("load generator panicked"))
            })
            .collect::<Result<Vec<_>>>()?;
        windows.push(slice(&reports, window.as_secs_f64(), sc.slo_ms.0 as u64));
        all.extend(reports);
    }
    std::thread::sleep(DRAIN);
    let end = cluster_counters(&envoys);
    if let Some(ctl) = &controller {
        pushes.extend(push_times(ctl));
    }
    let secs = window.as_secs_f64() * windows.len() as f64;
    let total = slice(&all, secs, sc.slo_ms.0 as u64);
    let mut lat =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for r in &all {
        let _ = lat.add(&r.latency);
    }
    let p50_ms = if lat.is_empty() {
        0.0
    } else {
        lat.value_at_quantile(0.5) as f64 / 1000.0
    };
    drop(envoys);
    let observation = match (arm, &controller) {
        (Arm::Observe { window_secs, .. }, Some(ctl)) => Some(Observation {
            t0_unix_ms: t0_unix,
            window_secs: *window_secs,
            rows: read_record(&dir.join(RECORD_FILE))?,
            decision_phase_ms: decision_phase_ms(ctl),
            reports_accepted: ctl.destinations().map(|d| d.reports_accepted).unwrap_or(0),
            reports_dropped: ctl.admin_get("/metrics").ok().and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("meshtune_filter_dropped_reports_total "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .map(|v| v as u64)
            }),
        }),
        _ => None,
    };
    let controller_log = controller.as_ref().map(Controller::log).unwrap_or_default();
    drop(controller);
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RunResult {
        arm: arm.name(),
        offered: total.sent,
        windows,
        total,
        p50_ms,
        overflow: end
            .get("upstream_rq_pending_overflow")
            .copied()
            .unwrap_or(0),
        attempts,
        ejected,
        pushes: pushes.iter().filter(|p| **p >= t0_unix).count(),
        observation,
        controller_log,
    })
}

/// The observing controller's record file in the run directory.
const RECORD_FILE: &str = "record.csv";

/// The controller of [`Arm::Observe`]: observe mode (log sink only, no hints), deciding every
/// second on the last `window_secs` and recording every decided window to `record`.
fn start_observer(
    paths: &Paths,
    sc: &Scenario,
    record: &Path,
    window_secs: u32,
) -> Result<Controller> {
    let mut ccfg = ControllerConfig::new(&paths.meshtune_bin);
    ccfg.window_secs = Some(window_secs);
    ccfg.extra_args = [
        "--mode",
        "observe",
        "--record",
        &record.to_string_lossy(),
        "--decision-interval-secs",
        "1",
        "--min-requests",
        "1",
        "--slo-ms",
        &format!("{}", sc.slo_ms.0.round() as u64),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Ok(Controller::start(ccfg)?)
}

/// The dataset rows of a record file (a clear error naming it and the line).
pub fn read_record(path: &Path) -> Result<Vec<DatasetRow>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("record file {}", path.display()))?;
    let h: Vec<String> = r.headers()?.iter().map(String::from).collect();
    check_header(&h).with_context(|| format!("record file {}", path.display()))?;
    r.records()
        .enumerate()
        .map(|(i, rec)| {
            let rec =
                rec.with_context(|| format!("record file {} row {}", path.display(), i + 1))?;
            DatasetRow::from_record(&rec.iter().collect::<Vec<_>>())
                .with_context(|| format!("record file {} row {}", path.display(), i + 1))
        })
        .collect()
}

/// The decision loop's phase (ms into the second) from the last decision the controller shows.
fn decision_phase_ms(ctl: &Controller) -> Option<u64> {
    let d: Value = serde_json::from_str(&ctl.admin_get("/api/destinations").ok()?).ok()?;
    d["destinations"]
        .as_array()?
        .iter()
        .filter_map(|x| x["last_decision"]["unix_ms"].as_u64())
        .max()
        .map(|ms| ms % 1000)
}

fn start_controller(
    paths: &Paths,
    sc: &Scenario,
    dir: &Path,
    endpoints: &[SocketAddr],
    model: Option<&Path>,
) -> Result<Controller> {
    let cds = dir.join("cds.json");
    let rds = dir.join("rds.json");
    let eps: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
    let mut ccfg = ControllerConfig::new(&paths.meshtune_bin);
    let mut args: Vec<String> = [
        "--mode",
        "enforce",
        "--sink",
        "envoy-file",
        // The log sink's diffs land in the controller's log: what each push changed.
        "--sink",
        "log",
        "--envoy-cds",
        &cds.to_string_lossy(),
        "--envoy-rds",
        &rds.to_string_lossy(),
        "--envoy-route-config",
        ROUTE_CONFIG,
        "--envoy-destination",
        &format!("{WORKLOAD_CLUSTER}={}", eps.join(",")),
        "--decision-interval-secs",
        "1",
        "--min-requests",
        "10",
        "--slo-ms",
        &format!("{}", sc.slo_ms.0.round() as u64),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(m) = model {
        args.extend(["--model".to_string(), m.to_string_lossy().into_owned()]);
    }
    ccfg.extra_args = args;
    let controller = Controller::start(ccfg)?;
    if !cds.is_file() || !rds.is_file() {
        bail!(
            "controller did not write {} / {}; log:\n{}",
            cds.display(),
            rds.display(),
            controller.log()
        );
    }
    Ok(controller)
}

/// Push times (unix ms) visible in `/api/destinations` now (the last decision of each
/// destination when it pushed).
pub(crate) fn push_times(ctl: &Controller) -> Vec<u64> {
    let Ok(text) = ctl.admin_get("/api/destinations") else {
        return Vec::new();
    };
    let Ok(d) = serde_json::from_str::<Value>(&text) else {
        return Vec::new();
    };
    d["destinations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["last_decision"]["outcome"] == "pushed")
                .filter_map(|x| x["last_decision"]["unix_ms"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// Loads one scenario file (a clear error naming it).
pub fn load(path: &Path) -> Result<Scenario> {
    Scenario::from_file(path).with_context(|| format!("scenario {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_core::Knob;

    /// The observe arm's Envoy is the static arm's plus the filter and its controller
    /// cluster: with those two removed the bootstraps are identical, so the workload cluster
    /// (circuit breakers, load balancing, outlier detection), the route (timeout, retries)
    /// and the listener are what the simulator runs.
    #[test]
    fn observe_bootstrap_is_the_static_one_plus_the_filter() {
        let eps: Vec<SocketAddr> = vec![
            "127.0.0.1:7001".parse().unwrap(),
            "127.0.0.1:7002".parse().unwrap(),
        ];
        let mut knobs = Knobs::istio_defaults();
        knobs.set(Knob::Http2MaxRequests, 12.0);
        knobs.set(Knob::Http1MaxPendingRequests, 3.0);
        knobs.set(Knob::RouteTimeoutMs, 250.0);
        for k in [Knobs::istio_defaults(), knobs] {
            let st = static_bootstrap(&eps, &k).unwrap();
            let mut ob = observe_bootstrap(
                &eps,
                &k,
                "127.0.0.1:9000".parse().unwrap(),
                Path::new("/x/meshtune_filter.wasm"),
                &PluginConfig::default(),
            )
            .unwrap();
            let clusters = ob["static_resources"]["clusters"].as_array_mut().unwrap();
            assert_eq!(clusters.len(), 2);
            assert_eq!(clusters[1]["name"], crate::envoy::CONTROLLER_CLUSTER);
            assert_eq!(clusters[0], st["static_resources"]["clusters"][0]);
            clusters.pop();
            let filters = ob["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["http_filters"]
                .as_array_mut()
                .unwrap();
            assert_eq!(filters.len(), 2);
            assert_eq!(filters[0]["name"], "envoy.filters.http.wasm");
            filters.remove(0);
            assert_eq!(ob, st, "only the filter and the controller cluster differ");
        }
        // The knobs reach the cluster: not Istio's unlimited defaults.
        let st = static_bootstrap(&eps, &knobs).unwrap();
        let t = &st["static_resources"]["clusters"][0]["circuit_breakers"]["thresholds"][0];
        assert_eq!(t["max_requests"], 12, "{t}");
        assert_eq!(t["max_pending_requests"], 3, "{t}");
    }
}
