//! The GloRe (global reasoning) unit pieces of DRKD's pixel-wise relation module (shared/spec/methods.md §3),
//! batched over images. Per image `X ∈ R^{C×L}` (`L = H·W`) the caller computes the 1×1 convolutions
//! `V = W_s X + b_s` `[S, L]` and `Bp = W_p X + b_p` `[N, L]`; this module does the graph part:
//!
//! - **projection** ([`glore_project`]): `Z = V Bpᵀ` `[S, N]` — **no** `1/L` normalisation (as in the
//!   official code). Backward: `dV = dZ Bp`, `dBp = dZᵀ V`.
//! - **node convolution** ([`glore_node_conv`]): `H = Z (I + Aᵀ) + 1_S b_Aᵀ` `[S, N]`, where `A` `[N, N]` and
//!   `b_A` `[N]` are the weight and bias of GloRe's `Conv1d(N, N, 1)` over the node axis (shared by all
//!   images), plus the residual. Optionally fused with the ReLU that follows it in GloRe (`ReLU(H)`, NaN kept).
//!   Backward, with `dH = ∂L/∂H` (masked by `1[H > 0]` when the ReLU is fused): `dZ = dH (I + A)`,
//!   `dA = Σ_images dHᵀ Z`, `db_A = Σ_images Σ_s dH`.
//! - **reprojection** ([`glore_reproject`]): `X̃ = Y Bp` `[S, L]` for `Y = W_g ReLU(H)` `[S, N]` (the caller's
//!   state convolution). Backward: `dY = dX̃ Bpᵀ`, `dBp = Yᵀ dX̃`.
//!
//! `Bp` feeds both the projection and the reprojection: its total gradient is the sum of the two `dBp`.
//! Shapes carry a leading batch `B` (images): `V` `[B, S, L]`, `Bp` `[B, N, L]`, `Z`/`H`/`Y` `[B, S, N]`.
//! Every input is differentiable. All tensors of one call share a float dtype and a device; products run in
//! f32 (f64 on the CPU for f64) with one rounding per output, as the rest of the family.

use super::prims::{self, widen};
use super::{same_float, MAX_BATCH};
use crate::error::{Error, Result};
use crate::ops::matmul::{matmul, matmul_backward};
use crate::ops::validate;
use crate::tensor::Tensor;

/// Projection `Z = V Bpᵀ` for `v` `[B, S, L]` and `bp` `[B, N, L]`; returns `[B, S, N]`.
pub fn glore_project(v: &Tensor, bp: &Tensor) -> Result<Tensor> {
    let [batch, s, n, _] = projection_dims(v, bp)?;
    if v.numel() == 0 || bp.numel() == 0 {
        return Tensor::zeros(&[batch, s, n], v.dtype(), &v.device());
    }
    matmul(v, bp, false, true)
}

/// Gradients of [`glore_project`] given `grad_z` `[B, S, N]`: returns `(dV, dBp)`.
pub fn glore_project_backward(
    v: &Tensor,
    bp: &Tensor,
    grad_z: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let [batch, s, n, _] = projection_dims(v, bp)?;
    same_float(&[("v", v), ("grad_z", grad_z)])?;
    validate::shape(grad_z, "grad_z", &[batch, s, n])?;
    if v.numel() == 0 || bp.numel() == 0 {
        return Ok((zeros_like(v)?, zeros_like(bp)?));
    }
    matmul_backward(v, bp, grad_z, false, true)
}

/// Reprojection `X̃ = Y Bp` for `y` `[B, S, N]` and `bp` `[B, N, L]`; returns `[B, S, L]`.
pub fn glore_reproject(y: &Tensor, bp: &Tensor) -> Result<Tensor> {
    let [batch, s, _, l] = reprojection_dims(y, bp)?;
    if y.numel() == 0 || bp.numel() == 0 {
        return Tensor::zeros(&[batch, s, l], y.dtype(), &y.device());
    }
    matmul(y, bp, false, false)
}

/// Gradients of [`glore_reproject`] given `grad_output` `[B, S, L]`: returns `(dY, dBp)`.
pub fn glore_reproject_backward(
    y: &Tensor,
    bp: &Tensor,
    grad_output: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let [batch, s, _, l] = reprojection_dims(y, bp)?;
    same_float(&[("y", y), ("grad_output", grad_output)])?;
    validate::shape(grad_output, "grad_output", &[batch, s, l])?;
    if y.numel() == 0 || bp.numel() == 0 {
        return Ok((zeros_like(y)?, zeros_like(bp)?));
    }
    matmul_backward(y, bp, grad_output, false, false)
}

/// The inputs of the GloRe node convolution `H = Z (I + Aᵀ) + 1_S b_Aᵀ`.
#[derive(Clone, Copy, Debug)]
pub struct NodeConvInputs<'a> {
    /// `Z`, `[B, S, N]`.
    pub z: &'a Tensor,
    /// `A`, `[N, N]`: the node-axis `Conv1d(N, N, 1)` weight (`weight[:, :, 0]`), shared by the batch.
    pub adjacency: &'a Tensor,
    /// `b_A`, `[N]`, or none.
    pub bias: Option<&'a Tensor>,
}

/// The gradients of [`glore_node_conv_backward`], each shaped like its input, in the inputs' dtype.
#[derive(Debug)]
pub struct NodeConvGrads {
    /// d loss / d `Z`, the projected node features.
    pub z: Tensor,
    /// d loss / d `A`, the node adjacency (the node conv's learnable weight).
    pub adjacency: Tensor,
    /// Present iff the forward had a bias.
    pub bias: Option<Tensor>,
}

/// `H = Z (I + Aᵀ) + 1_S b_Aᵀ`, `[B, S, N]`; `ReLU(H)` when `relu` (GloRe applies it next, before the state
/// convolution).
pub fn glore_node_conv(inputs: &NodeConvInputs<'_>, relu: bool) -> Result<Tensor> {
    let [batch, _, n] = node_conv_dims(inputs)?;
    let dtype = inputs.z.dtype();
    if inputs.z.numel() == 0 {
        return zeros_like(inputs.z);
    }
    let z = widen(inputs.z)?;
    let a = prims::tile_batch(&*widen(inputs.adjacency)?, batch)?;
    debug_assert_eq!(a.shape(), &[batch, n, n]);
    let za = matmul(&z, &a, false, true)?;
    prims::node_conv_epilogue(&za, &z, inputs.bias, relu, dtype)
}

/// Gradients of [`glore_node_conv`] given `grad_output` (shaped like the output). `relu_output` is the
/// forward's output when it ran with `relu = true` (the ReLU's gradient mask is `relu_output > 0`), `None`
/// when it ran without.
pub fn glore_node_conv_backward(
    inputs: &NodeConvInputs<'_>,
    relu_output: Option<&Tensor>,
    grad_output: &Tensor,
) -> Result<NodeConvGrads> {
    let [batch, s, n] = node_conv_dims(inputs)?;
    let dtype = inputs.z.dtype();
    same_float(&[("z", inputs.z), ("grad_output", grad_output)])?;
    validate::shape(grad_output, "grad_output", inputs.z.shape())?;
    if let Some(out) = relu_output {
        same_float(&[("z", inputs.z), ("relu_output", out)])?;
        validate::shape(out, "relu_output", inputs.z.shape())?;
    }
    if inputs.z.numel() == 0 {
        return Ok(NodeConvGrads {
            z: zeros_like(inputs.z)?,
            adjacency: zeros_like(inputs.adjacency)?,
            bias: inputs.bias.map(zeros_like).transpose()?,
        });
    }
    let g = prims::relu_grad(grad_output, relu_output)?;
    let a = prims::tile_batch(&*widen(inputs.adjacency)?, batch)?;
    // dZ = dH + dH A
    let ga = matmul(&g, &a, false, false)?;
    let grad_z = prims::node_conv_epilogue(&ga, &g, None, false, dtype)?;
    // dA = Σ_b dH_bᵀ Z_b
    let z = widen(inputs.z)?;
    let gt_z = matmul(&g, &z, true, false)?;
    let grad_adjacency = prims::col_sums(&gt_z, (1, batch, n * n), &[n, n], dtype)?;
    let grad_bias = match inputs.bias {
        Some(b) => Some(prims::col_sums(&g, (1, batch * s, n), b.shape(), dtype)?),
        None => None,
    };
    Ok(NodeConvGrads {
        z: grad_z,
        adjacency: grad_adjacency,
        bias: grad_bias,
    })
}

// ---------------------------------------------------------------------------------------------------------

fn zeros_like(t: &Tensor) -> Result<Tensor> {
    Tensor::zeros(t.shape(), t.dtype(), &t.device())
}

/// `t` must be `[B, rows, cols]`; returns its extents.
fn rank3(t: &Tensor, arg: &str, layout: &str) -> Result<[usize; 3]> {
    match *t.shape() {
        [b, r, c] => Ok([b, r, c]),
        _ => Err(Error::shape(arg, layout, t.shape())),
    }
}

fn check_extents(batch: usize, extents: &[(usize, &str, &str)]) -> Result<()> {
    if batch > MAX_BATCH {
        return Err(Error::invalid(
            extents[0].1,
            format!("batch {batch} exceeds {MAX_BATCH}"),
        ));
    }
    for &(v, arg, what) in extents {
        validate::fits_i32(v, arg, what)?;
    }
    Ok(())
}

/// `[B, S, N, L]` of a projection `V [B, S, L]`, `Bp [B, N, L]`.
fn projection_dims(v: &Tensor, bp: &Tensor) -> Result<[usize; 4]> {
    same_float(&[("v", v), ("bp", bp)])?;
    let [batch, s, l] = rank3(v, "v", "[B, S, L]")?;
    let bp_shape = rank3(bp, "bp", "[B, N, L]")?;
    if bp_shape[0] != batch || bp_shape[2] != l {
        return Err(Error::shape(
            "bp",
            format!("[{batch}, N, {l}] to match v {:?}", v.shape()),
            bp.shape(),
        ));
    }
    let n = bp_shape[1];
    check_extents(batch, &[(s, "v", "S"), (n, "bp", "N"), (l, "v", "L")])?;
    Ok([batch, s, n, l])
}

/// `[B, S, N, L]` of a reprojection `Y [B, S, N]`, `Bp [B, N, L]`.
fn reprojection_dims(y: &Tensor, bp: &Tensor) -> Result<[usize; 4]> {
    same_float(&[("y", y), ("bp", bp)])?;
    let [batch, s, n] = rank3(y, "y", "[B, S, N]")?;
    let bp_shape = rank3(bp, "bp", "[B, N, L]")?;
    if bp_shape[0] != batch || bp_shape[1] != n {
        return Err(Error::shape(
            "bp",
            format!("[{batch}, {n}, L] to match y {:?}", y.shape()),
            bp.shape(),
        ));
    }
    let l = bp_shape[2];
    check_extents(batch, &[(s, "y", "S"), (n, "y", "N"), (l, "bp", "L")])?;
    Ok([batch, s, n, l])
}

/// `[B, S, N]` of a node convolution.
fn node_conv_dims(inputs: &NodeConvInputs<'_>) -> Result<[usize; 3]> {
    let mut named = vec![("z", inputs.z), ("adjacency", inputs.adjacency)];
    if let Some(b) = inputs.bias {
        named.push(("bias", b));
    }
    same_float(&named)?;
    let [batch, s, n] = rank3(inputs.z, "z", "[B, S, N]")?;
    validate::shape(inputs.adjacency, "adjacency", &[n, n])?;
    if let Some(b) = inputs.bias {
        validate::shape(b, "bias", &[n])?;
    }
    check_extents(batch, &[(s, "z", "S"), (n, "z", "N")])?;
    Ok([batch, s, n])
}
