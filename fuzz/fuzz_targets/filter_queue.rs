//! The elected reporter's merge of worker windows read from the shared queue (bytes any worker
//! VM may have written), then the flush into one report. Must never panic: the filter fails open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtune_filter::report::Aggregator;

fuzz_target!(|data: &[u8]| {
    // The input is one or more queued windows, separated by the 4-byte marker "\0\0\0\xff"
    // (a byte string no encoded window needs), so merges of different windows are explored.
    let mut agg = Aggregator::new(8, 32);
    let mut rest = data;
    loop {
        let (item, next) = match rest.windows(4).position(|w| w == b"\0\0\0\xff") {
            Some(i) => (&rest[..i], Some(&rest[i + 4..])),
            None => (rest, None),
        };
        // Each window twice: two workers often queue near-identical windows, and it puts the
        // sums (counters, histogram buckets) under stress with one fuzzed window.
        let _ = agg.merge_bytes(item);
        let _ = agg.merge_bytes(item);
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    let _ = agg.take_dropped();
    let _ = agg.take_untracked();
    let (_start, _len, upstreams) = agg.flush(0, u64::MAX / 2);
    for u in &upstreams {
        let _ = u.latency.as_ref().map(|h| h.bucket_index.len());
    }
});
