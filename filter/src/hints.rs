//! Hints from the controller: how the reporting worker publishes them to all worker VMs (shared data),
//! how a worker turns them into per-cluster actions with an expiry, and the per-Envoy in-flight
//! counter used by concurrency-limit hints.

use meshtune_proto::v1;
use prost::Message;

/// Shared-data key under which the reporting worker publishes the latest hints.
pub const HINTS_KEY: &str = "meshtune.hints";
/// Shared queue carrying worker windows to the elected reporter (registered by the leader:
/// registering again moves delivery to the new leader and keeps queued items).
pub const QUEUE_NAME: &str = "meshtune.windows";
/// Request header that carries the timeout hint.
pub const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";
/// Request header that carries the retries hint.
pub const RETRIES_HEADER: &str = "x-envoy-max-retries";
/// Response header marking a locally shed request.
pub const SHED_HEADER: &str = "x-meshtune-shed";
/// Times a CAS update of the shared in-flight counter is attempted before failing open.
pub const CAS_ATTEMPTS: u32 = 8;

/// Encodes hints for shared data: receive time (unix ms, 8-byte LE) then the response.
pub fn encode_published(received_unix_ms: u64, resp: &v1::ReportResponse) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + resp.encoded_len());
    out.extend_from_slice(&received_unix_ms.to_le_bytes());
    resp.encode(&mut out).ok();
    out
}

/// Decodes [`encode_published`]'s output; `None` if malformed.
pub fn decode_published(bytes: &[u8]) -> Option<(u64, v1::ReportResponse)> {
    let (ts, rest) = bytes.split_at_checked(8)?;
    let ts = u64::from_le_bytes(ts.try_into().ok()?);
    let resp = v1::ReportResponse::decode(rest).ok()?;
    Some((ts, resp))
}

/// A hint in force for one cluster in one worker, with header values pre-rendered so that
/// applying it costs no formatting per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveHint {
    pub timeout_ms: Option<String>,
    pub max_retries: Option<String>,
    /// 0 = no limit.
    pub concurrency_limit: u32,
    /// Unix ms after which the hint no longer applies.
    pub expires_unix_ms: u64,
}

impl ActiveHint {
    /// The action for a hint received at `received_unix_ms`; `None` if it asks for nothing or
    /// has no TTL (a zero `ttl_ms` means "no hint", like every other zero field).
    pub fn from_hint(h: &v1::Hint, received_unix_ms: u64) -> Option<Self> {
        if h.ttl_ms == 0 {
            return None;
        }
        let a = ActiveHint {
            timeout_ms: (h.timeout_ms > 0).then(|| h.timeout_ms.to_string()),
            max_retries: h.max_retries.map(|r| r.to_string()),
            concurrency_limit: h.concurrency_limit,
            expires_unix_ms: received_unix_ms.saturating_add(u64::from(h.ttl_ms)),
        };
        if a.timeout_ms.is_none() && a.max_retries.is_none() && a.concurrency_limit == 0 {
            return None;
        }
        Some(a)
    }

    #[inline]
    pub fn is_active(&self, now_unix_ms: u64) -> bool {
        now_unix_ms < self.expires_unix_ms
    }
}

/// Outcome of asking the per-Envoy in-flight counter for a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted; the request must release its place when it finishes.
    Admitted,
    /// In-flight is at or above the limit: shed.
    Shed,
    /// Counter missing or contended: let the request through uncounted (fail open).
    Uncounted,
}

/// A compare-and-swap u64 cell (Envoy shared data, or memory in tests).
pub trait CasCell {
    /// Current value and version; `None` if the cell does not exist.
    fn load(&self) -> Option<(u64, u32)>;
    /// Stores `value` if the version is still `version`; false on mismatch or error.
    fn store(&mut self, value: u64, version: u32) -> bool;
}

/// Decodes a counter value (8-byte LE).
pub fn decode_counter(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Takes a place in the counter unless it is at `limit`.
pub fn acquire(cell: &mut impl CasCell, limit: u32) -> Admission {
    for _ in 0..CAS_ATTEMPTS {
        let Some((cur, version)) = cell.load() else {
            return Admission::Uncounted;
        };
        if cur >= u64::from(limit) {
            return Admission::Shed;
        }
        if cell.store(cur + 1, version) {
            return Admission::Admitted;
        }
    }
    Admission::Uncounted
}

/// Gives a place back; false if the counter could not be updated (the place leaks until the
/// reporter resets counters of clusters without a limit hint).
pub fn release(cell: &mut impl CasCell) -> bool {
    for _ in 0..CAS_ATTEMPTS {
        let Some((cur, version)) = cell.load() else {
            return false;
        };
        if cell.store(cur.saturating_sub(1), version) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(ttl_ms: u32) -> v1::Hint {
        v1::Hint {
            cluster: "c".into(),
            timeout_ms: 250,
            max_retries: Some(0),
            concurrency_limit: 4,
            ttl_ms,
        }
    }

    #[test]
    fn hint_expires_after_ttl() {
        let a = ActiveHint::from_hint(&hint(5000), 1_000).unwrap();
        assert_eq!(a.timeout_ms.as_deref(), Some("250"));
        assert_eq!(a.max_retries.as_deref(), Some("0"));
        assert_eq!(a.concurrency_limit, 4);
        assert!(a.is_active(1_000));
        assert!(a.is_active(5_999));
        assert!(!a.is_active(6_000));
    }

    #[test]
    fn empty_or_ttl_less_hints_are_ignored() {
        assert_eq!(ActiveHint::from_hint(&hint(0), 0), None);
        let empty = v1::Hint {
            cluster: "c".into(),
            ttl_ms: 1000,
            ..Default::default()
        };
        assert_eq!(ActiveHint::from_hint(&empty, 0), None);
        let only_retries = v1::Hint {
            max_retries: Some(0),
            ..empty
        };
        let a = ActiveHint::from_hint(&only_retries, 0).unwrap();
        assert_eq!((a.timeout_ms, a.concurrency_limit), (None, 0));
    }

    #[test]
    fn published_hints_round_trip_and_reject_garbage() {
        let resp = v1::ReportResponse {
            hints: vec![hint(100)],
            accepted_sequence: 9,
        };
        let bytes = encode_published(123, &resp);
        assert_eq!(decode_published(&bytes), Some((123, resp)));
        assert_eq!(decode_published(&[1, 2, 3]), None);
        assert_eq!(decode_published(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff]), None);
    }

    /// Memory cell with versions; `contend` simulates other workers writing in between.
    struct Cell {
        value: Option<u64>,
        version: u32,
        contend: u32,
    }

    impl CasCell for Cell {
        fn load(&self) -> Option<(u64, u32)> {
            self.value.map(|v| (v, self.version))
        }
        fn store(&mut self, value: u64, version: u32) -> bool {
            if self.contend > 0 {
                self.contend -= 1;
                self.version += 1;
            }
            if version != self.version {
                return false;
            }
            self.value = Some(value);
            self.version += 1;
            true
        }
    }

    #[test]
    fn counter_sheds_at_limit_and_releases() {
        let mut c = Cell {
            value: Some(0),
            version: 1,
            contend: 0,
        };
        assert_eq!(acquire(&mut c, 2), Admission::Admitted);
        assert_eq!(acquire(&mut c, 2), Admission::Admitted);
        assert_eq!(acquire(&mut c, 2), Admission::Shed);
        assert_eq!(c.value, Some(2));
        assert!(release(&mut c));
        assert_eq!(acquire(&mut c, 2), Admission::Admitted);
        assert!(release(&mut c) && release(&mut c) && release(&mut c));
        assert_eq!(c.value, Some(0), "release saturates at zero");
    }

    #[test]
    fn counter_retries_cas_and_fails_open() {
        let mut c = Cell {
            value: Some(0),
            version: 1,
            contend: 3,
        };
        assert_eq!(
            acquire(&mut c, 10),
            Admission::Admitted,
            "3 conflicts then success"
        );
        assert_eq!(c.value, Some(1));
        c.contend = CAS_ATTEMPTS;
        assert_eq!(acquire(&mut c, 10), Admission::Uncounted);
        let mut missing = Cell {
            value: None,
            version: 0,
            contend: 0,
        };
        assert_eq!(acquire(&mut missing, 1), Admission::Uncounted);
        assert!(!release(&mut missing));
    }

    #[test]
    fn counter_decoding() {
        assert_eq!(decode_counter(&7u64.to_le_bytes()), Some(7));
        assert_eq!(decode_counter(&[1, 2]), None);
    }
}
