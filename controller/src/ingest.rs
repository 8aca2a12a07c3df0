//! Bounded ingest in front of [`crate::server::Controller::handle_report`]: the decode limit
//! derived from the validation limits, a wire pre-scan that refuses oversized repeated fields
//! before anything is decoded, the gRPC service with a global bound on reports being decoded at
//! once, and the per-reporter report rate (token buckets in a bounded table).
//!
//! **Why a pre-scan.** Decoding expands small wire data: an empty upstream window is 2 bytes on
//! the wire and ~272 bytes decoded, and a 1-byte packed histogram count becomes 8 bytes. So a
//! size limit alone lets one message decode to 100× its size. [`prescan`] walks the protobuf
//! wire format (tags and lengths only, no allocation) and refuses a report with more upstream
//! windows than `max_upstreams`, an upstream window larger than the largest valid one, or a
//! histogram with more entries than [`BUCKET_COUNT`]. What is then decoded is at most
//! `max_upstreams` windows of bounded size ([`Limits::max_decoded_report_bytes`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
#[cfg(test)]
use std::time::Duration;

use meshtune_core::histogram::BUCKET_COUNT;
use meshtune_proto::v1::feature_service_server::FeatureService;
use meshtune_proto::v1::{ReportRequest, ReportResponse};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::codegen::{http, Body, BoxFuture, StdError};

use crate::lru::LruMap;
use crate::validate::{Limits, ReporterKey};

/// Reports decoded and handled at once, across all connections; more wait (each decoded
/// report holds at most [`Limits::max_decoded_report_bytes`]).
pub const DEFAULT_MAX_CONCURRENT_REPORTS: usize = 8;
/// Concurrent HTTP/2 streams per connection (one filter sends one report at a time).
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// A report must be received, decoded and answered within this time (the filter's own
/// timeout is 500 ms by default); slower requests are ended with DEADLINE_EXCEEDED
/// ([`ReportServer::with_request_timeout`]), which frees their stream and report permit.
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Sustained reports per second accepted from one reporter: the filter flushes once a second
/// (`flush_interval_ms` ≥ 100 ms would be 10/s; raise `--max-reports-per-sec` for that).
pub const DEFAULT_REPORTS_PER_SEC: f64 = 5.0;
/// Reports one reporter may send in a burst above the rate (retries after a failure).
pub const DEFAULT_REPORT_BURST: f64 = 10.0;

/// Bytes of a protobuf varint holding `v`.
const fn varint_len(v: u64) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v > 0 {
        n += 1;
        v >>= 7;
    }
    n
}

/// Bytes of a length-delimited field with a 1-byte tag (field numbers below 16) and `n`
/// bytes of payload.
const fn len_field(n: usize) -> usize {
    1 + varint_len(n as u64) + n
}

/// Largest tag + value of a varint field (numbers below 16).
const VARINT_FIELD: usize = 1 + 10;

impl Limits {
    /// Largest valid encoded `LatencyHistogram`: `BUCKET_COUNT` indices (each below
    /// `BUCKET_COUNT`, so 2 bytes) and counts (≤ 10 bytes each), packed, plus the scalars.
    pub fn max_histogram_bytes(&self) -> usize {
        let index = varint_len(BUCKET_COUNT as u64 - 1);
        (1 + 5) + len_field(BUCKET_COUNT * index) + len_field(BUCKET_COUNT * 10) + 3 * VARINT_FIELD
    }

    /// Largest valid encoded `UpstreamWindow` (its payload): cluster name of `max_name_len`,
    /// every counter at its widest, the largest histogram.
    pub fn max_upstream_bytes(&self) -> usize {
        let hist = self.max_histogram_bytes();
        len_field(self.max_name_len)
            + 19 * VARINT_FIELD // requests … retries, request/response bytes, protocols, shed
            + (1 + 5) // inflight_max
            + (1 + 8) // inflight_avg (double)
            + (1 + len_field(hist)) // latency: field 23 takes a 2-byte tag
            + (2 + 5) // endpoints (field 24)
    }

    /// Largest valid encoded `Reporter` (its payload): six strings of `max_name_len`.
    pub fn max_reporter_bytes(&self) -> usize {
        6 * len_field(self.max_name_len)
    }

    /// The decode limit: the largest legitimate report, `max_upstreams` windows of
    /// [`Self::max_upstream_bytes`] plus the reporter and the scalars.
    pub fn max_encoded_report_bytes(&self) -> usize {
        len_field(self.max_reporter_bytes())
            + 4 * VARINT_FIELD
            + self.max_upstreams * len_field(self.max_upstream_bytes())
    }

    /// Bound on the memory one decoded report may hold once [`prescan`] passed it: per window
    /// the struct, its name and full-size histogram vectors; plus the reporter's strings.
    pub fn max_decoded_report_bytes(&self) -> usize {
        let window = std::mem::size_of::<meshtune_proto::v1::UpstreamWindow>()
            + std::mem::size_of::<meshtune_proto::v1::LatencyHistogram>()
            + self.max_name_len
            + BUCKET_COUNT * (4 + 8);
        std::mem::size_of::<ReportRequest>()
            + self.max_reporter_bytes()
            // A Vec grows by doubling while decoding: up to twice the windows' size.
            + 2 * self.max_upstreams * window
    }
}

/// Why [`prescan`] refused a report (INVALID_ARGUMENT naming the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PrescanError {
    pub field: String,
    pub message: String,
}

fn refuse(field: impl Into<String>, message: String) -> PrescanError {
    PrescanError {
        field: field.into(),
        message,
    }
}

fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One field of a message: number, wire type, and the payload of length-delimited fields.
/// Stops (returns `None`) at malformed data: prost's decoder then reports it.
fn for_each_field(
    b: &[u8],
    mut f: impl FnMut(u64, u8, &[u8]) -> Result<(), PrescanError>,
) -> Result<(), PrescanError> {
    let mut pos = 0;
    while pos < b.len() {
        let Some(tag) = read_varint(b, &mut pos) else {
            return Ok(());
        };
        let (field, wire) = (tag >> 3, (tag & 7) as u8);
        let payload: &[u8] = match wire {
            0 => {
                if read_varint(b, &mut pos).is_none() {
                    return Ok(());
                }
                &[]
            }
            1 | 5 => {
                pos += if wire == 1 { 8 } else { 4 };
                &[]
            }
            2 => {
                let Some(n) = read_varint(b, &mut pos) else {
                    return Ok(());
                };
                let Some(end) = usize::try_from(n).ok().and_then(|n| pos.checked_add(n)) else {
                    return Ok(());
                };
                let Some(p) = b.get(pos..end) else {
                    return Ok(());
                };
                pos = end;
                p
            }
            _ => return Ok(()),
        };
        f(field, wire, payload)?;
    }
    Ok(())
}

/// Number of varints in a packed payload.
fn packed_len(p: &[u8]) -> usize {
    p.iter().filter(|&&b| b & 0x80 == 0).count()
}

/// Refuses, before decoding, a report whose repeated fields exceed `limits`: more than
/// `max_upstreams` upstream windows, a window larger than [`Limits::max_upstream_bytes`], a
/// reporter larger than [`Limits::max_reporter_bytes`], or a histogram with more than
/// [`BUCKET_COUNT`] indices or counts. Malformed data is left to the decoder.
pub fn prescan(b: &[u8], limits: &Limits) -> Result<(), PrescanError> {
    let (max_window, max_reporter) = (limits.max_upstream_bytes(), limits.max_reporter_bytes());
    let mut upstreams = 0usize;
    for_each_field(b, |field, wire, p| match (field, wire) {
        (1, 2) if p.len() > max_reporter => Err(refuse(
            "reporter",
            format!("{} bytes, the limit is {max_reporter}", p.len()),
        )),
        (5, 2) => {
            let i = upstreams;
            upstreams += 1;
            if upstreams > limits.max_upstreams {
                return Err(refuse(
                    "upstreams",
                    format!("more than the limit of {} entries", limits.max_upstreams),
                ));
            }
            if p.len() > max_window {
                return Err(refuse(
                    format!("upstreams[{i}]"),
                    format!("{} bytes, the limit is {max_window}", p.len()),
                ));
            }
            for_each_field(p, |field, wire, h| {
                if (field, wire) != (23, 2) {
                    return Ok(());
                }
                let (mut index, mut count) = (0usize, 0usize);
                for_each_field(h, |field, wire, v| {
                    let n = if wire == 2 { packed_len(v) } else { 1 };
                    match field {
                        2 => index += n,
                        3 => count += n,
                        _ => {}
                    }
                    Ok(())
                })?;
                if index.max(count) > BUCKET_COUNT {
                    return Err(refuse(
                        format!("upstreams[{i}].latency"),
                        format!(
                            "{} entries, a histogram has at most {BUCKET_COUNT} buckets",
                            index.max(count)
                        ),
                    ));
                }
                Ok(())
            })
        }
        _ => Ok(()),
    })
}

/// Decodes a `ReportRequest` after [`prescan`].
#[derive(Debug, Clone)]
pub struct BoundedDecoder {
    limits: Arc<Limits>,
}

impl Decoder for BoundedDecoder {
    type Item = ReportRequest;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<ReportRequest>, tonic::Status> {
        use bytes::Buf;
        let owned;
        let bytes: &[u8] = if buf.chunk().len() == buf.remaining() {
            buf.chunk()
        } else {
            owned = buf.copy_to_bytes(buf.remaining());
            &owned
        };
        prescan(bytes, &self.limits).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let msg = ReportRequest::decode(bytes)
            .map_err(|e| tonic::Status::internal(format!("decoding ReportRequest: {e}")))?;
        let n = buf.remaining();
        buf.advance(n);
        Ok(Some(msg))
    }
}

/// The Report method's codec: prost encoding, [`BoundedDecoder`] decoding.
#[derive(Debug, Clone)]
pub struct BoundedCodec {
    limits: Arc<Limits>,
}

impl Codec for BoundedCodec {
    type Encode = ReportResponse;
    type Decode = ReportRequest;
    type Encoder = tonic_prost::ProstEncoder<ReportResponse>;
    type Decoder = BoundedDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<ReportResponse, ReportRequest>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder {
            limits: self.limits.clone(),
        }
    }
}

/// `meshtune.v1.FeatureService` served with [`BoundedCodec`], the decode limit, and at most
/// `max_concurrent` reports received/decoded/handled at once (others wait for a permit
/// before their body is read); optionally a time limit per request
/// ([`Self::with_request_timeout`]).
pub struct ReportServer<T> {
    inner: Arc<T>,
    limits: Arc<Limits>,
    permits: Arc<tokio::sync::Semaphore>,
    timeout: Option<std::time::Duration>,
    timed_out: prometheus_client::metrics::counter::Counter,
}

impl<T> Clone for ReportServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limits: self.limits.clone(),
            permits: self.permits.clone(),
            timeout: self.timeout,
            timed_out: self.timed_out.clone(),
        }
    }
}

impl<T> ReportServer<T> {
    pub fn new(inner: Arc<T>, limits: Limits, max_concurrent: usize) -> Self {
        Self {
            inner,
            limits: Arc::new(limits),
            permits: Arc::new(tokio::sync::Semaphore::new(max_concurrent.max(1))),
            timeout: None,
            timed_out: Default::default(),
        }
    }

    /// A request not received, decoded and answered within `timeout` (waiting for a report
    /// permit included) is ended with DEADLINE_EXCEEDED and counted in `timed_out`; its
    /// stream and permit are released. (tonic's `Server::timeout` would end it with
    /// CANCELLED, which a client reads as "the caller gave up".)
    pub fn with_request_timeout(
        mut self,
        timeout: std::time::Duration,
        timed_out: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.timeout = Some(timeout);
        self.timed_out = timed_out;
        self
    }
}

impl<T> tonic::server::NamedService for ReportServer<T> {
    const NAME: &'static str = meshtune_proto::FEATURE_SERVICE;
}

struct ReportMethod<T>(Arc<T>);

impl<T: FeatureService> tonic::server::UnaryService<ReportRequest> for ReportMethod<T> {
    type Response = ReportResponse;
    type Future = BoxFuture<tonic::Response<ReportResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<ReportRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.report(request).await })
    }
}

impl<T, B> tonic::codegen::Service<http::Request<B>> for ReportServer<T>
where
    T: FeatureService,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = format!(
            "/{}/{}",
            meshtune_proto::FEATURE_SERVICE,
            meshtune_proto::REPORT_METHOD
        );
        if req.uri().path() != path {
            return Box::pin(async move {
                Ok(tonic::Status::unimplemented("unknown method").into_http())
            });
        }
        let me = self.clone();
        Box::pin(async move {
            let handle = async {
                let Ok(_permit) = me.permits.acquire().await else {
                    return tonic::Status::unavailable("shutting down").into_http();
                };
                let codec = BoundedCodec {
                    limits: me.limits.clone(),
                };
                let limit = me.limits.max_encoded_report_bytes();
                let mut grpc = tonic::server::Grpc::new(codec)
                    .apply_max_message_size_config(Some(limit), None);
                grpc.unary(ReportMethod(me.inner.clone()), req).await
            };
            let Some(timeout) = me.timeout else {
                return Ok(handle.await);
            };
            match tokio::time::timeout(timeout, handle).await {
                Ok(resp) => Ok(resp),
                Err(_) => {
                    me.timed_out.inc();
                    tracing::debug!(?timeout, "report request timed out");
                    Ok(tonic::Status::deadline_exceeded(format!(
                        "the report was not received and answered within {timeout:?} (the server's request timeout)"
                    ))
                    .into_http())
                }
            }
        })
    }
}

/// Per-reporter token buckets in a bounded table (least recently seen reporter evicted first,
/// O(1)). A reporter may send `burst` reports at once and `rate` per second sustained. Keyed
/// by a keyed 64-bit hash of the identity, so an entry is ~80 bytes whatever the names.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_reporters: usize,
    buckets: LruMap<u64, Bucket>,
    hasher: foldhash::fast::RandomState,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl RateLimiter {
    /// `rate` ≤ 0 or not finite: no limit.
    pub fn new(rate: f64, burst: f64, max_reporters: usize) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            max_reporters: max_reporters.max(1),
            buckets: LruMap::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Takes one report's token for `reporter` at `now_ms`; false: over its rate (refuse).
    pub fn allow(&mut self, reporter: &ReporterKey, now_ms: u64) -> bool {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return true;
        }
        let (rate, burst) = (self.rate, self.burst);
        let key = std::hash::BuildHasher::hash_one(&self.hasher, reporter);
        let b = match self.buckets.get_mut(&key) {
            Some(b) => {
                let dt = now_ms.saturating_sub(b.at_ms) as f64 / 1000.0;
                b.tokens = (b.tokens + dt * rate).min(burst);
                b.at_ms = b.at_ms.max(now_ms);
                b
            }
            None => {
                if self.buckets.len() >= self.max_reporters {
                    self.buckets.pop_oldest();
                }
                self.buckets.insert(
                    key,
                    Bucket {
                        tokens: burst,
                        at_ms: now_ms,
                    },
                );
                self.buckets.get_mut(&key).expect("just inserted")
            }
        };
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Reporters with a bucket.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_proto::v1::{LatencyHistogram, Reporter, UpstreamWindow};

    fn key(pod: &str) -> ReporterKey {
        ReporterKey {
            namespace: "ns".into(),
            workload: "w".into(),
            pod: pod.into(),
            vm_id: "vm".into(),
        }
    }

    /// The largest report validation accepts: every name at its limit, every counter at its
    /// widest, full histograms, `max_upstreams` windows.
    pub(crate) fn largest_valid(limits: &Limits) -> ReportRequest {
        let name = |c: char| c.to_string().repeat(limits.max_name_len);
        let big = u64::MAX / 8;
        ReportRequest {
            reporter: Some(Reporter {
                namespace: name('n'),
                workload: name('w'),
                pod: name('p'),
                vm_id: name('v'),
                filter_version: name('f'),
                node_id: name('i'),
            }),
            sequence: u64::MAX,
            window_start_unix_ms: u64::MAX,
            window_length_ms: limits.max_window_length_ms,
            dropped_reports: u64::MAX,
            upstreams: (0..limits.max_upstreams)
                .map(|i| {
                    let mut cluster = format!("{i}-");
                    cluster.push_str(&"c".repeat(limits.max_name_len - cluster.len()));
                    UpstreamWindow {
                        cluster,
                        requests: u64::MAX,
                        status_2xx: big,
                        status_5xx: big,
                        flag_uo: big,
                        flag_ut: big,
                        flag_uf: big,
                        flag_uc: big,
                        flag_urx: big,
                        retries: u64::MAX,
                        shed: big,
                        inflight_max: u32::MAX,
                        inflight_avg: 1e300,
                        request_bytes: u64::MAX,
                        response_bytes: u64::MAX,
                        http1_requests: big,
                        http2_requests: big,
                        http3_requests: big,
                        endpoints: u32::MAX,
                        latency: Some(LatencyHistogram {
                            sub_bucket_bits: meshtune_core::histogram::SUB_BUCKET_BITS,
                            bucket_index: (0..BUCKET_COUNT as u32).collect(),
                            bucket_count: vec![(u64::MAX / 8) / BUCKET_COUNT as u64; BUCKET_COUNT],
                            sum_us: u64::MAX,
                            min_us: 0,
                            max_us: meshtune_core::histogram::MAX_VALUE_US,
                        }),
                        ..Default::default()
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn the_largest_valid_report_fits_the_decode_limit_and_passes() {
        let limits = Limits::default();
        let r = largest_valid(&limits);
        crate::validate::validate(&r, &limits).expect("the largest report is valid");
        let bytes = r.encode_to_vec();
        assert!(
            bytes.len() <= limits.max_encoded_report_bytes(),
            "{} > {}",
            bytes.len(),
            limits.max_encoded_report_bytes()
        );
        // The bound is tight: the largest report is at least 80 % of it (counts cannot all
        // take 10 bytes: their sum must fit a u64).
        assert!(
            bytes.len() * 5 >= limits.max_encoded_report_bytes() * 4,
            "{} vs {}",
            bytes.len(),
            limits.max_encoded_report_bytes()
        );
        prescan(&bytes, &limits).unwrap();
        for u in &r.upstreams {
            assert!(u.encoded_len() <= limits.max_upstream_bytes());
        }
    }

    #[test]
    fn the_decode_limit_follows_the_shared_upstream_constant() {
        let limits = Limits::default();
        assert_eq!(
            limits.max_upstreams,
            meshtune_proto::MAX_UPSTREAMS_PER_REPORT as usize
        );
        assert_eq!(
            crate::config::DEFAULT_MAX_REPORT_BYTES,
            limits.max_encoded_report_bytes()
        );
        // Decoded, a report passing the pre-scan holds a few MB at most.
        assert!(limits.max_decoded_report_bytes() < 8 << 20);
    }

    #[test]
    fn prescan_refuses_what_would_expand_when_decoded() {
        let limits = Limits::default();
        // Many tiny windows: 2 bytes each on the wire.
        let many = ReportRequest {
            reporter: Some(Reporter {
                pod: "p".into(),
                ..Default::default()
            }),
            upstreams: vec![UpstreamWindow::default(); limits.max_upstreams + 1],
            ..Default::default()
        };
        let bytes = many.encode_to_vec();
        assert!(bytes.len() < 1000);
        let e = prescan(&bytes, &limits).unwrap_err();
        assert_eq!(e.field, "upstreams", "{e}");
        let mut ok = many.clone();
        ok.upstreams.pop();
        prescan(&ok.encode_to_vec(), &limits).unwrap();

        // A histogram with more entries than buckets (1-byte counts expand 8×).
        let mut h = ok.clone();
        h.upstreams.truncate(1);
        h.upstreams[0].latency = Some(LatencyHistogram {
            bucket_count: vec![1; BUCKET_COUNT + 1],
            ..Default::default()
        });
        let e = prescan(&h.encode_to_vec(), &limits).unwrap_err();
        assert_eq!(e.field, "upstreams[0].latency", "{e}");

        // One window above the largest valid one (a padded name).
        let mut w = ok.clone();
        w.upstreams.truncate(2);
        w.upstreams[1].cluster = "x".repeat(limits.max_upstream_bytes());
        let e = prescan(&w.encode_to_vec(), &limits).unwrap_err();
        assert_eq!(e.field, "upstreams[1]", "{e}");

        // An oversized reporter.
        let mut r = ok;
        r.reporter.as_mut().unwrap().node_id = "x".repeat(limits.max_reporter_bytes());
        assert_eq!(
            prescan(&r.encode_to_vec(), &limits).unwrap_err().field,
            "reporter"
        );

        // Malformed bytes are left to the decoder.
        prescan(&[0xff, 0xff, 0xff], &limits).unwrap();
    }

    #[test]
    fn rate_limiter_refuses_the_excess_and_refills() {
        let mut r = RateLimiter::new(2.0, 3.0, 10);
        let a = key("a");
        let t = 1_000_000;
        let allowed = (0..10).filter(|_| r.allow(&a, t)).count();
        assert_eq!(allowed, 3, "the burst");
        assert!(!r.allow(&a, t + 100), "0.2 tokens after 100 ms");
        assert!(r.allow(&a, t + 500), "one token after 500 ms at 2/s");
        assert!(!r.allow(&a, t + 500));
        // Another reporter has its own bucket.
        assert!(r.allow(&key("b"), t + 500));
        // Over a long run, the rate is what gets through.
        let mut r = RateLimiter::new(5.0, 10.0, 10);
        let through = (0..1000u64)
            .filter(|i| r.allow(&a, t + i * 20)) // 50 reports/s for 20 s
            .count();
        assert!((100..=111).contains(&through), "{through}");
        // Disabled.
        let mut r = RateLimiter::new(0.0, 1.0, 10);
        assert!((0..100).all(|_| r.allow(&a, t)));
    }

    #[test]
    fn rate_limiter_table_is_bounded_and_evicts_the_least_recent() {
        let mut r = RateLimiter::new(1.0, 1.0, 3);
        let t = 1_000_000;
        for p in ["a", "b", "c"] {
            assert!(r.allow(&key(p), t));
        }
        assert!(
            !r.allow(&key("a"), t),
            "a spent its token (and is now the newest)"
        );
        assert!(
            r.allow(&key("d"), t),
            "a new reporter evicts the least recent, b"
        );
        assert_eq!(r.len(), 3);
        assert!(!r.allow(&key("a"), t), "a kept its empty bucket");
        assert!(r.allow(&key("b"), t), "b was evicted: a fresh bucket");
    }

    type Frame = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>;
    type StreamedBody = http_body_util::StreamBody<tokio_stream::wrappers::ReceiverStream<Frame>>;

    /// A gRPC request for the Report method whose body is fed through the returned sender.
    fn streamed_request() -> (
        tokio::sync::mpsc::Sender<Frame>,
        http::Request<StreamedBody>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let req = http::Request::builder()
            .method("POST")
            .uri("/meshtune.v1.FeatureService/Report")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap();
        (tx, req)
    }

    fn grpc_frame(msg: &[u8]) -> bytes::Bytes {
        let mut f = vec![0u8];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(msg);
        f.into()
    }

    #[tokio::test]
    async fn reports_beyond_the_concurrency_limit_wait_for_a_permit() {
        use tonic::codegen::Service;
        let controller =
            Arc::new(crate::server::Controller::new(crate::config::Config::default()).unwrap());
        let mut svc = ReportServer::new(controller, Limits::default(), 2);
        let report = ReportRequest {
            reporter: Some(Reporter {
                pod: "p".into(),
                ..Default::default()
            }),
            sequence: 1,
            ..Default::default()
        }
        .encode_to_vec();
        // Two reports whose bodies never finish hold both permits.
        let mut held = Vec::new();
        for _ in 0..2 {
            let (tx, req) = streamed_request();
            tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(&[
                0, 0,
            ]))))
            .await
            .unwrap();
            held.push((tx, tokio::spawn(svc.call(req))));
        }
        // A complete third report waits for a permit …
        let (tx, req) = streamed_request();
        tx.send(Ok(hyper::body::Frame::data(grpc_frame(&report))))
            .await
            .unwrap();
        drop(tx);
        let mut third = tokio::spawn(svc.call(req));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut third)
                .await
                .is_err(),
            "the third report was handled while two held the permits"
        );
        // … and is answered once one of them goes away.
        let (tx, task) = held.pop().unwrap();
        task.abort();
        drop(tx);
        let resp = tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .expect("answered after a permit was released")
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}
