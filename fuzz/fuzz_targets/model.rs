//! Model loading: ONNX bytes through the policy loader's checks (decode, contract metadata,
//! signature, weights, tract's optimisation) and, for a model that passes, the smoke test and
//! one batched inference, as the model store does before a hot swap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtune_policy::runtime::{typical_features, validate};

fuzz_target!(|data: &[u8]| {
    // The loader catches panics inside tract (a refused model); libfuzzer-sys' hook would abort
    // on those too. A panic that escapes the loader still aborts (libfuzzer-sys catches the
    // unwind), without a message: rerun the artifact under `cargo test` to see it.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    match validate(data, "fuzz.onnx") {
        Ok(policy) => {
            let batch: Vec<_> = typical_features().iter().map(|(_, f)| *f).collect();
            let _ = policy.decide_batch(&batch);
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.reason_label();
        }
    }
});
