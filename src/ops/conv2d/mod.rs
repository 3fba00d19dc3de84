//! 2-D convolution (`groups = 1`, optional bias), forward and backward, on the CPU and CUDA: im2col and
//! a GEMM ([`crate::ops::matmul`], deterministic on both devices), with a gather-form col2im for the input
//! gradient. PyTorch's `F.conv2d(input, weight, bias, stride, padding, dilation)` semantics.
//!
//! # Layout and formulas
//!
//! `input` `[B, Cin, H, W]`, `weight` `[Cout, Cin, KH, KW]` (PyTorch's OIHW), `bias` `[Cout]`, output
//! `[B, Cout, OH, OW]` with, per axis, `OH = ⌊(H + 2·ph − dh·(KH − 1) − 1) / sh⌋ + 1` (stride `s`, zero
//! padding `p`, dilation `d`):
//!
//! `y[b, o, u, v] = bias[o] + Σ_{c, i, j} weight[o, c, i, j] · x[b, c, u·sh − ph + i·dh, v·sw − pw + j·dw]`
//!
//! (`x` is 0 outside the image). With `R = Cin·KH·KW` and `L = OH·OW`, the patches of one image form the
//! column matrix `col` `[R, L]` (im2col), and `Y_b = W·col_b` with `W` the weight viewed as `[Cout, R]`.
//! Backward, given `G_b = ∂L/∂Y_b` `[Cout, L]`:
//!
//! - `dW = Σ_b G_b·col_bᵀ` (one batched GEMM per chunk of images, then a sum over the images in order);
//! - `db[o] = Σ_{b, l} G_b[o, l]`;
//! - `dcol_b = Wᵀ·G_b` `[R, L]`, then col2im: every input pixel sums the column entries that read it, over
//!   `(i, j)` ascending — a gather with one fixed order per pixel, no atomics.
//!
//! A 1×1 convolution with stride 1 and no padding (dilation is then irrelevant) skips im2col and col2im: its
//! column matrix is the image itself, `[Cin, H·W]`, and `dcol_b` is the input gradient.
//!
//! Differentiable inputs: `input`, `weight`, `bias`. The column matrices are recomputed by the backward
//! rather than kept from the forward (they are `KH·KW` times the input's size).
//!
//! # Numerics
//!
//! Storage may be f32, f16 or bf16 (and f64 on the CPU); columns, products and gradients are kept in the
//! compute dtype (f32, f64 for f64 inputs) and each result is rounded to the storage dtype once. Every sum
//! has a fixed order on both devices (the GEMM's, the col2im gather's, the batch and bias sums'), so results
//! are bitwise reproducible run to run. Non-finite values are not checked; they propagate into the
//! outputs that depend on them.
//!
//! # Memory: chunks of images
//!
//! The batch is processed in chunks of `n` images whose scratch — columns `n·R·L`, product `n·Cout·L`,
//! replicated weight `n·Cout·R` (the batched GEMM's left operand), and in the backward also the upstream
//! gradient `n·Cout·L`, the column gradient `n·R·L` and per-image weight gradients `n·Cout·R` — stays
//! within [`Conv2dConfig::workspace_bytes`] (compute-dtype elements; default [`DEFAULT_WORKSPACE_BYTES`] =
//! 256 MiB), with `n ≤ 65535`. A chunk always holds at least one image: when a single image's scratch is
//! larger than the limit (e.g. 3×3, 256 channels at 200×336: 0.6 GB of columns), that one image's is used.
//! Chunking changes no result bits except the CUDA bias gradient's (summed per chunk, then over chunks).

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// The default per-call scratch limit: 256 MiB.
pub const DEFAULT_WORKSPACE_BYTES: usize = 256 << 20;

/// The geometry of a convolution (each pair is `(height, width)`) and its scratch limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Step between output positions, ≥ 1.
    pub stride: (usize, usize),
    /// Zeros added on each side of the input.
    pub padding: (usize, usize),
    /// Spacing between kernel taps, ≥ 1.
    pub dilation: (usize, usize),
    /// Upper bound on the scratch of one chunk of images, in bytes (see the module docs); a chunk is never
    /// smaller than one image.
    pub workspace_bytes: usize,
}

impl Default for Conv2dConfig {
    /// PyTorch's defaults: stride 1, padding 0, dilation 1; a 256 MiB workspace.
    fn default() -> Self {
        Conv2dConfig {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            workspace_bytes: DEFAULT_WORKSPACE_BYTES,
        }
    }
}

impl Conv2dConfig {
    /// The same stride, padding and dilation along both axes.
    pub fn square(stride: usize, padding: usize, dilation: usize) -> Self {
        Conv2dConfig {
            stride: (stride, stride),
            padding: (padding, padding),
            dilation: (dilation, dilation),
            ..Conv2dConfig::default()
        }
    }
}

/// Which gradients [`conv2d_backward`] computes besides the weight's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGradsWanted {
    /// `∂L/∂input` (skip it for a network's first layer: it saves a GEMM and the col2im).
    pub input: bool,
    /// `∂L/∂bias` (for a convolution with a bias).
    pub bias: bool,
}

impl Default for Conv2dGradsWanted {
    fn default() -> Self {
        Conv2dGradsWanted {
            input: true,
            bias: true,
        }
    }
}

/// The gradients of [`conv2d_backward`], each shaped like its input and in the inputs' dtype.
#[derive(Debug)]
pub struct Conv2dGrads {
    /// `[B, Cin, H, W]`, when wanted.
    pub input: Option<Tensor>,
    /// `[Cout, Cin, KH, KW]`.
    pub weight: Tensor,
    /// `[Cout]`, when wanted.
    pub bias: Option<Tensor>,
}

/// `(OH, OW)` of a convolution of an `input_hw` image with a `kernel_hw` kernel under `cfg` (see the module
/// docs), or an error when the kernel does not fit the padded input or a stride or dilation is 0.
pub fn conv2d_output_size(
    input_hw: (usize, usize),
    kernel_hw: (usize, usize),
    cfg: &Conv2dConfig,
) -> Result<(usize, usize)> {
    let oh = output_extent(
        "height",
        input_hw.0,
        kernel_hw.0,
        cfg.stride.0,
        cfg.padding.0,
        cfg.dilation.0,
    )?;
    let ow = output_extent(
        "width",
        input_hw.1,
        kernel_hw.1,
        cfg.stride.1,
        cfg.padding.1,
        cfg.dilation.1,
    )?;
    Ok((oh, ow))
}

/// `conv2d(input, weight, bias)`: `[B, Cout, OH, OW]` in the inputs' dtype, on their device. All tensors
/// share one float dtype and device.
pub fn conv2d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
) -> Result<Tensor> {
    let g = check(input, weight, bias, cfg)?;
    let mut out = Tensor::zeros(&g.output_shape(), input.dtype(), &input.device())?;
    run_forward(input, weight, bias, &g, cfg, &mut out)?;
    Ok(out)
}

/// [`conv2d`] writing into `out` (`[B, Cout, OH, OW]`, the inputs' dtype and device; its previous contents
/// are never read).
pub fn conv2d_into(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
    out: &mut Tensor,
) -> Result<()> {
    let g = check(input, weight, bias, cfg)?;
    validate::shape(out, "out", &g.output_shape())?;
    validate::same_device(&[("input", input), ("out", out)])?;
    validate::same_dtype(&[("input", input), ("out", out)])?;
    run_forward(input, weight, bias, &g, cfg, out)
}

/// Gradients of [`conv2d`] given `grad_output` `[B, Cout, OH, OW]` (the inputs' dtype and device). The
/// forward's bias is not needed: its gradient depends on `grad_output` only.
pub fn conv2d_backward(
    input: &Tensor,
    weight: &Tensor,
    grad_output: &Tensor,
    wanted: Conv2dGradsWanted,
    cfg: &Conv2dConfig,
) -> Result<Conv2dGrads> {
    let g = check(input, weight, None, cfg)?;
    validate::shape(grad_output, "grad_output", &g.output_shape())?;
    validate::same_device(&[("input", input), ("grad_output", grad_output)])?;
    validate::same_dtype(&[("input", input), ("grad_output", grad_output)])?;
    let (dtype, device) = (input.dtype(), input.device());
    if g.batch == 0 {
        return Ok(Conv2dGrads {
            input: wanted
                .input
                .then(|| Tensor::zeros(input.shape(), dtype, &device))
                .transpose()?,
            weight: Tensor::zeros(weight.shape(), dtype, &device)?,
            bias: wanted
                .bias
                .then(|| Tensor::zeros(&[g.cout], dtype, &device))
                .transpose()?,
        });
    }
    let chunk = g.chunk_images(dtype, cfg.workspace_bytes, true);
    match &device {
        Device::Cpu => cpu::backward(input, weight, grad_output, &g, chunk, wanted),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::backward(dev, input, weight, grad_output, &g, chunk, wanted),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

fn run_forward(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    g: &Geometry,
    cfg: &Conv2dConfig,
    out: &mut Tensor,
) -> Result<()> {
    if g.batch == 0 {
        return Ok(());
    }
    let chunk = g.chunk_images(input.dtype(), cfg.workspace_bytes, false);
    match &input.device() {
        Device::Cpu => {
            *out = cpu::forward(input, weight, bias, g, chunk)?;
            Ok(())
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::forward_into(dev, input, weight, bias, g, chunk, out),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// The validated extents of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
}

impl Geometry {
    /// `R = Cin·KH·KW`: rows of the column matrix, columns of the weight matrix.
    pub fn rows(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// `L = OH·OW`.
    pub fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }

    /// 1×1, stride 1, no padding: the image is its own column matrix.
    pub fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.padding == (0, 0)
    }

    fn output_shape(&self) -> Vec<usize> {
        vec![self.batch, self.cout, self.oh, self.ow]
    }

    /// Images per chunk so that one chunk's scratch fits `workspace_bytes` (at least 1, at most 65535 and the
    /// batch). See the module docs for what the scratch holds.
    pub fn chunk_images(&self, dtype: DType, workspace_bytes: usize, backward: bool) -> usize {
        let elem = if dtype == DType::F64 { 8 } else { 4 };
        let (r, l, co) = (
            self.rows() as u128,
            self.out_plane() as u128,
            self.cout as u128,
        );
        let per_image = if backward {
            2 * r * l + 2 * co * l + 2 * co * r
        } else {
            r * l + co * l + co * r
        } * elem;
        let fit = (workspace_bytes as u128 / per_image.max(1)) as usize;
        fit.clamp(1, self.batch.clamp(1, u16::MAX as usize))
    }
}

/// One axis of [`conv2d_output_size`].
fn output_extent(
    axis: &str,
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<usize> {
    if kernel == 0 {
        return Err(Error::invalid(
            "weight",
            format!("the kernel's {axis} must be > 0"),
        ));
    }
    if input == 0 {
        return Err(Error::invalid(
            "input",
            format!("the input's {axis} must be > 0"),
        ));
    }
    if stride == 0 {
        return Err(Error::invalid(
            "stride",
            format!("the {axis} stride must be ≥ 1, got 0"),
        ));
    }
    if dilation == 0 {
        return Err(Error::invalid(
            "dilation",
            format!("the {axis} dilation must be ≥ 1, got 0"),
        ));
    }
    let too_big = || {
        Error::invalid(
            "padding",
            format!("{axis}: input {input} with padding {padding} is too large to index"),
        )
    };
    let padded = padding
        .checked_mul(2)
        .and_then(|p| p.checked_add(input))
        .ok_or_else(too_big)?;
    let span = (kernel - 1)
        .checked_mul(dilation)
        .and_then(|k| k.checked_add(1))
        .ok_or_else(|| {
            Error::invalid(
                "dilation",
                format!("{axis}: kernel {kernel} with dilation {dilation} is too large to index"),
            )
        })?;
    if span > padded {
        return Err(Error::invalid(
            "weight",
            format!(
                "the kernel's {axis} spans {span} (size {kernel}, dilation {dilation}), more than the padded \
                 input's {padded} ({input} + 2·{padding})"
            ),
        ));
    }
    Ok((padded - span) / stride + 1)
}

/// Validates the operands; returns the geometry.
fn check(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
) -> Result<Geometry> {
    validate::rank(input, "input", 4, "[B, Cin, H, W]")?;
    validate::rank(weight, "weight", 4, "[Cout, Cin, KH, KW]")?;
    validate::float(input, "input")?;
    let mut tensors = vec![("input", input), ("weight", weight)];
    if let Some(b) = bias {
        tensors.push(("bias", b));
    }
    validate::same_device(&tensors)?;
    validate::same_dtype(&tensors)?;
    let (batch, cin, h, w) = dims4(input);
    let (cout, wcin, kh, kw) = dims4(weight);
    for (extent, name) in [(cin, "Cin"), (h, "H"), (w, "W")] {
        if extent == 0 {
            return Err(Error::shape(
                "input",
                format!("[B, Cin, H, W] with {name} > 0 (only the batch may be empty)"),
                input.shape(),
            ));
        }
    }
    for (extent, name) in [(cout, "Cout"), (kh, "KH"), (kw, "KW")] {
        if extent == 0 {
            return Err(Error::shape(
                "weight",
                format!("[Cout, Cin, KH, KW] with {name} > 0"),
                weight.shape(),
            ));
        }
    }
    if wcin != cin {
        return Err(Error::shape(
            "weight",
            format!(
                "[Cout, {cin}, KH, KW] (the input's {cin} channels; only groups = 1 is supported)"
            ),
            weight.shape(),
        ));
    }
    if let Some(b) = bias {
        validate::shape(b, "bias", &[cout])?;
    }
    let (oh, ow) = conv2d_output_size((h, w), (kh, kw), cfg)?;
    let g = Geometry {
        batch,
        cin,
        h,
        w,
        cout,
        kh,
        kw,
        oh,
        ow,
        stride: cfg.stride,
        padding: cfg.padding,
        dilation: cfg.dilation,
    };
    check_index_ranges(&g, cfg)?;
    Ok(g)
}

fn dims4(t: &Tensor) -> (usize, usize, usize, usize) {
    let s = t.shape();
    (s[0], s[1], s[2], s[3])
}

/// The kernels index extents with `int` and the GEMM needs `M`, `N`, `K` < 2^31 and `M` < 65535·64.
fn check_index_ranges(g: &Geometry, cfg: &Conv2dConfig) -> Result<()> {
    let pairs = [cfg.stride, cfg.padding, cfg.dilation];
    for (v, arg, what) in [
        (g.cin, "input", "Cin"),
        (g.h, "input", "H"),
        (g.w, "input", "W"),
        (g.cout, "weight", "Cout"),
        (g.kh, "weight", "KH"),
        (g.kw, "weight", "KW"),
        (g.oh, "input", "OH"),
        (g.ow, "input", "OW"),
        (pairs[0].0.max(pairs[0].1), "stride", "stride"),
        (pairs[1].0.max(pairs[1].1), "padding", "padding"),
        (pairs[2].0.max(pairs[2].1), "dilation", "dilation"),
    ] {
        validate::fits_i32(v, arg, what)?;
    }
    let rows = g.cin.checked_mul(g.kh * g.kw);
    let plane = g.oh.checked_mul(g.ow);
    match (rows, plane) {
        (Some(rows), Some(plane)) => {
            validate::fits_i32(rows, "weight", "Cin·KH·KW")?;
            validate::fits_i32(plane, "input", "OH·OW")?;
            validate::fits_i32(g.h * g.w, "input", "H·W")?;
            for (v, arg, what) in [(rows, "weight", "Cin·KH·KW"), (g.cout, "weight", "Cout")] {
                if v.div_ceil(64) > u16::MAX as usize {
                    return Err(Error::invalid(
                        arg,
                        format!("{what} = {v} exceeds 65535·64"),
                    ));
                }
            }
            Ok(())
        }
        _ => Err(Error::invalid(
            "weight",
            "Cin·KH·KW or OH·OW overflows the index type",
        )),
    }
}

#[cfg(test)]
mod tests;
