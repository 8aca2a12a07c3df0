//! The ONNX policy contract shared by trainer (export) and controller (load).
//!
//! A policy maps normalised features (input [`INPUT_NAME`], float32 `[N, F]`) to normalised
//! knobs (output [`OUTPUT_NAME`], float32 `[N, K]`, nominally in [0, 1]; guardrails clamp).
//! `metadata_props` must carry the keys below; the controller refuses a model whose feature or
//! knob names, order, or contract version differ from this build's schema.

use crate::features::FEATURE_NAMES;
use crate::knobs::KNOB_NAMES;

/// Bump when the feature or knob schema, normalisation or tensor layout changes.
///
/// - 1: the 14 window features only.
/// - 2: adds the destination's state (knobs in force, clients, endpoints, time since the last
///   change, SLO target; [`crate::features::Context`]); timeout 0 ("none") normalises to 1.
pub const CONTRACT_VERSION: &str = "2";
pub const INPUT_NAME: &str = "features";
pub const OUTPUT_NAME: &str = "knobs";
/// Comma-separated feature names in input order.
pub const META_FEATURES: &str = "meshtune.features";
/// Comma-separated knob names in output order.
pub const META_KNOBS: &str = "meshtune.knobs";
pub const META_CONTRACT_VERSION: &str = "meshtune.contract_version";
/// Free-form model version, e.g. `ppo-v1`.
pub const META_MODEL_VERSION: &str = "meshtune.model_version";
/// How the model was made (command, seed, data); informational.
pub const META_PROVENANCE: &str = "meshtune.provenance";
/// Output values outside `[-OUTPUT_SLACK, 1 + OUTPUT_SLACK]` on the smoke input make a model
/// invalid (small excursions are clamped by guardrails).
pub const OUTPUT_SLACK: f32 = 0.5;

/// Comma-joined feature names, as expected in [`META_FEATURES`].
pub fn feature_names_csv() -> String {
    FEATURE_NAMES.join(",")
}

/// Comma-joined knob names, as expected in [`META_KNOBS`].
pub fn knob_names_csv() -> String {
    KNOB_NAMES.join(",")
}

/// Why a model's metadata does not fit this build.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ContractError {
    #[error("model metadata is missing `{0}`")]
    Missing(&'static str),
    #[error("{}", version_message(found))]
    Version { found: String },
    #[error("model {key} differ: expected `{expected}`, found `{found}`")]
    Names {
        key: &'static str,
        expected: String,
        found: String,
    },
}

fn version_message(found: &str) -> String {
    if found.trim() == "1" {
        format!(
            "model speaks policy contract 1 (window features only); this build speaks \
             {CONTRACT_VERSION}, whose input adds the knobs in force, clients, endpoints, time \
             since the last change and the SLO target: retrain or export the model for contract \
             {CONTRACT_VERSION} (the model cards in models/ give the commands)"
        )
    } else {
        format!("model contract version is {found}, this build speaks {CONTRACT_VERSION}")
    }
}

/// Checks a model's metadata (key → value) against this build's schema.
pub fn check_metadata<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<(), ContractError> {
    let version =
        get(META_CONTRACT_VERSION).ok_or(ContractError::Missing(META_CONTRACT_VERSION))?;
    if version.trim() != CONTRACT_VERSION {
        return Err(ContractError::Version {
            found: version.to_string(),
        });
    }
    for (key, expected) in [
        (META_FEATURES, feature_names_csv()),
        (META_KNOBS, knob_names_csv()),
    ] {
        let found = get(key).ok_or(ContractError::Missing(key))?;
        let found_norm: Vec<&str> = found.split(',').map(str::trim).collect();
        if found_norm.join(",") != expected {
            return Err(ContractError::Names {
                key,
                expected,
                found: found.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn good() -> HashMap<&'static str, String> {
        HashMap::from([
            (META_CONTRACT_VERSION, CONTRACT_VERSION.to_string()),
            (META_FEATURES, feature_names_csv()),
            (META_KNOBS, knob_names_csv()),
        ])
    }

    #[test]
    fn accepts_matching_metadata() {
        let m = good();
        assert_eq!(check_metadata(|k| m.get(k).map(String::as_str)), Ok(()));
    }

    #[test]
    fn refuses_wrong_names_and_versions() {
        let mut m = good();
        m.insert(META_FEATURES, "rps,latency".into());
        assert!(matches!(
            check_metadata(|k| m.get(k).map(String::as_str)),
            Err(ContractError::Names { .. })
        ));
        let mut m = good();
        m.insert(META_CONTRACT_VERSION, "9".into());
        assert!(matches!(
            check_metadata(|k| m.get(k).map(String::as_str)),
            Err(ContractError::Version { .. })
        ));
        let mut m = good();
        m.insert(META_CONTRACT_VERSION, "1".into());
        let e = check_metadata(|k| m.get(k).map(String::as_str)).unwrap_err();
        assert!(matches!(e, ContractError::Version { .. }));
        let text = e.to_string();
        assert!(
            text.contains("contract 1")
                && text.contains("knobs in force")
                && text.contains("retrain"),
            "a v1 model is told why: {text}"
        );
        let mut m = good();
        m.remove(META_KNOBS);
        assert_eq!(
            check_metadata(|k| m.get(k).map(String::as_str)),
            Err(ContractError::Missing(META_KNOBS))
        );
    }
}
