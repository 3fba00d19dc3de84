//! Reductions for composing losses and weights on a tape: full sums and means to a scalar, sums and means
//! over chosen axes, and the maximum along the last axis with its position — forward and backward, on the
//! CPU and on CUDA.
//!
//! # Formulas
//!
//! - [`sum_all`]: `s = Σ_i x_i`, shape `[]`. [`mean_all`]: `s / n` (NaN for an empty tensor, as PyTorch).
//!   Backward: `∂L/∂x_i = g` (sum) or `g/n` (mean).
//! - [`sum_axes`]: `y = Σ` over `axes` (negative axes count from the end, as in PyTorch); with `keepdim`
//!   the reduced axes stay as size 1, otherwise they are removed. [`mean_axes`]: the sum divided by the
//!   number of reduced elements `K` (NaN where `K = 0`). Backward: `g` broadcast back over the reduced axes
//!   (times `1/K` for the mean). At least one axis must be given (use [`sum_all`] for all of them); axes
//!   must be in range and distinct.
//! - [`max_last_axis`]: `v_r = max_c x_{r,c}` and `j_r = argmax_c x_{r,c}` over the last axis (LD's
//!   `w_j = max_c σ(z_{j,c})`). Ties go to the first (lowest) index; a NaN counts as larger than every
//!   number, so a row holding NaN gives NaN at its first NaN (PyTorch's `max` propagates NaN too). The
//!   values are exact elements of `x` (its dtype); the indices are i64. Backward (to the values only; the
//!   indices have no gradient): `∂L/∂x_{r,c} = g_r` at `c = j_r`, 0 elsewhere.
//!
//! # Precision and determinism
//!
//! Sums accumulate in f32 for f32/f16/bf16 storage and in f64 for f64 (CPU). [`sum_all`] and [`mean_all`]
//! return their scalar in f32 for every storage narrower than f64 — as the loss ops do — so a half-precision
//! tensor's sum neither overflows f16's range (65504) nor loses the accumulator's bits; their backward
//! accepts an upstream gradient in that f32 or in `x`'s dtype. [`sum_axes`] and [`mean_axes`] return `x`'s
//! dtype (one rounding of the f32 sum).
//!
//! On CUDA the full sums are two-pass: each block of a fixed-size grid (a function of `n` only) adds a
//! grid-stride slice of `x` and reduces it with a fixed tree, then one block adds the per-block partials in
//! order (`crate::cuda::sum_partials`); for the mean every partial is first multiplied by `1/n`. The axis
//! sums use the element-wise family's reduction ([`crate::ops::elementwise::sum_to_shape`]). No float
//! atomics anywhere: results are bitwise reproducible run to run. The CPU reference adds fixed chunks of
//! 4096 elements in index order and then the chunk sums in order, whatever the thread count.
//!
//! # Sizes
//!
//! [`sum_all`], [`mean_all`] and [`max_last_axis`] index with 64 bits (the last axis of `max_last_axis`
//! must hold fewer than 2^31 elements). The axis reductions share the element-wise family's limits: rank
//! at most 6 and fewer than 2^31 elements. Empty inputs give empty (or zero / NaN scalar) results without a
//! launch.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use super::elementwise::{self, check_float, check_indexable, on_device};
use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// The dtype [`sum_all`] and [`mean_all`] return for storage `dtype`: f64 for f64, f32 otherwise.
pub fn scalar_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

// ---------------------------------------------------------------------------------------------------------
// Full reductions

/// `Σ_i x_i` as a shape-`[]` tensor (f32, or f64 for f64 `x`); 0 for an empty `x`.
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    full_reduction(x, false)
}

/// `Σ_i x_i / n` as a shape-`[]` tensor (f32, or f64 for f64 `x`); NaN for an empty `x`.
pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    full_reduction(x, true)
}

fn full_reduction(x: &Tensor, mean: bool) -> Result<Tensor> {
    check_float(x, "x")?;
    let dtype = scalar_dtype(x.dtype());
    let device = x.device();
    let n = x.numel();
    if n == 0 {
        return if mean {
            Tensor::from_vec(vec![f64::NAN], &[])?
                .into_dtype(dtype)?
                .to_device(&device)
        } else {
            Tensor::zeros(&[], dtype, &device)
        };
    }
    on_device!(x,
        cpu => cpu::sum_all(x, mean),
        cuda(dev) => cuda::sum_all(&dev, x, if mean { 1.0 / n as f64 } else { 1.0 }),
    )
}

/// Gradient of [`sum_all`]: `grad_out` (shape `[]`, f32/f64 as the sum, or `x`'s dtype) at every element,
/// in `x`'s dtype.
pub fn sum_all_backward(x: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    full_reduction_backward(x, grad_out, false)
}

/// Gradient of [`mean_all`]: `grad_out / n` at every element, in `x`'s dtype.
pub fn mean_all_backward(x: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    full_reduction_backward(x, grad_out, true)
}

fn full_reduction_backward(x: &Tensor, grad_out: &Tensor, mean: bool) -> Result<Tensor> {
    check_float(x, "x")?;
    validate::shape(grad_out, "grad_out", &[])?;
    validate::same_device(&[("x", x), ("grad_out", grad_out)])?;
    let accepted = [scalar_dtype(x.dtype()), x.dtype()];
    if !accepted.contains(&grad_out.dtype()) {
        return Err(Error::DType {
            arg: "grad_out".into(),
            expected: format!("{} (the sum's dtype) or {}", accepted[0], accepted[1]),
            got: grad_out.dtype().to_string(),
        });
    }
    // A shape-[] gradient read with stride 0 everywhere: no element-count limit applies to it, but the
    // broadcast kernel indexes `x` with 32 bits.
    validate::fits_i32(x.numel(), "x", "the element count")?;
    let scale = if mean && x.numel() > 0 {
        1.0 / x.numel() as f64
    } else {
        1.0
    };
    elementwise::broadcast_scaled(grad_out, &[], x.shape(), scale, x.dtype())
}

// ---------------------------------------------------------------------------------------------------------
// Axis reductions

/// A validated axis reduction of `x`: the reduced shape with size-1 axes kept (`keep_shape`), the output
/// shape (`keep_shape` or without the reduced axes) and the number of elements each output sums.
struct AxisPlan {
    keep_shape: Vec<usize>,
    out_shape: Vec<usize>,
    count: usize,
}

/// `axes` (negative = from the end) of a rank-`rank` tensor, normalised; out-of-range, repeated and empty
/// lists are errors.
pub fn normalize_axes(axes: &[isize], rank: usize) -> Result<Vec<usize>> {
    if axes.is_empty() {
        return Err(Error::invalid(
            "axes",
            "expected at least one axis (sum_all / mean_all reduce over every axis)",
        ));
    }
    let mut seen = Vec::with_capacity(axes.len());
    for &axis in axes {
        let normalized = if axis < 0 { axis + rank as isize } else { axis };
        if normalized < 0 || normalized >= rank as isize {
            return Err(Error::invalid(
                "axes",
                format!(
                    "axis {axis} is out of range for a tensor of rank {rank} (expected -{rank}..{rank})"
                ),
            ));
        }
        let normalized = normalized as usize;
        if seen.contains(&normalized) {
            return Err(Error::invalid(
                "axes",
                format!("axis {normalized} appears twice in {axes:?}"),
            ));
        }
        seen.push(normalized);
    }
    Ok(seen)
}

fn axis_plan(x: &Tensor, axes: &[isize], keepdim: bool) -> Result<AxisPlan> {
    check_indexable(x, "x")?;
    let axes = normalize_axes(axes, x.rank())?;
    let mut keep_shape = x.shape().to_vec();
    let mut out_shape = Vec::with_capacity(x.rank());
    let mut count = 1usize;
    for (d, &n) in x.shape().iter().enumerate() {
        if axes.contains(&d) {
            keep_shape[d] = 1;
            count *= n;
            if keepdim {
                out_shape.push(1);
            }
        } else {
            out_shape.push(n);
        }
    }
    Ok(AxisPlan {
        keep_shape,
        out_shape,
        count,
    })
}

/// `Σ` of `x` over `axes` (see the module docs), in `x`'s dtype.
pub fn sum_axes(x: &Tensor, axes: &[isize], keepdim: bool) -> Result<Tensor> {
    let plan = axis_plan(x, axes, keepdim)?;
    let mut out = Tensor::zeros(&plan.out_shape, x.dtype(), &x.device())?;
    axis_reduction_into(x, &plan, false, &mut out)?;
    Ok(out)
}

/// [`sum_axes`] into `out` (the output shape, `x`'s dtype and device; contents never read).
pub fn sum_axes_into(x: &Tensor, axes: &[isize], keepdim: bool, out: &mut Tensor) -> Result<()> {
    let plan = axis_plan(x, axes, keepdim)?;
    validate::output_like(out, x, &plan.out_shape)?;
    axis_reduction_into(x, &plan, false, out)
}

/// The mean of `x` over `axes` (see the module docs), in `x`'s dtype.
pub fn mean_axes(x: &Tensor, axes: &[isize], keepdim: bool) -> Result<Tensor> {
    let plan = axis_plan(x, axes, keepdim)?;
    let mut out = Tensor::zeros(&plan.out_shape, x.dtype(), &x.device())?;
    axis_reduction_into(x, &plan, true, &mut out)?;
    Ok(out)
}

/// [`mean_axes`] into `out` (the output shape, `x`'s dtype and device; contents never read).
pub fn mean_axes_into(x: &Tensor, axes: &[isize], keepdim: bool, out: &mut Tensor) -> Result<()> {
    let plan = axis_plan(x, axes, keepdim)?;
    validate::output_like(out, x, &plan.out_shape)?;
    axis_reduction_into(x, &plan, true, out)
}

fn axis_reduction_into(x: &Tensor, plan: &AxisPlan, mean: bool, out: &mut Tensor) -> Result<()> {
    if out.numel() == 0 {
        return Ok(());
    }
    if mean && plan.count == 0 {
        return elementwise::fill(out, f64::NAN);
    }
    let scale = if mean { 1.0 / plan.count as f64 } else { 1.0 };
    elementwise::reduce_scaled_into(x, &plan.keep_shape, scale, out)
}

/// Gradient of [`sum_axes`]: `grad_out` (the output's shape) broadcast back to `x`'s shape.
pub fn sum_axes_backward(
    x: &Tensor,
    axes: &[isize],
    keepdim: bool,
    grad_out: &Tensor,
) -> Result<Tensor> {
    axis_backward(x, axes, keepdim, grad_out, false)
}

/// Gradient of [`mean_axes`]: `grad_out / K` broadcast back to `x`'s shape.
pub fn mean_axes_backward(
    x: &Tensor,
    axes: &[isize],
    keepdim: bool,
    grad_out: &Tensor,
) -> Result<Tensor> {
    axis_backward(x, axes, keepdim, grad_out, true)
}

fn axis_backward(
    x: &Tensor,
    axes: &[isize],
    keepdim: bool,
    grad_out: &Tensor,
    mean: bool,
) -> Result<Tensor> {
    let plan = axis_plan(x, axes, keepdim)?;
    validate::shape(grad_out, "grad_out", &plan.out_shape)?;
    validate::same_device(&[("x", x), ("grad_out", grad_out)])?;
    validate::same_dtype(&[("x", x), ("grad_out", grad_out)])?;
    let scale = if mean && plan.count > 0 {
        1.0 / plan.count as f64
    } else {
        1.0
    };
    elementwise::broadcast_scaled(grad_out, &plan.keep_shape, x.shape(), scale, x.dtype())
}

// ---------------------------------------------------------------------------------------------------------
// Maximum along the last axis

/// The result of [`max_last_axis`]: `x`'s shape without its last axis.
#[derive(Debug)]
pub struct MaxLastAxis {
    /// `max_c x[.., c]`, in `x`'s dtype.
    pub values: Tensor,
    /// The first position of the maximum (of the first NaN, if any), i64.
    pub indices: Tensor,
}

/// The maximum of every row along the last axis and its position (see the module docs).
pub fn max_last_axis(x: &Tensor) -> Result<MaxLastAxis> {
    let (rows, cols) = check_rows(x)?;
    let out_shape = &x.shape()[..x.rank() - 1];
    let device = x.device();
    let mut values = Tensor::zeros(out_shape, x.dtype(), &device)?;
    let mut indices = Tensor::zeros(out_shape, DType::I64, &device)?;
    if rows > 0 {
        on_device!(x,
            cpu => cpu::max_last_axis(x, cols, &mut values, &mut indices)?,
            cuda(dev) => cuda::max_last_axis(&dev, x, rows, cols, &mut values, &mut indices)?,
        );
    }
    Ok(MaxLastAxis { values, indices })
}

/// Gradient of [`max_last_axis`]'s values: `grad_values[r]` at `x[r, indices[r]]`, 0 elsewhere, in `x`'s
/// dtype. `indices` (i64, on the host or `x`'s device) must hold positions in `[0, C)`.
pub fn max_last_axis_backward(
    x: &Tensor,
    indices: &Tensor,
    grad_values: &Tensor,
) -> Result<Tensor> {
    let (rows, cols) = check_rows(x)?;
    let out_shape = &x.shape()[..x.rank() - 1];
    validate::shape(grad_values, "grad_values", out_shape)?;
    validate::same_device(&[("x", x), ("grad_values", grad_values)])?;
    validate::same_dtype(&[("x", x), ("grad_values", grad_values)])?;
    validate::shape(indices, "indices", out_shape)?;
    validate::dtype(indices, "indices", DType::I64)?;
    let host_indices = indices.to_vec::<i64>()?;
    if let Some((r, &j)) = host_indices
        .iter()
        .enumerate()
        .find(|(_, &j)| j < 0 || j as u64 >= cols as u64)
    {
        return Err(Error::invalid(
            "indices",
            format!("entry {r} is {j}, outside [0, {cols}) (the last axis of `x`)"),
        ));
    }
    let mut grad = Tensor::zeros(x.shape(), x.dtype(), &x.device())?;
    if rows == 0 || cols == 0 {
        return Ok(grad);
    }
    on_device!(x,
        cpu => cpu::max_last_axis_backward(&host_indices, grad_values, cols, &mut grad)?,
        cuda(dev) => cuda::max_last_axis_backward(&dev, indices, &host_indices, grad_values, rows, cols, &mut grad)?,
    );
    Ok(grad)
}

/// `x` as `rows × C` (the last axis); rank ≥ 1, C < 2^31, and C > 0 unless there are no rows.
fn check_rows(x: &Tensor) -> Result<(usize, usize)> {
    check_float(x, "x")?;
    if x.rank() == 0 {
        return Err(Error::shape("x", "with at least one dimension", x.shape()));
    }
    let cols = x.shape()[x.rank() - 1];
    let rows: usize = x.shape()[..x.rank() - 1].iter().product();
    validate::fits_i32(cols, "x", "the last axis")?;
    if cols == 0 && rows > 0 {
        return Err(Error::shape(
            "x",
            "with a non-empty last axis (the maximum of an empty row is undefined)",
            x.shape(),
        ));
    }
    Ok((rows, cols))
}

#[cfg(test)]
mod tests;
