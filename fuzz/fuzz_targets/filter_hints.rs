//! The filter's hint decoding: a `ReportResponse` body from the controller as the reporter
//! decodes it and publishes it to shared data, then each worker's reading of the shared-data
//! value and turning every hint into a per-cluster action. The raw input is also read as a
//! shared-data value directly (any bytes may sit there). Must never panic: the filter fails open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtune_filter::hints::{decode_counter, decode_published, encode_published, ActiveHint};
use meshtune_filter::window::Tracker;
use meshtune_proto::v1::ReportResponse;
use prost::Message;

fn apply(received_ms: u64, resp: &ReportResponse) {
    // A small tracker, as a worker with `max_upstreams` reached would have.
    let mut tracker = Tracker::new(4, 0);
    for s in tracker.slots_mut() {
        s.hint = None;
    }
    for h in &resp.hints {
        let Some(active) = ActiveHint::from_hint(h, received_ms) else {
            continue;
        };
        let _ = active.is_active(received_ms);
        let _ = active.is_active(u64::MAX);
        if let Some(id) = tracker.slot_for(&h.cluster, received_ms) {
            if let Some(s) = tracker.slot_mut(id) {
                s.hint = Some(active);
            }
        }
    }
    let _ = tracker.take_window(received_ms.saturating_add(1_000_000_000));
}

fuzz_target!(|data: &[u8]| {
    // As a shared-data value (worker side) and as an in-flight counter value.
    if let Some((received_ms, resp)) = decode_published(data) {
        apply(received_ms, &resp);
    }
    let _ = decode_counter(data);
    // As a gRPC response body (reporter side), published and read back.
    if let Ok(resp) = ReportResponse::decode(data) {
        let received_ms = u64::from(data.len() as u32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let published = encode_published(received_ms, &resp);
        let (ts, back) = decode_published(&published).expect("published hints decode");
        assert_eq!(ts, received_ms);
        assert_eq!(back, resp);
        apply(ts, &back);
    }
});
