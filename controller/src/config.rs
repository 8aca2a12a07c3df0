//! Controller configuration: one [`Config`] struct with documented fields and `DEFAULT_*` consts.

use std::path::PathBuf;
use std::time::Duration;

/// Default gRPC ingest address (`meshtune.v1.FeatureService`).
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:18000";
/// Default admin HTTP address (`/healthz`, `/readyz`, `/metrics`, `/api/destinations`).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:18001";
/// Shortest sliding window: filters report once a second, so a 1 s window holds the current
/// second's reports only and is empty about half the time.
pub const MIN_WINDOW_SECS: u64 = 2;
/// Default sliding window length in seconds.
pub const DEFAULT_WINDOW_SECS: u64 = 10;
/// Default largest number of upstream windows in one report: the filter's `max_upstreams`
/// bound, one shared constant ([`meshtune_proto::MAX_UPSTREAMS_PER_REPORT`]).
pub const DEFAULT_MAX_UPSTREAMS_PER_REPORT: usize =
    meshtune_proto::MAX_UPSTREAMS_PER_REPORT as usize;
/// Default longest cluster name (bytes) and reporter identity field.
pub const DEFAULT_MAX_NAME_LEN: usize = 512;
/// Default longest accepted report window (5 minutes).
pub const DEFAULT_MAX_WINDOW_LENGTH_MS: u32 = 300_000;
/// Default largest number of tracked destinations.
pub const DEFAULT_MAX_DESTINATIONS: usize = 10_000;
/// Default memory budget of the aggregates (approximate heap bytes of all destinations'
/// windows, histograms and names): with the other bounds it keeps the controller within the
/// Deployment's 512 MiB limit (README, "Bounded ingest").
pub const DEFAULT_MAX_AGGREGATE_BYTES: usize = 64 << 20;
/// Default largest number of tracked reporters (for sequence de-duplication).
pub const DEFAULT_MAX_REPORTERS: usize = 100_000;
/// Default idle time after which a destination (window and lifetime totals) is forgotten.
pub const DEFAULT_DESTINATION_IDLE_SECS: u64 = 3600;
/// Default idle time after which a reporter's de-duplication state is forgotten.
pub const DEFAULT_REPORTER_IDLE_SECS: u64 = 600;
/// Default largest accepted encoded ReportRequest, in bytes: the largest legitimate report
/// (`validate::Limits::max_encoded_report_bytes` of the default limits: 256 windows of the
/// largest valid size, ~1.9 MiB), checked equal by a test.
pub const DEFAULT_MAX_REPORT_BYTES: usize = 2_026_049;
/// Default interval at which the hints file's mtime is checked.
pub const DEFAULT_HINTS_POLL: Duration = Duration::from_millis(500);

/// Everything the controller needs to run. Build it with [`Config::default`] and override.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sliding window length in seconds (≥ 1) used for `window` stats and the policy snapshot.
    pub window_secs: u64,
    /// Largest accepted encoded ReportRequest in bytes (validation refuses larger ones with
    /// INVALID_ARGUMENT). The gRPC decode limit is the largest legitimate report for the
    /// other limits ([`crate::validate::Limits::max_encoded_report_bytes`]); tonic refuses
    /// anything above it with OUT_OF_RANGE before decoding.
    pub max_report_bytes: usize,
    /// Largest number of upstream windows in one report.
    pub max_upstreams_per_report: usize,
    /// Longest cluster name and reporter identity field, in bytes.
    pub max_name_len: usize,
    /// Longest accepted `window_length_ms`.
    pub max_window_length_ms: u32,
    /// Largest number of destinations tracked at once; upstreams for new destinations beyond
    /// it are dropped (counted in `meshtune_destinations_dropped_total`) until some expire.
    pub max_destinations: usize,
    /// Largest number of reporters tracked for de-duplication (and report rate).
    pub max_reporters: usize,
    /// Memory budget of the aggregates, bytes; over it the least recently reported
    /// destinations are evicted (one-time names first).
    pub max_aggregate_bytes: usize,
    /// A destination without reports for this long is forgotten (lifetime totals included).
    pub destination_idle_secs: u64,
    /// A reporter without reports for this long is forgotten.
    pub reporter_idle_secs: u64,
    /// Optional JSON hints file (see [`crate::hints`]); reloaded when its mtime changes.
    pub hints_file: Option<PathBuf>,
    /// How often the hints file's mtime is checked.
    pub hints_poll: Duration,
    /// Reports received, decoded and handled at once across all connections.
    pub max_concurrent_reports: usize,
    /// Concurrent HTTP/2 streams per gRPC connection.
    pub max_streams_per_connection: u32,
    /// Time limit of one gRPC request.
    pub request_timeout: Duration,
    /// Sustained reports per second accepted per reporter (≤ 0: no limit); the excess is
    /// refused with RESOURCE_EXHAUSTED and counted in `meshtune_reports_rate_limited_total`.
    pub reports_per_sec: f64,
    /// Reports a reporter may send at once above its rate.
    pub report_burst: f64,
    /// The filter module served at `/filter.wasm` and described at `/api/filter`; `None`
    /// answers both with 404 (see `--filter-wasm`).
    pub filter_module: Option<crate::admin::FilterModule>,
    /// How reporters are authenticated ([`crate::identity`]). The library default is
    /// `None`; the `meshtune controller` command requires choosing a mode explicitly.
    pub auth: crate::identity::AuthMode,
    /// TLS for the gRPC port (required with [`crate::identity::AuthMode::ClientCert`]).
    pub tls: Option<TlsPem>,
}

/// PEM contents of the gRPC port's TLS files (`--tls-cert`, `--tls-key`, `--client-ca`).
#[derive(Clone)]
pub struct TlsPem {
    /// Server certificate chain.
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
    /// CA bundle client certificates must chain to.
    pub client_ca: Vec<u8>,
}

impl std::fmt::Debug for TlsPem {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("cert_bytes", &self.cert.len())
            .field("client_ca_bytes", &self.client_ca.len())
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window_secs: DEFAULT_WINDOW_SECS,
            max_report_bytes: DEFAULT_MAX_REPORT_BYTES,
            max_upstreams_per_report: DEFAULT_MAX_UPSTREAMS_PER_REPORT,
            max_name_len: DEFAULT_MAX_NAME_LEN,
            max_window_length_ms: DEFAULT_MAX_WINDOW_LENGTH_MS,
            max_destinations: DEFAULT_MAX_DESTINATIONS,
            max_reporters: DEFAULT_MAX_REPORTERS,
            max_aggregate_bytes: DEFAULT_MAX_AGGREGATE_BYTES,
            destination_idle_secs: DEFAULT_DESTINATION_IDLE_SECS,
            reporter_idle_secs: DEFAULT_REPORTER_IDLE_SECS,
            hints_file: None,
            hints_poll: DEFAULT_HINTS_POLL,
            max_concurrent_reports: crate::ingest::DEFAULT_MAX_CONCURRENT_REPORTS,
            max_streams_per_connection: crate::ingest::DEFAULT_MAX_STREAMS_PER_CONNECTION,
            request_timeout: crate::ingest::DEFAULT_REQUEST_TIMEOUT,
            reports_per_sec: crate::ingest::DEFAULT_REPORTS_PER_SEC,
            report_burst: crate::ingest::DEFAULT_REPORT_BURST,
            filter_module: None,
            auth: crate::identity::AuthMode::None,
            tls: None,
        }
    }
}

impl Config {
    /// The aggregation bounds derived from this config.
    pub fn aggregate_limits(&self) -> crate::aggregate::Limits {
        crate::aggregate::Limits {
            window_secs: self.window_secs.max(1),
            max_destinations: self.max_destinations,
            max_reporters: self.max_reporters,
            destination_idle_ms: self.destination_idle_secs.saturating_mul(1000),
            reporter_idle_ms: self.reporter_idle_secs.saturating_mul(1000),
            max_bytes: self.max_aggregate_bytes,
        }
    }

    /// The validation bounds derived from this config.
    pub fn validation_limits(&self) -> crate::validate::Limits {
        crate::validate::Limits {
            max_report_bytes: self.max_report_bytes,
            max_upstreams: self.max_upstreams_per_report,
            max_name_len: self.max_name_len,
            max_window_length_ms: self.max_window_length_ms,
        }
    }
}
