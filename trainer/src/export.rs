//! Writing trained networks as model files: `meshtune_policy`'s exporter
//! (`meshtune_policy::onnx::export_mlp`, the only ONNX exporter), checked with the runtime the
//! controller serves (`meshtune_policy::validate`) before an atomic write; and PPO
//! checkpoints back to layers.

use meshtune_policy::onnx::{check_layers, export_mlp, Activation, MlpLayer, ModelMeta};
use meshtune_policy::ModelError;
use std::path::Path;

/// Why a model could not be exported, written, or rebuilt from a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Export(#[from] meshtune_policy::onnx::ExportError),
    #[error("the exported model would be refused by the controller: {0}")]
    Refused(#[from] ModelError),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
}

/// Exports `layers` (contract-shaped, finite), validates the bytes as the controller would
/// (contract, signature, smoke test) and writes them atomically to `path`. Returns the model's
/// size in bytes. Nothing is written when any step fails.
pub fn write_model(
    path: &Path,
    layers: &[MlpLayer],
    meta: &ModelMeta,
) -> Result<usize, ExportError> {
    let bytes = export_mlp(layers, meta)?;
    meshtune_policy::validate(&bytes, &path.display().to_string())?;
    write_atomic(path, &bytes)?;
    Ok(bytes.len())
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

/// Rebuilds the actor network (tanh hidden layers, sigmoid output) from a PPO safetensors
/// checkpoint (`actor.<i>.weight|bias`).
pub fn actor_from_checkpoint(path: &Path) -> Result<Vec<MlpLayer>, ExportError> {
    let err = |message: String| ExportError::Checkpoint {
        path: path.display().to_string(),
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
        layers.push(MlpLayer {
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
    check_layers(&layers).map_err(|e| err(e.to_string()))?;
    Ok(layers)
}
