//! The filter's JSON configuration (same schema for the HTTP filter and the reporter service),
//! validated field by field so every error names the offending field.

use serde_json::{Map, Value};

/// Default gRPC flush (report) interval.
pub const DEFAULT_FLUSH_INTERVAL_MS: u32 = 1000;
/// Default timeout of one Report call.
pub const DEFAULT_REPORT_TIMEOUT_MS: u32 = 500;
/// Default namespace reported when neither config nor node metadata name one.
pub use meshtune_core::DEFAULT_NAMESPACE;
/// Default bound on tracked upstream clusters per VM.
pub const DEFAULT_MAX_UPSTREAMS: u32 = 256;
/// Default bound on worker windows buffered by the reporter between flushes.
pub const DEFAULT_MAX_QUEUED_WINDOWS: u32 = 64;

/// Allowed range of `flush_interval_ms`.
pub const FLUSH_INTERVAL_RANGE: (u64, u64) = (100, 60_000);
/// Allowed range of `report_timeout_ms`.
pub const REPORT_TIMEOUT_RANGE: (u64, u64) = (10, 60_000);
/// Allowed range of `max_upstreams`.
pub const MAX_UPSTREAMS_RANGE: (u64, u64) = (1, 65_535);
/// Allowed range of `max_queued_windows`.
pub const MAX_QUEUED_WINDOWS_RANGE: (u64, u64) = (1, 100_000);

/// Field names accepted in the configuration object.
pub const FIELDS: [&str; 9] = [
    "controller_cluster",
    "controller_authority",
    "flush_interval_ms",
    "report_timeout_ms",
    "namespace",
    "workload",
    "pod",
    "max_upstreams",
    "max_queued_windows",
];

/// Validated filter / reporter configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Envoy cluster of the controller's gRPC endpoint (required, non-empty).
    pub controller_cluster: String,
    /// `:authority` of the Report call; empty means the cluster name.
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
    /// Most worker windows the reporter buffers between two flushes (oldest dropped).
    pub max_queued_windows: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            controller_cluster: String::new(),
            controller_authority: String::new(),
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
            report_timeout_ms: DEFAULT_REPORT_TIMEOUT_MS,
            namespace: String::new(),
            workload: String::new(),
            pod: String::new(),
            max_upstreams: DEFAULT_MAX_UPSTREAMS,
            max_queued_windows: DEFAULT_MAX_QUEUED_WINDOWS,
        }
    }
}

/// Why a configuration was refused. Every variant names the field (or the document).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration is empty: field `controller_cluster` is required")]
    Empty,
    #[error("configuration is not valid JSON: {0}")]
    Syntax(String),
    #[error("configuration must be a JSON object")]
    NotObject,
    #[error("unknown field `{0}` (known fields: {known})", known = FIELDS.join(", "))]
    UnknownField(String),
    #[error("field `{0}` is required")]
    Missing(&'static str),
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
            ConfigError::Empty => Some("controller_cluster"),
            ConfigError::Syntax(_) | ConfigError::NotObject => None,
            ConfigError::UnknownField(f) => Some(f),
            ConfigError::Missing(f)
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
    /// Parses and validates a configuration document (the plugin configuration bytes).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::Empty);
        }
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let obj = doc.as_object().ok_or(ConfigError::NotObject)?;
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ConfigError::UnknownField(unknown.clone()));
        }
        let d = Config::default();
        let controller_cluster = string_field(obj, "controller_cluster")?
            .ok_or(ConfigError::Missing("controller_cluster"))?;
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
        })
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
        assert_eq!(c.flush_interval_ms, DEFAULT_FLUSH_INTERVAL_MS);
        assert_eq!(c.report_timeout_ms, DEFAULT_REPORT_TIMEOUT_MS);
        assert_eq!(c.max_upstreams, DEFAULT_MAX_UPSTREAMS);
        assert_eq!(c.max_queued_windows, DEFAULT_MAX_QUEUED_WINDOWS);
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
                "max_upstreams":3,"max_queued_windows":5}"#,
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
            }
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("", "controller_cluster"),
            ("{}", "controller_cluster"),
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
                r#"{"controller_cluster":"c","max_queued_windows":0}"#,
                "max_queued_windows",
            ),
            (r#"{"controller_cluster":"c","pod":1}"#, "pod"),
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
