//! CPU reference of the full reductions and the last-axis maximum (the axis sums run on the element-wise
//! family's reference). Generic over the compute type (f64 for f64 tensors, f32 otherwise).

use crate::error::Result;
use crate::ops::elementwise::cpu::{store, typed, Compute};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Elements per chunk of the full sum: each chunk is added in index order, then the chunk sums in order,
/// so the result does not depend on the thread count.
const CHUNK: usize = 4096;

fn ordered_sum<T: Compute>(values: &[T]) -> T {
    values.iter().fold(T::zero(), |acc, &v| acc + v)
}

/// `Σ x` (divided by `n` for the mean) as a shape-`[]` tensor of the compute dtype; `x` is non-empty.
pub(super) fn sum_all(x: &Tensor, mean: bool) -> Result<Tensor> {
    fn run<T: Compute>(x: &Tensor, mean: bool) -> Result<Vec<T>> {
        let v = x.host_values::<T>()?;
        let chunk_sums: Vec<T> = v.par_chunks(CHUNK).map(ordered_sum).collect();
        let total = ordered_sum(&chunk_sums);
        Ok(vec![if mean {
            total / T::from_f64(v.len() as f64)
        } else {
            total
        }])
    }
    typed!(x.dtype(), run(x, mean), |v| Tensor::from_vec(v, &[]))
}

/// The first maximum of a row (the first NaN if there is one) and its position; the row is non-empty.
pub(crate) fn row_max<T: Compute>(row: &[T]) -> (T, usize) {
    let mut best = (row[0], 0);
    for (j, &v) in row.iter().enumerate().skip(1) {
        if best.0.is_nan() {
            break;
        }
        if v.is_nan() || v > best.0 {
            best = (v, j);
        }
    }
    best
}

pub(super) fn max_last_axis(
    x: &Tensor,
    cols: usize,
    values: &mut Tensor,
    indices: &mut Tensor,
) -> Result<()> {
    fn run<T: Compute>(x: &Tensor, cols: usize) -> Result<(Vec<T>, Vec<i64>)> {
        let v = x.host_values::<T>()?;
        Ok(v.par_chunks(cols)
            .map(|row| {
                let (m, j) = row_max(row);
                (m, j as i64)
            })
            .unzip())
    }
    let (shape, dtype) = (values.shape().to_vec(), values.dtype());
    let mut found = Vec::new();
    *values = typed!(x.dtype(), run(x, cols), |(m, j)| {
        found = j;
        store(m, &shape, dtype)
    })?;
    *indices = Tensor::from_vec(found, &shape)?;
    Ok(())
}

/// `grad[r, indices[r]] = grad_values[r]`, every other element 0 (`grad` is zero-filled on entry).
pub(super) fn max_last_axis_backward(
    indices: &[i64],
    grad_values: &Tensor,
    cols: usize,
    grad: &mut Tensor,
) -> Result<()> {
    fn run<T: Compute>(indices: &[i64], grad_values: &Tensor, cols: usize) -> Result<Vec<T>> {
        let g = grad_values.host_values::<T>()?;
        let mut out = vec![T::zero(); indices.len() * cols];
        out.par_chunks_mut(cols)
            .zip(indices.par_iter().zip(g.par_iter()))
            .for_each(|(row, (&j, &gv))| row[j as usize] = gv);
        Ok(out)
    }
    let (shape, dtype) = (grad.shape().to_vec(), grad.dtype());
    *grad = typed!(dtype, run(indices, grad_values, cols), |v| store(
        v, &shape, dtype
    ))?;
    Ok(())
}
