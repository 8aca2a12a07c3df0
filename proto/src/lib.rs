//! `meshtune.v1`: the Report/Hints wire contract between the filter and the controller.
//!
//! Without the `grpc` feature this is plain prost messages (used by the wasm filter); with it,
//! the tonic `FeatureService` client and server are generated too. With `serde`, [`v1::Hint`]
//! also (de)serialises as the controller's JSON hint (hints file, admin API).

/// The generated `meshtune.v1` package.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/meshtune.v1.rs"));
}

/// How long a hint stays valid when its sender gives no TTL (the hints file) and the least the
/// controller's decision loop gives (it outlives three decision intervals).
pub const DEFAULT_HINT_TTL_MS: u32 = 10_000;

/// serde default of `Hint.ttl_ms`.
#[cfg(feature = "serde")]
fn default_hint_ttl_ms() -> u32 {
    DEFAULT_HINT_TTL_MS
}

/// Most upstream windows one report may carry: the filter's `max_upstreams` default and upper
/// bound, and the controller's per-report limit (its decode limit is derived from it), so a
/// report the filter builds is never refused for its size.
pub const MAX_UPSTREAMS_PER_REPORT: u32 = 256;

/// gRPC path of the Report method, as the filter dispatches it.
pub const FEATURE_SERVICE: &str = "meshtune.v1.FeatureService";
/// Method name of Report within [`FEATURE_SERVICE`].
pub const REPORT_METHOD: &str = "Report";

#[cfg(test)]
mod tests {
    use super::v1::*;
    use prost::Message;

    #[test]
    fn report_round_trips() {
        let req = ReportRequest {
            reporter: Some(Reporter {
                pod: "p".into(),
                ..Default::default()
            }),
            sequence: 7,
            upstreams: vec![UpstreamWindow {
                cluster: "c".into(),
                requests: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        assert_eq!(ReportRequest::decode(bytes.as_slice()).unwrap(), req);
    }

    #[test]
    fn optional_retries_distinguishes_zero_from_absent() {
        let zero = Hint {
            max_retries: Some(0),
            ..Default::default()
        };
        let none = Hint::default();
        let back = Hint::decode(zero.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.max_retries, Some(0));
        assert_eq!(
            Hint::decode(none.encode_to_vec().as_slice())
                .unwrap()
                .max_retries,
            None
        );
    }
}
