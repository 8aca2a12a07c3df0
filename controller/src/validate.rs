//! Validation of incoming `ReportRequest`s: a bad report is refused whole with an error naming
//! the field, before anything touches the aggregates. A valid one becomes a [`ValidReport`]
//! of per-cluster [`WindowStats`].

use meshtune_core::histogram::LatencyHistogram;
use meshtune_core::WindowStats;
use meshtune_proto::v1::{ReportRequest, UpstreamWindow};
use prost::Message;
use std::collections::HashSet;

/// Bounds applied by [`validate`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_report_bytes: usize,
    pub max_upstreams: usize,
    pub max_name_len: usize,
    pub max_window_length_ms: u32,
}

impl Default for Limits {
    fn default() -> Self {
        crate::config::Config::default().validation_limits()
    }
}

/// Coarse reason of a rejection: the `reason` label of `meshtune_reports_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Size,
    Reporter,
    Window,
    Upstreams,
    Cluster,
    Counts,
    Latency,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Size => "size",
            Reason::Reporter => "reporter",
            Reason::Window => "window",
            Reason::Upstreams => "upstreams",
            Reason::Cluster => "cluster",
            Reason::Counts => "counts",
            Reason::Latency => "latency",
        }
    }
}

/// A refused report: which field is wrong and why. Displayed as `field: message`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Path of the offending field, e.g. `upstreams[2].latency`.
    pub field: String,
    pub message: String,
    pub reason: Reason,
}

fn err(reason: Reason, field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
        reason,
    }
}

/// Identity of a reporter: (namespace, workload, pod, vm_id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReporterKey {
    pub namespace: String,
    pub workload: String,
    pub pod: String,
    pub vm_id: String,
}

/// A report that passed validation.
#[derive(Debug, Clone)]
pub struct ValidReport {
    pub reporter: ReporterKey,
    pub sequence: u64,
    pub dropped_reports: u64,
    pub window_length_ms: u32,
    /// One entry per upstream cluster (names are unique within a report).
    pub upstreams: Vec<(String, WindowStats)>,
}

/// Checks a report against `limits` and converts it. The first problem found is returned.
pub fn validate(req: &ReportRequest, limits: &Limits) -> Result<ValidReport, ValidationError> {
    let size = req.encoded_len();
    if size > limits.max_report_bytes {
        return Err(err(
            Reason::Size,
            "report",
            format!(
                "encoded size {size} bytes exceeds the limit of {} bytes",
                limits.max_report_bytes
            ),
        ));
    }
    let r = req
        .reporter
        .as_ref()
        .ok_or_else(|| err(Reason::Reporter, "reporter", "missing"))?;
    for (name, value) in [
        ("reporter.namespace", &r.namespace),
        ("reporter.workload", &r.workload),
        ("reporter.pod", &r.pod),
        ("reporter.vm_id", &r.vm_id),
        ("reporter.filter_version", &r.filter_version),
        ("reporter.node_id", &r.node_id),
    ] {
        if value.len() > limits.max_name_len {
            return Err(err(
                Reason::Reporter,
                name,
                format!(
                    "{} bytes long, the limit is {}",
                    value.len(),
                    limits.max_name_len
                ),
            ));
        }
    }
    if r.namespace.is_empty() && r.workload.is_empty() && r.pod.is_empty() && r.vm_id.is_empty() {
        return Err(err(
            Reason::Reporter,
            "reporter",
            "namespace, workload, pod and vm_id are all empty",
        ));
    }
    // An empty report (a heartbeat with no upstreams) carries nothing to aggregate, so its
    // length does not matter; the filter may send one with a zero-length window.
    if req.window_length_ms == 0 && !req.upstreams.is_empty() {
        return Err(err(Reason::Window, "window_length_ms", "must be > 0"));
    }
    if req.window_length_ms > limits.max_window_length_ms {
        return Err(err(
            Reason::Window,
            "window_length_ms",
            format!(
                "{} exceeds the limit of {} ms",
                req.window_length_ms, limits.max_window_length_ms
            ),
        ));
    }
    if req.upstreams.len() > limits.max_upstreams {
        return Err(err(
            Reason::Upstreams,
            "upstreams",
            format!(
                "{} entries exceed the limit of {}",
                req.upstreams.len(),
                limits.max_upstreams
            ),
        ));
    }
    let duration_s = f64::from(req.window_length_ms) / 1000.0;
    let mut seen = HashSet::with_capacity(req.upstreams.len());
    let mut upstreams = Vec::with_capacity(req.upstreams.len());
    for (i, u) in req.upstreams.iter().enumerate() {
        let field = |f: &str| format!("upstreams[{i}].{f}");
        if u.cluster.is_empty() {
            return Err(err(Reason::Cluster, field("cluster"), "empty"));
        }
        if u.cluster.len() > limits.max_name_len {
            return Err(err(
                Reason::Cluster,
                field("cluster"),
                format!(
                    "{} bytes long, the limit is {}",
                    u.cluster.len(),
                    limits.max_name_len
                ),
            ));
        }
        if !seen.insert(u.cluster.as_str()) {
            return Err(err(
                Reason::Cluster,
                field("cluster"),
                format!("duplicate cluster {:?} in one report", u.cluster),
            ));
        }
        let stats =
            upstream_stats(u, duration_s).map_err(|(f, m, reason)| err(reason, field(f), m))?;
        upstreams.push((u.cluster.clone(), stats));
    }
    Ok(ValidReport {
        reporter: ReporterKey {
            namespace: r.namespace.clone(),
            workload: r.workload.clone(),
            pod: r.pod.clone(),
            vm_id: r.vm_id.clone(),
        },
        sequence: req.sequence,
        dropped_reports: req.dropped_reports,
        window_length_ms: req.window_length_ms,
        upstreams,
    })
}

type FieldError = (&'static str, String, Reason);

fn sum(field: &'static str, parts: &[u64]) -> Result<u64, FieldError> {
    parts
        .iter()
        .try_fold(0u64, |a, &b| a.checked_add(b))
        .ok_or((field, "sum overflows u64".to_string(), Reason::Counts))
}

fn at_most(
    field: &'static str,
    value: u64,
    bound_name: &str,
    bound: u64,
) -> Result<(), FieldError> {
    if value > bound {
        Err((
            field,
            format!("{value} exceeds {bound_name} ({bound})"),
            Reason::Counts,
        ))
    } else {
        Ok(())
    }
}

fn upstream_stats(u: &UpstreamWindow, duration_s: f64) -> Result<WindowStats, FieldError> {
    let n = u.requests;
    let statuses = sum(
        "status_*",
        &[
            u.status_1xx,
            u.status_2xx,
            u.status_3xx,
            u.status_4xx,
            u.status_5xx,
            u.status_none,
        ],
    )?;
    at_most("status_*", statuses, "requests", n)?;
    at_most("flag_uo", u.flag_uo, "requests", n)?;
    at_most("flag_ut", u.flag_ut, "requests", n)?;
    at_most("flag_uf", u.flag_uf, "requests", n)?;
    at_most("flag_uc", u.flag_uc, "requests", n)?;
    at_most("flag_urx", u.flag_urx, "requests", n)?;
    at_most("shed", u.shed, "status_5xx", u.status_5xx)?;
    let conn = sum(
        "flag_uf+flag_uc+flag_urx",
        &[u.flag_uf, u.flag_uc, u.flag_urx],
    )?;
    at_most("flag_uf+flag_uc+flag_urx", conn, "requests", n)?;
    let protocols = sum(
        "http*_requests",
        &[u.http1_requests, u.http2_requests, u.http3_requests],
    )?;
    at_most("http*_requests", protocols, "requests", n)?;
    // Sampled windows (see the proto): how many requests were measured. An exact window
    // (`estimated` false) measured all; `samples` is then ignored (0 from older filters).
    let unmeasured_requests = if u.estimated {
        at_most("samples", u.samples, "requests", n)?;
        n - u.samples
    } else {
        0
    };
    if !u.inflight_avg.is_finite() || u.inflight_avg < 0.0 {
        return Err((
            "inflight_avg",
            format!("{} is not a finite value >= 0", u.inflight_avg),
            Reason::Counts,
        ));
    }
    let latency = match &u.latency {
        None => LatencyHistogram::new(),
        Some(h) => {
            let hist = LatencyHistogram::from_sparse(
                h.sub_bucket_bits,
                &h.bucket_index,
                &h.bucket_count,
                h.sum_us,
                h.min_us,
                h.max_us,
            )
            .map_err(|e| ("latency", e.to_string(), Reason::Latency))?;
            if hist.count() > n {
                return Err((
                    "latency",
                    format!(
                        "histogram holds {} samples, more than requests ({n})",
                        hist.count()
                    ),
                    Reason::Latency,
                ));
            }
            if hist.count() > 0 && h.min_us > h.max_us {
                return Err((
                    "latency",
                    format!("min_us {} > max_us {}", h.min_us, h.max_us),
                    Reason::Latency,
                ));
            }
            hist
        }
    };
    Ok(WindowStats {
        duration_s,
        requests: n,
        status_2xx: u.status_2xx,
        status_4xx: u.status_4xx,
        status_5xx: u.status_5xx,
        status_other: u
            .status_1xx
            .saturating_add(u.status_3xx)
            .saturating_add(u.status_none),
        flag_uo: u.flag_uo,
        flag_ut: u.flag_ut,
        flag_conn_failure: conn,
        retries: u.retries,
        shed: u.shed,
        inflight_max: u64::from(u.inflight_max),
        inflight_avg: u.inflight_avg,
        request_bytes: u.request_bytes,
        response_bytes: u.response_bytes,
        http2_requests: u.http2_requests,
        endpoints: u.endpoints,
        unmeasured_requests,
        latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_core::histogram::SUB_BUCKET_BITS;
    use meshtune_proto::v1::{LatencyHistogram as WireHist, Reporter};

    pub(crate) fn good() -> ReportRequest {
        let mut h = LatencyHistogram::new();
        (0..10).for_each(|i| h.record(1000 + i * 100));
        let (idx, cnt): (Vec<u32>, Vec<u64>) = h.nonzero_buckets().unzip();
        ReportRequest {
            reporter: Some(Reporter {
                namespace: "ns".into(),
                workload: "w".into(),
                pod: "p".into(),
                vm_id: "vm".into(),
                ..Default::default()
            }),
            sequence: 1,
            window_start_unix_ms: 1,
            window_length_ms: 1000,
            upstreams: vec![UpstreamWindow {
                cluster: "c".into(),
                requests: 10,
                status_2xx: 8,
                status_5xx: 2,
                flag_uo: 1,
                shed: 1,
                inflight_max: 3,
                inflight_avg: 1.5,
                http1_requests: 10,
                latency: Some(WireHist {
                    sub_bucket_bits: SUB_BUCKET_BITS,
                    bucket_index: idx,
                    bucket_count: cnt,
                    sum_us: h.sum_us(),
                    min_us: h.min_us(),
                    max_us: h.max_us(),
                }),
                ..Default::default()
            }],
            dropped_reports: 0,
        }
    }

    fn field_of(req: &ReportRequest) -> String {
        validate(req, &Limits::default()).unwrap_err().field
    }

    #[test]
    fn a_good_report_converts() {
        let v = validate(&good(), &Limits::default()).unwrap();
        assert_eq!(v.upstreams.len(), 1);
        let (name, w) = &v.upstreams[0];
        assert_eq!(name, "c");
        assert_eq!((w.requests, w.status_5xx, w.flag_uo), (10, 2, 1));
        assert_eq!(w.latency.count(), 10);
        assert_eq!(w.duration_s, 1.0);
        assert_eq!(v.reporter.pod, "p");
    }

    #[test]
    fn sampled_windows_carry_their_sample_count() {
        let mut r = good();
        r.upstreams[0].estimated = true;
        r.upstreams[0].samples = 4;
        let v = validate(&r, &Limits::default()).unwrap();
        let w = &v.upstreams[0].1;
        assert_eq!(
            (w.requests, w.unmeasured_requests, w.measured_requests()),
            (10, 6, 4)
        );
        // Exact windows measured everything, whatever `samples` says (older filters: 0).
        r.upstreams[0].estimated = false;
        r.upstreams[0].samples = 0;
        let v = validate(&r, &Limits::default()).unwrap();
        assert_eq!(v.upstreams[0].1.measured_requests(), 10);
        // More samples than requests is refused, naming the field.
        r.upstreams[0].estimated = true;
        r.upstreams[0].samples = 11;
        assert_eq!(field_of(&r), "upstreams[0].samples");
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut r = good();
        r.reporter = None;
        assert_eq!(field_of(&r), "reporter");

        let mut r = good();
        r.reporter = Some(Reporter::default());
        assert_eq!(field_of(&r), "reporter");

        let mut r = good();
        r.reporter.as_mut().unwrap().pod = "x".repeat(10_000);
        assert_eq!(field_of(&r), "reporter.pod");

        let mut r = good();
        r.window_length_ms = 0;
        assert_eq!(field_of(&r), "window_length_ms");

        let mut r = good();
        r.window_length_ms = 0;
        r.upstreams.clear();
        assert!(
            validate(&r, &Limits::default()).is_ok(),
            "empty heartbeat accepted"
        );

        let mut r = good();
        r.window_length_ms = u32::MAX;
        assert_eq!(field_of(&r), "window_length_ms");

        let mut r = good();
        r.upstreams[0].cluster.clear();
        assert_eq!(field_of(&r), "upstreams[0].cluster");

        let mut r = good();
        r.upstreams[0].cluster = "x".repeat(10_000);
        assert_eq!(field_of(&r), "upstreams[0].cluster");

        let mut r = good();
        let dup = r.upstreams[0].clone();
        r.upstreams.push(dup);
        assert_eq!(field_of(&r), "upstreams[1].cluster");

        let mut r = good();
        r.upstreams[0].status_4xx = 5;
        assert_eq!(field_of(&r), "upstreams[0].status_*");

        let mut r = good();
        r.upstreams[0].status_2xx = u64::MAX;
        assert_eq!(field_of(&r), "upstreams[0].status_*");

        let mut r = good();
        r.upstreams[0].flag_ut = 11;
        assert_eq!(field_of(&r), "upstreams[0].flag_ut");

        let mut r = good();
        r.upstreams[0].shed = 3;
        assert_eq!(field_of(&r), "upstreams[0].shed");

        let mut r = good();
        r.upstreams[0].inflight_avg = f64::NAN;
        assert_eq!(field_of(&r), "upstreams[0].inflight_avg");

        let mut r = good();
        r.upstreams[0].latency.as_mut().unwrap().sub_bucket_bits = 7;
        let e = validate(&r, &Limits::default()).unwrap_err();
        assert_eq!(e.field, "upstreams[0].latency");
        assert!(e.message.contains("sub_bucket_bits"), "{e}");

        let mut r = good();
        r.upstreams[0]
            .latency
            .as_mut()
            .unwrap()
            .bucket_index
            .reverse();
        assert_eq!(field_of(&r), "upstreams[0].latency");

        let mut r = good();
        r.upstreams[0].latency.as_mut().unwrap().bucket_count[0] += 100;
        assert_eq!(field_of(&r), "upstreams[0].latency");
    }

    #[test]
    fn bounds_on_size_and_upstream_count() {
        let limits = Limits {
            max_upstreams: 2,
            ..Limits::default()
        };
        let mut r = good();
        for i in 0..3 {
            let mut u = r.upstreams[0].clone();
            u.cluster = format!("c{i}");
            r.upstreams.push(u);
        }
        assert_eq!(validate(&r, &limits).unwrap_err().field, "upstreams");
        let limits = Limits {
            max_report_bytes: 50,
            ..Limits::default()
        };
        let e = validate(&good(), &limits).unwrap_err();
        assert_eq!((e.field.as_str(), e.reason), ("report", Reason::Size));
    }
}
