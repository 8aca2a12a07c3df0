//! Per-destination aggregation of validated reports: pure, clock passed in, no I/O.
//!
//! Each destination — a [`DestKey`]: the reporter's namespace and the upstream cluster name, so
//! reporters of different namespaces never share (or move) each other's aggregates — keeps one bucket per second of controller receive
//! time, holding the reports of all reporters that arrived in that second merged with
//! [`WindowStats::merge_concurrent`] semantics; a bucket's latency histogram is stored sparse
//! (only non-empty buckets) to keep memory small. A sliding-window view merges the buckets of
//! the last `window_secs` seconds with [`WindowStats::merge_sequential`]. Next to the window,
//! exact lifetime totals (and a lifetime latency histogram) are kept since the destination was
//! first seen.
//!
//! **Window duration.** `duration_s` of a window is the wall-clock span it covers:
//! `min(window_secs, time since the destination's first report + that report's length)`, so
//! the rate of a destination whose traffic stopped decays to 0 instead of freezing, less the
//! reports of the current second still on their way: a reporter that reported in the previous
//! second but not yet in this one has one report fewer in the window (its window holds
//! `window_secs − 1` seconds of its traffic), so the span shrinks by the share of the window's
//! reporters in that state ([`pending_share`]; reporters weigh alike). Without it a decision
//! taken before this second's reports arrived divided `window_secs − 1` seconds of requests
//! by `window_secs` (rates up to `1/window_secs` low, found by `testbed compare-windows`).
//! `inflight_avg` is time-weighted over that span (0 where nothing was reported).
//!
//! **Approximation.** If one reporter lands twice in the same one-second bucket (flush jitter),
//! its counts add exactly but its in-flight max/average are combined by `max`, not summed.
//!
//! **De-duplication.** Per reporter (namespace, workload, pod, vm_id) the highest accepted
//! sequence is kept; a report with a sequence not above it is a duplicate and changes nothing,
//! except a restart: a lower sequence that is `<= dropped_reports + 1` (a fresh reporter whose
//! earlier reports all failed) resets the reporter.
//!
//! **Bounds.** At most `max_destinations` destinations and `max_reporters` reporters; idle
//! ones expire after `destination_idle_ms` / `reporter_idle_ms`. Both tables keep recency
//! order ([`crate::lru::LruMap`]), so expiry and eviction take the oldest entries in O(1) each,
//! never a scan under the ingest mutex. A new destination when the table is full evicts one:
//! first the least recently reported *probationary* destination (reported in one second
//! only, e.g. one of a flood of made-up names), and only when there is none the least recently
//! reported *established* one (reported in at least two different seconds). A destination that
//! keeps reporting is therefore never displaced by names seen once. Evicted and expired
//! destinations are counted ([`Aggregator::take_removed`]) so the per-destination state
//! elsewhere (policy status, loop state, metrics) can be pruned with them.
//!
//! **Memory budget.** Next to the count, the destinations' approximate heap size (histograms,
//! buckets, names; [`Aggregator::approx_memory_bytes`]) is kept at most `max_bytes`: a
//! destination whose reports carry full histograms every second costs ~70 KB, an idle one with
//! a short histogram ~1 KB, so a count alone cannot bound memory. Over budget, destinations are
//! evicted in the same order. Reporters are keyed by a 64-bit keyed hash of their identity
//! (not its up to 4 × `max_name_len` bytes of strings), so the reporter table is ~100 bytes an
//! entry whatever the names.
//!
//! **Overflow.** Every counter sum saturates at `u64::MAX` (a hostile or buggy reporter cannot
//! make the controller panic in a debug build or wrap in a release build).

use crate::lru::LruMap;
use crate::validate::{ReporterKey, ValidReport};
use meshtune_core::histogram::LatencyHistogram;
use meshtune_core::{DestKey, WindowStats};
use std::collections::{HashSet, VecDeque};

/// Aggregation bounds (see [`crate::config::Config::aggregate_limits`]).
#[derive(Debug, Clone)]
pub struct Limits {
    pub window_secs: u64,
    pub max_destinations: usize,
    pub max_reporters: usize,
    pub destination_idle_ms: u64,
    pub reporter_idle_ms: u64,
    /// Budget of the destinations' approximate heap bytes (see the module docs).
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        crate::config::Config::default().aggregate_limits()
    }
}

/// What happened to one report.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestOutcome {
    /// Merged into the aggregates.
    Accepted {
        accepted_sequence: u64,
        /// The reporter was seen before and its sequence went back (restart).
        restarted: bool,
        /// Increase of the reporter's `dropped_reports` counter since its last report.
        dropped_reports_delta: u64,
        /// Destinations evicted to make room because `max_destinations` was reached.
        destinations_dropped: u64,
    },
    /// Sequence already seen (or older): nothing changed.
    Duplicate { accepted_sequence: u64 },
}

impl IngestOutcome {
    pub fn accepted_sequence(&self) -> u64 {
        match self {
            IngestOutcome::Accepted {
                accepted_sequence, ..
            }
            | IngestOutcome::Duplicate { accepted_sequence } => *accepted_sequence,
        }
    }
}

/// One reported cluster's sliding window and how many reporters it merges.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterWindow {
    /// Reporter namespace and reported cluster.
    pub key: DestKey,
    pub stats: WindowStats,
    /// Distinct reporters with a report in the window.
    pub clients: u32,
    /// Offered load (rps) over the last [`RECENT_SECS`] complete seconds, `None` with fewer
    /// than [`RECENT_MIN_REQUESTS`] requests there: a load step shows here at once, in the
    /// window's mean only gradually (the guardrails' rollback watch compares both).
    pub recent_rps: Option<f64>,
}

/// Complete seconds of controller receive time behind [`ClusterWindow::recent_rps`].
pub const RECENT_SECS: u64 = 3;
/// Requests [`ClusterWindow::recent_rps`] needs (a relative standard error ≤ 14 % for Poisson
/// arrivals), so a quiet destination's noise does not pass for a load change.
pub const RECENT_MIN_REQUESTS: u64 = 50;

impl From<(String, WindowStats)> for ClusterWindow {
    /// One reporter's window in the default namespace (tests, benchmarks).
    fn from((cluster, stats): (String, WindowStats)) -> Self {
        ClusterWindow::from((DestKey::new("", cluster), stats))
    }
}

impl From<(DestKey, WindowStats)> for ClusterWindow {
    /// One reporter's window (tests, benchmarks).
    fn from((key, stats): (DestKey, WindowStats)) -> Self {
        ClusterWindow {
            key,
            stats,
            clients: 1,
            recent_rps: None,
        }
    }
}

/// One destination as seen over the window and its lifetime.
#[derive(Debug, Clone)]
pub struct DestinationView {
    /// Reporter namespace and reported cluster.
    pub key: DestKey,
    /// Distinct reporters with a report in the window.
    pub reporters: usize,
    pub last_report_unix_ms: u64,
    pub window: WindowStats,
    pub lifetime: WindowStats,
}

#[derive(Debug)]
struct ReporterState {
    id: u32,
    last_sequence: u64,
    last_seen_ms: u64,
    dropped_reports: u64,
}

/// Scalar counters of a [`WindowStats`] (everything but the histogram).
#[derive(Debug, Clone, Default)]
struct Counters {
    duration_s: f64,
    requests: u64,
    status_2xx: u64,
    status_4xx: u64,
    status_5xx: u64,
    status_other: u64,
    flag_uo: u64,
    flag_ut: u64,
    flag_conn_failure: u64,
    retries: u64,
    shed: u64,
    inflight_max: u64,
    inflight_avg: f64,
    request_bytes: u64,
    response_bytes: u64,
    http2_requests: u64,
    endpoints: u32,
    unmeasured_requests: u64,
}

impl Counters {
    /// Adds `w`; `concurrent` (another reporter) sums in-flight, otherwise takes the max.
    fn add(&mut self, w: &WindowStats, concurrent: bool) {
        self.duration_s = self.duration_s.max(w.duration_s);
        self.requests = self.requests.saturating_add(w.requests);
        self.status_2xx = self.status_2xx.saturating_add(w.status_2xx);
        self.status_4xx = self.status_4xx.saturating_add(w.status_4xx);
        self.status_5xx = self.status_5xx.saturating_add(w.status_5xx);
        self.status_other = self.status_other.saturating_add(w.status_other);
        self.flag_uo = self.flag_uo.saturating_add(w.flag_uo);
        self.flag_ut = self.flag_ut.saturating_add(w.flag_ut);
        self.flag_conn_failure = self.flag_conn_failure.saturating_add(w.flag_conn_failure);
        self.retries = self.retries.saturating_add(w.retries);
        self.shed = self.shed.saturating_add(w.shed);
        self.request_bytes = self.request_bytes.saturating_add(w.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(w.response_bytes);
        self.http2_requests = self.http2_requests.saturating_add(w.http2_requests);
        self.endpoints = self.endpoints.max(w.endpoints);
        self.unmeasured_requests += w.unmeasured_requests;
        if concurrent {
            self.inflight_max = self.inflight_max.saturating_add(w.inflight_max);
            self.inflight_avg += w.inflight_avg;
        } else {
            self.inflight_max = self.inflight_max.max(w.inflight_max);
            self.inflight_avg = self.inflight_avg.max(w.inflight_avg);
        }
    }

    /// Writes the scalar fields into `w` (its histogram is left alone).
    fn fill(&self, w: &mut WindowStats) {
        w.duration_s = self.duration_s;
        w.requests = self.requests;
        w.status_2xx = self.status_2xx;
        w.status_4xx = self.status_4xx;
        w.status_5xx = self.status_5xx;
        w.status_other = self.status_other;
        w.flag_uo = self.flag_uo;
        w.flag_ut = self.flag_ut;
        w.flag_conn_failure = self.flag_conn_failure;
        w.retries = self.retries;
        w.shed = self.shed;
        w.inflight_max = self.inflight_max;
        w.inflight_avg = self.inflight_avg;
        w.request_bytes = self.request_bytes;
        w.response_bytes = self.response_bytes;
        w.http2_requests = self.http2_requests;
        w.endpoints = self.endpoints;
        w.unmeasured_requests = self.unmeasured_requests;
    }
}

/// A latency histogram holding only its non-empty buckets (parallel arrays: 10 bytes per
/// non-empty bucket).
#[derive(Debug, Clone, Default)]
struct SparseHistogram {
    /// Bucket indices, ascending.
    index: Vec<u16>,
    /// Count of `index[i]`.
    count: Vec<u64>,
    sum_us: u64,
    min_us: u64,
    max_us: u64,
}

impl SparseHistogram {
    fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.index.iter().copied().zip(self.count.iter().copied())
    }

    fn add(&mut self, h: &LatencyHistogram) {
        if h.is_empty() {
            return;
        }
        if self.is_empty() {
            self.min_us = h.min_us();
        } else {
            self.min_us = self.min_us.min(h.min_us());
        }
        self.max_us = self.max_us.max(h.max_us());
        self.sum_us = self.sum_us.saturating_add(h.sum_us());
        let cap = self.index.len() + 8;
        let (mut oi, mut oc) = (Vec::with_capacity(cap), Vec::with_capacity(cap));
        let mut mine = self.iter().peekable();
        for (i, c) in h.nonzero_buckets() {
            let i = i as u16;
            while let Some(&(j, d)) = mine.peek() {
                if j < i {
                    oi.push(j);
                    oc.push(d);
                    mine.next();
                } else {
                    break;
                }
            }
            match mine.peek() {
                Some(&(j, d)) if j == i => {
                    oi.push(i);
                    oc.push(c.saturating_add(d));
                    mine.next();
                }
                _ => {
                    oi.push(i);
                    oc.push(c);
                }
            }
        }
        for (j, d) in mine {
            oi.push(j);
            oc.push(d);
        }
        oi.shrink_to_fit();
        oc.shrink_to_fit();
        self.index = oi;
        self.count = oc;
    }

    fn heap_bytes(&self) -> usize {
        self.index.capacity() * std::mem::size_of::<u16>()
            + self.count.capacity() * std::mem::size_of::<u64>()
    }

    #[cfg(test)]
    fn to_histogram(&self) -> LatencyHistogram {
        let idx: Vec<u32> = self.index.iter().map(|&i| u32::from(i)).collect();
        // Built only from a valid histogram's buckets, so this cannot fail; fall back to empty.
        LatencyHistogram::from_sparse(
            meshtune_core::histogram::SUB_BUCKET_BITS,
            &idx,
            &self.count,
            self.sum_us,
            self.min_us,
            self.max_us,
        )
        .unwrap_or_default()
    }
}

/// Running per-bucket latency counts of every bucket a destination holds: added on ingest,
/// subtracted when a bucket expires, so a snapshot copies one small range instead of summing
/// every second's histogram (which for 10,000 destinations dominated the decision cycle).
#[derive(Debug, Clone, Default)]
struct RunningCounts {
    /// Histogram bucket index of `counts[0]`.
    offset: usize,
    counts: Vec<u64>,
}

impl RunningCounts {
    fn add(&mut self, h: &LatencyHistogram) {
        let mut buckets = h.nonzero_buckets();
        let Some((first, _)) = buckets.next() else {
            return;
        };
        let last = buckets.last().map_or(first, |(i, _)| i);
        let (lo, hi) = (first as usize, last as usize + 1);
        if self.counts.is_empty() {
            self.offset = lo;
            self.counts.resize(hi - lo, 0);
        } else {
            let end = self.offset + self.counts.len();
            if lo < self.offset {
                let mut grown = vec![0; end.max(hi) - lo];
                grown[self.offset - lo..end - lo].copy_from_slice(&self.counts);
                self.counts = grown;
                self.offset = lo;
            } else if hi > end {
                self.counts.resize(hi - self.offset, 0);
            }
        }
        for (i, c) in h.nonzero_buckets() {
            let x = &mut self.counts[i as usize - self.offset];
            *x = x.saturating_add(c);
        }
    }

    /// Subtracts a bucket that was added before; trims empty edges.
    fn sub(&mut self, h: &SparseHistogram) {
        Self::sub_from(self.offset, &mut self.counts, h);
        let lead = self.counts.iter().take_while(|&&c| c == 0).count();
        if lead == self.counts.len() {
            self.counts.clear();
            self.offset = 0;
            return;
        }
        let trail = self.counts.iter().rev().take_while(|&&c| c == 0).count();
        self.counts.truncate(self.counts.len() - trail);
        if lead > 0 {
            self.counts.drain(..lead);
            self.offset += lead;
        }
    }

    fn sub_from(offset: usize, counts: &mut [u64], h: &SparseHistogram) {
        for (i, c) in h.iter() {
            if let Some(x) = usize::from(i)
                .checked_sub(offset)
                .and_then(|j| counts.get_mut(j))
            {
                *x = x.saturating_sub(c);
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<u64>()
    }
}

#[derive(Debug)]
struct Bucket {
    /// Controller receive time, whole seconds since the Unix epoch.
    sec: u64,
    counters: Counters,
    latency: SparseHistogram,
    /// Reporter id of each report merged into this bucket (a reporter that landed twice in
    /// the second, flush jitter, is listed twice).
    reporters: Vec<u32>,
}

#[derive(Debug)]
struct Destination {
    /// Approximate bytes held (as last computed), part of [`Aggregator`]'s total.
    bytes: usize,
    buckets: VecDeque<Bucket>,
    /// Latency counts summed over `buckets`.
    running: RunningCounts,
    lifetime: WindowStats,
    first_seen_ms: u64,
    first_duration_s: f64,
    last_report_ms: u64,
}

/// Aggregates reports per destination; see the module docs.
#[derive(Debug)]
pub struct Aggregator {
    limits: Limits,
    /// Destinations reported in one second only, least recently reported first.
    probation: LruMap<DestKey, Destination>,
    /// Destinations reported in at least two seconds, least recently reported first.
    established: LruMap<DestKey, Destination>,
    /// Keyed by [`Aggregator::reporter_digest`].
    reporters: LruMap<u64, ReporterState>,
    /// Seeds the reporter digests (random per process).
    hasher: foldhash::fast::RandomState,
    /// Sum of every destination's `bytes`.
    bytes: usize,
    next_reporter_id: u32,
    last_expire_ms: u64,
    /// Destinations expired or evicted since the last [`Aggregator::take_removed`].
    removed: u64,
}

impl Aggregator {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Limits {
                window_secs: limits.window_secs.max(1),
                ..limits
            },
            probation: LruMap::new(),
            established: LruMap::new(),
            reporters: LruMap::new(),
            hasher: foldhash::fast::RandomState::default(),
            bytes: 0,
            next_reporter_id: 0,
            last_expire_ms: 0,
            removed: 0,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Number of tracked destinations.
    pub fn destination_count(&self) -> usize {
        self.probation.len() + self.established.len()
    }

    /// Destinations expired or evicted since the last call (the decision loop prunes its
    /// per-destination state when this is not 0).
    pub fn take_removed(&mut self) -> u64 {
        std::mem::take(&mut self.removed)
    }

    /// Keys of every tracked destination (no particular order).
    pub fn destination_names(&self) -> Vec<DestKey> {
        self.probation
            .keys()
            .chain(self.established.keys())
            .cloned()
            .collect()
    }

    /// Tracked destinations sorted by name.
    fn sorted(&self) -> Vec<(&DestKey, &Destination)> {
        let mut all: Vec<(&DestKey, &Destination)> = self
            .probation
            .iter()
            .chain(self.established.iter())
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// The names in eviction order: the next destination evicted first (tests).
    pub fn eviction_order(&self) -> Vec<String> {
        self.probation
            .keys()
            .chain(self.established.keys())
            .map(|k| k.cluster.clone())
            .collect()
    }

    /// Number of tracked reporters.
    pub fn reporter_count(&self) -> usize {
        self.reporters.len()
    }

    /// Merges a validated report received at `now_ms` (Unix ms), unless it is a duplicate.
    pub fn ingest(&mut self, report: &ValidReport, now_ms: u64) -> IngestOutcome {
        if now_ms.saturating_sub(self.last_expire_ms) >= 1000 {
            self.last_expire_ms = now_ms;
            self.expire_destinations(now_ms);
            self.expire_reporters(now_ms);
        }
        let seq = report.sequence;
        let rkey = self.reporter_digest(&report.reporter);
        let (id, restarted, dropped_delta) = match self.reporters.peek_mut(&rkey) {
            Some(st) => {
                let restarted = seq < st.last_sequence && seq <= report.dropped_reports + 1;
                if seq <= st.last_sequence && !restarted {
                    st.last_seen_ms = now_ms;
                    let accepted_sequence = st.last_sequence;
                    self.reporters.get_mut(&rkey);
                    return IngestOutcome::Duplicate { accepted_sequence };
                }
                let delta = if restarted {
                    report.dropped_reports
                } else {
                    report.dropped_reports.saturating_sub(st.dropped_reports)
                };
                st.last_sequence = seq;
                st.last_seen_ms = now_ms;
                st.dropped_reports = report.dropped_reports;
                let id = st.id;
                self.reporters.get_mut(&rkey);
                (id, restarted, delta)
            }
            None => {
                if self.reporters.len() >= self.limits.max_reporters {
                    self.expire_reporters(now_ms);
                    if self.reporters.len() >= self.limits.max_reporters {
                        self.reporters.pop_oldest();
                    }
                }
                let id = self.next_reporter_id;
                self.next_reporter_id = self.next_reporter_id.wrapping_add(1);
                self.reporters.insert(
                    rkey,
                    ReporterState {
                        id,
                        last_sequence: seq,
                        last_seen_ms: now_ms,
                        dropped_reports: report.dropped_reports,
                    },
                );
                (id, false, report.dropped_reports)
            }
        };
        let sec = now_ms / 1000;
        let mut destinations_dropped = 0;
        for (cluster, w) in &report.upstreams {
            let name = &DestKey::new(report.reporter.namespace.as_str(), cluster.as_str());
            if let Some(d) = self.probation.peek_mut(name) {
                // Reported again in a later second: established from now on.
                if d.last_report_ms / 1000 < sec {
                    if let Some(d) = self.probation.remove(name) {
                        self.established.insert(name.clone(), d);
                    }
                }
            }
            if !self.probation.contains_key(name) && !self.established.contains_key(name) {
                if self.destination_count() >= self.limits.max_destinations {
                    self.expire_destinations(now_ms);
                }
                if self.destination_count() >= self.limits.max_destinations.max(1)
                    && self.evict_one()
                {
                    destinations_dropped += 1;
                }
                if self.limits.max_destinations == 0 {
                    continue;
                }
                self.probation.insert(
                    name.clone(),
                    Destination {
                        bytes: 0,
                        buckets: VecDeque::with_capacity(self.limits.window_secs as usize + 1),
                        running: RunningCounts::default(),
                        lifetime: WindowStats::default(),
                        first_seen_ms: now_ms,
                        first_duration_s: w.duration_s,
                        last_report_ms: now_ms,
                    },
                );
            }
            let Some(d) = (match self.established.get_mut(name) {
                Some(d) => Some(d),
                None => self.probation.get_mut(name),
            }) else {
                continue;
            };
            d.last_report_ms = d.last_report_ms.max(now_ms);
            d.lifetime.merge_sequential(w);
            d.expire_buckets(sec, self.limits.window_secs);
            // Receive times are monotonic in practice; a report "from the past" (clock step)
            // joins the newest bucket.
            let need_new = d.buckets.back().is_none_or(|b| b.sec < sec);
            if need_new {
                d.buckets.push_back(Bucket {
                    sec,
                    counters: Counters::default(),
                    latency: SparseHistogram::default(),
                    reporters: Vec::new(),
                });
            }
            let b = d.buckets.back_mut().expect("bucket just ensured");
            let concurrent = !b.reporters.contains(&id);
            // One entry per report (a reporter twice in a second is listed twice).
            b.reporters.push(id);
            b.counters.add(w, concurrent);
            b.latency.add(&w.latency);
            d.running.add(&w.latency);
            let (old, new) = (d.bytes, d.heap_bytes(name));
            d.bytes = new;
            self.bytes = self.bytes.saturating_sub(old).saturating_add(new);
            // Over the memory budget: evict in the same order as for the count (the one just
            // updated is the newest, so it goes last within its table).
            while self.bytes > self.limits.max_bytes && self.destination_count() > 1 {
                if self.evict_one() {
                    destinations_dropped += 1;
                }
            }
        }
        IngestOutcome::Accepted {
            accepted_sequence: seq,
            restarted,
            dropped_reports_delta: dropped_delta,
            destinations_dropped,
        }
    }

    /// Evicts the least recently reported probationary destination, else the least recently
    /// reported established one; false when there is none.
    fn evict_one(&mut self) -> bool {
        let Some((_, d)) = self
            .probation
            .pop_oldest()
            .or_else(|| self.established.pop_oldest())
        else {
            return false;
        };
        self.bytes = self.bytes.saturating_sub(d.bytes);
        self.removed = self.removed.saturating_add(1);
        true
    }

    /// The key of a reporter in the table: a keyed 64-bit hash of its identity.
    fn reporter_digest(&self, k: &ReporterKey) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(k)
    }

    /// The destinations' approximate heap bytes as the memory budget counts them.
    pub fn budget_bytes(&self) -> usize {
        self.bytes
    }

    /// Approximate heap + inline bytes held for destinations and reporters (for memory
    /// benchmarks; counts capacities, not allocator overhead).
    pub fn approx_memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let dests: usize = self
            .probation
            .iter()
            .chain(self.established.iter())
            .map(|(name, d)| d.heap_bytes(name))
            .sum();
        let reporters = self.reporters.len()
            * (2 * size_of::<u64>() + size_of::<ReporterState>() + 4 * size_of::<usize>());
        dests + reporters
    }

    /// Drops idle destinations and reporters and every destination's buckets older than the
    /// window (a sweep over all destinations: ingest itself only expires the idle ones, oldest
    /// first, and a destination's own buckets when it reports).
    pub fn expire(&mut self, now_ms: u64) {
        self.last_expire_ms = now_ms;
        self.expire_destinations(now_ms);
        self.expire_reporters(now_ms);
        let sec = now_ms / 1000;
        let w = self.limits.window_secs;
        let mut total = 0usize;
        for table in [&mut self.probation, &mut self.established] {
            for (name, d) in table.iter_mut() {
                d.expire_buckets(sec, w);
                d.bytes = d.heap_bytes(name);
                total = total.saturating_add(d.bytes);
            }
        }
        self.bytes = total;
    }

    /// Drops idle destinations, oldest first (O(expired): the tables are in recency order).
    fn expire_destinations(&mut self, now_ms: u64) {
        let idle = self.limits.destination_idle_ms;
        for table in [&mut self.probation, &mut self.established] {
            while table
                .peek_oldest()
                .is_some_and(|(_, d)| now_ms.saturating_sub(d.last_report_ms) >= idle)
            {
                if let Some((_, d)) = table.pop_oldest() {
                    self.bytes = self.bytes.saturating_sub(d.bytes);
                }
                self.removed = self.removed.saturating_add(1);
            }
        }
    }

    /// Drops idle reporters, oldest first.
    fn expire_reporters(&mut self, now_ms: u64) {
        let idle = self.limits.reporter_idle_ms;
        while self
            .reporters
            .peek_oldest()
            .is_some_and(|(_, r)| now_ms.saturating_sub(r.last_seen_ms) >= idle)
        {
            self.reporters.pop_oldest();
        }
    }

    /// The sliding window of every tracked destination at `now_ms`, sorted by name, with the
    /// number of reporters in it: the policy's input (`WindowStats::features`, and the
    /// `clients` feature).
    pub fn snapshot(&self, now_ms: u64) -> Vec<ClusterWindow> {
        self.sorted()
            .into_iter()
            .map(|(name, d)| ClusterWindow {
                key: name.clone(),
                stats: self.window_of(d, now_ms),
                clients: u32::try_from(self.reporters_in_window(d, now_ms)).unwrap_or(u32::MAX),
                recent_rps: recent_rps(d, now_ms),
            })
            .collect()
    }

    /// Window and lifetime of every tracked destination at `now_ms`, sorted by name.
    pub fn destinations(&self, now_ms: u64) -> Vec<DestinationView> {
        self.sorted()
            .into_iter()
            .map(|(name, d)| {
                let window = self.window_of(d, now_ms);
                let reporters = self.reporters_in_window(d, now_ms);
                DestinationView {
                    key: name.clone(),
                    reporters,
                    last_report_unix_ms: d.last_report_ms,
                    window,
                    lifetime: d.lifetime.clone(),
                }
            })
            .collect()
    }

    /// Window and lifetime of one destination at `now_ms`.
    pub fn destination(&self, key: &DestKey, now_ms: u64) -> Option<DestinationView> {
        let d = self
            .established
            .get(key)
            .or_else(|| self.probation.get(key))?;
        Some(DestinationView {
            key: key.clone(),
            reporters: self.reporters_in_window(d, now_ms),
            last_report_unix_ms: d.last_report_ms,
            window: self.window_of(d, now_ms),
            lifetime: d.lifetime.clone(),
        })
    }

    /// Distinct reporters with a report in `d`'s window.
    fn reporters_in_window(&self, d: &Destination, now_ms: u64) -> usize {
        let (w, sec) = (self.limits.window_secs, now_ms / 1000);
        let mut ids: Vec<u32> = d
            .buckets
            .iter()
            .filter(|b| in_window(b.sec, sec, w))
            .flat_map(|b| b.reporters.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    /// The window of one destination.
    fn window_of(&self, d: &Destination, now_ms: u64) -> WindowStats {
        let w = self.limits.window_secs;
        let sec = now_ms / 1000;
        let mut merged = WindowStats::default();
        // Counters merge bucket by bucket with `merge_sequential` (the scratch histogram stays
        // empty); histograms are summed over their joint bucket range and built once.
        let mut scratch = WindowStats::default();
        // Latency: the running sum, minus buckets not yet expired but out of the window at
        // `now_ms` (a destination whose reports stopped); sum, min and max from the buckets.
        let mut counts = d.running.counts.clone();
        let (mut sum_us, mut min_us, mut max_us) = (0u64, u64::MAX, 0u64);
        for b in &d.buckets {
            if !in_window(b.sec, sec, w) {
                RunningCounts::sub_from(d.running.offset, &mut counts, &b.latency);
                continue;
            }
            b.counters.fill(&mut scratch);
            merged.merge_sequential(&scratch);
            if !b.latency.is_empty() {
                sum_us = sum_us.saturating_add(b.latency.sum_us);
                min_us = min_us.min(b.latency.min_us);
                max_us = max_us.max(b.latency.max_us);
            }
        }
        // Counts come from validated histograms, so the range is valid; fall back to empty.
        merged.latency =
            LatencyHistogram::from_range(d.running.offset, counts, sum_us, min_us, max_us)
                .unwrap_or_default();
        let elapsed = now_ms.saturating_sub(d.first_seen_ms) as f64 / 1000.0 + d.first_duration_s;
        let full = merged.duration_s.max(elapsed).min(w as f64);
        let pending = pending_share(d, sec, w);
        let span = if full > pending { full - pending } else { full };
        if span > 0.0 {
            merged.inflight_avg = merged.inflight_avg * merged.duration_s.min(span) / span;
        }
        merged.duration_s = span;
        merged
    }
}

/// Requests per second over the [`RECENT_SECS`] complete seconds before `now_ms` (the current
/// second's reports are still arriving), each second's span the longest report in it; `None`
/// below [`RECENT_MIN_REQUESTS`] requests.
fn recent_rps(d: &Destination, now_ms: u64) -> Option<f64> {
    let now_sec = now_ms / 1000;
    let from = now_sec.checked_sub(RECENT_SECS)?;
    let (mut requests, mut secs) = (0u64, 0.0f64);
    for b in d
        .buckets
        .iter()
        .rev()
        .take_while(|b| b.sec >= from)
        .filter(|b| b.sec < now_sec)
    {
        requests = requests.saturating_add(b.counters.requests);
        secs += b.counters.duration_s;
    }
    (requests >= RECENT_MIN_REQUESTS && secs > 0.0).then(|| requests as f64 / secs)
}

fn in_window(bucket_sec: u64, now_sec: u64, window_secs: u64) -> bool {
    bucket_sec + window_secs > now_sec
}

/// Share of the reporters in `d`'s window (at second `now_sec`) whose report of this second is
/// still on its way: they reported in the previous second but not yet in this one (and no
/// second of the window holds two of their reports, which flush jitter does when a report
/// lands early). Each of them has one second less of traffic in the window (see the module
/// docs).
fn pending_share(d: &Destination, now_sec: u64, window_secs: u64) -> f64 {
    let at = |sec: u64| d.buckets.iter().rev().take(3).find(|b| b.sec == sec);
    let Some(previous) = now_sec.checked_sub(1).and_then(at) else {
        return 0.0;
    };
    let current: HashSet<u32> = at(now_sec)
        .map(|c| c.reporters.iter().copied().collect())
        .unwrap_or_default();
    // One pass over the window's reports (a destination may have thousands of client
    // sidecars): its reporters, and those with two reports in one second (flush jitter: not
    // pending).
    let mut ids: HashSet<u32> = HashSet::new();
    let mut doubled: HashSet<u32> = HashSet::new();
    for b in d
        .buckets
        .iter()
        .filter(|b| in_window(b.sec, now_sec, window_secs))
    {
        let mut seen: HashSet<u32> = HashSet::with_capacity(b.reporters.len());
        for r in &b.reporters {
            if !seen.insert(*r) {
                doubled.insert(*r);
            }
            ids.insert(*r);
        }
    }
    let mut late: Vec<u32> = previous
        .reporters
        .iter()
        .filter(|r| !current.contains(r) && !doubled.contains(r))
        .copied()
        .collect();
    late.sort_unstable();
    late.dedup();
    if late.is_empty() {
        return 0.0;
    }
    late.len() as f64 / ids.len().max(1) as f64
}

impl Destination {
    /// Approximate bytes held: the struct, its name (stored twice by the table), bucket
    /// storage, sparse bucket histograms, the running counts and the lifetime histogram, plus
    /// the table's per-entry overhead.
    fn heap_bytes(&self, key: &DestKey) -> usize {
        use std::mem::size_of;
        let buckets: usize = self
            .buckets
            .iter()
            .map(|b| b.latency.heap_bytes() + b.reporters.capacity() * size_of::<u32>())
            .sum();
        size_of::<Self>()
            + 2 * (key.namespace.len() + key.cluster.len() + 2 * size_of::<String>())
            + 4 * size_of::<usize>()
            + self.buckets.capacity() * size_of::<Bucket>()
            + buckets
            + self.running.heap_bytes()
            + self.lifetime.latency.heap_bytes()
    }

    /// Drops buckets that left the window (and their latency counts from the running sum).
    fn expire_buckets(&mut self, now_sec: u64, window_secs: u64) {
        while self
            .buckets
            .front()
            .is_some_and(|b| !in_window(b.sec, now_sec, window_secs))
        {
            if let Some(b) = self.buckets.pop_front() {
                self.running.sub(&b.latency);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_core::histogram::RELATIVE_ERROR;

    fn key(pod: &str) -> ReporterKey {
        ReporterKey {
            namespace: "ns".into(),
            workload: "w".into(),
            pod: pod.into(),
            vm_id: "vm".into(),
        }
    }

    fn window(requests: u64, e5: u64, lat_us: u64, inflight: u64) -> WindowStats {
        let mut w = WindowStats {
            duration_s: 1.0,
            requests,
            status_2xx: requests - e5,
            status_5xx: e5,
            inflight_max: inflight,
            inflight_avg: inflight as f64 / 2.0,
            ..Default::default()
        };
        w.latency.record_n(lat_us, requests);
        w
    }

    fn report(pod: &str, seq: u64, ups: Vec<(&str, WindowStats)>) -> ValidReport {
        ValidReport {
            reporter: key(pod),
            sequence: seq,
            dropped_reports: 0,
            window_length_ms: 1000,
            upstreams: ups.into_iter().map(|(n, w)| (n.to_string(), w)).collect(),
        }
    }

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn recent_load_shows_a_step_the_window_mean_barely_shows() {
        let mut a = Aggregator::new(Limits::default());
        // Two reporters, 200 rps each for 10 s, then 500 each from the 11th second.
        let mut seq = 0;
        for s in 0..13u64 {
            let n = if s < 10 { 200 } else { 500 };
            seq += 1;
            for pod in ["p1", "p2"] {
                a.ingest(
                    &report(pod, seq, vec![("c", window(n, 0, 1000, 2))]),
                    T0 + s * 1000 + 300,
                );
            }
        }
        // 0.5 s into the 14th second (its reports not in yet): the window holds 6 s at 400 and
        // 3 s at 1,000, its mean 600 rps.
        let snap = a.snapshot(T0 + 13_500);
        let w = &snap[0];
        assert_eq!(w.stats.requests, 6 * 400 + 3 * 1000);
        let recent = w.recent_rps.expect("enough requests");
        assert!((recent - 1000.0).abs() < 1e-9, "{recent}");
        // One second into the step the last complete seconds still hold two of the old ones.
        let snap = a.snapshot(T0 + 11_500);
        assert!((snap[0].recent_rps.unwrap() - 600.0).abs() < 1e-9);
        // A quiet destination has no recent load (its noise is not a load change).
        let mut q = Aggregator::new(Limits::default());
        for s in 0..4u64 {
            q.ingest(
                &report("p1", s + 1, vec![("c", window(10, 0, 1000, 1))]),
                T0 + s * 1000 + 300,
            );
        }
        assert_eq!(q.snapshot(T0 + 4_500)[0].recent_rps, None);
    }

    #[test]
    fn merges_reporters_into_one_destination() {
        let mut a = Aggregator::new(Limits::default());
        let o = a.ingest(&report("p1", 1, vec![("c", window(10, 1, 1000, 2))]), T0);
        assert_eq!(o.accepted_sequence(), 1);
        a.ingest(
            &report("p2", 1, vec![("c", window(30, 3, 5000, 4))]),
            T0 + 100,
        );
        a.ingest(
            &report("p2", 2, vec![("d", window(5, 0, 100, 1))]),
            T0 + 200,
        );
        let d = a.destinations(T0 + 500);
        assert_eq!(d.len(), 2);
        let c = &d[0];
        assert_eq!(c.key, DestKey::new("ns", "c"));
        assert_eq!(c.reporters, 2);
        assert_eq!(c.window.requests, 40);
        assert_eq!(c.window.status_5xx, 4);
        assert_eq!(c.window.latency.count(), 40);
        // Concurrent reporters: in-flight max adds up.
        assert_eq!(c.window.inflight_max, 6);
        assert_eq!(c.lifetime.requests, 40);
        assert_eq!(c.last_report_unix_ms, T0 + 100);
        let p99 = c.window.latency.quantile_us(0.99);
        assert!((p99 - 5000.0).abs() <= 5000.0 * 0.04, "{p99}");
        assert_eq!(d[1].window.requests, 5);
        let snap = a.snapshot(T0 + 500);
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0].stats.requests, 40);
    }

    #[test]
    fn sliding_window_expires_but_lifetime_stays_exact() {
        let mut a = Aggregator::new(Limits {
            window_secs: 3,
            ..Limits::default()
        });
        for s in 0..10u64 {
            a.ingest(
                &report(
                    "p",
                    s + 1,
                    vec![("c", window(10 + s, s, 1000 * (s + 1), 1))],
                ),
                T0 + s * 1000,
            );
        }
        let now = T0 + 9 * 1000 + 500;
        let v = &a.destinations(now)[0];
        // Seconds 7, 8, 9 are in the window.
        assert_eq!(v.window.requests, 17 + 18 + 19);
        assert_eq!(v.window.status_5xx, 7 + 8 + 9);
        assert_eq!(v.window.duration_s, 3.0);
        assert!((v.window.rps() - 54.0 / 3.0).abs() < 1e-9);
        assert_eq!(v.window.latency.min_us(), 8000);
        assert_eq!(v.lifetime.requests, (10..20).sum::<u64>());
        assert_eq!(v.lifetime.status_5xx, (0..10).sum::<u64>());
        assert_eq!(v.lifetime.latency.count(), v.lifetime.requests);
        // Traffic stops: the window empties, the rate decays to 0, lifetime unchanged.
        let later = a.destinations(T0 + 30_000);
        assert_eq!(later[0].window.requests, 0);
        assert_eq!(later[0].window.rps(), 0.0);
        assert_eq!(later[0].reporters, 0);
        assert_eq!(later[0].lifetime.requests, (10..20).sum::<u64>());
    }

    /// Two reporters flushing every second, at 0.2 s and 0.8 s into the second; decisions at
    /// 0.5 s see the first one's report of this second but not yet the second one's: the
    /// window holds 10 s of the first's traffic and 9 s of the second's. The rate is exact
    /// (200/s), not 190/s; with neither report in yet, 9 s of both over 9 s.
    #[test]
    fn reports_still_on_their_way_do_not_lower_the_rate() {
        // The reports received before `until_ms`.
        let upto = |until_ms: u64| {
            let mut a = Aggregator::new(Limits::default());
            for s in 0..30u64 {
                for (pod, phase) in [("a", 200), ("b", 800)] {
                    let at = T0 + s * 1000 + phase;
                    if at < until_ms {
                        a.ingest(
                            &report(pod, s + 1, vec![("c", window(100, 0, 1000, 4))]),
                            at,
                        );
                    }
                }
            }
            a
        };
        let at = |t: u64| upto(t).snapshot(t)[0].stats.clone();
        let half = at(T0 + 25_500);
        assert_eq!(half.requests, 1900);
        assert!((half.rps() - 200.0).abs() < 1e-9, "{}", half.rps());
        let none = at(T0 + 25_100);
        assert_eq!(
            none.requests, 1800,
            "seconds 16..24; this second's not in yet"
        );
        assert!((none.rps() - 200.0).abs() < 1e-9, "{}", none.rps());
        let all = at(T0 + 25_900);
        assert_eq!(all.requests, 2000);
        assert!((all.rps() - 200.0).abs() < 1e-9, "{}", all.rps());
        // Once the reports stop the rate still decays to 0.
        let r = upto(u64::MAX).snapshot(T0 + 35_000)[0].stats.rps();
        assert!(r < 200.0 * 0.6, "{r}");
        // Flush jitter: b's report of second 26 lands early, in second 25 next to its report
        // of 25; at 26.5 b has nothing in 26 yet, but its 10 reports are in the window: not
        // pending, nothing to correct.
        let mut events: Vec<(u64, &str)> = (0..27u64).map(|s| (T0 + s * 1000 + 200, "a")).collect();
        events.extend((0..26u64).map(|s| (T0 + s * 1000 + 800, "b")));
        events.push((T0 + 25_990, "b"));
        events.sort_unstable();
        let mut a = Aggregator::new(Limits::default());
        let mut seq = std::collections::HashMap::new();
        for (at, pod) in events {
            let n = seq.entry(pod).or_insert(0u64);
            *n += 1;
            a.ingest(&report(pod, *n, vec![("c", window(100, 0, 1000, 4))]), at);
        }
        let w = &a.snapshot(T0 + 26_500)[0].stats;
        assert_eq!(w.requests, 2000, "a: 17..26, b: 17..25 with two in 25");
        assert!((w.rps() - 200.0).abs() < 1e-9, "{}", w.rps());
    }

    #[test]
    fn rate_decays_when_reports_stop() {
        let mut a = Aggregator::new(Limits::default());
        a.ingest(&report("p", 1, vec![("c", window(100, 0, 10, 0))]), T0);
        let r1 = a.snapshot(T0)[0].stats.rps();
        let r5 = a.snapshot(T0 + 4000)[0].stats.rps();
        assert!((r1 - 100.0).abs() < 1e-9, "{r1}");
        assert!((r5 - 20.0).abs() < 1e-9, "{r5}");
    }

    #[test]
    fn latency_leaves_the_window_even_before_its_bucket_expires() {
        // Window 10 s; a slow second, then a fast one 5 s later, then silence (no ingest, so
        // nothing expires): the window at +12 s holds only the fast second's latencies.
        let mut a = Aggregator::new(Limits::default());
        a.ingest(&report("p", 1, vec![("c", window(50, 0, 90_000, 1))]), T0);
        a.ingest(
            &report("p", 2, vec![("c", window(30, 0, 2_000, 1))]),
            T0 + 5_000,
        );
        let both = &a.snapshot(T0 + 5_000)[0].stats;
        assert_eq!(both.latency.count(), 80);
        let later = &a.snapshot(T0 + 12_000)[0].stats;
        assert_eq!(later.requests, 30);
        assert_eq!(later.latency.count(), 30);
        assert_eq!(later.latency.max_us(), 2_000);
        assert!((later.latency.quantile_us(0.99) - 2_000.0).abs() <= 2_000.0 * RELATIVE_ERROR);
        // Once the old bucket is expired for real, the result is the same.
        a.expire(T0 + 12_000);
        assert_eq!(&a.snapshot(T0 + 12_000)[0].stats, later);
    }

    #[test]
    fn duplicate_and_old_sequences_are_ignored() {
        let mut a = Aggregator::new(Limits::default());
        let r = report("p", 5, vec![("c", window(10, 0, 10, 1))]);
        assert!(matches!(a.ingest(&r, T0), IngestOutcome::Accepted { .. }));
        assert_eq!(
            a.ingest(&r, T0 + 10),
            IngestOutcome::Duplicate {
                accepted_sequence: 5
            }
        );
        let old = report("p", 3, vec![("c", window(10, 0, 10, 1))]);
        assert_eq!(
            a.ingest(&old, T0 + 20),
            IngestOutcome::Duplicate {
                accepted_sequence: 5
            }
        );
        let v = &a.destinations(T0 + 30)[0];
        assert_eq!(v.window.requests, 10);
        assert_eq!(v.lifetime.requests, 10);
    }

    #[test]
    fn reporter_restart_is_accepted() {
        let mut a = Aggregator::new(Limits::default());
        for s in 1..=5 {
            a.ingest(&report("p", s, vec![("c", window(1, 0, 10, 1))]), T0 + s);
        }
        // Same identity restarts at 1.
        let o = a.ingest(&report("p", 1, vec![("c", window(1, 0, 10, 1))]), T0 + 10);
        assert!(
            matches!(
                o,
                IngestOutcome::Accepted {
                    restarted: true,
                    ..
                }
            ),
            "{o:?}"
        );
        // Restart whose first two reports were dropped.
        let mut r = report("p", 3, vec![("c", window(1, 0, 10, 1))]);
        r.dropped_reports = 2;
        assert_eq!(a.ingest(&r, T0 + 20).accepted_sequence(), 3);
        let mut r = report("p", 2, vec![("c", window(1, 0, 10, 1))]);
        r.dropped_reports = 2;
        let o = a.ingest(&r, T0 + 30);
        assert!(
            matches!(
                o,
                IngestOutcome::Accepted {
                    restarted: true,
                    ..
                }
            ),
            "{o:?}"
        );
        // A new pod starting at 1 is another reporter.
        let o = a.ingest(
            &report("p-new", 1, vec![("c", window(1, 0, 10, 1))]),
            T0 + 40,
        );
        assert!(matches!(
            o,
            IngestOutcome::Accepted {
                restarted: false,
                ..
            }
        ));
        assert_eq!(a.destinations(T0 + 50)[0].lifetime.requests, 9);
        assert_eq!(a.reporter_count(), 2);
    }

    #[test]
    fn dropped_reports_are_counted_as_deltas() {
        let mut a = Aggregator::new(Limits::default());
        let mut r = report("p", 1, vec![]);
        r.dropped_reports = 3;
        let delta = |o: IngestOutcome| match o {
            IngestOutcome::Accepted {
                dropped_reports_delta,
                ..
            } => dropped_reports_delta,
            IngestOutcome::Duplicate { .. } => panic!("duplicate"),
        };
        assert_eq!(delta(a.ingest(&r, T0)), 3);
        r.sequence = 5;
        r.dropped_reports = 5;
        assert_eq!(delta(a.ingest(&r, T0 + 1)), 2);
        r.sequence = 6;
        assert_eq!(delta(a.ingest(&r, T0 + 2)), 0);
    }

    #[test]
    fn same_reporter_twice_in_a_second_does_not_double_inflight() {
        let mut a = Aggregator::new(Limits::default());
        a.ingest(&report("p", 1, vec![("c", window(10, 0, 10, 4))]), T0);
        a.ingest(&report("p", 2, vec![("c", window(10, 0, 10, 3))]), T0 + 900);
        let v = &a.destinations(T0 + 950)[0];
        assert_eq!(v.window.requests, 20);
        assert_eq!(v.window.inflight_max, 4);
        assert_eq!(v.reporters, 1);
    }

    #[test]
    fn destination_and_reporter_bounds() {
        let mut a = Aggregator::new(Limits {
            max_destinations: 2,
            max_reporters: 2,
            destination_idle_ms: 60_000,
            reporter_idle_ms: 60_000,
            ..Limits::default()
        });
        let o = a.ingest(
            &report(
                "p",
                1,
                vec![
                    ("a", window(1, 0, 10, 1)),
                    ("b", window(1, 0, 10, 1)),
                    ("c", window(1, 0, 10, 1)),
                ],
            ),
            T0,
        );
        assert!(matches!(
            o,
            IngestOutcome::Accepted {
                destinations_dropped: 1,
                ..
            }
        ));
        assert_eq!(a.destination_count(), 2);
        // "c" evicted the least recently reported one, "a".
        assert_eq!(a.eviction_order(), ["b", "c"]);
        assert_eq!(a.take_removed(), 1);
        assert_eq!(a.take_removed(), 0);
        // After the idle time, "b" expires; "c" reports again.
        a.ingest(
            &report("p", 2, vec![("c", window(1, 0, 10, 1))]),
            T0 + 61_000,
        );
        let names: Vec<_> = a
            .snapshot(T0 + 61_000)
            .into_iter()
            .map(|c| c.key.cluster)
            .collect();
        assert_eq!(names, vec!["c"]);
        // "b" and "c" were both idle: both expired ("c" came back at once).
        assert_eq!(a.take_removed(), 2, "expired ones are counted too");
        // Reporter table is bounded: the oldest is evicted.
        a.ingest(&report("q", 1, vec![]), T0 + 61_001);
        a.ingest(&report("r", 1, vec![]), T0 + 61_002);
        assert_eq!(a.reporter_count(), 2);
    }

    #[test]
    fn names_seen_once_are_evicted_before_destinations_that_keep_reporting() {
        let mut a = Aggregator::new(Limits {
            max_destinations: 3,
            ..Limits::default()
        });
        // "good" reports in two different seconds: established.
        a.ingest(&report("g", 1, vec![("good", window(5, 0, 10, 1))]), T0);
        a.ingest(
            &report("g", 2, vec![("good", window(5, 0, 10, 1))]),
            T0 + 1000,
        );
        // A flood of names, each seen once, newer than "good"'s last report.
        let mut seq = 0;
        for batch in 0..50u64 {
            let names: Vec<String> = (0..10).map(|i| format!("junk-{batch}-{i}")).collect();
            seq += 1;
            a.ingest(
                &report(
                    "attacker",
                    seq,
                    names
                        .iter()
                        .map(|n| (n.as_str(), window(1, 0, 10, 1)))
                        .collect(),
                ),
                T0 + 1500,
            );
            assert_eq!(a.destination_count(), 3);
            assert!(
                a.eviction_order().last().map(String::as_str) == Some("good"),
                "the established destination is evicted last: {:?}",
                a.eviction_order()
            );
        }
        assert_eq!(a.take_removed(), 50 * 10 - 2);
        assert_eq!(
            a.snapshot(T0 + 1500)
                .iter()
                .filter(|c| c.key.cluster == "good")
                .count(),
            1
        );
        // With no probationary destination left, the least recently reported established one
        // goes: "x" and "y" become established after "good" and "good" is evicted first.
        let mut b = Aggregator::new(Limits {
            max_destinations: 2,
            ..Limits::default()
        });
        for (i, n) in ["good", "x"].into_iter().enumerate() {
            let s = 2 * i as u64;
            b.ingest(&report(n, 1, vec![(n, window(1, 0, 10, 1))]), T0 + s * 1000);
            b.ingest(
                &report(n, 2, vec![(n, window(1, 0, 10, 1))]),
                T0 + (s + 1) * 1000,
            );
        }
        assert_eq!(b.eviction_order(), ["good", "x"]);
        b.ingest(&report("z", 1, vec![("z", window(1, 0, 10, 1))]), T0 + 9000);
        assert_eq!(b.eviction_order(), ["z", "x"]);
    }

    #[test]
    fn the_memory_budget_evicts_like_the_count_and_stays_bounded() {
        let budget = 200 * 1024;
        let mut a = Aggregator::new(Limits {
            max_bytes: budget,
            ..Limits::default()
        });
        // A full histogram in every window: the heaviest destinations there are.
        let full = || {
            let mut w = window(1000, 0, 10, 1);
            w.latency = LatencyHistogram::new();
            for i in 0..meshtune_core::histogram::BUCKET_COUNT as u64 {
                w.latency.record(1u64 << (i / 16).min(39) | (i % 16));
            }
            w
        };
        a.ingest(&report("g", 1, vec![("good", full())]), T0);
        a.ingest(&report("g", 2, vec![("good", full())]), T0 + 1000);
        for k in 0..200u64 {
            let name = format!("junk-{k}");
            a.ingest(
                &report("x", k + 1, vec![(name.as_str(), full())]),
                T0 + 1500,
            );
            assert!(
                a.budget_bytes() <= budget,
                "{} > {budget}",
                a.budget_bytes()
            );
        }
        assert!(a.destination_count() < 100, "{}", a.destination_count());
        assert_eq!(a.eviction_order().last().map(String::as_str), Some("good"));
        assert_eq!(
            a.take_removed(),
            (1 + 200 - a.destination_count()) as u64,
            "every eviction counted"
        );
        // The running total matches a recount.
        assert_eq!(
            a.budget_bytes(),
            a.approx_memory_bytes() - reporter_bytes(&a)
        );
        a.expire(T0 + 30_000);
        assert_eq!(
            a.budget_bytes(),
            a.approx_memory_bytes() - reporter_bytes(&a)
        );
    }

    fn reporter_bytes(a: &Aggregator) -> usize {
        use std::mem::size_of;
        a.reporter_count()
            * (2 * size_of::<u64>() + size_of::<ReporterState>() + 4 * size_of::<usize>())
    }

    #[test]
    fn counter_sums_saturate_instead_of_overflowing() {
        let mut a = Aggregator::new(Limits::default());
        let mut w = window(u64::MAX / 2 + 1, 0, 10, 1);
        w.retries = u64::MAX;
        w.request_bytes = u64::MAX;
        w.inflight_max = u64::MAX;
        for (pod, seq) in [("p", 1), ("q", 1), ("p", 2)] {
            a.ingest(&report(pod, seq, vec![("c", w.clone())]), T0 + 10);
        }
        let v = &a.destinations(T0 + 20)[0];
        assert_eq!(v.window.requests, u64::MAX);
        assert_eq!(v.window.retries, u64::MAX);
        assert_eq!(v.window.inflight_max, u64::MAX);
        assert_eq!(v.lifetime.requests, u64::MAX);
        assert_eq!(v.lifetime.request_bytes, u64::MAX);
        assert_eq!(a.snapshot(T0 + 20)[0].stats.requests, u64::MAX);
    }

    #[test]
    fn memory_follows_the_window() {
        let mut a = Aggregator::new(Limits {
            window_secs: 10,
            ..Limits::default()
        });
        let empty = a.approx_memory_bytes();
        for s in 0..10u64 {
            let mut w = window(100, 0, 1000, 1);
            (0..30).for_each(|i| w.latency.record(500 + i * 700));
            a.ingest(&report("p", s + 1, vec![("c", w)]), T0 + s * 1000);
        }
        let full = a.approx_memory_bytes();
        assert!(full > empty);
        a.expire(T0 + 60_000);
        // Buckets gone, lifetime kept.
        let idle = a.approx_memory_bytes();
        assert!(idle < full, "{idle} >= {full}");
        assert_eq!(a.destinations(T0 + 60_000)[0].lifetime.requests, 1000);
    }

    #[test]
    fn window_equals_sequential_merge_of_its_seconds() {
        let mut a = Aggregator::new(Limits::default());
        let mut expected = WindowStats::default();
        for s in 0..5u64 {
            let w1 = window(10 + s, s, 1000 + 300 * s, 2);
            let w2 = window(3, 1, 90_000, 1);
            a.ingest(&report("p1", s + 1, vec![("c", w1.clone())]), T0 + s * 1000);
            a.ingest(
                &report("p2", s + 1, vec![("c", w2.clone())]),
                T0 + s * 1000 + 10,
            );
            let mut second = w1;
            second.merge_concurrent(&w2);
            expected.merge_sequential(&second);
        }
        let got = &a.snapshot(T0 + 4000)[0].stats;
        assert_eq!(got.latency, expected.latency);
        assert_eq!(got.requests, expected.requests);
        assert_eq!(got.status_5xx, expected.status_5xx);
        assert_eq!(got.inflight_max, expected.inflight_max);
        assert_eq!(got.duration_s, 5.0);
        assert!((got.inflight_avg - expected.inflight_avg).abs() < 1e-12);
    }

    #[test]
    fn sparse_histogram_merges_like_the_full_one() {
        let mut s = SparseHistogram::default();
        let mut full = LatencyHistogram::new();
        for k in 0..5u64 {
            let mut h = LatencyHistogram::new();
            for v in 0..200u64 {
                h.record((v * 37 + k * 1013) % 50_000);
            }
            full.merge(&h);
            s.add(&h);
        }
        assert_eq!(s.to_histogram(), full);
    }

    #[test]
    fn running_counts_add_and_subtract_like_merging_what_remains() {
        let parts: Vec<LatencyHistogram> = [
            (0u64, 10..20u64),
            (1, 5_000..6_000),
            (2, 0..0),
            (3, 15..9_000),
        ]
        .into_iter()
        .map(|(k, range)| {
            let mut h = LatencyHistogram::new();
            for v in range.step_by(7) {
                h.record(v * (k + 1));
            }
            h
        })
        .collect();
        let mut running = RunningCounts::default();
        parts.iter().for_each(|h| running.add(h));
        // Remove the parts in order, as buckets expire, and compare with merging the rest.
        for gone in 0..parts.len() {
            let mut sparse = SparseHistogram::default();
            sparse.add(&parts[gone]);
            running.sub(&sparse);
            let mut rest = LatencyHistogram::new();
            parts[gone + 1..].iter().for_each(|h| rest.merge(h));
            let got = LatencyHistogram::from_range(
                running.offset,
                running.counts.clone(),
                rest.sum_us(),
                rest.min_us(),
                rest.max_us(),
            )
            .unwrap();
            assert_eq!(got, rest, "after removing part {gone}");
            if let Some((first, _)) = rest.nonzero_buckets().next() {
                assert_eq!(running.offset, first as usize, "leading empties trimmed");
            };
        }
        assert!(running.counts.is_empty());
    }
}
