//! ONNX export of multi-layer perceptrons (Gemm + activation chains) with the meshtune contract
//! metadata, and a plain-Rust reference forward pass to check exported models against.
//!
//! The graph has one input [`INPUT_NAME`] (`float32 [N, F]`, `N` symbolic so one run scores a
//! whole batch of destinations) and one output [`OUTPUT_NAME`] (`float32 [N, K]`). Each layer is
//! a `Gemm` (`transB = 1`, weights `[out][in]` row-major) followed by its activation node.

use meshtune_core::contract::{
    feature_names_csv, knob_names_csv, CONTRACT_VERSION, INPUT_NAME, META_CONTRACT_VERSION,
    META_FEATURES, META_KNOBS, META_MODEL_VERSION, META_PROVENANCE, OUTPUT_NAME,
};
use meshtune_core::features::FEATURE_COUNT;
use meshtune_core::knobs::KNOB_COUNT;
use prost::Message;
use tract_onnx::pb;

/// ONNX IR version written (ONNX 1.13+ readers accept it).
pub const IR_VERSION: i64 = 8;
/// Default-domain opset written (`Gemm`, `Relu`, `Tanh`, `Sigmoid` are stable there).
pub const OPSET_VERSION: i64 = 13;
/// Name of the symbolic batch dimension.
pub const BATCH_DIM: &str = "N";
/// `producer_name` written into exported models.
pub const PRODUCER_NAME: &str = "meshtune";

/// Element-wise activation after a layer's affine map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    Identity,
    Relu,
    Tanh,
    Sigmoid,
}

impl Activation {
    /// ONNX operator type, `None` for identity (no node is emitted).
    pub fn onnx_op(self) -> Option<&'static str> {
        match self {
            Activation::Identity => None,
            Activation::Relu => Some("Relu"),
            Activation::Tanh => Some("Tanh"),
            Activation::Sigmoid => Some("Sigmoid"),
        }
    }

    /// Applies the activation to one value.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }
}

/// One fully connected layer: `y = activation(W x + b)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MlpLayer {
    pub in_dim: usize,
    pub out_dim: usize,
    /// `[out_dim][in_dim]` row-major (Gemm with `transB = 1`).
    pub weight: Vec<f32>,
    /// `[out_dim]`.
    pub bias: Vec<f32>,
    pub activation: Activation,
}

/// Model identity written into `metadata_props`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ModelMeta {
    /// Free-form version, e.g. `ppo-v1` ([`META_MODEL_VERSION`]).
    pub model_version: String,
    /// How the model was made: command, seed, data ([`META_PROVENANCE`]).
    pub provenance: String,
}

/// Why an MLP cannot be exported.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExportError {
    #[error("an MLP needs at least one layer")]
    NoLayers,
    #[error("layer {layer}: weight has {found} values, expected out_dim*in_dim = {expected}")]
    WeightLen {
        layer: usize,
        expected: usize,
        found: usize,
    },
    #[error("layer {layer}: bias has {found} values, expected out_dim = {expected}")]
    BiasLen {
        layer: usize,
        expected: usize,
        found: usize,
    },
    #[error(
        "layer {layer}: in_dim {found} does not match the previous layer's out_dim {expected}"
    )]
    Chain {
        layer: usize,
        expected: usize,
        found: usize,
    },
    #[error("layer {layer}: {what} contains a non-finite value at index {index}")]
    NonFinite {
        layer: usize,
        what: &'static str,
        index: usize,
    },
    #[error("the contract needs {what} = {expected}, the MLP has {found}")]
    ContractShape {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("layer {layer}: zero-sized dimension")]
    ZeroDim { layer: usize },
}

/// Exports an MLP as a contract-conforming policy: input `features` `[N, FEATURE_COUNT]`,
/// output `knobs` `[N, KNOB_COUNT]`, `metadata_props` with feature and knob order, contract
/// version, model version and provenance. Refuses shape mismatches and non-finite weights.
pub fn export_mlp(layers: &[MlpLayer], meta: &ModelMeta) -> Result<Vec<u8>, ExportError> {
    check_layers(layers)?;
    let in_dim = layers[0].in_dim;
    let out_dim = layers[layers.len() - 1].out_dim;
    if in_dim != FEATURE_COUNT {
        return Err(ExportError::ContractShape {
            what: "input width (features)",
            expected: FEATURE_COUNT,
            found: in_dim,
        });
    }
    if out_dim != KNOB_COUNT {
        return Err(ExportError::ContractShape {
            what: "output width (knobs)",
            expected: KNOB_COUNT,
            found: out_dim,
        });
    }
    for (i, l) in layers.iter().enumerate() {
        for (what, values) in [("weight", &l.weight), ("bias", &l.bias)] {
            if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                return Err(ExportError::NonFinite {
                    layer: i,
                    what,
                    index,
                });
            }
        }
    }
    let props = contract_metadata(meta);
    let props: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
    export_mlp_raw(layers, &props)
}

/// The `metadata_props` [`export_mlp`] writes.
pub fn contract_metadata(meta: &ModelMeta) -> Vec<(&'static str, String)> {
    vec![
        (META_CONTRACT_VERSION, CONTRACT_VERSION.to_string()),
        (META_FEATURES, feature_names_csv()),
        (META_KNOBS, knob_names_csv()),
        (META_MODEL_VERSION, meta.model_version.clone()),
        (META_PROVENANCE, meta.provenance.clone()),
    ]
}

/// Exports an MLP with arbitrary widths and exactly the given `metadata_props`, without the
/// contract or finiteness checks of [`export_mlp`] (layer shapes are still checked). For tests
/// and tools that need deliberately non-conforming models.
pub fn export_mlp_raw(
    layers: &[MlpLayer],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>, ExportError> {
    check_layers(layers)?;
    Ok(build_model(layers, metadata).encode_to_vec())
}

fn check_layers(layers: &[MlpLayer]) -> Result<(), ExportError> {
    if layers.is_empty() {
        return Err(ExportError::NoLayers);
    }
    for (i, l) in layers.iter().enumerate() {
        if l.in_dim == 0 || l.out_dim == 0 {
            return Err(ExportError::ZeroDim { layer: i });
        }
        if l.weight.len() != l.in_dim * l.out_dim {
            return Err(ExportError::WeightLen {
                layer: i,
                expected: l.in_dim * l.out_dim,
                found: l.weight.len(),
            });
        }
        if l.bias.len() != l.out_dim {
            return Err(ExportError::BiasLen {
                layer: i,
                expected: l.out_dim,
                found: l.bias.len(),
            });
        }
        if i > 0 && layers[i - 1].out_dim != l.in_dim {
            return Err(ExportError::Chain {
                layer: i,
                expected: layers[i - 1].out_dim,
                found: l.in_dim,
            });
        }
    }
    Ok(())
}

fn float_tensor(name: &str, dims: &[usize], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|d| *d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, width: usize) -> pb::ValueInfoProto {
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
                            value: Some(Value::DimParam(BATCH_DIM.to_string())),
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

fn build_model(layers: &[MlpLayer], metadata: &[(&str, &str)]) -> pb::ModelProto {
    let mut nodes = Vec::new();
    let mut initializers = Vec::new();
    let mut current = INPUT_NAME.to_string();
    let last = layers.len() - 1;
    for (i, l) in layers.iter().enumerate() {
        let w = format!("layer{i}.weight");
        let b = format!("layer{i}.bias");
        initializers.push(float_tensor(&w, &[l.out_dim, l.in_dim], &l.weight));
        initializers.push(float_tensor(&b, &[l.out_dim], &l.bias));
        let act = l.activation.onnx_op();
        let gemm_out = if i == last && act.is_none() {
            OUTPUT_NAME.to_string()
        } else {
            format!("layer{i}.linear")
        };
        nodes.push(pb::NodeProto {
            input: vec![current.clone(), w, b],
            output: vec![gemm_out.clone()],
            name: format!("layer{i}.gemm"),
            op_type: "Gemm".into(),
            attribute: vec![
                pb::AttributeProto {
                    name: "transB".into(),
                    r#type: pb::attribute_proto::AttributeType::Int as i32,
                    i: 1,
                    ..Default::default()
                },
                pb::AttributeProto {
                    name: "alpha".into(),
                    r#type: pb::attribute_proto::AttributeType::Float as i32,
                    f: 1.0,
                    ..Default::default()
                },
                pb::AttributeProto {
                    name: "beta".into(),
                    r#type: pb::attribute_proto::AttributeType::Float as i32,
                    f: 1.0,
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        current = gemm_out;
        if let Some(op) = act {
            let out = if i == last {
                OUTPUT_NAME.to_string()
            } else {
                format!("layer{i}.{}", op.to_lowercase())
            };
            nodes.push(pb::NodeProto {
                input: vec![current.clone()],
                output: vec![out.clone()],
                name: format!("layer{i}.{}", op.to_lowercase()),
                op_type: op.into(),
                ..Default::default()
            });
            current = out;
        }
    }
    pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET_VERSION,
        }],
        producer_name: PRODUCER_NAME.into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(pb::GraphProto {
            node: nodes,
            name: "meshtune_policy".into(),
            initializer: initializers,
            input: vec![value_info(INPUT_NAME, layers[0].in_dim)],
            output: vec![value_info(OUTPUT_NAME, layers[last].out_dim)],
            ..Default::default()
        }),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| pb::StringStringEntryProto {
                key: (*k).to_string(),
                value: (*v).to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Reference forward pass. `x` is a row-major batch `[N, in_dim]` (one row is a batch of 1);
/// returns `[N, out_dim]` row-major. Panics if `x.len()` is not a multiple of the input width
/// or the layers do not chain (a programming error; [`export_mlp`] reports it as an error).
pub fn mlp_forward(layers: &[MlpLayer], x: &[f32]) -> Vec<f32> {
    assert!(!layers.is_empty(), "mlp_forward needs at least one layer");
    let in_dim = layers[0].in_dim;
    assert!(
        x.len() / in_dim * in_dim == x.len(),
        "input length {} is not a multiple of {in_dim}",
        x.len()
    );
    let n = x.len() / in_dim;
    let mut cur = x.to_vec();
    for l in layers {
        assert_eq!(cur.len(), n * l.in_dim, "layers do not chain");
        let mut next = vec![0f32; n * l.out_dim];
        for r in 0..n {
            let row = &cur[r * l.in_dim..(r + 1) * l.in_dim];
            for o in 0..l.out_dim {
                let w = &l.weight[o * l.in_dim..(o + 1) * l.in_dim];
                let dot: f32 = w.iter().zip(row).map(|(a, b)| a * b).sum();
                next[r * l.out_dim + o] = l.activation.apply(dot + l.bias[o]);
            }
        }
        cur = next;
    }
    cur
}

/// Decodes an ONNX file's protobuf (no tract involved): for inspection and signature checks.
pub fn decode_model(bytes: &[u8]) -> Result<pb::ModelProto, prost::DecodeError> {
    pb::ModelProto::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(i: usize, o: usize, act: Activation) -> MlpLayer {
        MlpLayer {
            in_dim: i,
            out_dim: o,
            weight: (0..i * o).map(|k| (k as f32 * 0.37).sin() * 0.3).collect(),
            bias: (0..o).map(|k| k as f32 * 0.01).collect(),
            activation: act,
        }
    }

    #[test]
    fn forward_matches_hand_computation() {
        let l = MlpLayer {
            in_dim: 2,
            out_dim: 2,
            weight: vec![1.0, 2.0, -1.0, 0.5],
            bias: vec![0.5, -10.0],
            activation: Activation::Relu,
        };
        // batch of two rows
        let y = mlp_forward(&[l], &[1.0, 1.0, 2.0, 0.0]);
        assert_eq!(y, vec![3.5, 0.0, 2.5, 0.0]);
    }

    #[test]
    fn export_refuses_bad_shapes_and_values() {
        assert_eq!(
            export_mlp(&[], &ModelMeta::default()),
            Err(ExportError::NoLayers)
        );
        let mut l = layer(FEATURE_COUNT, KNOB_COUNT, Activation::Sigmoid);
        l.weight.pop();
        assert!(matches!(
            export_mlp(&[l], &ModelMeta::default()),
            Err(ExportError::WeightLen { layer: 0, .. })
        ));
        let l = layer(FEATURE_COUNT + 1, KNOB_COUNT, Activation::Sigmoid);
        assert!(matches!(
            export_mlp(&[l], &ModelMeta::default()),
            Err(ExportError::ContractShape { .. })
        ));
        let a = layer(FEATURE_COUNT, 8, Activation::Tanh);
        let b = layer(7, KNOB_COUNT, Activation::Sigmoid);
        assert!(matches!(
            export_mlp(&[a, b], &ModelMeta::default()),
            Err(ExportError::Chain { layer: 1, .. })
        ));
        let mut l = layer(FEATURE_COUNT, KNOB_COUNT, Activation::Sigmoid);
        l.bias[3] = f32::NAN;
        assert_eq!(
            export_mlp(&[l], &ModelMeta::default()),
            Err(ExportError::NonFinite {
                layer: 0,
                what: "bias",
                index: 3
            })
        );
    }

    #[test]
    fn exported_proto_has_contract_signature_and_metadata() {
        let layers = [
            layer(FEATURE_COUNT, 16, Activation::Relu),
            layer(16, KNOB_COUNT, Activation::Identity),
        ];
        let meta = ModelMeta {
            model_version: "t-1".into(),
            provenance: "unit test".into(),
        };
        let bytes = export_mlp(&layers, &meta).unwrap();
        let proto = decode_model(&bytes).unwrap();
        let g = proto.graph.unwrap();
        assert_eq!(g.input.len(), 1);
        assert_eq!(g.input[0].name, INPUT_NAME);
        assert_eq!(g.output[0].name, OUTPUT_NAME);
        assert_eq!(g.node.len(), 3); // gemm, relu, gemm
        assert_eq!(g.node.last().unwrap().output[0], OUTPUT_NAME);
        let get = |k: &str| {
            proto
                .metadata_props
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.as_str())
        };
        assert_eq!(get(META_MODEL_VERSION), Some("t-1"));
        assert_eq!(meshtune_core::contract::check_metadata(get), Ok(()));
    }
}
