//! Report ingest: protobuf bytes decoded as tonic does (within the server's decoding limit),
//! then the controller's validation with its default limits. A report that passes must be
//! consistent with what validation promises (unique clusters, window lengths within limits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtune_controller::validate::{validate, Limits};
use meshtune_proto::v1::ReportRequest;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if data.len() > limits.max_report_bytes.saturating_mul(2) {
        return;
    }
    let Ok(req) = ReportRequest::decode(data) else {
        return;
    };
    match validate(&req, &limits) {
        Ok(valid) => {
            assert!(valid.upstreams.len() <= limits.max_upstreams);
            assert!(valid.window_length_ms <= limits.max_window_length_ms);
            let mut names: Vec<&str> = valid.upstreams.iter().map(|(c, _)| c.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(
                names.len(),
                valid.upstreams.len(),
                "duplicate clusters accepted"
            );
            for (_, stats) in &valid.upstreams {
                let _ = stats.features(&meshtune_core::features::Context::initial(250.0));
            }
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.reason.as_str();
        }
    }
});
