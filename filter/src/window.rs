//! Per-worker accounting: one window of counters per upstream cluster, an in-flight gauge with
//! its time average, and a bounded table of tracked clusters with stable slot indices.
//!
//! Everything here is pure (time is passed in as unix nanoseconds) and allocation-free on the
//! per-request path once a cluster has a slot.

use crate::flags::FlagClasses;
use crate::hints::ActiveHint;
use crate::sampling;
use meshtune_core::LatencyHistogram;
use meshtune_proto::v1;
use std::collections::HashMap;

/// Windows in a row without traffic, in-flight requests or hint after which a slot is freed.
pub const IDLE_WINDOWS_BEFORE_EVICTION: u32 = 3;

/// Downstream protocol of a request (`request.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    Http1 = 0,
    Http2 = 1,
    Http3 = 2,
    #[default]
    Other = 3,
}

impl Protocol {
    /// Parses Envoy's protocol string (`HTTP/1.0`, `HTTP/1.1`, `HTTP/2`, `HTTP/3`).
    pub fn from_bytes(b: &[u8]) -> Self {
        match b {
            b"HTTP/1.1" | b"HTTP/1.0" => Protocol::Http1,
            b"HTTP/2" => Protocol::Http2,
            b"HTTP/3" => Protocol::Http3,
            _ => Protocol::Other,
        }
    }
}

/// What on_log learned about one finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP status, 0 when the request ended without a response code.
    pub status: u32,
    /// Envoy response-flag bitmask.
    pub flags: u64,
    /// Upstream attempts (1 = no retry); 0 when unknown.
    pub attempts: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Downstream protocol, when this request is one of the protocol samples
    /// (see [`PROTOCOL_SAMPLE_EVERY`]); `None` = not read.
    pub protocol: Option<Protocol>,
    /// Request duration in µs, if known.
    pub duration_us: Option<u64>,
    /// Hash of the upstream endpoint's address (`upstream.address`), read on the same
    /// samples as the protocol; `None` = not read.
    pub endpoint: Option<u64>,
}

/// At most this many distinct endpoints are counted per cluster and window (a destination
/// with more reports this many: the policy's `endpoints` feature saturates long before).
pub const MAX_COUNTED_ENDPOINTS: usize = 64;

/// Distinct endpoint hashes seen in a window: a fixed array, no allocation per request.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSet {
    seen: [u64; MAX_COUNTED_ENDPOINTS],
    len: usize,
}

impl Default for EndpointSet {
    fn default() -> Self {
        EndpointSet {
            seen: [0; MAX_COUNTED_ENDPOINTS],
            len: 0,
        }
    }
}

impl EndpointSet {
    /// Adds an endpoint hash (ignored once the set is full).
    pub fn insert(&mut self, hash: u64) {
        if self.len < MAX_COUNTED_ENDPOINTS && !self.seen[..self.len].contains(&hash) {
            self.seen[self.len] = hash;
            self.len += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Hash of an endpoint address (stable, allocation-free).
pub fn endpoint_hash(address: &[u8]) -> u64 {
    crate::hash::fnv1a(address.iter().copied())
}

/// `request.protocol` is read for the first request of a cluster in each window and then for
/// every this-many-th request (a property read saved on the other requests); the reported
/// HTTP/1, /2, /3 counts are the sampled counts scaled to the window's request count (see
/// [`scale_protocols`]). The controller uses only the fraction (the protocol-mix feature).
pub const PROTOCOL_SAMPLE_EVERY: u64 = 16;

/// Whether the `index`-th (0-based) request of a cluster in the current window should read
/// its protocol.
#[inline]
pub fn samples_protocol(index: u64) -> bool {
    index.is_multiple_of(PROTOCOL_SAMPLE_EVERY)
}

/// Scales sampled protocol counts `[h1, h2, h3, other]` to `requests`: each class gets
/// `floor(sampled × requests / samples)`, so the fractions are the sample's and the sum never
/// exceeds `requests`. All zero without samples.
pub fn scale_protocols(sampled: [u64; 4], requests: u64) -> [u64; 3] {
    let samples: u64 = sampled.iter().sum();
    if samples == 0 {
        return [0; 3];
    }
    let scale = |k: u64| {
        u64::try_from(u128::from(k) * u128::from(requests) / u128::from(samples))
            .unwrap_or(u64::MAX)
    };
    [scale(sampled[0]), scale(sampled[1]), scale(sampled[2])]
}

/// In-flight requests of one cluster: current, maximum and time integral within the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InflightGauge {
    current: u32,
    max: u32,
    last_ns: u64,
    /// Integral of `current` over time since the window start, in request·ns.
    area: u128,
}

impl InflightGauge {
    /// A gauge whose window starts at `now_ns`.
    pub fn new(now_ns: u64) -> Self {
        Self {
            last_ns: now_ns,
            ..Default::default()
        }
    }

    #[inline]
    fn advance(&mut self, now_ns: u64) {
        if now_ns > self.last_ns {
            self.area += u128::from(self.current) * u128::from(now_ns - self.last_ns);
            self.last_ns = now_ns;
        }
    }

    /// A request started.
    #[inline]
    pub fn inc(&mut self, now_ns: u64) {
        self.inc_by(now_ns, 1);
    }

    /// A request finished.
    #[inline]
    pub fn dec(&mut self, now_ns: u64) {
        self.dec_by(now_ns, 1);
    }

    /// A measured request of weight `w` (see [`crate::sampling`]) started.
    #[inline]
    pub fn inc_by(&mut self, now_ns: u64, w: u32) {
        self.advance(now_ns);
        self.current = self.current.saturating_add(w);
        self.max = self.max.max(self.current);
    }

    /// A measured request of weight `w` finished.
    #[inline]
    pub fn dec_by(&mut self, now_ns: u64, w: u32) {
        self.advance(now_ns);
        self.current = self.current.saturating_sub(w);
    }

    pub fn current(&self) -> u32 {
        self.current
    }

    /// Ends the window `[start_ns, now_ns]`: returns (time-averaged in-flight, max in-flight)
    /// and starts the next window (its max starts at the current level).
    pub fn take(&mut self, start_ns: u64, now_ns: u64) -> (f64, u32) {
        self.advance(now_ns);
        let len = now_ns.saturating_sub(start_ns);
        let avg = if len == 0 {
            f64::from(self.current)
        } else {
            self.area as f64 / len as f64
        };
        let max = self.max;
        self.area = 0;
        self.max = self.current;
        self.last_ns = self.last_ns.max(now_ns);
        (avg, max)
    }
}

/// One cluster's counters over the current window. Measured requests add their weight (1
/// unless sampling, see [`crate::sampling`]); shed requests are exact and kept apart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Weighted measured requests (shed not included).
    pub requests: u64,
    /// Requests measured (unweighted; shed not included).
    pub samples: u64,
    /// Status classes 1xx..5xx at index 0..5, no response code at index 5.
    pub status: [u64; 6],
    pub flag_uo: u64,
    pub flag_ut: u64,
    pub flag_uf: u64,
    pub flag_uc: u64,
    pub flag_urx: u64,
    pub retries: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Sampled protocols: HTTP/1, /2, /3, other.
    pub protocol_samples: [u64; 4],
    pub shed: u64,
    /// Distinct endpoints among the sampled requests.
    pub endpoints: EndpointSet,
    pub latency: LatencyHistogram,
}

/// Index into [`Counters::status`] for an HTTP status code.
#[inline]
pub fn status_class(status: u32) -> usize {
    match status {
        100..=599 => (status / 100 - 1) as usize,
        _ => 5,
    }
}

impl Counters {
    /// Adds one finished request.
    #[inline]
    pub fn record(&mut self, r: &RequestRecord) {
        self.record_weighted(r, 1);
    }

    /// Adds one measured request standing for `w` requests.
    #[inline]
    pub fn record_weighted(&mut self, r: &RequestRecord, w: u32) {
        let w = u64::from(w);
        self.requests += w;
        self.samples += 1;
        self.status[status_class(r.status)] += w;
        if r.flags != 0 {
            let f = FlagClasses::from_bits(r.flags);
            self.flag_uo += w * u64::from(f.uo);
            self.flag_ut += w * u64::from(f.ut);
            self.flag_uf += w * u64::from(f.uf);
            self.flag_uc += w * u64::from(f.uc);
            self.flag_urx += w * u64::from(f.urx);
        }
        self.retries += w * r.attempts.saturating_sub(1);
        self.request_bytes = self
            .request_bytes
            .saturating_add(w.saturating_mul(r.request_bytes));
        self.response_bytes = self
            .response_bytes
            .saturating_add(w.saturating_mul(r.response_bytes));
        if let Some(p) = r.protocol {
            self.protocol_samples[p as usize] += 1;
        }
        if let Some(e) = r.endpoint {
            self.endpoints.insert(e);
        }
        if let Some(us) = r.duration_us {
            self.latency.record_n(us, w);
        }
    }

    /// Adds one request shed locally (a 503 that never went upstream; no latency sample).
    /// Exact: shed requests are never sampled.
    pub fn record_shed(&mut self) {
        self.shed += 1;
    }

    /// Whether anything was recorded in this window.
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.shed == 0
    }

    fn reset(&mut self) {
        let mut latency = std::mem::take(&mut self.latency);
        latency.clear();
        *self = Counters {
            latency,
            ..Default::default()
        };
    }

    /// Wire form of this window (histogram sparse), with in-flight figures. `scale` is the
    /// worker's `(finished, Σ weights)` when the window was sampled (see [`crate::sampling`]):
    /// the weighted counts are multiplied by `finished / Σ weights` and the window says it
    /// is an estimate (`estimated`, `samples`); `None` = every request was measured.
    pub fn to_proto(
        &self,
        cluster: &str,
        inflight_avg: f64,
        inflight_max: u32,
        scale: Option<(u64, u64)>,
    ) -> v1::UpstreamWindow {
        let (num, den) = scale.unwrap_or((1, 1));
        let sc = |x: u64| sampling::scale(x, num, den);
        let status = sampling::scale_group(self.status, num, den);
        let [flag_uf, flag_uc, flag_urx] =
            sampling::scale_group([self.flag_uf, self.flag_uc, self.flag_urx], num, den);
        let measured = sc(self.requests);
        let requests = measured + self.shed;
        let (bucket_index, counts): (Vec<u32>, Vec<u64>) = self.latency.nonzero_buckets().unzip();
        let bucket_count = if scale.is_some() {
            // Cumulative rounding keeps every quantile's rank.
            let mut cum = 0u64;
            let mut prev = 0u64;
            counts
                .iter()
                .map(|&c| {
                    cum += c;
                    let v = sc(cum);
                    let d = v - prev;
                    prev = v;
                    d
                })
                .collect()
        } else {
            counts
        };
        let [http1, http2, http3] = scale_protocols(self.protocol_samples, requests);
        let inflight_factor = if den == 0 {
            1.0
        } else {
            num as f64 / den as f64
        };
        v1::UpstreamWindow {
            cluster: cluster.to_string(),
            requests,
            status_1xx: status[0],
            status_2xx: status[1],
            status_3xx: status[2],
            status_4xx: status[3],
            status_5xx: status[4] + self.shed,
            status_none: status[5],
            flag_uo: sc(self.flag_uo),
            flag_ut: sc(self.flag_ut),
            flag_uf,
            flag_uc,
            flag_urx,
            retries: sc(self.retries),
            inflight_max: if scale.is_some() {
                (f64::from(inflight_max) * inflight_factor).round() as u32
            } else {
                inflight_max
            },
            inflight_avg: inflight_avg * inflight_factor,
            request_bytes: sc(self.request_bytes),
            response_bytes: sc(self.response_bytes),
            http1_requests: http1,
            http2_requests: http2,
            http3_requests: http3,
            shed: self.shed,
            endpoints: u32::try_from(self.endpoints.len()).unwrap_or(u32::MAX),
            latency: Some(v1::LatencyHistogram {
                sub_bucket_bits: meshtune_core::histogram::SUB_BUCKET_BITS,
                bucket_index,
                bucket_count,
                sum_us: sc(self.latency.sum_us()),
                min_us: self.latency.min_us(),
                max_us: self.latency.max_us(),
            }),
            estimated: scale.is_some(),
            samples: self.samples + self.shed,
        }
    }
}

/// One tracked upstream cluster.
#[derive(Debug)]
pub struct Slot {
    pub name: String,
    /// Shared-data key of this cluster's per-Envoy in-flight counter (concurrency hints).
    pub limit_key: String,
    pub counters: Counters,
    pub inflight: InflightGauge,
    pub hint: Option<ActiveHint>,
    in_use: bool,
    idle_windows: u32,
}

/// Slot index of a tracked cluster; stable while any request holds it.
pub type SlotId = u16;

/// A finished worker window, ready to be encoded for the reporter.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowOut {
    pub start_ns: u64,
    pub length_ns: u64,
    pub upstreams: Vec<v1::UpstreamWindow>,
}

/// The bounded set of clusters one worker VM tracks, and the current window.
#[derive(Debug)]
pub struct Tracker {
    slots: Vec<Slot>,
    index: HashMap<String, SlotId>,
    /// Slot of the last successful lookup.
    last: std::cell::Cell<SlotId>,
    free: Vec<SlotId>,
    max_upstreams: usize,
    window_start_ns: u64,
    /// Requests not tracked because `max_upstreams` clusters were tracked already
    /// (since the last [`Tracker::take_untracked`]).
    untracked: u64,
    /// Requests finished in this window, measured or not (shed not included): exact.
    finished: u64,
    /// Of those, requests not measured (sampling).
    unmeasured: u64,
    /// Σ weights of the measured ones (including those without a tracked cluster).
    weight_sum: u64,
}

impl Tracker {
    pub fn new(max_upstreams: u32, now_ns: u64) -> Self {
        Self {
            slots: Vec::new(),
            index: HashMap::new(),
            last: std::cell::Cell::new(0),
            free: Vec::new(),
            max_upstreams: (max_upstreams as usize).clamp(1, usize::from(SlotId::MAX)),
            window_start_ns: now_ns,
            untracked: 0,
            finished: 0,
            unmeasured: 0,
            weight_sum: 0,
        }
    }

    /// Slot of a cluster without creating one. The last slot found is checked first (a
    /// byte comparison instead of hashing: most workers talk to few clusters).
    #[inline]
    pub fn find(&self, cluster: &str) -> Option<SlotId> {
        if let Some(s) = self.slots.get(usize::from(self.last.get())) {
            if s.in_use && s.name == cluster {
                return Some(self.last.get());
            }
        }
        let id = self.index.get(cluster).copied();
        if let Some(id) = id {
            self.last.set(id);
        }
        id
    }

    /// Slot of a cluster, creating it if there is room; `None` (and counted) when full.
    pub fn slot_for(&mut self, cluster: &str, now_ns: u64) -> Option<SlotId> {
        if let Some(id) = self.find(cluster) {
            return Some(id);
        }
        let fresh = || Slot {
            name: cluster.to_string(),
            limit_key: format!("meshtune.inflight.{cluster}"),
            counters: Counters::default(),
            inflight: InflightGauge::new(now_ns),
            hint: None,
            in_use: true,
            idle_windows: 0,
        };
        let id = if let Some(id) = self.free.pop() {
            let slot = self.slots.get_mut(usize::from(id))?;
            let mut s = fresh();
            // Reuse the histogram allocation.
            s.counters.latency = std::mem::take(&mut slot.counters.latency);
            s.counters.latency.clear();
            *slot = s;
            id
        } else if self.slots.len() < self.max_upstreams {
            self.slots.push(fresh());
            SlotId::try_from(self.slots.len() - 1).ok()?
        } else {
            self.untracked += 1;
            return None;
        };
        self.index.insert(cluster.to_string(), id);
        Some(id)
    }

    /// Requests measured for `id` in the current window so far (for protocol sampling).
    pub fn finished_in_window(&self, id: SlotId) -> u64 {
        self.slot(id).map_or(0, |s| s.counters.samples)
    }

    #[inline]
    pub fn slot(&self, id: SlotId) -> Option<&Slot> {
        self.slots.get(usize::from(id)).filter(|s| s.in_use)
    }

    #[inline]
    pub fn slot_mut(&mut self, id: SlotId) -> Option<&mut Slot> {
        self.slots.get_mut(usize::from(id)).filter(|s| s.in_use)
    }

    /// A request towards the slot's cluster started.
    #[inline]
    pub fn start(&mut self, id: SlotId, now_ns: u64) {
        self.start_weighted(id, now_ns, 1);
    }

    /// A measured request of weight `w` towards the slot's cluster started.
    #[inline]
    pub fn start_weighted(&mut self, id: SlotId, now_ns: u64, w: u32) {
        if let Some(s) = self.slot_mut(id) {
            s.inflight.inc_by(now_ns, w);
        }
    }

    /// A started request finished.
    #[inline]
    pub fn finish(&mut self, id: SlotId, now_ns: u64, rec: &RequestRecord) {
        self.finish_weighted(id, now_ns, rec, 1);
    }

    /// A started measured request of weight `w` finished.
    #[inline]
    pub fn finish_weighted(&mut self, id: SlotId, now_ns: u64, rec: &RequestRecord, w: u32) {
        self.finished += 1;
        self.weight_sum += u64::from(w);
        if let Some(s) = self.slot_mut(id) {
            s.inflight.dec_by(now_ns, w);
            s.counters.record_weighted(rec, w);
        }
    }

    /// A request finished that was never counted as started (no slot at start time).
    #[inline]
    pub fn record_only(&mut self, id: SlotId, rec: &RequestRecord) {
        self.record_only_weighted(id, rec, 1);
    }

    /// [`Tracker::record_only`] for a measured request of weight `w`.
    #[inline]
    pub fn record_only_weighted(&mut self, id: SlotId, rec: &RequestRecord, w: u32) {
        self.finished += 1;
        self.weight_sum += u64::from(w);
        if let Some(s) = self.slot_mut(id) {
            s.counters.record_weighted(rec, w);
        }
    }

    /// A measured request of weight `w` finished without a tracked cluster: it still counts
    /// in the worker's totals (so the other clusters are not scaled up by its absence).
    #[inline]
    pub fn measured_untracked(&mut self, w: u32) {
        self.finished += 1;
        self.weight_sum += u64::from(w);
    }

    /// A request finished that was not measured (sampling): counted, nothing read.
    #[inline]
    pub fn unmeasured(&mut self) {
        self.finished += 1;
        self.unmeasured += 1;
    }

    /// Whether anything finished in the current window so far.
    pub fn window_has_requests(&self) -> bool {
        self.finished > 0
    }

    /// A request was shed locally.
    pub fn record_shed(&mut self, id: SlotId) {
        if let Some(s) = self.slot_mut(id) {
            s.counters.record_shed();
        }
    }

    /// Untracked requests since the last call.
    pub fn take_untracked(&mut self) -> u64 {
        std::mem::take(&mut self.untracked)
    }

    pub fn tracked(&self) -> usize {
        self.index.len()
    }

    pub fn window_start_ns(&self) -> u64 {
        self.window_start_ns
    }

    /// All live slots (for applying hints).
    pub fn slots_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slots.iter_mut().filter(|s| s.in_use)
    }

    /// Ends the current window at `now_ns`: returns the active clusters' counters, resets
    /// them, and frees slots idle for [`IDLE_WINDOWS_BEFORE_EVICTION`] windows.
    /// Windows in which some requests were not measured are scaled (see
    /// [`crate::sampling`]) and marked `estimated`.
    pub fn take_window(&mut self, now_ns: u64) -> WindowOut {
        let start_ns = self.window_start_ns;
        let mut upstreams = Vec::new();
        let scale = (self.unmeasured > 0).then_some((self.finished, self.weight_sum));
        self.finished = 0;
        self.unmeasured = 0;
        self.weight_sum = 0;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if !s.in_use {
                continue;
            }
            let (avg, max) = s.inflight.take(start_ns, now_ns);
            let active = !s.counters.is_empty() || max > 0;
            if active {
                upstreams.push(s.counters.to_proto(&s.name, avg, max, scale));
                s.counters.reset();
                s.idle_windows = 0;
            } else {
                s.idle_windows += 1;
            }
            let hinted = s.hint.is_some();
            if s.idle_windows >= IDLE_WINDOWS_BEFORE_EVICTION
                && s.inflight.current() == 0
                && !hinted
            {
                s.in_use = false;
                self.index.remove(&s.name);
                if let Ok(id) = SlotId::try_from(i) {
                    self.free.push(id);
                }
            }
        }
        self.window_start_ns = now_ns.max(start_ns);
        WindowOut {
            start_ns,
            length_ns: now_ns.saturating_sub(start_ns),
            upstreams,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags;

    const MS: u64 = 1_000_000;

    fn ok(status: u32, us: u64) -> RequestRecord {
        RequestRecord {
            status,
            attempts: 1,
            request_bytes: 100,
            response_bytes: 1000,
            protocol: Some(Protocol::Http1),
            duration_us: Some(us),
            ..Default::default()
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(100), 0);
        assert_eq!(status_class(204), 1);
        assert_eq!(status_class(302), 2);
        assert_eq!(status_class(404), 3);
        assert_eq!(status_class(503), 4);
        assert_eq!(status_class(599), 4);
        assert_eq!(status_class(0), 5);
        assert_eq!(status_class(600), 5);
        assert_eq!(status_class(99), 5);
    }

    #[test]
    fn inflight_time_average_and_max() {
        // Window 0..1000 ms: one request 0..500, a second 250..1000 (still open at the end).
        let mut g = InflightGauge::new(0);
        g.inc(0);
        g.inc(250 * MS);
        g.dec(500 * MS);
        let (avg, max) = g.take(0, 1000 * MS);
        // area = 1*250 + 2*250 + 1*500 = 1250 request·ms over 1000 ms.
        assert!((avg - 1.25).abs() < 1e-9, "avg {avg}");
        assert_eq!(max, 2);
        // Next window: the open request continues; max starts at the current level.
        g.dec(1500 * MS);
        let (avg, max) = g.take(1000 * MS, 2000 * MS);
        assert!((avg - 0.5).abs() < 1e-9, "avg {avg}");
        assert_eq!(max, 1);
        let (avg, max) = g.take(2000 * MS, 3000 * MS);
        assert_eq!((avg, max), (0.0, 0));
    }

    #[test]
    fn inflight_ignores_time_going_backwards_and_underflow() {
        let mut g = InflightGauge::new(1000);
        g.dec(500);
        assert_eq!(g.current(), 0);
        g.inc(400);
        let (avg, max) = g.take(1000, 1000);
        assert_eq!((avg, max), (1.0, 1));
    }

    #[test]
    fn protocol_sampling_and_scaling() {
        assert!(samples_protocol(0), "first request of a window is sampled");
        assert!(!samples_protocol(1));
        assert!(samples_protocol(PROTOCOL_SAMPLE_EVERY));
        assert_eq!(scale_protocols([0; 4], 100), [0, 0, 0]);
        assert_eq!(scale_protocols([7, 0, 0, 0], 100), [100, 0, 0]);
        assert_eq!(scale_protocols([3, 1, 0, 0], 100), [75, 25, 0]);
        // Floors: never more than the requests.
        assert_eq!(scale_protocols([1, 1, 1, 0], 100), [33, 33, 33]);
        assert_eq!(scale_protocols([1, 0, 0, 1], 9), [4, 0, 0]);
        assert_eq!(
            scale_protocols([u64::MAX, 0, 0, 0], u64::MAX),
            [u64::MAX, 0, 0]
        );
    }

    #[test]
    fn window_accounts_everything() {
        let mut t = Tracker::new(8, 0);
        let a = t.slot_for("a", 0).unwrap();
        for (i, rec) in [
            ok(200, 1000),
            ok(201, 3000),
            ok(404, 500),
            RequestRecord {
                status: 503,
                flags: flags::UPSTREAM_OVERFLOW,
                protocol: Some(Protocol::Http2),
                duration_us: Some(10),
                ..Default::default()
            },
            RequestRecord {
                status: 504,
                flags: flags::UPSTREAM_REQUEST_TIMEOUT | flags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
                attempts: 3,
                protocol: Some(Protocol::Http3),
                duration_us: Some(100_000),
                ..Default::default()
            },
            RequestRecord {
                status: 0,
                flags: flags::UPSTREAM_CONNECTION_FAILURE | flags::UPSTREAM_CONNECTION_TERMINATION,
                duration_us: None,
                ..Default::default()
            },
        ]
        .iter()
        .enumerate()
        {
            let at = i as u64 * 100 * MS;
            t.start(a, at);
            t.finish(a, at + 50 * MS, rec);
        }
        t.record_shed(a);
        let w = t.take_window(1000 * MS);
        assert_eq!((w.start_ns, w.length_ns), (0, 1000 * MS));
        assert_eq!(w.upstreams.len(), 1);
        let u = &w.upstreams[0];
        assert_eq!(u.cluster, "a");
        assert_eq!(u.requests, 7);
        assert_eq!(
            (
                u.status_1xx,
                u.status_2xx,
                u.status_3xx,
                u.status_4xx,
                u.status_5xx,
                u.status_none
            ),
            (0, 2, 0, 1, 3, 1)
        );
        assert_eq!(
            (u.flag_uo, u.flag_ut, u.flag_uf, u.flag_uc, u.flag_urx),
            (1, 1, 1, 1, 1)
        );
        assert_eq!(u.retries, 2);
        assert_eq!(u.shed, 1);
        assert_eq!((u.request_bytes, u.response_bytes), (300, 3000));
        // 5 protocol samples (3 HTTP/1, 1 HTTP/2, 1 HTTP/3) scaled to 7 requests, floored.
        assert_eq!(
            (u.http1_requests, u.http2_requests, u.http3_requests),
            (4, 1, 1)
        );
        assert_eq!(u.inflight_max, 1);
        // 6 requests of 50 ms each within 1000 ms.
        assert!((u.inflight_avg - 0.3).abs() < 1e-9);
        let h = u.latency.as_ref().unwrap();
        assert_eq!(
            h.bucket_count.iter().sum::<u64>(),
            5,
            "shed and no-duration have no sample"
        );
        assert_eq!((h.min_us, h.max_us), (10, 100_000));
        // The next window starts empty and the idle cluster is not reported.
        let w2 = t.take_window(2000 * MS);
        assert!(w2.upstreams.is_empty());
        assert_eq!(w2.start_ns, 1000 * MS);
    }

    /// Sampled windows: the worker total is exact, per-cluster counts are scaled estimates,
    /// the window says so; shed requests stay exact.
    #[test]
    fn sampled_windows_are_scaled_and_marked() {
        let mut t = Tracker::new(8, 0);
        let a = t.slot_for("a", 0).unwrap();
        let b = t.slot_for("b", 0).unwrap();
        let mut sampler = crate::sampling::Sampler::new(1000, 3, 0);
        for _ in 0..8000 {
            sampler.admit();
        }
        sampler.adapt(1000 * MS, 0);
        assert_eq!(sampler.interval(), 8);
        let n = 40_000u64;
        let mut rng = 12345u64;
        for i in 0..n {
            // a: 70 %, of which every 10th is a 503 with UO; b: 30 %, all 200.
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (id, rec) = if (rng >> 33) % 10 < 7 {
                if i % 10 == 0 {
                    (
                        a,
                        RequestRecord {
                            status: 503,
                            flags: flags::UPSTREAM_OVERFLOW,
                            duration_us: Some(100),
                            ..Default::default()
                        },
                    )
                } else {
                    (a, ok(200, 1000))
                }
            } else {
                (b, ok(200, 2000))
            };
            match sampler.admit() {
                Some(w) => {
                    t.start_weighted(id, 0, w);
                    t.finish_weighted(id, 1, &rec, w);
                }
                None => t.unmeasured(),
            }
        }
        t.record_shed(a);
        let w = t.take_window(1000 * MS);
        let (ua, ub) = (&w.upstreams[0], &w.upstreams[1]);
        assert!(ua.estimated && ub.estimated);
        let total = ua.requests + ub.requests;
        assert!(total.abs_diff(n + 1) <= 2, "worker total exact: {total}");
        let rel = |est: u64, exact: f64| (est as f64 - exact).abs() / exact;
        assert!(rel(ua.requests, 0.7 * n as f64) < 0.03, "a {}", ua.requests);
        // 5xx of a ≈ 7 % of all requests (+1 shed), σ ≈ 2.5 % of it at ~5,000 samples.
        assert!(
            rel(ua.status_5xx, 0.07 * n as f64) < 0.10,
            "5xx {}",
            ua.status_5xx
        );
        assert!(ua.flag_uo.abs_diff(ua.status_5xx - 1) <= 1);
        assert_eq!(ua.shed, 1, "shed exact");
        assert!((ua.samples + ub.samples).abs_diff(n / 8 + 1) < 300);
        let hist =
            |u: &v1::UpstreamWindow| u.latency.as_ref().unwrap().bucket_count.iter().sum::<u64>();
        assert!(hist(ua) <= ua.requests && hist(ub) <= ub.requests);
        assert!(hist(ub).abs_diff(ub.requests) <= 1);
        // In-flight (every request 1 ns long here) scaled with the counts, not by 1/N.
        assert!(ua.inflight_avg > 0.0);
        // Below the threshold nothing is estimated and samples equal requests.
        t.start(a, 1000 * MS);
        t.finish(a, 1001 * MS, &ok(200, 10));
        let w = t.take_window(2000 * MS);
        assert!(!w.upstreams[0].estimated);
        assert_eq!((w.upstreams[0].requests, w.upstreams[0].samples), (1, 1));
    }

    #[test]
    fn clusters_are_bounded_and_overflow_is_counted() {
        let mut t = Tracker::new(2, 0);
        let a = t.slot_for("a", 0).unwrap();
        let b = t.slot_for("b", 0).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.slot_for("a", 0), Some(a));
        assert_eq!(t.slot_for("c", 0), None);
        assert_eq!(t.slot_for("d", 0), None);
        assert_eq!(t.take_untracked(), 2);
        assert_eq!(t.take_untracked(), 0);
        assert_eq!(t.tracked(), 2);
    }

    #[test]
    fn idle_slots_are_freed_but_not_while_requests_are_open() {
        let mut t = Tracker::new(2, 0);
        let a = t.slot_for("a", 0).unwrap();
        let b = t.slot_for("b", 0).unwrap();
        t.start(b, 0); // b has a long request open
        for i in 1..=IDLE_WINDOWS_BEFORE_EVICTION as u64 {
            t.take_window(i * 1000 * MS);
        }
        assert_eq!(t.find("a"), None, "idle a freed");
        assert_eq!(t.find("b"), Some(b), "b kept while in flight");
        assert!(t.slot(a).is_none());
        let c = t.slot_for("c", 5000 * MS).unwrap();
        assert_eq!(c, a, "freed slot reused");
        // b's request still finishes into b.
        t.finish(b, 5000 * MS, &ok(200, 5_000_000));
        let w = t.take_window(6000 * MS);
        assert_eq!(w.upstreams.len(), 1);
        assert_eq!(w.upstreams[0].cluster, "b");
        assert_eq!(w.upstreams[0].requests, 1);
    }

    #[test]
    fn lookup_cache_follows_slot_reuse() {
        let mut t = Tracker::new(1, 0);
        let a = t.slot_for("a", 0).unwrap();
        assert_eq!(t.find("a"), Some(a)); // cached now
        for i in 1..=IDLE_WINDOWS_BEFORE_EVICTION as u64 {
            t.take_window(i * 1000 * MS);
        }
        assert_eq!(t.find("a"), None, "cached slot was freed");
        let b = t.slot_for("b", 0).unwrap();
        assert_eq!(b, a);
        assert_eq!(t.find("b"), Some(b));
        assert_eq!(
            t.find("a"),
            None,
            "cache compares the name, not just the index"
        );
    }

    #[test]
    fn protocol_strings() {
        assert_eq!(Protocol::from_bytes(b"HTTP/1.1"), Protocol::Http1);
        assert_eq!(Protocol::from_bytes(b"HTTP/1.0"), Protocol::Http1);
        assert_eq!(Protocol::from_bytes(b"HTTP/2"), Protocol::Http2);
        assert_eq!(Protocol::from_bytes(b"HTTP/3"), Protocol::Http3);
        assert_eq!(Protocol::from_bytes(b""), Protocol::Other);
    }
}
