//! CPU reference for the focal losses: the specification the CUDA kernels are checked against.
//!
//! Every element's loss and derivative come from one small function per form (the same arithmetic, step
//! for step, as kernels/focal.cu). Reductions are deterministic: fixed-size chunks summed in f64, the
//! chunk sums added in order, whatever the number of threads. Generic over the compute type: f64 for
//! gradchecks and fixtures, f32 for everything else (half storage is widened by the caller).

use super::LOG_FLT_MIN;
use crate::tensor::Real;
use rayon::prelude::*;

/// Elements per parallel task and per partial sum.
const CHUNK: usize = 1 << 14;

/// One call's inputs as host slices.
pub(crate) struct Problem<'a, T> {
    pub logits: &'a [T],
    pub kind: Kind<'a, T>,
}

pub(crate) enum Kind<'a, T> {
    Torchvision {
        targets: &'a [T],
        alpha: T,
        gamma: T,
        use_alpha: bool,
    },
    Mmcv {
        labels: &'a [i64],
        classes: usize,
        weight: Option<&'a [T]>,
        alpha: T,
        gamma: T,
    },
    Quality {
        labels: &'a [i64],
        classes: usize,
        scores: &'a [T],
        weight: Option<&'a [T]>,
        beta: T,
    },
}

/// `p = σ(x)`, `1 − p = σ(−x)` and `log1p(exp(−|x|))`, from one exponential and without cancellation.
struct Sigmoid<T> {
    p: T,
    one_minus_p: T,
    log1p_exp: T,
}

#[inline]
fn sigmoid<T: Real>(x: T) -> Sigmoid<T> {
    let e = (-x.abs()).exp();
    let big = T::one() / (T::one() + e);
    let small = e * big;
    let (p, one_minus_p) = if x >= T::zero() {
        (big, small)
    } else {
        (small, big)
    };
    Sigmoid {
        p,
        one_minus_p,
        log1p_exp: e.ln_1p(),
    }
}

#[inline]
fn two<T: Real>() -> T {
    T::one() + T::one()
}

/// torchvision: loss and d loss / dx of one element with target `t`.
#[inline]
pub(crate) fn torchvision_element<T: Real>(
    x: T,
    t: T,
    alpha: T,
    gamma: T,
    use_alpha: bool,
) -> (T, T) {
    let one = T::one();
    let s = sigmoid(x);
    let bce = x.max(T::zero()) - x * t + s.log1p_exp;
    // 1 − p_t = p(1 − t) + (1 − p)t, and p − t = p(1 − t) − (1 − p)t: exact for t ∈ {0, 1}.
    let q = s.p * (one - t) + s.one_minus_p * t;
    let p_minus_t = s.p * (one - t) - s.one_minus_p * t;
    let (modulator, d_modulator) = if gamma == two() {
        (q * q, two::<T>() * q)
    } else {
        let d = if q > T::zero() && gamma != T::zero() {
            gamma * q.powf(gamma - one)
        } else {
            T::zero() // q = 0 only where p(1 − p) = 0 too: the term vanishes
        };
        (q.powf(gamma), d)
    };
    let alpha_t = if use_alpha {
        alpha * t + (one - alpha) * (one - t)
    } else {
        one
    };
    let loss = alpha_t * (bce * modulator);
    let grad = alpha_t
        * (p_minus_t * modulator
            + bce * (d_modulator * (one - two::<T>() * t) * (s.p * s.one_minus_p)));
    (loss, grad)
}

/// mmcv: loss and d loss / dx (mmcv's closed form, clamped logs included) of one element.
#[inline]
pub(crate) fn mmcv_element<T: Real>(x: T, positive: bool, alpha: T, gamma: T) -> (T, T) {
    let one = T::one();
    let s = sigmoid(x);
    let log_floor = T::from_f64(LOG_FLT_MIN);
    let power = |v: T| if gamma == two() { v * v } else { v.powf(gamma) };
    if positive {
        // log(max(p, FLT_MIN)) = max(−softplus(−x), ln FLT_MIN)
        let log_p = (-((-x).max(T::zero()) + s.log1p_exp)).max(log_floor);
        let m = power(s.one_minus_p);
        let loss = -alpha * m * log_p;
        let grad = alpha * m * (gamma * s.p * log_p - s.one_minus_p);
        (loss, grad)
    } else {
        let log_one_minus_p = (-(x.max(T::zero()) + s.log1p_exp)).max(log_floor);
        let m = power(s.p);
        let loss = -(one - alpha) * m * log_one_minus_p;
        let grad = (one - alpha) * m * (s.p - gamma * s.one_minus_p * log_one_minus_p);
        (loss, grad)
    }
}

/// QFL: loss and d loss / dx of one element with quality target `y` (0 for negatives).
#[inline]
pub(crate) fn quality_element<T: Real>(x: T, y: T, beta: T) -> (T, T) {
    let s = sigmoid(x);
    let bce = x.max(T::zero()) - x * y + s.log1p_exp;
    let d = s.p - y;
    let (modulator, d_modulator) = if beta == two() {
        (d * d, two::<T>() * d)
    } else {
        let a = d.abs();
        let dm = if a > T::zero() && beta != T::zero() {
            (beta * a.powf(beta - T::one())).copysign(d)
        } else {
            T::zero()
        };
        (a.powf(beta), dm)
    };
    let loss = bce * modulator;
    let grad = d * modulator + bce * (d_modulator * (s.p * s.one_minus_p));
    (loss, grad)
}

impl<T: Real> Problem<'_, T> {
    pub fn len(&self) -> usize {
        self.logits.len()
    }

    /// Columns per row: C for the label forms, 1 for torchvision (one "row" per element).
    fn classes(&self) -> usize {
        match self.kind {
            Kind::Torchvision { .. } => 1,
            Kind::Mmcv { classes, .. } | Kind::Quality { classes, .. } => classes,
        }
    }

    /// Unweighted loss and derivative of element `i` = (`row`, `col`).
    #[inline]
    fn element(&self, i: usize, row: usize, col: usize) -> (T, T) {
        let x = self.logits[i];
        match self.kind {
            Kind::Torchvision {
                targets,
                alpha,
                gamma,
                use_alpha,
            } => torchvision_element(x, targets[i], alpha, gamma, use_alpha),
            Kind::Mmcv {
                labels,
                alpha,
                gamma,
                ..
            } => mmcv_element(x, labels[row] == col as i64, alpha, gamma),
            Kind::Quality {
                labels,
                scores,
                beta,
                ..
            } => {
                let y = if labels[row] == col as i64 {
                    scores[row]
                } else {
                    T::zero()
                };
                quality_element(x, y, beta)
            }
        }
    }

    /// The factor the losses of `row` are multiplied by: mmcv's `weight[label]` (1 for background rows),
    /// QFL's per-anchor weight, else 1.
    #[inline]
    fn weight(&self, row: usize) -> T {
        match self.kind {
            Kind::Mmcv {
                labels,
                classes,
                weight: Some(w),
                ..
            } => {
                let label = labels[row];
                if label >= 0 && (label as usize) < classes {
                    w[label as usize]
                } else {
                    T::one()
                }
            }
            Kind::Quality {
                weight: Some(w), ..
            } => w[row],
            _ => T::one(),
        }
    }

    /// Calls `f(i, row, col)` for the elements `first..first + count`, tracking `(row, col)` without a
    /// division per element.
    #[inline]
    fn walk(&self, first: usize, count: usize, mut f: impl FnMut(usize, usize, usize)) {
        let classes = self.classes();
        if count == 0 {
            return;
        }
        let (mut row, mut col) = (first / classes, first % classes);
        for i in first..first + count {
            f(i, row, col);
            col += 1;
            if col == classes {
                col = 0;
                row += 1;
            }
        }
    }
}

/// The unreduced loss: one value per element (`group = 1`) or, for QFL (`group = C`), the weighted sum
/// of each row's C element losses.
pub(crate) fn losses<T: Real>(problem: &Problem<'_, T>, group: usize) -> Vec<T> {
    let n = problem.len();
    if group == 1 {
        let mut out = vec![T::zero(); n];
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                problem.walk(c * CHUNK, chunk.len(), |i, row, col| {
                    chunk[i - c * CHUNK] = problem.element(i, row, col).0 * problem.weight(row);
                });
            });
        return out;
    }
    (0..n / group)
        .into_par_iter()
        .map(|row| {
            let mut sum = T::zero();
            for col in 0..group {
                sum = sum + problem.element(row * group + col, row, col).0;
            }
            sum * problem.weight(row)
        })
        .collect()
}

/// The sum of every weighted element loss, accumulated in f64 in a fixed order.
pub(crate) fn loss_sum<T: Real>(problem: &Problem<'_, T>) -> f64 {
    let n = problem.len();
    let partial: Vec<f64> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut sum = 0.0f64;
            let first = c * CHUNK;
            problem.walk(first, CHUNK.min(n - first), |i, row, col| {
                sum += (problem.element(i, row, col).0 * problem.weight(row)).to_f64();
            });
            sum
        })
        .collect();
    partial.iter().sum()
}

/// The upstream gradient of each element's loss.
pub(crate) enum Upstream<'a, T> {
    /// One value per entry of the unreduced loss (element `i` reads entry `i / group`).
    PerOutput(&'a [T]),
    /// One value for all (a reduced loss: already divided by the reduction's count).
    Scalar(T),
}

/// `d loss / d logits` times the upstream gradient.
pub(crate) fn gradient<T: Real>(
    problem: &Problem<'_, T>,
    group: usize,
    upstream: Upstream<'_, T>,
) -> Vec<T> {
    let mut grad = vec![T::zero(); problem.len()];
    grad.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let first = c * CHUNK;
            problem.walk(first, chunk.len(), |i, row, col| {
                let u = match upstream {
                    // group is C (QFL, per-row upstream) or 1 (per-element upstream).
                    Upstream::PerOutput(values) => values[if group == 1 { i } else { row }],
                    Upstream::Scalar(v) => v,
                };
                chunk[i - first] = problem.element(i, row, col).1 * problem.weight(row) * u;
            });
        });
    grad
}

/// Loss sum (as [`loss_sum`]) and gradient (as [`gradient`] with a scalar upstream) in one pass.
pub(crate) fn fused<T: Real>(problem: &Problem<'_, T>, upstream: T) -> (f64, Vec<T>) {
    let mut grad = vec![T::zero(); problem.len()];
    let partial: Vec<f64> = grad
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            let mut sum = 0.0f64;
            let first = c * CHUNK;
            problem.walk(first, chunk.len(), |i, row, col| {
                let (loss, d) = problem.element(i, row, col);
                let w = problem.weight(row);
                sum += (loss * w).to_f64();
                chunk[i - first] = d * w * upstream;
            });
            sum
        })
        .collect();
    (partial.iter().sum(), grad)
}
