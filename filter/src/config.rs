//! The filter's JSON configuration, validated field by field so every error names the
//! offending field. Every field has a default: an empty configuration (a WasmPlugin without
//! `pluginConfig`) reports to the controller's Istio outbound cluster.

use serde_json::{Map, Value};

/// Default controller cluster: the outbound cluster Istio generates for the controller's
/// Service (`meshtune-system/meshtune-controller`, gRPC port 50051), so reports ride the mesh.
pub const DEFAULT_CONTROLLER_CLUSTER: &str =
    "outbound|50051||meshtune-controller.meshtune-system.svc.cluster.local";
/// Default gRPC flush (report) interval.
pub const DEFAULT_FLUSH_INTERVAL_MS: u32 = 1000;
/// Default timeout of one Report call.
pub const DEFAULT_REPORT_TIMEOUT_MS: u32 = 500;
/// Default namespace reported when neither config nor node metadata name one.
pub use meshtune_core::DEFAULT_NAMESPACE;
/// Default bound on tracked upstream clusters per VM: the controller's per-report limit
/// ([`meshtune_proto::MAX_UPSTREAMS_PER_REPORT`], one constant for both).
pub const DEFAULT_MAX_UPSTREAMS: u32 = meshtune_proto::MAX_UPSTREAMS_PER_REPORT;
/// Default bound on worker windows buffered by the elected reporter between flushes.
pub const DEFAULT_MAX_QUEUED_WINDOWS: u32 = 64;

/// Default request rate of the Envoy (all its workers together, requests per second) above
/// which the property reads of a request happen on a sample only (see `crate::sampling`);
/// below it every request is measured exactly. `0` = never sample.
pub const DEFAULT_SAMPLE_ABOVE_RPS: u32 = 500;
/// Default longest time without a Report while a worker has nothing to report (no windows,
/// no active hint): the sparse heartbeat of an idle Envoy.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u32 = 10_000;

/// Allowed range of `flush_interval_ms`.
pub const FLUSH_INTERVAL_RANGE: (u64, u64) = (100, 60_000);
/// Allowed range of `report_timeout_ms`.
pub const REPORT_TIMEOUT_RANGE: (u64, u64) = (10, 60_000);
/// Allowed range of `max_upstreams`: above the controller's per-report limit every report
/// with that many upstreams would be refused.
pub const MAX_UPSTREAMS_RANGE: (u64, u64) = (1, meshtune_proto::MAX_UPSTREAMS_PER_REPORT as u64);
/// Allowed range of `max_queued_windows`.
pub const MAX_QUEUED_WINDOWS_RANGE: (u64, u64) = (1, 100_000);

/// Allowed range of `sample_above_rps`.
pub const SAMPLE_ABOVE_RPS_RANGE: (u64, u64) = (0, 10_000_000);
/// Allowed range of `heartbeat_interval_ms`.
pub const HEARTBEAT_INTERVAL_RANGE: (u64, u64) = (100, 600_000);

/// Field names accepted in the configuration object.
pub const FIELDS: [&str; 12] = [
    "controller_cluster",
    "controller_authority",
    "flush_interval_ms",
    "report_timeout_ms",
    "namespace",
    "workload",
    "pod",
    "max_upstreams",
    "max_queued_windows",
    "report_mode",
    "sample_above_rps",
    "heartbeat_interval_ms",
];

/// How the worker VMs of one Envoy report (field `report_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportMode {
    /// `"elected"` (default): one worker, elected through a shared-data lease, merges the
    /// windows of all workers and sends one Report per flush for the Envoy; another worker
    /// takes over when it stops renewing the lease.
    #[default]
    Elected,
    /// `"per_worker"`: every worker VM sends its own Report (reporter `vm_id` suffixed with the
    /// worker id); the controller merges them as concurrent reporters.
    PerWorker,
}

impl ReportMode {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportMode::Elected => "elected",
            ReportMode::PerWorker => "per_worker",
        }
    }
}

/// Validated filter configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Envoy cluster of the controller's gRPC endpoint (non-empty; default
    /// [`DEFAULT_CONTROLLER_CLUSTER`]).
    pub controller_cluster: String,
    /// `:authority` of the Report call; empty means [`Config::authority`]'s choice.
    pub controller_authority: String,
    /// How often windows are flushed and one Report is sent, in ms (100..=60000).
    pub flush_interval_ms: u32,
    /// Timeout of one Report call, in ms (10..=60000).
    pub report_timeout_ms: u32,
    /// Reporter namespace; empty means "from node metadata `NAMESPACE`, else `default`".
    pub namespace: String,
    /// Reporter workload; empty means "from node metadata `WORKLOAD_NAME`, else empty".
    pub workload: String,
    /// Reporter pod; empty means "from node metadata `NAME`, else empty".
    pub pod: String,
    /// Most upstream clusters tracked per VM; requests to more are counted as untracked.
    pub max_upstreams: u32,
    /// Most worker windows the elected reporter merges per flush (more are dropped).
    pub max_queued_windows: u32,
    /// Elected reporter (default) or every worker reporting.
    pub report_mode: ReportMode,
    /// Request rate of the Envoy (all workers) above which requests are measured on a sample
    /// (0 = never).
    pub sample_above_rps: u32,
    /// Longest time without a Report when there is nothing to report (heartbeat), in ms;
    /// never shorter than `flush_interval_ms` in effect.
    pub heartbeat_interval_ms: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            controller_cluster: DEFAULT_CONTROLLER_CLUSTER.to_string(),
            controller_authority: String::new(),
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
            report_timeout_ms: DEFAULT_REPORT_TIMEOUT_MS,
            namespace: String::new(),
            workload: String::new(),
            pod: String::new(),
            max_upstreams: DEFAULT_MAX_UPSTREAMS,
            max_queued_windows: DEFAULT_MAX_QUEUED_WINDOWS,
            report_mode: ReportMode::Elected,
            sample_above_rps: DEFAULT_SAMPLE_ABOVE_RPS,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
        }
    }
}

/// Why a configuration was refused. Every variant names the field (or the document).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration is not valid JSON: {0}")]
    Syntax(String),
    #[error("configuration must be a JSON object")]
    NotObject,
    #[error("unknown field `{0}` (known fields: {known})", known = FIELDS.join(", "))]
    UnknownField(String),
    #[error("field `{field}` is `{value}`, expected one of: {expected}")]
    Choice {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("field `{field}` must be {expected}")]
    Type {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field `{0}` must not be empty")]
    EmptyValue(&'static str),
    #[error("field `{field}` is {value}, allowed range is {min}..={max}")]
    Range {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
}

impl ConfigError {
    /// The field the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Syntax(_) | ConfigError::NotObject => None,
            ConfigError::UnknownField(f) => Some(f),
            ConfigError::Choice { field: f, .. }
            | ConfigError::Type { field: f, .. }
            | ConfigError::EmptyValue(f)
            | ConfigError::Range { field: f, .. } => Some(f),
        }
    }
}

fn string_field(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ConfigError::Type {
            field,
            expected: "a string",
        }),
    }
}

fn int_field(
    obj: &Map<String, Value>,
    field: &'static str,
    default: u32,
    (min, max): (u64, u64),
) -> Result<u32, ConfigError> {
    let value = match obj.get(field) {
        None | Some(Value::Null) => return Ok(default),
        Some(v) => v.as_u64().ok_or(ConfigError::Type {
            field,
            expected: "a non-negative integer",
        })?,
    };
    if value < min || value > max {
        return Err(ConfigError::Range {
            field,
            value,
            min,
            max,
        });
    }
    // max <= u32::MAX for every range above.
    u32::try_from(value).map_err(|_| ConfigError::Range {
        field,
        value,
        min,
        max,
    })
}

impl Config {
    /// Parses and validates a configuration document (the plugin configuration bytes). An
    /// empty document is the default configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let obj = doc.as_object().ok_or(ConfigError::NotObject)?;
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ConfigError::UnknownField(unknown.clone()));
        }
        let d = Config::default();
        let controller_cluster =
            string_field(obj, "controller_cluster")?.unwrap_or(d.controller_cluster);
        if controller_cluster.trim().is_empty() {
            return Err(ConfigError::EmptyValue("controller_cluster"));
        }
        Ok(Config {
            controller_cluster,
            controller_authority: string_field(obj, "controller_authority")?.unwrap_or_default(),
            flush_interval_ms: int_field(
                obj,
                "flush_interval_ms",
                d.flush_interval_ms,
                FLUSH_INTERVAL_RANGE,
            )?,
            report_timeout_ms: int_field(
                obj,
                "report_timeout_ms",
                d.report_timeout_ms,
                REPORT_TIMEOUT_RANGE,
            )?,
            namespace: string_field(obj, "namespace")?.unwrap_or_default(),
            workload: string_field(obj, "workload")?.unwrap_or_default(),
            pod: string_field(obj, "pod")?.unwrap_or_default(),
            max_upstreams: int_field(obj, "max_upstreams", d.max_upstreams, MAX_UPSTREAMS_RANGE)?,
            max_queued_windows: int_field(
                obj,
                "max_queued_windows",
                d.max_queued_windows,
                MAX_QUEUED_WINDOWS_RANGE,
            )?,
            report_mode: match string_field(obj, "report_mode")?.as_deref() {
                None | Some("elected") => ReportMode::Elected,
                Some("per_worker") => ReportMode::PerWorker,
                Some(other) => {
                    return Err(ConfigError::Choice {
                        field: "report_mode",
                        value: other.to_string(),
                        expected: "elected, per_worker",
                    })
                }
            },
            sample_above_rps: int_field(
                obj,
                "sample_above_rps",
                d.sample_above_rps,
                SAMPLE_ABOVE_RPS_RANGE,
            )?,
            heartbeat_interval_ms: int_field(
                obj,
                "heartbeat_interval_ms",
                d.heartbeat_interval_ms,
                HEARTBEAT_INTERVAL_RANGE,
            )?,
        })
    }

    /// The `:authority` of the Report call: `controller_authority` if set; else, for an Istio
    /// outbound cluster `outbound|PORT|SUBSET|HOST`, `HOST:PORT` (what the mesh routes on);
    /// else the cluster name.
    pub fn authority(&self) -> String {
        if !self.controller_authority.is_empty() {
            return self.controller_authority.clone();
        }
        let parts: Vec<&str> = self.controller_cluster.split('|').collect();
        match parts.as_slice() {
            ["outbound", port, _subset, host] if !host.is_empty() && !port.is_empty() => {
                format!("{host}:{port}")
            }
            _ => self.controller_cluster.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_json(s.as_bytes())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(r#"{"controller_cluster":"meshtune_controller"}"#).unwrap();
        assert_eq!(c.controller_cluster, "meshtune_controller");
        assert_eq!(c.authority(), "meshtune_controller");
        assert_eq!(c.report_mode, ReportMode::Elected);
        assert_eq!(c.flush_interval_ms, DEFAULT_FLUSH_INTERVAL_MS);
        assert_eq!(c.report_timeout_ms, DEFAULT_REPORT_TIMEOUT_MS);
        assert_eq!(c.max_upstreams, DEFAULT_MAX_UPSTREAMS);
        assert_eq!(c.max_queued_windows, DEFAULT_MAX_QUEUED_WINDOWS);
        assert_eq!(c.sample_above_rps, DEFAULT_SAMPLE_ABOVE_RPS);
        assert_eq!(c.heartbeat_interval_ms, DEFAULT_HEARTBEAT_INTERVAL_MS);
        assert_eq!(
            c.namespace, "",
            "empty namespace is resolved later from node metadata"
        );
    }

    #[test]
    fn full_config_is_read() {
        let c = parse(
            r#"{"controller_cluster":"c","controller_authority":"a","flush_interval_ms":250,
                "report_timeout_ms":100,"namespace":"ns","workload":"w","pod":"p",
                "max_upstreams":3,"max_queued_windows":5,"report_mode":"per_worker",
                "sample_above_rps":0,"heartbeat_interval_ms":3000}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Config {
                controller_cluster: "c".into(),
                controller_authority: "a".into(),
                flush_interval_ms: 250,
                report_timeout_ms: 100,
                namespace: "ns".into(),
                workload: "w".into(),
                pod: "p".into(),
                max_upstreams: 3,
                max_queued_windows: 5,
                report_mode: ReportMode::PerWorker,
                sample_above_rps: 0,
                heartbeat_interval_ms: 3000,
            }
        );
        assert_eq!(c.authority(), "a");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"controller_cluster":""}"#, "controller_cluster"),
            (r#"{"controller_cluster":7}"#, "controller_cluster"),
            (
                r#"{"controller_cluster":"c","flush_interval_ms":99}"#,
                "flush_interval_ms",
            ),
            (
                r#"{"controller_cluster":"c","flush_interval_ms":60001}"#,
                "flush_interval_ms",
            ),
            (
                r#"{"controller_cluster":"c","flush_interval_ms":"1s"}"#,
                "flush_interval_ms",
            ),
            (
                r#"{"controller_cluster":"c","report_timeout_ms":9}"#,
                "report_timeout_ms",
            ),
            (
                r#"{"controller_cluster":"c","max_upstreams":0}"#,
                "max_upstreams",
            ),
            (
                r#"{"controller_cluster":"c","max_upstreams":-1}"#,
                "max_upstreams",
            ),
            (
                // Above the controller's per-report limit.
                r#"{"controller_cluster":"c","max_upstreams":257}"#,
                "max_upstreams",
            ),
            (
                r#"{"controller_cluster":"c","max_queued_windows":0}"#,
                "max_queued_windows",
            ),
            (r#"{"controller_cluster":"c","pod":1}"#, "pod"),
            (r#"{"sample_above_rps":-5}"#, "sample_above_rps"),
            (r#"{"sample_above_rps":10000001}"#, "sample_above_rps"),
            (r#"{"heartbeat_interval_ms":99}"#, "heartbeat_interval_ms"),
            (r#"{"report_mode":"singleton"}"#, "report_mode"),
            (
                r#"{"controller_cluster":"c","flush_interval":1000}"#,
                "flush_interval",
            ),
        ];
        for (doc, field) in cases {
            let err = parse(doc).expect_err(doc);
            assert_eq!(err.field(), Some(field), "{doc}: {err}");
            assert!(err.to_string().contains(field), "{doc}: message `{err}`");
        }
    }

    #[test]
    fn empty_configuration_reports_to_the_istio_service() {
        for doc in ["", "  ", "{}"] {
            let c = parse(doc).unwrap();
            assert_eq!(c, Config::default(), "{doc:?}");
            assert_eq!(c.controller_cluster, DEFAULT_CONTROLLER_CLUSTER);
        }
        assert_eq!(
            Config::default().authority(),
            "meshtune-controller.meshtune-system.svc.cluster.local:50051"
        );
    }

    #[test]
    fn syntax_and_shape_errors() {
        assert!(matches!(parse("{"), Err(ConfigError::Syntax(_))));
        assert_eq!(parse("[1]"), Err(ConfigError::NotObject));
        let unknown = parse(r#"{"controller_cluster":"c","bogus":1}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field `bogus`"));
    }

    #[test]
    fn range_bounds_are_inclusive() {
        let c = parse(
            r#"{"controller_cluster":"c","flush_interval_ms":100,"report_timeout_ms":60000}"#,
        )
        .unwrap();
        assert_eq!((c.flush_interval_ms, c.report_timeout_ms), (100, 60000));
    }
}
