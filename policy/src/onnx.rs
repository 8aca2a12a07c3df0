//! ONNX export of multi-layer perceptrons (Gemm + activation chains) with the meshtune contract
//! metadata, its inverse ([`read_mlp`]), and a plain-Rust reference forward pass to check
//! exported models against. This is meshtune's only ONNX exporter: the trainer writes
//! `models/*.onnx` through it.
//!
//! The graph has one input [`INPUT_NAME`] (`float32 [N, F]`, `N` symbolic so one run scores a
//! whole batch of destinations) and one output [`OUTPUT_NAME`] (`float32 [N, K]`). Each layer `i`
//! is a `Gemm` node `layer{i}.gemm` (`transB = 1`, initialisers `layer{i}.weight` `[out][in]`
//! row-major and `layer{i}.bias`, both `float_data`) writing `layer{i}.linear`, followed by its
//! activation node (`layer{i}.tanh`, …) writing `layer{i}.act`; the last node writes
//! [`OUTPUT_NAME`]. The bytes are deterministic: the same weights and metadata give the same file
//! (the committed models are checked to re-export byte for byte).

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
/// `producer_name` written into exported models (the trainer is what makes them; the committed
/// models carry this name).
pub const PRODUCER_NAME: &str = "meshtune-trainer";
/// Model-level `doc_string` written into exported models.
pub const MODEL_DOC: &str = "meshtune policy: normalised features -> normalised knobs";

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

    /// The activation an ONNX operator type stands for (inverse of [`Activation::onnx_op`]).
    pub fn from_onnx_op(op: &str) -> Option<Activation> {
        [Activation::Relu, Activation::Tanh, Activation::Sigmoid]
            .into_iter()
            .find(|a| a.onnx_op() == Some(op))
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

/// Checks that the layers chain and their buffers have the declared sizes (what
/// [`export_mlp_raw`] requires; [`export_mlp`] also checks the contract widths and finiteness).
pub fn check_layers(layers: &[MlpLayer]) -> Result<(), ExportError> {
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
        float_data: data.to_vec(),
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
            // alpha and beta keep their default 1.0.
            attribute: vec![pb::AttributeProto {
                name: "transB".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: 1,
                ..Default::default()
            }],
            ..Default::default()
        });
        current = gemm_out;
        if let Some(op) = act {
            let out = if i == last {
                OUTPUT_NAME.to_string()
            } else {
                format!("layer{i}.act")
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
        doc_string: MODEL_DOC.into(),
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

/// Why a model is not laid out as [`export_mlp_raw`] writes MLPs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an exported MLP: {0}")]
pub struct NotAnMlp(pub String);

/// Reads the layers back out of a model laid out as [`export_mlp_raw`] writes it: the inverse of
/// the export (the metadata is in `model.metadata_props`). Exporting the result with the same
/// metadata gives the same bytes, which is how the committed models are checked to be this
/// exporter's output.
pub fn read_mlp(model: &pb::ModelProto) -> Result<Vec<MlpLayer>, NotAnMlp> {
    let err = |m: String| NotAnMlp(m);
    let graph = model.graph.as_ref().ok_or_else(|| err("no graph".into()))?;
    let floats = |name: &str, rank: usize| {
        let t = graph
            .initializer
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| err(format!("no initializer `{name}`")))?;
        let count: i64 = t.dims.iter().product();
        if t.data_type != pb::tensor_proto::DataType::Float as i32
            || t.dims.len() != rank
            || usize::try_from(count).ok() != Some(t.float_data.len())
        {
            return Err(err(format!(
                "initializer `{name}` is not a rank-{rank} float_data tensor"
            )));
        }
        Ok((t.dims.as_slice(), t.float_data.clone()))
    };
    let mut layers = Vec::new();
    let mut current = INPUT_NAME;
    let mut nodes = graph.node.iter().peekable();
    while let Some(gemm) = nodes.next() {
        let trans_b = [("transB", 1)];
        let attrs: Vec<(&str, i64)> = gemm
            .attribute
            .iter()
            .map(|a| (a.name.as_str(), a.i))
            .collect();
        if gemm.op_type != "Gemm"
            || gemm.input.len() != 3
            || gemm.input[0] != current
            || gemm.output.len() != 1
            || attrs != trans_b
        {
            return Err(err(format!(
                "node `{}` is not a Gemm (transB = 1) on `{current}`",
                gemm.name
            )));
        }
        let (w_dims, weight) = floats(&gemm.input[1], 2)?;
        let (_, bias) = floats(&gemm.input[2], 1)?;
        current = &gemm.output[0];
        let activation = match nodes
            .peek()
            .map(|n| (n, Activation::from_onnx_op(&n.op_type)))
        {
            Some((act, Some(activation))) if act.input == [current] && act.output.len() == 1 => {
                current = &act.output[0];
                nodes.next();
                activation
            }
            _ => Activation::Identity,
        };
        layers.push(MlpLayer {
            in_dim: usize::try_from(w_dims[1]).unwrap_or(0),
            out_dim: usize::try_from(w_dims[0]).unwrap_or(0),
            weight,
            bias,
            activation,
        });
    }
    if current != OUTPUT_NAME {
        return Err(err(format!(
            "the last node writes `{current}`, not `{OUTPUT_NAME}`"
        )));
    }
    check_layers(&layers).map_err(|e| err(e.to_string()))?;
    Ok(layers)
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
    fn export_writes_the_documented_layout_and_read_mlp_inverts_it() {
        let layers = vec![
            layer(FEATURE_COUNT, 8, Activation::Tanh),
            layer(8, 6, Activation::Relu),
            layer(6, 5, Activation::Identity),
            layer(5, KNOB_COUNT, Activation::Sigmoid),
        ];
        let meta = ModelMeta {
            model_version: "t-1".into(),
            provenance: "unit test".into(),
        };
        let bytes = export_mlp(&layers, &meta).unwrap();
        let proto = decode_model(&bytes).unwrap();
        let read = read_mlp(&proto).unwrap();
        assert_eq!(read, layers);
        assert_eq!(export_mlp(&read, &meta).unwrap(), bytes);

        let get = |k: &str| {
            proto
                .metadata_props
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.as_str())
        };
        assert_eq!(get(META_MODEL_VERSION), Some("t-1"));
        assert_eq!(meshtune_core::contract::check_metadata(get), Ok(()));
        assert_eq!(proto.producer_name, PRODUCER_NAME);
        assert_eq!(proto.doc_string, MODEL_DOC);
        let g = proto.graph.unwrap();
        let io: Vec<&str> = g
            .input
            .iter()
            .chain(&g.output)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(io, [INPUT_NAME, OUTPUT_NAME]);
        // Node and value names as documented at the top of the module.
        let names: Vec<(&str, &str)> = g
            .node
            .iter()
            .map(|n| (n.name.as_str(), n.output[0].as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("layer0.gemm", "layer0.linear"),
                ("layer0.tanh", "layer0.act"),
                ("layer1.gemm", "layer1.linear"),
                ("layer1.relu", "layer1.act"),
                ("layer2.gemm", "layer2.linear"),
                ("layer3.gemm", "layer3.linear"),
                ("layer3.sigmoid", OUTPUT_NAME),
            ]
        );
    }

    #[test]
    fn read_mlp_refuses_other_layouts() {
        let layers = [
            layer(3, 2, Activation::Relu),
            layer(2, 1, Activation::Identity),
        ];
        let bytes = export_mlp_raw(&layers, &[]).unwrap();
        let proto = decode_model(&bytes).unwrap();
        assert_eq!(read_mlp(&proto).unwrap(), layers);

        let mut alpha = proto.clone();
        alpha.graph.as_mut().unwrap().node[0]
            .attribute
            .push(pb::AttributeProto {
                name: "alpha".into(),
                f: 2.0,
                ..Default::default()
            });
        let e = read_mlp(&alpha).unwrap_err();
        assert!(e.0.contains("layer0.gemm"), "{e}");

        let mut no_bias = proto.clone();
        no_bias.graph.as_mut().unwrap().initializer.pop();
        let e = read_mlp(&no_bias).unwrap_err();
        assert!(e.0.contains("layer1.bias"), "{e}");

        let mut truncated = proto.clone();
        truncated.graph.as_mut().unwrap().node.pop();
        let e = read_mlp(&truncated).unwrap_err();
        assert!(e.0.contains("layer0.act"), "{e}");

        let mut raw = proto;
        let w = &mut raw.graph.as_mut().unwrap().initializer[0];
        w.raw_data = w.float_data.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.float_data.clear();
        assert!(read_mlp(&raw).is_err());
    }
}
