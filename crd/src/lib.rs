//! meshtune-crd: the `MeshtunePolicy` custom resource (`meshtune.io/v1alpha1`), defined once in
//! Rust — spec, status, the generated CRD YAML — its pure resolution into the
//! [`EffectivePolicy`] the controller acts on, and `meshtune status -n NS`.
//!
//! - [`types`]: the resource (`MeshtunePolicy`, `MeshtunePolicySpec`, `MeshtunePolicyStatus`)
//!   and [`recommendation_id`].
//! - [`resolve`]: defaults (`DEFAULT_*`) and validation ([`PolicyError`] names the field).
//! - [`crd_yaml`]: the CRD as committed in `manifests/base/meshtunepolicy-crd.yaml`.
//! - [`cli`]: `meshtune status -n NS` and `meshtune approve` through the Kubernetes API.
#![forbid(unsafe_code)]

pub mod cli;
pub mod resolve;
pub mod types;

pub use resolve::{resolve, EffectivePolicy, PolicyError, SloTarget};
pub use types::{
    recommendation_id, Applied, Approval, Bound, CoManage, Condition, ExpectedEffect,
    MeshtunePolicy, MeshtunePolicySpec, MeshtunePolicyStatus, Mode, PerKnob, Recommendation, Slo,
};

use kube::CustomResourceExt;

/// Where the generated CRD is committed, relative to the workspace root.
pub const CRD_MANIFEST_PATH: &str = "manifests/base/meshtunepolicy-crd.yaml";

/// The `CustomResourceDefinition` of `MeshtunePolicy` as YAML (what `meshtune crd` prints and
/// [`CRD_MANIFEST_PATH`] holds).
pub fn crd_yaml() -> String {
    let yaml = serde_yaml::to_string(&MeshtunePolicy::crd())
        .expect("a CustomResourceDefinition serialises to YAML");
    format!(
        "# Generated from crd/src/types.rs by `meshtune crd`; do not edit.\n\
         # Regenerate: cargo run -p meshtune -- crd > {CRD_MANIFEST_PATH}\n{yaml}"
    )
}
