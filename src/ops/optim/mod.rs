//! Optimizer updates as in-place, element-wise kernels: SGD (momentum, dampening, Nesterov, weight decay)
//! and AdamW, with PyTorch's `torch.optim` semantics (single-tensor, `foreach=False` code path), plus the
//! pieces of `clip_grad_norm_`: a deterministic squared norm and an in-place scale.
//!
//! # Updates
//!
//! **SGD** ([`sgd_step`]): `g = ∇ + wd·p`; with momentum `μ > 0`: `b = g` on the first step, else
//! `b = μ·b + (1 − dampening)·g`, and `g = g + μ·b` (Nesterov) or `g = b`; then `p = p − lr·g`.
//!
//! **AdamW** ([`adamw_step`]), at step `t ≥ 1`: `p = p·(1 − lr·wd)`; `m = m + (1 − β₁)(∇ − m)` (PyTorch's
//! `lerp_`); `v = β₂·v + (1 − β₂)·∇²`; `p = p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)`.
//!
//! # Precision
//!
//! Parameters and gradients may be f32, f16 or bf16 (f64 on the CPU); optimizer state (momentum buffer,
//! `m`, `v`) is f32 (f64 for f64 parameters), and every update is computed in f32 (f64) and rounded to the
//! parameter's dtype once. Each element is updated independently, so results are bitwise reproducible.
//! A non-finite gradient makes the parameters it touches non-finite; callers that want to skip such steps
//! check [`squared_norm`] first (it is NaN or infinite then).

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// `torch.optim.SGD` hyper-parameters. The default is PyTorch's, except `lr`, which PyTorch requires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate, finite and ≥ 0.
    pub lr: f64,
    /// Momentum factor μ, finite and ≥ 0 (0 = plain SGD, no buffer).
    pub momentum: f64,
    /// Dampening of the momentum's gradient term, finite.
    pub dampening: f64,
    /// L2 penalty added to the gradient (coupled weight decay), finite and ≥ 0.
    pub weight_decay: f64,
    /// Nesterov momentum (requires μ > 0 and dampening 0, as in PyTorch).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// lr 0.01 (mmdet's GFL/RetinaNet 1x schedule at batch 16), no momentum, no weight decay.
    fn default() -> Self {
        SgdConfig {
            lr: 0.01,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

/// `torch.optim.AdamW` hyper-parameters; the default is PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate, finite and ≥ 0.
    pub lr: f64,
    /// β₁ ∈ [0, 1).
    pub beta1: f64,
    /// β₂ ∈ [0, 1).
    pub beta2: f64,
    /// ε > 0, added to the bias-corrected `√v`.
    pub eps: f64,
    /// Decoupled weight decay, finite and ≥ 0.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's lr 1e-3, β = (0.9, 0.999), ε 1e-8, weight decay 0.01.
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The per-element coefficients of one SGD step, in the precision of the update.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SgdCoefficients {
    pub lr: f64,
    pub momentum: f64,
    /// `1 − dampening`, formed in f64.
    pub one_minus_dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    pub first_step: bool,
}

/// The per-element coefficients of one AdamW step (bias corrections folded in on the host).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamWCoefficients {
    /// `1 − lr·wd`, `1 − β₁`, `β₂`, `1 − β₂`: formed in f64 like PyTorch's Python-side scalars, so an f32
    /// update does not inherit the rounding of `β` in f32 (`1 − 0.999f32` is off by 1.3e-5 relative).
    pub decay: f64,
    pub one_minus_beta1: f64,
    pub beta2: f64,
    pub one_minus_beta2: f64,
    pub eps: f64,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f64,
    /// `√(1 − β₂ᵗ)`.
    pub bias_correction2_sqrt: f64,
}

/// The dtype optimizer state must have for parameters of `dtype`.
pub fn state_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// A zero state buffer for `param` (momentum buffer, `m` or `v`): its shape and device, [`state_dtype`].
pub fn zero_state(param: &Tensor) -> Result<Tensor> {
    Tensor::zeros(param.shape(), state_dtype(param.dtype()), &param.device())
}

/// One SGD step on `param` in place. `momentum_buffer` (shape of `param`, [`state_dtype`]) is required when
/// `cfg.momentum > 0` and ignored otherwise; `first_step` initialises it with the gradient, as PyTorch does
/// when the buffer does not exist yet.
pub fn sgd_step(
    param: &mut Tensor,
    grad: &Tensor,
    momentum_buffer: Option<&mut Tensor>,
    first_step: bool,
    cfg: &SgdConfig,
) -> Result<()> {
    check_sgd(cfg)?;
    check_param_grad(param, grad)?;
    let buffer = if cfg.momentum > 0.0 {
        let buffer = momentum_buffer.ok_or_else(|| {
            Error::invalid(
                "momentum_buffer",
                format!("momentum {} needs a buffer", cfg.momentum),
            )
        })?;
        check_state(buffer, "momentum_buffer", param)?;
        Some(buffer)
    } else {
        None
    };
    let coef = SgdCoefficients {
        lr: cfg.lr,
        momentum: cfg.momentum,
        one_minus_dampening: 1.0 - cfg.dampening,
        weight_decay: cfg.weight_decay,
        nesterov: cfg.nesterov,
        first_step,
    };
    if param.numel() == 0 {
        return Ok(());
    }
    match param.device() {
        Device::Cpu => cpu::sgd_step(param, grad, buffer, &coef),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::sgd_step(&dev, param, grad, buffer, &coef),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// One AdamW step (`step` = 1 for the first) on `param` in place, updating `exp_avg` (`m`) and
/// `exp_avg_sq` (`v`), both shaped like `param` with [`state_dtype`].
pub fn adamw_step(
    param: &mut Tensor,
    grad: &Tensor,
    exp_avg: &mut Tensor,
    exp_avg_sq: &mut Tensor,
    step: u64,
    cfg: &AdamWConfig,
) -> Result<()> {
    check_adamw(cfg)?;
    if step == 0 {
        return Err(Error::invalid("step", "steps are counted from 1, got 0"));
    }
    check_param_grad(param, grad)?;
    check_state(exp_avg, "exp_avg", param)?;
    check_state(exp_avg_sq, "exp_avg_sq", param)?;
    // β^t underflows to 0 for large t, which is the limit the corrections tend to anyway.
    let t = step.min(i32::MAX as u64) as i32;
    let coef = AdamWCoefficients {
        decay: 1.0 - cfg.lr * cfg.weight_decay,
        one_minus_beta1: 1.0 - cfg.beta1,
        beta2: cfg.beta2,
        one_minus_beta2: 1.0 - cfg.beta2,
        eps: cfg.eps,
        step_size: cfg.lr / (1.0 - cfg.beta1.powi(t)),
        bias_correction2_sqrt: (1.0 - cfg.beta2.powi(t)).sqrt(),
    };
    if param.numel() == 0 {
        return Ok(());
    }
    match param.device() {
        Device::Cpu => cpu::adamw_step(param, grad, exp_avg, exp_avg_sq, &coef),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::adamw_step(&dev, param, grad, exp_avg, exp_avg_sq, &coef),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// `Σ x²` over all elements, in f32 (f64 for f64 tensors) with a fixed summation order on both devices,
/// returned on the host (a device tensor is synchronised). NaN or infinite when `x` holds such values.
pub fn squared_norm(x: &Tensor) -> Result<f64> {
    validate::float(x, "x")?;
    if x.numel() == 0 {
        return Ok(0.0);
    }
    match x.device() {
        Device::Cpu => Ok(cpu::squared_norm(x)),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::squared_norm(&dev, x),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// `x ← s·x` in place (computed in f32, f64 for f64), e.g. the clipping of `clip_grad_norm_`.
pub fn scale_in_place(x: &mut Tensor, s: f64) -> Result<()> {
    validate::float(x, "x")?;
    if !s.is_finite() {
        return Err(Error::invalid(
            "s",
            format!("the scale must be finite, got {s}"),
        ));
    }
    if x.numel() == 0 {
        return Ok(());
    }
    match x.device() {
        Device::Cpu => cpu::scale_in_place(x, s),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::scale_in_place(&dev, x, s),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// `torch.nn.utils.clip_grad_norm_(max_norm, norm_type=2)`: the total norm `‖(‖g₁‖, ‖g₂‖, …)‖₂` of `grads`
/// is returned (before clipping) and, when it exceeds `max_norm`, every gradient is scaled by
/// `max_norm / (total + 1e-6)`. A non-finite total norm leaves the gradients untouched and is returned, so
/// the caller can skip the step (PyTorch's `error_if_nonfinite` is the caller's decision here).
pub fn clip_grad_norm(grads: &mut [&mut Tensor], max_norm: f64) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::invalid(
            "max_norm",
            format!("expected a finite value > 0, got {max_norm}"),
        ));
    }
    let mut total = 0.0;
    for g in grads.iter() {
        total += squared_norm(g)?;
    }
    let total = total.sqrt();
    let coef = max_norm / (total + 1e-6);
    if total.is_finite() && coef < 1.0 {
        for g in grads.iter_mut() {
            scale_in_place(g, coef)?;
        }
    }
    Ok(total)
}

fn finite_at_least(value: f64, arg: &str, min: f64) -> Result<()> {
    if value.is_finite() && value >= min {
        Ok(())
    } else {
        Err(Error::invalid(
            arg,
            format!("expected a finite value ≥ {min}, got {value}"),
        ))
    }
}

fn check_sgd(cfg: &SgdConfig) -> Result<()> {
    finite_at_least(cfg.lr, "lr", 0.0)?;
    finite_at_least(cfg.momentum, "momentum", 0.0)?;
    finite_at_least(cfg.weight_decay, "weight_decay", 0.0)?;
    if !cfg.dampening.is_finite() {
        return Err(Error::invalid(
            "dampening",
            format!("expected a finite value, got {}", cfg.dampening),
        ));
    }
    if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
        return Err(Error::invalid(
            "nesterov",
            format!(
                "Nesterov momentum requires momentum > 0 and dampening 0, got momentum {} and dampening {}",
                cfg.momentum, cfg.dampening
            ),
        ));
    }
    Ok(())
}

fn check_adamw(cfg: &AdamWConfig) -> Result<()> {
    finite_at_least(cfg.lr, "lr", 0.0)?;
    finite_at_least(cfg.weight_decay, "weight_decay", 0.0)?;
    for (beta, arg) in [(cfg.beta1, "beta1"), (cfg.beta2, "beta2")] {
        if !(0.0..1.0).contains(&beta) {
            return Err(Error::invalid(
                arg,
                format!("expected a value in [0, 1), got {beta}"),
            ));
        }
    }
    if !(cfg.eps.is_finite() && cfg.eps > 0.0) {
        return Err(Error::invalid(
            "eps",
            format!("expected a finite value > 0, got {}", cfg.eps),
        ));
    }
    Ok(())
}

fn check_param_grad(param: &Tensor, grad: &Tensor) -> Result<()> {
    validate::float(param, "param")?;
    validate::same_device(&[("param", param), ("grad", grad)])?;
    validate::same_dtype(&[("param", param), ("grad", grad)])?;
    validate::shape(grad, "grad", param.shape())
}

fn check_state(state: &Tensor, arg: &str, param: &Tensor) -> Result<()> {
    validate::same_device(&[("param", param), (arg, state)])?;
    validate::dtype(state, arg, state_dtype(param.dtype()))?;
    validate::shape(state, arg, param.shape())
}

#[cfg(test)]
mod tests;
