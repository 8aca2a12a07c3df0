//! Guardrail (policy) files, TOML or YAML (the first input byte picks the format), as the
//! controller loads them at start: parse and validate, then the configuration in use: the
//! effective bounds of every namespace it names and a guarded decision for a proposal at the
//! hard bounds, the middle of the policy range and Istio's defaults, normal and urgent.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use meshtune_core::knobs::{Knob, Knobs, KNOB_COUNT, KNOB_SPECS};
use meshtune_policy::guardrails::{guard_with, Config, Guardrails, Situation};

fuzz_target!(|data: &[u8]| {
    let Some((&format, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let parsed = if format & 1 == 0 {
        Config::from_toml_str(text, "fuzz.toml")
    } else {
        Config::from_yaml_str(text, "fuzz.yaml")
    };
    let config = match parsed {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let mut namespaces: Vec<String> = config.namespaces.keys().cloned().collect();
    namespaces.push("default".into());
    let low = Knobs(std::array::from_fn(|i| KNOB_SPECS[i].min));
    let high = Knobs(std::array::from_fn(|i| KNOB_SPECS[i].max));
    let mid = Knobs::from_normalised(&[0.5; KNOB_COUNT]);
    let istio = Knobs::istio_defaults();
    let now = Instant::now();
    let guardrails = Guardrails::new(config.clone());
    for ns in &namespaces {
        for spec in &KNOB_SPECS {
            let knob: Knob = spec.knob;
            let (lo, hi) = config.bounds(ns, knob);
            assert!(lo <= hi, "bounds of {ns}/{}: {lo} > {hi}", knob.name());
        }
        for (proposed, in_force) in [(&low, &istio), (&high, &low), (&mid, &high), (&istio, &mid)] {
            // Meeting the SLO, missing it, healthy with a small and a huge demand (the floor
            // stays within the bounds).
            for situation in [
                Situation::urgent(false),
                Situation::urgent(true),
                Situation::of_window(false, 0.0, 50.0, 2, 3),
                Situation::of_window(false, 0.0, 1e12, 1, 1_000),
            ] {
                let (out, _adj) = guard_with(&config, ns, proposed, in_force, situation);
                for (i, v) in out.0.iter().enumerate() {
                    let (lo, hi) = config.bounds(ns, KNOB_SPECS[i].knob);
                    assert!(
                        (lo..=hi).contains(v),
                        "guarded {} = {v} outside [{lo}, {hi}] in {ns}",
                        KNOB_SPECS[i].knob.name()
                    );
                }
                let _ = guardrails.decide_with("dest", ns, now, proposed, in_force, situation);
            }
        }
    }
});
