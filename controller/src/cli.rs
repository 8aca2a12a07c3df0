//! `meshtune controller` flags ([`ControllerArgs`]) and turning them into a running closed
//! loop ([`run`]): model, guardrails, sinks, recorder, decision loop, servers.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use meshtune_policy::guardrails::{self, Mode};
use tokio::net::TcpListener;

use crate::admin::{FilterModule, FilterModuleError, DEFAULT_FILTER_WASM};
use crate::cluster_knobs::ClusterKnobs;
use crate::config::{self, Config, TlsPem};
use crate::decision::{self, Naming};
use crate::gate::StaticGate;
use crate::identity::AuthMode;
use crate::leader::{self, Elector, Leadership, LeaseConfig};
use crate::namespaces::{DataPlane, NamespaceConfig, NamespaceController};
use crate::policies::PolicyStore;
use crate::policy_loop::{
    self, build_sinks, parse_configmap, EnvoyFileArgs, LoopConfig, LoopError, PolicyLoop, SinkKind,
    Sources,
};
use crate::prometheus::{self, PromSource};
use crate::recorder::Recorder;
use crate::server::Controller;
use meshtune_policy::source::{self, ModelSource};
use meshtune_sinks::istio_foreign::Lookup;

/// Flags of `meshtune controller`.
#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// gRPC listen address (meshtune.v1.FeatureService).
    #[arg(long, default_value = config::DEFAULT_GRPC_LISTEN)]
    pub grpc_listen: String,
    /// Admin HTTP listen address (/healthz, /readyz, /metrics, /api/destinations, /api/model,
    /// /api/filter, /filter.wasm).
    #[arg(long, default_value = config::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// Filter module served to sidecars at /filter.wasm (sha256 at /api/filter); must be a
    /// readable .wasm file. Default: /usr/local/share/meshtune/filter.wasm, where the
    /// controller image puts it; without this flag a missing default file means no module
    /// (both paths answer 404).
    #[arg(long)]
    pub filter_wasm: Option<PathBuf>,
    /// JSON hints file, reloaded when it changes (replaces the policy's hints).
    #[arg(long)]
    pub hints_file: Option<PathBuf>,
    /// Server certificate chain (PEM) of the gRPC port. With --tls-key and --client-ca the port
    /// serves TLS and requires a client certificate signed by --client-ca; the reporter's
    /// identity is its spiffe:// URI SAN (spiffe://TD/ns/NS/sa/SA), and a report claiming
    /// another namespace than NS is refused (PERMISSION_DENIED).
    #[arg(long, requires_all = ["tls_key", "client_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires_all = ["tls_cert", "client_ca"])]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that reporters' client certificates must chain to.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub client_ca: Option<PathBuf>,
    /// Take the reporter's identity from the x-forwarded-client-cert header (the URI of its
    /// last element). ONLY behind the controller's own sidecar with STRICT mTLS: whoever can
    /// reach the gRPC port directly can write that header.
    #[arg(long, conflicts_with = "tls_cert")]
    pub trust_xfcc: bool,
    /// Accept reports without any authentication (reporter namespace self-asserted; XFCC
    /// ignored). For the local testbed and demo only. One of --tls-cert/--tls-key/--client-ca,
    /// --trust-xfcc or this flag is required.
    #[arg(long, conflicts_with_all = ["tls_cert", "trust_xfcc"])]
    pub insecure_no_auth: bool,
    /// Sliding window length in seconds; at least 2 (filters report once a second, so a 1 s
    /// window is empty about half the time and no destination reaches --min-requests).
    #[arg(long, default_value_t = config::DEFAULT_WINDOW_SECS,
          value_parser = clap::value_parser!(u64).range(config::MIN_WINDOW_SECS..))]
    pub window_secs: u64,
    /// Largest accepted encoded report, bytes (default: the largest legitimate report of
    /// 256 upstream windows; the gRPC decode limit is that size whatever this says).
    #[arg(long, default_value_t = config::DEFAULT_MAX_REPORT_BYTES)]
    pub max_report_bytes: usize,
    /// Largest number of tracked destinations (a new one beyond it evicts the least recently
    /// reported, names seen only once first).
    #[arg(long, default_value_t = config::DEFAULT_MAX_DESTINATIONS)]
    pub max_destinations: usize,
    /// Memory budget of the aggregates in MiB (windows, histograms, names of all
    /// destinations); over it the least recently reported are evicted, one-time names first.
    #[arg(long, default_value_t = config::DEFAULT_MAX_AGGREGATE_BYTES >> 20)]
    pub max_aggregate_mib: usize,
    /// Sustained reports per second accepted from one reporter (0: no limit); the excess is
    /// refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = crate::ingest::DEFAULT_REPORTS_PER_SEC)]
    pub max_reports_per_sec: f64,
    /// Reports one reporter may send at once above --max-reports-per-sec.
    #[arg(long, default_value_t = crate::ingest::DEFAULT_REPORT_BURST)]
    pub report_burst: f64,
    /// Reports received, decoded and handled at once across all connections.
    #[arg(long, default_value_t = crate::ingest::DEFAULT_MAX_CONCURRENT_REPORTS)]
    pub max_concurrent_reports: usize,
    /// Concurrent HTTP/2 streams per gRPC connection.
    #[arg(long, default_value_t = crate::ingest::DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    pub max_streams_per_connection: u32,
    /// Time limit of one gRPC request, seconds.
    #[arg(long, default_value_t = crate::ingest::DEFAULT_REQUEST_TIMEOUT.as_secs_f64())]
    pub request_timeout_secs: f64,

    /// Seconds between decision cycles (fractions allowed).
    #[arg(long, default_value_t = policy_loop::DEFAULT_DECISION_INTERVAL.as_secs_f64())]
    pub decision_interval_secs: f64,
    /// Minimum requests in a destination's window before the policy decides for it.
    #[arg(long, default_value_t = decision::DEFAULT_MIN_REQUESTS)]
    pub min_requests: u64,
    /// Latency SLO in ms (goodput, reward, rollback objective).
    #[arg(long, default_value_t = decision::DEFAULT_SLO_MS)]
    pub slo_ms: f64,
    /// observe (recommend: log diff only) or enforce (push to the sinks, serve hints).
    /// Overrides the guardrails file's `mode`; default observe. With `--sink istio` this is
    /// the mode of namespaces without a MeshtunePolicy (a policy's `spec.mode` wins).
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Guardrails policy file (TOML, or YAML for .yaml/.yml): bounds per namespace,
    /// hysteresis, step limits, dwell, rollback.
    #[arg(long)]
    pub guardrails: Option<PathBuf>,
    /// Overrides the guardrails' minimum seconds between two pushes to a destination.
    #[arg(long)]
    pub min_dwell_secs: Option<f64>,
    /// Overrides the guardrails' minimum seconds between pushes while a destination misses its
    /// SLO (default 10).
    #[arg(long)]
    pub urgent_dwell_secs: Option<f64>,
    /// Overrides the guardrails' largest ×/÷ step of log-scale knobs per push (> 1).
    #[arg(long)]
    pub max_step_factor: Option<f64>,
    /// Policy model file, watched and hot-swapped (a bad candidate is refused, the old kept).
    /// Default: the embedded models/default.onnx.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Poll interval of --model, ms.
    #[arg(long, default_value_t = policy_loop::DEFAULT_MODEL_POLL.as_millis() as u64)]
    pub model_poll_ms: u64,
    /// Watch ConfigMap NAMESPACE/NAME (binaryData model.onnx) for models.
    #[arg(long, value_parser = parse_configmap)]
    pub model_configmap: Option<(String, String)>,
    /// Sinks for enforce-mode decisions (repeatable).
    #[arg(long = "sink", value_enum, default_values_t = vec![SinkKind::Log])]
    pub sinks: Vec<SinkKind>,
    /// CDS file written by --sink envoy-file (.json/.yaml).
    #[arg(long)]
    pub envoy_cds: Option<PathBuf>,
    /// RDS file written by --sink envoy-file (routes with timeouts and retries).
    #[arg(long)]
    pub envoy_rds: Option<PathBuf>,
    /// RouteConfiguration name in the RDS file.
    #[arg(long)]
    pub envoy_route_config: Option<String>,
    /// Envoy destination NAME=HOST:PORT[,HOST:PORT...] (repeatable); NAME is the cluster name
    /// reported, the addresses its endpoints.
    #[arg(long = "envoy-destination")]
    pub envoy_destinations: Vec<String>,
    /// Namespaces whose sidecars may be tuned (repeatable or comma-separated; `*` = all).
    /// Keys (reporter namespace, destination) of other namespaces are not decided for, hinted
    /// or written, and are counted in `meshtune_tuning_refused_total`. Default: `*` without
    /// `--sink istio` (local Envoy, testbed); with it, the namespaces labelled
    /// `meshtune.io/enabled=true` (namespace watch). Given, this static list replaces the
    /// label watch (no data-plane objects are managed).
    #[arg(long = "tune-namespaces", value_delimiter = ',')]
    pub tune_namespaces: Option<Vec<String>>,
    /// Data-plane object the controller keeps in every namespace labelled
    /// `meshtune.io/enabled=true` (with `--sink istio` and no `--tune-namespaces`): the
    /// WasmPlugin or EnvoyFilter of `manifests/`, or none (install the filter yourself).
    #[arg(long, value_enum, default_value_t = DataPlane::Wasmplugin)]
    pub data_plane: DataPlane,
    /// Istio's root namespace (`meshConfig.rootNamespace`): its exported DestinationRules
    /// apply mesh-wide. With `--sink istio` the controller watches the cluster's own
    /// DestinationRules/VirtualServices and reads them as the knobs in force of destinations it
    /// has not pushed to.
    #[arg(long, default_value = meshtune_sinks::istio_foreign::DEFAULT_ROOT_NAMESPACE)]
    pub istio_root_namespace: String,
    /// The cluster's DNS domain (istiod's `--domain`): a short host `reviews` in a
    /// DestinationRule/VirtualService of namespace `ns` means `reviews.ns.svc.<domain>`.
    #[arg(long, default_value = meshtune_sinks::istio_foreign::DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// Shortest time between two status writes of one MeshtunePolicy, seconds.
    #[arg(long, default_value_t = crate::review::DEFAULT_STATUS_MIN_INTERVAL.as_secs_f64())]
    pub status_min_interval_secs: f64,
    /// Append live dataset rows (features, knobs in force, outcomes) to this CSV.
    #[arg(long)]
    pub record: Option<PathBuf>,

    /// Feature sources (repeatable or comma-separated): `filter` (the filters' gRPC reports)
    /// and/or `prometheus` (Istio standard metrics and Envoy cluster statistics, needs
    /// --prometheus-url). With both, the filter wins for every destination it reports.
    #[arg(long = "source", value_enum, value_delimiter = ',', default_values_t = vec![SourceKind::Filter])]
    pub feature_sources: Vec<SourceKind>,
    /// Prometheus server for `--source prometheus` (e.g. http://prometheus.istio-system:9090).
    #[arg(long)]
    pub prometheus_url: Option<String>,
    /// Istio `reporter` label read by the Prometheus source (`source`: the client side).
    #[arg(long, default_value = prometheus::DEFAULT_REPORTER)]
    pub prometheus_reporter: String,
    /// Window of the Prometheus source in seconds (a few scrape intervals).
    #[arg(long, default_value_t = prometheus::DEFAULT_WINDOW_SECS)]
    pub prometheus_window_secs: u64,

    /// Elect a leader among replicas with a coordination.k8s.io Lease: only the leader
    /// decides, writes and is Ready (/readyz is 503 on followers).
    #[arg(long)]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else meshtune-system).
    #[arg(long)]
    pub leader_elect_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, default_value = leader::DEFAULT_LEASE_NAME)]
    pub leader_elect_lease: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else $HOSTNAME).
    #[arg(long)]
    pub leader_elect_identity: Option<String>,
    /// Lease duration in seconds (a leader that stops renewing is replaced after this long).
    #[arg(long, default_value_t = leader::DEFAULT_LEASE_DURATION.as_secs_f64())]
    pub leader_elect_lease_secs: f64,
    /// Renew deadline in seconds (below the lease duration).
    #[arg(long, default_value_t = leader::DEFAULT_RENEW_DEADLINE.as_secs_f64())]
    pub leader_elect_renew_secs: f64,
    /// Seconds between two rounds of the election (below the renew deadline).
    #[arg(long, default_value_t = leader::DEFAULT_RETRY_PERIOD.as_secs_f64())]
    pub leader_elect_retry_secs: f64,
}

/// A feature source of `--source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// The filters' reports over gRPC.
    Filter,
    /// Prometheus (`--prometheus-url`).
    Prometheus,
}

impl ControllerArgs {
    /// The ingest/aggregation config, without the filter module (see [`Self::filter_module`])
    /// and authentication (see [`Self::auth`]).
    pub fn config(&self) -> Config {
        Config {
            window_secs: self.window_secs.max(1),
            max_report_bytes: self.max_report_bytes,
            max_destinations: self.max_destinations,
            max_aggregate_bytes: self.max_aggregate_mib.saturating_mul(1 << 20),
            reports_per_sec: self.max_reports_per_sec,
            report_burst: self.report_burst,
            max_concurrent_reports: self.max_concurrent_reports.max(1),
            max_streams_per_connection: self.max_streams_per_connection.max(1),
            request_timeout: Duration::try_from_secs_f64(self.request_timeout_secs)
                .unwrap_or(crate::ingest::DEFAULT_REQUEST_TIMEOUT),
            hints_file: self.hints_file.clone(),
            ..Config::default()
        }
    }

    /// The authentication mode and TLS files: exactly one of the TLS flags, `--trust-xfcc`
    /// and `--insecure-no-auth` (clap refuses combinations). Errors name the flag and file.
    pub fn auth(&self) -> Result<(AuthMode, Option<TlsPem>), LoopError> {
        let read = |flag: &'static str, p: &Path| {
            std::fs::read(p).map_err(|e| LoopError::Flag {
                flag,
                reason: format!("{}: {e}", p.display()),
            })
        };
        match (&self.tls_cert, &self.tls_key, &self.client_ca) {
            (Some(c), Some(k), Some(ca)) => Ok((
                AuthMode::ClientCert,
                Some(TlsPem {
                    cert: read("--tls-cert", c)?,
                    key: read("--tls-key", k)?,
                    client_ca: read("--client-ca", ca)?,
                }),
            )),
            _ if self.trust_xfcc => Ok((AuthMode::Xfcc, None)),
            _ if self.insecure_no_auth => Ok((AuthMode::None, None)),
            _ => Err(LoopError::Flag {
                flag: "--tls-cert/--tls-key/--client-ca, --trust-xfcc or --insecure-no-auth",
                reason: "choose how reporters are authenticated (README, Security): mTLS on \
                         the gRPC port, the identity from the controller's own sidecar, or \
                         none (local testbed only)"
                    .into(),
            }),
        }
    }

    /// Reads the filter module: `--filter-wasm` must be a readable WebAssembly file; without
    /// the flag, [`DEFAULT_FILTER_WASM`] is served if it exists (the image) and no module is
    /// served if it does not (a developer checkout). Errors name the flag and the file.
    pub fn filter_module(&self) -> Result<Option<FilterModule>, LoopError> {
        let flag_error = |e: FilterModuleError| LoopError::Flag {
            flag: "--filter-wasm",
            reason: e.to_string(),
        };
        match &self.filter_wasm {
            Some(path) => FilterModule::load(path).map(Some).map_err(flag_error),
            None => match FilterModule::load(Path::new(DEFAULT_FILTER_WASM)) {
                Ok(m) => Ok(Some(m)),
                Err(FilterModuleError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(None)
                }
                Err(e) => Err(flag_error(e)),
            },
        }
    }

    /// The decision loop config (reads the guardrails file).
    pub fn loop_config(&self) -> Result<LoopConfig, LoopError> {
        let mut g = match &self.guardrails {
            Some(p) => guardrails::Config::load(p)?,
            None => guardrails::Config::default(),
        };
        if let Some(m) = self.mode {
            g.mode = m;
        }
        if let Some(d) = self.min_dwell_secs {
            g.min_dwell = Duration::try_from_secs_f64(d).map_err(|e| LoopError::Flag {
                flag: "--min-dwell-secs",
                reason: e.to_string(),
            })?;
        }
        if let Some(d) = self.urgent_dwell_secs {
            g.urgent_dwell = Duration::try_from_secs_f64(d).map_err(|e| LoopError::Flag {
                flag: "--urgent-dwell-secs",
                reason: e.to_string(),
            })?;
        }
        if let Some(f) = self.max_step_factor {
            if !(f.is_finite() && f > 1.0) {
                return Err(LoopError::Flag {
                    flag: "--max-step-factor",
                    reason: format!("{f} must be > 1"),
                });
            }
            g.max_step_factor = f;
        }
        let interval = Duration::try_from_secs_f64(self.decision_interval_secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or(LoopError::Flag {
                flag: "--decision-interval-secs",
                reason: format!("{} must be > 0", self.decision_interval_secs),
            })?;
        Ok(LoopConfig {
            interval,
            min_requests: self.min_requests,
            slo_ms: self.slo_ms,
            naming: if self.sinks.contains(&SinkKind::Istio) {
                Naming::IstioHost
            } else {
                Naming::Cluster
            },
            hint_ttl_ms: policy_loop::default_hint_ttl(interval),
            guardrails: g,
            settle: Duration::from_secs(self.window_secs),
            gate: Arc::new(self.gate()?),
        })
    }

    /// Whether the namespace label watch gates tuning and manages the data-plane objects:
    /// with `--sink istio` unless `--tune-namespaces` is given.
    pub fn label_watch(&self) -> bool {
        self.sinks.contains(&SinkKind::Istio) && self.tune_namespaces.is_none()
    }

    /// The static namespace gate from `--tune-namespaces` (default: see the flag; with the
    /// label watch it is replaced by [`crate::namespaces::LabelGate`]).
    pub fn gate(&self) -> Result<StaticGate, LoopError> {
        match &self.tune_namespaces {
            Some(list) => StaticGate::parse(list).map_err(|e| LoopError::Flag {
                flag: "--tune-namespaces",
                reason: e.to_string(),
            }),
            None if self.sinks.contains(&SinkKind::Istio) => {
                Ok(StaticGate::Only(Default::default()))
            }
            None => Ok(StaticGate::All),
        }
    }

    /// Model sources in the order the first model is taken from: `--model` (must be valid),
    /// the embedded model (if compiled in), `--model-configmap`. File and ConfigMap are then
    /// watched for hot swaps.
    pub fn model_sources(&self) -> Vec<ModelSource> {
        let mut sources = Vec::new();
        if let Some(path) = &self.model {
            sources.push(ModelSource::File {
                path: path.clone(),
                poll: Duration::from_millis(self.model_poll_ms.max(10)),
            });
        }
        sources.push(ModelSource::Embedded);
        if let Some((namespace, name)) = &self.model_configmap {
            sources.push(ModelSource::ConfigMap {
                namespace: namespace.clone(),
                name: name.clone(),
            });
        }
        sources
    }

    /// The decision loop's feature sources from `--source` and the `--prometheus-*` flags.
    pub fn sources(&self) -> Result<Sources, LoopError> {
        let prometheus = if self.feature_sources.contains(&SourceKind::Prometheus) {
            let url = self.prometheus_url.as_deref().ok_or(LoopError::Flag {
                flag: "--prometheus-url",
                reason: "required with --source prometheus".into(),
            })?;
            if self.prometheus_window_secs == 0 {
                return Err(LoopError::Flag {
                    flag: "--prometheus-window-secs",
                    reason: "must be > 0".into(),
                });
            }
            let p = PromSource::new(url, &self.prometheus_reporter, prometheus::DEFAULT_TIMEOUT)
                .map_err(|e| LoopError::Flag {
                    flag: "--prometheus-url",
                    reason: e.to_string(),
                })?;
            Some((p, self.prometheus_window_secs))
        } else {
            if self.prometheus_url.is_some() {
                return Err(LoopError::Flag {
                    flag: "--prometheus-url",
                    reason: "given without --source prometheus".into(),
                });
            }
            None
        };
        Ok(Sources {
            filter: self.feature_sources.contains(&SourceKind::Filter),
            prometheus,
        })
    }

    /// The Lease settings from the `--leader-elect-*` flags (`None` without `--leader-elect`).
    pub fn lease_config(&self) -> Result<Option<LeaseConfig>, LoopError> {
        if !self.leader_elect {
            return Ok(None);
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let namespace = self
            .leader_elect_namespace
            .clone()
            .or_else(|| env("POD_NAMESPACE"))
            .unwrap_or_else(|| "meshtune-system".into());
        let identity = self
            .leader_elect_identity
            .clone()
            .or_else(|| env("POD_NAME"))
            .or_else(|| env("HOSTNAME"))
            .unwrap_or_default();
        let secs = |flag: &'static str, v: f64| {
            Duration::try_from_secs_f64(v).map_err(|e| LoopError::Flag {
                flag,
                reason: e.to_string(),
            })
        };
        let c = LeaseConfig {
            namespace,
            name: self.leader_elect_lease.clone(),
            identity,
            lease_duration: secs("--leader-elect-lease-secs", self.leader_elect_lease_secs)?,
            renew_deadline: secs("--leader-elect-renew-secs", self.leader_elect_renew_secs)?,
            retry_period: secs("--leader-elect-retry-secs", self.leader_elect_retry_secs)?,
        };
        c.validate().map_err(|e| LoopError::Flag {
            flag: "--leader-elect",
            reason: e.to_string(),
        })?;
        Ok(Some(c))
    }

    fn envoy(&self) -> EnvoyFileArgs {
        EnvoyFileArgs {
            cds: self.envoy_cds.clone(),
            rds: self.envoy_rds.clone(),
            route_config: self.envoy_route_config.clone(),
            destinations: self.envoy_destinations.clone(),
        }
    }
}

/// Everything built from the flags, ready to serve.
pub struct Prepared {
    pub controller: Arc<Controller>,
    pub policy: Arc<PolicyLoop>,
    pub sources: Vec<ModelSource>,
    pub kube: Option<kube::Client>,
    /// The leader election to run (`--leader-elect`).
    pub election: Option<(Elector, tokio::sync::watch::Sender<bool>)>,
    /// The namespace label watch (`--sink istio` without `--tune-namespaces`).
    pub namespaces: Option<Arc<NamespaceController>>,
    /// The MeshtunePolicy watch (`--sink istio`).
    pub policies: Option<(Arc<PolicyStore>, kube::Client)>,
    /// The DestinationRule/VirtualService watch (`--sink istio`).
    pub cluster_knobs: Option<(Arc<ClusterKnobs>, kube::Client)>,
}

impl Prepared {
    /// Serves on the given listeners until `shutdown`.
    pub async fn serve(
        self,
        grpc: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), LoopError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|v| *v).await;
            }
        };
        let election = self.election.map(|(elector, tx)| {
            let metrics = self.controller.metrics().leader.clone();
            tokio::spawn(leader::run(elector, tx, metrics, stopped()))
        });
        let mut watches = Vec::new();
        if let Some(nc) = self.namespaces {
            watches.push(tokio::spawn(nc.run(stopped())));
        }
        if let Some((store, client)) = self.policies {
            watches.push(tokio::spawn(store.run(client, stopped())));
        }
        if let Some((store, client)) = self.cluster_knobs {
            watches.push(tokio::spawn(store.run(client, stopped())));
        }
        let served = policy_loop::serve_closed_loop(
            self.controller,
            self.policy,
            self.sources,
            self.kube,
            grpc,
            admin,
            async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            },
        )
        .await;
        // The election stops with the loop (and releases the Lease if it held it).
        if let Some(e) = election {
            let _ = e.await;
        }
        for w in watches {
            let _ = w.await;
        }
        served?;
        Ok(())
    }
}

/// Binds `--grpc-listen` and `--admin-listen`, writes `grpc listening on ADDR` and
/// `admin listening on ADDR` to `out` (tests and launchers read the bound ports from there),
/// then builds everything from the flags and serves until `shutdown`.
pub async fn bind_and_serve(
    args: ControllerArgs,
    out: &mut impl std::io::Write,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LoopError> {
    let (grpc_addr, admin_addr) = (args.grpc_listen.clone(), args.admin_listen.clone());
    let prepared = prepare(args).await?;
    let bind = |flag: &'static str, addr: String| async move {
        TcpListener::bind(&addr)
            .await
            .map_err(|source| LoopError::Bind { flag, addr, source })
    };
    let grpc = bind("--grpc-listen", grpc_addr).await?;
    let admin = bind("--admin-listen", admin_addr).await?;
    let announce = |out: &mut dyn std::io::Write| -> std::io::Result<()> {
        writeln!(out, "grpc listening on {}", grpc.local_addr()?)?;
        writeln!(out, "admin listening on {}", admin.local_addr()?)?;
        out.flush()
    };
    announce(out).map_err(LoopError::Announce)?;
    prepared.serve(grpc, admin, shutdown).await
}

/// Builds everything from the flags and serves on the given listeners until `shutdown`.
pub async fn run(
    args: ControllerArgs,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LoopError> {
    prepare(args).await?.serve(grpc, admin, shutdown).await
}

/// Reads the flags' files (guardrails, model, recorder), connects the sinks and builds the
/// controller and decision loop. Errors name the flag and file.
pub async fn prepare(args: ControllerArgs) -> Result<Prepared, LoopError> {
    let mut loop_config = args.loop_config()?;
    let feature_sources = args.sources()?;
    let filter_module = args.filter_module()?;
    let (auth, tls) = args.auth()?;
    tracing::info!(auth = auth.name(), tune_namespaces = %args.gate()?.describe(), "reporter authentication and namespace gate");
    if auth == AuthMode::None {
        tracing::warn!("--insecure-no-auth: reports are not authenticated; anyone who reaches the gRPC port can report for any namespace");
    }
    match &filter_module {
        Some(m) => tracing::info!(path = %m.path().display(), sha256 = m.sha256(),
            size = m.bytes().len(), "serving the filter module at /filter.wasm"),
        None => tracing::info!("no filter module ({DEFAULT_FILTER_WASM} absent, no --filter-wasm)"),
    }
    let controller = Arc::new(Controller::new(Config {
        filter_module,
        auth,
        tls,
        ..args.config()
    })?);
    let sources = args.model_sources();
    let kube = match &args.model_configmap {
        Some(_) => Some(policy_loop::kube_client("--model-configmap").await?),
        None => None,
    };
    let model = source::load_initial(&sources, kube.as_ref())
        .await
        .map_err(|error| LoopError::ModelSource {
            flag: match error.model_source() {
                ModelSource::File { .. } => "--model",
                ModelSource::ConfigMap { .. } => "--model-configmap",
                ModelSource::Embedded => "embedded model",
            },
            error: Box::new(error),
        })?;
    // With the Istio sink the MeshtunePolicy watch decides each namespace's mode, bounds,
    // exclusions and co-manage list (`--mode` is the default of namespaces without one).
    let policies = args.sinks.contains(&SinkKind::Istio).then(|| {
        Arc::new(PolicyStore::new(match loop_config.guardrails.mode {
            Mode::Observe => meshtune_crd::Mode::Observe,
            Mode::Enforce => meshtune_crd::Mode::Enforce,
        }))
    });
    // With the Istio sink the cluster's own DestinationRules/VirtualServices are watched: the
    // knobs in force where meshtune pushed nothing, and what an object of meshtune's must not
    // hide.
    let cluster_store = args.sinks.contains(&SinkKind::Istio).then(|| {
        Arc::new(ClusterKnobs::new(
            Lookup {
                root_namespace: args.istio_root_namespace.clone(),
                domain: args.cluster_domain.clone(),
            },
            controller.metrics().cluster_knobs.clone(),
        ))
    });
    let sinks = build_sinks(
        &args.sinks,
        &args.envoy(),
        policies
            .clone()
            .map(|p| p as Arc<dyn meshtune_sinks::istio_sink::CoManageAllowlist>),
        cluster_store
            .clone()
            .map(|c| c as Arc<dyn meshtune_sinks::istio_sink::ShadowCheck>),
    )
    .await?;
    let lease = args.lease_config()?;
    let lifecycle_client = if args.sinks.contains(&SinkKind::Istio) {
        Some(policy_loop::kube_client("--sink istio").await?)
    } else {
        None
    };
    let election = match &lease {
        Some(c) => {
            let client = match &lifecycle_client {
                Some(c) => c.clone(),
                None => policy_loop::kube_client("--leader-elect").await?,
            };
            let (tx, leadership) = Leadership::channel();
            controller.set_leadership(leadership);
            Some((Elector::new(client, c.clone()), tx))
        }
        None => None,
    };
    let namespaces = match (&lifecycle_client, args.label_watch()) {
        (Some(client), true) => {
            let nc = Arc::new(NamespaceController::new(
                client.clone(),
                NamespaceConfig {
                    data_plane: args.data_plane,
                    module_sha256: controller
                        .config()
                        .filter_module
                        .as_ref()
                        .map(|m| m.sha256().to_string()),
                    ..NamespaceConfig::default()
                },
                controller.leadership(),
                controller.metrics().namespaces.clone(),
            ));
            loop_config.gate = nc.gate();
            tracing::info!(data_plane = ?args.data_plane, "namespace switch: label {}=true", crate::namespaces::ENABLED_LABEL);
            Some(nc)
        }
        _ => None,
    };
    let recorder = match &args.record {
        Some(p) => Some(Recorder::open(p)?),
        None => None,
    };
    let policy = PolicyLoop::new(
        controller.clone(),
        model,
        sinks,
        Arc::new(meshtune_sinks::LogSink::stdout()),
        recorder,
        loop_config,
    );
    policy.set_sources(feature_sources);
    if let Some(l) = controller.leadership() {
        policy.set_leadership(l);
    }
    let mut policy_watch = None;
    let mut cluster_knobs = None;
    if let Some(client) = lifecycle_client {
        if let Some(store) = cluster_store {
            policy.set_cluster_knobs(store.clone());
            cluster_knobs = Some((store, client.clone()));
        }
        if let Some(store) = &policies {
            let min = Duration::try_from_secs_f64(args.status_min_interval_secs).map_err(|e| {
                LoopError::Flag {
                    flag: "--status-min-interval-secs",
                    reason: e.to_string(),
                }
            })?;
            let instance = std::env::var("POD_NAME").ok();
            policy.set_policies(
                store.clone(),
                Some(Arc::new(crate::review::StatusWriter::new(
                    client.clone(),
                    crate::namespaces::DEFAULT_FIELD_MANAGER,
                    min,
                    instance,
                ))),
            );
            policy_watch = Some((store.clone(), client.clone()));
        }
        policy.set_lifecycle(crate::lifecycle::Lifecycle {
            client,
            sink: meshtune_sinks::IstioSinkConfig::default(),
        });
    }
    Ok(Prepared {
        controller,
        policy,
        sources,
        kube,
        election,
        namespaces,
        policies: policy_watch,
        cluster_knobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    fn sources(argv: &[&str]) -> Result<Sources, LoopError> {
        let mut full = vec!["meshtune"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).unwrap().args.sources()
    }

    #[test]
    fn source_flags() {
        let s = sources(&[]).unwrap();
        assert!(s.filter && s.prometheus.is_none());
        let s = sources(&[
            "--source",
            "prometheus",
            "--prometheus-url",
            "http://127.0.0.1:9090",
        ])
        .unwrap();
        assert!(!s.filter);
        assert_eq!(
            s.prometheus.as_ref().map(|p| p.1),
            Some(prometheus::DEFAULT_WINDOW_SECS)
        );
        let s = sources(&[
            "--source",
            "filter,prometheus",
            "--prometheus-url",
            "http://p:9090/",
        ])
        .unwrap();
        assert!(s.filter && s.prometheus.is_some());
        let e = sources(&["--source", "prometheus"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--prometheus-url"), "{e}");
        let e = sources(&["--prometheus-url", "http://p:9090"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("without --source prometheus"), "{e}");
        let e = sources(&["--source", "prometheus", "--prometheus-url", "p:9090"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--prometheus-url") && e.contains("p:9090"),
            "{e}"
        );
    }
}
