//! CPU reference for the element- and row-wise parts of the family (the products go through
//! [`crate::ops::matmul`]). Generic over the compute type (f64 for gradchecks and fixtures, f32 otherwise; half
//! storage is widened by the caller), deterministic: every sum runs in one fixed order, whatever the thread
//! count. Each function mirrors one kernel of kernels/graph_conv.cu, with the same order of operations.

use crate::tensor::Real;
use rayon::prelude::*;

/// Rows of `[rows, m]` per parallel task in the per-row loops.
const ROW_GROUP: usize = 16;

/// `degree[r] = 1 + Σ_j a[r, j]` (the row sums of `A + I`) and `inv_sqrt[r] = degree[r]^-1/2` for `a` viewed
/// as `[rows, m]`.
pub(super) fn degrees<R: Real>(a: &[R], m: usize) -> (Vec<R>, Vec<R>) {
    let degree: Vec<R> = if m == 0 {
        Vec::new()
    } else {
        a.par_chunks(m)
            .map(|row| row.iter().fold(R::zero(), |s, &v| s + v) + R::one())
            .collect()
    };
    let inv_sqrt = degree.iter().map(|&d| R::one() / d.sqrt()).collect();
    (degree, inv_sqrt)
}

/// The first non-finite element of `a` viewed as `[batch, m, m]`: `(b, p, q, value)`.
pub(super) fn first_non_finite<R: Real>(a: &[R], m: usize) -> Option<(usize, usize, usize, R)> {
    let i = a.iter().position(|v| !v.is_finite())?;
    let mm = m * m;
    Some((i / mm, (i % mm) / m, i % m, a[i]))
}

/// `Â[b, p, q] = s[b, p] · (A[b, p, q] + δ_pq) · s[b, q]`.
pub(super) fn normalize<R: Real>(a: &[R], inv_sqrt: &[R], m: usize) -> Vec<R> {
    let mut out = vec![R::zero(); a.len()];
    if m == 0 {
        return out;
    }
    out.par_chunks_mut(m)
        .zip(a.par_chunks(m))
        .enumerate()
        .for_each(|(r, (out_row, a_row))| {
            let (b, p) = (r / m, r % m);
            let s_b = &inv_sqrt[b * m..][..m];
            for (q, (o, &v)) in out_row.iter_mut().zip(a_row).enumerate() {
                let tilde = if p == q { v + R::one() } else { v };
                *o = s_b[p] * tilde * s_b[q];
            }
        });
    out
}

/// Gradient of `Â = D^-1/2 (A + I) D^-1/2` with respect to `A` given `g = dÂ` (`[batch, m, m]`), from `A`
/// and `s = D^-1/2`: `dA[p, q] = g[p, q] s_p s_q − ½ s_p² (Σ_k g[p, k] Â[p, k] + Σ_k g[k, p] Â[k, p])`.
pub(super) fn adjacency_grad<R: Real>(g: &[R], a: &[R], inv_sqrt: &[R], m: usize) -> Vec<R> {
    let mut out = vec![R::zero(); g.len()];
    if m == 0 {
        return out;
    }
    let mm = m * m;
    for ((g_b, a_b), (s_b, out_b)) in g
        .chunks(mm)
        .zip(a.chunks(mm))
        .zip(inv_sqrt.chunks(m).zip(out.chunks_mut(mm)))
    {
        // Σ_k g[p, k] Ã[p, k] s_k, times s_p (the kernel's order).
        let row_sums: Vec<R> = (0..m)
            .into_par_iter()
            .map(|p| {
                let mut sum = R::zero();
                for k in 0..m {
                    let tilde = if k == p {
                        a_b[p * m + k] + R::one()
                    } else {
                        a_b[p * m + k]
                    };
                    sum = sum + g_b[p * m + k] * tilde * s_b[k];
                }
                sum * s_b[p]
            })
            .collect();
        // Σ_k g[k, p] Ã[k, p] s_k, accumulated row by row, times s_p.
        let mut col_sums = vec![R::zero(); m];
        for k in 0..m {
            for (p, c) in col_sums.iter_mut().enumerate() {
                let tilde = if k == p {
                    a_b[k * m + p] + R::one()
                } else {
                    a_b[k * m + p]
                };
                *c = *c + g_b[k * m + p] * tilde * s_b[k];
            }
        }
        for (c, &s) in col_sums.iter_mut().zip(s_b) {
            *c = *c * s;
        }
        let half = R::from_f64(0.5);
        out_b
            .par_chunks_mut(m * ROW_GROUP)
            .enumerate()
            .for_each(|(group, out_rows)| {
                for (r, out_row) in out_rows.chunks_mut(m).enumerate() {
                    let p = group * ROW_GROUP + r;
                    let sp = s_b[p];
                    let shift = half * sp * sp * (row_sums[p] + col_sums[p]);
                    for (q, o) in out_row.iter_mut().enumerate() {
                        *o = g_b[p * m + q] * sp * s_b[q] - shift;
                    }
                }
            });
    }
    out
}

/// `x` repeated `batch` times.
pub(super) fn tile_batch<R: Real>(x: &[R], batch: usize) -> Vec<R> {
    let mut out = Vec::with_capacity(x.len() * batch);
    for _ in 0..batch {
        out.extend_from_slice(x);
    }
    out
}

/// `y[r, c] + bias[c]` over `y` viewed as `[rows, cols]`.
pub(super) fn bias_rows<R: Real>(y: &[R], bias: Option<&[R]>, cols: usize) -> Vec<R> {
    match bias {
        None => y.to_vec(),
        Some(b) => y
            .iter()
            .enumerate()
            .map(|(i, &v)| v + b[i % cols])
            .collect(),
    }
}

/// `out[b, c] = Σ_r x[b, r, c]`, summed in ascending `r`.
pub(super) fn col_sums<R: Real>(x: &[R], batch: usize, rows: usize, cols: usize) -> Vec<R> {
    let mut out = vec![R::zero(); batch * cols];
    if cols == 0 {
        return out;
    }
    for (b, out_b) in out.chunks_mut(cols).enumerate() {
        for r in 0..rows {
            let row = &x[(b * rows + r) * cols..][..cols];
            for (o, &v) in out_b.iter_mut().zip(row) {
                *o = *o + v;
            }
        }
    }
    out
}

/// GloRe node-convolution epilogue: `za + z + bias[c]`, then ReLU (`v < 0 → 0`, NaN kept) when `relu`.
pub(super) fn node_conv_epilogue<R: Real>(
    za: &[R],
    z: &[R],
    bias: Option<&[R]>,
    cols: usize,
    relu: bool,
) -> Vec<R> {
    za.iter()
        .zip(z)
        .enumerate()
        .map(|(i, (&a, &b))| {
            let mut v = a + b;
            if let Some(bias) = bias {
                v = v + bias[i % cols];
            }
            if relu && v < R::zero() {
                v = R::zero();
            }
            v
        })
        .collect()
}

/// `grad ⊙ 1[out > 0]`, or `grad` itself without a ReLU.
pub(super) fn relu_grad<R: Real>(grad: &[R], out: Option<&[R]>) -> Vec<R> {
    match out {
        None => grad.to_vec(),
        Some(out) => grad
            .iter()
            .zip(out)
            .map(|(&g, &o)| if o > R::zero() { g } else { R::zero() })
            .collect(),
    }
}
