//! Filter reports for tests: a reporter identity, an upstream window with a real latency
//! histogram, and a whole `ReportRequest`, as the filter would send them.

use meshtune_core::histogram::{LatencyHistogram, SUB_BUCKET_BITS};
use meshtune_proto::v1::{LatencyHistogram as WireHist, ReportRequest, Reporter, UpstreamWindow};

/// Reporter `pod` of workload `client` in namespace `default`.
pub fn reporter(pod: &str) -> Reporter {
    Reporter {
        namespace: "default".into(),
        workload: "client".into(),
        pod: pod.into(),
        vm_id: "vm-0".into(),
        filter_version: "test".into(),
        node_id: String::new(),
    }
}

/// An upstream window of `n` requests, `e5` of them 5xx, all with latency `lat_us`.
pub fn upstream(cluster: &str, n: u64, e5: u64, lat_us: u64) -> UpstreamWindow {
    let mut h = LatencyHistogram::new();
    h.record_n(lat_us, n);
    let (idx, cnt): (Vec<u32>, Vec<u64>) = h.nonzero_buckets().unzip();
    UpstreamWindow {
        cluster: cluster.into(),
        requests: n,
        status_2xx: n - e5,
        status_5xx: e5,
        inflight_max: 2,
        inflight_avg: 1.0,
        http1_requests: n,
        latency: Some(WireHist {
            sub_bucket_bits: SUB_BUCKET_BITS,
            bucket_index: idx,
            bucket_count: cnt,
            sum_us: h.sum_us(),
            min_us: h.min_us(),
            max_us: h.max_us(),
        }),
        ..Default::default()
    }
}

/// A report of `upstreams` with sequence number `sequence`, 1 s window.
pub fn report(pod: &str, sequence: u64, upstreams: Vec<UpstreamWindow>) -> ReportRequest {
    ReportRequest {
        reporter: Some(reporter(pod)),
        sequence,
        window_start_unix_ms: 0,
        window_length_ms: 1000,
        upstreams,
        dropped_reports: 0,
    }
}
