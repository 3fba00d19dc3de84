//! The row-wise and element-wise steps the similarity ops are built from, each dispatched to the CPU
//! reference (cpu.rs) or the CUDA kernels (cuda.rs) by the device of its first argument. Inputs were
//! validated by the public entries in mod.rs; shapes here are taken as given.
//!
//! "Compute dtype" is f64 for f64 tensors and f32 for everything else: intermediates (normalised rows,
//! Gram matrices, gradient matrices, row sums) are held in it, so half storage is rounded only once, in
//! the step that produces a result for the caller.

use super::cpu;
#[cfg(feature = "cuda")]
use super::cuda;
use crate::error::Result;
use crate::tensor::{DType, Device, Tensor};
use std::ops::Deref;

/// Runs `$cpu` on the host or `$cuda` with `$dev` bound to the CUDA device of `$t`.
macro_rules! on_device {
    ($t:expr, cpu => $cpu:expr, cuda($dev:ident) => $cuda:expr $(,)?) => {
        match $t.device() {
            Device::Cpu => $cpu,
            #[cfg(feature = "cuda")]
            Device::Cuda($dev) => $cuda,
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(dev) => dev.unreachable(),
        }
    };
}

/// The dtype intermediates are held in for inputs of `dtype`.
pub(crate) fn compute_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Distance assembly / gradient flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PairMode {
    /// `y` is `x`: exact zero diagonal, symmetrised gradient.
    pub self_mode: bool,
    /// Plain distance (`√D²`) rather than squared.
    pub take_sqrt: bool,
}

/// Rows of `x` (`[M, D]`; those listed in `index`, an i64 tensor on `x`'s device, in that order) divided by
/// `max(‖row‖, eps)`, as an `[m, D]` tensor of `out_dtype` (`x`'s dtype or its compute dtype).
pub(crate) fn normalize(
    x: &Tensor,
    index: Option<&Tensor>,
    eps: f64,
    out_dtype: DType,
) -> Result<Tensor> {
    let rows = index.map_or(x.shape()[0], Tensor::numel);
    let mut out = Tensor::zeros(&[rows, x.shape()[1]], out_dtype, &x.device())?;
    normalize_into(x, index, eps, &mut out)?;
    Ok(out)
}

/// [`normalize`] into an `[m, D]` tensor whose dtype selects the output dtype.
pub(crate) fn normalize_into(
    x: &Tensor,
    index: Option<&Tensor>,
    eps: f64,
    out: &mut Tensor,
) -> Result<()> {
    if out.shape()[0] == 0 {
        return Ok(());
    }
    on_device!(x,
        cpu => cpu::normalize_into(x, index, eps, out),
        cuda(dev) => cuda::normalize_into(&dev, x, index, eps, out),
    )
}

/// Gradient of [`normalize`] with respect to `x` (`[rows_total, D]`, `x`'s dtype), given `grad_hat`
/// (`[m, D]`, `x`'s dtype or its compute dtype). With `index`, row `r` of `grad_hat` belongs to row
/// `index[r]` of `x` and every other row of the result is 0.
pub(crate) fn normalize_backward(
    x: &Tensor,
    index: Option<&Tensor>,
    grad_hat: &Tensor,
    rows_total: usize,
    eps: f64,
) -> Result<Tensor> {
    let shape = [rows_total, x.shape()[1]];
    if grad_hat.shape()[0] == 0 || shape[1] == 0 {
        return Tensor::zeros(&shape, x.dtype(), &x.device());
    }
    on_device!(x,
        cpu => cpu::normalize_backward(x, index, grad_hat, rows_total, eps),
        cuda(dev) => cuda::normalize_backward(&dev, x, index, grad_hat, rows_total, eps),
    )
}

/// `g + gᵀ` of a square matrix, in the compute dtype.
pub(crate) fn symmetrize(g: &Tensor) -> Result<Tensor> {
    on_device!(g,
        cpu => cpu::symmetrize(g),
        cuda(dev) => cuda::symmetrize(&dev, g),
    )
}

/// A tensor that is either borrowed or owned (`Tensor` is not `Clone`, so `Cow` does not apply).
pub(crate) enum MaybeOwned<'a> {
    Borrowed(&'a Tensor),
    Owned(Tensor),
}

impl Deref for MaybeOwned<'_> {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        match self {
            MaybeOwned::Borrowed(t) => t,
            MaybeOwned::Owned(t) => t,
        }
    }
}

/// `x` in its compute dtype: borrowed when it already is, converted otherwise.
pub(crate) fn widen(x: &Tensor) -> Result<MaybeOwned<'_>> {
    let compute = compute_dtype(x.dtype());
    if x.dtype() == compute {
        return Ok(MaybeOwned::Borrowed(x));
    }
    on_device!(x,
        cpu => Ok(MaybeOwned::Owned(x.to_dtype(compute)?)),
        cuda(dev) => Ok(MaybeOwned::Owned(cuda::widen(&dev, x)?)),
    )
}

/// `‖row‖²` of every row, `[rows]` in the compute dtype.
pub(crate) fn row_sq_norms(x: &Tensor) -> Result<Tensor> {
    if x.shape()[0] == 0 {
        return Tensor::zeros(&[0], compute_dtype(x.dtype()), &x.device());
    }
    on_device!(x,
        cpu => cpu::row_sq_norms(x),
        cuda(dev) => cuda::row_sq_norms(&dev, x),
    )
}

/// Distances from the Gram matrix and the squared norms (all compute dtype) into `out` (`[m, n]`).
pub(crate) fn assemble_distance_into(
    gram: &Tensor,
    nx: &Tensor,
    ny: &Tensor,
    mode: PairMode,
    out: &mut Tensor,
) -> Result<()> {
    on_device!(gram,
        cpu => cpu::assemble_distance_into(gram, nx, ny, mode, out),
        cuda(dev) => cuda::assemble_distance_into(&dev, gram, nx, ny, mode, out),
    )
}

/// The gradient with respect to the squared distances (compute dtype, `[m, n]`), given the distances
/// `dist` and their upstream gradient `grad` (both in the storage dtype); symmetrised in self mode.
pub(crate) fn distance_grad_prep(grad: &Tensor, dist: &Tensor, mode: PairMode) -> Result<Tensor> {
    on_device!(grad,
        cpu => cpu::distance_grad_prep(grad, dist, mode),
        cuda(dev) => cuda::distance_grad_prep(&dev, grad, dist, mode),
    )
}

/// Row sums of a compute-dtype matrix.
pub(crate) fn row_sums(m: &Tensor) -> Result<Tensor> {
    on_device!(m,
        cpu => cpu::row_sums(m),
        cuda(dev) => cuda::row_sums(&dev, m),
    )
}

/// Column sums of a compute-dtype matrix.
pub(crate) fn col_sums(m: &Tensor) -> Result<Tensor> {
    on_device!(m,
        cpu => cpu::col_sums(m),
        cuda(dev) => cuda::col_sums(&dev, m),
    )
}

/// `2·(rowsum_r·x[r, :] − prod[r, :])` in `x`'s dtype (`rowsum`, `prod` in the compute dtype).
pub(crate) fn combine(x: &Tensor, rowsum: &Tensor, prod: &Tensor) -> Result<Tensor> {
    on_device!(x,
        cpu => cpu::combine(x, rowsum, prod),
        cuda(dev) => cuda::combine(&dev, x, rowsum, prod),
    )
}

/// Rounds the compute-dtype `src` into `out` (same shape, `out`'s dtype).
pub(crate) fn convert_into(src: &Tensor, out: &mut Tensor) -> Result<()> {
    on_device!(src,
        cpu => {
            *out = src.to_dtype(out.dtype())?;
            Ok(())
        },
        cuda(dev) => cuda::convert_into(&dev, src, out),
    )
}

/// The Dsig edge loss `loss_scale·Σ(a_s − a_t)²` of two compute-dtype Gram matrices as a `[]` tensor;
/// with `grad_scale`, `a_s` is overwritten with `grad_scale·(a_s − a_t)` in the same pass.
pub(crate) fn edge_loss_and_grad(
    a_s: &mut Tensor,
    a_t: &Tensor,
    loss_scale: f64,
    grad_scale: Option<f64>,
) -> Result<Tensor> {
    on_device!(a_t,
        cpu => cpu::edge_loss_and_grad(a_s, a_t, loss_scale, grad_scale),
        cuda(dev) => cuda::edge_loss_and_grad(&dev, a_s, a_t, loss_scale, grad_scale),
    )
}
