//! Sigmoid focal losses on classification logits: torchvision's and mmcv's conventions of the focal loss
//! (RetinaNet) and the Quality Focal Loss of GFL (mmdet), each with a forward, a backward and a fused
//! loss-plus-gradient entry, on the CPU and on CUDA. See shared/spec/kernels.md B4 and
//! shared/spec/methods.md §6.7.
//!
//! Notation: `x` a logit, `p = σ(x)`, `1 − p = σ(−x)` (both computed without cancellation), and the stable
//! binary cross-entropy `BCE(x, y) = max(x, 0) − x·y + log1p(exp(−|x|))`.
//!
//! | entry | loss per element | output |
//! | --- | --- | --- |
//! | [`sigmoid_focal_loss`] (torchvision) | `α_t · BCE(x, t) · (1 − p_t)^γ`, `p_t = p·t + (1 − p)(1 − t)`, `α_t = α·t + (1 − α)(1 − t)` if `α ≥ 0` else 1 | logits' shape, or a scalar (mean over all elements) |
//! | [`sigmoid_focal_loss_mmcv`] | positive column (`c == label`): `−α (1 − p)^γ · log(max(p, FLT_MIN))`; other columns: `−(1 − α) p^γ · log(max(1 − p, FLT_MIN))`; times `weight[label]` | `[N, C]`, or a scalar (`mean` divides by N) |
//! | [`quality_focal_loss`] (GFL) | `BCE(x, y) · abs(y − p)^β`, `y` = IoU score at the label's column, 0 elsewhere; summed over classes | `[N]`, or a scalar (mean over anchors, or `sum / (avg_factor + ε)`) |
//!
//! Differentiable input: the logits only. Targets, labels, scores and weights are constants (teacher-side
//! or assigner outputs) and get no gradient. The gradients are the closed forms of methods.md §6.7:
//!
//! - torchvision: `dL/dx = α_t [(p − t)(1 − p_t)^γ + BCE · γ (1 − p_t)^(γ−1) (1 − 2t) p (1 − p)]`;
//! - mmcv (its kernel's closed form, clamped logs included): positive `α (1 − p)^γ (γ p log p − (1 − p))`,
//!   negative `(1 − α) p^γ (p − γ (1 − p) log(1 − p))`;
//! - QFL: `dL/dx = (p − y)|p − y|^β + β · BCE · |p − y|^(β−1) sgn(p − y) · p (1 − p)`.
//!
//! Stability: every form stays finite (never NaN) for finite logits of any size — `±1e4` in f32 included —
//! because `p`, `1 − p`, their logs and the BCE never go through `1 − σ(x)` or `log(σ(x))`. Non-finite
//! logits or torchvision targets are not looked for (that would cost a device-to-host copy of the whole
//! tensor); they propagate NaN, as in PyTorch.
//!
//! The CPU reference accumulates reductions in f64 in a fixed order; CUDA kernels use per-block partial
//! sums and one fixed-order final pass, so every reduced loss is bitwise reproducible run to run.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use super::loss::scalar;
pub use super::loss::{LossAndGrad, Reduction, AVG_FACTOR_EPS};
use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Element, HostElement, Real, Tensor};
use std::borrow::Cow;

/// `ln(FLT_MIN) = −126 · ln 2 ≈ −87.3365`: mmcv clamps `p` and `1 − p` at `FLT_MIN` before taking logs,
/// so its log terms never go below this.
pub const LOG_FLT_MIN: f64 = -126.0 * std::f64::consts::LN_2;

/// torchvision's `sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none")`.
///
/// `loss = α_t · BCE(x, t) · (1 − p_t)^γ` with `p_t = p·t + (1 − p)(1 − t)` and
/// `α_t = α·t + (1 − α)(1 − t)` when `α ≥ 0` (a negative α turns the weighting off). `Mean` averages over
/// all elements.
#[derive(Clone, Debug, PartialEq)]
pub struct SigmoidFocalConfig {
    /// Balances positives against negatives; any finite value, negative = no weighting. Default 0.25.
    pub alpha: f64,
    /// Focusing exponent, finite and ≥ 0 (0 = plain BCE). Default 2.
    pub gamma: f64,
    /// Default [`Reduction::None`], as torchvision.
    pub reduction: Reduction,
}

impl Default for SigmoidFocalConfig {
    /// torchvision's (and RetinaNet's) α = 0.25, γ = 2, no reduction.
    fn default() -> Self {
        SigmoidFocalConfig {
            alpha: 0.25,
            gamma: 2.0,
            reduction: Reduction::None,
        }
    }
}

/// mmcv's `sigmoid_focal_loss(input, target, gamma=2.0, alpha=0.25, weight=None, reduction='mean')`
/// (`mmcv/ops/focal_loss.py`, `sigmoid_focal_loss_cuda_kernel.cuh`).
///
/// For logits `[N, C]` and labels `[N]` in `[0, C]` (`C` = background: every column is negative):
/// the label's column is positive, `−α (1 − p)^γ · log(max(p, FLT_MIN))`; every other column is negative,
/// `−(1 − α) p^γ · log(max(1 − p, FLT_MIN))`. The logs are clamped as mmcv clamps them, so the loss of a
/// confidently wrong logit saturates at `87.34·α` (resp. `87.34·(1 − α)`) beyond |x| ≈ 87.3, where
/// torchvision's grows linearly. `Mean` divides the total by N, not N·C.
#[derive(Clone, Debug, PartialEq)]
pub struct MmcvFocalConfig {
    /// Focusing exponent, finite and ≥ 0. Default 2.
    pub gamma: f64,
    /// Weight of the positive term (the negative term gets `1 − α`); finite. Default 0.25.
    pub alpha: f64,
    /// Default [`Reduction::Mean`], as mmcv.
    pub reduction: Reduction,
}

impl Default for MmcvFocalConfig {
    /// mmcv's γ = 2, α = 0.25, mean over rows.
    fn default() -> Self {
        MmcvFocalConfig {
            gamma: 2.0,
            alpha: 0.25,
            reduction: Reduction::Mean,
        }
    }
}

/// Quality Focal Loss (GFL; mmdet's `quality_focal_loss(pred, (label, score), beta=2.0)` under its
/// `weight_reduce_loss`).
///
/// For logits `[N, C]`, labels `[N]` in `[0, C]` (`C` = background) and IoU scores `[N]` in `[0, 1]`: every
/// column gets `BCE(x, 0) · p^β`, except the label's column of a positive row, which gets
/// `BCE(x, s) · |s − p|^β`; the per-anchor loss is the sum over the C columns, times the optional
/// per-anchor weight. Reductions as mmdet: `None` keeps `[N]`; `Sum` adds; `Mean` divides the sum by N, or
/// by `avg_factor + ε` (ε = f32 epsilon, as mmdet) when `avg_factor` is given. `avg_factor` with `Sum` is an
/// error (mmdet raises); with `None` it is ignored (mmdet returns the weighted per-anchor losses).
#[derive(Clone, Debug, PartialEq)]
pub struct QualityFocalConfig {
    /// Exponent of the quality modulating factor `|y − p|^β`, finite and ≥ 0. Default 2.
    pub beta: f64,
    /// Default [`Reduction::Mean`], as mmdet's `QualityFocalLoss`.
    pub reduction: Reduction,
    /// mmdet's `avg_factor` (GFL passes the number of positives); finite and ≥ 0.
    pub avg_factor: Option<f64>,
}

impl Default for QualityFocalConfig {
    /// GFL's β = 2, mean, no avg_factor.
    fn default() -> Self {
        QualityFocalConfig {
            beta: 2.0,
            reduction: Reduction::Mean,
            avg_factor: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Public entries

/// torchvision's sigmoid focal loss of `logits` against float `targets` of the same shape, dtype and
/// device (any rank; treated as flat). Returns the per-element losses (`Reduction::None`) or a scalar
/// (shape `[]`) in the logits' dtype.
pub fn sigmoid_focal_loss(
    logits: &Tensor,
    targets: &Tensor,
    cfg: &SigmoidFocalConfig,
) -> Result<Tensor> {
    let (plan, inputs) = torchvision_plan(logits, targets, cfg)?;
    forward(&plan, &inputs)
}

/// Gradient of [`sigmoid_focal_loss`] with respect to `logits`, given `grad_out` of the loss's shape
/// (`[]` or `[1]` for a reduced loss) and the logits' dtype and device.
pub fn sigmoid_focal_loss_backward(
    grad_out: &Tensor,
    logits: &Tensor,
    targets: &Tensor,
    cfg: &SigmoidFocalConfig,
) -> Result<Tensor> {
    let (plan, inputs) = torchvision_plan(logits, targets, cfg)?;
    backward(&plan, &inputs, grad_out)
}

/// [`sigmoid_focal_loss`] and its gradient in one pass over the logits, for a `mean` or `sum` reduction:
/// returns the loss and `grad_output · d loss / d logits`.
pub fn sigmoid_focal_loss_fused(
    logits: &Tensor,
    targets: &Tensor,
    cfg: &SigmoidFocalConfig,
    grad_output: f64,
) -> Result<LossAndGrad> {
    let (plan, inputs) = torchvision_plan(logits, targets, cfg)?;
    fused(&plan, &inputs, grad_output)
}

/// mmcv's sigmoid focal loss of `logits` `[N, C]` at `labels` (i64 `[N]`, values in `[0, C]`, `C` =
/// background). `weight` (`[C]`, the logits' dtype) is indexed by the row's label: every column of row n
/// is multiplied by `weight[labels[n]]`, as in mmcv's kernel. mmcv also does that for background rows,
/// reading `weight[C]` one past the end of the buffer; here background rows are left unweighted (factor 1).
///
/// `labels` and `weight` may be on the host or on the logits' device. Returns `[N, C]` or a scalar.
pub fn sigmoid_focal_loss_mmcv(
    logits: &Tensor,
    labels: &Tensor,
    weight: Option<&Tensor>,
    cfg: &MmcvFocalConfig,
) -> Result<Tensor> {
    let (plan, inputs) = mmcv_plan(logits, labels, weight, cfg)?;
    forward(&plan, &inputs)
}

/// Gradient of [`sigmoid_focal_loss_mmcv`] with respect to `logits`: mmcv's closed form times
/// `grad_out` (`[N, C]`, or `[]`/`[1]` for a reduced loss), divided by N for `Mean`.
pub fn sigmoid_focal_loss_mmcv_backward(
    grad_out: &Tensor,
    logits: &Tensor,
    labels: &Tensor,
    weight: Option<&Tensor>,
    cfg: &MmcvFocalConfig,
) -> Result<Tensor> {
    let (plan, inputs) = mmcv_plan(logits, labels, weight, cfg)?;
    backward(&plan, &inputs, grad_out)
}

/// [`sigmoid_focal_loss_mmcv`] and its gradient in one pass, for a `mean` or `sum` reduction.
pub fn sigmoid_focal_loss_mmcv_fused(
    logits: &Tensor,
    labels: &Tensor,
    weight: Option<&Tensor>,
    cfg: &MmcvFocalConfig,
    grad_output: f64,
) -> Result<LossAndGrad> {
    let (plan, inputs) = mmcv_plan(logits, labels, weight, cfg)?;
    fused(&plan, &inputs, grad_output)
}

/// Quality Focal Loss of `logits` `[N, C]` with `labels` (i64 `[N]` in `[0, C]`, `C` = background) and
/// IoU `scores` (`[N]`, the logits' dtype, finite and in `[0, 1]`), optionally weighted per anchor by
/// `weight` (`[N]`). `labels`, `scores` and `weight` may be on the host or on the logits' device.
/// Returns the per-anchor losses `[N]` or a scalar.
pub fn quality_focal_loss(
    logits: &Tensor,
    labels: &Tensor,
    scores: &Tensor,
    weight: Option<&Tensor>,
    cfg: &QualityFocalConfig,
) -> Result<Tensor> {
    let (plan, inputs) = quality_plan(logits, labels, scores, weight, cfg)?;
    forward(&plan, &inputs)
}

/// Gradient of [`quality_focal_loss`] with respect to `logits`, given `grad_out` (`[N]`, or `[]`/`[1]` for
/// a reduced loss).
pub fn quality_focal_loss_backward(
    grad_out: &Tensor,
    logits: &Tensor,
    labels: &Tensor,
    scores: &Tensor,
    weight: Option<&Tensor>,
    cfg: &QualityFocalConfig,
) -> Result<Tensor> {
    let (plan, inputs) = quality_plan(logits, labels, scores, weight, cfg)?;
    backward(&plan, &inputs, grad_out)
}

/// [`quality_focal_loss`] and its gradient in one pass, for a `mean` or `sum` reduction.
pub fn quality_focal_loss_fused(
    logits: &Tensor,
    labels: &Tensor,
    scores: &Tensor,
    weight: Option<&Tensor>,
    cfg: &QualityFocalConfig,
    grad_output: f64,
) -> Result<LossAndGrad> {
    let (plan, inputs) = quality_plan(logits, labels, scores, weight, cfg)?;
    fused(&plan, &inputs, grad_output)
}

// ---------------------------------------------------------------------------------------------------------
// Plans: everything both devices need, validated

/// Which loss, with its (validated) parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Family {
    Torchvision { alpha: f64, gamma: f64 },
    Mmcv { alpha: f64, gamma: f64 },
    Quality { beta: f64 },
}

pub(crate) struct Plan {
    pub family: Family,
    pub logits_shape: Vec<usize>,
    /// N for the label forms; the element count for torchvision (with `classes = 1`).
    pub rows: usize,
    pub classes: usize,
    pub reduction: Reduction,
    /// What the summed loss is divided by: 1 (`sum`), the count (`mean`) or `avg_factor + ε`.
    pub divisor: f64,
}

impl Plan {
    pub fn numel(&self) -> usize {
        self.rows * self.classes
    }

    /// Elements per entry of the unreduced loss: C for QFL's per-anchor loss, else 1.
    pub fn group(&self) -> usize {
        match self.family {
            Family::Quality { .. } => self.classes,
            _ => 1,
        }
    }

    pub fn output_shape(&self) -> Vec<usize> {
        match (self.reduction, self.family) {
            (Reduction::None, Family::Quality { .. }) => vec![self.rows],
            (Reduction::None, _) => self.logits_shape.clone(),
            _ => Vec::new(),
        }
    }
}

/// The tensors of one call (validated by the plan builder).
pub(crate) struct Inputs<'a> {
    pub logits: &'a Tensor,
    pub targets: Option<&'a Tensor>,
    pub labels: Option<&'a Tensor>,
    pub scores: Option<&'a Tensor>,
    pub weight: Option<&'a Tensor>,
}

fn torchvision_plan<'a>(
    logits: &'a Tensor,
    targets: &'a Tensor,
    cfg: &SigmoidFocalConfig,
) -> Result<(Plan, Inputs<'a>)> {
    finite_param("alpha", cfg.alpha)?;
    exponent_param("gamma", cfg.gamma)?;
    validate::float(logits, "logits")?;
    if targets.shape() != logits.shape() {
        return Err(Error::shape(
            "targets",
            format!("{:?} (the logits' shape)", logits.shape()),
            targets.shape(),
        ));
    }
    validate::same_dtype(&[("logits", logits), ("targets", targets)])?;
    validate::same_device(&[("logits", logits), ("targets", targets)])?;
    let numel = logits.numel();
    let plan = Plan {
        family: Family::Torchvision {
            alpha: cfg.alpha,
            gamma: cfg.gamma,
        },
        logits_shape: logits.shape().to_vec(),
        rows: numel,
        classes: 1,
        reduction: cfg.reduction,
        divisor: match cfg.reduction {
            Reduction::Mean => numel as f64,
            _ => 1.0,
        },
    };
    let inputs = Inputs {
        logits,
        targets: Some(targets),
        labels: None,
        scores: None,
        weight: None,
    };
    Ok((plan, inputs))
}

fn mmcv_plan<'a>(
    logits: &'a Tensor,
    labels: &'a Tensor,
    weight: Option<&'a Tensor>,
    cfg: &MmcvFocalConfig,
) -> Result<(Plan, Inputs<'a>)> {
    finite_param("alpha", cfg.alpha)?;
    exponent_param("gamma", cfg.gamma)?;
    let (rows, classes) = logits_rows(logits)?;
    check_labels(labels, rows, classes, &logits.device())?;
    if let Some(w) = weight {
        check_small_input(
            w,
            "weight",
            &[classes],
            "[C] (one weight per class)",
            logits,
        )?;
    }
    let plan = Plan {
        family: Family::Mmcv {
            alpha: cfg.alpha,
            gamma: cfg.gamma,
        },
        logits_shape: logits.shape().to_vec(),
        rows,
        classes,
        reduction: cfg.reduction,
        divisor: match cfg.reduction {
            Reduction::Mean => rows as f64,
            _ => 1.0,
        },
    };
    let inputs = Inputs {
        logits,
        targets: None,
        labels: Some(labels),
        scores: None,
        weight,
    };
    Ok((plan, inputs))
}

fn quality_plan<'a>(
    logits: &'a Tensor,
    labels: &'a Tensor,
    scores: &'a Tensor,
    weight: Option<&'a Tensor>,
    cfg: &QualityFocalConfig,
) -> Result<(Plan, Inputs<'a>)> {
    exponent_param("beta", cfg.beta)?;
    if let Some(a) = cfg.avg_factor {
        if !(a.is_finite() && a >= 0.0) {
            return Err(Error::invalid(
                "avg_factor",
                format!("must be finite and >= 0, got {a}"),
            ));
        }
        if cfg.reduction == Reduction::Sum {
            return Err(Error::invalid(
                "avg_factor",
                "cannot be used with reduction `sum` (as in mmdet's weight_reduce_loss)",
            ));
        }
    }
    let (rows, classes) = logits_rows(logits)?;
    check_labels(labels, rows, classes, &logits.device())?;
    check_small_input(
        scores,
        "scores",
        &[rows],
        "[N] (one IoU score per row)",
        logits,
    )?;
    let values = scores.to_vec::<f64>()?;
    if let Some(n) = values
        .iter()
        .position(|s| !(s.is_finite() && (0.0..=1.0).contains(s)))
    {
        return Err(Error::invalid(
            "scores",
            format!(
                "row {n}: IoU score must be finite and in [0, 1], got {}",
                values[n]
            ),
        ));
    }
    if let Some(w) = weight {
        check_small_input(w, "weight", &[rows], "[N] (one weight per row)", logits)?;
    }
    let divisor = match (cfg.reduction, cfg.avg_factor) {
        (Reduction::Mean, Some(a)) => a + AVG_FACTOR_EPS,
        (Reduction::Mean, None) => rows as f64,
        _ => 1.0,
    };
    let plan = Plan {
        family: Family::Quality { beta: cfg.beta },
        logits_shape: logits.shape().to_vec(),
        rows,
        classes,
        reduction: cfg.reduction,
        divisor,
    };
    let inputs = Inputs {
        logits,
        targets: None,
        labels: Some(labels),
        scores: Some(scores),
        weight,
    };
    Ok((plan, inputs))
}

fn finite_param(name: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(name, format!("must be finite, got {v}")))
    }
}

fn exponent_param(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            name,
            format!("must be finite and >= 0, got {v}"),
        ))
    }
}

/// `logits` must be a float `[N, C]`; returns `(N, C)`.
fn logits_rows(logits: &Tensor) -> Result<(usize, usize)> {
    validate::float(logits, "logits")?;
    validate::rank(logits, "logits", 2, "[N, C]")?;
    Ok((logits.shape()[0], logits.shape()[1]))
}

/// `t` must be on the host or on `device`.
fn host_or(t: &Tensor, arg: &str, device: &Device) -> Result<()> {
    let d = t.device();
    if d.is_cpu() || d == *device {
        Ok(())
    } else {
        Err(Error::Device {
            arg: arg.into(),
            expected: format!("cpu or {device} (the logits' device)"),
            got: d.to_string(),
        })
    }
}

/// Labels: i64 `[N]` on the host or the logits' device, every value in `[0, C]`.
fn check_labels(labels: &Tensor, rows: usize, classes: usize, device: &Device) -> Result<()> {
    validate::dtype(labels, "labels", DType::I64)?;
    if labels.shape() != [rows] {
        return Err(Error::shape(
            "labels",
            format!("[{rows}] (one label per row of logits)"),
            labels.shape(),
        ));
    }
    host_or(labels, "labels", device)?;
    let values = labels.host_values::<i64>()?;
    if let Some(n) = values
        .iter()
        .position(|&l| l < 0 || l as u64 > classes as u64)
    {
        return Err(Error::invalid(
            "labels",
            format!(
                "row {n}: label {} is outside [0, {classes}] ({classes} = background)",
                values[n]
            ),
        ));
    }
    Ok(())
}

/// A per-row or per-class float input: the given shape, the logits' dtype, on the host or their device.
fn check_small_input(
    t: &Tensor,
    arg: &str,
    shape: &[usize],
    layout: &str,
    logits: &Tensor,
) -> Result<()> {
    if t.shape() != shape {
        return Err(Error::shape(arg, layout, t.shape()));
    }
    validate::dtype(t, arg, logits.dtype())?;
    host_or(t, arg, &logits.device())
}

// ---------------------------------------------------------------------------------------------------------
// Drivers shared by the three forms

fn forward(plan: &Plan, inputs: &Inputs<'_>) -> Result<Tensor> {
    let dtype = inputs.logits.dtype();
    let device = inputs.logits.device();
    if plan.numel() == 0 {
        // Nothing to compute, no launch: zeros, or the reduction of nothing (0/0 = NaN for a mean over
        // zero elements, as PyTorch and mmcv give).
        return match plan.reduction {
            Reduction::None => Tensor::zeros(&plan.output_shape(), dtype, &device),
            _ => scalar(0.0 / plan.divisor, dtype, &device),
        };
    }
    match &device {
        Device::Cpu => cpu_forward(plan, inputs, dtype),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::forward(dev, plan, inputs),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

fn backward(plan: &Plan, inputs: &Inputs<'_>, grad_out: &Tensor) -> Result<Tensor> {
    let expected = plan.output_shape();
    let scalar_ok = expected.is_empty() && grad_out.shape() == [1];
    if grad_out.shape() != expected.as_slice() && !scalar_ok {
        return Err(Error::shape(
            "grad_out",
            if expected.is_empty() {
                "[] or [1] (the reduced loss's shape)".to_string()
            } else {
                format!("{expected:?} (the loss's shape)")
            },
            grad_out.shape(),
        ));
    }
    validate::same_dtype(&[("logits", inputs.logits), ("grad_out", grad_out)])?;
    validate::same_device(&[("logits", inputs.logits), ("grad_out", grad_out)])?;
    let dtype = inputs.logits.dtype();
    let device = inputs.logits.device();
    if plan.numel() == 0 {
        return Tensor::zeros(&plan.logits_shape, dtype, &device);
    }
    match &device {
        Device::Cpu => cpu_backward(plan, inputs, grad_out, dtype),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::backward(dev, plan, inputs, grad_out),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

fn fused(plan: &Plan, inputs: &Inputs<'_>, grad_output: f64) -> Result<LossAndGrad> {
    if plan.reduction == Reduction::None {
        return Err(Error::invalid(
            "reduction",
            "the fused loss+gradient entry needs `mean` or `sum` (a scalar loss); use the forward and backward for `none`",
        ));
    }
    finite_param("grad_output", grad_output)?;
    let dtype = inputs.logits.dtype();
    let device = inputs.logits.device();
    if plan.numel() == 0 {
        return Ok(LossAndGrad {
            loss: scalar(0.0 / plan.divisor, dtype, &device)?,
            grad: Tensor::zeros(&plan.logits_shape, dtype, &device)?,
        });
    }
    match &device {
        Device::Cpu => cpu_fused(plan, inputs, grad_output, dtype),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::fused(dev, plan, inputs, grad_output),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// The upstream gradient factor of a reduced loss: `g · (1 / divisor)`, both rounded to `T` first, so the
/// CPU, the CUDA kernels and the fused entries all multiply by the same number.
pub(crate) fn reduced_upstream<T: Real>(g: T, divisor: f64) -> T {
    g * T::from_f64(1.0 / divisor)
}

/// Host copies (borrowed where the storage already is `T`) of every input, for the CPU reference.
struct HostInputs<'a, T: Clone> {
    logits: Cow<'a, [T]>,
    targets: Option<Cow<'a, [T]>>,
    labels: Option<Cow<'a, [i64]>>,
    scores: Option<Cow<'a, [T]>>,
    weight: Option<Cow<'a, [T]>>,
}

impl<'a, T: Real + HostElement> HostInputs<'a, T> {
    fn new(inputs: &Inputs<'a>) -> Result<Self> {
        let values = |t: Option<&'a Tensor>| t.map(|t| t.host_values::<T>()).transpose();
        Ok(HostInputs {
            logits: inputs.logits.host_values::<T>()?,
            targets: values(inputs.targets)?,
            labels: inputs.labels.map(|t| t.host_values::<i64>()).transpose()?,
            scores: values(inputs.scores)?,
            weight: values(inputs.weight)?,
        })
    }

    fn problem(&self, plan: &Plan) -> cpu::Problem<'_, T> {
        let cast = T::from_f64;
        let kind = match plan.family {
            Family::Torchvision { alpha, gamma } => cpu::Kind::Torchvision {
                targets: self.targets.as_deref().unwrap_or(&[]),
                alpha: cast(alpha),
                gamma: cast(gamma),
                use_alpha: alpha >= 0.0,
            },
            Family::Mmcv { alpha, gamma } => cpu::Kind::Mmcv {
                labels: self.labels.as_deref().unwrap_or(&[]),
                classes: plan.classes,
                weight: self.weight.as_deref(),
                alpha: cast(alpha),
                gamma: cast(gamma),
            },
            Family::Quality { beta } => cpu::Kind::Quality {
                labels: self.labels.as_deref().unwrap_or(&[]),
                classes: plan.classes,
                scores: self.scores.as_deref().unwrap_or(&[]),
                weight: self.weight.as_deref(),
                beta: cast(beta),
            },
        };
        cpu::Problem {
            logits: &self.logits,
            kind,
        }
    }
}

/// Runs `f` with the inputs as host `f64` (f64 storage) or `f32` (f32 and half storage, widened).
macro_rules! with_host_inputs {
    ($inputs:expr, $dtype:expr, |$host:ident : $t:ident| $body:expr) => {
        if $dtype == DType::F64 {
            type $t = f64;
            let $host = HostInputs::<f64>::new($inputs)?;
            $body
        } else {
            type $t = f32;
            let $host = HostInputs::<f32>::new($inputs)?;
            $body
        }
    };
}

fn cpu_forward(plan: &Plan, inputs: &Inputs<'_>, dtype: DType) -> Result<Tensor> {
    with_host_inputs!(inputs, dtype, |host: T| {
        let problem = host.problem(plan);
        match plan.reduction {
            Reduction::None => {
                let losses: Vec<T> = cpu::losses(&problem, plan.group());
                Tensor::from_vec(losses, &plan.output_shape())?.into_dtype(dtype)
            }
            _ => scalar(cpu::loss_sum(&problem) / plan.divisor, dtype, &Device::Cpu),
        }
    })
}

fn cpu_backward(
    plan: &Plan,
    inputs: &Inputs<'_>,
    grad_out: &Tensor,
    dtype: DType,
) -> Result<Tensor> {
    with_host_inputs!(inputs, dtype, |host: T| {
        let problem = host.problem(plan);
        let upstream = grad_out.host_values::<T>()?;
        let grad: Vec<T> = match plan.reduction {
            Reduction::None => {
                cpu::gradient(&problem, plan.group(), cpu::Upstream::PerOutput(&upstream))
            }
            _ => cpu::gradient(
                &problem,
                plan.group(),
                cpu::Upstream::Scalar(reduced_upstream(upstream[0], plan.divisor)),
            ),
        };
        Tensor::from_vec(grad, &plan.logits_shape)?.into_dtype(dtype)
    })
}

fn cpu_fused(
    plan: &Plan,
    inputs: &Inputs<'_>,
    grad_output: f64,
    dtype: DType,
) -> Result<LossAndGrad> {
    with_host_inputs!(inputs, dtype, |host: T| {
        let problem = host.problem(plan);
        let upstream = reduced_upstream(T::from_f64(grad_output), plan.divisor);
        let (sum, grad) = cpu::fused(&problem, upstream);
        Ok(LossAndGrad {
            loss: scalar(sum / plan.divisor, dtype, &Device::Cpu)?,
            grad: Tensor::from_vec(grad, &plan.logits_shape)?.into_dtype(dtype)?,
        })
    })
}

#[cfg(test)]
mod tests;
