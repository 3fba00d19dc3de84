//! Graph convolution over a symmetrically normalised adjacency, and the GloRe (global reasoning) pieces of
//! DRKD's pixel-wise relation module ([`glore`]), forward and backward, on the CPU and CUDA
//! (shared/spec/methods.md §3 and §6.4).
//!
//! # Normalised adjacency
//!
//! For `A` `[m, m]` (or a batch `[B, m, m]`): `Ã = A + I`, `d_i = Σ_j Ã_ij`, `s_i = d_i^-½`,
//! `Â_ij = s_i Ã_ij s_j` ([`normalized_adjacency`]). Every degree must be `> 0` and `A` finite; otherwise
//! the op returns an error naming the batch entry and row (on the CPU, the non-finite element itself).
//!
//! **Backward** ([`normalized_adjacency_backward`]), with `G = ∂L/∂Â`. `Â_pq` depends on `Ã_pq` directly and,
//! through `s_p = d_p^-½` with `∂s_p/∂Ã_pq = −½ s_p³` for every `q`, on the whole row `p` of `Ã`; `s_p`
//! enters row `p` and column `p` of `Â`, so `∂L/∂s_p = Σ_k (G_pk Ã_pk + G_kp Ã_kp) s_k`. Hence
//!
//! ```text
//! dA_pq = G_pq s_p s_q − ½ s_p³ Σ_k (G_pk Ã_pk + G_kp Ã_kp) s_k
//!       = G_pq s_p s_q − ½ s_p² (r_p + c_p),   r_p = Σ_k G_pk Â_pk,   c_p = Σ_k G_kp Â_kp
//! ```
//!
//! (`dA = dÃ`; the second term is constant along row `p`). This is spec §6.4's formula, with `s_k` inside
//! the sum; it does not assume `A` symmetric (the gradchecks use asymmetric `A`) and counts the diagonal
//! twice (`Â_pp` holds `s_p²`), which both sums do.
//!
//! # Graph convolution
//!
//! `Y = Â X W + b` ([`graph_conv`]) with `X` `[m, Din]` (`[B, m, Din]` with a batched `A`), `W` `[Din, Dout]`
//! shared by the batch and an optional bias `b` `[Dout]`; computed as `Â (X W) + b`. Backward
//! ([`graph_conv_backward`]), with `P = X W` (saved) and `G = ∂L/∂Y`:
//!
//! ```text
//! dP = Âᵀ G,   dX = dP Wᵀ,   dW = Σ_batch Xᵀ dP (= (ÂX)ᵀ G),   db = Σ_rows G,
//! dÂ = G Pᵀ  → dA by the formula above, when A is data-dependent (`adjacency_grad = true`).
//! ```
//!
//! Differentiable inputs: `x`, `weight`, `bias` and (optionally) `adjacency`.
//!
//! # Numerics
//!
//! Every product is [`crate::ops::matmul`]; the kernels in kernels/graph_conv.cu do the degrees, the
//! normalisation, the adjacency gradient, bias and ReLU parts. Storage may be f32, f16 or bf16 (and f64 on the
//! CPU); half inputs are widened to f32, every intermediate is kept in f32 (f64 for f64), and each output is
//! rounded to the storage dtype once. All sums run in a fixed order: results are deterministic on both
//! devices. Empty problems (`m = 0` or `B = 0`) return empty/zero results without a launch.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod glore;
mod prims;

pub use glore::{
    glore_node_conv, glore_node_conv_backward, glore_project, glore_project_backward,
    glore_reproject, glore_reproject_backward, NodeConvGrads, NodeConvInputs,
};

use super::matmul::matmul;
use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};
use prims::{compute_dtype, widen, Widened};

/// The result of [`normalized_adjacency`].
#[derive(Debug)]
pub struct NormalizedAdjacency {
    /// `Â = D^-½ (A + I) D^-½`, shaped like `A`, in `A`'s dtype and on its device.
    pub a_hat: Tensor,
    /// `s = d^-½`, `[m]` (`[B, m]` for a batched `A`), in the compute dtype: f64 for an f64 `A`, f32 for
    /// every other storage dtype. What [`normalized_adjacency_backward`] needs.
    pub inv_sqrt_degree: Tensor,
}

/// `Â = D^-½ (A + I) D^-½` for `adjacency` `[m, m]` or `[B, m, m]` (see the module docs). Errors when `A` holds
/// a non-finite value or a degree `1 + Σ_j A_ij` is not `> 0`.
pub fn normalized_adjacency(adjacency: &Tensor) -> Result<NormalizedAdjacency> {
    let dims = adjacency_dims(adjacency)?;
    let (a_hat, inv_sqrt_degree) = normalize_checked(adjacency, &dims)?;
    Ok(NormalizedAdjacency {
        a_hat: prims::narrow(a_hat, adjacency.dtype())?,
        inv_sqrt_degree,
    })
}

/// Gradient of [`normalized_adjacency`] with respect to `adjacency`, given `grad_a_hat = ∂L/∂Â` (shaped like
/// `adjacency`, same dtype and device) and the forward's `inv_sqrt_degree`. Returns `dA` shaped like
/// `adjacency`, in its dtype.
pub fn normalized_adjacency_backward(
    adjacency: &Tensor,
    inv_sqrt_degree: &Tensor,
    grad_a_hat: &Tensor,
) -> Result<Tensor> {
    let dims = adjacency_dims(adjacency)?;
    let dtype = same_float(&[("adjacency", adjacency), ("grad_a_hat", grad_a_hat)])?.1;
    validate::shape(grad_a_hat, "grad_a_hat", adjacency.shape())?;
    check_saved(
        inv_sqrt_degree,
        "inv_sqrt_degree",
        &dims.vector_shape(dims.m),
        adjacency,
    )?;
    if adjacency.numel() == 0 {
        return Tensor::zeros(adjacency.shape(), dtype, &adjacency.device());
    }
    let g = widen(grad_a_hat)?;
    prims::adjacency_grad(&g, adjacency, inv_sqrt_degree, dims.m)
}

/// The inputs of a graph convolution `Y = Â X W + b`.
#[derive(Clone, Copy, Debug)]
pub struct GraphConvInputs<'a> {
    /// `A`, `[m, m]` or `[B, m, m]`: the raw adjacency, normalised inside the op.
    pub adjacency: &'a Tensor,
    /// `X`, `[m, Din]` (`[B, m, Din]` with a batched adjacency).
    pub x: &'a Tensor,
    /// `W`, `[Din, Dout]`, shared by every batch entry.
    pub weight: &'a Tensor,
    /// `b`, `[Dout]`, or none.
    pub bias: Option<&'a Tensor>,
}

/// What [`graph_conv_backward`] needs from the forward, in the compute dtype (f64 for f64 inputs, else f32).
#[derive(Debug)]
pub struct GraphConvSaved {
    /// `Â`, shaped like the adjacency.
    pub a_hat: Tensor,
    /// `s = d^-½`, `[m]` or `[B, m]`.
    pub inv_sqrt_degree: Tensor,
    /// `P = X W`, `[m, Dout]` or `[B, m, Dout]`.
    pub xw: Tensor,
}

/// The result of [`graph_conv`].
#[derive(Debug)]
pub struct GraphConvOutput {
    /// `Y = Â X W + b`, `[m, Dout]` or `[B, m, Dout]`, in the inputs' dtype.
    pub output: Tensor,
    /// What [`graph_conv_backward`] needs from the forward.
    pub saved: GraphConvSaved,
}

/// The gradients of [`graph_conv_backward`], each in the inputs' dtype and shaped like its input.
#[derive(Debug)]
pub struct GraphConvGrads {
    /// d loss / d `X`.
    pub x: Tensor,
    /// d loss / d `W`, `[Din, Dout]`.
    pub weight: Tensor,
    /// Present iff the forward had a bias.
    pub bias: Option<Tensor>,
    /// Present iff requested (`adjacency_grad = true`).
    pub adjacency: Option<Tensor>,
}

/// `Y = D^-½ (A + I) D^-½ X W + b` (see the module docs). All inputs share one float dtype and device; the
/// adjacency must be finite with degrees `> 0`.
pub fn graph_conv(inputs: &GraphConvInputs<'_>) -> Result<GraphConvOutput> {
    let dims = conv_dims(inputs)?;
    let device = inputs.x.device();
    let dtype = inputs.x.dtype();
    let compute = compute_dtype(dtype);
    let (a_hat, inv_sqrt_degree) = normalize_checked(inputs.adjacency, &dims.adjacency)?;
    if dims.adjacency.batch * dims.adjacency.m == 0 {
        let out_shape = dims.rows_shape(dims.dout);
        return Ok(GraphConvOutput {
            output: Tensor::zeros(&out_shape, dtype, &device)?,
            saved: GraphConvSaved {
                a_hat,
                inv_sqrt_degree,
                xw: Tensor::zeros(&out_shape, compute, &device)?,
            },
        });
    }
    let x = widen(inputs.x)?;
    let weight = shared_operand(inputs.weight, &dims)?;
    let xw = matmul(&x, &weight, false, false)?;
    let y = matmul(&a_hat, &xw, false, false)?;
    let output = prims::bias_rows(y, inputs.bias, dtype)?;
    Ok(GraphConvOutput {
        output,
        saved: GraphConvSaved {
            a_hat,
            inv_sqrt_degree,
            xw,
        },
    })
}

/// Gradients of [`graph_conv`] given `grad_output = ∂L/∂Y` (shaped like `Y`, same dtype and device) and the
/// forward's `saved` context. `adjacency_grad` asks for `∂L/∂A` (when `A` depends on data, e.g. a similarity
/// graph); a fixed graph skips that work.
pub fn graph_conv_backward(
    inputs: &GraphConvInputs<'_>,
    saved: &GraphConvSaved,
    grad_output: &Tensor,
    adjacency_grad: bool,
) -> Result<GraphConvGrads> {
    let dims = conv_dims(inputs)?;
    let device = inputs.x.device();
    let dtype = inputs.x.dtype();
    same_float(&[("x", inputs.x), ("grad_output", grad_output)])?;
    validate::shape(grad_output, "grad_output", &dims.rows_shape(dims.dout))?;
    let adj = &dims.adjacency;
    check_saved(
        &saved.a_hat,
        "saved.a_hat",
        inputs.adjacency.shape(),
        inputs.x,
    )?;
    check_saved(
        &saved.inv_sqrt_degree,
        "saved.inv_sqrt_degree",
        &adj.vector_shape(adj.m),
        inputs.x,
    )?;
    check_saved(&saved.xw, "saved.xw", &dims.rows_shape(dims.dout), inputs.x)?;

    let zeros = |shape: &[usize]| Tensor::zeros(shape, dtype, &device);
    if adj.batch * adj.m == 0 {
        return Ok(GraphConvGrads {
            x: zeros(inputs.x.shape())?,
            weight: zeros(inputs.weight.shape())?,
            bias: inputs.bias.map(|b| zeros(b.shape())).transpose()?,
            adjacency: adjacency_grad
                .then(|| zeros(inputs.adjacency.shape()))
                .transpose()?,
        });
    }
    let g = widen(grad_output)?;
    let dp = matmul(&saved.a_hat, &g, true, false)?;
    let weight = shared_operand(inputs.weight, &dims)?;
    let grad_x = prims::narrow(matmul(&dp, &weight, false, true)?, dtype)?;
    let x = widen(inputs.x)?;
    let xt_dp = matmul(&x, &dp, true, false)?;
    let grad_weight = if adj.batched {
        // Σ over the batch of the per-entry [Din, Dout] products.
        prims::col_sums(
            &xt_dp,
            (1, adj.batch, dims.din * dims.dout),
            inputs.weight.shape(),
            dtype,
        )?
    } else {
        prims::narrow(xt_dp, dtype)?
    };
    let grad_bias = match inputs.bias {
        Some(b) => Some(prims::col_sums(
            &g,
            (1, adj.batch * adj.m, dims.dout),
            b.shape(),
            dtype,
        )?),
        None => None,
    };
    let grad_adjacency = if adjacency_grad {
        let grad_a_hat = matmul(&g, &saved.xw, false, true)?;
        Some(prims::adjacency_grad(
            &grad_a_hat,
            inputs.adjacency,
            &saved.inv_sqrt_degree,
            adj.m,
        )?)
    } else {
        None
    };
    Ok(GraphConvGrads {
        x: grad_x,
        weight: grad_weight,
        bias: grad_bias,
        adjacency: grad_adjacency,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Validation and shared steps

/// Extents of a (possibly batched) square adjacency.
#[derive(Clone, Copy, Debug)]
struct AdjacencyDims {
    batch: usize,
    m: usize,
    batched: bool,
}

impl AdjacencyDims {
    /// `[n]` or `[B, n]`.
    fn vector_shape(&self, n: usize) -> Vec<usize> {
        if self.batched {
            vec![self.batch, n]
        } else {
            vec![n]
        }
    }

    /// `[m, cols]` or `[B, m, cols]`.
    fn rows_shape(&self, cols: usize) -> Vec<usize> {
        if self.batched {
            vec![self.batch, self.m, cols]
        } else {
            vec![self.m, cols]
        }
    }
}

/// The largest batch a batched product accepts (one CUDA grid dimension).
const MAX_BATCH: usize = u16::MAX as usize;

fn adjacency_dims(a: &Tensor) -> Result<AdjacencyDims> {
    validate::float(a, "adjacency")?;
    let s = a.shape();
    let (batch, m, batched) = match *s {
        [m, n] if m == n => (1, m, false),
        [b, m, n] if m == n => (b, m, true),
        _ => {
            return Err(Error::shape(
                "adjacency",
                "a square matrix [m, m] or a batch of them [B, m, m]",
                s,
            ))
        }
    };
    validate::fits_i32(m, "adjacency", "m")?;
    if batch > MAX_BATCH {
        return Err(Error::invalid(
            "adjacency",
            format!("batch {batch} exceeds {MAX_BATCH}"),
        ));
    }
    Ok(AdjacencyDims { batch, m, batched })
}

/// All tensors float, of one dtype, on one device.
fn same_float(tensors: &[(&str, &Tensor)]) -> Result<(Device, DType)> {
    let device = validate::same_device(tensors)?;
    let dtype = validate::same_dtype(tensors)?;
    validate::float(tensors[0].1, tensors[0].0)?;
    Ok((device, dtype))
}

/// A saved tensor must have `shape`, the compute dtype of `like`'s dtype and `like`'s device.
fn check_saved(t: &Tensor, arg: &str, shape: &[usize], like: &Tensor) -> Result<()> {
    validate::shape(t, arg, shape)?;
    validate::dtype(t, arg, compute_dtype(like.dtype()))?;
    if t.device() != like.device() {
        return Err(Error::Device {
            arg: arg.into(),
            expected: like.device().to_string(),
            got: t.device().to_string(),
        });
    }
    Ok(())
}

/// `(Â, s)` in the compute dtype, after checking that `A` is finite and every degree is `> 0`.
fn normalize_checked(a: &Tensor, dims: &AdjacencyDims) -> Result<(Tensor, Tensor)> {
    let s_shape = dims.vector_shape(dims.m);
    let compute = compute_dtype(a.dtype());
    let device = a.device();
    if dims.batch * dims.m == 0 {
        return Ok((
            Tensor::zeros(a.shape(), compute, &device)?,
            Tensor::zeros(&s_shape, compute, &device)?,
        ));
    }
    let at = |b: usize, p: usize| {
        if dims.batched {
            format!("batch {b}, row {p}")
        } else {
            format!("row {p}")
        }
    };
    if device.is_cpu() {
        if let Some((b, p, q, v)) = prims::first_non_finite(a, dims.m)? {
            return Err(Error::invalid(
                "adjacency",
                format!("values must be finite, got {v} at {}, column {q}", at(b, p)),
            ));
        }
    }
    let (degrees, inv_sqrt) = prims::degrees(a, dims.m, &s_shape)?;
    for (r, &d) in degrees.iter().enumerate() {
        let (b, p) = (r / dims.m, r % dims.m);
        if !d.is_finite() {
            return Err(Error::invalid(
                "adjacency",
                format!(
                    "values must be finite: the degree of {} is {d} (a non-finite entry, or a row sum \
                     beyond the f32 range)",
                    at(b, p)
                ),
            ));
        }
        if d <= 0.0 {
            return Err(Error::invalid(
                "adjacency",
                format!(
                    "every degree 1 + Σ_j A_ij must be > 0, got {d} at {}",
                    at(b, p)
                ),
            ));
        }
    }
    let a_hat = prims::normalize(a, &inv_sqrt, dims.m)?;
    Ok((a_hat, inv_sqrt))
}

/// Extents of a graph convolution.
#[derive(Clone, Copy, Debug)]
struct ConvDims {
    adjacency: AdjacencyDims,
    din: usize,
    dout: usize,
}

impl ConvDims {
    fn rows_shape(&self, cols: usize) -> Vec<usize> {
        self.adjacency.rows_shape(cols)
    }
}

fn conv_dims(inputs: &GraphConvInputs<'_>) -> Result<ConvDims> {
    let mut named = vec![
        ("adjacency", inputs.adjacency),
        ("x", inputs.x),
        ("weight", inputs.weight),
    ];
    if let Some(b) = inputs.bias {
        named.push(("bias", b));
    }
    same_float(&named)?;
    let adjacency = adjacency_dims(inputs.adjacency)?;
    let m = adjacency.m;
    let x = inputs.x.shape();
    let x_ok = x.len() == inputs.adjacency.rank()
        && x[x.len() - 2] == m
        && (!adjacency.batched || x[0] == adjacency.batch);
    if !x_ok {
        let expected = if adjacency.batched {
            format!(
                "[{}, {m}, Din] to match adjacency {:?}",
                adjacency.batch,
                inputs.adjacency.shape()
            )
        } else {
            format!(
                "[{m}, Din] to match adjacency {:?}",
                inputs.adjacency.shape()
            )
        };
        return Err(Error::shape("x", expected, x));
    }
    let din = x[x.len() - 1];
    let w = inputs.weight.shape();
    if w.len() != 2 || w[0] != din {
        return Err(Error::shape(
            "weight",
            format!("[{din}, Dout] (Din = {din} from x)"),
            w,
        ));
    }
    let dout = w[1];
    if let Some(b) = inputs.bias {
        validate::shape(b, "bias", &[dout])?;
    }
    validate::fits_i32(din, "x", "Din")?;
    validate::fits_i32(dout, "weight", "Dout")?;
    Ok(ConvDims {
        adjacency,
        din,
        dout,
    })
}

/// The shared weight in the compute dtype, repeated over the batch for a batched product.
fn shared_operand<'a>(weight: &'a Tensor, dims: &ConvDims) -> Result<Widened<'a>> {
    let w = widen(weight)?;
    if dims.adjacency.batched {
        Ok(Widened::Owned(prims::tile_batch(&w, dims.adjacency.batch)?))
    } else {
        Ok(w)
    }
}

#[cfg(test)]
mod tests;
