//! Renders `Knobs` to the fast-path `meshtune.v1.Hint` the filter applies per request.

use meshtune_core::{Knob, Knobs};
use meshtune_proto::v1::Hint;

pub use meshtune_proto::DEFAULT_HINT_TTL_MS;

fn to_u32(v: f64) -> u32 {
    if v.is_finite() {
        v.round().clamp(0.0, u32::MAX as f64) as u32
    } else {
        0
    }
}

/// The hint for Envoy cluster `cluster` (the name the filter sees in `xds.cluster_name`):
/// `timeout_ms` = route timeout (0 = none), `max_retries` = `retries.attempts`,
/// `concurrency_limit` = `http2MaxRequests` when it is a real limit (below Istio's 2^32-1
/// "unlimited"; else 0 = none), valid for `ttl_ms`.
pub fn hint(cluster: &str, knobs: &Knobs, ttl_ms: u32) -> Hint {
    let limit = knobs.get(Knob::Http2MaxRequests);
    let concurrency_limit = if limit.is_finite() && limit >= 1.0 && limit < u32::MAX as f64 {
        to_u32(limit)
    } else {
        0
    };
    Hint {
        cluster: cluster.to_string(),
        timeout_ms: to_u32(knobs.get(Knob::RouteTimeoutMs)),
        max_retries: Some(to_u32(knobs.get(Knob::RetryAttempts))),
        concurrency_limit,
        ttl_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuned_knobs_become_a_full_hint() {
        let mut k = Knobs::istio_defaults();
        k.set(Knob::RouteTimeoutMs, 750.4);
        k.set(Knob::RetryAttempts, 1.0);
        k.set(Knob::Http2MaxRequests, 64.0);
        let h = hint(
            "outbound|9080||reviews.default.svc.cluster.local",
            &k,
            5_000,
        );
        assert_eq!(
            h.cluster,
            "outbound|9080||reviews.default.svc.cluster.local"
        );
        assert_eq!(h.timeout_ms, 750);
        assert_eq!(h.max_retries, Some(1));
        assert_eq!(h.concurrency_limit, 64);
        assert_eq!(h.ttl_ms, 5_000);
    }

    #[test]
    fn istio_defaults_mean_no_limits() {
        let h = hint("c", &Knobs::istio_defaults(), DEFAULT_HINT_TTL_MS);
        assert_eq!(h.timeout_ms, 0);
        assert_eq!(h.concurrency_limit, 0);
        assert_eq!(h.max_retries, Some(2));
        let mut k = Knobs::istio_defaults();
        k.set(Knob::RetryAttempts, 0.0);
        k.set(Knob::Http2MaxRequests, f64::NAN);
        let h = hint("c", &k, 1);
        assert_eq!(h.max_retries, Some(0));
        assert_eq!(h.concurrency_limit, 0);
    }
}
