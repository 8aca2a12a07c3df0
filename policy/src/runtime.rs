//! The policy runtime: loads an ONNX policy once into an optimised tract plan, checks it
//! against the contract (metadata, input/output names and widths), validates its outputs on a
//! fixed smoke input, and runs batched inference (one run scores N destinations).

use std::collections::BTreeMap;
use std::sync::Arc;

use meshtune_core::contract::{
    check_metadata, ContractError, INPUT_NAME, META_MODEL_VERSION, META_PROVENANCE, OUTPUT_NAME,
    OUTPUT_SLACK,
};
use meshtune_core::env::Policy;
use meshtune_core::features::{Context, Features, FEATURE_COUNT, WINDOW_FEATURE_COUNT};
use meshtune_core::knobs::{Knobs, KNOB_COUNT};
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// Prefix under which tract 0.23 exposes ONNX `metadata_props` in `model.properties`.
pub const TRACT_METADATA_PREFIX: &str = "onnx.metadata_props.";

/// Why a model was refused or could not run. Every variant names the model's origin (file path,
/// `configmap ns/name`, `embedded`).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{origin}: cannot read model: {reason}")]
    Read { origin: String, reason: String },
    #[error("{origin}: not an ONNX model (protobuf decode failed: {reason})")]
    Decode { origin: String, reason: String },
    #[error("{origin}: contract mismatch: {source}")]
    Contract {
        origin: String,
        #[source]
        source: ContractError,
    },
    #[error("{origin}: signature mismatch: {reason}")]
    Signature { origin: String, reason: String },
    #[error("{origin}: tract could not load the model: {reason}")]
    Load { origin: String, reason: String },
    #[error("{origin}: inference failed: {reason}")]
    Inference { origin: String, reason: String },
    #[error("{origin}: invalid weights: {reason}")]
    Weights { origin: String, reason: String },
    #[error("{origin}: smoke test failed: {reason}")]
    Output { origin: String, reason: String },
    #[error("no embedded model: models/default.onnx was absent when meshtune-policy was built")]
    NoEmbedded,
}

impl ModelError {
    /// Short, stable label for metrics (`reason` label of `meshtune_model_refused_total`).
    pub fn reason_label(&self) -> &'static str {
        match self {
            ModelError::Read { .. } => "read",
            ModelError::Decode { .. } => "decode",
            ModelError::Contract { .. } => "contract",
            ModelError::Signature { .. } => "signature",
            ModelError::Load { .. } => "load",
            ModelError::Inference { .. } => "inference",
            ModelError::Weights { .. } => "weights",
            ModelError::Output { .. } => "output",
            ModelError::NoEmbedded => "no_embedded",
        }
    }
}

type Plan = Arc<TypedRunnableModel>;

/// A loaded, contract-checked ONNX policy. Cheap to share behind an `Arc`; inference takes
/// `&self` and is safe from several threads at once.
pub struct OnnxPolicy {
    plan: Plan,
    metadata: BTreeMap<String, String>,
    model_version: String,
    origin: String,
    digest: u64,
    size: usize,
}

impl std::fmt::Debug for OnnxPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxPolicy")
            .field("model_version", &self.model_version)
            .field("origin", &self.origin)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// FNV-1a over the model bytes: identifies identical re-deliveries (not a security hash).
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn tensor_width(v: &pb::ValueInfoProto) -> Result<(i32, Vec<Option<i64>>), String> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(format!("`{}` is not a tensor", v.name));
    };
    let dims = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(n)) => Some(n),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((t.elem_type, dims))
}

/// Refuses float initialisers holding NaN or infinity (some tract kernels, e.g. its sigmoid
/// approximation, would hide a NaN instead of propagating it).
fn check_weights(graph: &pb::GraphProto) -> Result<(), String> {
    for t in &graph.initializer {
        if t.data_type != pb::tensor_proto::DataType::Float as i32 {
            continue;
        }
        let from_raw = t
            .raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let bad = from_raw
            .chain(t.float_data.iter().copied())
            .enumerate()
            .find(|(_, v)| !v.is_finite());
        if let Some((i, v)) = bad {
            return Err(format!("initializer `{}` holds {v} at index {i}", t.name));
        }
    }
    Ok(())
}

/// Checks graph input/output names, element types and widths against the contract.
fn check_signature(graph: &pb::GraphProto) -> Result<(), String> {
    let initialisers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initialisers.contains(i.name.as_str()))
        .collect();
    let names = |v: &[&pb::ValueInfoProto]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
    if inputs.len() != 1 || inputs[0].name != INPUT_NAME {
        return Err(format!(
            "expected exactly one input `{INPUT_NAME}`, found {:?}",
            names(&inputs)
        ));
    }
    let outputs: Vec<&pb::ValueInfoProto> = graph.output.iter().collect();
    if outputs.len() != 1 || outputs[0].name != OUTPUT_NAME {
        return Err(format!(
            "expected exactly one output `{OUTPUT_NAME}`, found {:?}",
            names(&outputs)
        ));
    }
    for (v, width) in [(inputs[0], FEATURE_COUNT), (outputs[0], KNOB_COUNT)] {
        let (elem, dims) = tensor_width(v)?;
        if elem != pb::tensor_proto::DataType::Float as i32 {
            return Err(format!("`{}` must be float32 (elem_type {elem})", v.name));
        }
        // An output shape may be left undeclared; tract's inference checks it below.
        if dims.is_empty() && v.name == OUTPUT_NAME {
            continue;
        }
        if dims.len() != 2 || dims[1] != Some(width as i64) {
            return Err(format!(
                "`{}` must be [N, {width}], declared {:?}",
                v.name,
                dims.iter()
                    .map(|d| d.map_or("?".to_string(), |n| n.to_string()))
                    .collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

/// Runs `f`, turning a panic (inside tract) into `Err` with the panic message.
fn guard_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("tract panicked: {msg}")
    })
}

impl OnnxPolicy {
    /// Decodes, checks the contract (metadata, names, widths) and builds an optimised plan with a
    /// symbolic batch dimension. Does not run the smoke test: see [`validate`].
    ///
    /// tract panics on some malformed graphs (e.g. a graph output no node produces: found by
    /// the `model` fuzz target); such a panic is caught and refuses the model as
    /// [`ModelError::Load`], so a bad file or ConfigMap never ends the task that loads it.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<OnnxPolicy, ModelError> {
        guard_panic(|| Self::from_bytes_unguarded(bytes, origin)).unwrap_or_else(|reason| {
            Err(ModelError::Load {
                origin: origin.to_string(),
                reason,
            })
        })
    }

    fn from_bytes_unguarded(bytes: &[u8], origin: &str) -> Result<OnnxPolicy, ModelError> {
        let origin_s = origin.to_string();
        let proto = crate::onnx::decode_model(bytes).map_err(|e| ModelError::Decode {
            origin: origin_s.clone(),
            reason: e.to_string(),
        })?;
        let graph = proto.graph.as_ref().ok_or_else(|| ModelError::Decode {
            origin: origin_s.clone(),
            reason: "model has no graph".into(),
        })?;
        let load = |e: TractError| ModelError::Load {
            origin: origin_s.clone(),
            reason: format!("{e:#}"),
        };
        let inference = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .map_err(load)?;
        // Metadata as tract exposes it (`onnx.metadata_props.<key>`).
        let mut metadata = BTreeMap::new();
        for (k, v) in &inference.properties {
            if let Some(key) = k.strip_prefix(TRACT_METADATA_PREFIX) {
                if let Ok(view) = v.try_as_plain_ram() {
                    if let Ok(s) = view.to_scalar::<String>() {
                        metadata.insert(key.to_string(), s.clone());
                    }
                }
            }
        }
        check_metadata(|k| metadata.get(k).map(String::as_str)).map_err(|source| {
            ModelError::Contract {
                origin: origin_s.clone(),
                source,
            }
        })?;
        check_signature(graph).map_err(|reason| ModelError::Signature {
            origin: origin_s.clone(),
            reason,
        })?;
        check_weights(graph).map_err(|reason| ModelError::Weights {
            origin: origin_s.clone(),
            reason,
        })?;
        let typed = inference.into_optimized().map_err(load)?;
        let out_fact = typed.output_fact(0).map_err(load)?;
        let out_width = out_fact
            .shape
            .get(1)
            .and_then(|d| tract_onnx::tract_hir::internal::DimLike::to_usize(d).ok());
        if out_fact.shape.rank() != 2 || out_width != Some(KNOB_COUNT) {
            return Err(ModelError::Signature {
                origin: origin_s,
                reason: format!(
                    "output `{OUTPUT_NAME}` computes to {:?}, expected [N, {KNOB_COUNT}]",
                    out_fact.shape
                ),
            });
        }
        let plan = typed.into_runnable().map_err(load)?;
        let model_version = metadata
            .get(META_MODEL_VERSION)
            .cloned()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "unversioned".to_string());
        Ok(OnnxPolicy {
            plan,
            metadata,
            model_version,
            origin: origin_s,
            digest: digest(bytes),
            size: bytes.len(),
        })
    }

    /// Reads and loads a model file (see [`OnnxPolicy::from_bytes`]); origin is the path.
    pub fn from_path(path: &std::path::Path) -> Result<OnnxPolicy, ModelError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ModelError::Read {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        OnnxPolicy::from_bytes(&bytes, &origin)
    }

    /// Scores a batch: one normalised feature row per destination → one normalised knob row.
    pub fn infer(
        &self,
        batch: &[[f32; FEATURE_COUNT]],
    ) -> Result<Vec<[f32; KNOB_COUNT]>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let err = |e: TractError| ModelError::Inference {
            origin: self.origin.clone(),
            reason: format!("{e:#}"),
        };
        let flat: Vec<f32> = batch.iter().flatten().copied().collect();
        let input = Tensor::from_shape(&[batch.len(), FEATURE_COUNT], &flat).map_err(err)?;
        let outputs = guard_panic(|| self.plan.run(tvec!(input.into_tvalue())))
            .map_err(|reason| ModelError::Inference {
                origin: self.origin.clone(),
                reason,
            })?
            .map_err(err)?;
        let out = outputs.first().ok_or_else(|| ModelError::Inference {
            origin: self.origin.clone(),
            reason: "model produced no output".into(),
        })?;
        if out.shape() != [batch.len(), KNOB_COUNT] {
            return Err(ModelError::Inference {
                origin: self.origin.clone(),
                reason: format!(
                    "output shape {:?}, expected [{}, {KNOB_COUNT}]",
                    out.shape(),
                    batch.len()
                ),
            });
        }
        let view = out.try_as_plain_ram().map_err(err)?;
        let values = view.as_slice::<f32>().map_err(err)?;
        Ok(values
            .chunks_exact(KNOB_COUNT)
            .map(|c| {
                let mut row = [0f32; KNOB_COUNT];
                row.copy_from_slice(c);
                row
            })
            .collect())
    }

    /// Knobs for raw features (normalise → infer → denormalise and clamp to hard bounds).
    pub fn decide_batch(&self, features: &[Features]) -> Result<Vec<Knobs>, ModelError> {
        let batch: Vec<[f32; FEATURE_COUNT]> = features.iter().map(Features::normalised).collect();
        Ok(self
            .infer(&batch)?
            .iter()
            .map(Knobs::from_normalised)
            .collect())
    }

    /// Runs the smoke input ([`smoke_inputs`]) and refuses NaN/inf or outputs outside
    /// `[-OUTPUT_SLACK, 1 + OUTPUT_SLACK]`.
    pub fn smoke_test(&self) -> Result<(), ModelError> {
        let inputs = smoke_inputs();
        let outputs = self.infer(&inputs)?;
        for (r, row) in outputs.iter().enumerate() {
            for (k, v) in row.iter().enumerate() {
                let name = meshtune_core::knobs::KNOB_NAMES[k];
                if !v.is_finite() {
                    return Err(ModelError::Output {
                        origin: self.origin.clone(),
                        reason: format!("knob `{name}` is {v} on smoke input {r}"),
                    });
                }
                if *v < -OUTPUT_SLACK || *v > 1.0 + OUTPUT_SLACK {
                    return Err(ModelError::Output {
                        origin: self.origin.clone(),
                        reason: format!(
                            "knob `{name}` = {v} on smoke input {r}, outside [{}, {}]",
                            -OUTPUT_SLACK,
                            1.0 + OUTPUT_SLACK
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// `meshtune.model_version` (or `unversioned`).
    pub fn model_version(&self) -> &str {
        &self.model_version
    }

    /// `meshtune.provenance`, if present.
    pub fn provenance(&self) -> Option<&str> {
        self.metadata.get(META_PROVENANCE).map(String::as_str)
    }

    /// All `metadata_props` (key → value).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Where the model came from (path, `configmap ns/name`, `embedded`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// FNV-1a digest of the model bytes ([`digest`]).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Size of the model file in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// Loads a candidate and validates it: contract, signature, then the smoke test.
pub fn validate(bytes: &[u8], origin: &str) -> Result<OnnxPolicy, ModelError> {
    let policy = OnnxPolicy::from_bytes(bytes, origin)?;
    policy.smoke_test()?;
    Ok(policy)
}

/// Reads a file and validates it ([`validate`]).
pub fn validate_path(path: &std::path::Path) -> Result<OnnxPolicy, ModelError> {
    let policy = OnnxPolicy::from_path(path)?;
    policy.smoke_test()?;
    Ok(policy)
}

/// Typical traffic as raw features, named: idle, healthy, overloaded, failing; a destination
/// with Istio defaults in force (never changed), 4 client proxies, 5 endpoints, SLO 250 ms.
pub fn typical_features() -> [(&'static str, Features); 4] {
    let ctx = Context {
        knobs: Knobs::istio_defaults(),
        clients: 4,
        secs_since_change: None,
        slo_target_ms: 250.0,
    };
    let f = |w: [f64; WINDOW_FEATURE_COUNT]| Features::from_parts(w, &ctx, 5);
    // rps, p50, p90, p99, mean, 5xx, 4xx, overflow, timeout, connfail, retry, infl avg, max, h2
    [
        (
            "idle",
            f([
                1.0, 2.0, 3.0, 5.0, 2.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 1.0, 0.0,
            ]),
        ),
        (
            "healthy",
            f([
                200.0, 12.0, 35.0, 90.0, 18.0, 0.002, 0.01, 0.0, 0.0, 0.0, 0.001, 3.0, 12.0, 0.5,
            ]),
        ),
        (
            "overloaded",
            f([
                5_000.0, 180.0, 900.0, 2_500.0, 320.0, 0.12, 0.01, 0.08, 0.03, 0.01, 0.2, 400.0,
                1_200.0, 1.0,
            ]),
        ),
        (
            "failing",
            f([
                50.0, 5_000.0, 20_000.0, 30_000.0, 8_000.0, 0.9, 0.0, 0.0, 0.6, 0.3, 1.0, 60.0,
                80.0, 0.0,
            ]),
        ),
    ]
}

/// The fixed smoke input: all zeros, all ones, all 1.5 (the normalisation's cap), mid values,
/// and normalised typical traffic ([`typical_features`]).
pub fn smoke_inputs() -> Vec<[f32; FEATURE_COUNT]> {
    let mut inputs = vec![
        [0.0; FEATURE_COUNT],
        [1.0; FEATURE_COUNT],
        [1.5; FEATURE_COUNT],
        [0.5; FEATURE_COUNT],
    ];
    inputs.extend(typical_features().iter().map(|(_, f)| f.normalised()));
    inputs
}

/// An [`OnnxPolicy`] as a [`meshtune_core::env::Policy`]. An inference error keeps the knobs in
/// force (logged), so a misbehaving model never produces arbitrary settings.
impl Policy for OnnxPolicy {
    fn name(&self) -> &str {
        &self.model_version
    }

    fn decide(&mut self, features: &Features, in_force: &Knobs) -> Knobs {
        match self.infer(&[features.normalised()]) {
            Ok(rows) => Knobs::from_normalised(&rows[0]),
            Err(e) => {
                tracing::warn!(error = %e, "policy inference failed; keeping knobs in force");
                *in_force
            }
        }
    }
}

/// Loads the model embedded at build time (`models/default.onnx`), validated.
pub fn embedded_default() -> Result<OnnxPolicy, ModelError> {
    match embedded_default_bytes() {
        Some(bytes) => validate(bytes, "embedded models/default.onnx"),
        None => Err(ModelError::NoEmbedded),
    }
}

/// The bytes of `models/default.onnx` as found at build time, if it existed.
pub fn embedded_default_bytes() -> Option<&'static [u8]> {
    include!(concat!(env!("OUT_DIR"), "/embedded_model.rs"))
}
