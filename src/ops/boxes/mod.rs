//! Box geometry for GFL's losses, ATSS assignment and LD's distillation (shared/spec/methods.md §4, §6.9):
//! GFL's distance ↔ box transforms, mmdet's `bbox_overlaps` (IoU, GIoU, DIoU; aligned pairs and the
//! pairwise matrix) and the GIoU loss with its gradient, on the CPU and on CUDA.
//!
//! Boxes are `[N, 4]` rows `(x1, y1, x2, y2)`, points `[N, 2]` rows `(x, y)`, distances `[N, 4]` rows
//! `(l, t, r, b)` from the point to the box's sides. Every tensor of one call shares its dtype and device:
//! f32, f16 or bf16 on either device, f64 on the CPU (for gradchecks). Arithmetic is f32 for f32 and half
//! storage (results rounded once to the storage dtype) and f64 for f64.
//!
//! # Formulas
//!
//! **distance2bbox** ([`distance2bbox`], mmdet's `distance2bbox`): `(px − l, py − t, px + r, py + b)`; with
//! `max_shape = (H, W)` the x coordinates are clamped to `[0, W]` and the y coordinates to `[0, H]`.
//! Backward (to the distances only; points are anchor centres, constants):
//! `∂/∂l = −g_x1, ∂/∂t = −g_y1, ∂/∂r = g_x2, ∂/∂b = g_y2`, and 0 for a coordinate that was clamped.
//! **Boundary convention** (PyTorch 2.15's `clamp`, checked against the pinned peer): the gradient passes
//! only strictly inside `(0, W)` resp. `(0, H)`; a coordinate landing exactly on `0`, `W` or `H` gets
//! gradient 0, like a clamped one.
//!
//! **bbox2distance** ([`bbox2distance`], mmdet's `bbox2distance`, no gradient):
//! `(px − x1, py − y1, x2 − px, y2 − py)`, each clamped to `[0, max_dist − eps]` when `max_dist` is given
//! (GFL: `max_dist = reg_max = 16`, `eps = 0.1`, so DFL targets stay below 16).
//!
//! **Overlaps** ([`overlaps_aligned`], [`box_overlaps`]; mmdet's `bbox_overlaps(a, b, mode, is_aligned,
//! eps)`): with `A_a, A_b` the (signed) areas, `I = max(0, min(x2, X2) − max(x1, X1)) · max(0, min(y2, Y2)
//! − max(y1, Y1))`, `U = max(A_a + A_b − I, eps)`:
//! - IoU `= I / U`;
//! - GIoU `= I/U − (C − U)/C` with `C = max(cw · ch, eps)`, `cw, ch` the enclosing box's clamped sides;
//! - DIoU `= I/U − ρ²/c²` with `ρ²` the squared distance of the centres (`((X1 + X2) − (x1 + x2))²/4 + …`)
//!   and `c² = max(cw² + ch², eps)`. This is `bbox_overlaps(mode='diou')` of the LD repository with the
//!   overlap over the union as methods.md §4 defines it; that repository's code divides by `max(A_a, eps)`
//!   instead (its `union = area1` branch), which [`DiouOverlap::FirstArea`] reproduces.
//!
//! The unions and enclosing areas are clamped with `torch.max(·, eps)`, not offset by eps, exactly as
//! mmdet's `bbox_overlaps` does (its `diou_loss`/`giou_loss` functions default to other eps values:
//! [`GiouLossConfig::eps`] is `GIoULoss`'s 1e-6).
//!
//! **GIoU loss** ([`giou_loss`], mmdet's `GIoULoss` = `giou_loss` under `weight_reduce_loss`): per pair
//! `L_r = 1 − GIoU(pred_r, target_r)`, then `loss_weight · reduce(w_r · L_r)` with optional per-row weights
//! `w` and `avg_factor` ([`LossWeighting`]): `None` keeps `[N]`, `Sum` adds (an `avg_factor` is an error,
//! as in mmdet), `Mean` divides by `N` or by `avg_factor + ε` (ε = [`AVG_FACTOR_EPS`]). Backward to `pred`
//! only (methods.md §6.9): `∂L/∂I = −1/U`, `∂L/∂U = I/U² − 1/C`, `∂L/∂C = U/C²`, then through
//! `U = A_p + A_g − I`, the products, the clamps at 0 (gradient where the difference is `> 0`), the
//! `max(·, eps)` clamps and the max/min of the coordinates.
//!
//! **Ties** (checked against PyTorch 2.15): the gradient of `torch.max(a, b)`/`torch.min(a, b)` of two
//! tensors goes to the larger (smaller) operand and is **split in half at a tie** — so identical or
//! side-sharing boxes send half of each shared side's gradient to `pred` — and `clamp(min=0)` passes no
//! gradient at exactly 0 (touching boxes: the zero-width overlap gets none). The same halving applies where
//! `A_p + A_g − I` or the enclosing area equals `eps` exactly.
//!
//! # Inputs, NaN and empty calls
//!
//! Targets, ground-truth boxes and anchor points are validated on the host (finite, else an `Err` naming
//! the row): `target` of the loss, `b` of the overlaps (the GT side of `[anchors, gt]`), `points` and
//! `boxes` of the transforms; on CUDA this costs one device-to-host copy of that input. Predictions
//! (`pred`, the distances, `a` of the overlaps) and loss weights are not scanned: NaN there propagates to
//! the results — the max/min and clamps here keep NaN, where `f32::max`/`fmaxf` would silently drop it.
//! Box corners are not required to be ordered: a reversed box has a negative area and is used as mmdet
//! uses it. N = 0 (or M = 0) gives an empty result, and the losses give `[0]`, a sum of 0, a mean over
//! nothing of **NaN** (`torch.mean` of an empty tensor) or 0 with `avg_factor`, all without a launch.
//! mmdet's `GIoULoss.forward` returns `(pred · weight).sum()` when no weight is positive; that shortcut is
//! not reproduced: for all-zero weights both give a zero loss and gradient (but `Reduction::None` keeps
//! its `[N]` shape here), and for N = 0 with weights given mmdet's shortcut returns 0 where the mean here
//! is NaN.
//!
//! The kernels index with 64 bits and loop over rows, columns and tiles beyond the grid limits, so every
//! size that fits in memory is accepted. The CPU reference accumulates reductions in f64 in a fixed
//! order; the CUDA kernels use per-block partial sums and one fixed-order final pass, so every reduced
//! loss is bitwise reproducible run to run.
//!
//! ```
//! use detkd::ops::boxes::{box_iou, distance2bbox, giou_loss_fused, GiouLossConfig, LossWeighting, OverlapConfig};
//! use detkd::Tensor;
//!
//! let centres = Tensor::from_vec(vec![8.0f32, 8.0, 24.0, 8.0], &[2, 2])?;
//! let sides = Tensor::from_vec(vec![4.0f32, 4.0, 4.0, 4.0, 2.0, 3.0, 5.0, 6.0], &[2, 4])?;
//! let pred = distance2bbox(&centres, &sides, None)?;
//! let gt = Tensor::from_vec(vec![3.0f32, 3.0, 13.0, 13.0, 20.0, 4.0, 30.0, 14.0], &[2, 4])?;
//! let giou = giou_loss_fused(&pred, &gt, LossWeighting::NONE, &GiouLossConfig::gfl(), 1.0)?;
//! assert_eq!((giou.loss.shape(), giou.grad.shape()), (&[][..], &[2, 4][..]));
//! let ious = box_iou(&pred, &gt, &OverlapConfig::default())?;
//! assert_eq!(ious.shape(), &[2, 2]);
//! # Ok::<(), detkd::Error>(())
//! ```

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

pub use super::dist_kl::LossWeighting;
use super::loss::scalar;
pub use super::loss::{LossAndGrad, Reduction, AVG_FACTOR_EPS};
use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Element, HostElement, Real, Tensor};

/// mmdet's `bbox_overlaps(..., eps=1e-6)`: the floor of unions, enclosing areas and diagonals.
pub const OVERLAP_EPS: f64 = 1e-6;

/// mmdet's `GIoULoss(eps=1e-6)`, passed on to `bbox_overlaps(mode='giou', is_aligned=True)`.
pub const GIOU_LOSS_EPS: f64 = 1e-6;

/// mmdet's `bbox2distance(..., eps=0.1)`: targets are clamped to `max_dist − 0.1`.
pub const BBOX2DISTANCE_EPS: f64 = 0.1;

/// GFL's `loss_bbox=dict(type='GIoULoss', loss_weight=2.0)` (LD's GFL heads too).
pub const GFL_GIOU_LOSS_WEIGHT: f64 = 2.0;

/// Which `bbox_overlaps` mode an overlap op computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OverlapKind {
    /// `I / U`.
    #[default]
    Iou,
    /// `I/U − (C − U)/C`.
    Giou,
    /// `I/U − ρ²/c²` (see [`DiouOverlap`] for the first term).
    Diou,
}

impl OverlapKind {
    /// `iou`, `giou` or `diou`, as mmdet's `mode=`.
    pub fn name(self) -> &'static str {
        match self {
            OverlapKind::Iou => "iou",
            OverlapKind::Giou => "giou",
            OverlapKind::Diou => "diou",
        }
    }

    /// Parses the names printed by [`OverlapKind::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "iou" => Some(OverlapKind::Iou),
            "giou" => Some(OverlapKind::Giou),
            "diou" => Some(OverlapKind::Diou),
            _ => None,
        }
    }

    /// The kernels' `KIND_*` value.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn code(self) -> i32 {
        match self {
            OverlapKind::Iou => 0,
            OverlapKind::Giou => 1,
            OverlapKind::Diou => 2,
        }
    }
}

/// The overlap term of DIoU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiouOverlap {
    /// `I / max(A_a + A_b − I, eps)`: the IoU, as DIoU is defined (methods.md §4, the DIoU paper).
    #[default]
    Union,
    /// `I / max(A_a, eps)`: what the LD repository's `bbox_overlaps(mode='diou')` computes (its `diou`
    /// mode falls into the `union = area1` branch meant for `iof`). With `a` = anchors as LD's VLR assigner
    /// calls it, this is the fraction of the anchor covered by the GT.
    FirstArea,
}

impl DiouOverlap {
    /// `union` or `first_area`.
    pub fn name(self) -> &'static str {
        match self {
            DiouOverlap::Union => "union",
            DiouOverlap::FirstArea => "first_area",
        }
    }

    /// Parses the names printed by [`DiouOverlap::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "union" => Some(DiouOverlap::Union),
            "first_area" => Some(DiouOverlap::FirstArea),
            _ => None,
        }
    }
}

/// Settings of the overlap ops.
#[derive(Clone, Debug, PartialEq)]
pub struct OverlapConfig {
    /// Floor of the union, the enclosing area (GIoU) and the enclosing diagonal² (DIoU); finite, > 0.
    pub eps: f64,
    /// DIoU's overlap term; ignored by IoU and GIoU.
    pub diou_overlap: DiouOverlap,
}

impl Default for OverlapConfig {
    /// mmdet's `bbox_overlaps` default eps 1e-6, DIoU over the union.
    fn default() -> Self {
        OverlapConfig {
            eps: OVERLAP_EPS,
            diou_overlap: DiouOverlap::Union,
        }
    }
}

impl OverlapConfig {
    /// The LD repository's `bbox_overlaps(mode='diou')` exactly (see [`DiouOverlap::FirstArea`]).
    pub fn ld_repo() -> Self {
        OverlapConfig {
            diou_overlap: DiouOverlap::FirstArea,
            ..OverlapConfig::default()
        }
    }
}

/// Settings of [`giou_loss`]: `loss_weight · reduce(w_r · (1 − GIoU(pred_r, target_r)))`.
#[derive(Clone, Debug, PartialEq)]
pub struct GiouLossConfig {
    /// `bbox_overlaps`' eps for the union and enclosing area; finite, > 0. Default 1e-6 (`GIoULoss`).
    pub eps: f64,
    /// Default [`Reduction::Mean`], as `GIoULoss`.
    pub reduction: Reduction,
    /// Multiplies the (reduced) loss and its gradient; finite. Default 1.
    pub loss_weight: f64,
}

impl Default for GiouLossConfig {
    /// mmdet's `GIoULoss()`: eps 1e-6, mean, `loss_weight = 1`.
    fn default() -> Self {
        GiouLossConfig {
            eps: GIOU_LOSS_EPS,
            reduction: Reduction::Mean,
            loss_weight: 1.0,
        }
    }
}

impl GiouLossConfig {
    /// GFL's (and LD's) `GIoULoss(loss_weight=2.0)`. mmdet's GFL and LD heads pass the per-positive
    /// weights `w_j` with `avg_factor = 1` and divide the result by `W = Σ w_j` afterwards (methods.md §4);
    /// `avg_factor = W` gives the same loss in one call.
    pub fn gfl() -> Self {
        GiouLossConfig {
            loss_weight: GFL_GIOU_LOSS_WEIGHT,
            ..GiouLossConfig::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// distance2bbox / bbox2distance

/// GFL's decoded boxes `[N, 4]` from anchor `points` `[N, 2]` and side `distances` `[N, 4]` `(l, t, r, b)`,
/// clamped to the image when `max_shape = Some((H, W))` (finite, ≥ 0). See the module docs.
pub fn distance2bbox(
    points: &Tensor,
    distances: &Tensor,
    max_shape: Option<(f64, f64)>,
) -> Result<Tensor> {
    let plan = TransformPlan::distance2bbox(points, distances, max_shape)?;
    let mut out = Tensor::zeros(&[plan.rows, 4], plan.dtype, &plan.device)?;
    run_distance2bbox(&plan, points, distances, &mut out)?;
    Ok(out)
}

/// [`distance2bbox`] writing into a caller-provided `[N, 4]` tensor of the inputs' dtype and device.
pub fn distance2bbox_into(
    points: &Tensor,
    distances: &Tensor,
    max_shape: Option<(f64, f64)>,
    out: &mut Tensor,
) -> Result<()> {
    let plan = TransformPlan::distance2bbox(points, distances, max_shape)?;
    run_distance2bbox(&plan, points, distances, out)
}

/// Gradient of [`distance2bbox`] with respect to `distances`, given `grad_out` `[N, 4]` (the boxes'
/// gradient, same dtype and device). Zero where a coordinate was clamped or lies exactly on the image
/// boundary (module docs). The points get no gradient.
pub fn distance2bbox_backward(
    grad_out: &Tensor,
    points: &Tensor,
    distances: &Tensor,
    max_shape: Option<(f64, f64)>,
) -> Result<Tensor> {
    let plan = TransformPlan::distance2bbox(points, distances, max_shape)?;
    let mut grad = Tensor::zeros(&[plan.rows, 4], plan.dtype, &plan.device)?;
    run_distance2bbox_backward(&plan, grad_out, points, distances, &mut grad)?;
    Ok(grad)
}

/// [`distance2bbox_backward`] writing into a caller-provided `[N, 4]` gradient tensor.
pub fn distance2bbox_backward_into(
    grad_out: &Tensor,
    points: &Tensor,
    distances: &Tensor,
    max_shape: Option<(f64, f64)>,
    grad: &mut Tensor,
) -> Result<()> {
    let plan = TransformPlan::distance2bbox(points, distances, max_shape)?;
    run_distance2bbox_backward(&plan, grad_out, points, distances, grad)
}

/// GFL's regression targets `[N, 4]` `(l, t, r, b)` from anchor `points` `[N, 2]` to `boxes` `[N, 4]`,
/// clamped to `[0, max_dist − eps]` when `max_dist` is given (GFL: `Some(16.0)`, eps
/// [`BBOX2DISTANCE_EPS`]). No gradient. `eps` must be finite and ≥ 0, `max_dist` finite with
/// `max_dist − eps ≥ 0`.
pub fn bbox2distance(
    points: &Tensor,
    boxes: &Tensor,
    max_dist: Option<f64>,
    eps: f64,
) -> Result<Tensor> {
    let plan = TransformPlan::bbox2distance(points, boxes, max_dist, eps)?;
    let mut out = Tensor::zeros(&[plan.rows, 4], plan.dtype, &plan.device)?;
    run_bbox2distance(&plan, points, boxes, &mut out)?;
    Ok(out)
}

/// [`bbox2distance`] writing into a caller-provided `[N, 4]` tensor.
pub fn bbox2distance_into(
    points: &Tensor,
    boxes: &Tensor,
    max_dist: Option<f64>,
    eps: f64,
    out: &mut Tensor,
) -> Result<()> {
    let plan = TransformPlan::bbox2distance(points, boxes, max_dist, eps)?;
    run_bbox2distance(&plan, points, boxes, out)
}

// ---------------------------------------------------------------------------------------------------------
// Overlaps

/// `bbox_overlaps(a, b, mode=kind, is_aligned=True, eps)`: one value per pair `(a[i], b[i])`, `[N]`.
/// `b` (the reference / GT side) is validated finite; NaN in `a` propagates. No gradient.
pub fn overlaps_aligned(
    a: &Tensor,
    b: &Tensor,
    kind: OverlapKind,
    cfg: &OverlapConfig,
) -> Result<Tensor> {
    let plan = OverlapPlan::aligned(a, b, kind, cfg)?;
    let mut out = Tensor::zeros(&plan.out_shape(), plan.dtype, &plan.device)?;
    run_overlaps(&plan, a, b, &mut out)?;
    Ok(out)
}

/// [`overlaps_aligned`] writing into a caller-provided `[N]` tensor of the inputs' dtype and device.
pub fn overlaps_aligned_into(
    a: &Tensor,
    b: &Tensor,
    kind: OverlapKind,
    cfg: &OverlapConfig,
    out: &mut Tensor,
) -> Result<()> {
    let plan = OverlapPlan::aligned(a, b, kind, cfg)?;
    run_overlaps(&plan, a, b, out)
}

/// Aligned IoU `[N]` (e.g. GFL's QFL targets: `iou_aligned(pred.detach(), gt)`).
pub fn iou_aligned(a: &Tensor, b: &Tensor, cfg: &OverlapConfig) -> Result<Tensor> {
    overlaps_aligned(a, b, OverlapKind::Iou, cfg)
}

/// Aligned GIoU `[N]` (`1 −` [`giou_loss`]'s per-row loss, without weights).
pub fn giou_aligned(a: &Tensor, b: &Tensor, cfg: &OverlapConfig) -> Result<Tensor> {
    overlaps_aligned(a, b, OverlapKind::Giou, cfg)
}

/// Aligned DIoU `[N]`.
pub fn diou_aligned(a: &Tensor, b: &Tensor, cfg: &OverlapConfig) -> Result<Tensor> {
    overlaps_aligned(a, b, OverlapKind::Diou, cfg)
}

/// `bbox_overlaps(a, b, mode=kind, eps)`: the `[N, M]` matrix between every box of `a` `[N, 4]` (rows, e.g.
/// anchors) and every box of `b` `[M, 4]` (columns, e.g. GT boxes, validated finite). No gradient.
pub fn box_overlaps(
    a: &Tensor,
    b: &Tensor,
    kind: OverlapKind,
    cfg: &OverlapConfig,
) -> Result<Tensor> {
    let plan = OverlapPlan::pairwise(a, b, kind, cfg)?;
    let mut out = Tensor::zeros(&plan.out_shape(), plan.dtype, &plan.device)?;
    run_overlaps(&plan, a, b, &mut out)?;
    Ok(out)
}

/// [`box_overlaps`] writing into a caller-provided `[N, M]` tensor.
pub fn box_overlaps_into(
    a: &Tensor,
    b: &Tensor,
    kind: OverlapKind,
    cfg: &OverlapConfig,
    out: &mut Tensor,
) -> Result<()> {
    let plan = OverlapPlan::pairwise(a, b, kind, cfg)?;
    run_overlaps(&plan, a, b, out)
}

/// Pairwise IoU `[N, M]` (ATSS: `box_iou(anchors, gt)`).
pub fn box_iou(a: &Tensor, b: &Tensor, cfg: &OverlapConfig) -> Result<Tensor> {
    box_overlaps(a, b, OverlapKind::Iou, cfg)
}

/// Pairwise GIoU `[N, M]`.
pub fn box_giou(a: &Tensor, b: &Tensor, cfg: &OverlapConfig) -> Result<Tensor> {
    box_overlaps(a, b, OverlapKind::Giou, cfg)
}

/// Pairwise DIoU `[N, M]` (LD's VLR: `box_diou(anchors, gt)`; [`OverlapConfig::ld_repo`] for the LD code's
/// exact variant).
pub fn box_diou(a: &Tensor, b: &Tensor, cfg: &OverlapConfig) -> Result<Tensor> {
    box_overlaps(a, b, OverlapKind::Diou, cfg)
}

// ---------------------------------------------------------------------------------------------------------
// GIoU loss

/// GIoU loss of `pred` `[N, 4]` against `target` `[N, 4]` (validated finite), optionally weighted per row
/// (see the module docs). Returns `[N]` for [`Reduction::None`], else a scalar (shape `[]`).
pub fn giou_loss(
    pred: &Tensor,
    target: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &GiouLossConfig,
) -> Result<Tensor> {
    let plan = GiouPlan::new(pred, target, weighting, cfg, None)?;
    let mut out = Tensor::zeros(&plan.loss_shape(), plan.dtype, &plan.device)?;
    run_giou_loss(&plan, pred, target, weighting.weight, &mut out)?;
    Ok(out)
}

/// [`giou_loss`] writing into a caller-provided tensor of the loss's shape (`[N]` or `[]`), dtype and
/// device. A reduced loss replaces `out` with a new scalar tensor.
pub fn giou_loss_into(
    pred: &Tensor,
    target: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &GiouLossConfig,
    out: &mut Tensor,
) -> Result<()> {
    let plan = GiouPlan::new(pred, target, weighting, cfg, None)?;
    run_giou_loss(&plan, pred, target, weighting.weight, out)
}

/// Gradient of [`giou_loss`] with respect to `pred` (`[N, 4]`), given `grad_out`: `[N]` for
/// [`Reduction::None`], else a scalar (`[]` or `[1]`), in the inputs' dtype and on their device. The
/// target and weights get no gradient.
pub fn giou_loss_backward(
    grad_out: &Tensor,
    pred: &Tensor,
    target: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &GiouLossConfig,
) -> Result<Tensor> {
    let plan = GiouPlan::new(pred, target, weighting, cfg, None)?;
    let mut grad = Tensor::zeros(&[plan.rows, 4], plan.dtype, &plan.device)?;
    run_giou_backward(&plan, grad_out, pred, target, weighting.weight, &mut grad)?;
    Ok(grad)
}

/// [`giou_loss_backward`] writing into a caller-provided `[N, 4]` gradient tensor.
pub fn giou_loss_backward_into(
    grad_out: &Tensor,
    pred: &Tensor,
    target: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &GiouLossConfig,
    grad: &mut Tensor,
) -> Result<()> {
    let plan = GiouPlan::new(pred, target, weighting, cfg, None)?;
    run_giou_backward(&plan, grad_out, pred, target, weighting.weight, grad)
}

/// [`giou_loss`] and its `pred` gradient for the upstream gradient `grad_scale` in one pass over the
/// boxes. Needs [`Reduction::Sum`] or [`Reduction::Mean`].
pub fn giou_loss_fused(
    pred: &Tensor,
    target: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &GiouLossConfig,
    grad_scale: f64,
) -> Result<LossAndGrad> {
    let plan = GiouPlan::new(pred, target, weighting, cfg, Some(grad_scale))?;
    let mut grad = Tensor::zeros(&[plan.rows, 4], plan.dtype, &plan.device)?;
    let loss = run_giou_fused(&plan, pred, target, weighting.weight, grad_scale, &mut grad)?;
    Ok(LossAndGrad { loss, grad })
}

/// [`giou_loss_fused`] writing the gradient into `grad` (`[N, 4]`); returns the loss.
pub fn giou_loss_fused_into(
    pred: &Tensor,
    target: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &GiouLossConfig,
    grad_scale: f64,
    grad: &mut Tensor,
) -> Result<Tensor> {
    let plan = GiouPlan::new(pred, target, weighting, cfg, Some(grad_scale))?;
    run_giou_fused(&plan, pred, target, weighting.weight, grad_scale, grad)
}

// ---------------------------------------------------------------------------------------------------------
// Validation

/// A float `[N, cols]` tensor; returns N.
fn rows_of(t: &Tensor, arg: &str, cols: usize, layout: &str) -> Result<usize> {
    validate::float(t, arg)?;
    if t.rank() != 2 || t.shape()[1] != cols {
        return Err(Error::shape(arg, layout, t.shape()));
    }
    Ok(t.shape()[0])
}

/// `t` must be `[rows, cols]`, one row per row of `other`.
fn same_rows(t: &Tensor, arg: &str, rows: usize, cols: usize, other: &str) -> Result<()> {
    validate::float(t, arg)?;
    if t.shape() != [rows, cols] {
        return Err(Error::shape(
            arg,
            format!("[{rows}, {cols}] (one row per row of `{other}`)"),
            t.shape(),
        ));
    }
    Ok(())
}

/// Every tensor of a call shares one dtype and one device; returns them.
fn common(tensors: &[(&str, &Tensor)]) -> Result<(DType, Device)> {
    let device = validate::same_device(tensors)?;
    let dtype = validate::same_dtype(tensors)?;
    Ok((dtype, device))
}

/// Every coordinate of `t` (`[N, C]`) must be finite; the message names the row and column. Reads a device
/// tensor back to the host.
fn check_finite(t: &Tensor, arg: &str, what: &str) -> Result<()> {
    let cols = t.shape().get(1).copied().unwrap_or(1).max(1);
    let values = t.host_values::<f64>()?;
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::invalid(
            arg,
            format!(
                "row {}, column {} is {}: {what} must be finite",
                i / cols,
                i % cols,
                values[i]
            ),
        )),
    }
}

/// A parameter that must be finite and > 0.
fn positive_param(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            name,
            format!("must be finite and > 0, got {v}"),
        ))
    }
}

/// Runs `$body` with `$t` = f64 for f64 storage and f32 otherwise (half storage is widened).
macro_rules! with_compute {
    ($dtype:expr, |$t:ident| $body:expr) => {
        if $dtype == DType::F64 {
            type $t = f64;
            $body
        } else {
            type $t = f32;
            $body
        }
    };
}

/// `*out = data` as a host tensor of `shape` in `dtype`.
fn write_host<T: HostElement>(
    out: &mut Tensor,
    data: Vec<T>,
    shape: &[usize],
    dtype: DType,
) -> Result<()> {
    *out = Tensor::from_vec(data, shape)?.into_dtype(dtype)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Transforms

/// A validated distance2bbox / bbox2distance call.
pub(crate) struct TransformPlan {
    pub rows: usize,
    pub dtype: DType,
    pub device: Device,
    /// distance2bbox: `(H, W)` of the image; bbox2distance: `(max_dist − eps, _)`.
    pub bound: Option<(f64, f64)>,
}

impl TransformPlan {
    fn distance2bbox(
        points: &Tensor,
        distances: &Tensor,
        max_shape: Option<(f64, f64)>,
    ) -> Result<TransformPlan> {
        let rows = rows_of(distances, "distances", 4, "[N, 4] (l, t, r, b)")?;
        same_rows(points, "points", rows, 2, "distances")?;
        let (dtype, device) = common(&[("distances", distances), ("points", points)])?;
        if let Some((h, w)) = max_shape {
            if !(h.is_finite() && w.is_finite() && h >= 0.0 && w >= 0.0) {
                return Err(Error::invalid(
                    "max_shape",
                    format!("(H, W) must be finite and >= 0, got ({h}, {w})"),
                ));
            }
        }
        check_finite(points, "points", "anchor points")?;
        Ok(TransformPlan {
            rows,
            dtype,
            device,
            bound: max_shape,
        })
    }

    fn bbox2distance(
        points: &Tensor,
        boxes: &Tensor,
        max_dist: Option<f64>,
        eps: f64,
    ) -> Result<TransformPlan> {
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::invalid(
                "eps",
                format!("must be finite and >= 0, got {eps}"),
            ));
        }
        let bound = match max_dist {
            None => None,
            Some(m) if m.is_finite() && m - eps >= 0.0 => Some((m - eps, 0.0)),
            Some(m) => {
                return Err(Error::invalid(
                    "max_dist",
                    format!("must be finite with max_dist - eps >= 0 (eps = {eps}), got {m}"),
                ))
            }
        };
        let rows = rows_of(boxes, "boxes", 4, "[N, 4] (x1, y1, x2, y2)")?;
        same_rows(points, "points", rows, 2, "boxes")?;
        let (dtype, device) = common(&[("boxes", boxes), ("points", points)])?;
        check_finite(points, "points", "anchor points")?;
        check_finite(boxes, "boxes", "target boxes")?;
        Ok(TransformPlan {
            rows,
            dtype,
            device,
            bound,
        })
    }

    fn bound_as<T: Real>(&self) -> Option<(T, T)> {
        self.bound.map(|(a, b)| (T::from_f64(a), T::from_f64(b)))
    }
}

fn run_distance2bbox(
    plan: &TransformPlan,
    points: &Tensor,
    distances: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    validate::output(out, "out", &[plan.rows, 4], plan.dtype, &plan.device)?;
    if plan.rows == 0 {
        return Ok(());
    }
    match &plan.device {
        Device::Cpu => with_compute!(plan.dtype, |T| {
            let p = points.host_values::<T>()?;
            let d = distances.host_values::<T>()?;
            let boxes = cpu::distance2bbox(&p, &d, plan.bound_as::<T>());
            write_host(out, boxes, &[plan.rows, 4], plan.dtype)
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::distance2bbox(dev, plan, points, distances, out),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

fn run_distance2bbox_backward(
    plan: &TransformPlan,
    grad_out: &Tensor,
    points: &Tensor,
    distances: &Tensor,
    grad: &mut Tensor,
) -> Result<()> {
    validate::shape(grad_out, "grad_out", &[plan.rows, 4])?;
    common(&[("distances", distances), ("grad_out", grad_out)])?;
    validate::output(grad, "grad", &[plan.rows, 4], plan.dtype, &plan.device)?;
    if plan.rows == 0 {
        return Ok(());
    }
    match &plan.device {
        Device::Cpu => with_compute!(plan.dtype, |T| {
            let p = points.host_values::<T>()?;
            let d = distances.host_values::<T>()?;
            let g = grad_out.host_values::<T>()?;
            let dd = cpu::distance2bbox_backward(&p, &d, &g, plan.bound_as::<T>());
            write_host(grad, dd, &[plan.rows, 4], plan.dtype)
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            cuda::distance2bbox_backward(dev, plan, points, distances, grad_out, grad)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

fn run_bbox2distance(
    plan: &TransformPlan,
    points: &Tensor,
    boxes: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    validate::output(out, "out", &[plan.rows, 4], plan.dtype, &plan.device)?;
    if plan.rows == 0 {
        return Ok(());
    }
    match &plan.device {
        Device::Cpu => with_compute!(plan.dtype, |T| {
            let p = points.host_values::<T>()?;
            let b = boxes.host_values::<T>()?;
            let upper = plan.bound_as::<T>().map(|(hi, _)| hi);
            write_host(
                out,
                cpu::bbox2distance(&p, &b, upper),
                &[plan.rows, 4],
                plan.dtype,
            )
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::bbox2distance(dev, plan, points, boxes, out),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Overlaps

/// A validated overlap call: `cols = None` for aligned pairs, `Some(M)` for the pairwise matrix.
pub(crate) struct OverlapPlan {
    pub rows: usize,
    pub cols: Option<usize>,
    pub kind: OverlapKind,
    pub eps: f64,
    pub first_area: bool,
    pub dtype: DType,
    pub device: Device,
}

impl OverlapPlan {
    fn aligned(
        a: &Tensor,
        b: &Tensor,
        kind: OverlapKind,
        cfg: &OverlapConfig,
    ) -> Result<OverlapPlan> {
        positive_param("eps", cfg.eps)?;
        let rows = rows_of(a, "a", 4, "[N, 4] (x1, y1, x2, y2)")?;
        same_rows(b, "b", rows, 4, "a")?;
        OverlapPlan::finish(a, b, rows, None, kind, cfg)
    }

    fn pairwise(
        a: &Tensor,
        b: &Tensor,
        kind: OverlapKind,
        cfg: &OverlapConfig,
    ) -> Result<OverlapPlan> {
        positive_param("eps", cfg.eps)?;
        let rows = rows_of(a, "a", 4, "[N, 4] (x1, y1, x2, y2)")?;
        let cols = rows_of(b, "b", 4, "[M, 4] (x1, y1, x2, y2)")?;
        if rows.checked_mul(cols).is_none() {
            return Err(Error::invalid(
                "b",
                format!("an [{rows}, {cols}] result has more elements than fit in memory"),
            ));
        }
        OverlapPlan::finish(a, b, rows, Some(cols), kind, cfg)
    }

    fn finish(
        a: &Tensor,
        b: &Tensor,
        rows: usize,
        cols: Option<usize>,
        kind: OverlapKind,
        cfg: &OverlapConfig,
    ) -> Result<OverlapPlan> {
        let (dtype, device) = common(&[("a", a), ("b", b)])?;
        check_finite(b, "b", "reference (GT) boxes")?;
        Ok(OverlapPlan {
            rows,
            cols,
            kind,
            eps: cfg.eps,
            first_area: kind == OverlapKind::Diou && cfg.diou_overlap == DiouOverlap::FirstArea,
            dtype,
            device,
        })
    }

    fn out_shape(&self) -> Vec<usize> {
        match self.cols {
            None => vec![self.rows],
            Some(m) => vec![self.rows, m],
        }
    }

    fn numel(&self) -> usize {
        self.rows * self.cols.unwrap_or(1)
    }

    fn spec<T: Real>(&self) -> cpu::OverlapSpec<T> {
        cpu::OverlapSpec {
            kind: self.kind,
            first_area: self.first_area,
            eps: T::from_f64(self.eps),
        }
    }
}

fn run_overlaps(plan: &OverlapPlan, a: &Tensor, b: &Tensor, out: &mut Tensor) -> Result<()> {
    let shape = plan.out_shape();
    validate::output(out, "out", &shape, plan.dtype, &plan.device)?;
    if plan.numel() == 0 {
        return Ok(());
    }
    match &plan.device {
        Device::Cpu => with_compute!(plan.dtype, |T| {
            let (ha, hb) = (a.host_values::<T>()?, b.host_values::<T>()?);
            let spec = plan.spec::<T>();
            let values = match plan.cols {
                None => cpu::overlaps_aligned(&ha, &hb, &spec),
                Some(_) => cpu::box_overlaps(&ha, &hb, &spec),
            };
            write_host(out, values, &shape, plan.dtype)
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::overlaps(dev, plan, a, b, out),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// GIoU loss

/// A validated GIoU loss call. `loss_coef = loss_weight / divisor` multiplies every weighted row loss
/// (`divisor` = 1, N or `avg_factor + ε`); the gradient of row r is `dL_r/dp · w_r · loss_coef · upstream`.
pub(crate) struct GiouPlan {
    pub rows: usize,
    pub dtype: DType,
    pub device: Device,
    pub reduction: Reduction,
    pub eps: f64,
    pub loss_coef: f64,
    /// `Mean` without `avg_factor` over zero rows: NaN, as `torch.mean` of an empty tensor.
    pub empty_mean: bool,
}

impl GiouPlan {
    fn new(
        pred: &Tensor,
        target: &Tensor,
        weighting: LossWeighting<'_>,
        cfg: &GiouLossConfig,
        grad_scale: Option<f64>,
    ) -> Result<GiouPlan> {
        positive_param("eps", cfg.eps)?;
        if !cfg.loss_weight.is_finite() {
            return Err(Error::invalid(
                "loss_weight",
                format!("must be finite, got {}", cfg.loss_weight),
            ));
        }
        let rows = rows_of(pred, "pred", 4, "[N, 4] (x1, y1, x2, y2)")?;
        same_rows(target, "target", rows, 4, "pred")?;
        let mut tensors = vec![("pred", pred), ("target", target)];
        if let Some(w) = weighting.weight {
            validate::float(w, "weight")?;
            if w.shape() != [rows] {
                return Err(Error::shape(
                    "weight",
                    format!("[{rows}] (one weight per row of `pred`)"),
                    w.shape(),
                ));
            }
            tensors.push(("weight", w));
        }
        let (dtype, device) = common(&tensors)?;
        let divisor = match (cfg.reduction, weighting.avg_factor) {
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
        match grad_scale {
            Some(_) if cfg.reduction == Reduction::None => {
                return Err(Error::invalid(
                    "reduction",
                    "the fused loss + gradient needs reduction `sum` or `mean`, got `none`",
                ))
            }
            Some(g) if !g.is_finite() => {
                return Err(Error::invalid(
                    "grad_scale",
                    format!("must be finite, got {g}"),
                ))
            }
            _ => {}
        }
        check_finite(target, "target", "target boxes")?;
        Ok(GiouPlan {
            rows,
            dtype,
            device,
            reduction: cfg.reduction,
            eps: cfg.eps,
            loss_coef: cfg.loss_weight / divisor,
            empty_mean: rows == 0
                && cfg.reduction == Reduction::Mean
                && weighting.avg_factor.is_none(),
        })
    }

    fn loss_shape(&self) -> Vec<usize> {
        match self.reduction {
            Reduction::None => vec![self.rows],
            _ => vec![],
        }
    }

    /// The loss of an empty call: `[0]`, or a sum of 0, or a mean of NaN (no `avg_factor`) or 0.
    fn empty_loss(&self) -> Result<Tensor> {
        match self.reduction {
            Reduction::None => Tensor::zeros(&[0], self.dtype, &self.device),
            _ => scalar(
                if self.empty_mean { f64::NAN } else { 0.0 },
                self.dtype,
                &self.device,
            ),
        }
    }
}

/// Host copies (borrowed where the storage already is `T`) of a GIoU call's inputs.
fn with_giou_problem<T: Real + HostElement, R>(
    plan: &GiouPlan,
    pred: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    f: impl FnOnce(&cpu::GiouProblem<'_, T>) -> Result<R>,
) -> Result<R> {
    let p = pred.host_values::<T>()?;
    let t = target.host_values::<T>()?;
    let w = weight.map(|w| w.host_values::<T>()).transpose()?;
    f(&cpu::GiouProblem {
        pred: &p,
        target: &t,
        weight: w.as_deref(),
        eps: T::from_f64(plan.eps),
    })
}

fn run_giou_loss(
    plan: &GiouPlan,
    pred: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    out: &mut Tensor,
) -> Result<()> {
    validate::output(out, "out", &plan.loss_shape(), plan.dtype, &plan.device)?;
    if plan.rows == 0 {
        if plan.reduction != Reduction::None {
            *out = plan.empty_loss()?;
        }
        return Ok(());
    }
    match &plan.device {
        Device::Cpu => with_compute!(plan.dtype, |T| {
            with_giou_problem::<T, _>(plan, pred, target, weight, |problem| {
                if plan.reduction == Reduction::None {
                    let rows = cpu::giou_rows(problem, T::from_f64(plan.loss_coef));
                    write_host(out, rows, &[plan.rows], plan.dtype)
                } else {
                    let sum = cpu::giou_sum(problem);
                    *out = scalar(sum * plan.loss_coef, plan.dtype, &plan.device)?;
                    Ok(())
                }
            })
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let job = cuda::GiouJob::Forward { loss_rows: out };
            if let Some(total) = cuda::giou_loss(dev, plan, pred, target, weight, job)? {
                *out = total;
            }
            Ok(())
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

fn run_giou_backward(
    plan: &GiouPlan,
    grad_out: &Tensor,
    pred: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    grad: &mut Tensor,
) -> Result<()> {
    validate::loss_grad_out(
        grad_out,
        plan.reduction,
        plan.rows,
        plan.dtype,
        &plan.device,
    )?;
    validate::output(grad, "grad", &[plan.rows, 4], plan.dtype, &plan.device)?;
    if plan.rows == 0 {
        return Ok(());
    }
    match &plan.device {
        Device::Cpu => with_compute!(plan.dtype, |T| {
            let upstream = grad_out.host_values::<T>()?;
            let coef = T::from_f64(plan.loss_coef);
            let up = match plan.reduction {
                Reduction::None => cpu::Upstream::PerRow {
                    coef,
                    values: &upstream,
                },
                _ => cpu::Upstream::Scalar(coef * upstream[0]),
            };
            with_giou_problem::<T, _>(plan, pred, target, weight, |problem| {
                let (_, g) = cpu::giou_grad(problem, &up, false);
                write_host(grad, g, &[plan.rows, 4], plan.dtype)
            })
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let job = cuda::GiouJob::Backward { grad_out, grad };
            cuda::giou_loss(dev, plan, pred, target, weight, job)?;
            Ok(())
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

fn run_giou_fused(
    plan: &GiouPlan,
    pred: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    grad_scale: f64,
    grad: &mut Tensor,
) -> Result<Tensor> {
    validate::output(grad, "grad", &[plan.rows, 4], plan.dtype, &plan.device)?;
    if plan.rows == 0 {
        return plan.empty_loss();
    }
    match &plan.device {
        Device::Cpu => with_compute!(plan.dtype, |T| {
            let factor = T::from_f64(plan.loss_coef) * T::from_f64(grad_scale);
            with_giou_problem::<T, _>(plan, pred, target, weight, |problem| {
                let (sum, g) = cpu::giou_grad(problem, &cpu::Upstream::Scalar(factor), true);
                write_host(grad, g, &[plan.rows, 4], plan.dtype)?;
                scalar(sum * plan.loss_coef, plan.dtype, &plan.device)
            })
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let job = cuda::GiouJob::Fused { grad_scale, grad };
            cuda::giou_loss(dev, plan, pred, target, weight, job)?
                .ok_or_else(|| Error::invalid("reduction", "no loss was produced"))
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

#[cfg(test)]
mod tests;
