//! CPU reference for the box ops: the specification kernels/boxes.cu is checked against.
//!
//! Every box's value and derivative come from one small function (the same arithmetic, step for step, as
//! the kernels). Reductions are deterministic: fixed-size chunks summed in f64, the chunk sums added in
//! order, whatever the number of threads. Generic over the compute type: f64 for gradchecks and fixtures,
//! f32 for everything else (half storage is widened by the caller).

use super::OverlapKind;
use crate::tensor::Real;
use rayon::prelude::*;

/// Rows per parallel task and per partial sum.
const CHUNK: usize = 4096;

/// `max(a, b)` that propagates NaN like `torch.max` (`f64::max` would return the other operand).
#[inline]
pub(crate) fn max_nan<T: Real>(a: T, b: T) -> T {
    if a >= b {
        a
    } else if b > a {
        b
    } else {
        a + b
    }
}

/// `min(a, b)` that propagates NaN like `torch.min`.
#[inline]
pub(crate) fn min_nan<T: Real>(a: T, b: T) -> T {
    if a <= b {
        a
    } else if b < a {
        b
    } else {
        a + b
    }
}

/// `x.clamp(min=0)` with NaN propagated.
#[inline]
fn clamp0<T: Real>(x: T) -> T {
    if x > T::zero() {
        x
    } else if x <= T::zero() {
        T::zero()
    } else {
        x
    }
}

/// `x.clamp(0, hi)` with NaN propagated (`hi ≥ 0`).
#[inline]
fn clamp_to<T: Real>(x: T, hi: T) -> T {
    if x < T::zero() {
        T::zero()
    } else if x > hi {
        hi
    } else {
        x
    }
}

/// The share of the gradient of `max(a, b)` that goes to `a`, as PyTorch's `torch.max(a, b)` backward:
/// 1 if `a > b`, ½ at a tie, 0 otherwise.
#[inline]
pub(crate) fn max_share<T: Real>(a: T, b: T) -> T {
    if a > b {
        T::one()
    } else if a == b {
        T::from_f64(0.5)
    } else {
        T::zero()
    }
}

/// The share of the gradient of `min(a, b)` that goes to `a`.
#[inline]
pub(crate) fn min_share<T: Real>(a: T, b: T) -> T {
    max_share(b, a)
}

/// 1 where `x.clamp(min=0)` passes the gradient (`x > 0`, as torch's clamp), else 0.
#[inline]
fn positive<T: Real>(x: T) -> T {
    if x > T::zero() {
        T::one()
    } else {
        T::zero()
    }
}

#[inline]
fn box4<T: Real>(v: &[T], i: usize) -> [T; 4] {
    [v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]]
}

/// What one overlap entry computes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OverlapSpec<T> {
    pub kind: OverlapKind,
    /// DIoU only: divide the overlap by `area(a)` (the LD repository's `mode='diou'`) instead of the union.
    pub first_area: bool,
    pub eps: T,
}

/// mmdet's `bbox_overlaps(a, b, mode, eps)` for one pair: `IoU = I / max(U, eps)`,
/// `GIoU = IoU − (C − U)/C` with `C = max(enclosing area, eps)`, `DIoU = IoU − ρ²/max(c², eps)`.
#[inline]
pub(crate) fn overlap<T: Real>(a: [T; 4], b: [T; 4], spec: &OverlapSpec<T>) -> T {
    let area1 = (a[2] - a[0]) * (a[3] - a[1]);
    let area2 = (b[2] - b[0]) * (b[3] - b[1]);
    let w = clamp0(min_nan(a[2], b[2]) - max_nan(a[0], b[0]));
    let h = clamp0(min_nan(a[3], b[3]) - max_nan(a[1], b[1]));
    let overlap = w * h;
    let denominator = if spec.kind == OverlapKind::Diou && spec.first_area {
        area1
    } else {
        area1 + area2 - overlap
    };
    let union = max_nan(denominator, spec.eps);
    let iou = overlap / union;
    if spec.kind == OverlapKind::Iou {
        return iou;
    }
    let ew = clamp0(max_nan(a[2], b[2]) - min_nan(a[0], b[0]));
    let eh = clamp0(max_nan(a[3], b[3]) - min_nan(a[1], b[1]));
    if spec.kind == OverlapKind::Giou {
        let enclose = max_nan(ew * eh, spec.eps);
        return iou - (enclose - union) / enclose;
    }
    let four = T::from_f64(4.0);
    let cx = (b[0] + b[2]) - (a[0] + a[2]);
    let cy = (b[1] + b[3]) - (a[1] + a[3]);
    let rho2 = cx * cx / four + cy * cy / four;
    let diag2 = max_nan(ew * ew + eh * eh, spec.eps);
    iou - rho2 / diag2
}

/// `L = 1 − GIoU(p, g)` (mmdet's `bbox_overlaps(mode='giou', is_aligned=True, eps)`) and, when asked,
/// `dL/dp` routed through every max/min by its active operand (halved at ties) and through the clamps at 0
/// only where the clamped difference is > 0.
#[inline]
pub(crate) fn giou_loss_element<T: Real>(p: [T; 4], g: [T; 4], eps: T, grad: bool) -> (T, [T; 4]) {
    let one = T::one();
    let area1 = (p[2] - p[0]) * (p[3] - p[1]);
    let area2 = (g[2] - g[0]) * (g[3] - g[1]);
    let dx = min_nan(p[2], g[2]) - max_nan(p[0], g[0]);
    let dy = min_nan(p[3], g[3]) - max_nan(p[1], g[1]);
    let (w, h) = (clamp0(dx), clamp0(dy));
    let overlap = w * h;
    let union_raw = area1 + area2 - overlap;
    let union = max_nan(union_raw, eps);
    let iou = overlap / union;
    let edx = max_nan(p[2], g[2]) - min_nan(p[0], g[0]);
    let edy = max_nan(p[3], g[3]) - min_nan(p[1], g[1]);
    let (ew, eh) = (clamp0(edx), clamp0(edy));
    let enclose_raw = ew * eh;
    let enclose = max_nan(enclose_raw, eps);
    let giou = iou - (enclose - union) / enclose;
    let loss = one - giou;
    if !grad {
        return (loss, [T::zero(); 4]);
    }
    // With L = 1 − I/U + (C − U)/C: dL/dU = I/U² − 1/C, dL/dI = −1/U (direct), dL/dC = U/C².
    let d_union = iou / union - one / enclose;
    let mut d_overlap = -one / union;
    let d_enclose = union / (enclose * enclose);
    let d_union_raw = d_union * max_share(union_raw, eps);
    let d_enclose_raw = d_enclose * max_share(enclose_raw, eps);
    let d_edx = d_enclose_raw * eh * positive(edx);
    let d_edy = d_enclose_raw * ew * positive(edy);
    d_overlap = d_overlap - d_union_raw;
    let d_dx = d_overlap * h * positive(dx);
    let d_dy = d_overlap * w * positive(dy);
    let (pw, ph) = (p[2] - p[0], p[3] - p[1]);
    let d = [
        -d_edx * min_share(p[0], g[0]) - d_union_raw * ph - d_dx * max_share(p[0], g[0]),
        -d_edy * min_share(p[1], g[1]) - d_union_raw * pw - d_dy * max_share(p[1], g[1]),
        d_edx * max_share(p[2], g[2]) + d_union_raw * ph + d_dx * min_share(p[2], g[2]),
        d_edy * max_share(p[3], g[3]) + d_union_raw * pw + d_dy * min_share(p[3], g[3]),
    ];
    (loss, d)
}

/// mmdet's `distance2bbox`: `(px − l, py − t, px + r, py + b)`, clamped to `[0, W] × [0, H]` when
/// `bound = Some((H, W))`.
pub(crate) fn distance2bbox<T: Real>(
    points: &[T],
    distances: &[T],
    bound: Option<(T, T)>,
) -> Vec<T> {
    let mut out = vec![T::zero(); distances.len()];
    out.par_chunks_mut(4 * CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (k, row) in chunk.chunks_exact_mut(4).enumerate() {
                let i = c * CHUNK + k;
                let (px, py) = (points[2 * i], points[2 * i + 1]);
                let d = box4(distances, i);
                let mut b = [px - d[0], py - d[1], px + d[2], py + d[3]];
                if let Some((hy, wx)) = bound {
                    b = [
                        clamp_to(b[0], wx),
                        clamp_to(b[1], hy),
                        clamp_to(b[2], wx),
                        clamp_to(b[3], hy),
                    ];
                }
                row.copy_from_slice(&b);
            }
        });
    out
}

/// 1 where `clamp(v, 0, hi)` passes the gradient (strictly inside `(0, hi)`, as torch's clamp), else 0.
#[inline]
fn inside<T: Real>(v: T, hi: T) -> T {
    if v > T::zero() && v < hi {
        T::one()
    } else {
        T::zero()
    }
}

/// Gradient of [`distance2bbox`] with respect to the distances: `(−g₀, −g₁, g₂, g₃)`, zero where the
/// coordinate was clamped or lies exactly on the image boundary.
pub(crate) fn distance2bbox_backward<T: Real>(
    points: &[T],
    distances: &[T],
    grad_out: &[T],
    bound: Option<(T, T)>,
) -> Vec<T> {
    let mut grad = vec![T::zero(); distances.len()];
    grad.par_chunks_mut(4 * CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (k, row) in chunk.chunks_exact_mut(4).enumerate() {
                let i = c * CHUNK + k;
                let g = box4(grad_out, i);
                let pass = match bound {
                    None => [T::one(); 4],
                    Some((hy, wx)) => {
                        let (px, py) = (points[2 * i], points[2 * i + 1]);
                        let d = box4(distances, i);
                        [
                            inside(px - d[0], wx),
                            inside(py - d[1], hy),
                            inside(px + d[2], wx),
                            inside(py + d[3], hy),
                        ]
                    }
                };
                row.copy_from_slice(&[
                    -g[0] * pass[0],
                    -g[1] * pass[1],
                    g[2] * pass[2],
                    g[3] * pass[3],
                ]);
            }
        });
    grad
}

/// mmdet's `bbox2distance`: `(px − x1, py − y1, x2 − px, y2 − py)`, each clamped to `[0, upper]` when
/// `upper = Some(max_dist − eps)`.
pub(crate) fn bbox2distance<T: Real>(points: &[T], boxes: &[T], upper: Option<T>) -> Vec<T> {
    let mut out = vec![T::zero(); boxes.len()];
    out.par_chunks_mut(4 * CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (k, row) in chunk.chunks_exact_mut(4).enumerate() {
                let i = c * CHUNK + k;
                let (px, py) = (points[2 * i], points[2 * i + 1]);
                let b = box4(boxes, i);
                let mut d = [px - b[0], py - b[1], b[2] - px, b[3] - py];
                if let Some(hi) = upper {
                    d = d.map(|v| clamp_to(v, hi));
                }
                row.copy_from_slice(&d);
            }
        });
    out
}

/// One overlap per aligned pair `(a[i], b[i])`.
pub(crate) fn overlaps_aligned<T: Real>(a: &[T], b: &[T], spec: &OverlapSpec<T>) -> Vec<T> {
    (0..a.len() / 4)
        .into_par_iter()
        .map(|i| overlap(box4(a, i), box4(b, i), spec))
        .collect()
}

/// The `[N, M]` matrix of overlaps between every `a[r]` and every `b[c]`.
pub(crate) fn box_overlaps<T: Real>(a: &[T], b: &[T], spec: &OverlapSpec<T>) -> Vec<T> {
    let cols = b.len() / 4;
    let mut out = vec![T::zero(); (a.len() / 4) * cols];
    if cols == 0 {
        return out;
    }
    out.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let box_a = box4(a, r);
        for (c, v) in row.iter_mut().enumerate() {
            *v = overlap(box_a, box4(b, c), spec);
        }
    });
    out
}

/// The inputs of one GIoU loss call as host slices.
pub(crate) struct GiouProblem<'a, T> {
    pub pred: &'a [T],
    pub target: &'a [T],
    pub weight: Option<&'a [T]>,
    pub eps: T,
}

/// Where each row's gradient factor (weight excluded) comes from.
pub(crate) enum Upstream<'a, T> {
    /// `grad_coef · grad_out[r]` (reduction `none`).
    PerRow { coef: T, values: &'a [T] },
    /// One factor for every row (a reduced loss: `loss_coef · upstream`).
    Scalar(T),
}

impl<T: Real> GiouProblem<'_, T> {
    fn rows(&self) -> usize {
        self.pred.len() / 4
    }

    #[inline]
    fn weight(&self, i: usize) -> T {
        self.weight.map_or(T::one(), |w| w[i])
    }

    #[inline]
    fn element(&self, i: usize, grad: bool) -> (T, [T; 4]) {
        giou_loss_element(box4(self.pred, i), box4(self.target, i), self.eps, grad)
    }
}

/// The unreduced loss: `(L_r · w_r) · coef` per row.
pub(crate) fn giou_rows<T: Real>(problem: &GiouProblem<'_, T>, coef: T) -> Vec<T> {
    (0..problem.rows())
        .into_par_iter()
        .map(|i| (problem.element(i, false).0 * problem.weight(i)) * coef)
        .collect()
}

/// `Σ_r L_r · w_r`, each product in `T`, accumulated in f64 in a fixed order.
pub(crate) fn giou_sum<T: Real>(problem: &GiouProblem<'_, T>) -> f64 {
    let rows = problem.rows();
    let partial: Vec<f64> = (0..rows.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            (c * CHUNK..rows.min((c + 1) * CHUNK))
                .map(|i| (problem.element(i, false).0 * problem.weight(i)).to_f64())
                .sum()
        })
        .collect();
    partial.iter().sum()
}

/// `dL_r/dp_r · (w_r · factor_r)` for every row, plus (when `with_loss`) `Σ_r L_r · w_r` as
/// [`giou_sum`] computes it.
pub(crate) fn giou_grad<T: Real>(
    problem: &GiouProblem<'_, T>,
    upstream: &Upstream<'_, T>,
    with_loss: bool,
) -> (f64, Vec<T>) {
    let mut grad = vec![T::zero(); problem.pred.len()];
    let partial: Vec<f64> = grad
        .par_chunks_mut(4 * CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            let mut sum = 0.0f64;
            for (k, row) in chunk.chunks_exact_mut(4).enumerate() {
                let i = c * CHUNK + k;
                let (loss, d) = problem.element(i, true);
                let w = problem.weight(i);
                if with_loss {
                    sum += (loss * w).to_f64();
                }
                let factor = w * match upstream {
                    Upstream::PerRow { coef, values } => *coef * values[i],
                    Upstream::Scalar(v) => *v,
                };
                row.copy_from_slice(&d.map(|v| v * factor));
            }
            sum
        })
        .collect();
    (partial.iter().sum(), grad)
}
