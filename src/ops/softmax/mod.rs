//! Softmax and log-softmax along the last axis with a temperature — forward and backward, on the CPU and on
//! CUDA. They are the glue around the distillation losses (LD's and KD's `softmax(z/T)`, prototype
//! assignments) when those are composed on a tape rather than fused.
//!
//! # Formulas
//!
//! With `z = x/T` along each row (the last axis) and `m = max_j z_j`:
//!
//! - [`softmax_last_axis`]: `p_i = e^{z_i − m} / Σ_j e^{z_j − m}` (= `softmax(x/T)`).
//! - [`log_softmax_last_axis`]: `log p_i = (z_i − m) − ln Σ_j e^{z_j − m}`.
//!
//! Subtracting the row maximum keeps every exponent ≤ 0, so logits of any magnitude (±1e4 and beyond)
//! neither overflow nor lose the distribution; the row sum is at least 1. Backward, from the forward output
//! and the upstream gradient `g`:
//!
//! - softmax: `∂L/∂x_i = p_i (g_i − ⟨g, p⟩) / T`;
//! - log-softmax: `∂L/∂x_i = (g_i − p_i Σ_j g_j) / T`, with `p = exp(log p)`.
//!
//! Both backward passes read the forward *output* (not `x`): it is what a tape keeps, and it saves the
//! recomputation. The temperature must be finite and non-zero, with `1/T` representable in f32 (a negative
//! temperature is allowed: it reverses the order of the logits). Computed as `z = x·(1/T)` on both devices.
//!
//! A row whose logits are all `−∞`, or hold `+∞` or NaN, gives NaN (as PyTorch).
//!
//! # Precision, launch shape, determinism
//!
//! Storage f32/f16/bf16 (f64 too on the CPU); arithmetic f32 (f64 for f64), results rounded once. On CUDA
//! rows of up to 1024 elements are handled by a group of 1–32 lanes of a warp (the smallest power of two
//! giving each lane at most four elements; GFL's 17 bins get 8 lanes, 80 classes a full warp); longer
//! rows by one 256-thread block with a block-wide reduction, so rows of any length below 2^31 work (64k and
//! more). Every reduction has a fixed shape: results are bitwise reproducible run to run. The CPU reference
//! adds each row in index order. Empty inputs give empty results without a launch.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use super::elementwise::{check_float, on_device};
use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// Which function of the row a call computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Softmax,
    LogSoftmax,
}

/// The validated row layout and `1/T` of a call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rows {
    pub rows: usize,
    pub cols: usize,
    pub inv_temperature: f64,
}

/// `softmax(x/T)` along the last axis of `x` (any rank ≥ 1), in `x`'s dtype.
pub fn softmax_last_axis(x: &Tensor, temperature: f64) -> Result<Tensor> {
    forward(Kind::Softmax, x, temperature)
}

/// [`softmax_last_axis`] into `out` (`x`'s shape, dtype and device; contents never read).
pub fn softmax_last_axis_into(x: &Tensor, temperature: f64, out: &mut Tensor) -> Result<()> {
    forward_into(Kind::Softmax, x, temperature, out)
}

/// Gradient of [`softmax_last_axis`] from its `output` `p` and `grad_out`: `p ⊙ (g − ⟨g, p⟩)/T` per row.
pub fn softmax_last_axis_backward(
    output: &Tensor,
    grad_out: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    backward(Kind::Softmax, output, grad_out, temperature)
}

/// `log_softmax(x/T)` along the last axis of `x` (any rank ≥ 1), in `x`'s dtype.
pub fn log_softmax_last_axis(x: &Tensor, temperature: f64) -> Result<Tensor> {
    forward(Kind::LogSoftmax, x, temperature)
}

/// [`log_softmax_last_axis`] into `out` (`x`'s shape, dtype and device; contents never read).
pub fn log_softmax_last_axis_into(x: &Tensor, temperature: f64, out: &mut Tensor) -> Result<()> {
    forward_into(Kind::LogSoftmax, x, temperature, out)
}

/// Gradient of [`log_softmax_last_axis`] from its `output` `log p` and `grad_out`: `(g − p·Σg)/T` per row.
pub fn log_softmax_last_axis_backward(
    output: &Tensor,
    grad_out: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    backward(Kind::LogSoftmax, output, grad_out, temperature)
}

fn forward(kind: Kind, x: &Tensor, temperature: f64) -> Result<Tensor> {
    let rows = check_rows(x, "x", temperature)?;
    let mut out = Tensor::zeros(x.shape(), x.dtype(), &x.device())?;
    run_forward(kind, x, rows, &mut out)?;
    Ok(out)
}

fn forward_into(kind: Kind, x: &Tensor, temperature: f64, out: &mut Tensor) -> Result<()> {
    let rows = check_rows(x, "x", temperature)?;
    validate::output_like(out, x, x.shape())?;
    run_forward(kind, x, rows, out)
}

fn run_forward(kind: Kind, x: &Tensor, rows: Rows, out: &mut Tensor) -> Result<()> {
    if x.numel() == 0 {
        return Ok(());
    }
    on_device!(x,
        cpu => cpu::forward_into(kind, x, rows, out),
        cuda(dev) => cuda::forward_into(&dev, kind, x, rows, out),
    )
}

fn backward(kind: Kind, output: &Tensor, grad_out: &Tensor, temperature: f64) -> Result<Tensor> {
    let rows = check_rows(output, "output", temperature)?;
    validate::shape(grad_out, "grad_out", output.shape())?;
    validate::same_device(&[("output", output), ("grad_out", grad_out)])?;
    validate::same_dtype(&[("output", output), ("grad_out", grad_out)])?;
    let mut grad = Tensor::zeros(output.shape(), output.dtype(), &output.device())?;
    if output.numel() == 0 {
        return Ok(grad);
    }
    on_device!(output,
        cpu => cpu::backward_into(kind, output, grad_out, rows, &mut grad)?,
        cuda(dev) => cuda::backward_into(&dev, kind, output, grad_out, rows, &mut grad)?,
    );
    Ok(grad)
}

/// A float tensor of rank ≥ 1 whose last axis fits the kernels, and a usable temperature.
fn check_rows(t: &Tensor, arg: &str, temperature: f64) -> Result<Rows> {
    check_float(t, arg)?;
    let inv = 1.0 / temperature;
    if !temperature.is_finite() || temperature == 0.0 || !((inv as f32).is_finite()) {
        return Err(Error::invalid(
            "temperature",
            format!("must be finite and non-zero with 1/T finite in f32, got {temperature}"),
        ));
    }
    if t.rank() == 0 {
        return Err(Error::shape(
            arg,
            "with at least one dimension (the softmax runs along the last)",
            t.shape(),
        ));
    }
    let cols = t.shape()[t.rank() - 1];
    validate::fits_i32(cols, arg, "the last axis")?;
    Ok(Rows {
        rows: t.shape()[..t.rank() - 1].iter().product(),
        cols,
        inv_temperature: inv,
    })
}

#[cfg(test)]
mod tests;
