//! CPU GEMM: the [`gemm`] crate's packed, SIMD micro-kernels for f32 and f64, and the plain blocked
//! reference they are tested against.
//!
//! # Determinism
//!
//! Results are bitwise reproducible run to run, and they do not depend on the number of threads: `gemm`
//! splits the work across threads by whole output micro-tiles, while the order in which each element's
//! `k` terms are summed is fixed by its cache blocking (`kc`, chosen from the matrix sizes and the CPU's
//! cache sizes) and the micro-kernel, neither of which depends on the thread count
//! (`results_do_not_depend_on_the_thread_count` in tests.rs checks this bitwise for 1–4 threads and the
//! serial path). They may differ between machines: the micro-kernel is picked at run time from the CPU's
//! instruction set (AVX2/FMA, AVX-512, NEON...) and the blocking from its caches, so another CPU can
//! round differently (within the usual f32/f64 GEMM error).
//!
//! [`reference`] is the previous implementation, kept as the oracle of the tests: operands laid out as
//! row-major `op(A)` `[M, K]` and `op(B)` `[K, N]` (copied when transposed), then each row of C accumulated
//! as `Σ_k A[i,k]·B[k,:]` in ascending `k`.

use super::Dims;
use crate::tensor::Real;
use gemm::Parallelism;
use rayon::prelude::*;
use std::any::TypeId;

/// Row-major strides (in elements) of the operands of one product, as `gemm` wants them: (row, column).
struct Strides {
    lhs: (isize, isize),
    rhs: (isize, isize),
}

impl Strides {
    fn of(d: &Dims) -> Self {
        let (m, n, k) = (d.m as isize, d.n as isize, d.k as isize);
        Strides {
            // op(A)[i, kk] is A[i, kk] (A is [m, k]) or A[kk, i] (A is [k, m]).
            lhs: if d.trans_a { (1, m) } else { (k, 1) },
            // op(B)[kk, j] is B[kk, j] (B is [k, n]) or B[j, kk] (B is [n, k]).
            rhs: if d.trans_b { (1, k) } else { (n, 1) },
        }
    }
}

/// `[batch, M, N]` row-major, with `gemm` using the global rayon pool.
pub(super) fn matmul<T: Real>(a: &[T], b: &[T], d: &Dims) -> Vec<T> {
    matmul_with(a, b, d, Parallelism::Rayon(0))
}

/// [`matmul`] with an explicit `gemm` parallelism (tests compare thread counts).
pub(super) fn matmul_with<T: Real>(a: &[T], b: &[T], d: &Dims, parallelism: Parallelism) -> Vec<T> {
    let (m, n, k) = (d.m, d.n, d.k);
    let mut c = vec![T::zero(); d.batch * m * n];
    if m * n == 0 {
        return c;
    }
    assert_eq!(a.len(), d.batch * m * k, "a holds batch·M·K elements");
    assert_eq!(b.len(), d.batch * k * n, "b holds batch·K·N elements");
    let one_product = |batch: usize, c_batch: &mut [T], parallelism: Parallelism| {
        let a_batch = &a[batch * m * k..][..m * k];
        let b_batch = &b[batch * k * n..][..k * n];
        product(a_batch, b_batch, c_batch, d, parallelism);
    };
    if d.batch > 1 && m * n * k < 1 << 18 {
        // Many small products: one per task, each single-threaded (same bits, see the module docs).
        c.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(batch, c_batch)| one_product(batch, c_batch, Parallelism::None));
    } else {
        for (batch, c_batch) in c.chunks_mut(m * n).enumerate() {
            one_product(batch, c_batch, parallelism);
        }
    }
    c
}

/// One product `c = op(a)·op(b)` of `T` = f32 or f64 (the only [`Real`] types).
fn product<T: Real>(a: &[T], b: &[T], c: &mut [T], d: &Dims, parallelism: Parallelism) {
    assert!(
        TypeId::of::<T>() == TypeId::of::<f32>() || TypeId::of::<T>() == TypeId::of::<f64>(),
        "gemm is used for f32 and f64 only"
    );
    let s = Strides::of(d);
    // SAFETY: `gemm` reads op(A) at `i·lhs.0 + kk·lhs.1` for i < m, kk < k and op(B) at `kk·rhs.0 + j·rhs.1`
    // for kk < k, j < n, and writes C at `i·n + j`. With the strides of `Strides::of`, the largest offsets are
    // m·k − 1 and k·n − 1 in both layouts (e.g. transposed A: (m−1)·1 + (k−1)·m), within `a` (m·k elements),
    // `b` (k·n) and `c` (m·n, asserted by the caller's chunking). `read_dst = false` means C is only
    // written; it is an exclusive borrow, so nothing else reads it concurrently. T is f32 or f64 (asserted
    // above), types `gemm` dispatches to its real kernels. m, n > 0 here; k may be 0 (then C is zeroed).
    unsafe {
        gemm::gemm(
            d.m,
            d.n,
            d.k,
            c.as_mut_ptr(),
            1,
            d.n as isize,
            false,
            a.as_ptr(),
            s.lhs.1,
            s.lhs.0,
            b.as_ptr(),
            s.rhs.1,
            s.rhs.0,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Rows of C per parallel task of the reference.
#[cfg(test)]
const ROW_GROUP: usize = 8;
/// Rows of op(B) per cache block of the reference.
#[cfg(test)]
const K_BLOCK: usize = 128;

#[cfg(test)]
fn transposed<T: Real>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::zero(); rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = src[r * cols + c];
        }
    }
    out
}

/// The blocked reference product, `[batch, M, N]` row-major: safe code, ascending-`k` sums.
#[cfg(test)]
pub(super) fn reference<T: Real>(a: &[T], b: &[T], d: &Dims) -> Vec<T> {
    let (m, n, k) = (d.m, d.n, d.k);
    let mut c = vec![T::zero(); d.batch * m * n];
    if m * n == 0 {
        return c;
    }
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
