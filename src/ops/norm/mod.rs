//! Normalisation layers on `[B, C, H, W]` maps, on the CPU and CUDA: BatchNorm2d in training mode (batch
//! statistics, running-statistics update) with its backward, BatchNorm2d in eval mode (running statistics),
//! and GroupNorm with its backward. PyTorch's `F.batch_norm` / `F.group_norm` semantics.
//!
//! # BatchNorm2d (training)
//!
//! Per channel `c`, over the `N = B·H·W` values: `μ = Σx/N`, `σ² = Σ(x − μ)²/N` (biased), `x̂ = (x − μ)/√(σ² +
//! ε)`, `y = γ·x̂ + β` ([`batch_norm_train`]). With running statistics, the updated ones are
//! `(1 − m)·running_mean + m·μ` and `(1 − m)·running_var + m·Σ(x − μ)²/(N − 1)` — the *unbiased* variance, as
//! PyTorch does; training needs `N > 1`. Backward ([`batch_norm_backward`]), with `G = ∂L/∂y`:
//! `dβ = ΣG`, `dγ = ΣG·x̂`, `dx = γ/√(σ² + ε)·(G − dβ/N − x̂·dγ/N)` (the running statistics are not
//! differentiated, as in PyTorch). ε defaults to 1e-5; DRKD's GloRe uses [`DRKD_BATCH_NORM_EPS`] = 1e-4.
//!
//! **Eval** ([`batch_norm_eval`]): `y = γ·(x − running_mean)/√(running_var + ε) + β` (no backward: a frozen
//! teacher's layers need none).
//!
//! # GroupNorm
//!
//! The `C` channels form `G` groups of `C/G`; per image `b` and group `g`, over its `M = (C/G)·H·W` values:
//! `μ`, `σ²` (biased), `x̂` as above, `y = γ_c·x̂ + β_c` ([`group_norm`], ε = 1e-5 by default). Backward
//! ([`group_norm_backward`]), with `d = G·γ_c`: `dx = (d − Σd/M − x̂·Σ(d·x̂)/M)/√(σ² + ε)` per group,
//! `dγ_c = Σ_{b, h, w} G·x̂`, `dβ_c = Σ_{b, h, w} G`.
//!
//! # Conventions
//!
//! `weight` (γ) and `bias` (β) are `[C]` and optional (absent: γ = 1, β = 0; their gradients are still
//! returned, for a caller that learns them). All tensors share one float dtype and device; storage f32,
//! f16 or bf16 (and f64 on the CPU). Statistics and the saved [`NormStats`] are in the compute dtype (f32,
//! f64 for f64); each result is rounded to the storage dtype once. Sums are two-pass (mean, then centred
//! squares) with a fixed order on each device (f64 accumulators on the CPU, per-block tree sums on CUDA):
//! bitwise reproducible run to run, no atomics. An empty batch gives empty outputs without a launch (zero
//! parameter gradients; running statistics returned unchanged, PyTorch's behaviour for empty inputs).
//! Differentiable inputs: `input`, `weight`, `bias`.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// PyTorch's default ε of `BatchNorm2d` and `GroupNorm`.
pub const DEFAULT_EPS: f64 = 1e-5;

/// The ε of the BatchNorm2d in DRKD's GloRe units.
pub const DRKD_BATCH_NORM_EPS: f64 = 1e-4;

/// Settings of [`batch_norm_train`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance; finite and > 0.
    pub eps: f64,
    /// Weight of the batch statistic in the running-statistics update, in `[0, 1]`.
    pub momentum: f64,
}

impl Default for BatchNormConfig {
    /// PyTorch's `BatchNorm2d` defaults: ε = 1e-5, momentum 0.1.
    fn default() -> Self {
        BatchNormConfig {
            eps: DEFAULT_EPS,
            momentum: 0.1,
        }
    }
}

/// Settings of [`group_norm`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormConfig {
    /// `G`: must divide the channel count.
    pub num_groups: usize,
    /// Added to the variance; finite and > 0.
    pub eps: f64,
}

impl Default for GroupNormConfig {
    /// 32 groups (mmdet's GN default), ε = 1e-5.
    fn default() -> Self {
        GroupNormConfig {
            num_groups: 32,
            eps: DEFAULT_EPS,
        }
    }
}

/// Running statistics, `[C]` each.
#[derive(Clone, Copy, Debug)]
pub struct RunningStats<'a> {
    /// The running mean.
    pub mean: &'a Tensor,
    /// The running (unbiased) variance.
    pub var: &'a Tensor,
}

/// The statistics a backward needs: `mean` and `inv_std = 1/√(σ² + ε)` in the compute dtype, `[C]` for
/// BatchNorm and `[B, G]` for GroupNorm (PyTorch's `save_mean` / `save_invstd`, `mean` / `rstd`).
#[derive(Debug)]
pub struct NormStats {
    /// `μ` per channel (BatchNorm) or per image and group (GroupNorm).
    pub mean: Tensor,
    /// `1/√(σ² + ε)`, shaped like `mean`.
    pub inv_std: Tensor,
}

/// The result of [`batch_norm_train`].
#[derive(Debug)]
pub struct BatchNormOutput {
    /// `y`, shaped like the input, in its dtype.
    pub output: Tensor,
    /// The batch statistics, `[C]`, for [`batch_norm_backward`].
    pub stats: NormStats,
    /// The updated running mean (`[C]`, the input's dtype), when running statistics were given.
    pub running_mean: Option<Tensor>,
    /// The updated running variance (`[C]`, the input's dtype), when running statistics were given.
    pub running_var: Option<Tensor>,
}

/// The result of [`group_norm`].
#[derive(Debug)]
pub struct GroupNormOutput {
    /// `y`, shaped like the input, in its dtype.
    pub output: Tensor,
    /// The group statistics, `[B, G]`, for [`group_norm_backward`].
    pub stats: NormStats,
}

/// Gradients of a normalisation, in the input's dtype.
#[derive(Debug)]
pub struct NormGrads {
    /// `[B, C, H, W]`.
    pub input: Tensor,
    /// `dγ`, `[C]`.
    pub weight: Tensor,
    /// `dβ`, `[C]`.
    pub bias: Tensor,
}

/// BatchNorm2d in training mode (see the module docs).
pub fn batch_norm_train(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running: Option<RunningStats<'_>>,
    cfg: &BatchNormConfig,
) -> Result<BatchNormOutput> {
    check_eps(cfg.eps)?;
    if !(cfg.momentum.is_finite() && (0.0..=1.0).contains(&cfg.momentum)) {
        return Err(Error::invalid(
            "momentum",
            format!("must be in [0, 1], got {}", cfg.momentum),
        ));
    }
    let d = check_input(input)?;
    let mut params = affine(weight, bias);
    if let Some(r) = &running {
        params.push(("running_mean", r.mean));
        params.push(("running_var", r.var));
    }
    check_params(input, &params, d.c)?;
    let compute = compute_dtype(input.dtype());
    let device = input.device();
    if d.b == 0 {
        return Ok(BatchNormOutput {
            output: Tensor::zeros(input.shape(), input.dtype(), &device)?,
            stats: NormStats {
                mean: Tensor::zeros(&[d.c], compute, &device)?,
                inv_std: Tensor::zeros(&[d.c], compute, &device)?,
            },
            running_mean: running.map(|r| r.mean.try_clone()).transpose()?,
            running_var: running.map(|r| r.var.try_clone()).transpose()?,
        });
    }
    if d.b * d.plane <= 1 {
        return Err(Error::invalid(
            "input",
            format!(
                "training needs more than one value per channel, got shape {:?} (B·H·W = {})",
                input.shape(),
                d.b * d.plane
            ),
        ));
    }
    match &device {
        Device::Cpu => cpu::batch_norm_train(input, weight, bias, running, cfg, &d),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::batch_norm_train(dev, input, weight, bias, running, cfg, &d),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// Gradients of [`batch_norm_train`] given `grad_output` (shaped like the input, same dtype and device), the
/// forward's `weight` and its `stats`.
pub fn batch_norm_backward(
    input: &Tensor,
    weight: Option<&Tensor>,
    stats: &NormStats,
    grad_output: &Tensor,
) -> Result<NormGrads> {
    let d = check_input(input)?;
    check_params(input, &affine(weight, None), d.c)?;
    check_grad(input, grad_output)?;
    check_stats(input, stats, &[d.c])?;
    if d.b == 0 {
        return empty_grads(input, d.c);
    }
    match &input.device() {
        Device::Cpu => cpu::batch_norm_backward(input, weight, stats, grad_output, &d),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::batch_norm_backward(dev, input, weight, stats, grad_output, &d),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// BatchNorm2d in eval mode: `γ·(x − running_mean)/√(running_var + eps) + β`.
pub fn batch_norm_eval(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running: RunningStats<'_>,
    eps: f64,
) -> Result<Tensor> {
    check_eps(eps)?;
    let d = check_input(input)?;
    let mut params = affine(weight, bias);
    params.push(("running_mean", running.mean));
    params.push(("running_var", running.var));
    check_params(input, &params, d.c)?;
    if d.b == 0 {
        return Tensor::zeros(input.shape(), input.dtype(), &input.device());
    }
    match &input.device() {
        Device::Cpu => cpu::batch_norm_eval(input, weight, bias, running, eps, &d),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::batch_norm_eval(dev, input, weight, bias, running, eps, &d),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// GroupNorm (see the module docs).
pub fn group_norm(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    cfg: &GroupNormConfig,
) -> Result<GroupNormOutput> {
    check_eps(cfg.eps)?;
    let d = check_input(input)?;
    check_groups(cfg.num_groups, d.c)?;
    check_params(input, &affine(weight, bias), d.c)?;
    let compute = compute_dtype(input.dtype());
    let device = input.device();
    if d.b == 0 {
        return Ok(GroupNormOutput {
            output: Tensor::zeros(input.shape(), input.dtype(), &device)?,
            stats: NormStats {
                mean: Tensor::zeros(&[0, cfg.num_groups], compute, &device)?,
                inv_std: Tensor::zeros(&[0, cfg.num_groups], compute, &device)?,
            },
        });
    }
    match &device {
        Device::Cpu => cpu::group_norm(input, weight, bias, cfg, &d),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::group_norm(dev, input, weight, bias, cfg, &d),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// Gradients of [`group_norm`] given `grad_output`, the forward's `weight` and its `stats`.
pub fn group_norm_backward(
    input: &Tensor,
    weight: Option<&Tensor>,
    stats: &NormStats,
    grad_output: &Tensor,
    cfg: &GroupNormConfig,
) -> Result<NormGrads> {
    let d = check_input(input)?;
    check_groups(cfg.num_groups, d.c)?;
    check_params(input, &affine(weight, None), d.c)?;
    check_grad(input, grad_output)?;
    check_stats(input, stats, &[d.b, cfg.num_groups])?;
    if d.b == 0 {
        return empty_grads(input, d.c);
    }
    match &input.device() {
        Device::Cpu => cpu::group_norm_backward(input, weight, stats, grad_output, cfg, &d),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            cuda::group_norm_backward(dev, input, weight, stats, grad_output, cfg, &d)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// Extents of a validated `[B, C, H, W]` input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    pub b: usize,
    pub c: usize,
    /// `H·W`.
    pub plane: usize,
}

/// The dtype statistics are held in: f64 for f64 storage, f32 otherwise.
pub(crate) fn compute_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

fn affine<'a>(
    weight: Option<&'a Tensor>,
    bias: Option<&'a Tensor>,
) -> Vec<(&'static str, &'a Tensor)> {
    let mut params = Vec::new();
    if let Some(w) = weight {
        params.push(("weight", w));
    }
    if let Some(b) = bias {
        params.push(("bias", b));
    }
    params
}

fn check_eps(eps: f64) -> Result<()> {
    if eps.is_finite() && eps > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "eps",
            format!("must be finite and > 0, got {eps}"),
        ))
    }
}

fn check_input(input: &Tensor) -> Result<Dims> {
    validate::rank(input, "input", 4, "[B, C, H, W]")?;
    validate::float(input, "input")?;
    let s = input.shape();
    if s[1] == 0 || s[2] == 0 || s[3] == 0 {
        return Err(Error::shape(
            "input",
            "[B, C, H, W] with C, H, W > 0 (only the batch may be empty)",
            s,
        ));
    }
    validate::fits_i32(s[1], "input", "C")?;
    validate::fits_i32(s[2] * s[3], "input", "H·W")?;
    Ok(Dims {
        b: s[0],
        c: s[1],
        plane: s[2] * s[3],
    })
}

fn check_groups(groups: usize, channels: usize) -> Result<()> {
    if groups == 0 || channels % groups != 0 {
        return Err(Error::invalid(
            "num_groups",
            format!("must be > 0 and divide the {channels} channels, got {groups}"),
        ));
    }
    Ok(())
}

/// Each parameter is `[C]` with the input's dtype and device.
fn check_params(input: &Tensor, params: &[(&str, &Tensor)], channels: usize) -> Result<()> {
    for (arg, t) in params {
        validate::shape(t, arg, &[channels])?;
        validate::same_device(&[("input", input), (arg, t)])?;
        validate::same_dtype(&[("input", input), (arg, t)])?;
    }
    Ok(())
}

fn check_grad(input: &Tensor, grad_output: &Tensor) -> Result<()> {
    validate::shape(grad_output, "grad_output", input.shape())?;
    validate::same_device(&[("input", input), ("grad_output", grad_output)])?;
    validate::same_dtype(&[("input", input), ("grad_output", grad_output)])?;
    Ok(())
}

fn check_stats(input: &Tensor, stats: &NormStats, shape: &[usize]) -> Result<()> {
    let compute = compute_dtype(input.dtype());
    for (arg, t) in [
        ("stats.mean", &stats.mean),
        ("stats.inv_std", &stats.inv_std),
    ] {
        validate::shape(t, arg, shape)?;
        validate::dtype(t, arg, compute)?;
        validate::same_device(&[("input", input), (arg, t)])?;
    }
    Ok(())
}

fn empty_grads(input: &Tensor, channels: usize) -> Result<NormGrads> {
    let (dtype, device) = (input.dtype(), input.device());
    Ok(NormGrads {
        input: Tensor::zeros(input.shape(), dtype, &device)?,
        weight: Tensor::zeros(&[channels], dtype, &device)?,
        bias: Tensor::zeros(&[channels], dtype, &device)?,
    })
}

#[cfg(test)]
mod tests;
