//! Distribution losses on short rows of logits: the temperature KL of localization / logit distillation
//! (LD, mmdet's `knowledge_distillation_kl_div_loss`), GFL's Distribution Focal Loss and GFL's `Integral`
//! (expected bin index of a softmax), forward and backward, on the CPU and on CUDA.
//!
//! Rows are the last dimension: GFL box logits are `[anchors · 4 sides, reg_max + 1]` (17 bins by default),
//! class-logit KD uses `[rows, classes]`. Every softmax is computed as a stable log-softmax (the row maximum is
//! subtracted before exponentiating), in f32 for f32/f16/bf16 storage and in f64 for f64 (CPU only); half
//! results are rounded once at the end. `z / T` is computed as `z · (1/T)` with `1/T` rounded once (PyTorch
//! divides; the two differ by at most one rounding of the scaled logit).
//!
//! # Formulas (shared/spec/methods.md §4, §6.5, §6.6, §6.8)
//!
//! **KD KL** ([`kd_kl_div`]): for student logits `s` and teacher logits `t` (both `[R, B]`), temperature `T`,
//! `p = softmax(z / T)` per row,
//! `L_r = c · T² · Σ_k p^t_k (log p^t_k − log p^s_k)` with `c = 1/B` ([`KlNormalizer::MeanOverBins`], mmdet's
//! `F.kl_div(...).mean(1) * T * T`) or `c = 1` ([`KlNormalizer::SumOverBins`], the plain KL). The teacher is
//! detached: only the student gets a gradient, `∂L_r/∂s_k = c · T · (p^s_k − p^t_k)` (this uses `Σ p^t = 1`).
//!
//! **DFL** ([`distribution_focal_loss`]): for logits `z` `[N, n + 1]` and a continuous target `y ∈ [0, n)`,
//! `l = ⌊y⌋`, `r = l + 1`, `ω_l = r − y`, `ω_r = y − l`,
//! `L = ω_l · CE(z, l) + ω_r · CE(z, r)` with `CE(z, i) = logsumexp(z) − z_i`;
//! `∂L/∂z = (ω_l + ω_r) · softmax(z) − ω_l e_l − ω_r e_r`. The targets get no gradient.
//!
//! **Integral** ([`integral`]): `d = Σ_k k · softmax(z)_k` over the last dimension; `∂d/∂z_k = q_k (k − d)`.
//!
//! # Weights and reductions (mmdet's `weight_reduce_loss`)
//!
//! The two losses take optional per-row weights `w` `[R]` and an optional `avg_factor` ([`LossWeighting`]),
//! and a [`Reduction`] plus a `loss_weight` from their config:
//! - `None`: `loss_weight · w_r · L_r` per row (`avg_factor` is ignored, as in mmdet);
//! - `Sum`: `loss_weight · Σ_r w_r L_r` (an `avg_factor` is an error, as in mmdet);
//! - `Mean`: `loss_weight · Σ_r w_r L_r / R` without `avg_factor` (note: divided by `R`, not by `Σ w`), and
//!   `loss_weight · Σ_r w_r L_r / (avg_factor + ε)` with it, `ε` = f32 machine epsilon (mmdet ≥ 2.x).
//!   With `R = 0` and no `avg_factor` the mean is `0/0 = NaN`, exactly as `torch.mean` of an empty tensor.
//!
//! The backward passes take the upstream gradient of the (reduced or per-row) loss; the fused entries
//! ([`kd_kl_div_fused`], [`distribution_focal_loss_fused`]) read the logits once and return the reduced loss and
//! the gradient for a scalar upstream gradient `grad_scale` (1 when the loss is the final objective).
//!
//! Non-finite logits are not rejected (that would cost a full pass): they give NaN losses and gradients, as in
//! PyTorch. DFL targets are validated on the host (finite, `0 ≤ y < n` in the compute precision), so a target
//! that rounds up to `n` in f32 is an error rather than an out-of-range bin.
//!
//! ```
//! use detkd::ops::dist_kl::{integral, kd_kl_div_fused, IntegralConfig, KdKlConfig, LossWeighting};
//! use detkd::Tensor;
//!
//! // 2 locations × 4 sides, 17 bins: the student is uniform, the teacher peaks at bin 5.
//! let student = Tensor::from_vec(vec![0.0f32; 8 * 17], &[8, 17])?;
//! let teacher = Tensor::from_vec((0..8 * 17).map(|i| if i % 17 == 5 { 40.0f32 } else { 0.0 }).collect(), &[8, 17])?;
//! let ld = kd_kl_div_fused(&student, &teacher, LossWeighting::NONE, &KdKlConfig::ld(), 1.0)?;
//! assert_eq!((ld.loss.shape(), ld.grad.shape()), (&[][..], &[8, 17][..]));
//! let sides = integral(&teacher.reshape(&[2, 4, 17])?, &IntegralConfig::default())?;
//! assert_eq!(sides.shape(), &[2, 4]);
//! # Ok::<(), detkd::Error>(())
//! ```

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use super::loss::scalar;
pub use super::loss::{LossAndGrad, Reduction, AVG_FACTOR_EPS};
use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Element, HostElement, Real, Tensor};

/// GFL's `reg_max`: box sides are distributions over the bins `0, 1, …, 16` (17 bins) in stride units.
pub const GFL_REG_MAX: usize = 16;

/// LD's distillation temperature (`KnowledgeDistillationKLDivLoss(T=10)`, mmdet's default too).
pub const LD_TEMPERATURE: f64 = 10.0;

/// The per-row normaliser `c` of the KD KL (shared/spec/methods.md §6.6).
///
/// mmdet/LD divide the KL sum by the number of bins ([`KlNormalizer::MeanOverBins`]). Dsig's legacy
/// `F.kl_div(reduction='mean')`, `1/(N·K)`, is `MeanOverBins` with [`Reduction::Mean`]; GKD's soft-label
/// `r/(K·R)` is `MeanOverBins` with weights `r` and [`Reduction::Mean`]. The textbook KL per row is
/// [`KlNormalizer::SumOverBins`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KlNormalizer {
    /// `c = 1/B`: `F.kl_div(log_softmax(s/T), softmax(t/T), reduction='none').mean(1) · T²` (mmdet, LD).
    #[default]
    MeanOverBins,
    /// `c = 1`: `F.kl_div(...).sum(1) · T²`.
    SumOverBins,
}

impl KlNormalizer {
    /// `bins_mean` or `bins_sum`, as in configs and parity files.
    pub fn name(self) -> &'static str {
        match self {
            KlNormalizer::MeanOverBins => "bins_mean",
            KlNormalizer::SumOverBins => "bins_sum",
        }
    }

    /// Parses `bins_mean` and `bins_sum`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "bins_mean" => Some(KlNormalizer::MeanOverBins),
            "bins_sum" => Some(KlNormalizer::SumOverBins),
            _ => None,
        }
    }

    fn factor(self, bins: usize) -> f64 {
        match self {
            KlNormalizer::MeanOverBins => 1.0 / bins as f64,
            KlNormalizer::SumOverBins => 1.0,
        }
    }
}

/// Settings of [`kd_kl_div`]: `loss_weight · reduce(w_r · c · T² · KL(p^t_r ‖ p^s_r))`, `p = softmax(z/T)`.
#[derive(Clone, Debug, PartialEq)]
pub struct KdKlConfig {
    /// `T > 0`; LD uses 10 ([`LD_TEMPERATURE`]), LD's class-logit KD 2, Dsig 1.
    pub temperature: f64,
    /// `c`: divide the per-row KL sum by the bin count (mmdet) or not.
    pub normalizer: KlNormalizer,
    /// How the per-row losses are reduced; `Mean` divides by the rows, or by `avg_factor + ε` when given.
    pub reduction: Reduction,
    /// Multiplies the (reduced) loss and its gradient; finite.
    pub loss_weight: f64,
}

impl Default for KdKlConfig {
    /// mmdet's `KnowledgeDistillationKLDivLoss()` defaults: `T = 10`, `c = 1/B`, mean, `loss_weight = 1`.
    fn default() -> Self {
        KdKlConfig {
            temperature: LD_TEMPERATURE,
            normalizer: KlNormalizer::MeanOverBins,
            reduction: Reduction::Mean,
            loss_weight: 1.0,
        }
    }
}

impl KdKlConfig {
    /// LD's main-region localization distillation in mmdet's `ld_r18_gflv1_r101_fpn_coco_1x` config:
    /// `T = 10`, `loss_weight = 0.25` (the LD head passes per-row weights and reduces with mean).
    pub fn ld() -> Self {
        KdKlConfig {
            loss_weight: 0.25,
            ..KdKlConfig::default()
        }
    }
}

/// Settings of [`distribution_focal_loss`].
#[derive(Clone, Debug, PartialEq)]
pub struct DflConfig {
    /// `n`: the logits have `n + 1` bins and targets must lie in `[0, n)`. GFL: 16 ([`GFL_REG_MAX`]).
    pub reg_max: usize,
    /// How the per-row losses are reduced; `Mean` divides by the rows, or by `avg_factor + ε` when given.
    pub reduction: Reduction,
    /// Multiplies the (reduced) loss and its gradient; finite.
    pub loss_weight: f64,
}

impl Default for DflConfig {
    /// mmdet's `DistributionFocalLoss()` defaults with GFL's 17 bins: `reg_max = 16`, mean, `loss_weight = 1`.
    fn default() -> Self {
        DflConfig {
            reg_max: GFL_REG_MAX,
            reduction: Reduction::Mean,
            loss_weight: 1.0,
        }
    }
}

impl DflConfig {
    /// GFL's head config: `loss_dfl=dict(type='DistributionFocalLoss', loss_weight=0.25)`.
    pub fn gfl() -> Self {
        DflConfig {
            loss_weight: 0.25,
            ..DflConfig::default()
        }
    }
}

/// Settings of [`integral`].
#[derive(Clone, Debug, PartialEq)]
pub struct IntegralConfig {
    /// `n`: the last dimension of the logits must be `n + 1`; the result lies in `[0, n]`. GFL: 16.
    pub reg_max: usize,
}

impl Default for IntegralConfig {
    /// GFL's `Integral(reg_max=16)`.
    fn default() -> Self {
        IntegralConfig {
            reg_max: GFL_REG_MAX,
        }
    }
}

/// The per-call arguments of mmdet's `weight_reduce_loss`: optional per-row weights `[R]` (same dtype and
/// device as the logits; constants, no gradient) and an optional `avg_factor` (finite, ≥ 0) for the mean.
#[derive(Clone, Copy, Debug, Default)]
pub struct LossWeighting<'a> {
    /// Per-row weights `[R]`, multiplied into each row's loss before the reduction.
    pub weight: Option<&'a Tensor>,
    /// Replaces the row count as the divisor of `Reduction::Mean` (mmdet divides by `avg_factor + ε`).
    pub avg_factor: Option<f64>,
}

impl<'a> LossWeighting<'a> {
    /// No weights, no `avg_factor`.
    pub const NONE: LossWeighting<'static> = LossWeighting {
        weight: None,
        avg_factor: None,
    };

    /// Weights and `avg_factor` as given.
    pub fn new(weight: Option<&'a Tensor>, avg_factor: Option<f64>) -> Self {
        LossWeighting { weight, avg_factor }
    }
}

// ---------------------------------------------------------------------------------------------------------
// KD KL

/// LD / KD loss of `student` against the detached `teacher` logits, both `[R, B]` (see the module docs).
/// Returns `[R]` for [`Reduction::None`], else a scalar (shape `[]`), in the logits' dtype and device.
pub fn kd_kl_div(
    student: &Tensor,
    teacher: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &KdKlConfig,
) -> Result<Tensor> {
    let plan = LossPlan::kl(student, teacher, weighting, cfg, None)?;
    run_loss(&plan, &Inputs::Kl { student, teacher }, weighting.weight)
}

/// Gradient of [`kd_kl_div`] with respect to `student` (`[R, B]`), given `grad_out`: `[R]` for
/// [`Reduction::None`], else a scalar (shape `[]` or `[1]`), in the logits' dtype and on their device.
/// The teacher gets no gradient.
pub fn kd_kl_div_backward(
    grad_out: &Tensor,
    student: &Tensor,
    teacher: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &KdKlConfig,
) -> Result<Tensor> {
    let plan = LossPlan::kl(student, teacher, weighting, cfg, None)?;
    let mut grad = Tensor::zeros(student.shape(), plan.dtype, &plan.device)?;
    run_backward(
        &plan,
        &Inputs::Kl { student, teacher },
        weighting.weight,
        grad_out,
        &mut grad,
    )?;
    Ok(grad)
}

/// [`kd_kl_div_backward`] writing into a caller-provided gradient tensor (the student's shape, dtype, device).
pub fn kd_kl_div_backward_into(
    grad_out: &Tensor,
    student: &Tensor,
    teacher: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &KdKlConfig,
    grad: &mut Tensor,
) -> Result<()> {
    let plan = LossPlan::kl(student, teacher, weighting, cfg, None)?;
    run_backward(
        &plan,
        &Inputs::Kl { student, teacher },
        weighting.weight,
        grad_out,
        grad,
    )
}

/// [`kd_kl_div`] and its student gradient for the upstream gradient `grad_scale` in one pass over the logits.
/// Needs a reducing config ([`Reduction::Sum`] or [`Reduction::Mean`]).
pub fn kd_kl_div_fused(
    student: &Tensor,
    teacher: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &KdKlConfig,
    grad_scale: f64,
) -> Result<LossAndGrad> {
    let plan = LossPlan::kl(student, teacher, weighting, cfg, Some(grad_scale))?;
    let mut grad = Tensor::zeros(student.shape(), plan.dtype, &plan.device)?;
    let loss = run_fused(
        &plan,
        &Inputs::Kl { student, teacher },
        weighting.weight,
        &mut grad,
    )?;
    Ok(LossAndGrad { loss, grad })
}

/// [`kd_kl_div_fused`] writing the gradient into `grad`; returns the loss.
pub fn kd_kl_div_fused_into(
    student: &Tensor,
    teacher: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &KdKlConfig,
    grad_scale: f64,
    grad: &mut Tensor,
) -> Result<Tensor> {
    let plan = LossPlan::kl(student, teacher, weighting, cfg, Some(grad_scale))?;
    run_fused(
        &plan,
        &Inputs::Kl { student, teacher },
        weighting.weight,
        grad,
    )
}

// ---------------------------------------------------------------------------------------------------------
// DFL

/// GFL's Distribution Focal Loss of `pred` `[N, reg_max + 1]` for float targets `label` `[N]` in
/// `[0, reg_max)` (see the module docs). `label` may be any float dtype, on the host or on `pred`'s device;
/// it is read on the host to be validated. Returns `[N]` for [`Reduction::None`], else a scalar (shape `[]`).
pub fn distribution_focal_loss(
    pred: &Tensor,
    label: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &DflConfig,
) -> Result<Tensor> {
    let plan = LossPlan::dfl(pred, label, weighting, cfg, None)?;
    run_loss(&plan, &Inputs::Dfl { pred, label }, weighting.weight)
}

/// Gradient of [`distribution_focal_loss`] with respect to `pred`, given `grad_out` (`[N]` for
/// [`Reduction::None`], else a scalar of shape `[]` or `[1]`), in `pred`'s dtype and on its device.
pub fn distribution_focal_loss_backward(
    grad_out: &Tensor,
    pred: &Tensor,
    label: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &DflConfig,
) -> Result<Tensor> {
    let plan = LossPlan::dfl(pred, label, weighting, cfg, None)?;
    let mut grad = Tensor::zeros(pred.shape(), plan.dtype, &plan.device)?;
    run_backward(
        &plan,
        &Inputs::Dfl { pred, label },
        weighting.weight,
        grad_out,
        &mut grad,
    )?;
    Ok(grad)
}

/// [`distribution_focal_loss_backward`] writing into a caller-provided gradient tensor.
pub fn distribution_focal_loss_backward_into(
    grad_out: &Tensor,
    pred: &Tensor,
    label: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &DflConfig,
    grad: &mut Tensor,
) -> Result<()> {
    let plan = LossPlan::dfl(pred, label, weighting, cfg, None)?;
    run_backward(
        &plan,
        &Inputs::Dfl { pred, label },
        weighting.weight,
        grad_out,
        grad,
    )
}

/// [`distribution_focal_loss`] and its gradient for the upstream gradient `grad_scale` in one pass.
/// Needs a reducing config ([`Reduction::Sum`] or [`Reduction::Mean`]).
pub fn distribution_focal_loss_fused(
    pred: &Tensor,
    label: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &DflConfig,
    grad_scale: f64,
) -> Result<LossAndGrad> {
    let plan = LossPlan::dfl(pred, label, weighting, cfg, Some(grad_scale))?;
    let mut grad = Tensor::zeros(pred.shape(), plan.dtype, &plan.device)?;
    let loss = run_fused(
        &plan,
        &Inputs::Dfl { pred, label },
        weighting.weight,
        &mut grad,
    )?;
    Ok(LossAndGrad { loss, grad })
}

/// [`distribution_focal_loss_fused`] writing the gradient into `grad`; returns the loss.
pub fn distribution_focal_loss_fused_into(
    pred: &Tensor,
    label: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &DflConfig,
    grad_scale: f64,
    grad: &mut Tensor,
) -> Result<Tensor> {
    let plan = LossPlan::dfl(pred, label, weighting, cfg, Some(grad_scale))?;
    run_fused(&plan, &Inputs::Dfl { pred, label }, weighting.weight, grad)
}

// ---------------------------------------------------------------------------------------------------------
// Integral

/// GFL's `Integral`: `d = Σ_k k · softmax(z)_k` over the last dimension of `logits` `[..., reg_max + 1]`.
/// Returns the logits' shape without the last dimension, in their dtype and on their device.
pub fn integral(logits: &Tensor, cfg: &IntegralConfig) -> Result<Tensor> {
    let plan = IntegralPlan::new(logits, cfg)?;
    let mut out = Tensor::zeros(&plan.out_shape, plan.dtype, &plan.device)?;
    integral_forward_checked(&plan, logits, &mut out)?;
    Ok(out)
}

/// [`integral`] writing into a caller-provided tensor of the output shape, dtype and device.
pub fn integral_into(logits: &Tensor, cfg: &IntegralConfig, out: &mut Tensor) -> Result<()> {
    let plan = IntegralPlan::new(logits, cfg)?;
    integral_forward_checked(&plan, logits, out)
}

/// Gradient of [`integral`] with respect to `logits`: `grad_k = g · q_k (k − d)`, given `grad_out` of the
/// output's shape (same dtype and device as the logits).
pub fn integral_backward(
    grad_out: &Tensor,
    logits: &Tensor,
    cfg: &IntegralConfig,
) -> Result<Tensor> {
    let plan = IntegralPlan::new(logits, cfg)?;
    let mut grad = Tensor::zeros(logits.shape(), plan.dtype, &plan.device)?;
    integral_backward_checked(&plan, grad_out, logits, &mut grad)?;
    Ok(grad)
}

/// [`integral_backward`] writing into a caller-provided gradient tensor (the logits' shape, dtype, device).
pub fn integral_backward_into(
    grad_out: &Tensor,
    logits: &Tensor,
    cfg: &IntegralConfig,
    grad: &mut Tensor,
) -> Result<()> {
    let plan = IntegralPlan::new(logits, cfg)?;
    integral_backward_checked(&plan, grad_out, logits, grad)
}

// ---------------------------------------------------------------------------------------------------------
// Plans: everything both devices need, validated.

/// The inputs of one loss call.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // `label` is read by the CUDA path
pub(crate) enum Inputs<'a> {
    Kl {
        student: &'a Tensor,
        teacher: &'a Tensor,
    },
    Dfl {
        pred: &'a Tensor,
        label: &'a Tensor,
    },
}

impl Inputs<'_> {
    /// The differentiable logits: their shape is the gradient's.
    fn logits(&self) -> (&Tensor, &'static str) {
        match self {
            Inputs::Kl { student, .. } => (student, "student"),
            Inputs::Dfl { pred, .. } => (pred, "pred"),
        }
    }
}

/// Which loss a plan describes, and its op-specific constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum LossKind {
    Kl { temperature: f64 },
    Dfl,
}

/// A validated loss call. `loss_coef` multiplies every row's raw loss (KL sum or DFL cross-entropies),
/// `grad_coef` every row's raw gradient (`p^s − p^t`, or `softmax − targets`); both already hold
/// `loss_weight`, the reduction's divisor and, for the KL, `c · T²` resp. `c · T`; for a fused call
/// `grad_coef` also holds the upstream gradient.
pub(crate) struct LossPlan {
    pub kind: LossKind,
    pub rows: usize,
    pub bins: usize,
    pub dtype: DType,
    pub device: Device,
    pub reduction: Reduction,
    /// `Mean` without `avg_factor` over zero rows: the result is NaN (0/0), as in PyTorch.
    pub empty_mean: bool,
    pub loss_coef: f64,
    pub grad_coef: f64,
    /// DFL targets as host f64 values, checked in the compute precision (empty for the KL).
    pub labels: Vec<f64>,
}

impl LossPlan {
    fn kl(
        student: &Tensor,
        teacher: &Tensor,
        weighting: LossWeighting<'_>,
        cfg: &KdKlConfig,
        grad_scale: Option<f64>,
    ) -> Result<LossPlan> {
        let t = cfg.temperature;
        if !(t.is_finite() && t > 0.0) {
            return Err(Error::invalid(
                "temperature",
                format!("must be finite and > 0, got {t}"),
            ));
        }
        let (rows, bins) = logits_2d(student, "student", "[R, B] (rows, bins)")?;
        validate::shape(teacher, "teacher", &[rows, bins])?;
        let device = validate::same_device(&[("student", student), ("teacher", teacher)])?;
        let dtype = validate::same_dtype(&[("student", student), ("teacher", teacher)])?;
        validate::float(student, "student")?;
        let c = cfg.normalizer.factor(bins);
        let mut plan = LossPlan::common(
            LossKind::Kl { temperature: t },
            rows,
            bins,
            (dtype, device),
            weighting,
            cfg.reduction,
            cfg.loss_weight,
            grad_scale,
        )?;
        plan.loss_coef *= c * t * t;
        plan.grad_coef *= c * t;
        Ok(plan)
    }

    fn dfl(
        pred: &Tensor,
        label: &Tensor,
        weighting: LossWeighting<'_>,
        cfg: &DflConfig,
        grad_scale: Option<f64>,
    ) -> Result<LossPlan> {
        if cfg.reg_max == 0 {
            return Err(Error::invalid(
                "reg_max",
                "must be >= 1 (two bins at least)",
            ));
        }
        let layout = format!("[N, {}] (samples, reg_max + 1 bins)", cfg.reg_max + 1);
        let (rows, bins) = logits_2d(pred, "pred", &layout)?;
        if bins != cfg.reg_max + 1 {
            return Err(Error::shape("pred", layout, pred.shape()));
        }
        let dtype = validate::float(pred, "pred")?;
        let device = pred.device();
        validate::shape(label, "label", &[rows])?;
        validate::float(label, "label")?;
        if !label.device().is_cpu() && label.device() != device {
            return Err(Error::Device {
                arg: "label".into(),
                expected: format!("the host or {device}"),
                got: label.device().to_string(),
            });
        }
        let labels = checked_labels(label, cfg.reg_max, dtype == DType::F64)?;
        let mut plan = LossPlan::common(
            LossKind::Dfl,
            rows,
            bins,
            (dtype, device),
            weighting,
            cfg.reduction,
            cfg.loss_weight,
            grad_scale,
        )?;
        plan.labels = labels;
        Ok(plan)
    }

    #[allow(clippy::too_many_arguments)]
    fn common(
        kind: LossKind,
        rows: usize,
        bins: usize,
        (dtype, device): (DType, Device),
        weighting: LossWeighting<'_>,
        reduction: Reduction,
        loss_weight: f64,
        grad_scale: Option<f64>,
    ) -> Result<LossPlan> {
        if !loss_weight.is_finite() {
            return Err(Error::invalid(
                "loss_weight",
                format!("must be finite, got {loss_weight}"),
            ));
        }
        if let Some(w) = weighting.weight {
            validate::shape(w, "weight", &[rows])?;
            validate::dtype(w, "weight", dtype)?;
            if w.device() != device {
                return Err(Error::Device {
                    arg: "weight".into(),
                    expected: device.to_string(),
                    got: w.device().to_string(),
                });
            }
        }
        let divisor = match (reduction, weighting.avg_factor) {
            (_, Some(a)) if !(a.is_finite() && a >= 0.0) => {
                return Err(Error::invalid(
                    "avg_factor",
                    format!("must be finite and >= 0, got {a}"),
                ))
            }
            (Reduction::Sum, Some(_)) => {
                return Err(Error::invalid(
                    "avg_factor",
                    "cannot be used with reduction `sum` (mmdet raises here too); use `mean`",
                ))
            }
            (Reduction::None, _) | (Reduction::Sum, None) => 1.0,
            (Reduction::Mean, Some(a)) => a + AVG_FACTOR_EPS,
            (Reduction::Mean, None) => rows.max(1) as f64,
        };
        let upstream = match grad_scale {
            None => 1.0,
            Some(_) if reduction == Reduction::None => {
                return Err(Error::invalid(
                    "reduction",
                    "a fused loss + gradient needs reduction `sum` or `mean`, got `none`",
                ))
            }
            Some(g) if !g.is_finite() => {
                return Err(Error::invalid(
                    "grad_scale",
                    format!("must be finite, got {g}"),
                ))
            }
            Some(g) => g,
        };
        validate::fits_i32(bins, "logits", "B (bins per row)")?;
        let scale = loss_weight / divisor;
        Ok(LossPlan {
            kind,
            rows,
            bins,
            dtype,
            device,
            reduction,
            empty_mean: rows == 0 && reduction == Reduction::Mean && weighting.avg_factor.is_none(),
            loss_coef: scale,
            grad_coef: scale * upstream,
            labels: Vec::new(),
        })
    }

    /// The shape of the loss: `[R]` or a scalar.
    fn loss_shape(&self) -> Vec<usize> {
        match self.reduction {
            Reduction::None => vec![self.rows],
            _ => vec![],
        }
    }
}

/// `[R, B]` with `B ≥ 1`; returns `(R, B)`.
fn logits_2d(t: &Tensor, arg: &str, layout: &str) -> Result<(usize, usize)> {
    validate::rank(t, arg, 2, layout)?;
    let (rows, bins) = (t.shape()[0], t.shape()[1]);
    if bins == 0 {
        return Err(Error::shape(
            arg,
            format!("{layout} with B >= 1"),
            t.shape(),
        ));
    }
    Ok((rows, bins))
}

/// DFL targets as host f64, after checking that each is finite and in `[0, reg_max)` once rounded to the
/// compute precision (f64 for f64 logits, f32 otherwise), so `⌊y⌋ + 1` is always a valid bin.
fn checked_labels(label: &Tensor, reg_max: usize, f64_compute: bool) -> Result<Vec<f64>> {
    let values = label.to_vec::<f64>()?;
    let n = reg_max as f64;
    for (i, &y) in values.iter().enumerate() {
        let rounded = if f64_compute { y } else { y as f32 as f64 };
        if !(rounded.is_finite() && rounded >= 0.0 && rounded < n) {
            let why = if !y.is_finite() {
                "must be finite".to_string()
            } else if rounded != y && y < n {
                format!("rounds to {rounded} in f32, outside [0, {reg_max})")
            } else {
                format!("must lie in [0, reg_max = {reg_max})")
            };
            return Err(Error::invalid(
                "label",
                format!("element {i} is {y}: {why} (the right bin floor(y) + 1 must exist)"),
            ));
        }
    }
    Ok(values)
}

/// A validated `Integral` call.
pub(crate) struct IntegralPlan {
    pub rows: usize,
    pub bins: usize,
    pub dtype: DType,
    pub device: Device,
    pub out_shape: Vec<usize>,
}

impl IntegralPlan {
    fn new(logits: &Tensor, cfg: &IntegralConfig) -> Result<IntegralPlan> {
        let bins = cfg.reg_max + 1;
        let shape = logits.shape();
        let layout = format!("[..., {bins}] (reg_max + 1 bins last)");
        if shape.last() != Some(&bins) {
            return Err(Error::shape("logits", layout, shape));
        }
        let dtype = validate::float(logits, "logits")?;
        validate::fits_i32(bins, "logits", "B (bins per row)")?;
        let out_shape = shape[..shape.len() - 1].to_vec();
        Ok(IntegralPlan {
            rows: out_shape.iter().product(),
            bins,
            dtype,
            device: logits.device(),
            out_shape,
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Dispatch

/// The loss of an empty call: `[0]`, or the sum 0, or the mean 0 (with `avg_factor`) or NaN (without).
fn empty_loss(plan: &LossPlan) -> Result<Tensor> {
    match plan.reduction {
        Reduction::None => Tensor::zeros(&[0], plan.dtype, &plan.device),
        _ => scalar(
            if plan.empty_mean { f64::NAN } else { 0.0 },
            plan.dtype,
            &plan.device,
        ),
    }
}

fn run_loss(plan: &LossPlan, inputs: &Inputs<'_>, weight: Option<&Tensor>) -> Result<Tensor> {
    if plan.rows == 0 {
        return empty_loss(plan);
    }
    match &plan.device {
        Device::Cpu => {
            let shape = plan.loss_shape();
            if plan.dtype == DType::F64 {
                let v = cpu_losses::<f64>(plan, inputs, weight)?;
                Tensor::from_vec(v, &shape)
            } else {
                let v = cpu_losses::<f32>(plan, inputs, weight)?;
                Tensor::from_vec(v, &shape)?.into_dtype(plan.dtype)
            }
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let mut rows_out = match plan.reduction {
                Reduction::None => Some(Tensor::zeros(&[plan.rows], plan.dtype, &plan.device)?),
                _ => None,
            };
            let total =
                cuda::launch_loss(dev, plan, inputs, weight, None, rows_out.as_mut(), None)?;
            match (rows_out, total) {
                (Some(rows), _) => Ok(rows),
                (None, Some(total)) => Ok(total),
                (None, None) => Err(Error::invalid("reduction", "no loss was produced")),
            }
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// The per-row losses (`none`) or the one-element reduced loss, computed in `T`.
fn cpu_losses<T: Real + HostElement>(
    plan: &LossPlan,
    inputs: &Inputs<'_>,
    weight: Option<&Tensor>,
) -> Result<Vec<T>> {
    let weight = weight.map(|w| w.host_values::<T>()).transpose()?;
    let rows = with_cpu_rows::<T, _>(plan, inputs, |data| {
        Ok(cpu::run(plan, &data, weight.as_deref(), None, None))
    })?;
    Ok(reduce_rows(plan, rows))
}

/// `none`: the rows as they are; otherwise their sum, accumulated in f64 in row order (deterministic).
fn reduce_rows<T: Real>(plan: &LossPlan, rows: Vec<T>) -> Vec<T> {
    match plan.reduction {
        Reduction::None => rows,
        _ => vec![T::from_f64(rows.iter().map(|&v| Element::to_f64(v)).sum())],
    }
}

/// Widens the inputs to `T` on the host (borrowing where they already are `T`) and calls `f`.
fn with_cpu_rows<T: Real + HostElement, R>(
    plan: &LossPlan,
    inputs: &Inputs<'_>,
    f: impl FnOnce(cpu::RowData<'_, T>) -> Result<R>,
) -> Result<R> {
    match inputs {
        Inputs::Kl { student, teacher } => {
            let s = student.host_values::<T>()?;
            let t = teacher.host_values::<T>()?;
            f(cpu::RowData::Kl {
                student: &s,
                teacher: &t,
                inv_temperature: match plan.kind {
                    LossKind::Kl { temperature } => T::from_f64(1.0 / temperature),
                    LossKind::Dfl => T::one(),
                },
            })
        }
        Inputs::Dfl { pred, .. } => {
            let z = pred.host_values::<T>()?;
            let labels: Vec<T> = plan.labels.iter().map(|&y| T::from_f64(y)).collect();
            f(cpu::RowData::Dfl {
                pred: &z,
                labels: &labels,
            })
        }
    }
}

fn run_backward(
    plan: &LossPlan,
    inputs: &Inputs<'_>,
    weight: Option<&Tensor>,
    grad_out: &Tensor,
    grad: &mut Tensor,
) -> Result<()> {
    validate::loss_grad_out(
        grad_out,
        plan.reduction,
        plan.rows,
        plan.dtype,
        &plan.device,
    )?;
    let (logits, _) = inputs.logits();
    validate::output(grad, "grad", logits.shape(), plan.dtype, &plan.device)?;
    if plan.rows == 0 {
        return Ok(()); // empty gradient, no launch
    }
    match &plan.device {
        Device::Cpu => {
            if plan.dtype == DType::F64 {
                *grad = Tensor::from_vec(
                    cpu_grad::<f64>(plan, inputs, weight, grad_out)?,
                    logits.shape(),
                )?;
            } else {
                *grad = Tensor::from_vec(
                    cpu_grad::<f32>(plan, inputs, weight, grad_out)?,
                    logits.shape(),
                )?
                .into_dtype(plan.dtype)?;
            }
            Ok(())
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            cuda::launch_loss(dev, plan, inputs, weight, Some(grad_out), None, Some(grad))?;
            Ok(())
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

fn cpu_grad<T: Real + HostElement>(
    plan: &LossPlan,
    inputs: &Inputs<'_>,
    weight: Option<&Tensor>,
    grad_out: &Tensor,
) -> Result<Vec<T>> {
    let weight = weight.map(|w| w.host_values::<T>()).transpose()?;
    let upstream = grad_out.host_values::<T>()?;
    let mut grad = vec![T::zero(); plan.rows * plan.bins];
    with_cpu_rows::<T, _>(plan, inputs, |data| {
        cpu::run(
            plan,
            &data,
            weight.as_deref(),
            Some(cpu::Upstream::new(&upstream, plan.reduction)),
            Some(&mut grad),
        );
        Ok(())
    })?;
    Ok(grad)
}

fn run_fused(
    plan: &LossPlan,
    inputs: &Inputs<'_>,
    weight: Option<&Tensor>,
    grad: &mut Tensor,
) -> Result<Tensor> {
    let (logits, _) = inputs.logits();
    validate::output(grad, "grad", logits.shape(), plan.dtype, &plan.device)?;
    if plan.rows == 0 {
        return empty_loss(plan);
    }
    match &plan.device {
        Device::Cpu => {
            if plan.dtype == DType::F64 {
                let (loss, g) = cpu_fused::<f64>(plan, inputs, weight)?;
                *grad = Tensor::from_vec(g, logits.shape())?;
                scalar(loss, plan.dtype, &plan.device)
            } else {
                let (loss, g) = cpu_fused::<f32>(plan, inputs, weight)?;
                *grad = Tensor::from_vec(g, logits.shape())?.into_dtype(plan.dtype)?;
                scalar(loss, plan.dtype, &plan.device)
            }
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::launch_loss(dev, plan, inputs, weight, None, None, Some(grad))?
            .ok_or_else(|| Error::invalid("reduction", "no loss was produced")),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// The reduced loss (rounded to `T` once, returned as f64 for the scalar constructor) and the gradient.
fn cpu_fused<T: Real + HostElement>(
    plan: &LossPlan,
    inputs: &Inputs<'_>,
    weight: Option<&Tensor>,
) -> Result<(f64, Vec<T>)> {
    let weight = weight.map(|w| w.host_values::<T>()).transpose()?;
    let mut grad = vec![T::zero(); plan.rows * plan.bins];
    let rows = with_cpu_rows::<T, _>(plan, inputs, |data| {
        Ok(cpu::run(
            plan,
            &data,
            weight.as_deref(),
            Some(cpu::Upstream::Constant),
            Some(&mut grad),
        ))
    })?;
    let loss = reduce_rows(plan, rows)[0];
    Ok((Element::to_f64(loss), grad))
}

fn integral_forward_checked(plan: &IntegralPlan, logits: &Tensor, out: &mut Tensor) -> Result<()> {
    validate::output(out, "out", &plan.out_shape, plan.dtype, &plan.device)?;
    if plan.rows == 0 {
        return Ok(());
    }
    match &plan.device {
        Device::Cpu => {
            *out = if plan.dtype == DType::F64 {
                let z = logits.host_values::<f64>()?;
                Tensor::from_vec(cpu::integral_forward(&z, plan.bins), &plan.out_shape)?
            } else {
                let z = logits.host_values::<f32>()?;
                Tensor::from_vec(cpu::integral_forward(&z, plan.bins), &plan.out_shape)?
                    .into_dtype(plan.dtype)?
            };
            Ok(())
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::launch_integral(dev, plan, logits, None, Some(out), None),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

fn integral_backward_checked(
    plan: &IntegralPlan,
    grad_out: &Tensor,
    logits: &Tensor,
    grad: &mut Tensor,
) -> Result<()> {
    validate::shape(grad_out, "grad_out", &plan.out_shape)?;
    validate::dtype(grad_out, "grad_out", plan.dtype)?;
    if grad_out.device() != plan.device {
        return Err(Error::Device {
            arg: "grad_out".into(),
            expected: plan.device.to_string(),
            got: grad_out.device().to_string(),
        });
    }
    validate::output(grad, "grad", logits.shape(), plan.dtype, &plan.device)?;
    if plan.rows == 0 {
        return Ok(());
    }
    match &plan.device {
        Device::Cpu => {
            *grad = if plan.dtype == DType::F64 {
                let z = logits.host_values::<f64>()?;
                let g = grad_out.host_values::<f64>()?;
                Tensor::from_vec(cpu::integral_backward(&z, plan.bins, &g), logits.shape())?
            } else {
                let z = logits.host_values::<f32>()?;
                let g = grad_out.host_values::<f32>()?;
                Tensor::from_vec(cpu::integral_backward(&z, plan.bins, &g), logits.shape())?
                    .into_dtype(plan.dtype)?
            };
            Ok(())
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            cuda::launch_integral(dev, plan, logits, Some(grad_out), None, Some(grad))
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

#[cfg(test)]
mod tests;
