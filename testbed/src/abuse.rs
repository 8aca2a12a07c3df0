//! `cargo xtask bench ingest-abuse`: the real `meshtune controller` process under hostile
//! ingest next to one well-behaved reporter.
//!
//! Hostile load: `hostile_reporters` identities, each on its own gRPC connection, sending at
//! `hostile_rate` reports per second (10× a filter's one report a second). Every hostile report
//! is the largest the controller accepts: `MAX_UPSTREAMS_PER_REPORT` upstream windows, each
//! with a 512-byte cluster name never sent before (until `names` distinct names went out) and
//! a full 592-bucket latency histogram. The good reporter sends one ordinary report a second
//! for the destination `good` (200 requests) from its own identity and connection.
//!
//! Measured: the controller's peak RSS (`VmHWM` from `/proc`, [`crate::procstat`]), sampled
//! RSS, and whether `good` kept being decided: `/api/destinations?name=good` is polled every
//! second and its `last_decision.unix_ms` must keep advancing: "starved" when more than
//! [`STARVED_AFTER_CYCLES`] decision cycles (`meshtune_decision_cycles_total`) completed
//! without deciding it, or when a good report was refused. The longest wall-clock time without
//! a new decision is reported too (it also grows when every cycle is slow, e.g. on a loaded
//! machine).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use meshtune_core::histogram::{BUCKET_COUNT, MAX_VALUE_US, SUB_BUCKET_BITS};
use meshtune_proto::v1::feature_service_client::FeatureServiceClient;
use meshtune_proto::v1::{LatencyHistogram, ReportRequest, Reporter, UpstreamWindow};

use crate::controller::{Controller, ControllerConfig};
use crate::paths::Paths;

/// The good destination counts as starved when this many decision cycles completed without
/// deciding it (`/readyz`'s three intervals, plus one for polling between the two reads).
pub const STARVED_AFTER_CYCLES: u64 = 4;
/// Longest cluster name the controller accepts (`--max-name-len` default).
pub const NAME_LEN: usize = 512;

/// Settings of the benchmark.
#[derive(Debug, Clone)]
pub struct AbuseConfig {
    /// Distinct destination names the hostile reporters send in total.
    pub names: u64,
    /// Hostile reporter identities (one connection each).
    pub hostile_reporters: usize,
    /// Reports per second each hostile reporter attempts.
    pub hostile_rate: f64,
    /// Upper bound on the hostile phase.
    pub max_secs: u64,
    /// The good reporter keeps going this long after the hostile phase.
    pub tail_secs: u64,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        Self {
            names: 1_000_000,
            hostile_reporters: 4,
            hostile_rate: 10.0,
            max_secs: 240,
            tail_secs: 10,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct AbuseReport {
    pub secs: f64,
    pub names_sent: u64,
    pub hostile_reports: u64,
    pub hostile_accepted: u64,
    pub hostile_rate_limited: u64,
    pub hostile_other_errors: u64,
    pub hostile_bytes: u64,
    pub good_reports: u64,
    pub good_errors: u64,
    pub good_decisions: u64,
    pub longest_gap: Duration,
    /// Most decision cycles completed between two decisions for the good destination.
    pub max_cycles_without_good: u64,
    pub cycles: u64,
    pub peak_rss_bytes: u64,
    pub max_sampled_rss_bytes: u64,
    pub final_rss_bytes: u64,
    pub destinations_tracked: u64,
}

impl AbuseReport {
    /// The good destination was decided throughout and all its reports were accepted.
    pub fn starved(&self) -> bool {
        self.good_decisions < 2
            || self.max_cycles_without_good > STARVED_AFTER_CYCLES
            || self.good_errors > 0
    }

    pub fn summary(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        format!(
            "ingest-abuse: {secs:.0} s, {names} distinct names in {hr} hostile reports \
             ({gb:.1} GB; {acc} accepted, {rl} rate limited, {oe} other errors)\n\
             controller peak RSS {peak:.1} MiB (VmHWM), max sampled {samp:.1} MiB, at the end \
             {fin:.1} MiB, {dests} destinations tracked\n\
             good destination: {gr} reports ({ge} refused), decided {gd} times in {cy} cycles, \
             at most {mc} cycles between two of its decisions, longest time without a new \
             decision {gap:.1} s -> {verdict}",
            cy = self.cycles,
            mc = self.max_cycles_without_good,
            secs = self.secs,
            names = self.names_sent,
            hr = self.hostile_reports,
            gb = self.hostile_bytes as f64 / 1e9,
            acc = self.hostile_accepted,
            rl = self.hostile_rate_limited,
            oe = self.hostile_other_errors,
            peak = mib(self.peak_rss_bytes),
            samp = mib(self.max_sampled_rss_bytes),
            fin = mib(self.final_rss_bytes),
            dests = self.destinations_tracked,
            gr = self.good_reports,
            ge = self.good_errors,
            gd = self.good_decisions,
            gap = self.longest_gap.as_secs_f64(),
            verdict = if self.starved() {
                "STARVED"
            } else {
                "never starved"
            },
        )
    }
}

/// A full histogram: every bucket, counts as wide as validation allows.
fn full_histogram() -> LatencyHistogram {
    let per = (u64::MAX / 4) / BUCKET_COUNT as u64;
    LatencyHistogram {
        sub_bucket_bits: SUB_BUCKET_BITS,
        bucket_index: (0..BUCKET_COUNT as u32).collect(),
        bucket_count: vec![per; BUCKET_COUNT],
        sum_us: u64::MAX,
        min_us: 0,
        max_us: MAX_VALUE_US,
    }
}

/// The largest valid upstream window for `name`.
fn hostile_window(name: String, hist: &LatencyHistogram) -> UpstreamWindow {
    let n = u64::MAX / 2;
    UpstreamWindow {
        cluster: name,
        requests: n,
        status_2xx: n / 2,
        status_5xx: n / 4,
        flag_uo: n / 8,
        flag_ut: n / 8,
        retries: u64::MAX,
        shed: n / 8,
        inflight_max: u32::MAX,
        inflight_avg: 1e12,
        request_bytes: u64::MAX,
        response_bytes: u64::MAX,
        http1_requests: n / 2,
        http2_requests: n / 4,
        endpoints: u32::MAX,
        latency: Some(hist.clone()),
        ..Default::default()
    }
}

fn reporter(pod: &str) -> Reporter {
    Reporter {
        namespace: "bench".into(),
        workload: "ingest-abuse".into(),
        pod: pod.into(),
        vm_id: "0".into(),
        filter_version: "bench".into(),
        node_id: String::new(),
    }
}

/// One ordinary window: `n` requests, 5 ms each.
fn good_window(n: u64) -> UpstreamWindow {
    let mut h = meshtune_core::histogram::LatencyHistogram::new();
    h.record_n(5_000, n);
    let (bucket_index, bucket_count): (Vec<u32>, Vec<u64>) = h.nonzero_buckets().unzip();
    UpstreamWindow {
        cluster: "good".into(),
        requests: n,
        status_2xx: n,
        http1_requests: n,
        inflight_max: 4,
        inflight_avg: 1.0,
        latency: Some(LatencyHistogram {
            sub_bucket_bits: SUB_BUCKET_BITS,
            bucket_index,
            bucket_count,
            sum_us: h.sum_us(),
            min_us: h.min_us(),
            max_us: h.max_us(),
        }),
        ..Default::default()
    }
}

#[derive(Default)]
struct Counters {
    names: AtomicU64,
    reports: AtomicU64,
    accepted: AtomicU64,
    rate_limited: AtomicU64,
    other: AtomicU64,
    bytes: AtomicU64,
    good_reports: AtomicU64,
    good_errors: AtomicU64,
}

/// Digits of the name counter in a hostile name (`hostile-NNNNNNNNNNNN-xxx…`).
const NAME_DIGITS: usize = 12;
const NAME_PREFIX: &str = "hostile-";

fn hostile_name(k: u64) -> String {
    let mut name = format!("{NAME_PREFIX}{k:0NAME_DIGITS$}-");
    name.extend(std::iter::repeat_n('x', NAME_LEN - name.len()));
    name
}

/// The upstream windows of a largest report, encoded once (repeated field 5 of
/// `ReportRequest`), with the offsets of each name's counter digits: the hostile senders patch
/// the names in place instead of building and encoding 2 MB per report, so the controller, not
/// the sender, is what the benchmark loads.
struct Template {
    bytes: Vec<u8>,
    digits_at: Vec<usize>,
}

impl Template {
    fn new() -> Self {
        let hist = full_histogram();
        let n = meshtune_proto::MAX_UPSTREAMS_PER_REPORT as u64;
        let req = ReportRequest {
            upstreams: (0..n)
                .map(|k| hostile_window(hostile_name(k), &hist))
                .collect(),
            ..Default::default()
        };
        let bytes = prost::Message::encode_to_vec(&req);
        let digits_at = (0..n)
            .map(|k| {
                let needle = hostile_name(k);
                bytes
                    .windows(needle.len())
                    .position(|w| w == needle.as_bytes())
                    .expect("each name is in the encoding")
                    + NAME_PREFIX.len()
            })
            .collect();
        Self { bytes, digits_at }
    }

    /// One report's bytes: reporter and sequence, then the windows named `first..`.
    fn report(&self, pod: &str, seq: u64, first: u64) -> Vec<u8> {
        let head = ReportRequest {
            reporter: Some(reporter(pod)),
            sequence: seq,
            window_length_ms: 1000,
            ..Default::default()
        };
        let mut out = prost::Message::encode_to_vec(&head);
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        for (i, &at) in self.digits_at.iter().enumerate() {
            let digits = format!("{:0NAME_DIGITS$}", first + i as u64);
            out[start + at..start + at + NAME_DIGITS].copy_from_slice(digits.as_bytes());
        }
        out
    }
}

/// Sends pre-encoded `ReportRequest` bytes (a protobuf message may be split into field runs).
#[derive(Debug, Clone, Default)]
struct RawCodec;

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = meshtune_proto::v1::ReportResponse;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<meshtune_proto::v1::ReportResponse>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<Vec<u8>, meshtune_proto::v1::ReportResponse>::default().decoder()
    }
}

/// Hostile reporter `i` until `stop` or the name budget is spent.
async fn hostile(
    i: usize,
    url: String,
    cfg: AbuseConfig,
    template: Arc<Template>,
    c: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let channel = match tonic::transport::Endpoint::from_shared(url) {
        Ok(e) => match e.connect().await {
            Ok(ch) => ch,
            Err(_) => {
                c.other.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
        Err(_) => return,
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/meshtune.v1.FeatureService/Report");
    let per_report = meshtune_proto::MAX_UPSTREAMS_PER_REPORT as u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.hostile_rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let pod = format!("attacker-{i}");
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let first = c.names.fetch_add(per_report, Ordering::Relaxed);
        if first >= cfg.names {
            break;
        }
        seq += 1;
        let req = template.report(&pod, seq, first);
        c.bytes.fetch_add(req.len() as u64, Ordering::Relaxed);
        c.reports.fetch_add(1, Ordering::Relaxed);
        if grpc.ready().await.is_err() {
            c.other.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let r: Result<tonic::Response<meshtune_proto::v1::ReportResponse>, tonic::Status> = grpc
            .unary(tonic::Request::new(req), path.clone(), RawCodec)
            .await;
        match r {
            Ok(_) => c.accepted.fetch_add(1, Ordering::Relaxed),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                c.rate_limited.fetch_add(1, Ordering::Relaxed)
            }
            Err(s) => {
                if c.other.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("hostile report refused: {s}");
                }
                0
            }
        };
    }
}

/// The good reporter: one report a second until `stop`.
async fn good(url: String, c: Arc<Counters>, stop: Arc<AtomicBool>) {
    let Ok(mut client) = FeatureServiceClient::connect(url).await else {
        c.good_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        seq += 1;
        let req = ReportRequest {
            reporter: Some(reporter("good-client")),
            sequence: seq,
            window_start_unix_ms: 0,
            window_length_ms: 1000,
            upstreams: vec![good_window(200)],
            dropped_reports: 0,
        };
        c.good_reports.fetch_add(1, Ordering::Relaxed);
        if let Err(s) = client.report(req).await {
            eprintln!("good report refused: {s}");
            c.good_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Completed decision cycles (`/api/model`, read first) and `last_decision.unix_ms` of `good`
/// (`/api/destinations?name=good`): both cheap with a full table.
fn good_decision(ctl: &Controller) -> (u64, Option<u64>) {
    let json = |path: &str| -> serde_json::Value {
        ctl.admin_get(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    };
    let cycles = json("/api/model")["cycles"].as_u64().unwrap_or(0);
    let t =
        json("/api/destinations?name=good")["destinations"][0]["last_decision"]["unix_ms"].as_u64();
    (cycles, t)
}

/// Tracked destinations (`meshtune_destinations_tracked` from `/metrics`, which computes every
/// destination's view: read every 5 s only, like a scraper).
fn tracked(ctl: &Controller) -> u64 {
    ctl.admin_get("/metrics")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("meshtune_destinations_tracked "))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0) as u64
}

/// Runs the benchmark against `paths.meshtune_bin`.
pub fn run(paths: &Paths, cfg: &AbuseConfig) -> Result<AbuseReport> {
    let mut cc = ControllerConfig::new(&paths.meshtune_bin);
    // Enforce mode with the log sink: every destination is pushed once, then held by the
    // dwell time (observe mode would log a recommendation for every destination every cycle).
    cc.extra_args = [
        "--mode",
        "enforce",
        "--sink",
        "log",
        "--decision-interval-secs",
        "1",
        "--min-requests",
        "10",
    ]
    .map(String::from)
    .to_vec();
    // Warnings only, and the log sink's diffs on stdout read but not kept: every new hostile
    // destination gets a decision line and a pushed diff (~9 MB/s of log at this load, which
    // would fill the disk rather than test the controller).
    cc.env = vec![("RUST_LOG".into(), "warn".into())];
    cc.log_stdout = false;
    let ctl = Controller::start(cc).context("starting the controller")?;
    let pid = ctl.pid().context("controller pid")?;
    let url = format!("http://{}", ctl.grpc());
    let counters = Arc::new(Counters::default());
    let stop_hostile = Arc::new(AtomicBool::new(false));
    let stop_good = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let good_task = rt.spawn(good(url.clone(), counters.clone(), stop_good.clone()));
    let template = Arc::new(Template::new());
    let hostile_tasks: Vec<_> = (0..cfg.hostile_reporters)
        .map(|i| {
            rt.spawn(hostile(
                i,
                url.clone(),
                cfg.clone(),
                template.clone(),
                counters.clone(),
                stop_hostile.clone(),
            ))
        })
        .collect();

    let t0 = Instant::now();
    let mut report = AbuseReport::default();
    let (mut last_decision, mut last_advance) = (None::<u64>, None::<Instant>);
    let mut cycles_at_advance = None::<u64>;
    let mut hostile_done_at = None::<Instant>;
    let mut next_print = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let rss = crate::procstat::rss_bytes(pid).unwrap_or(0);
        report.max_sampled_rss_bytes = report.max_sampled_rss_bytes.max(rss);
        let (cycles, t) = good_decision(&ctl);
        report.cycles = cycles;
        let now = Instant::now();
        if t.is_some() && t != last_decision {
            if let Some(prev) = last_advance {
                report.longest_gap = report.longest_gap.max(now - prev);
            }
            report.good_decisions += 1;
            last_decision = t;
            last_advance = Some(now);
            cycles_at_advance = Some(cycles);
        } else if let Some(prev) = last_advance {
            report.longest_gap = report.longest_gap.max(now - prev);
        }
        if let Some(c) = cycles_at_advance {
            report.max_cycles_without_good =
                report.max_cycles_without_good.max(cycles.saturating_sub(c));
        }
        let names = counters.names.load(Ordering::Relaxed).min(cfg.names);
        if now >= next_print {
            report.destinations_tracked = tracked(&ctl);
            println!(
                "t={:>4.0}s names {:>8} reports {:>6} (rate limited {:>5}) rss {:>6.1} MiB \
                 destinations {:>6} good decided {:>3}x",
                t0.elapsed().as_secs_f64(),
                names,
                counters.reports.load(Ordering::Relaxed),
                counters.rate_limited.load(Ordering::Relaxed),
                rss as f64 / (1024.0 * 1024.0),
                report.destinations_tracked,
                report.good_decisions
            );
            next_print = now + Duration::from_secs(5);
        }
        let hostile_over = names >= cfg.names || t0.elapsed() >= Duration::from_secs(cfg.max_secs);
        if hostile_over && hostile_done_at.is_none() {
            stop_hostile.store(true, Ordering::Relaxed);
            hostile_done_at = Some(now);
        }
        if hostile_done_at.is_some_and(|h| now - h >= Duration::from_secs(cfg.tail_secs)) {
            break;
        }
    }
    stop_good.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in hostile_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), good_task).await;
    });
    report.peak_rss_bytes = crate::procstat::peak_rss_bytes(pid).unwrap_or(0);
    report.final_rss_bytes = crate::procstat::rss_bytes(pid).unwrap_or(0);
    report.secs = t0.elapsed().as_secs_f64();
    let c = &counters;
    report.names_sent = c.names.load(Ordering::Relaxed).min(cfg.names);
    report.hostile_reports = c.reports.load(Ordering::Relaxed);
    report.hostile_accepted = c.accepted.load(Ordering::Relaxed);
    report.hostile_rate_limited = c.rate_limited.load(Ordering::Relaxed);
    report.hostile_other_errors = c.other.load(Ordering::Relaxed);
    report.hostile_bytes = c.bytes.load(Ordering::Relaxed);
    report.good_reports = c.good_reports.load(Ordering::Relaxed);
    report.good_errors = c.good_errors.load(Ordering::Relaxed);
    println!("{}", report.summary());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_gives_valid_largest_reports_with_fresh_names() {
        use prost::Message;
        let t = Template::new();
        let a = ReportRequest::decode(t.report("p", 7, 1000).as_slice()).unwrap();
        assert_eq!(a.sequence, 7);
        assert_eq!(a.reporter.as_ref().unwrap().pod, "p");
        let n = meshtune_proto::MAX_UPSTREAMS_PER_REPORT as usize;
        assert_eq!(a.upstreams.len(), n);
        assert_eq!(a.upstreams[0].cluster, hostile_name(1000));
        assert_eq!(
            a.upstreams[n - 1].cluster,
            hostile_name(1000 + n as u64 - 1)
        );
        assert_eq!(a.upstreams[3].cluster.len(), NAME_LEN);
        assert_eq!(
            a.upstreams[3].latency.as_ref().unwrap().bucket_index.len(),
            BUCKET_COUNT
        );
    }

    #[test]
    fn hostile_windows_are_the_largest_valid_ones() {
        let h = full_histogram();
        let total: u64 = h.bucket_count.iter().sum();
        assert!(total <= u64::MAX / 2, "fits the window's requests");
        let w = hostile_window("x".repeat(NAME_LEN), &h);
        // ~6.5 KB on the wire each (the controller's bound is ~7.9 KB).
        let size = prost::Message::encoded_len(&w);
        assert!((6_000..8_000).contains(&size), "{size}");
        let r = AbuseReport {
            good_decisions: 10,
            max_cycles_without_good: 2,
            longest_gap: Duration::from_secs(9),
            ..AbuseReport::default()
        };
        assert!(!r.starved(), "slow cycles alone are not starvation");
        assert!(AbuseReport {
            max_cycles_without_good: 5,
            ..r.clone()
        }
        .starved());
        assert!(AbuseReport {
            good_errors: 1,
            ..r
        }
        .starved());
    }
}
