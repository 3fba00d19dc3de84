//! Spatial resizing of `[B, C, H, W]` maps, forward and backward, on the CPU and CUDA: bilinear
//! interpolation to any size with `align_corners = False` (PyTorch's
//! `F.interpolate(x, size=(OH, OW), mode='bilinear', align_corners=False)`, up and down) and nearest 2×
//! upsampling (`F.interpolate(x, scale_factor=2, mode='nearest')`, the FPN top-down path).
//!
//! # Bilinear
//!
//! Per axis, with `scale = in / out` (computed in the compute type), output index `o` samples the continuous
//! source position `s = max(scale·(o + ½) − ½, 0)`; `i0 = min(⌊s⌋, in − 1)`, `i1 = i0 + 1` unless `i0` is the
//! last index (then `i1 = i0`), `λ1 = clamp(s − i0, 0, 1)`, `λ0 = 1 − λ1`. When `in = out` the axis is the
//! identity (`i0 = i1 = o`, `λ0 = 1`). Then
//!
//! `y[u, v] = λ0ʰ(λ0ʷ x[i0ʰ, i0ʷ] + λ1ʷ x[i0ʰ, i1ʷ]) + λ1ʰ(λ0ʷ x[i1ʰ, i0ʷ] + λ1ʷ x[i1ʰ, i1ʷ])`
//!
//! (exactly PyTorch's CPU kernel, including the guards). Downsampling reads only the two nearest inputs per
//! output, as PyTorch does (no antialiasing). The backward is the transpose,
//! `dx[y, x] = Σ_u wʰ(u, y) Σ_v wʷ(v, x) g[u, v]` with `w(o, i) = λ0(o)·[i0(o) = i] + λ1(o)·[i1(o) = i]`,
//! computed as a gather: each input pixel loops over the (contiguous) range of outputs that read it, rows
//! then columns ascending. Inputs no output reads (a strong downscale) get 0.
//!
//! The per-axis tables (`i0`, `i1`, `λ0`, `λ1` and each input's output range) are built on the host by the
//! reference's code and uploaded for the CUDA kernels, so both devices use the same taps and weights.
//!
//! # Nearest 2×
//!
//! `y[u, v] = x[⌊u/2⌋, ⌊v/2⌋]` (`[B, C, 2H, 2W]`); backward `dx[y, x] = g[2y, 2x] + g[2y, 2x+1] +
//! g[2y+1, 2x] + g[2y+1, 2x+1]`. The forward is an exact copy in the storage dtype.
//!
//! # Numerics
//!
//! Storage f32, f16 or bf16 (and f64 on the CPU); arithmetic in f32 (f64 for f64), each result rounded once.
//! No atomics; results are bitwise reproducible run to run. Only the spatial extents must be non-zero; an
//! empty batch or zero channels give an empty result without a launch. Differentiable input: `input`.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{Device, Real, Tensor};

/// Source taps and weights of one axis, and for each input index the outputs that read it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AxisTable<R> {
    /// Per output index: the first tap `i0` and its weight `λ0`, the second tap `i1` and its weight `λ1`.
    pub i0: Vec<i32>,
    pub i1: Vec<i32>,
    pub l0: Vec<R>,
    pub l1: Vec<R>,
    /// Output `o` reads input `i` iff `first[i] ≤ o < end[i]` (and then with `w(o, i)`, maybe 0).
    pub first: Vec<i32>,
    pub end: Vec<i32>,
}

impl<R: Real> AxisTable<R> {
    /// PyTorch's `align_corners = False` source indices for an axis of `input` → `output` elements (both > 0
    /// and < 2^31, checked by the callers).
    pub fn bilinear(input: usize, output: usize) -> Self {
        let mut t = AxisTable {
            i0: Vec::with_capacity(output),
            i1: Vec::with_capacity(output),
            l0: Vec::with_capacity(output),
            l1: Vec::with_capacity(output),
            first: vec![output as i32; input],
            end: vec![0; input],
        };
        let last = input - 1;
        let scale = R::from_f64(input as f64) / R::from_f64(output as f64);
        let half = R::from_f64(0.5);
        for o in 0..output {
            let (i0, lambda1) = if input == output {
                (o, R::zero())
            } else {
                let s = scale * (R::from_f64(o as f64) + half) - half;
                let s = if s < R::zero() { R::zero() } else { s };
                let i0 = (s.floor().to_f64() as usize).min(last);
                let l = s - R::from_f64(i0 as f64);
                (i0, l.max(R::zero()).min(R::one()))
            };
            let i1 = if i0 < last && input != output {
                i0 + 1
            } else {
                i0
            };
            t.i0.push(i0 as i32);
            t.i1.push(i1 as i32);
            t.l0.push(R::one() - lambda1);
            t.l1.push(lambda1);
            for i in [i0, i1] {
                t.first[i] = t.first[i].min(o as i32);
                t.end[i] = t.end[i].max(o as i32 + 1);
            }
        }
        for i in 0..input {
            if t.end[i] == 0 {
                t.first[i] = 0; // read by no output: an empty range
            }
        }
        t
    }

    /// The weight with which output `o` reads input `i`.
    pub fn weight(&self, o: usize, i: usize) -> R {
        let mut w = R::zero();
        if self.i0[o] as usize == i {
            w = w + self.l0[o];
        }
        if self.i1[o] as usize == i {
            w = w + self.l1[o];
        }
        w
    }
}

/// `input` `[B, C, H, W]` resized bilinearly to `size = (OH, OW)` (see the module docs).
pub fn resize_bilinear(input: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let d = check_input(input, "input")?;
    check_size(size, "size")?;
    let mut out = Tensor::zeros(&[d.0, d.1, size.0, size.1], input.dtype(), &input.device())?;
    bilinear_into_checked(input, &mut out)?;
    Ok(out)
}

/// [`resize_bilinear`] writing into `out`, whose shape `[B, C, OH, OW]` gives the size (the input's dtype and
/// device; its previous contents are never read).
pub fn resize_bilinear_into(input: &Tensor, out: &mut Tensor) -> Result<()> {
    let (b, c, _, _) = check_input(input, "input")?;
    validate::rank(out, "out", 4, "[B, C, OH, OW]")?;
    let size = (out.shape()[2], out.shape()[3]);
    check_size(size, "out")?;
    validate::shape(out, "out", &[b, c, size.0, size.1])?;
    check_like(out, "out", input, "input")?;
    bilinear_into_checked(input, out)
}

/// Gradient of [`resize_bilinear`] with respect to its input of spatial size `input_size = (H, W)`, given
/// `grad_output` `[B, C, OH, OW]`. The op is linear: the input itself is not needed.
pub fn resize_bilinear_backward(
    grad_output: &Tensor,
    input_size: (usize, usize),
) -> Result<Tensor> {
    let (b, c, oh, ow) = check_input(grad_output, "grad_output")?;
    check_size(input_size, "input_size")?;
    let mut grad = Tensor::zeros(
        &[b, c, input_size.0, input_size.1],
        grad_output.dtype(),
        &grad_output.device(),
    )?;
    if b * c == 0 {
        return Ok(grad);
    }
    let (h, w) = input_size;
    match &grad_output.device() {
        Device::Cpu => grad = cpu::bilinear_backward(grad_output, (h, w), (oh, ow))?,
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::bilinear_backward_into(dev, grad_output, (oh, ow), &mut grad)?,
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
    Ok(grad)
}

/// `input` `[B, C, H, W]` upsampled 2× by nearest neighbour: `[B, C, 2H, 2W]`.
pub fn upsample_nearest2x(input: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = check_input(input, "input")?;
    let (oh, ow) = doubled(h, w)?;
    let mut out = Tensor::zeros(&[b, c, oh, ow], input.dtype(), &input.device())?;
    nearest_into_checked(input, &mut out)?;
    Ok(out)
}

/// [`upsample_nearest2x`] writing into `out` (`[B, C, 2H, 2W]`, the input's dtype and device).
pub fn upsample_nearest2x_into(input: &Tensor, out: &mut Tensor) -> Result<()> {
    let (b, c, h, w) = check_input(input, "input")?;
    let (oh, ow) = doubled(h, w)?;
    validate::shape(out, "out", &[b, c, oh, ow])?;
    check_like(out, "out", input, "input")?;
    nearest_into_checked(input, out)
}

/// Gradient of [`upsample_nearest2x`] given `grad_output` `[B, C, 2H, 2W]` (even, non-zero extents):
/// `[B, C, H, W]`, each input pixel the sum of its 2×2 block.
pub fn upsample_nearest2x_backward(grad_output: &Tensor) -> Result<Tensor> {
    let (b, c, oh, ow) = check_input(grad_output, "grad_output")?;
    if oh % 2 != 0 || ow % 2 != 0 {
        return Err(Error::shape(
            "grad_output",
            "[B, C, 2H, 2W] (even spatial extents: the output of a 2× upsampling)",
            grad_output.shape(),
        ));
    }
    let (h, w) = (oh / 2, ow / 2);
    let mut grad = Tensor::zeros(&[b, c, h, w], grad_output.dtype(), &grad_output.device())?;
    if b * c == 0 {
        return Ok(grad);
    }
    match &grad_output.device() {
        Device::Cpu => grad = cpu::nearest2x_backward(grad_output, (h, w))?,
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::nearest2x_backward_into(dev, grad_output, (h, w), &mut grad)?,
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
    Ok(grad)
}

fn bilinear_into_checked(input: &Tensor, out: &mut Tensor) -> Result<()> {
    let s = input.shape();
    if s[0] * s[1] == 0 {
        return Ok(());
    }
    let size = (out.shape()[2], out.shape()[3]);
    match &input.device() {
        Device::Cpu => {
            *out = cpu::bilinear_forward(input, size)?;
            Ok(())
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::bilinear_forward_into(dev, input, out),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

fn nearest_into_checked(input: &Tensor, out: &mut Tensor) -> Result<()> {
    let s = input.shape();
    if s[0] * s[1] == 0 {
        return Ok(());
    }
    match &input.device() {
        Device::Cpu => {
            *out = cpu::nearest2x_forward(input)?;
            Ok(())
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::nearest2x_forward_into(dev, input, out),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// A float `[B, C, H, W]` tensor with `H, W > 0` and extents that fit the kernels' `int`.
fn check_input(t: &Tensor, arg: &str) -> Result<(usize, usize, usize, usize)> {
    validate::rank(t, arg, 4, "[B, C, H, W]")?;
    validate::float(t, arg)?;
    let s = t.shape();
    if s[2] == 0 || s[3] == 0 {
        return Err(Error::shape(
            arg,
            "[B, C, H, W] with H, W > 0 (only B and C may be 0)",
            s,
        ));
    }
    validate::fits_i32(s[2], arg, "H")?;
    validate::fits_i32(s[3], arg, "W")?;
    Ok((s[0], s[1], s[2], s[3]))
}

fn check_size(size: (usize, usize), arg: &str) -> Result<()> {
    if size.0 == 0 || size.1 == 0 {
        return Err(Error::invalid(
            arg,
            format!("the spatial size must be > 0 on both axes, got {size:?}"),
        ));
    }
    validate::fits_i32(size.0, arg, "height")?;
    validate::fits_i32(size.1, arg, "width")
}

fn doubled(h: usize, w: usize) -> Result<(usize, usize)> {
    let (oh, ow) = (2 * h, 2 * w);
    validate::fits_i32(oh, "input", "2H")?;
    validate::fits_i32(ow, "input", "2W")?;
    Ok((oh, ow))
}

/// `t` must have `like`'s dtype and device.
fn check_like(t: &Tensor, arg: &str, like: &Tensor, like_arg: &str) -> Result<()> {
    validate::same_device(&[(like_arg, like), (arg, t)])?;
    validate::same_dtype(&[(like_arg, like), (arg, t)])?;
    Ok(())
}

#[cfg(test)]
mod tests;
