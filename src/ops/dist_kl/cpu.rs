//! CPU reference for the distribution losses: the specification the CUDA kernels are checked against.
//!
//! Every row is computed independently (rayon over rows) with a stable log-softmax: the row maximum is
//! subtracted before exponentiating, `log p_k = (x_k − max) − ln Σ_j exp(x_j − max)`. Generic over the
//! compute type (f64 for gradchecks and fixtures, f32 otherwise; half storage is widened by the caller).
//! The operation order inside a row matches kernels/dist_kl.cu, so f32 CPU and CUDA results differ only by
//! the order of the within-row sums and by libm's `exp`/`ln` against CUDA's `expf`/`logf`.

use super::{LossPlan, Reduction};
use crate::tensor::{Element, Real};
use rayon::prelude::*;

/// Rows per rayon task: a row is ~100 flops, so batch them.
const MIN_ROWS_PER_TASK: usize = 256;

/// The (widened) inputs of one loss call, row-major `[R, B]`.
pub(crate) enum RowData<'a, T> {
    Kl {
        student: &'a [T],
        teacher: &'a [T],
        /// `1/T`, rounded once to `T`.
        inv_temperature: T,
    },
    Dfl {
        pred: &'a [T],
        labels: &'a [T],
    },
}

/// The upstream gradient of a backward pass.
pub(crate) enum Upstream<'a, T> {
    /// One value per row (reduction `none`).
    PerRow(&'a [T]),
    /// One value for all rows (reduced loss).
    Scalar(T),
    /// Already folded into the plan's `grad_coef` (fused entries).
    Constant,
}

impl<'a, T: Real> Upstream<'a, T> {
    /// `values` is the validated `grad_out`: `[R]` for `none`, one element otherwise.
    pub fn new(values: &'a [T], reduction: Reduction) -> Self {
        match reduction {
            Reduction::None => Upstream::PerRow(values),
            _ => Upstream::Scalar(values[0]),
        }
    }
}

/// `max_k x_k`, ignoring NaN like CUDA's `fmaxf` (a NaN still poisons the sums that follow).
fn row_max<T: Real>(values: impl Iterator<Item = T>) -> T {
    values.fold(T::neg_infinity(), |m, v| if v > m { v } else { m })
}

/// `Σ_k p^t_k (log p^t_k − log p^s_k)` for one row, `p = softmax(z / T)`; when `grad` is given, writes
/// `factor · (p^s_k − p^t_k)` into it. With `x = z · (1/T)`, `m = max x`, `e_k = exp(x_k − m)`, `S = Σ e`:
/// `log p_k = (x_k − m) − ln S` and `p_k = e_k · (1/S)`, exactly the kernel's sequence of operations.
fn kl_row<T: Real>(s: &[T], t: &[T], inv_temperature: T, grad: Option<(&mut [T], T)>) -> T {
    let xs = |k: usize| s[k] * inv_temperature;
    let xt = |k: usize| t[k] * inv_temperature;
    let bins = s.len();
    let max_s = row_max((0..bins).map(xs));
    let max_t = row_max((0..bins).map(xt));
    let mut sum_s = T::zero();
    let mut sum_t = T::zero();
    for k in 0..bins {
        sum_s = sum_s + (xs(k) - max_s).exp();
        sum_t = sum_t + (xt(k) - max_t).exp();
    }
    let (ln_s, ln_t) = (sum_s.ln(), sum_t.ln());
    let (inv_sum_s, inv_sum_t) = (T::one() / sum_s, T::one() / sum_t);
    let mut kl = T::zero();
    let mut grad = grad;
    for k in 0..bins {
        let log_ps = (xs(k) - max_s) - ln_s;
        let log_pt = (xt(k) - max_t) - ln_t;
        let pt = (xt(k) - max_t).exp() * inv_sum_t;
        kl = kl + pt * (log_pt - log_ps);
        if let Some((g, factor)) = grad.as_mut() {
            g[k] = *factor * ((xs(k) - max_s).exp() * inv_sum_s - pt);
        }
    }
    kl
}

/// `ω_l · CE(z, l) + ω_r · CE(z, l + 1)` for one row and a validated target `y ∈ [0, B − 1)`; when `grad` is
/// given, writes `factor · ((ω_l + ω_r) softmax(z)_k − ω_l [k = l] − ω_r [k = r])` into it.
fn dfl_row<T: Real>(z: &[T], y: T, grad: Option<(&mut [T], T)>) -> T {
    let left_value = y.floor();
    let left = Element::to_f64(left_value) as usize;
    let right = left + 1;
    let weight_left = (left_value + T::one()) - y;
    let weight_right = y - left_value;
    let max = row_max(z.iter().copied());
    let sum = z.iter().fold(T::zero(), |acc, &v| acc + (v - max).exp());
    let log_sum_exp = max + sum.ln();
    let loss = (log_sum_exp - z[left]) * weight_left + (log_sum_exp - z[right]) * weight_right;
    if let Some((g, factor)) = grad {
        let weight_sum = weight_left + weight_right;
        let inv_sum = T::one() / sum;
        for (k, (gk, &zk)) in g.iter_mut().zip(z).enumerate() {
            let mut d = (zk - max).exp() * inv_sum * weight_sum;
            if k == left {
                d = d - weight_left;
            }
            if k == right {
                d = d - weight_right;
            }
            *gk = factor * d;
        }
    }
    loss
}

/// Per-row losses `loss_coef · w_r · raw_r` of a validated plan; when `grad` (`[R, B]`) is given, also the
/// gradient rows `grad_coef · w_r · upstream_r · raw_grad_r`.
pub(crate) fn run<T: Real>(
    plan: &LossPlan,
    data: &RowData<'_, T>,
    weight: Option<&[T]>,
    upstream: Option<Upstream<'_, T>>,
    grad: Option<&mut [T]>,
) -> Vec<T> {
    let bins = plan.bins;
    let loss_coef = T::from_f64(plan.loss_coef);
    let grad_coef = T::from_f64(plan.grad_coef);
    let row = |r: usize, g: Option<&mut [T]>| -> T {
        let w = weight.map_or(T::one(), |w| w[r]);
        let up = match &upstream {
            Some(Upstream::PerRow(u)) => u[r],
            Some(Upstream::Scalar(u)) => *u,
            Some(Upstream::Constant) | None => T::one(),
        };
        let g = g.map(|g| (g, grad_coef * w * up));
        let range = r * bins..(r + 1) * bins;
        let raw = match data {
            RowData::Kl {
                student,
                teacher,
                inv_temperature,
            } => kl_row(
                &student[range.clone()],
                &teacher[range],
                *inv_temperature,
                g,
            ),
            RowData::Dfl { pred, labels } => dfl_row(&pred[range], labels[r], g),
        };
        loss_coef * w * raw
    };
    match grad {
        Some(grad) => grad
            .par_chunks_mut(bins)
            .with_min_len(MIN_ROWS_PER_TASK)
            .enumerate()
            .map(|(r, g)| row(r, Some(g)))
            .collect(),
        None => (0..plan.rows)
            .into_par_iter()
            .with_min_len(MIN_ROWS_PER_TASK)
            .map(|r| row(r, None))
            .collect(),
    }
}

/// `(max, Σ_k e_k, Σ_k k e_k)` with `e_k = exp(z_k − max)`.
fn integral_sums<T: Real>(z: &[T]) -> (T, T, T) {
    let max = row_max(z.iter().copied());
    let mut sum = T::zero();
    let mut weighted = T::zero();
    for (k, &v) in z.iter().enumerate() {
        let e = (v - max).exp();
        sum = sum + e;
        weighted = weighted + T::from_f64(k as f64) * e;
    }
    (max, sum, weighted)
}

/// `d_r = Σ_k k softmax(z_r)_k = (Σ_k k e_k) / Σ_k e_k` for every row of `z` `[R, B]`.
pub(crate) fn integral_forward<T: Real>(z: &[T], bins: usize) -> Vec<T> {
    z.par_chunks(bins)
        .with_min_len(MIN_ROWS_PER_TASK)
        .map(|row| {
            let (_, sum, weighted) = integral_sums(row);
            weighted / sum
        })
        .collect()
}

/// `grad_{r,k} = g_r · q_k · (k − d_r)` for every row of `z` `[R, B]`, `q = softmax(z_r)`.
pub(crate) fn integral_backward<T: Real>(z: &[T], bins: usize, grad_out: &[T]) -> Vec<T> {
    let mut grad = vec![T::zero(); z.len()];
    grad.par_chunks_mut(bins)
        .zip(z.par_chunks(bins))
        .with_min_len(MIN_ROWS_PER_TASK)
        .enumerate()
        .for_each(|(r, (g, row))| {
            let (max, sum, weighted) = integral_sums(row);
            let d = weighted / sum;
            let inv_sum = T::one() / sum;
            for (k, (gk, &v)) in g.iter_mut().zip(row).enumerate() {
                let q = (v - max).exp() * inv_sum;
                *gk = grad_out[r] * q * (T::from_f64(k as f64) - d);
            }
        });
    grad
}
