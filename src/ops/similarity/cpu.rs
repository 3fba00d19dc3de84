//! CPU reference for the similarity steps: the specification the CUDA kernels are checked against.
//!
//! Generic over the compute type (f64 for f64 tensors, f32 otherwise; half storage is widened on entry
//! and rounded once when a result is written). Every sum runs in one fixed order, so results are
//! deterministic whatever the thread count; rows are processed in parallel.

use super::primitives::{compute_dtype, PairMode};
use crate::error::Result;
use crate::tensor::{DType, HostElement, Real, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;

/// A compute type of the reference: f32 or f64.
trait Compute: Real + HostElement {}
impl<T: Real + HostElement> Compute for T {}

/// Calls `$f::<T>(args)` with `T` the compute type of `$dtype`, then `$finish` on its vector (the closure
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

fn indices(index: Option<&Tensor>) -> Result<Option<Vec<usize>>> {
    index
        .map(|t| Ok(t.as_slice::<i64>()?.iter().map(|&v| v as usize).collect()))
        .transpose()
}

fn sum_of_squares<T: Compute>(row: &[T]) -> T {
    row.iter().fold(T::zero(), |acc, &v| acc + v * v)
}

// ---------------------------------------------------------------------------------------------------------
// Row normalisation

pub(super) fn normalize_into(
    x: &Tensor,
    index: Option<&Tensor>,
    eps: f64,
    out: &mut Tensor,
) -> Result<()> {
    fn run<T: Compute>(
        x: &Tensor,
        index: Option<&[usize]>,
        eps: f64,
        rows: usize,
    ) -> Result<Vec<T>> {
        let cols = x.shape()[1];
        let x = values::<T>(x)?;
        let mut out = vec![T::zero(); rows * cols];
        if cols == 0 {
            return Ok(out);
        }
        let eps = T::from_f64(eps);
        out.par_chunks_mut(cols).enumerate().for_each(|(r, dst)| {
            let src = index.map_or(r, |i| i[r]);
            let row = &x[src * cols..][..cols];
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
        });
        Ok(out)
    }
    let index = indices(index)?;
    let shape = out.shape().to_vec();
    let dtype = out.dtype();
    *out = typed!(x.dtype(), run(x, index.as_deref(), eps, shape[0]), |v| {
        into_tensor(v, &shape, dtype)
    })?;
    Ok(())
}

pub(super) fn normalize_backward(
    x: &Tensor,
    index: Option<&Tensor>,
    grad_hat: &Tensor,
    rows_total: usize,
    eps: f64,
) -> Result<Tensor> {
    fn run<T: Compute>(
        x: &Tensor,
        index: Option<&[usize]>,
        grad_hat: &Tensor,
        rows_total: usize,
        eps: f64,
    ) -> Result<Vec<T>> {
        let cols = x.shape()[1];
        let x = values::<T>(x)?;
        let g = values::<T>(grad_hat)?;
        let eps = T::from_f64(eps);
        // grad_hat row of each output row (None: not selected, stays 0).
        let source: Vec<Option<usize>> = match index {
            None => (0..rows_total).map(Some).collect(),
            Some(index) => {
                let mut source = vec![None; rows_total];
                for (r, &row) in index.iter().enumerate() {
                    source[row] = Some(r);
                }
                source
            }
        };
        let mut out = vec![T::zero(); rows_total * cols];
        out.par_chunks_mut(cols).enumerate().for_each(|(row, dst)| {
            let Some(r) = source[row] else { return };
            let x_row = &x[row * cols..][..cols];
            let g_row = &g[r * cols..][..cols];
            let sq = sum_of_squares(x_row);
            if !sq.is_finite() {
                dst.fill(T::nan());
                return;
            }
            let norm = sq.sqrt();
            if norm > eps {
                let dot = x_row
                    .iter()
                    .zip(g_row)
                    .fold(T::zero(), |acc, (&v, &g)| acc + v * g);
                let inv = T::one() / norm;
                let proj = dot * inv; // x̂·g
                for ((d, &v), &g) in dst.iter_mut().zip(x_row).zip(g_row) {
                    *d = (g - v * inv * proj) * inv;
                }
            } else {
                let inv_eps = T::one() / eps;
                for (d, &g) in dst.iter_mut().zip(g_row) {
                    *d = g * inv_eps;
                }
            }
        });
        Ok(out)
    }
    let index = indices(index)?;
    let shape = [rows_total, x.shape()[1]];
    typed!(
        x.dtype(),
        run(x, index.as_deref(), grad_hat, rows_total, eps),
        |v| { into_tensor(v, &shape, x.dtype()) }
    )
}

// ---------------------------------------------------------------------------------------------------------
// Gram-side helpers

pub(super) fn symmetrize(g: &Tensor) -> Result<Tensor> {
    fn run<T: Compute>(g: &Tensor) -> Result<Vec<T>> {
        let m = g.shape()[0];
        let g = values::<T>(g)?;
        let mut out = vec![T::zero(); m * m];
        for i in 0..m {
            for j in 0..m {
                out[i * m + j] = g[i * m + j] + g[j * m + i];
            }
        }
        Ok(out)
    }
    typed!(g.dtype(), run(g), |v| Tensor::from_vec(v, g.shape()))
}

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

pub(super) fn assemble_distance_into(
    gram: &Tensor,
    nx: &Tensor,
    ny: &Tensor,
    mode: PairMode,
    out: &mut Tensor,
) -> Result<()> {
    fn run<T: Compute>(gram: &Tensor, nx: &Tensor, ny: &Tensor, mode: PairMode) -> Result<Vec<T>> {
        let n = gram.shape()[1];
        let (gram, nx, ny) = (values::<T>(gram)?, values::<T>(nx)?, values::<T>(ny)?);
        let two = T::from_f64(2.0);
        let mut out = vec![T::zero(); gram.len()];
        out.par_chunks_mut(n).enumerate().for_each(|(i, dst)| {
            for (j, d) in dst.iter_mut().enumerate() {
                let mut d2 = nx[i] + ny[j] - two * gram[i * n + j];
                if d2 < T::zero() {
                    d2 = T::zero(); // NaN compares false and stays NaN
                }
                if mode.self_mode && i == j {
                    d2 = T::zero();
                }
                *d = if mode.take_sqrt { d2.sqrt() } else { d2 };
            }
        });
        Ok(out)
    }
    let shape = gram.shape().to_vec();
    let dtype = out.dtype();
    *out = typed!(gram.dtype(), run(gram, nx, ny, mode), |v| {
        into_tensor(v, &shape, dtype)
    })?;
    Ok(())
}

pub(super) fn distance_grad_prep(grad: &Tensor, dist: &Tensor, mode: PairMode) -> Result<Tensor> {
    fn run<T: Compute>(grad: &Tensor, dist: &Tensor, mode: PairMode) -> Result<Vec<T>> {
        let n = grad.shape()[1];
        let (g, d) = (values::<T>(grad)?, values::<T>(dist)?);
        let two = T::from_f64(2.0);
        let entry = |k: usize| -> T {
            if d[k] == T::zero() {
                T::zero()
            } else if mode.take_sqrt {
                g[k] / (two * d[k])
            } else {
                g[k]
            }
        };
        let mut out = vec![T::zero(); g.len()];
        out.par_chunks_mut(n).enumerate().for_each(|(i, dst)| {
            for (j, o) in dst.iter_mut().enumerate() {
                *o = if !mode.self_mode {
                    entry(i * n + j)
                } else if i == j {
                    T::zero()
                } else {
                    entry(i * n + j) + entry(j * n + i)
                };
            }
        });
        Ok(out)
    }
    typed!(grad.dtype(), run(grad, dist, mode), |v| {
        Tensor::from_vec(v, grad.shape())
    })
}

pub(super) fn row_sums(m: &Tensor) -> Result<Tensor> {
    fn run<T: Compute>(m: &Tensor) -> Result<Vec<T>> {
        let cols = m.shape()[1];
        let v = values::<T>(m)?;
        if cols == 0 {
            return Ok(vec![T::zero(); m.shape()[0]]);
        }
        Ok(v.par_chunks(cols)
            .map(|row| row.iter().fold(T::zero(), |a, &b| a + b))
            .collect())
    }
    typed!(m.dtype(), run(m), |v| Tensor::from_vec(v, &[m.shape()[0]]))
}

pub(super) fn col_sums(m: &Tensor) -> Result<Tensor> {
    fn run<T: Compute>(m: &Tensor) -> Result<Vec<T>> {
        let cols = m.shape()[1];
        let v = values::<T>(m)?;
        let mut out = vec![T::zero(); cols];
        for row in v.chunks(cols.max(1)).take(m.shape()[0]) {
            for (o, &x) in out.iter_mut().zip(row) {
                *o = *o + x;
            }
        }
        Ok(out)
    }
    typed!(m.dtype(), run(m), |v| Tensor::from_vec(v, &[m.shape()[1]]))
}

pub(super) fn combine(x: &Tensor, rowsum: &Tensor, prod: &Tensor) -> Result<Tensor> {
    fn run<T: Compute>(x: &Tensor, rowsum: &Tensor, prod: &Tensor) -> Result<Vec<T>> {
        let cols = x.shape()[1];
        let (xv, r, p) = (values::<T>(x)?, values::<T>(rowsum)?, values::<T>(prod)?);
        let two = T::from_f64(2.0);
        let mut out = vec![T::zero(); xv.len()];
        if cols == 0 {
            return Ok(out);
        }
        out.par_chunks_mut(cols).enumerate().for_each(|(i, dst)| {
            for (k, o) in dst.iter_mut().enumerate() {
                *o = two * (r[i] * xv[i * cols + k] - p[i * cols + k]);
            }
        });
        Ok(out)
    }
    typed!(x.dtype(), run(x, rowsum, prod), |v| {
        into_tensor(v, x.shape(), x.dtype())
    })
}

// ---------------------------------------------------------------------------------------------------------
// Dsig edge loss

pub(super) fn edge_loss_and_grad(
    a_s: &mut Tensor,
    a_t: &Tensor,
    loss_scale: f64,
    grad_scale: Option<f64>,
) -> Result<Tensor> {
    /// Returns `Σ diff²` (accumulated in f64) and, with a scale, the gradient matrix.
    fn run<T: Compute>(
        a_s: &Tensor,
        a_t: &Tensor,
        grad_scale: Option<f64>,
    ) -> Result<(f64, Option<Vec<T>>)> {
        let (s, t) = (values::<T>(a_s)?, values::<T>(a_t)?);
        let mut sum = 0.0f64;
        for (&a, &b) in s.iter().zip(t.iter()) {
            let diff = a - b;
            sum += (diff * diff).to_f64();
        }
        let grad = grad_scale.map(|scale| {
            let scale = T::from_f64(scale);
            s.iter()
                .zip(t.iter())
                .map(|(&a, &b)| scale * (a - b))
                .collect()
        });
        Ok((sum, grad))
    }
    let compute = compute_dtype(a_t.dtype());
    let loss = if compute == DType::F64 {
        let (sum, grad) = run::<f64>(a_s, a_t, grad_scale)?;
        if let Some(g) = grad {
            *a_s = Tensor::from_vec(g, a_t.shape())?;
        }
        Tensor::from_vec(vec![sum * loss_scale], &[])?
    } else {
        let (sum, grad) = run::<f32>(a_s, a_t, grad_scale)?;
        if let Some(g) = grad {
            *a_s = Tensor::from_vec(g, a_t.shape())?;
        }
        Tensor::from_vec(vec![(sum * loss_scale) as f32], &[])?
    };
    Ok(loss)
}

// ---------------------------------------------------------------------------------------------------------

/// A compute-type result as a tensor of `dtype` (rounded once when `dtype` is narrower).
fn into_tensor<T: Compute>(values: Vec<T>, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::from_vec(values, shape)?.into_dtype(dtype)
}
