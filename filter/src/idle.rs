//! Shared-data work the filter can skip: when the reporting worker may skip a lease check
//! (its own lease is certainly still valid), and when a controller response needs publishing
//! to the other VMs (only when it changes the hints in force).
//!
//! Pure: the proxy-wasm glue (`plugin`) applies them.

use meshtune_proto::v1;

/// The reporting worker skips the lease check before a flush only while its own lease is
/// valid for at least this long: the flush renews it right after the report.
pub const LEASE_SAFETY_MS: u64 = 50;

/// Whether the lease this VM renewed to expire at `lease_until_ms` is certainly still its own
/// at `now_ms` (all VMs of an Envoy share the host clock, and nobody may claim a lease before
/// it expires), with [`LEASE_SAFETY_MS`] to spare. `lease_until_ms` 0 = not held.
pub fn lease_held(now_ms: u64, lease_until_ms: u64) -> bool {
    now_ms.saturating_add(LEASE_SAFETY_MS) < lease_until_ms
}

/// Whether a controller response must be published to the other VMs: it carries a hint, or
/// the last published response did (the latest response replaces all hints, so an empty one
/// clears them). A heartbeat answered without hints after hints without hints changes nothing
/// and is not written to shared data (which would make every VM decode it again).
pub fn must_publish(resp: &v1::ReportResponse, last_published_had_hints: bool) -> bool {
    last_published_had_hints || has_hints(resp)
}

/// The response carries at least one hint with a TTL (others are ignored by the workers).
pub fn has_hints(resp: &v1::ReportResponse) -> bool {
    resp.hints.iter().any(|h| h.ttl_ms > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_held_until_shortly_before_it_expires() {
        assert!(lease_held(1_000, 2_000));
        assert!(lease_held(1_000, 1_000 + LEASE_SAFETY_MS + 1));
        assert!(!lease_held(1_000, 1_000 + LEASE_SAFETY_MS));
        assert!(!lease_held(3_000, 2_000), "expired");
        assert!(!lease_held(0, 0), "not held");
        assert!(!lease_held(u64::MAX, u64::MAX));
    }

    #[test]
    fn empty_responses_are_published_only_to_clear_hints() {
        let empty = v1::ReportResponse::default();
        let hint = |ttl_ms| v1::ReportResponse {
            hints: vec![v1::Hint {
                cluster: "c".into(),
                timeout_ms: 100,
                ttl_ms,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(!must_publish(&empty, false));
        assert!(must_publish(&empty, true), "clears the hints in force");
        assert!(must_publish(&hint(5_000), false));
        assert!(must_publish(&hint(5_000), true));
        assert!(!must_publish(&hint(0), false), "a zero TTL is no hint");
        assert!(has_hints(&hint(1)) && !has_hints(&hint(0)) && !has_hints(&empty));
    }
}
