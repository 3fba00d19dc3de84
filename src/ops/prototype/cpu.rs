//! CPU reference for the prototype steps: the specification the CUDA kernels are checked against.
//!
//! Generic over the compute type (f64 for f64 tensors, f32 otherwise; half storage is widened on entry
//! and rounded once when a result is written). Every sum runs in one fixed order, so results are
//! deterministic whatever the thread count; rows are processed in parallel.

use super::primitives::compute_dtype;
use super::{AssignmentOutput, MatchPlan, SoftAssignConfig};
use crate::error::Result;
use crate::tensor::{DType, HostElement, Real, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;

/// A compute type of the reference: f32 or f64.
trait Compute: Real + HostElement {}
impl<T: Real + HostElement> Compute for T {}

/// Calls `$f::<T>(args)` with `T` the compute type of `$dtype`, then `$finish` on its result (the closure
/// is expanded once per type).
macro_rules! typed {
    ($dtype:expr, $f:ident($($arg:expr),* $(,)?), $finish:expr) => {
        if compute_dtype($dtype) == DType::F64 {
            $f::<f64>($($arg),*).and_then($finish)
        } else {
            $f::<f32>($($arg),*).and_then($finish)
        }
    };
}

fn values<T: Compute>(t: &Tensor) -> Result<Cow<'_, [T]>> {
    t.host_values::<T>()
}

fn sum_of_squares<T: Compute>(row: &[T]) -> T {
    row.iter().fold(T::zero(), |acc, &v| acc + v * v)
}

/// A compute-type result as a tensor of `dtype` (rounded once when `dtype` is narrower).
fn into_tensor<T: Compute>(values: Vec<T>, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::from_vec(values, shape)?.into_dtype(dtype)
}

// ---------------------------------------------------------------------------------------------------------
// Soft assignment

pub(super) fn row_sq_norms(x: &Tensor) -> Result<Tensor> {
    fn run<T: Compute>(x: &Tensor) -> Result<Vec<T>> {
        let (rows, cols) = (x.shape()[0], x.shape()[1]);
        if cols == 0 {
            return Ok(vec![T::zero(); rows]);
        }
        let x = values::<T>(x)?;
        Ok(x.par_chunks(cols).map(sum_of_squares).collect())
    }
    typed!(x.dtype(), run(x), |v| Tensor::from_vec(v, &[x.shape()[0]]))
}

pub(super) fn assignment_from_gram_into(
    gram: &Tensor,
    x_norms: &Tensor,
    p_norms: &Tensor,
    cfg: &SoftAssignConfig,
    out: &mut Tensor,
) -> Result<()> {
    fn run<T: Compute>(
        gram: &Tensor,
        x_norms: &Tensor,
        p_norms: &Tensor,
        cfg: &SoftAssignConfig,
    ) -> Result<Vec<T>> {
        let k = gram.shape()[1];
        let (gram, nx, np) = (
            values::<T>(gram)?,
            values::<T>(x_norms)?,
            values::<T>(p_norms)?,
        );
        let tau = T::from_f64(cfg.temperature);
        let two = T::from_f64(2.0);
        let log_output = cfg.output == AssignmentOutput::LogProbabilities;
        let mut out = vec![T::zero(); gram.len()];
        out.par_chunks_mut(k).enumerate().for_each(|(i, dst)| {
            let g_row = &gram[i * k..][..k];
            // Logits z = −max(D², 0)/τ, kept in `dst`; their maximum (NaN compares false and is skipped
            // here, then poisons the sum and so the whole row).
            let mut row_max = T::neg_infinity();
            for ((z, &g), &p) in dst.iter_mut().zip(g_row).zip(np.iter()) {
                let mut d2 = nx[i] + p - two * g;
                if d2 < T::zero() {
                    d2 = T::zero();
                }
                *z = -d2 / tau;
                if *z > row_max {
                    row_max = *z;
                }
            }
            let sum = dst
                .iter()
                .fold(T::zero(), |acc, &z| acc + (z - row_max).exp());
            if log_output {
                let log_sum = sum.ln();
                for z in dst.iter_mut() {
                    *z = *z - row_max - log_sum;
                }
            } else {
                for z in dst.iter_mut() {
                    *z = (*z - row_max).exp() / sum;
                }
            }
        });
        Ok(out)
    }
    let shape = out.shape().to_vec();
    let dtype = out.dtype();
    *out = typed!(gram.dtype(), run(gram, x_norms, p_norms, cfg), |v| {
        into_tensor(v, &shape, dtype)
    })?;
    Ok(())
}

pub(super) fn assignment_grad(
    output: &Tensor,
    grad_out: &Tensor,
    cfg: &SoftAssignConfig,
) -> Result<(Tensor, Tensor)> {
    fn run<T: Compute>(
        output: &Tensor,
        grad_out: &Tensor,
        cfg: &SoftAssignConfig,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let (n, k) = (output.shape()[0], output.shape()[1]);
        let (out, grad) = (values::<T>(output)?, values::<T>(grad_out)?);
        let tau = T::from_f64(cfg.temperature);
        let log_output = cfg.output == AssignmentOutput::LogProbabilities;
        let mut g = vec![T::zero(); n * k];
        let row_sums: Vec<T> = g
            .par_chunks_mut(k)
            .enumerate()
            .map(|(i, dst)| {
                let (o_row, g_row) = (&out[i * k..][..k], &grad[i * k..][..k]);
                // a, renormalised to sum to 1 (see the module docs: a no-op in exact arithmetic, and
                // what keeps Σ_k G_ik = 0 when the stored output was rounded).
                for (d, &o) in dst.iter_mut().zip(o_row) {
                    *d = if log_output { o.exp() } else { o };
                }
                let mass = dst.iter().fold(T::zero(), |acc, &a| acc + a);
                for d in dst.iter_mut() {
                    *d = *d / mass;
                }
                if log_output {
                    // dℓ = dlog a − a·Σ dlog a.
                    let total = g_row.iter().fold(T::zero(), |acc, &v| acc + v);
                    for (d, &gr) in dst.iter_mut().zip(g_row) {
                        *d = -(gr - *d * total) / tau;
                    }
                } else {
                    // dℓ = a·(da − Σ a·da).
                    let dot = dst
                        .iter()
                        .zip(g_row)
                        .fold(T::zero(), |acc, (&a, &gr)| acc + a * gr);
                    for (d, &gr) in dst.iter_mut().zip(g_row) {
                        *d = -(*d * (gr - dot)) / tau;
                    }
                }
                dst.iter().fold(T::zero(), |acc, &v| acc + v)
            })
            .collect();
        Ok((g, row_sums))
    }
    let (n, k) = (output.shape()[0], output.shape()[1]);
    if compute_dtype(output.dtype()) == DType::F64 {
        let (g, r) = run::<f64>(output, grad_out, cfg)?;
        Ok((Tensor::from_vec(g, &[n, k])?, Tensor::from_vec(r, &[n])?))
    } else {
        let (g, r) = run::<f32>(output, grad_out, cfg)?;
        Ok((Tensor::from_vec(g, &[n, k])?, Tensor::from_vec(r, &[n])?))
    }
}

pub(super) fn col_sums(m: &Tensor) -> Result<Tensor> {
    fn run<T: Compute>(m: &Tensor) -> Result<Vec<T>> {
        let cols = m.shape()[1];
        let v = values::<T>(m)?;
        let mut out = vec![T::zero(); cols];
        if cols == 0 {
            return Ok(out);
        }
        for row in v.chunks(cols) {
            for (o, &x) in out.iter_mut().zip(row) {
                *o = *o + x;
            }
        }
        Ok(out)
    }
    typed!(m.dtype(), run(m), |v| Tensor::from_vec(v, &[m.shape()[1]]))
}

pub(super) fn combine(t: &Tensor, sums: &Tensor, prod: &Tensor) -> Result<Tensor> {
    fn run<T: Compute>(t: &Tensor, sums: &Tensor, prod: &Tensor) -> Result<Vec<T>> {
        let cols = t.shape()[1];
        let (tv, s, p) = (values::<T>(t)?, values::<T>(sums)?, values::<T>(prod)?);
        let two = T::from_f64(2.0);
        let mut out = vec![T::zero(); tv.len()];
        if cols == 0 {
            return Ok(out);
        }
        out.par_chunks_mut(cols).enumerate().for_each(|(r, dst)| {
            let (t_row, p_row) = (&tv[r * cols..][..cols], &p[r * cols..][..cols]);
            for ((o, &v), &pr) in dst.iter_mut().zip(t_row).zip(p_row) {
                *o = two * (s[r] * v - pr);
            }
        });
        Ok(out)
    }
    typed!(t.dtype(), run(t, sums, prod), |v| {
        into_tensor(v, t.shape(), t.dtype())
    })
}

// ---------------------------------------------------------------------------------------------------------
// Hard max-cosine match

/// `row / max(‖row‖, eps)` into `dst`; NaN when the squared norm is not finite.
fn normalize_row<T: Compute>(row: &[T], eps: T, dst: &mut [T]) {
    let sq = sum_of_squares(row);
    if !sq.is_finite() {
        dst.fill(T::nan());
        return;
    }
    let norm = sq.sqrt();
    let denom = if norm > eps { norm } else { eps };
    for (d, &v) in dst.iter_mut().zip(row) {
        *d = v / denom;
    }
}

/// Per row: the best cosine and its prototype index (NaN and −1 without candidates), in the compute type.
fn max_cosine<T: Compute>(
    x: &Tensor,
    prototypes: &Tensor,
    plan: &MatchPlan,
) -> Result<(Vec<T>, Vec<i64>)> {
    let d = x.shape()[1];
    let k = prototypes.shape()[0];
    let eps = T::from_f64(plan.eps);
    let (xv, pv) = (values::<T>(x)?, values::<T>(prototypes)?);
    let mut p_hat = vec![T::zero(); k * d];
    if d > 0 {
        p_hat
            .par_chunks_mut(d)
            .zip(pv.par_chunks(d))
            .for_each(|(dst, row)| normalize_row(row, eps, dst));
    }
    let results: Vec<(T, i64)> = (0..plan.rows)
        .into_par_iter()
        .map(|i| {
            let mut x_hat = vec![T::zero(); d];
            normalize_row(&xv[i * d..][..d], eps, &mut x_hat);
            let (begin, end) = (plan.ranges[2 * i] as usize, plan.ranges[2 * i + 1] as usize);
            let mut best = (T::nan(), -1i64);
            for &k in &plan.members[begin..end] {
                let p_row = &p_hat[k as usize * d..][..d];
                let cos = x_hat
                    .iter()
                    .zip(p_row)
                    .fold(T::zero(), |acc, (&a, &b)| acc + a * b);
                // The first candidate is taken; a later one replaces it when larger, or when NaN (a NaN,
                // once taken, stays): the first maximum, with NaN propagating as in `torch.max`.
                if best.1 < 0 || (!best.0.is_nan() && (cos.is_nan() || cos > best.0)) {
                    best = (cos, k);
                }
            }
            best
        })
        .collect();
    Ok(results.into_iter().unzip())
}

pub(super) fn max_cosine_into(
    x: &Tensor,
    prototypes: &Tensor,
    plan: &MatchPlan,
    similarity: &mut Tensor,
    index: &mut Tensor,
) -> Result<()> {
    let rows = [plan.rows];
    let (sim, idx) = if compute_dtype(x.dtype()) == DType::F64 {
        let (s, i) = max_cosine::<f64>(x, prototypes, plan)?;
        (into_tensor(s, &rows, x.dtype())?, i)
    } else {
        let (s, i) = max_cosine::<f32>(x, prototypes, plan)?;
        (into_tensor(s, &rows, x.dtype())?, i)
    };
    *similarity = sim;
    *index = Tensor::from_vec(idx, &rows)?;
    Ok(())
}

pub(super) fn robust_weights_into(
    student: &Tensor,
    teacher: &Tensor,
    student_prototypes: &Tensor,
    teacher_prototypes: &Tensor,
    plan: &MatchPlan,
    out: &mut Tensor,
) -> Result<()> {
    fn run<T: Compute>(
        student: &Tensor,
        teacher: &Tensor,
        student_prototypes: &Tensor,
        teacher_prototypes: &Tensor,
        plan: &MatchPlan,
    ) -> Result<Vec<T>> {
        let (s, idx) = max_cosine::<T>(student, student_prototypes, plan)?;
        let (t, _) = max_cosine::<T>(teacher, teacher_prototypes, plan)?;
        Ok(s.iter()
            .zip(&t)
            .zip(&idx)
            .map(|((&s, &t), &i)| {
                if i < 0 {
                    T::one() // no prototype of the class: no evidence, no down-weighting
                } else {
                    T::one() - (s - t).abs()
                }
            })
            .collect())
    }
    let dtype = out.dtype();
    let rows = [plan.rows];
    *out = typed!(
        student.dtype(),
        run(
            student,
            teacher,
            student_prototypes,
            teacher_prototypes,
            plan
        ),
        |v| into_tensor(v, &rows, dtype)
    )?;
    Ok(())
}
