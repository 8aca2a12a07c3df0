//! Prometheus as a feature source: per destination and window, the same
//! [`WindowStats`] the filter reports, built from the metrics a mesh already has, through the
//! Prometheus HTTP API (`/api/v1/query`, `/api/v1/query_range`) with `reqwest`.
//!
//! Two metric families are read; every query is `increase(...[W])` (or `avg_over_time` /
//! `max_over_time` for the gauge) over the decision window `W`, summed per destination:
//!
//! - **Istio standard metrics** (reporter `--prometheus-reporter`, default `source`, the client
//!   side, like the filter): `istio_requests_total` by `destination_service`, `response_code`
//!   and `response_flags` (requests, status classes, `UO`, `UT`, `UF`/`UC`/`URX`),
//!   `istio_request_duration_milliseconds_bucket` (latency histogram),
//!   `istio_request_bytes_sum` / `istio_response_bytes_sum`. Such a destination is named
//!   `outbound|||HOST` (an Istio cluster name without port: `Naming::IstioHost` maps it to
//!   `HOST`), or by the first Envoy cluster of that host when Envoy statistics are scraped.
//! - **Envoy cluster statistics** where scraped (Istio's `cluster_name` label or plain Envoy's
//!   `envoy_cluster_name`): `envoy_cluster_upstream_rq_retry` (retries),
//!   `envoy_cluster_upstream_rq_active` (in-flight average and peak),
//!   `envoy_cluster_upstream_rq_pending_overflow` (UO). For a cluster of a host with Istio
//!   series these add retries and in-flight; a cluster without Istio series (plain Envoy) is a
//!   destination of its own, its counts from `envoy_cluster_upstream_rq_total`,
//!   `envoy_cluster_upstream_rq_xx`, `envoy_cluster_upstream_rq_time_bucket`,
//!   `envoy_cluster_upstream_rq_timeout` and `envoy_cluster_upstream_cx_connect_fail`.
//!   `inbound|…` clusters are skipped.
//!
//! What neither family gives is marked missing in the window's
//! [`meshtune_core::availability::Availability`] (always: HTTP version, local shedding; without
//! Envoy statistics: retries and in-flight), and the policy input falls back as documented in
//! `meshtune_core::availability`. Counts are `increase()` values rounded to integers;
//! `increase()` extrapolates to the window's edges, so a count is exact only to about one
//! scrape interval's share of the window. Histogram buckets are spread evenly inside each
//! bucket's bounds (as `histogram_quantile` interpolates); the `+Inf` bucket sits at the last
//! finite bound.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshtune_core::availability::{Availability, Field};
use meshtune_core::{LatencyHistogram, WindowStats};
use serde::Deserialize;

/// Default Istio `reporter` label the source reads (`source`: the client sidecar's view).
pub const DEFAULT_REPORTER: &str = "source";
/// Default window of the Prometheus source (several scrape intervals of a typical 15 s).
pub const DEFAULT_WINDOW_SECS: u64 = 60;
/// Default timeout of one Prometheus API call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the Prometheus source; each names the server, the query or the flag.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("--prometheus-url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("prometheus {url}: query `{query}`: {reason}")]
    Query {
        url: String,
        query: String,
        reason: String,
    },
    #[error("{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
}

/// One destination's window from Prometheus.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedWindow {
    /// Cluster name (see the module docs for Istio-only destinations: `outbound|||HOST`).
    pub cluster: String,
    pub stats: WindowStats,
    /// Fields Prometheus could not give.
    pub availability: Availability,
}

/// A Prometheus server to read features from.
#[derive(Debug, Clone)]
pub struct PromSource {
    client: reqwest::Client,
    base: String,
    reporter: String,
}

/// When to evaluate: one window ending now (or at `time`), or every `step` in a range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Eval {
    /// One window of `window_secs` ending at `time` (unix seconds).
    Instant { time: f64, window_secs: u64 },
    /// Windows of `step_secs` ending at every step from `start` to `end` (unix seconds).
    Range {
        start: f64,
        end: f64,
        step_secs: u64,
    },
}

impl Eval {
    fn window_secs(&self) -> u64 {
        match self {
            Eval::Instant { window_secs, .. } => *window_secs,
            Eval::Range { step_secs, .. } => *step_secs,
        }
    }
}

/// One series of a query answer at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: HashMap<String, String>,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

/// The queries, in the order [`build_windows`] expects their answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Q {
    IstioRequests,
    IstioDuration,
    IstioRequestBytes,
    IstioResponseBytes,
    EnvoyTotal,
    EnvoyXx,
    EnvoyTime,
    EnvoyRetry,
    EnvoyOverflow,
    EnvoyTimeout,
    EnvoyConnectFail,
    EnvoyActiveAvg,
    EnvoyActiveMax,
}

const QUERIES: [Q; 13] = [
    Q::IstioRequests,
    Q::IstioDuration,
    Q::IstioRequestBytes,
    Q::IstioResponseBytes,
    Q::EnvoyTotal,
    Q::EnvoyXx,
    Q::EnvoyTime,
    Q::EnvoyRetry,
    Q::EnvoyOverflow,
    Q::EnvoyTimeout,
    Q::EnvoyConnectFail,
    Q::EnvoyActiveAvg,
    Q::EnvoyActiveMax,
];

const CLUSTER_BY: &str = "cluster_name, envoy_cluster_name";

/// The PromQL of query `q` for reporter `reporter` over `w` seconds.
pub fn promql(q: Q, reporter: &str, w: u64) -> String {
    let istio = |metric: &str, by: &str| {
        format!("sum by ({by}) (increase({metric}{{reporter=\"{reporter}\"}}[{w}s]))")
    };
    let envoy = |metric: &str, extra: &str| {
        format!("sum by ({CLUSTER_BY}{extra}) (increase({metric}[{w}s]))")
    };
    match q {
        Q::IstioRequests => istio(
            "istio_requests_total",
            "destination_service, response_code, response_flags",
        ),
        Q::IstioDuration => istio(
            "istio_request_duration_milliseconds_bucket",
            "destination_service, le",
        ),
        Q::IstioRequestBytes => istio("istio_request_bytes_sum", "destination_service"),
        Q::IstioResponseBytes => istio("istio_response_bytes_sum", "destination_service"),
        Q::EnvoyTotal => envoy("envoy_cluster_upstream_rq_total", ""),
        Q::EnvoyXx => envoy(
            "envoy_cluster_upstream_rq_xx",
            ", envoy_response_code_class, response_code_class",
        ),
        Q::EnvoyTime => envoy("envoy_cluster_upstream_rq_time_bucket", ", le"),
        Q::EnvoyRetry => envoy("envoy_cluster_upstream_rq_retry", ""),
        Q::EnvoyOverflow => envoy("envoy_cluster_upstream_rq_pending_overflow", ""),
        Q::EnvoyTimeout => envoy("envoy_cluster_upstream_rq_timeout", ""),
        Q::EnvoyConnectFail => envoy("envoy_cluster_upstream_cx_connect_fail", ""),
        Q::EnvoyActiveAvg => {
            format!("sum by ({CLUSTER_BY}) (avg_over_time(envoy_cluster_upstream_rq_active[{w}s]))")
        }
        Q::EnvoyActiveMax => {
            format!("sum by ({CLUSTER_BY}) (max_over_time(envoy_cluster_upstream_rq_active[{w}s]))")
        }
    }
}

#[derive(Deserialize)]
struct ApiAnswer {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum ApiData {
    Vector(Vec<VectorSeries>),
    Matrix(Vec<MatrixSeries>),
    Scalar(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct VectorSeries {
    metric: HashMap<String, String>,
    value: (f64, String),
}

#[derive(Deserialize)]
struct MatrixSeries {
    metric: HashMap<String, String>,
    values: Vec<(f64, String)>,
}

/// Answers of one query, by evaluation time (unix milliseconds).
type Answers = BTreeMap<i64, Vec<Sample>>;

fn ts_ms(t: f64) -> i64 {
    (t * 1000.0).round() as i64
}

impl PromSource {
    /// A source reading `url` (e.g. `http://prometheus:9090`), Istio series of `reporter`.
    pub fn new(url: &str, reporter: &str, timeout: Duration) -> Result<Self, PromError> {
        let bad = |reason: String| PromError::Url {
            url: url.to_string(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("expected an http:// or https:// URL".into()));
        }
        if reporter.is_empty() || reporter.contains(['"', '\\']) {
            return Err(PromError::Flag {
                flag: "--prometheus-reporter",
                reason: format!("`{reporter}` is not a plain label value"),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            client,
            base: url.trim_end_matches('/').to_string(),
            reporter: reporter.to_string(),
        })
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Runs one PromQL query at `eval`'s time(s).
    pub async fn query(&self, query: &str, eval: Eval) -> Result<Answers, PromError> {
        let err = |reason: String| PromError::Query {
            url: self.base.clone(),
            query: query.to_string(),
            reason,
        };
        let req = match eval {
            Eval::Instant { time, .. } => self
                .client
                .post(format!("{}/api/v1/query", self.base))
                .form(&[("query", query.to_string()), ("time", format!("{time:.3}"))]),
            Eval::Range {
                start,
                end,
                step_secs,
            } => self
                .client
                .post(format!("{}/api/v1/query_range", self.base))
                .form(&[
                    ("query", query.to_string()),
                    ("start", format!("{start:.3}")),
                    ("end", format!("{end:.3}")),
                    ("step", format!("{step_secs}s")),
                ]),
        };
        let resp = req.send().await.map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| err(e.to_string()))?;
        let answer: ApiAnswer = serde_json::from_slice(&body).map_err(|e| {
            err(format!(
                "HTTP {status}: not a Prometheus API answer ({e}): {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
        })?;
        if answer.status != "success" {
            return Err(err(format!(
                "HTTP {status}: {}",
                answer.error.unwrap_or_else(|| answer.status.clone())
            )));
        }
        let mut out = Answers::new();
        let num = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
        match answer.data {
            Some(ApiData::Vector(v)) => {
                for s in v {
                    if let Some(value) = num(&s.value.1) {
                        out.entry(ts_ms(s.value.0)).or_default().push(Sample {
                            labels: s.metric,
                            value,
                        });
                    }
                }
            }
            Some(ApiData::Matrix(m)) => {
                for s in m {
                    for (t, v) in &s.values {
                        if let Some(value) = num(v) {
                            out.entry(ts_ms(*t)).or_default().push(Sample {
                                labels: s.metric.clone(),
                                value,
                            });
                        }
                    }
                }
            }
            Some(ApiData::Scalar(_)) | Some(ApiData::String(_)) | None => {
                return Err(err("expected a vector or matrix result".into()))
            }
        }
        Ok(out)
    }

    /// The windows of every destination at `eval`'s time(s), by evaluation time (unix ms).
    pub async fn windows(
        &self,
        eval: Eval,
    ) -> Result<BTreeMap<i64, Vec<SourcedWindow>>, PromError> {
        let w = eval.window_secs().max(1);
        let answers =
            futures::future::join_all(QUERIES.iter().map(|q| async move {
                (*q, self.query(&promql(*q, &self.reporter, w), eval).await)
            }))
            .await;
        let mut by_time: BTreeMap<i64, HashMap<Q, Vec<Sample>>> = BTreeMap::new();
        for (q, answer) in answers {
            for (t, samples) in answer? {
                by_time.entry(t).or_default().insert(q, samples);
            }
        }
        Ok(by_time
            .into_iter()
            .map(|(t, answers)| (t, build_windows(&answers, w as f64)))
            .collect())
    }

    /// The windows ending at `time` (unix seconds) over `window_secs`.
    pub async fn windows_at(
        &self,
        time: f64,
        window_secs: u64,
    ) -> Result<Vec<SourcedWindow>, PromError> {
        Ok(self
            .windows(Eval::Instant { time, window_secs })
            .await?
            .into_values()
            .next()
            .unwrap_or_default())
    }
}

/// The current time in unix seconds.
pub fn now_unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Parses a time flag: unix seconds, `now`, or `now-N{s,m,h,d}`.
pub fn parse_time(flag: &'static str, s: &str, now: f64) -> Result<f64, PromError> {
    let bad = || PromError::Flag {
        flag,
        reason: format!("`{s}`: expected unix seconds, `now` or `now-N` with s, m, h or d"),
    };
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Some(rest) = s.strip_prefix("now-") {
        let d = parse_duration_secs(rest).ok_or_else(bad)?;
        return Ok(now - d);
    }
    s.parse::<f64>()
        .ok()
        .filter(|t| t.is_finite() && *t >= 0.0)
        .ok_or_else(bad)
}

/// `30s`, `5m`, `2h`, `1d` or plain seconds.
pub fn parse_duration_secs(s: &str) -> Option<f64> {
    let (num, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1.0),
        'm' => (&s[..s.len() - 1], 60.0),
        'h' => (&s[..s.len() - 1], 3600.0),
        'd' => (&s[..s.len() - 1], 86400.0),
        _ => (s, 1.0),
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|v| v * mult)
}

fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

/// The cluster name of an Envoy statistics sample (Istio's or plain Envoy's label).
fn cluster_of(s: &Sample) -> &str {
    match s.label("cluster_name") {
        "" => s.label("envoy_cluster_name"),
        c => c,
    }
}

/// Cumulative `le` buckets (ms) → a latency histogram, counts spread evenly in each bucket.
pub fn histogram_from_buckets(buckets: &[(f64, f64)]) -> LatencyHistogram {
    const SPREAD: u64 = 16;
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut h = LatencyHistogram::new();
    let (mut lo, mut below) = (0.0f64, 0.0f64);
    for (le, cum) in b {
        let n = count(cum - below);
        below = below.max(cum);
        if le.is_infinite() {
            h.record_n((lo * 1000.0) as u64, n);
            continue;
        }
        // Spread n over SPREAD points inside (lo, le]; the remainder goes to the first points.
        let points = SPREAD.min(n.max(1));
        for j in 0..points {
            let share = n / points + u64::from(j < n % points);
            let at_ms = lo + (le - lo) * (j as f64 + 0.5) / points as f64;
            h.record_n((at_ms * 1000.0).round() as u64, share);
        }
        lo = le;
    }
    h
}

#[derive(Default)]
struct Acc {
    stats: WindowStats,
    buckets: Vec<(f64, f64)>,
    have_latency: bool,
    have_retries: bool,
    have_inflight: bool,
    have_overflow: bool,
    have_timeout: bool,
    have_connect: bool,
    have_bytes: bool,
    have_status: bool,
    cluster: Option<String>,
}

fn le_of(s: &Sample) -> Option<f64> {
    match s.label("le") {
        "+Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// Builds the windows from one evaluation's answers (pure; `window_secs` is the duration).
pub fn build_windows(answers: &HashMap<Q, Vec<Sample>>, window_secs: f64) -> Vec<SourcedWindow> {
    let get = |q: Q| answers.get(&q).map(Vec::as_slice).unwrap_or(&[]);
    // Istio destinations, by host.
    let mut istio: BTreeMap<String, Acc> = BTreeMap::new();
    for s in get(Q::IstioRequests) {
        let host = s.label("destination_service");
        if host.is_empty() || host == "unknown" {
            continue;
        }
        let a = istio.entry(host.to_string()).or_default();
        let n = count(s.value);
        a.stats.requests += n;
        a.have_status = true;
        match s.label("response_code").parse::<u16>().unwrap_or(0) / 100 {
            2 => a.stats.status_2xx += n,
            4 => a.stats.status_4xx += n,
            5 => a.stats.status_5xx += n,
            _ => a.stats.status_other += n,
        }
        let flags = s.label("response_flags");
        let has = |f: &str| flags.split(',').any(|x| x == f);
        if has("UO") {
            a.stats.flag_uo += n;
        }
        if has("UT") {
            a.stats.flag_ut += n;
        }
        if has("UF") || has("UC") || has("URX") {
            a.stats.flag_conn_failure += n;
        }
    }
    for s in get(Q::IstioDuration) {
        if let (Some(a), Some(le)) = (istio.get_mut(s.label("destination_service")), le_of(s)) {
            a.buckets.push((le, s.value));
            a.have_latency = true;
        }
    }
    for (q, resp) in [(Q::IstioRequestBytes, false), (Q::IstioResponseBytes, true)] {
        for s in get(q) {
            if let Some(a) = istio.get_mut(s.label("destination_service")) {
                a.have_bytes = true;
                if resp {
                    a.stats.response_bytes += count(s.value);
                } else {
                    a.stats.request_bytes += count(s.value);
                }
            }
        }
    }
    // Envoy clusters: those of an Istio host add to it, the others are destinations.
    let mut envoy: BTreeMap<String, Acc> = BTreeMap::new();
    let target = |istio: &mut BTreeMap<String, Acc>, cluster: &str| -> Option<(bool, String)> {
        if cluster.is_empty() || cluster.starts_with("inbound|") {
            return None;
        }
        match meshtune_sinks::host_from_cluster_name(cluster) {
            Some(host) if istio.contains_key(host) => {
                let a = istio.get_mut(host)?;
                a.cluster.get_or_insert_with(|| cluster.to_string());
                Some((true, host.to_string()))
            }
            _ => Some((false, cluster.to_string())),
        }
    };
    for q in [
        Q::EnvoyTotal,
        Q::EnvoyXx,
        Q::EnvoyTime,
        Q::EnvoyRetry,
        Q::EnvoyOverflow,
        Q::EnvoyTimeout,
        Q::EnvoyConnectFail,
        Q::EnvoyActiveAvg,
        Q::EnvoyActiveMax,
    ] {
        for s in get(q) {
            let Some((is_istio, key)) = target(&mut istio, cluster_of(s)) else {
                continue;
            };
            let a = if is_istio {
                // Istio series give counts, status and latency; Envoy adds what they lack.
                if !matches!(q, Q::EnvoyRetry | Q::EnvoyActiveAvg | Q::EnvoyActiveMax) {
                    continue;
                }
                istio.get_mut(&key)
            } else {
                Some(envoy.entry(key).or_default())
            };
            let Some(a) = a else { continue };
            let st = &mut a.stats;
            match q {
                Q::EnvoyTotal => st.requests += count(s.value),
                Q::EnvoyXx => {
                    a.have_status = true;
                    let class = match s.label("envoy_response_code_class") {
                        "" => s.label("response_code_class"),
                        c => c,
                    };
                    let n = count(s.value);
                    match class.chars().next() {
                        Some('2') => st.status_2xx += n,
                        Some('4') => st.status_4xx += n,
                        Some('5') => st.status_5xx += n,
                        _ => st.status_other += n,
                    }
                }
                Q::EnvoyTime => {
                    if let Some(le) = le_of(s) {
                        a.buckets.push((le, s.value));
                        a.have_latency = true;
                    }
                }
                Q::EnvoyRetry => {
                    st.retries += count(s.value);
                    a.have_retries = true;
                }
                Q::EnvoyOverflow => {
                    st.flag_uo += count(s.value);
                    a.have_overflow = true;
                }
                Q::EnvoyTimeout => {
                    st.flag_ut += count(s.value);
                    a.have_timeout = true;
                }
                Q::EnvoyConnectFail => {
                    st.flag_conn_failure += count(s.value);
                    a.have_connect = true;
                }
                Q::EnvoyActiveAvg => {
                    st.inflight_avg += s.value.max(0.0);
                    a.have_inflight = true;
                }
                Q::EnvoyActiveMax => {
                    st.inflight_max += count(s.value.ceil());
                    a.have_inflight = true;
                }
                _ => {}
            }
        }
    }
    let finish = |cluster: String, mut a: Acc, istio_series: bool| -> SourcedWindow {
        a.stats.duration_s = window_secs;
        a.stats.latency = histogram_from_buckets(&a.buckets);
        let mut av = Availability::COMPLETE
            .without(Field::Protocol)
            .without(Field::Shed);
        let mut mark = |have: bool, f: Field| {
            if !have {
                av = av.without(f);
            }
        };
        mark(a.have_latency, Field::Latency);
        mark(a.have_status, Field::StatusClasses);
        mark(a.have_retries, Field::Retries);
        mark(a.have_inflight, Field::Inflight);
        mark(a.have_bytes, Field::Bytes);
        if !istio_series {
            mark(a.have_overflow, Field::FlagUo);
            mark(a.have_timeout, Field::FlagUt);
            mark(a.have_connect, Field::FlagConnFailure);
        }
        SourcedWindow {
            cluster,
            stats: a.stats,
            availability: av,
        }
    };
    let mut out: Vec<SourcedWindow> = Vec::with_capacity(istio.len() + envoy.len());
    for (host, mut a) in istio {
        let cluster = a
            .cluster
            .take()
            .unwrap_or_else(|| format!("outbound|||{host}"));
        out.push(finish(cluster, a, true));
    }
    for (cluster, a) in envoy {
        out.push(finish(cluster, a, false));
    }
    out
}

/// Where `meshtune record` reads history from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecordFrom {
    /// A Prometheus server (`--prometheus-url`).
    Prometheus,
}

/// Flags of `meshtune record`.
#[derive(Debug, Clone, clap::Args)]
pub struct RecordArgs {
    /// History source.
    #[arg(long, value_enum)]
    pub from: RecordFrom,
    /// Prometheus server (e.g. http://127.0.0.1:9090).
    #[arg(long)]
    pub prometheus_url: String,
    /// Istio `reporter` label to read (`source`: the client side).
    #[arg(long, default_value = DEFAULT_REPORTER)]
    pub prometheus_reporter: String,
    /// First window end: unix seconds, `now` or `now-N{s,m,h,d}`.
    #[arg(long)]
    pub start: String,
    /// Last window end (same forms as --start).
    #[arg(long, default_value = "now")]
    pub end: String,
    /// Window length and step (`30s`, `1m`, or seconds); one row per destination and step.
    #[arg(long, default_value = "60s")]
    pub step: String,
    /// Dataset CSV to append to (created with the header when new; an existing file must
    /// carry the same header).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// `scenario` column of the rows.
    #[arg(long, default_value = "")]
    pub scenario: String,
    /// Latency SLO in ms for the outcome columns.
    #[arg(long, default_value_t = crate::decision::DEFAULT_SLO_MS)]
    pub slo_ms: f64,
    /// Skip windows with fewer requests.
    #[arg(long, default_value_t = 1)]
    pub min_requests: u64,
}

/// `source` column of rows recorded from Prometheus.
pub const PROMETHEUS_SOURCE: &str = "prometheus";

/// Largest number of steps per range query (Prometheus refuses more than 11,000 points).
const MAX_STEPS_PER_QUERY: u64 = 10_000;

/// What `meshtune record` wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordSummary {
    pub rows: usize,
    pub windows: usize,
    pub destinations: usize,
    /// Features that used a fallback in some row (see `meshtune_core::availability`).
    pub missing_features: Vec<&'static str>,
    /// Windows skipped because they were not decidable (no status or latency series).
    pub undecidable: usize,
}

/// Errors of `meshtune record`.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Prometheus(#[from] PromError),
    #[error("--out: {0}")]
    Out(#[from] crate::recorder::RecorderError),
}

/// Dataset rows of one evaluation's windows (pure): features with the documented fallbacks,
/// Istio's default knobs (Prometheus does not know the knobs in force; the state features say
/// the same: defaults, never changed, one client), outcomes of the window.
pub fn dataset_rows(
    windows: &[SourcedWindow],
    unix_secs: u64,
    scenario: &str,
    slo_ms: f64,
    min_requests: u64,
) -> Vec<meshtune_core::dataset::DatasetRow> {
    windows
        .iter()
        .filter(|w| w.availability.decidable() && w.stats.requests >= min_requests.max(1))
        .map(|w| {
            let stats = meshtune_core::availability::policy_stats(&w.stats, w.availability);
            let destination = crate::decision::Naming::IstioHost
                .destination(&w.cluster)
                .map(|(d, _)| d)
                .unwrap_or_else(|| w.cluster.clone());
            meshtune_core::dataset::DatasetRow {
                source: PROMETHEUS_SOURCE.into(),
                scenario: scenario.to_string(),
                destination,
                window: unix_secs,
                features: stats.features(&meshtune_core::Context::initial(slo_ms)),
                knobs: meshtune_core::Knobs::istio_defaults(),
                outcomes: crate::decision::outcomes(&stats, slo_ms),
            }
        })
        .collect()
}

/// `meshtune record --from prometheus`: range queries from `--start` to `--end` every
/// `--step`, one dataset row per destination and step, appended to `--out`.
pub async fn record(args: &RecordArgs) -> Result<RecordSummary, RecordError> {
    let RecordFrom::Prometheus = args.from;
    let now = now_unix_secs();
    let start = parse_time("--start", &args.start, now)?;
    let end = parse_time("--end", &args.end, now)?;
    let step = parse_duration_secs(&args.step)
        .filter(|s| s.fract() == 0.0)
        .ok_or_else(|| PromError::Flag {
            flag: "--step",
            reason: format!("`{}`: expected whole seconds like 30s, 5m or 60", args.step),
        })? as u64;
    if end < start {
        return Err(PromError::Flag {
            flag: "--end",
            reason: format!("{end} is before --start {start}"),
        }
        .into());
    }
    let src = PromSource::new(
        &args.prometheus_url,
        &args.prometheus_reporter,
        DEFAULT_TIMEOUT,
    )?;
    let mut recorder = crate::recorder::Recorder::open(&args.out)?;
    let mut summary = RecordSummary::default();
    let mut destinations = std::collections::BTreeSet::new();
    let mut missing = std::collections::BTreeSet::new();
    let mut from = start;
    while from <= end {
        let to = (from + (MAX_STEPS_PER_QUERY - 1) as f64 * step as f64).min(end);
        let by_time = src
            .windows(Eval::Range {
                start: from,
                end: to,
                step_secs: step,
            })
            .await?;
        for (t_ms, windows) in by_time {
            let rows = dataset_rows(
                &windows,
                (t_ms / 1000) as u64,
                &args.scenario,
                args.slo_ms,
                args.min_requests,
            );
            summary.undecidable += windows
                .iter()
                .filter(|w| !w.availability.decidable())
                .count();
            for w in windows.iter().filter(|w| w.availability.decidable()) {
                missing.extend(w.availability.missing_features());
            }
            if !rows.is_empty() {
                summary.windows += 1;
            }
            destinations.extend(rows.iter().map(|r| r.destination.clone()));
            summary.rows += rows.len();
            recorder.append(&rows)?;
        }
        from = to + step as f64;
    }
    summary.destinations = destinations.len();
    summary.missing_features = missing.into_iter().collect();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    #[test]
    fn istio_series_and_envoy_stats_join_by_host() {
        let host = "reviews.default.svc.cluster.local";
        let cluster = format!("outbound|9080||{host}");
        let mut a: HashMap<Q, Vec<Sample>> = HashMap::new();
        a.insert(
            Q::IstioRequests,
            vec![
                sample(
                    &[
                        ("destination_service", host),
                        ("response_code", "200"),
                        ("response_flags", "-"),
                    ],
                    940.2,
                ),
                sample(
                    &[
                        ("destination_service", host),
                        ("response_code", "503"),
                        ("response_flags", "UO"),
                    ],
                    40.0,
                ),
                sample(
                    &[
                        ("destination_service", host),
                        ("response_code", "504"),
                        ("response_flags", "UT,URX"),
                    ],
                    20.0,
                ),
            ],
        );
        a.insert(
            Q::IstioDuration,
            vec![
                sample(&[("destination_service", host), ("le", "10")], 500.0),
                sample(&[("destination_service", host), ("le", "100")], 1000.0),
                sample(&[("destination_service", host), ("le", "+Inf")], 1000.0),
            ],
        );
        a.insert(
            Q::EnvoyRetry,
            vec![sample(&[("cluster_name", &cluster)], 12.0)],
        );
        a.insert(
            Q::EnvoyTotal,
            vec![sample(&[("cluster_name", "inbound|9080||")], 5.0)],
        );
        let w = build_windows(&a, 10.0);
        assert_eq!(w.len(), 1, "{w:?}");
        let w = &w[0];
        assert_eq!(w.cluster, cluster);
        assert_eq!(w.stats.requests, 1000);
        assert_eq!((w.stats.status_2xx, w.stats.status_5xx), (940, 60));
        assert_eq!(
            (w.stats.flag_uo, w.stats.flag_ut, w.stats.flag_conn_failure),
            (40, 20, 20)
        );
        assert_eq!(w.stats.retries, 12);
        assert_eq!(w.stats.latency.count(), 1000);
        let p50 = w.stats.latency.quantile_us(0.5) / 1000.0;
        assert!((9.0..=10.5).contains(&p50), "p50 {p50}");
        assert!(w.availability.is_missing(Field::Inflight));
        assert!(!w.availability.is_missing(Field::Retries));
        assert!(w.availability.decidable());
    }

    #[test]
    fn plain_envoy_cluster_is_a_destination() {
        let mut a: HashMap<Q, Vec<Sample>> = HashMap::new();
        let c = [("envoy_cluster_name", "workload")];
        a.insert(Q::EnvoyTotal, vec![sample(&c, 300.0)]);
        a.insert(
            Q::EnvoyXx,
            vec![
                sample(
                    &[
                        ("envoy_cluster_name", "workload"),
                        ("envoy_response_code_class", "2"),
                    ],
                    290.0,
                ),
                sample(
                    &[
                        ("envoy_cluster_name", "workload"),
                        ("envoy_response_code_class", "5"),
                    ],
                    10.0,
                ),
            ],
        );
        a.insert(Q::EnvoyActiveAvg, vec![sample(&c, 2.5)]);
        a.insert(Q::EnvoyActiveMax, vec![sample(&c, 4.0)]);
        let w = build_windows(&a, 30.0);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].cluster, "workload");
        assert_eq!(w[0].stats.status_5xx, 10);
        assert_eq!(w[0].stats.inflight_max, 4);
        assert!(w[0].availability.is_missing(Field::Latency));
        assert!(!w[0].availability.decidable());
    }

    #[test]
    fn time_flags_parse() {
        assert_eq!(parse_time("--start", "now-1h", 7200.0).unwrap(), 3600.0);
        assert_eq!(parse_time("--end", "now", 5.0).unwrap(), 5.0);
        assert_eq!(parse_time("--end", "12.5", 5.0).unwrap(), 12.5);
        let e = parse_time("--start", "yesterday", 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--start") && e.contains("yesterday"), "{e}");
        assert_eq!(parse_duration_secs("5m"), Some(300.0));
        assert_eq!(parse_duration_secs("0s"), None);
    }

    #[test]
    fn bad_url_is_named() {
        let e = PromSource::new("prom:9090", DEFAULT_REPORTER, DEFAULT_TIMEOUT)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--prometheus-url") && e.contains("prom:9090"),
            "{e}"
        );
    }
}
