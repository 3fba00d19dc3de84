//! CPU reference for the shape ops: the specification the CUDA kernels are checked against, bit for bit.
//!
//! Data movement is generic over the element type (every dtype, moved as it is). The one reduction,
//! index_select's backward, sums each output element's sources in ascending order in f32 (f64 for f64
//! storage) and rounds once — the order and precision of the CUDA kernel. Rows are processed in parallel;
//! no result depends on the thread count.

use super::plan::{Collapsed, Gather, InverseIndex, RowCopy};
use crate::error::{Error, Result};
use crate::tensor::{DType, Element, HostElement, Tensor};
use rayon::prelude::*;

/// Rows handed to one rayon task at least, so small rows do not drown in scheduling.
fn min_rows(row_len: usize) -> usize {
    (4096 / row_len.max(1)).max(1)
}

/// Calls `$f::<T>(args)` with `T` the element type of `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            DType::F16 => $f::<half::f16>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            DType::I64 => $f::<i64>($($arg),*),
        }
    };
}

// ---------------------------------------------------------------------------------------------------------
// Permute

pub(super) fn permute(x: &Tensor, c: &Collapsed, out_shape: &[usize]) -> Result<Tensor> {
    fn typed<T: HostElement>(x: &Tensor, c: &Collapsed, out_shape: &[usize]) -> Result<Tensor> {
        let src = x.as_slice::<T>()?;
        let out = if c.is_identity() {
            src.to_vec()
        } else {
            permute_slice(src, c)
        };
        Tensor::from_vec(out, out_shape)
    }
    by_dtype!(x.dtype(), typed(x, c, out_shape))
}

/// Output rows (the output's innermost axis) in parallel; each row's base offset in the input comes from
/// its index decomposed over the outer output extents.
fn permute_slice<T: Element>(src: &[T], c: &Collapsed) -> Vec<T> {
    let r = c.rank();
    let out_dims = c.out_dims();
    let in_strides = c.in_strides_by_output();
    let (row_len, row_stride) = (out_dims[r - 1], in_strides[r - 1]);
    let mut out = vec![T::zeroed(); src.len()];
    out.par_chunks_mut(row_len)
        .with_min_len(min_rows(row_len))
        .enumerate()
        .for_each(|(row, dst)| {
            let (mut rest, mut base) = (row, 0);
            for k in (0..r - 1).rev() {
                base += (rest % out_dims[k]) * in_strides[k];
                rest /= out_dims[k];
            }
            for (j, d) in dst.iter_mut().enumerate() {
                *d = src[base + j * row_stride];
            }
        });
    out
}

// ---------------------------------------------------------------------------------------------------------
// Row copies (narrow, concat, split) and narrow's backward

/// A tensor of `shape` (`numel` elements, `dtype`) assembled by the row copies from each source; elements
/// no copy covers are zero.
pub(super) fn copy_rows(
    copies: &[(&Tensor, RowCopy)],
    numel: usize,
    shape: &[usize],
    dtype: DType,
) -> Result<Tensor> {
    fn typed<T: HostElement>(
        copies: &[(&Tensor, RowCopy)],
        numel: usize,
        shape: &[usize],
    ) -> Result<Tensor> {
        let mut dst = vec![T::zeroed(); numel];
        for (src, copy) in copies {
            apply_copy(src.as_slice::<T>()?, &mut dst, copy)?;
        }
        Tensor::from_vec(dst, shape)
    }
    by_dtype!(dtype, typed(copies, numel, shape))
}

/// A zero tensor of `shape` with `src` placed by `copy` (narrow's backward).
pub(super) fn pad_rows(src: &Tensor, copy: RowCopy, shape: &[usize]) -> Result<Tensor> {
    let numel = shape.iter().product();
    copy_rows(&[(src, copy)], numel, shape, src.dtype())
}

fn apply_copy<T: Element>(src: &[T], dst: &mut [T], c: &RowCopy) -> Result<()> {
    if c.is_empty() {
        return Ok(());
    }
    // The plans are built from validated shapes; a mismatch here is a bug, reported rather than sliced past.
    let src_end = (c.outer - 1) * c.src_stride + c.src_offset + c.row_len;
    if dst.len() != c.outer * c.dst_stride
        || c.dst_offset + c.row_len > c.dst_stride
        || src_end > src.len()
    {
        return Err(Error::invalid(
            "row copy",
            format!(
                "{c:?} does not fit a source of {} and a destination of {}",
                src.len(),
                dst.len()
            ),
        ));
    }
    dst.par_chunks_mut(c.dst_stride)
        .with_min_len(min_rows(c.row_len))
        .enumerate()
        .for_each(|(o, row)| {
            let from = o * c.src_stride + c.src_offset;
            row[c.dst_offset..c.dst_offset + c.row_len]
                .copy_from_slice(&src[from..from + c.row_len]);
        });
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// index_select and its backward

pub(super) fn index_select(
    x: &Tensor,
    idx: &[i64],
    g: Gather,
    out_shape: &[usize],
) -> Result<Tensor> {
    fn typed<T: HostElement>(
        x: &Tensor,
        idx: &[i64],
        g: Gather,
        out_shape: &[usize],
    ) -> Result<Tensor> {
        let src = x.as_slice::<T>()?;
        let mut out = vec![T::zeroed(); g.outer * g.dst_rows * g.inner];
        out.par_chunks_mut(g.inner)
            .with_min_len(min_rows(g.inner))
            .enumerate()
            .for_each(|(r, dst)| {
                let (o, m) = (r / g.dst_rows, r % g.dst_rows);
                let from = (o * g.src_rows + idx[m] as usize) * g.inner;
                dst.copy_from_slice(&src[from..from + g.inner]);
            });
        Tensor::from_vec(out, out_shape)
    }
    by_dtype!(x.dtype(), typed(x, idx, g, out_shape))
}

/// The accumulator of index_select's backward: f32 for f32/f16/bf16 storage, f64 for f64.
trait Accumulator: Copy + Send + Sync + std::ops::Add<Output = Self> {
    const ZERO: Self;
    fn widen<S: Element>(v: S) -> Self;
    fn store<S: Element>(self) -> S;
}

impl Accumulator for f32 {
    const ZERO: Self = 0.0;
    fn widen<S: Element>(v: S) -> Self {
        v.to_f32()
    }
    fn store<S: Element>(self) -> S {
        S::from_f32(self)
    }
}

impl Accumulator for f64 {
    const ZERO: Self = 0.0;
    fn widen<S: Element>(v: S) -> Self {
        v.to_f64()
    }
    fn store<S: Element>(self) -> S {
        S::from_f64(self)
    }
}

pub(super) fn index_select_backward(
    grad: &Tensor,
    inverse: &InverseIndex,
    g: Gather,
    out_shape: &[usize],
) -> Result<Tensor> {
    fn typed<S: HostElement, A: Accumulator>(
        grad: &Tensor,
        inverse: &InverseIndex,
        g: Gather,
        out_shape: &[usize],
    ) -> Result<Tensor> {
        let src = grad.as_slice::<S>()?;
        let mut out = vec![S::zeroed(); g.outer * g.src_rows * g.inner];
        out.par_chunks_mut(g.inner)
            .with_min_len(min_rows(g.inner))
            .enumerate()
            .for_each(|(r, dst)| {
                let (o, d) = (r / g.src_rows, r % g.src_rows);
                let mut acc = vec![A::ZERO; g.inner];
                for &m in inverse.sources_of(d) {
                    let from = (o * g.dst_rows + m as usize) * g.inner;
                    for (a, &v) in acc.iter_mut().zip(&src[from..from + g.inner]) {
                        *a = *a + A::widen(v);
                    }
                }
                for (d, a) in dst.iter_mut().zip(acc) {
                    *d = a.store();
                }
            });
        Tensor::from_vec(out, out_shape)
    }
    match grad.dtype() {
        DType::F32 => typed::<f32, f32>(grad, inverse, g, out_shape),
        DType::F64 => typed::<f64, f64>(grad, inverse, g, out_shape),
        DType::F16 => typed::<half::f16, f32>(grad, inverse, g, out_shape),
        DType::BF16 => typed::<half::bf16, f32>(grad, inverse, g, out_shape),
        DType::I64 => Err(Error::DType {
            arg: "grad_out".into(),
            expected: "a float dtype (f32, f64, f16, bf16)".into(),
            got: "i64".into(),
        }),
    }
}
