//! Envoy file sink: renders every configured destination's cluster into one CDS file (and its
//! routes into an RDS file) that Envoy watches through `path_config_source`, replacing each file
//! atomically (temp file in the same folder + rename; Envoy ignores in-place writes).
//!
//! The files are state-of-the-world, so the sink keeps the knobs in force for every configured
//! destination (Istio defaults until a decision arrives) and rewrites all of them on each apply.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use meshtune_core::Knobs;
use serde_json::Value;

use crate::envoy::{self, EnvoyCluster, DEFAULT_RETRY_ON};
use crate::sink::{ApplyFuture, ApplyReport, Decision, Outcome, Sink, SinkError};

/// Default name of the RouteConfiguration in the RDS file.
pub const DEFAULT_ROUTE_CONFIG_NAME: &str = "meshtune_routes";

/// A route to a destination's cluster in the RDS file.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyRoute {
    /// Virtual host name.
    pub virtual_host: String,
    /// `domains` of the virtual host (`["*"]` for a catch-all).
    pub domains: Vec<String>,
    /// Path prefix routed to the cluster.
    pub prefix: String,
}

/// One destination the sink manages.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyDestination {
    /// Key matched against [`Decision::destination`].
    pub destination: String,
    /// How it is rendered as a cluster.
    pub cluster: EnvoyCluster,
    /// Its route, if the sink also writes RDS.
    pub route: Option<EnvoyRoute>,
}

/// Configuration of [`EnvoyFileSink`].
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyFileConfig {
    /// CDS file Envoy watches (`.json` or `.yaml`/`.yml`).
    pub cds_path: PathBuf,
    /// RDS file Envoy watches, if routes are managed (`.json` or `.yaml`/`.yml`).
    pub rds_path: Option<PathBuf>,
    /// Name of the RouteConfiguration in the RDS file ([`DEFAULT_ROUTE_CONFIG_NAME`]).
    pub route_config_name: String,
    /// `retry_on` of route retry policies ([`DEFAULT_RETRY_ON`]).
    pub retry_on: String,
    /// The destinations; decisions for others are refused.
    pub destinations: Vec<EnvoyDestination>,
}

impl EnvoyFileConfig {
    /// CDS only, default route name and retry conditions.
    pub fn new(cds_path: impl Into<PathBuf>, destinations: Vec<EnvoyDestination>) -> Self {
        Self {
            cds_path: cds_path.into(),
            rds_path: None,
            route_config_name: DEFAULT_ROUTE_CONFIG_NAME.to_string(),
            retry_on: DEFAULT_RETRY_ON.to_string(),
            destinations,
        }
    }
}

#[derive(Debug)]
struct State {
    knobs: BTreeMap<String, Knobs>,
    version: u64,
}

/// Writes CDS/RDS files for a plain Envoy (local testbed).
#[derive(Debug)]
pub struct EnvoyFileSink {
    config: EnvoyFileConfig,
    state: Mutex<State>,
}

#[derive(Clone, Copy)]
enum Format {
    Json,
    Yaml,
}

fn format_of(path: &Path) -> Result<Format, SinkError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Ok(Format::Json),
        Some("yaml") | Some("yml") => Ok(Format::Yaml),
        _ => Err(SinkError::Serialize {
            what: path.display().to_string(),
            message:
                "xDS file must end in .json, .yaml or .yml (Envoy picks the parser by extension)"
                    .into(),
        }),
    }
}

fn encode(path: &Path, v: &Value) -> Result<Vec<u8>, SinkError> {
    let err = |message: String| SinkError::Serialize {
        what: path.display().to_string(),
        message,
    };
    match format_of(path)? {
        Format::Json => serde_json::to_vec_pretty(v).map_err(|e| err(e.to_string())),
        Format::Yaml => serde_yaml::to_string(v)
            .map(String::into_bytes)
            .map_err(|e| err(e.to_string())),
    }
}

/// Replaces `path` atomically: writes `.<name>.meshtune-tmp` in the same folder, syncs it and
/// renames it over `path` (what Envoy's file watcher reacts to).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let io = |source| SinkError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::other("path has no file name")))?;
    let tmp = dir.join(format!(".{}.meshtune-tmp", name.to_string_lossy()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

impl EnvoyFileSink {
    /// Checks the configuration (file extensions, endpoints) and starts every destination at
    /// Istio's defaults. Nothing is written until [`Self::write_current`] or an apply.
    pub fn new(config: EnvoyFileConfig) -> Result<Self, SinkError> {
        format_of(&config.cds_path)?;
        if let Some(rds) = &config.rds_path {
            format_of(rds)?;
        }
        let knobs: BTreeMap<String, Knobs> = config
            .destinations
            .iter()
            .map(|d| (d.destination.clone(), Knobs::istio_defaults()))
            .collect();
        let check = knobs.clone();
        let sink = Self {
            config,
            state: Mutex::new(State { knobs, version: 0 }),
        };
        sink.render_cds(&check, 0)?;
        Ok(sink)
    }

    /// The configuration.
    pub fn config(&self) -> &EnvoyFileConfig {
        &self.config
    }

    /// Knobs currently written for `destination`.
    pub fn current(&self, destination: &str) -> Option<Knobs> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.knobs.get(destination).copied()
    }

    /// Renders the CDS file content for `knobs` (per destination).
    pub fn render_cds(
        &self,
        knobs: &BTreeMap<String, Knobs>,
        version: u64,
    ) -> Result<Value, SinkError> {
        let mut clusters = Vec::new();
        for d in &self.config.destinations {
            let k = knobs
                .get(&d.destination)
                .copied()
                .unwrap_or_else(Knobs::istio_defaults);
            clusters.push(envoy::cluster(&d.cluster, &k)?);
        }
        Ok(envoy::xds_file(&version.to_string(), clusters))
    }

    /// Renders the RDS file content for `knobs` (per destination).
    pub fn render_rds(&self, knobs: &BTreeMap<String, Knobs>, version: u64) -> Value {
        let vhosts = self
            .config
            .destinations
            .iter()
            .filter_map(|d| {
                let r = d.route.as_ref()?;
                let k = knobs
                    .get(&d.destination)
                    .copied()
                    .unwrap_or_else(Knobs::istio_defaults);
                Some(envoy::virtual_host(
                    &r.virtual_host,
                    &r.domains,
                    &r.prefix,
                    &d.cluster.name,
                    &k,
                    &self.config.retry_on,
                ))
            })
            .collect();
        envoy::xds_file(
            &version.to_string(),
            vec![envoy::route_configuration(
                &self.config.route_config_name,
                vhosts,
            )],
        )
    }

    fn write(
        &self,
        knobs: &BTreeMap<String, Knobs>,
        version: u64,
    ) -> Result<Vec<String>, SinkError> {
        let cds = self.render_cds(knobs, version)?;
        write_atomically(&self.config.cds_path, &encode(&self.config.cds_path, &cds)?)?;
        let mut written = vec![self.config.cds_path.display().to_string()];
        if let Some(rds_path) = &self.config.rds_path {
            let rds = self.render_rds(knobs, version);
            write_atomically(rds_path, &encode(rds_path, &rds)?)?;
            written.push(rds_path.display().to_string());
        }
        Ok(written)
    }

    /// Writes the files with the knobs currently in force (e.g. at start-up, before Envoy
    /// starts, so its CDS file exists).
    pub fn write_current(&self) -> Result<(), SinkError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let version = state.version + 1;
        self.write(&state.knobs, version)?;
        state.version = version;
        Ok(())
    }
}

impl Sink for EnvoyFileSink {
    fn name(&self) -> &'static str {
        "envoy-file"
    }

    fn apply<'a>(&'a self, decisions: &'a [Decision]) -> ApplyFuture<'a> {
        Box::pin(async move {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut staged = state.knobs.clone();
            let mut accepted = Vec::new();
            let mut report = ApplyReport::default();
            for (i, d) in decisions.iter().enumerate() {
                if let Some(k) = staged.get_mut(&d.destination) {
                    *k = d.knobs;
                    accepted.push(i);
                }
            }
            let written = if accepted.is_empty() {
                Vec::new()
            } else {
                let version = state.version + 1;
                let written = self.write(&staged, version)?;
                state.knobs = staged;
                state.version = version;
                tracing::info!(
                    version,
                    destinations = accepted.len(),
                    "envoy xDS files replaced"
                );
                written
            };
            for (i, d) in decisions.iter().enumerate() {
                let outcome = if accepted.contains(&i) {
                    Outcome::Applied {
                        objects: written.clone(),
                    }
                } else {
                    Outcome::Refused {
                        reason: format!(
                            "destination {:?} is not configured in the Envoy file sink",
                            d.destination
                        ),
                    }
                };
                report.push(d, outcome);
            }
            Ok(report)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_core::Knob;

    fn config(dir: &Path) -> EnvoyFileConfig {
        let mut c = EnvoyFileConfig::new(
            dir.join("cds.yaml"),
            vec![
                EnvoyDestination {
                    destination: "reviews".into(),
                    cluster: EnvoyCluster::new("reviews", vec!["127.0.0.1:9080".into()]),
                    route: Some(EnvoyRoute {
                        virtual_host: "reviews".into(),
                        domains: vec!["*".into()],
                        prefix: "/".into(),
                    }),
                },
                EnvoyDestination {
                    destination: "ratings".into(),
                    cluster: EnvoyCluster::new("ratings", vec!["127.0.0.1:9081".into()]),
                    route: None,
                },
            ],
        );
        c.rds_path = Some(dir.join("rds.json"));
        c
    }

    fn read_yaml(p: &Path) -> Value {
        serde_yaml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn apply_rewrites_all_clusters_and_routes() {
        let dir = tempfile::tempdir().unwrap();
        let sink = EnvoyFileSink::new(config(dir.path())).unwrap();
        sink.write_current().unwrap();
        let mut k = Knobs::istio_defaults();
        k.set(Knob::MaxConnections, 42.0);
        k.set(Knob::RouteTimeoutMs, 800.0);
        let ds = [
            Decision {
                destination: "reviews".into(),
                namespace: "default".into(),
                knobs: k,
                previous: None,
            },
            Decision {
                destination: "unknown".into(),
                namespace: "default".into(),
                knobs: k,
                previous: None,
            },
        ];
        let report = sink.apply(&ds).await.unwrap();
        assert!(matches!(report.items[0].outcome, Outcome::Applied { .. }));
        assert!(matches!(report.items[1].outcome, Outcome::Refused { .. }));
        let cds = read_yaml(&dir.path().join("cds.yaml"));
        assert_eq!(cds["version_info"], "2");
        let res = cds["resources"].as_array().unwrap();
        assert_eq!(res.len(), 2);
        assert_eq!(res[0]["@type"], envoy::CLUSTER_TYPE_URL);
        assert_eq!(
            res[0]["circuit_breakers"]["thresholds"][0]["max_connections"],
            42
        );
        assert_eq!(
            res[1]["circuit_breakers"]["thresholds"][0]["max_connections"],
            4_294_967_295u64
        );
        let rds: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("rds.json")).unwrap()).unwrap();
        let route = &rds["resources"][0]["virtual_hosts"][0]["routes"][0]["route"];
        assert_eq!(route["timeout"], "0.800s");
        assert_eq!(
            sink.current("reviews").unwrap().get(Knob::MaxConnections),
            42.0
        );
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[tokio::test]
    async fn failed_write_keeps_old_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.cds_path = dir.path().join("missing-dir/cds.json");
        let sink = EnvoyFileSink::new(c).unwrap();
        let mut k = Knobs::istio_defaults();
        k.set(Knob::MaxConnections, 42.0);
        let err = sink
            .apply(&[Decision {
                destination: "reviews".into(),
                namespace: "default".into(),
                knobs: k,
                previous: None,
            }])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing-dir/cds.json"), "{err}");
        assert_eq!(sink.current("reviews").unwrap(), Knobs::istio_defaults());
    }

    #[test]
    fn unknown_extension_and_bad_endpoint_are_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.cds_path = dir.path().join("cds.txt");
        assert!(EnvoyFileSink::new(c)
            .unwrap_err()
            .to_string()
            .contains("cds.txt"));
        let mut c = config(dir.path());
        c.destinations[0].cluster.endpoints = vec!["nope".into()];
        assert!(EnvoyFileSink::new(c)
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }
}
