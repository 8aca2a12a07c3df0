//! ONNX export of trained MLPs per the policy contract (`meshtune_core::contract`).
//!
//! The graph is `features [N, F]` → (`Gemm` transB=1 → activation)* → `knobs [N, K]`, opset 13,
//! with the contract's `metadata_props`. Built from `tract_onnx::pb` prost types, so no Python
//! is needed; the file loads in tract and passes `onnx.checker` / onnxruntime.

use crate::mlp::{check_layers, Activation, DenseLayer, MlpError};
use meshtune_core::contract::{
    feature_names_csv, knob_names_csv, CONTRACT_VERSION, INPUT_NAME, META_CONTRACT_VERSION,
    META_FEATURES, META_KNOBS, META_MODEL_VERSION, META_PROVENANCE, OUTPUT_NAME,
};
use meshtune_core::{FEATURE_COUNT, KNOB_COUNT};
use prost::Message;
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// ONNX opset the exported graphs use.
pub const OPSET: i64 = 13;
/// ONNX IR version written into the model.
pub const IR_VERSION: i64 = 8;

/// Why a model could not be exported or read back.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Layers(#[from] MlpError),
    #[error(
        "network maps {input} → {output} values, the contract needs {FEATURE_COUNT} → {KNOB_COUNT}"
    )]
    Contract { input: usize, output: usize },
    #[error("parameter {what} is not finite; refusing to export")]
    NotFinite { what: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("tract could not load or run the model from {origin}: {message}")]
    Tract { origin: String, message: String },
}

/// What the contract's informational metadata says about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// e.g. `ppo-v1`.
    pub model_version: String,
    /// How it was made: command, seed, data.
    pub provenance: String,
}

fn tensor_value_info(name: &str, width: usize) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        Dimension {
                            denotation: String::new(),
                            value: Some(Value::DimParam("N".into())),
                        },
                        Dimension {
                            denotation: String::new(),
                            value: Some(Value::DimValue(width as i64)),
                        },
                    ],
                }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn float_tensor(name: &str, dims: &[usize], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|d| *d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: name.to_string(),
        op_type: op.to_string(),
        attribute: attrs,
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

/// Builds the ONNX model bytes for a policy network.
pub fn export_mlp(layers: &[DenseLayer], info: &ModelInfo) -> Result<Vec<u8>, ExportError> {
    check_layers(layers)?;
    let input = layers[0].in_dim;
    let output = layers[layers.len() - 1].out_dim;
    if input != FEATURE_COUNT || output != KNOB_COUNT {
        return Err(ExportError::Contract { input, output });
    }
    for (i, l) in layers.iter().enumerate() {
        if l.weight.iter().chain(&l.bias).any(|x| !x.is_finite()) {
            return Err(ExportError::NotFinite {
                what: format!("layer {i}"),
            });
        }
    }
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut cur = INPUT_NAME.to_string();
    let n = layers.len();
    for (i, l) in layers.iter().enumerate() {
        let w = format!("layer{i}.weight");
        let b = format!("layer{i}.bias");
        inits.push(float_tensor(&w, &[l.out_dim, l.in_dim], &l.weight));
        inits.push(float_tensor(&b, &[l.out_dim], &l.bias));
        let last = i + 1 == n;
        let gemm_out = if last && l.activation == Activation::Identity {
            OUTPUT_NAME.to_string()
        } else {
            format!("layer{i}.linear")
        };
        nodes.push(node(
            "Gemm",
            &format!("layer{i}.gemm"),
            &[&cur, &w, &b],
            &gemm_out,
            vec![int_attr("transB", 1)],
        ));
        cur = gemm_out;
        let op = match l.activation {
            Activation::Identity => None,
            Activation::Relu => Some("Relu"),
            Activation::Tanh => Some("Tanh"),
            Activation::Sigmoid => Some("Sigmoid"),
        };
        if let Some(op) = op {
            let out = if last {
                OUTPUT_NAME.to_string()
            } else {
                format!("layer{i}.act")
            };
            nodes.push(node(
                op,
                &format!("layer{i}.{}", op.to_lowercase()),
                &[&cur],
                &out,
                vec![],
            ));
            cur = out;
        }
    }
    let meta = [
        (META_CONTRACT_VERSION, CONTRACT_VERSION.to_string()),
        (META_FEATURES, feature_names_csv()),
        (META_KNOBS, knob_names_csv()),
        (META_MODEL_VERSION, info.model_version.clone()),
        (META_PROVENANCE, info.provenance.clone()),
    ];
    let model = pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "meshtune-trainer".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "meshtune policy: normalised features -> normalised knobs".into(),
        graph: Some(pb::GraphProto {
            node: nodes,
            name: "meshtune_policy".into(),
            initializer: inits,
            input: vec![tensor_value_info(INPUT_NAME, FEATURE_COUNT)],
            output: vec![tensor_value_info(OUTPUT_NAME, KNOB_COUNT)],
            ..Default::default()
        }),
        metadata_props: meta
            .into_iter()
            .map(|(k, v)| pb::StringStringEntryProto {
                key: k.to_string(),
                value: v,
            })
            .collect(),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

/// Writes bytes to `path` atomically (temp file + rename), so a reader never sees half a model.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let err = |source| ExportError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
    }
    let tmp = path.with_extension("onnx.tmp");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A model loaded in tract (used for parity checks and evaluation from ONNX files).
pub struct TractModel {
    plan: std::sync::Arc<TypedRunnableModel>,
    /// `metadata_props` as read by tract.
    pub metadata: std::collections::HashMap<String, String>,
}

impl std::fmt::Debug for TractModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractModel")
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl TractModel {
    /// Loads ONNX bytes with a batch dimension of `batch`.
    pub fn load(bytes: &[u8], origin: &str, batch: usize) -> Result<Self, ExportError> {
        let terr = |e: TractError| ExportError::Tract {
            origin: origin.to_string(),
            message: format!("{e:#}"),
        };
        let onnx = tract_onnx::onnx();
        let mut cursor = std::io::Cursor::new(bytes);
        let model = onnx.model_for_read(&mut cursor).map_err(terr)?;
        let mut metadata = std::collections::HashMap::new();
        for (k, v) in model.properties.iter() {
            if let Some(key) = k.strip_prefix("onnx.metadata_props.") {
                if let Ok(view) = v.try_as_plain_ram() {
                    if let Ok(s) = view.to_scalar::<String>() {
                        metadata.insert(key.to_string(), s.clone());
                    }
                }
            }
        }
        let plan = model
            .with_input_fact(0, f32::fact([batch, FEATURE_COUNT]).into())
            .map_err(terr)?
            .into_optimized()
            .map_err(terr)?
            .into_runnable()
            .map_err(terr)?;
        Ok(TractModel { plan, metadata })
    }

    /// Runs a batch (must have the size given to [`TractModel::load`]).
    pub fn run(
        &self,
        rows: &[[f32; FEATURE_COUNT]],
    ) -> Result<Vec<[f32; KNOB_COUNT]>, ExportError> {
        let terr = |e: TractError| ExportError::Tract {
            origin: "run".into(),
            message: format!("{e:#}"),
        };
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let input = tract_ndarray::Array2::from_shape_vec((rows.len(), FEATURE_COUNT), flat)
            .map_err(|e| ExportError::Tract {
                origin: "input".into(),
                message: e.to_string(),
            })?;
        let out = self
            .plan
            .run(tvec!(Tensor::from(input).into()))
            .map_err(terr)?;
        if out[0].shape() != [rows.len(), KNOB_COUNT] {
            return Err(ExportError::Tract {
                origin: "run".into(),
                message: format!(
                    "output shape {:?}, expected [{}, {KNOB_COUNT}]",
                    out[0].shape(),
                    rows.len()
                ),
            });
        }
        let view = out[0].try_as_plain_ram().map_err(terr)?;
        let flat = view.as_slice::<f32>().map_err(terr)?;
        Ok(flat
            .chunks(KNOB_COUNT)
            .map(|c| {
                let mut k = [0f32; KNOB_COUNT];
                k.copy_from_slice(c);
                k
            })
            .collect())
    }
}

/// Rebuilds the actor network (tanh hidden layers, sigmoid output) from a PPO safetensors
/// checkpoint (`actor.<i>.weight|bias`).
pub fn actor_from_checkpoint(path: &Path) -> Result<Vec<DenseLayer>, ExportError> {
    let err = |message: String| ExportError::Tract {
        origin: path.display().to_string(),
        message,
    };
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .map_err(|e| err(e.to_string()))?;
    let mut layers = Vec::new();
    for i in 0.. {
        let (Some(w), Some(b)) = (
            tensors.get(&format!("actor.{i}.weight")),
            tensors.get(&format!("actor.{i}.bias")),
        ) else {
            break;
        };
        let (out_dim, in_dim) = w.dims2().map_err(|e| err(e.to_string()))?;
        layers.push(DenseLayer {
            in_dim,
            out_dim,
            weight: w
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| err(e.to_string()))?,
            bias: b.to_vec1::<f32>().map_err(|e| err(e.to_string()))?,
            activation: Activation::Tanh,
        });
    }
    match layers.last_mut() {
        Some(l) => l.activation = Activation::Sigmoid,
        None => return Err(err("no actor.<i>.weight tensors in checkpoint".into())),
    }
    check_layers(&layers)?;
    Ok(layers)
}
