//! CPU reference of the last-axis softmax and log-softmax: the specification the CUDA kernels are checked
//! against. Generic over the compute type (f64 for f64 tensors, f32 otherwise); rows run in parallel, each
//! row's sums in index order.

use super::{Kind, Rows};
use crate::error::Result;
use crate::ops::elementwise::cpu::{store, typed, Compute};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Rows per parallel task, so that short rows are not scheduled one by one.
fn rows_per_task(cols: usize) -> usize {
    4096usize.div_ceil(cols.max(1))
}

/// One row of `softmax(x·inv_t)` or its log into `dst`.
pub(crate) fn forward_row<T: Compute>(kind: Kind, row: &[T], inv_t: T, dst: &mut [T]) {
    let mut max = T::neg_infinity();
    for &v in row {
        let z = v * inv_t;
        if z > max {
            max = z;
        }
    }
    let mut sum = T::zero();
    for &v in row {
        sum = sum + (v * inv_t - max).exp();
    }
    match kind {
        Kind::Softmax => {
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = (v * inv_t - max).exp() / sum;
            }
        }
        Kind::LogSoftmax => {
            let log_sum = sum.ln();
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = (v * inv_t - max) - log_sum;
            }
        }
    }
}

/// One row of the gradient from the forward output `y` (p or log p) and the upstream gradient `g`.
pub(crate) fn backward_row<T: Compute>(kind: Kind, y: &[T], g: &[T], inv_t: T, dst: &mut [T]) {
    match kind {
        Kind::Softmax => {
            let dot = y.iter().zip(g).fold(T::zero(), |acc, (&p, &g)| acc + g * p);
            for ((d, &p), &g) in dst.iter_mut().zip(y).zip(g) {
                *d = p * (g - dot) * inv_t;
            }
        }
        Kind::LogSoftmax => {
            let sum = g.iter().fold(T::zero(), |acc, &g| acc + g);
            for ((d, &lp), &g) in dst.iter_mut().zip(y).zip(g) {
                *d = (g - lp.exp() * sum) * inv_t;
            }
        }
    }
}

pub(super) fn forward_into(kind: Kind, x: &Tensor, rows: Rows, out: &mut Tensor) -> Result<()> {
    fn run<T: Compute>(kind: Kind, x: &Tensor, rows: Rows) -> Result<Vec<T>> {
        let xv = x.host_values::<T>()?;
        let inv_t = T::from_f64(rows.inv_temperature);
        let mut out = vec![T::zero(); rows.rows * rows.cols];
        out.par_chunks_mut(rows.cols)
            .zip(xv.par_chunks(rows.cols))
            .with_min_len(rows_per_task(rows.cols))
            .for_each(|(dst, row)| forward_row(kind, row, inv_t, dst));
        Ok(out)
    }
    let (shape, dtype) = (out.shape().to_vec(), out.dtype());
    *out = typed!(dtype, run(kind, x, rows), |v| store(v, &shape, dtype))?;
    Ok(())
}

pub(super) fn backward_into(
    kind: Kind,
    output: &Tensor,
    grad_out: &Tensor,
    rows: Rows,
    grad: &mut Tensor,
) -> Result<()> {
    fn run<T: Compute>(
        kind: Kind,
        output: &Tensor,
        grad_out: &Tensor,
        rows: Rows,
    ) -> Result<Vec<T>> {
        let (y, g) = (output.host_values::<T>()?, grad_out.host_values::<T>()?);
        let inv_t = T::from_f64(rows.inv_temperature);
        let mut out = vec![T::zero(); y.len()];
        out.par_chunks_mut(rows.cols)
            .zip(y.par_chunks(rows.cols).zip(g.par_chunks(rows.cols)))
            .with_min_len(rows_per_task(rows.cols))
            .for_each(|(dst, (y, g))| backward_row(kind, y, g, inv_t, dst));
        Ok(out)
    }
    let (shape, dtype) = (grad.shape().to_vec(), grad.dtype());
    *grad = typed!(dtype, run(kind, output, grad_out, rows), |v| store(
        v, &shape, dtype
    ))?;
    Ok(())
}
