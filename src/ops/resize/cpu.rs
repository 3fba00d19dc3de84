//! CPU reference of the resizing ops: the specification the CUDA kernels are checked against. Generic over
//! the compute type (f64 for f64 tensors, f32 otherwise); planes (`B·C`) run in parallel and every sum has
//! one fixed order.

use super::AxisTable;
use crate::error::Result;
use crate::tensor::{DType, HostElement, Real, Tensor};
use rayon::prelude::*;

/// A compute type of the reference: f32 or f64.
pub(super) trait Compute: Real + HostElement {}
impl<T: Real + HostElement> Compute for T {}

/// Runs `$f::<R>(args)` with `R` the compute type of `$dtype`.
macro_rules! by_compute {
    ($dtype:expr, $f:ident($($arg:expr),* $(,)?)) => {
        if $dtype == DType::F64 {
            $f::<f64>($($arg),*)
        } else {
            $f::<f32>($($arg),*)
        }
    };
}

fn planes(t: &Tensor) -> usize {
    t.shape()[0] * t.shape()[1]
}

pub(super) fn bilinear_forward(input: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    fn run<R: Compute>(input: &Tensor, (oh, ow): (usize, usize)) -> Result<Tensor> {
        let s = input.shape();
        let (h, w) = (s[2], s[3]);
        let (th, tw) = (
            AxisTable::<R>::bilinear(h, oh),
            AxisTable::<R>::bilinear(w, ow),
        );
        let x = input.host_values::<R>()?;
        let mut out = vec![R::zero(); planes(input) * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| {
                for (u, dst_row) in dst.chunks_mut(ow).enumerate() {
                    let row0 = &src[th.i0[u] as usize * w..][..w];
                    let row1 = &src[th.i1[u] as usize * w..][..w];
                    for (v, d) in dst_row.iter_mut().enumerate() {
                        let (c0, c1) = (tw.i0[v] as usize, tw.i1[v] as usize);
                        let top = tw.l0[v] * row0[c0] + tw.l1[v] * row0[c1];
                        let bottom = tw.l0[v] * row1[c0] + tw.l1[v] * row1[c1];
                        *d = th.l0[u] * top + th.l1[u] * bottom;
                    }
                }
            });
        Tensor::from_vec(out, &[s[0], s[1], oh, ow])?.into_dtype(input.dtype())
    }
    by_compute!(input.dtype(), run(input, size))
}

pub(super) fn bilinear_backward(
    grad_output: &Tensor,
    input_size: (usize, usize),
    output_size: (usize, usize),
) -> Result<Tensor> {
    fn run<R: Compute>(
        grad_output: &Tensor,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
    ) -> Result<Tensor> {
        let (th, tw) = (
            AxisTable::<R>::bilinear(h, oh),
            AxisTable::<R>::bilinear(w, ow),
        );
        let g = grad_output.host_values::<R>()?;
        let mut grad = vec![R::zero(); planes(grad_output) * h * w];
        grad.par_chunks_mut(h * w)
            .zip(g.par_chunks(oh * ow))
            .for_each(|(dst, src)| {
                for (y, dst_row) in dst.chunks_mut(w).enumerate() {
                    for (x, d) in dst_row.iter_mut().enumerate() {
                        let mut sum = R::zero();
                        for u in th.first[y] as usize..th.end[y] as usize {
                            let mut row = R::zero();
                            for v in tw.first[x] as usize..tw.end[x] as usize {
                                row = row + tw.weight(v, x) * src[u * ow + v];
                            }
                            sum = sum + th.weight(u, y) * row;
                        }
                        *d = sum;
                    }
                }
            });
        let s = grad_output.shape();
        Tensor::from_vec(grad, &[s[0], s[1], h, w])?.into_dtype(grad_output.dtype())
    }
    by_compute!(
        grad_output.dtype(),
        run(grad_output, input_size, output_size)
    )
}

pub(super) fn nearest2x_forward(input: &Tensor) -> Result<Tensor> {
    fn run<R: Compute>(input: &Tensor) -> Result<Tensor> {
        let s = input.shape();
        let (h, w) = (s[2], s[3]);
        let x = input.host_values::<R>()?;
        let mut out = vec![R::zero(); planes(input) * 4 * h * w];
        out.par_chunks_mut(4 * h * w)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| {
                for (u, dst_row) in dst.chunks_mut(2 * w).enumerate() {
                    let src_row = &src[(u / 2) * w..][..w];
                    for (v, d) in dst_row.iter_mut().enumerate() {
                        *d = src_row[v / 2];
                    }
                }
            });
        Tensor::from_vec(out, &[s[0], s[1], 2 * h, 2 * w])?.into_dtype(input.dtype())
    }
    by_compute!(input.dtype(), run(input))
}

pub(super) fn nearest2x_backward(
    grad_output: &Tensor,
    input_size: (usize, usize),
) -> Result<Tensor> {
    fn run<R: Compute>(grad_output: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let g = grad_output.host_values::<R>()?;
        let mut grad = vec![R::zero(); planes(grad_output) * h * w];
        let ow = 2 * w;
        grad.par_chunks_mut(h * w)
            .zip(g.par_chunks(4 * h * w))
            .for_each(|(dst, src)| {
                for (y, dst_row) in dst.chunks_mut(w).enumerate() {
                    let top = &src[2 * y * ow..][..ow];
                    let bottom = &src[(2 * y + 1) * ow..][..ow];
                    for (x, d) in dst_row.iter_mut().enumerate() {
                        *d = top[2 * x] + top[2 * x + 1] + bottom[2 * x] + bottom[2 * x + 1];
                    }
                }
            });
        let s = grad_output.shape();
        Tensor::from_vec(grad, &[s[0], s[1], h, w])?.into_dtype(grad_output.dtype())
    }
    by_compute!(grad_output.dtype(), run(grad_output, input_size))
}
