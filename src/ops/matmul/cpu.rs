//! CPU reference GEMM: operands are laid out as row-major `op(A)` `[M, K]` and `op(B)` `[K, N]` (copied when
//! transposed), then each row of C is accumulated as `Σ_k A[i,k]·B[k,:]` in ascending `k` — a
//! vectorisable axpy over contiguous rows, deterministic whatever the thread count. Rows are processed in
//! groups so a block of B stays in cache while several rows of C use it.

use super::Dims;
use crate::tensor::Real;
use rayon::prelude::*;

/// Rows of C per parallel task.
const ROW_GROUP: usize = 8;
/// Rows of op(B) per cache block.
const K_BLOCK: usize = 128;

fn transposed<T: Real>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::zero(); rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = src[r * cols + c];
        }
    }
    out
}

/// `[batch, M, N]` row-major.
pub(super) fn matmul<T: Real>(a: &[T], b: &[T], d: &Dims) -> Vec<T> {
    let (m, n, k) = (d.m, d.n, d.k);
    let mut c = vec![T::zero(); d.batch * m * n];
    for (batch, c_batch) in c.chunks_mut(m * n).enumerate() {
        let a_batch = &a[batch * m * k..][..m * k];
        let b_batch = &b[batch * k * n..][..k * n];
        let a_rows = if d.trans_a {
            transposed(a_batch, k, m)
        } else {
            a_batch.to_vec()
        };
        let b_rows = if d.trans_b {
            transposed(b_batch, n, k)
        } else {
            b_batch.to_vec()
        };
        c_batch
            .par_chunks_mut(ROW_GROUP * n)
            .enumerate()
            .for_each(|(group, c_group)| {
                let first_row = group * ROW_GROUP;
                for k0 in (0..k).step_by(K_BLOCK) {
                    let k1 = (k0 + K_BLOCK).min(k);
                    for (r, c_row) in c_group.chunks_mut(n).enumerate() {
                        let a_row = &a_rows[(first_row + r) * k..][..k];
                        for kk in k0..k1 {
                            let a_ik = a_row[kk];
                            let b_row = &b_rows[kk * n..][..n];
                            for (c_ij, &b_kj) in c_row.iter_mut().zip(b_row) {
                                *c_ij = *c_ij + a_ik * b_kj;
                            }
                        }
                    }
                }
            });
    }
    c
}
