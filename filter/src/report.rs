//! The reporter's side: worker windows (the elected worker's own and those the other worker
//! VMs queued) are merged per cluster into one `ReportRequest` per flush interval, with bounded
//! memory and drop accounting.
//!
//! Merge rules: counts and histograms add up; in-flight average is each worker's time-weighted
//! average over the time its windows cover, summed across workers (workers are concurrent);
//! in-flight max is each worker's max, summed across workers (an upper bound of the Envoy's).

use crate::window::WindowOut;
use meshtune_core::LatencyHistogram;
use meshtune_proto::v1;
use prost::Message;

/// Encodes a worker window for the shared queue (a `ReportRequest` whose reporter `vm_id` is
/// the worker's id).
pub fn encode_worker_window(worker_id: &str, w: &WindowOut) -> Vec<u8> {
    v1::ReportRequest {
        reporter: Some(v1::Reporter {
            vm_id: worker_id.to_string(),
            ..Default::default()
        }),
        sequence: 0,
        window_start_unix_ms: w.start_ns / 1_000_000,
        window_length_ms: u32::try_from(w.length_ns / 1_000_000).unwrap_or(u32::MAX),
        upstreams: w.upstreams.clone(),
        dropped_reports: 0,
    }
    .encode_to_vec()
}

/// The upstream argument of the Report call: a serialized `envoy.config.core.v3.GrpcService`
/// (`envoy_grpc { cluster_name = 1, authority = 2 } = 1`). Envoy parses this argument as that
/// message first; passing it instead of a bare cluster name also avoids the BadArgument
/// status for an unknown cluster (which proxy-wasm 0.2.5 turns into a panic), and sets an
/// `:authority` (a bare Istio cluster name `outbound|…` is not a valid authority: the call
/// fails with an HTTP/2 protocol error).
///
/// The host call takes `&str`, so the bytes must be UTF-8: a length of 128+ would be a
/// multi-byte varint, which is not. The message is therefore written as two concatenated
/// messages, one per field (protobuf merges repeated occurrences of an embedded message), so
/// each length stays below 128 for names up to [`MAX_UPSTREAM_NAME`] bytes. Longer names fall
/// back to the bare cluster name.
pub fn grpc_service_upstream(cluster: &str, authority: &str) -> String {
    let part = |cluster_name: &str, authority: &str| {
        GrpcService {
            envoy_grpc: Some(EnvoyGrpc {
                cluster_name: cluster_name.to_string(),
                authority: authority.to_string(),
            }),
        }
        .encode_to_vec()
    };
    if cluster.len() > MAX_UPSTREAM_NAME || authority.len() > MAX_UPSTREAM_NAME {
        return cluster.to_string();
    }
    let mut bytes = part(cluster, "");
    if !authority.is_empty() {
        bytes.extend(part("", authority));
    }
    String::from_utf8(bytes).unwrap_or_else(|_| cluster.to_string())
}

/// Longest cluster name / authority [`grpc_service_upstream`] encodes (one-byte lengths).
pub const MAX_UPSTREAM_NAME: usize = 125;

/// `envoy.config.core.v3.GrpcService.EnvoyGrpc` (the fields used).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EnvoyGrpc {
    #[prost(string, tag = "1")]
    pub cluster_name: String,
    #[prost(string, tag = "2")]
    pub authority: String,
}

/// `envoy.config.core.v3.GrpcService` (the field used).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GrpcService {
    #[prost(message, optional, tag = "1")]
    pub envoy_grpc: Option<EnvoyGrpc>,
}

/// Why a queued window was not merged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MergeError {
    #[error("queued window is not a valid ReportRequest: {0}")]
    Decode(String),
    #[error("reporter already holds max_queued_windows ({0}) windows; window dropped")]
    Full(u32),
}

#[derive(Debug)]
struct WorkerAcc {
    id: String,
    covered_ms: u64,
}

#[derive(Debug)]
struct ClusterAcc {
    window: v1::UpstreamWindow,
    latency: LatencyHistogram,
    /// (worker index, in-flight integral in request·ms, max in-flight).
    per_worker: Vec<(usize, f64, u32)>,
}

/// Merges worker windows until the next flush.
#[derive(Debug)]
pub struct Aggregator {
    max_upstreams: usize,
    max_windows: u32,
    windows: u32,
    workers: Vec<WorkerAcc>,
    clusters: Vec<ClusterAcc>,
    start_ms: Option<u64>,
    end_ms: u64,
    /// Windows refused (full or undecodable) since the last [`Aggregator::take_dropped`].
    dropped_windows: u64,
    /// Cluster entries not merged because `max_upstreams` clusters were held already.
    untracked_clusters: u64,
}

impl Aggregator {
    pub fn new(max_upstreams: u32, max_windows: u32) -> Self {
        Self {
            max_upstreams: max_upstreams.max(1) as usize,
            max_windows: max_windows.max(1),
            windows: 0,
            workers: Vec::new(),
            clusters: Vec::new(),
            start_ms: None,
            end_ms: 0,
            dropped_windows: 0,
            untracked_clusters: 0,
        }
    }

    /// Windows merged since the last flush.
    pub fn windows(&self) -> u32 {
        self.windows
    }

    /// Windows dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_windows)
    }

    /// Cluster entries dropped (too many clusters) since the last call.
    pub fn take_untracked(&mut self) -> u64 {
        std::mem::take(&mut self.untracked_clusters)
    }

    /// Merges one queued window (bytes from the shared queue).
    pub fn merge_bytes(&mut self, bytes: &[u8]) -> Result<(), MergeError> {
        if self.windows >= self.max_windows {
            self.dropped_windows += 1;
            return Err(MergeError::Full(self.max_windows));
        }
        let w = v1::ReportRequest::decode(bytes).map_err(|e| {
            self.dropped_windows += 1;
            MergeError::Decode(e.to_string())
        })?;
        self.merge(&w);
        Ok(())
    }

    /// Merges one decoded worker window.
    pub fn merge(&mut self, w: &v1::ReportRequest) {
        self.windows += 1;
        let worker_id = w.reporter.as_ref().map_or("", |r| r.vm_id.as_str());
        let len_ms = u64::from(w.window_length_ms);
        let wi = match self.workers.iter().position(|x| x.id == worker_id) {
            Some(i) => i,
            None => {
                self.workers.push(WorkerAcc {
                    id: worker_id.to_string(),
                    covered_ms: 0,
                });
                self.workers.len() - 1
            }
        };
        if let Some(wk) = self.workers.get_mut(wi) {
            wk.covered_ms += len_ms;
        }
        self.start_ms = Some(
            self.start_ms
                .map_or(w.window_start_unix_ms, |s| s.min(w.window_start_unix_ms)),
        );
        self.end_ms = self
            .end_ms
            .max(w.window_start_unix_ms.saturating_add(len_ms));
        for u in &w.upstreams {
            let ci = match self
                .clusters
                .iter()
                .position(|c| c.window.cluster == u.cluster)
            {
                Some(i) => i,
                None if self.clusters.len() < self.max_upstreams => {
                    self.clusters.push(ClusterAcc {
                        window: v1::UpstreamWindow {
                            cluster: u.cluster.clone(),
                            ..Default::default()
                        },
                        latency: LatencyHistogram::new(),
                        per_worker: Vec::new(),
                    });
                    self.clusters.len() - 1
                }
                None => {
                    self.untracked_clusters += 1;
                    continue;
                }
            };
            let Some(c) = self.clusters.get_mut(ci) else {
                continue;
            };
            add_counts(&mut c.window, u);
            if let Some(h) = &u.latency {
                if let Ok(h) = LatencyHistogram::from_sparse(
                    h.sub_bucket_bits,
                    &h.bucket_index,
                    &h.bucket_count,
                    h.sum_us,
                    h.min_us,
                    h.max_us,
                ) {
                    c.latency.merge(&h);
                }
            }
            let integral = u.inflight_avg * len_ms as f64;
            match c.per_worker.iter_mut().find(|(i, _, _)| *i == wi) {
                Some(p) => {
                    p.1 += integral;
                    p.2 = p.2.max(u.inflight_max);
                }
                None => c.per_worker.push((wi, integral, u.inflight_max)),
            }
        }
    }

    /// Builds the report for everything merged since the last flush and starts over.
    /// With nothing merged, the window is `[since_ms, now_ms]` with no upstreams.
    pub fn flush(&mut self, since_ms: u64, now_ms: u64) -> (u64, u32, Vec<v1::UpstreamWindow>) {
        let (start, end) = match self.start_ms {
            Some(s) => (s, self.end_ms.max(s)),
            None => (since_ms.min(now_ms), now_ms),
        };
        let workers = std::mem::take(&mut self.workers);
        let upstreams = std::mem::take(&mut self.clusters)
            .into_iter()
            .map(|mut c| {
                let mut avg = 0.0;
                let mut max = 0u32;
                for (wi, integral, m) in &c.per_worker {
                    let covered = workers.get(*wi).map_or(0, |w| w.covered_ms);
                    if covered > 0 {
                        avg += integral / covered as f64;
                    }
                    max = max.saturating_add(*m);
                }
                c.window.inflight_avg = avg;
                c.window.inflight_max = max;
                let (bucket_index, bucket_count) = c.latency.nonzero_buckets().unzip();
                c.window.latency = Some(v1::LatencyHistogram {
                    sub_bucket_bits: meshtune_core::histogram::SUB_BUCKET_BITS,
                    bucket_index,
                    bucket_count,
                    sum_us: c.latency.sum_us(),
                    min_us: c.latency.min_us(),
                    max_us: c.latency.max_us(),
                });
                c.window
            })
            .collect();
        self.windows = 0;
        self.start_ms = None;
        self.end_ms = 0;
        (
            start,
            u32::try_from(end - start).unwrap_or(u32::MAX),
            upstreams,
        )
    }
}

fn add_counts(a: &mut v1::UpstreamWindow, u: &v1::UpstreamWindow) {
    a.requests += u.requests;
    a.status_1xx += u.status_1xx;
    a.status_2xx += u.status_2xx;
    a.status_3xx += u.status_3xx;
    a.status_4xx += u.status_4xx;
    a.status_5xx += u.status_5xx;
    a.status_none += u.status_none;
    a.flag_uo += u.flag_uo;
    a.flag_ut += u.flag_ut;
    a.flag_uf += u.flag_uf;
    a.flag_uc += u.flag_uc;
    a.flag_urx += u.flag_urx;
    a.retries += u.retries;
    a.request_bytes = a.request_bytes.saturating_add(u.request_bytes);
    a.response_bytes = a.response_bytes.saturating_add(u.response_bytes);
    a.http1_requests += u.http1_requests;
    a.http2_requests += u.http2_requests;
    // Workers of one Envoy mostly see the same endpoints: the largest count, not the sum.
    a.endpoints = a.endpoints.max(u.endpoints);
    a.http3_requests += u.http3_requests;
    a.shed += u.shed;
    a.estimated |= u.estimated;
    a.samples += u.samples;
}

/// Whether the reporter sends a Report at this flush: always when it merged any window
/// (traffic), else only as a heartbeat, once `heartbeat_ms` (at least one flush) has passed
/// since the last one (`last_ms` 0 = never sent: the first report goes out at once, so the
/// controller learns the reporter and hints are fetched).
pub fn report_due(windows: u32, last_ms: u64, now_ms: u64, heartbeat_ms: u32) -> bool {
    windows > 0 || last_ms == 0 || now_ms.saturating_sub(last_ms) >= u64::from(heartbeat_ms)
}

/// Sequence numbers and delivery accounting of one reporter.
#[derive(Debug, Default)]
pub struct ReporterState {
    sequence: u64,
    /// Reports not delivered since start (call failed, timed out, or skipped because the
    /// previous call was still outstanding).
    pub dropped_reports: u64,
    /// Token of the outstanding Report call, if any.
    pub outstanding: Option<u32>,
    /// End of the last flushed window (unix ms).
    pub last_flush_ms: u64,
}

impl ReporterState {
    /// A reporter whose first window starts at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            last_flush_ms: now_ms,
            ..Default::default()
        }
    }

    /// A reporter taking over from another worker VM of the same Envoy (the leader stores
    /// its sequence in the lease right after building each report): the next report is
    /// `last_sequence + 1`, `dropped_reports` continue from `dropped_reports`. A fresh Envoy
    /// (`0, 0`) starts at sequence 1, which the controller accepts as a restart.
    pub fn resume(now_ms: u64, last_sequence: u64, dropped_reports: u64) -> Self {
        Self {
            sequence: last_sequence,
            dropped_reports,
            last_flush_ms: now_ms,
            outstanding: None,
        }
    }

    /// The sequence of the last report built.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Builds the next report (sequence strictly increasing, even across dropped reports).
    pub fn build(
        &mut self,
        reporter: &v1::Reporter,
        agg: &mut Aggregator,
        now_ms: u64,
    ) -> v1::ReportRequest {
        let since = if self.last_flush_ms == 0 {
            now_ms
        } else {
            self.last_flush_ms
        };
        let (start, len, upstreams) = agg.flush(since, now_ms);
        self.last_flush_ms = now_ms;
        self.sequence += 1;
        v1::ReportRequest {
            reporter: Some(reporter.clone()),
            sequence: self.sequence,
            window_start_unix_ms: start,
            window_length_ms: len,
            upstreams,
            dropped_reports: self.dropped_reports,
        }
    }

    /// Whether a new report may be sent now; if not, it is counted as dropped.
    pub fn may_send(&mut self) -> bool {
        if self.outstanding.is_some() {
            self.dropped_reports += 1;
            false
        } else {
            true
        }
    }

    /// The outstanding call finished; `ok` is gRPC status 0.
    pub fn call_done(&mut self, token: u32, ok: bool) {
        if self.outstanding == Some(token) {
            self.outstanding = None;
        }
        if !ok {
            self.dropped_reports += 1;
        }
    }

    /// The call could not even be dispatched.
    pub fn dispatch_failed(&mut self) {
        self.dropped_reports += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{Protocol, RequestRecord, Tracker};

    const MS: u64 = 1_000_000;

    /// A worker window with `n` 200s of `us` µs to cluster `c`, one request in flight for the
    /// whole window.
    fn worker_window(start_ms: u64, n: u64, us: u64, c: &str) -> WindowOut {
        let mut t = Tracker::new(8, start_ms * MS);
        let s = t.slot_for(c, start_ms * MS).unwrap();
        t.start(s, start_ms * MS); // held open
        for _ in 0..n {
            t.start(s, start_ms * MS);
            t.finish(
                s,
                start_ms * MS,
                &RequestRecord {
                    status: 200,
                    attempts: 2,
                    request_bytes: 10,
                    protocol: Some(Protocol::Http2),
                    duration_us: Some(us),
                    ..Default::default()
                },
            );
        }
        t.take_window((start_ms + 1000) * MS)
    }

    #[test]
    fn idle_reporters_only_send_heartbeats() {
        assert!(report_due(0, 0, 5_000, 10_000), "first report at once");
        assert!(!report_due(0, 5_000, 6_000, 10_000), "idle: quiet");
        assert!(!report_due(0, 5_000, 14_999, 10_000));
        assert!(report_due(0, 5_000, 15_000, 10_000), "heartbeat due");
        assert!(report_due(1, 5_000, 6_000, 10_000), "traffic: every flush");
    }

    #[test]
    fn merges_workers_per_cluster() {
        let mut agg = Aggregator::new(16, 16);
        let w1 = encode_worker_window("w1", &worker_window(10_000, 3, 1000, "a"));
        let w2 = encode_worker_window("w2", &worker_window(10_000, 2, 5000, "a"));
        let w3 = encode_worker_window("w3", &worker_window(10_000, 4, 7, "b"));
        for w in [&w1, &w2, &w3] {
            agg.merge_bytes(w).unwrap();
        }
        assert_eq!(agg.windows(), 3);
        let mut st = ReporterState::default();
        let reporter = v1::Reporter {
            pod: "p".into(),
            ..Default::default()
        };
        let r = st.build(&reporter, &mut agg, 11_000);
        assert_eq!(r.sequence, 1);
        assert_eq!(r.reporter.as_ref().unwrap().pod, "p");
        assert_eq!((r.window_start_unix_ms, r.window_length_ms), (10_000, 1000));
        assert_eq!(r.upstreams.len(), 2);
        let a = r.upstreams.iter().find(|u| u.cluster == "a").unwrap();
        assert_eq!(a.requests, 5);
        assert_eq!(a.status_2xx, 5);
        assert_eq!(a.retries, 5);
        assert_eq!(a.request_bytes, 50);
        assert_eq!(a.http2_requests, 5);
        // Each worker had one request in flight all along: 1 + 1.
        assert!((a.inflight_avg - 2.0).abs() < 1e-6, "{}", a.inflight_avg);
        assert_eq!(a.inflight_max, 4, "w1 max 2 + w2 max 2");
        let h = a.latency.as_ref().unwrap();
        assert_eq!(h.bucket_count.iter().sum::<u64>(), 5);
        assert_eq!((h.min_us, h.max_us), (1000, 5000));
        let b = r.upstreams.iter().find(|u| u.cluster == "b").unwrap();
        assert!((b.inflight_avg - 1.0).abs() < 1e-6, "{}", b.inflight_avg);
        assert_eq!(b.requests, 4);
        // Next flush is empty but still a report with the next sequence.
        let r2 = st.build(&reporter, &mut agg, 12_000);
        assert_eq!(r2.sequence, 2);
        assert!(r2.upstreams.is_empty());
        assert_eq!(
            (r2.window_start_unix_ms, r2.window_length_ms),
            (11_000, 1000)
        );
    }

    #[test]
    fn sequential_windows_of_one_worker_are_time_averaged() {
        let mut agg = Aggregator::new(16, 16);
        agg.merge_bytes(&encode_worker_window("w", &worker_window(0, 1, 10, "a")))
            .unwrap();
        agg.merge_bytes(&encode_worker_window("w", &worker_window(1000, 1, 10, "a")))
            .unwrap();
        let (start, len, ups) = agg.flush(0, 2000);
        assert_eq!((start, len), (0, 2000));
        assert!((ups[0].inflight_avg - 1.0).abs() < 1e-6);
        assert_eq!(ups[0].inflight_max, 2);
        assert_eq!(ups[0].requests, 2);
    }

    #[test]
    fn queue_is_bounded_and_drops_are_counted() {
        let mut agg = Aggregator::new(16, 2);
        let w = encode_worker_window("w", &worker_window(0, 1, 10, "a"));
        agg.merge_bytes(&w).unwrap();
        agg.merge_bytes(&w).unwrap();
        assert_eq!(agg.merge_bytes(&w), Err(MergeError::Full(2)));
        assert!(matches!(
            agg.merge_bytes(&[0xff, 0xff, 0xff]),
            Err(MergeError::Full(_))
        ));
        assert_eq!(agg.take_dropped(), 2);
        agg.flush(0, 1000);
        assert!(matches!(
            agg.merge_bytes(&[0xff, 0xff, 0xff]),
            Err(MergeError::Decode(_))
        ));
        assert_eq!(agg.take_dropped(), 1);
        agg.merge_bytes(&w).unwrap();
    }

    #[test]
    fn clusters_are_bounded() {
        let mut agg = Aggregator::new(1, 16);
        agg.merge_bytes(&encode_worker_window("w", &worker_window(0, 1, 10, "a")))
            .unwrap();
        agg.merge_bytes(&encode_worker_window("w", &worker_window(0, 1, 10, "b")))
            .unwrap();
        assert_eq!(agg.take_untracked(), 1);
        let (_, _, ups) = agg.flush(0, 1000);
        assert_eq!(ups.len(), 1);
    }

    #[test]
    fn grpc_service_upstream_encodes_cluster_and_authority() {
        let s = grpc_service_upstream("meshtune_controller", "meshtune-controller");
        let g = GrpcService::decode(s.as_bytes()).unwrap();
        let e = g.envoy_grpc.unwrap();
        assert_eq!(e.cluster_name, "meshtune_controller");
        assert_eq!(e.authority, "meshtune-controller");
        // Istio's names: together longer than 127 bytes, still one message, valid UTF-8.
        let cluster = crate::config::DEFAULT_CONTROLLER_CLUSTER;
        let authority = crate::config::Config::default().authority();
        assert!(cluster.len() + authority.len() > 127);
        let s = grpc_service_upstream(cluster, &authority);
        let e = GrpcService::decode(s.as_bytes())
            .unwrap()
            .envoy_grpc
            .unwrap();
        assert_eq!(
            (e.cluster_name.as_str(), e.authority.as_str()),
            (cluster, authority.as_str())
        );
        // No authority: cluster only.
        let e = GrpcService::decode(grpc_service_upstream("c", "").as_bytes())
            .unwrap()
            .envoy_grpc
            .unwrap();
        assert_eq!((e.cluster_name.as_str(), e.authority.as_str()), ("c", ""));
        // Too long for a one-byte length: falls back to the bare name.
        let long = "c".repeat(MAX_UPSTREAM_NAME + 1);
        assert_eq!(grpc_service_upstream(&long, ""), long);
        let edge = "c".repeat(MAX_UPSTREAM_NAME);
        let e = GrpcService::decode(grpc_service_upstream(&edge, &edge).as_bytes())
            .unwrap()
            .envoy_grpc
            .unwrap();
        assert_eq!(e.authority, edge);
    }

    #[test]
    fn a_successor_continues_above_the_stored_sequence() {
        let mut agg = Aggregator::new(4, 4);
        let rep = v1::Reporter::default();
        let mut old = ReporterState::new(0);
        let _ = old.build(&rep, &mut agg, 1000);
        // The leader stores each sequence in the lease right after building the report.
        let r2 = old.build(&rep, &mut agg, 2000);
        old.dispatch_failed();
        let mut new = ReporterState::resume(3000, old.sequence(), old.dropped_reports);
        let r3 = new.build(&rep, &mut agg, 4000);
        assert_eq!(r3.sequence, r2.sequence + 1);
        let fresh = ReporterState::resume(0, 0, 0).build(&rep, &mut agg, 1000);
        assert_eq!(fresh.sequence, 1);
        assert_eq!(r3.dropped_reports, 1);
        assert_eq!(r3.window_start_unix_ms, 3000);
        assert_eq!(new.sequence(), r3.sequence);
    }

    #[test]
    fn drops_are_counted_and_sequence_keeps_increasing() {
        let mut st = ReporterState::default();
        let mut agg = Aggregator::new(4, 4);
        let rep = v1::Reporter::default();
        assert!(st.may_send());
        let r1 = st.build(&rep, &mut agg, 1000);
        st.outstanding = Some(7);
        // Controller slow: the next flush finds the call still outstanding.
        assert!(!st.may_send());
        let r2 = st.build(&rep, &mut agg, 2000);
        assert!(r2.sequence > r1.sequence);
        assert_eq!(st.dropped_reports, 1);
        st.call_done(7, false); // the slow call then fails
        assert_eq!(st.outstanding, None);
        assert_eq!(st.dropped_reports, 2);
        st.dispatch_failed();
        let r3 = st.build(&rep, &mut agg, 3000);
        assert_eq!(r3.dropped_reports, 3);
        assert!(r3.sequence > r2.sequence);
        st.call_done(99, true); // a stale success does not clear anything
        assert_eq!(st.dropped_reports, 3);
    }
}
