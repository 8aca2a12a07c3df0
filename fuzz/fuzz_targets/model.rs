//! Model loading: ONNX bytes through the policy loader's checks (decode, contract metadata,
//! signature, weights, tract's optimisation) and, for a model that passes, the smoke test and
//! one batched inference, as the model store does before a hot swap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtune_policy::runtime::{typical_features, validate};

fuzz_target!(|data: &[u8]| {
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
