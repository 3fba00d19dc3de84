//! CPU reference of the convolution: im2col, the chunked batched GEMMs of mod.rs's algorithm, and the
//! gather-form col2im — the specification the CUDA kernels are checked against.
//!
//! Generic over the compute type (f64 for f64 tensors, f32 otherwise; half storage is widened chunk by
//! chunk and each result rounded once). Every sum has one fixed order, whatever the thread count: the
//! GEMM's (see crate::ops::matmul), col2im's `(i, j)` ascending, the weight gradient's images ascending,
//! and the bias gradient's (accumulated in f64) images then positions ascending.

use super::{Conv2dGrads, Conv2dGradsWanted, Geometry};
use crate::error::Result;
use crate::ops::matmul::matmul;
use crate::tensor::{with_cpu_storage, CpuStorage, DType, Element, HostElement, Real, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;

/// A compute type of the reference: f32 or f64.
pub(super) trait Compute: Real + HostElement {}
impl<T: Real + HostElement> Compute for T {}

/// Elements `start .. start + len` of a host tensor as `R`: borrowed when the storage already is `R`,
/// converted (only that range) otherwise.
fn range_of<R: Compute>(t: &Tensor, start: usize, len: usize) -> Result<Cow<'_, [R]>> {
    let storage = t.cpu_storage().ok_or_else(|| crate::Error::Device {
        arg: "tensor".into(),
        expected: "cpu".into(),
        got: t.device().to_string(),
    })?;
    if let Some(values) = R::slice(storage) {
        return Ok(Cow::Borrowed(&values[start..start + len]));
    }
    let converted: Vec<R> = with_cpu_storage!(storage, v => {
        v[start..start + len].iter().map(|x| R::from_f64(x.to_f64())).collect()
    });
    Ok(Cow::Owned(converted))
}

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

/// `col[b, (c·KH + i)·KW + j, u·OW + v] = x[b, c, u·sh − ph + i·dh, v·sw − pw + j·dw]` (0 outside) for the
/// `images` images in `x` (`[images, Cin, H, W]`).
pub(super) fn im2col<R: Compute>(x: &[R], g: &Geometry, images: usize) -> Vec<R> {
    let (rows, plane) = (g.rows(), g.out_plane());
    let mut col = vec![R::zero(); images * rows * plane];
    col.par_chunks_mut(plane).enumerate().for_each(|(q, dst)| {
        let (b, r) = (q / rows, q % rows);
        let (c, i, j) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let image = &x[(b * g.cin + c) * g.in_plane()..][..g.in_plane()];
        for (u, dst_row) in dst.chunks_mut(g.ow).enumerate() {
            let y = (u * g.stride.0 + i * g.dilation.0) as isize - g.padding.0 as isize;
            if y < 0 || y >= g.h as isize {
                continue; // stays 0
            }
            let src_row = &image[y as usize * g.w..][..g.w];
            for (v, d) in dst_row.iter_mut().enumerate() {
                let x = (v * g.stride.1 + j * g.dilation.1) as isize - g.padding.1 as isize;
                if x >= 0 && x < g.w as isize {
                    *d = src_row[x as usize];
                }
            }
        }
    });
    col
}

/// The transpose of [`im2col`] as a gather: `dx[b, c, y, x] = Σ_{i, j ascending} dcol[b, (c·KH + i)·KW + j,
/// u·OW + v]` over the taps with `u·sh − ph + i·dh = y`, `v·sw − pw + j·dw = x`, written into `dx`
/// (`[images, Cin, H, W]`).
pub(super) fn col2im<R: Compute>(dcol: &[R], g: &Geometry, dx: &mut [R]) {
    let (rows, plane, in_plane) = (g.rows(), g.out_plane(), g.in_plane());
    // Per axis: for each input index, the (tap, output index) pairs that read it, taps ascending.
    let taps = |extent: usize,
                out: usize,
                k: usize,
                s: usize,
                p: usize,
                d: usize|
     -> Vec<Vec<(usize, usize)>> {
        (0..extent)
            .map(|y| {
                (0..k)
                    .filter_map(|i| {
                        let t = (y + p).checked_sub(i * d)?;
                        (t % s == 0 && t / s < out).then_some((i, t / s))
                    })
                    .collect()
            })
            .collect()
    };
    let taps_h = taps(g.h, g.oh, g.kh, g.stride.0, g.padding.0, g.dilation.0);
    let taps_w = taps(g.w, g.ow, g.kw, g.stride.1, g.padding.1, g.dilation.1);
    dx.par_chunks_mut(in_plane)
        .enumerate()
        .for_each(|(q, dst)| {
            let (b, c) = (q / g.cin, q % g.cin);
            let col = &dcol[(b * rows + c * g.kh * g.kw) * plane..][..g.kh * g.kw * plane];
            for (y, dst_row) in dst.chunks_mut(g.w).enumerate() {
                for (x, d) in dst_row.iter_mut().enumerate() {
                    let mut sum = R::zero();
                    for &(i, u) in &taps_h[y] {
                        for &(j, v) in &taps_w[x] {
                            sum = sum + col[(i * g.kw + j) * plane + u * g.ow + v];
                        }
                    }
                    *d = sum;
                }
            }
        });
}

/// The weight viewed as `[Cout, R]`, once per image of a chunk: `[images, Cout, R]`.
fn replicated<R: Compute>(weight: &[R], g: &Geometry, images: usize) -> Result<Tensor> {
    Tensor::from_vec(weight.repeat(images), &[images, g.cout, g.rows()])
}

/// The chunk of images `b0 .. b0 + images` as a column matrix `[images, R, L]` in `R`.
fn columns<R: Compute>(input: &Tensor, g: &Geometry, b0: usize, images: usize) -> Result<Tensor> {
    let per = g.cin * g.in_plane();
    let x = range_of::<R>(input, b0 * per, images * per)?;
    let col = if g.pointwise() {
        x.into_owned()
    } else {
        im2col(&x, g, images)
    };
    Tensor::from_vec(col, &[images, g.rows(), g.out_plane()])
}

fn chunks(batch: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..batch)
        .step_by(chunk)
        .map(move |b0| (b0, chunk.min(batch - b0)))
}

fn finish<R: Compute>(values: Vec<R>, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::from_vec(values, shape)?.into_dtype(dtype)
}

pub(super) fn forward(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    g: &Geometry,
    chunk: usize,
) -> Result<Tensor> {
    fn run<R: Compute>(
        input: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        g: &Geometry,
        chunk: usize,
    ) -> Result<Tensor> {
        let w = weight.host_values::<R>()?;
        let bias = bias.map(|b| b.host_values::<R>()).transpose()?;
        let per_out = g.cout * g.out_plane();
        let mut out = vec![R::zero(); g.batch * per_out];
        let mut w_rep: Option<Tensor> = None;
        for (b0, images) in chunks(g.batch, chunk) {
            let col = columns::<R>(input, g, b0, images)?;
            if !matches!(&w_rep, Some(t) if t.shape()[0] == images) {
                w_rep = Some(replicated(&w, g, images)?);
            }
            let y = matmul(w_rep.as_ref().expect("set above"), &col, false, false)?;
            let y = y.as_slice::<R>()?;
            let dst = &mut out[b0 * per_out..][..images * per_out];
            dst.par_chunks_mut(g.out_plane())
                .zip(y.par_chunks(g.out_plane()))
                .enumerate()
                .for_each(|(q, (d, s))| {
                    let shift = bias.as_ref().map_or(R::zero(), |b| b[q % g.cout]);
                    for (d, &s) in d.iter_mut().zip(s) {
                        *d = s + shift;
                    }
                });
        }
        finish(out, &[g.batch, g.cout, g.oh, g.ow], input.dtype())
    }
    by_compute!(input.dtype(), run(input, weight, bias, g, chunk))
}

pub(super) fn backward(
    input: &Tensor,
    weight: &Tensor,
    grad_output: &Tensor,
    g: &Geometry,
    chunk: usize,
    wanted: Conv2dGradsWanted,
) -> Result<Conv2dGrads> {
    fn run<R: Compute>(
        input: &Tensor,
        weight: &Tensor,
        grad_output: &Tensor,
        g: &Geometry,
        chunk: usize,
        wanted: Conv2dGradsWanted,
    ) -> Result<Conv2dGrads> {
        let dtype = input.dtype();
        let (rows, plane) = (g.rows(), g.out_plane());
        let per_out = g.cout * plane;
        let per_in = g.cin * g.in_plane();
        let w = weight.host_values::<R>()?;
        let mut grad_w = vec![R::zero(); g.cout * rows];
        let mut grad_b = vec![0.0f64; g.cout];
        let mut grad_x = if wanted.input {
            vec![R::zero(); g.batch * per_in]
        } else {
            Vec::new()
        };
        let mut w_rep: Option<Tensor> = None;
        for (b0, images) in chunks(g.batch, chunk) {
            let col = columns::<R>(input, g, b0, images)?;
            let dy = range_of::<R>(grad_output, b0 * per_out, images * per_out)?.into_owned();
            if wanted.bias {
                grad_b.par_iter_mut().enumerate().for_each(|(o, acc)| {
                    for b in 0..images {
                        for &v in &dy[(b * g.cout + o) * plane..][..plane] {
                            *acc += v.to_f64();
                        }
                    }
                });
            }
            let dy = Tensor::from_vec(dy, &[images, g.cout, plane])?;
            let parts = matmul(&dy, &col, false, true)?;
            let parts = parts.as_slice::<R>()?;
            grad_w.par_iter_mut().enumerate().for_each(|(p, acc)| {
                for b in 0..images {
                    *acc = *acc + parts[b * g.cout * rows + p];
                }
            });
            if wanted.input {
                if !matches!(&w_rep, Some(t) if t.shape()[0] == images) {
                    w_rep = Some(replicated(&w, g, images)?);
                }
                let dcol = matmul(w_rep.as_ref().expect("set above"), &dy, true, false)?;
                let dcol = dcol.as_slice::<R>()?;
                let dst = &mut grad_x[b0 * per_in..][..images * per_in];
                if g.pointwise() {
                    dst.copy_from_slice(dcol);
                } else {
                    col2im(dcol, g, dst);
                }
            }
        }
        let input_grad = wanted
            .input
            .then(|| finish(grad_x, &[g.batch, g.cin, g.h, g.w], dtype))
            .transpose()?;
        let bias_grad = wanted
            .bias
            .then(|| {
                finish(
                    grad_b.iter().map(|&v| R::from_f64(v)).collect(),
                    &[g.cout],
                    dtype,
                )
            })
            .transpose()?;
        Ok(Conv2dGrads {
            input: input_grad,
            weight: finish(grad_w, &[g.cout, g.cin, g.kh, g.kw], dtype)?,
            bias: bias_grad,
        })
    }
    by_compute!(
        input.dtype(),
        run(input, weight, grad_output, g, chunk, wanted)
    )
}
