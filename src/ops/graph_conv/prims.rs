//! Device-dispatching building blocks of the family: each runs the CPU reference (cpu.rs) or the CUDA kernel
//! (cuda.rs) of one element- or row-wise step, so the op algorithms in mod.rs and glore.rs are written once.
//!
//! Tensors called *compute* here hold intermediates in the compute dtype ([`compute_dtype`]): f64 for f64
//! storage (CPU only), f32 for everything else. *Storage* tensors are the caller's, in any float dtype.
//! Callers have validated shapes, dtypes and devices; these functions only compute.

use super::cpu;
#[cfg(feature = "cuda")]
use super::cuda;
use crate::error::Result;
use crate::tensor::{DType, Device, Element, Tensor};
use std::ops::Deref;

/// The dtype intermediates are kept in for a storage dtype: f64 stays f64, f32/f16/bf16 compute in f32.
pub(super) fn compute_dtype(storage: DType) -> DType {
    if storage == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Runs `$body` with `$r` bound to the CPU compute type of `$dtype` (f64 or f32).
macro_rules! with_compute_type {
    ($dtype:expr, $r:ident => $body:expr) => {
        if compute_dtype($dtype) == DType::F64 {
            type $r = f64;
            $body
        } else {
            type $r = f32;
            $body
        }
    };
}

/// A tensor in the compute dtype: the caller's own when it already is, else a widened copy.
pub(super) enum Widened<'a> {
    Borrowed(&'a Tensor),
    Owned(Tensor),
}

impl Deref for Widened<'_> {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        match self {
            Widened::Borrowed(t) => t,
            Widened::Owned(t) => t,
        }
    }
}

/// `t` in its compute dtype.
pub(super) fn widen(t: &Tensor) -> Result<Widened<'_>> {
    let target = compute_dtype(t.dtype());
    if t.dtype() == target {
        return Ok(Widened::Borrowed(t));
    }
    match &t.device() {
        Device::Cpu => Ok(Widened::Owned(t.to_dtype(target)?)),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => Ok(Widened::Owned(cuda::widen(dev, t)?)),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// A compute tensor rounded to the storage dtype `dtype` (free when it already is).
pub(super) fn narrow(t: Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        return Ok(t);
    }
    match &t.device() {
        Device::Cpu => t.into_dtype(dtype),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::narrow(dev, &t, dtype),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// Degrees `1 + Σ_j A[r, j]` of the storage tensor `a` viewed as `[rows, m]`: a host copy (for validation)
/// and `s = degree^-1/2` as a compute tensor of shape `s_shape`.
pub(super) fn degrees(a: &Tensor, m: usize, s_shape: &[usize]) -> Result<(Vec<f64>, Tensor)> {
    match &a.device() {
        Device::Cpu => with_compute_type!(a.dtype(), R => {
            let (degree, inv_sqrt) = cpu::degrees::<R>(&a.host_values::<R>()?, m);
            Ok((
                degree.iter().map(|&d| d.to_f64()).collect(),
                Tensor::from_vec(inv_sqrt, s_shape)?,
            ))
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::degrees(dev, a, m, s_shape),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// The first non-finite element of a host `a` viewed as `[batch, m, m]`, as `(b, p, q, value)`.
pub(super) fn first_non_finite(a: &Tensor, m: usize) -> Result<Option<(usize, usize, usize, f64)>> {
    with_compute_type!(a.dtype(), R => Ok(
        cpu::first_non_finite::<R>(&a.host_values::<R>()?, m).map(|(b, p, q, v)| (b, p, q, v.to_f64()))
    ))
}

/// `Â = s_p (A + I) s_q` as a compute tensor shaped like `a` (storage).
pub(super) fn normalize(a: &Tensor, inv_sqrt: &Tensor, m: usize) -> Result<Tensor> {
    match &a.device() {
        Device::Cpu => with_compute_type!(a.dtype(), R => {
            let out = cpu::normalize::<R>(&a.host_values::<R>()?, inv_sqrt.as_slice::<R>()?, m);
            Tensor::from_vec(out, a.shape())
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::normalize(dev, a, inv_sqrt, m),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// `dA` (storage dtype of `a`, shaped like `a`) from `g = dÂ` (compute), `a` (storage) and `s` (compute).
pub(super) fn adjacency_grad(
    g: &Tensor,
    a: &Tensor,
    inv_sqrt: &Tensor,
    m: usize,
) -> Result<Tensor> {
    match &a.device() {
        Device::Cpu => with_compute_type!(a.dtype(), R => {
            let out = cpu::adjacency_grad::<R>(
                g.as_slice::<R>()?,
                &a.host_values::<R>()?,
                inv_sqrt.as_slice::<R>()?,
                m,
            );
            Tensor::from_vec(out, a.shape())?.into_dtype(a.dtype())
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::adjacency_grad(dev, g, a, inv_sqrt, m),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// `t` repeated `batch` times along a new leading dimension.
pub(super) fn tile_batch(t: &Tensor, batch: usize) -> Result<Tensor> {
    let mut shape = vec![batch];
    shape.extend_from_slice(t.shape());
    match &t.device() {
        Device::Cpu => with_compute_type!(t.dtype(), R => {
            Tensor::from_vec(cpu::tile_batch::<R>(&t.host_values::<R>()?, batch), &shape)?
                .into_dtype(t.dtype())
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::tile_batch(dev, t, batch, &shape),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// `y + bias` broadcast over rows (`bias` has `y`'s last extent), rounded to `dtype`; `y` is a compute tensor.
pub(super) fn bias_rows(y: Tensor, bias: Option<&Tensor>, dtype: DType) -> Result<Tensor> {
    let Some(bias) = bias else {
        return narrow(y, dtype);
    };
    let cols = *y.shape().last().unwrap_or(&0);
    match &y.device() {
        Device::Cpu => with_compute_type!(dtype, R => {
            let out = cpu::bias_rows::<R>(y.as_slice::<R>()?, Some(&bias.host_values::<R>()?), cols);
            Tensor::from_vec(out, y.shape())?.into_dtype(dtype)
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::bias_rows(dev, &y, Some(bias), dtype),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// `out[b, c] = Σ_r x[b, r, c]` for the compute tensor `x` viewed as `[batch, rows, cols]`, shaped
/// `out_shape` (`batch * cols` elements) and rounded to `dtype`.
pub(super) fn col_sums(
    x: &Tensor,
    (batch, rows, cols): (usize, usize, usize),
    out_shape: &[usize],
    dtype: DType,
) -> Result<Tensor> {
    match &x.device() {
        Device::Cpu => with_compute_type!(dtype, R => {
            let out = cpu::col_sums::<R>(x.as_slice::<R>()?, batch, rows, cols);
            Tensor::from_vec(out, out_shape)?.into_dtype(dtype)
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::col_sums(dev, x, (batch, rows, cols), out_shape, dtype),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// `za + z + bias` (then ReLU when `relu`) for compute tensors `za`, `z` and a storage `bias` over the last
/// extent, rounded to `dtype`.
pub(super) fn node_conv_epilogue(
    za: &Tensor,
    z: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
    dtype: DType,
) -> Result<Tensor> {
    let cols = *za.shape().last().unwrap_or(&0);
    match &za.device() {
        Device::Cpu => with_compute_type!(dtype, R => {
            let bias = bias.map(|b| b.host_values::<R>()).transpose()?;
            let out = cpu::node_conv_epilogue::<R>(
                za.as_slice::<R>()?,
                z.as_slice::<R>()?,
                bias.as_deref(),
                cols,
                relu,
            );
            Tensor::from_vec(out, za.shape())?.into_dtype(dtype)
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::node_conv_epilogue(dev, za, z, bias, relu, dtype),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// `grad ⊙ 1[relu_output > 0]` (or `grad` alone) as a compute tensor; both inputs are storage tensors.
pub(super) fn relu_grad(grad: &Tensor, relu_output: Option<&Tensor>) -> Result<Tensor> {
    match &grad.device() {
        Device::Cpu => with_compute_type!(grad.dtype(), R => {
            let out = relu_output.map(|o| o.host_values::<R>()).transpose()?;
            Tensor::from_vec(
                cpu::relu_grad::<R>(&grad.host_values::<R>()?, out.as_deref()),
                grad.shape(),
            )
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::relu_grad(dev, grad, relu_output),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}
