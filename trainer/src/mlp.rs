//! Trainable candle multi-layer perceptrons. [`Mlp::to_layers`] copies a network out as
//! `meshtune_policy::onnx::MlpLayer`s: what the policy crate's exporter writes to ONNX and
//! its `mlp_forward` runs in plain Rust.
//!
//! Weights are stored `[out][in]` row-major (ONNX `Gemm` with `transB=1`), so a trained
//! network exports without transposition. All initialisation draws from the caller's seeded
//! rng (candle's CPU device cannot be seeded), which makes training reproducible.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use meshtune_policy::onnx::{Activation, MlpLayer};
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

/// Why a network could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum MlpError {
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("an MLP needs at least an input and an output size, got {0:?}")]
    Sizes(Vec<usize>),
    #[error("layer {layer}: {what}")]
    Shape { layer: usize, what: String },
}

/// Applies a layer's non-linearity to a candle tensor (the scalar version is
/// [`Activation::apply`], used by the exporter's reference forward pass).
fn activate(act: Activation, x: &Tensor) -> candle_core::Result<Tensor> {
    match act {
        Activation::Identity => Ok(x.clone()),
        Activation::Relu => x.relu(),
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => candle_nn::ops::sigmoid(x),
    }
}

/// One trainable dense layer.
#[derive(Debug)]
struct Dense {
    w: Var,
    b: Var,
    act: Activation,
}

/// A trainable MLP whose variables live in a [`VarMap`] (for checkpoints and optimisers).
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<Dense>,
}

impl Mlp {
    /// Builds `sizes[0] → sizes[1] → … → sizes[n]` with `hidden` between layers and `output`
    /// last. Weights ~ N(0, gain²/in) (gain √2 for ReLU, 1 otherwise), the last layer scaled by
    /// `out_gain`; biases zero. Variables are registered as `<prefix>.<i>.weight|bias`.
    pub fn new(
        varmap: &VarMap,
        prefix: &str,
        sizes: &[usize],
        hidden: Activation,
        output: Activation,
        out_gain: f64,
        rng: &mut StdRng,
    ) -> Result<Self, MlpError> {
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(MlpError::Sizes(sizes.to_vec()));
        }
        let n = sizes.len() - 1;
        let mut layers = Vec::with_capacity(n);
        for i in 0..n {
            let (fan_in, fan_out) = (sizes[i], sizes[i + 1]);
            let last = i + 1 == n;
            let gain = if last {
                out_gain
            } else if hidden == Activation::Relu {
                std::f64::consts::SQRT_2
            } else {
                1.0
            };
            let normal =
                Normal::new(0.0, gain / (fan_in as f64).sqrt()).map_err(|e| MlpError::Shape {
                    layer: i,
                    what: e.to_string(),
                })?;
            let w: Vec<f32> = (0..fan_in * fan_out)
                .map(|_| normal.sample(rng) as f32)
                .collect();
            let w = Var::from_tensor(&Tensor::from_vec(w, (fan_out, fan_in), &Device::Cpu)?)?;
            let b = Var::zeros(fan_out, DType::F32, &Device::Cpu)?;
            {
                let mut data = varmap.data().lock().expect("varmap lock");
                data.insert(format!("{prefix}.{i}.weight"), w.clone());
                data.insert(format!("{prefix}.{i}.bias"), b.clone());
            }
            layers.push(Dense {
                w,
                b,
                act: if last { output } else { hidden },
            });
        }
        Ok(Mlp { layers })
    }

    /// Forward pass of a `[batch, in]` tensor.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut cur = x.clone();
        for l in &self.layers {
            let y = cur
                .matmul(&l.w.as_tensor().t()?)?
                .broadcast_add(l.b.as_tensor())?;
            cur = activate(l.act, &y)?;
        }
        Ok(cur)
    }

    /// The trainable variables, in layer order.
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|l| [l.w.clone(), l.b.clone()])
            .collect()
    }

    /// Copies the current values out of candle.
    pub fn to_layers(&self) -> Result<Vec<MlpLayer>, MlpError> {
        self.layers
            .iter()
            .map(|l| {
                let (out_dim, in_dim) = l.w.as_tensor().dims2()?;
                Ok(MlpLayer {
                    in_dim,
                    out_dim,
                    weight: l.w.as_tensor().flatten_all()?.to_vec1::<f32>()?,
                    bias: l.b.as_tensor().to_vec1::<f32>()?,
                    activation: l.act,
                })
            })
            .collect()
    }

    /// True when every parameter is finite.
    pub fn is_finite(&self) -> Result<bool, MlpError> {
        for v in self.vars() {
            let s = v.as_tensor().abs()?.sum_all()?.to_scalar::<f32>()?;
            if !s.is_finite() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Runs `rows` through a candle network and returns plain rows.
pub fn forward_rows(mlp: &Mlp, rows: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, MlpError> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let width = rows[0].len();
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    let x = Tensor::from_vec(flat, (rows.len(), width), &Device::Cpu)?;
    Ok(mlp.forward(&x)?.to_vec2::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_policy::onnx::{check_layers, mlp_forward};
    use rand::SeedableRng;

    #[test]
    fn candle_and_plain_forward_agree() {
        let vm = VarMap::new();
        let mut rng = StdRng::seed_from_u64(3);
        let mlp = Mlp::new(
            &vm,
            "p",
            &[4, 8, 3],
            Activation::Tanh,
            Activation::Sigmoid,
            1.0,
            &mut rng,
        )
        .unwrap();
        let rows = vec![vec![0.1, -0.4, 0.9, 2.0], vec![0.0; 4]];
        let got = forward_rows(&mlp, &rows).unwrap();
        let layers = mlp.to_layers().unwrap();
        check_layers(&layers).unwrap();
        let plain = mlp_forward(&layers, &rows.concat());
        assert_eq!(plain.len(), 2 * 3);
        for (a, b) in plain.iter().zip(got.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            assert!((0.0..=1.0).contains(a));
        }
        assert_eq!(vm.all_vars().len(), 4);
    }

    #[test]
    fn same_seed_same_weights() {
        let build = |seed| {
            let vm = VarMap::new();
            let mut rng = StdRng::seed_from_u64(seed);
            Mlp::new(
                &vm,
                "p",
                &[3, 5, 2],
                Activation::Relu,
                Activation::Identity,
                1.0,
                &mut rng,
            )
            .unwrap()
            .to_layers()
            .unwrap()
        };
        assert_eq!(build(7), build(7));
        assert_ne!(build(7), build(8));
    }
}
