//! Launch wrappers for kernels/im2col.cu and the chunk loop of the CUDA convolution (the GEMMs run on
//! kernels/matmul.cu through [`crate::ops::matmul`]). Shapes, dtypes and devices were validated in mod.rs;
//! storage tensors are `T` ∈ {f32, f16, bf16}, every scratch buffer is f32.

use super::{Conv2dGrads, Conv2dGradsWanted, Geometry};
use crate::cuda::{alloc_zeros, f32_into, function, grid_for, input_slice, output_slice, Module};
use crate::cuda::{BLOCK, NULL_DEVICE_PTR};
use crate::error::{Error, Result};
use crate::ops::matmul::matmul;
use crate::tensor::{CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

/// Mirrors `struct ConvArgs` in kernels/im2col.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ConvArgs {
    b0: i64,
    nb: i64,
    cin: i32,
    h: i32,
    w: i32,
    kh: i32,
    kw: i32,
    oh: i32,
    ow: i32,
    stride_h: i32,
    stride_w: i32,
    pad_h: i32,
    pad_w: i32,
    dil_h: i32,
    dil_w: i32,
    cout: i32,
}

const _: () = assert!(
    std::mem::size_of::<ConvArgs>() == 72,
    "must match the kernel's struct"
);

// SAFETY: #[repr(C)], Copy, two i64 then fourteen i32: 72 bytes without padding, laid out exactly like the
// kernel's `ConvArgs`.
unsafe impl DeviceRepr for ConvArgs {}

/// Every extent was checked to fit `int` in mod.rs.
fn conv_args(g: &Geometry, b0: usize, images: usize) -> ConvArgs {
    ConvArgs {
        b0: b0 as i64,
        nb: images as i64,
        cin: g.cin as i32,
        h: g.h as i32,
        w: g.w as i32,
        kh: g.kh as i32,
        kw: g.kw as i32,
        oh: g.oh as i32,
        ow: g.ow as i32,
        stride_h: g.stride.0 as i32,
        stride_w: g.stride.1 as i32,
        pad_h: g.padding.0 as i32,
        pad_w: g.padding.1 as i32,
        dil_h: g.dilation.0 as i32,
        dil_w: g.dilation.1 as i32,
        cout: g.cout as i32,
    }
}

/// Runs `$body` with `$t` bound to the element type of the storage dtype `$dtype`.
macro_rules! by_storage {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F16 => {
                type $t = f16;
                $body
            }
            DType::BF16 => {
                type $t = bf16;
                $body
            }
            other => Err(Error::DType {
                arg: "input".into(),
                expected: "f32, f16 or bf16 on a CUDA device".into(),
                got: other.to_string(),
            }),
        }
    };
}

fn chunks(batch: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..batch)
        .step_by(chunk)
        .map(move |b0| (b0, chunk.min(batch - b0)))
}

/// The column matrix `[images, R, L]` (f32) of images `b0 ..` of `input`: im2col, or a widening copy for a
/// pointwise convolution.
fn columns<T: CudaElement>(
    dev: &CudaDevice,
    input: &Tensor,
    g: &Geometry,
    b0: usize,
    images: usize,
) -> Result<Tensor> {
    let n = images * g.rows() * g.out_plane();
    if g.pointwise() {
        let per = g.cin * g.in_plane();
        let col = gather_chunk::<T>(dev, input, "input", b0 * per, n)?;
        return Tensor::from_cuda_slice(col, &[images, g.rows(), g.out_plane()], dev);
    }
    let x = input_slice::<T>(input, "input", dev)?;
    let mut col = alloc_zeros::<f32>(dev, n)?;
    let kernel = format!("im2col_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Im2col, &kernel)?;
    let args = conv_args(g, b0, images);
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(x).arg(&args).arg(&mut col);
    // SAFETY: im2col_<T>(input, args, col) writes col[i] for i < images·R·L (its length) and reads
    // input[((b0 + b)·Cin + c)·H·W + y·W + x] only for 0 ≤ y < H, 0 ≤ x < W, b < images with
    // b0 + images ≤ B: within the input's B·Cin·H·W elements.
    unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
    Tensor::from_cuda_slice(col, &[images, g.rows(), g.out_plane()], dev)
}

/// Elements `offset .. offset + n` of `src` widened to f32.
fn gather_chunk<T: CudaElement>(
    dev: &CudaDevice,
    src: &Tensor,
    arg: &str,
    offset: usize,
    n: usize,
) -> Result<CudaSlice<f32>> {
    let buf = input_slice::<T>(src, arg, dev)?;
    let mut out = alloc_zeros::<f32>(dev, n)?;
    let kernel = format!("conv_gather_chunk_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Im2col, &kernel)?;
    let (offset64, n64) = (offset as i64, n as i64);
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(buf).arg(&offset64).arg(&n64).arg(&mut out);
    // SAFETY: conv_gather_chunk_<T>(src, offset, n, out) reads src[offset + i] and writes out[i] for i < n;
    // the callers pass a whole chunk of images, so offset + n ≤ src's length, and out holds n floats.
    unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
    Ok(out)
}

/// The weight as `[images, Cout, R]` f32, one copy per image of the chunk.
fn replicated<T: CudaElement>(
    dev: &CudaDevice,
    weight: &Tensor,
    g: &Geometry,
    images: usize,
) -> Result<Tensor> {
    let per = g.cout * g.rows();
    let w = input_slice::<T>(weight, "weight", dev)?;
    let mut out = alloc_zeros::<f32>(dev, per * images)?;
    let kernel = format!("conv_replicate_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Im2col, &kernel)?;
    let (per64, copies) = (per as i64, images as i64);
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(w).arg(&per64).arg(&copies).arg(&mut out);
    // SAFETY: conv_replicate_<T>(weight, per, copies, out) reads weight[i % per] (the weight has
    // per = Cout·R elements) and writes out[i] for i < per·copies, out's length.
    unsafe { lb.launch(grid_for(per * images)) }.map_err(Error::cuda(kernel))?;
    Tensor::from_cuda_slice(out, &[images, g.cout, g.rows()], dev)
}

/// `dst[b0 + b, c, l] = y[b, c, l] + bias[c]` rounded to `T`, for `y` f32 `[images, channels, plane]`.
#[allow(clippy::too_many_arguments)]
fn write_chunk<T: CudaElement>(
    dev: &CudaDevice,
    y: &Tensor,
    bias: Option<&Tensor>,
    b0: usize,
    images: usize,
    channels: usize,
    plane: usize,
    dst: &mut Tensor,
) -> Result<()> {
    let y_buf = input_slice::<f32>(y, "product", dev)?;
    let bias_buf = bias.map(|b| input_slice::<T>(b, "bias", dev)).transpose()?;
    let out = output_slice::<T>(dst, "out", dev)?;
    let kernel = format!("conv_write_chunk_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Im2col, &kernel)?;
    let (b0_64, nb, ch, pl) = (b0 as i64, images as i64, channels as i64, plane as i64);
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(y_buf);
    match bias_buf {
        Some(b) => lb.arg(b),
        None => lb.arg(&NULL_DEVICE_PTR),
    };
    lb.arg(&b0_64).arg(&nb).arg(&ch).arg(&pl).arg(out);
    let n = images * channels * plane;
    // SAFETY: conv_write_chunk_<T>(y, bias, b0, nb, channels, plane, out) reads y[i] for i < nb·channels·plane
    // (y's shape), bias[c] for c < channels (bias is [Cout] = channels when given, else null and unread),
    // and writes out[b0·channels·plane + i]: images b0 .. b0 + nb of out's B ≥ b0 + nb images.
    unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
    Ok(())
}

pub(super) fn forward_into(
    dev: &CudaDevice,
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    g: &Geometry,
    chunk: usize,
    out: &mut Tensor,
) -> Result<()> {
    by_storage!(input.dtype(), T => {
        let mut w_rep: Option<Tensor> = None;
        for (b0, images) in chunks(g.batch, chunk) {
            let col = columns::<T>(dev, input, g, b0, images)?;
            if !matches!(&w_rep, Some(t) if t.shape()[0] == images) {
                w_rep = Some(replicated::<T>(dev, weight, g, images)?);
            }
            let y = matmul(w_rep.as_ref().expect("set above"), &col, false, false)?;
            write_chunk::<T>(dev, &y, bias, b0, images, g.cout, g.out_plane(), out)?;
        }
        Ok(())
    })
}

/// `acc[c] (+)= Σ_{b, l} dy[b, c, l]` (deterministic block sums; `first` overwrites).
fn bias_grad(
    dev: &CudaDevice,
    dy: &Tensor,
    g: &Geometry,
    images: usize,
    first: bool,
    acc: &mut CudaSlice<f32>,
) -> Result<()> {
    let dy_buf = input_slice::<f32>(dy, "grad_output", dev)?;
    let func = function(dev, Module::Im2col, "conv_bias_grad_f32")?;
    let (nb, ch, pl, first) = (
        images as i64,
        g.cout as i64,
        g.out_plane() as i64,
        first as i32,
    );
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(dy_buf)
        .arg(&nb)
        .arg(&ch)
        .arg(&pl)
        .arg(&first)
        .arg(acc);
    let cfg = LaunchConfig {
        grid_dim: (g.cout.clamp(1, 65_535) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: conv_bias_grad_f32(dy, nb, channels, plane, first, acc) reads dy[(b·channels + c)·plane + l]
    // for b < nb, c < channels, l < plane (dy is [images, Cout, L]) and reads/writes acc[c], c < Cout (acc's
    // length); it loops over channels beyond the grid and uses BLOCK threads, as block_reduce_sum requires.
    unsafe { lb.launch(cfg) }.map_err(Error::cuda("conv_bias_grad_f32"))?;
    Ok(())
}

/// `acc[p] (+)= Σ_b parts[b, p]`, images in order.
fn sum_batches(
    dev: &CudaDevice,
    parts: &Tensor,
    images: usize,
    per: usize,
    first: bool,
    acc: &mut CudaSlice<f32>,
) -> Result<()> {
    let parts_buf = input_slice::<f32>(parts, "weight gradient parts", dev)?;
    let func = function(dev, Module::Im2col, "conv_sum_batches_f32")?;
    let (nb, per64, first) = (images as i64, per as i64, first as i32);
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(parts_buf).arg(&nb).arg(&per64).arg(&first).arg(acc);
    // SAFETY: conv_sum_batches_f32(parts, nb, per, first, acc) reads parts[b·per + p] for b < nb, p < per
    // (parts is [images, Cout, R], per = Cout·R) and reads/writes acc[p], p < per (acc's length).
    unsafe { lb.launch(grid_for(per)) }.map_err(Error::cuda("conv_sum_batches_f32"))?;
    Ok(())
}

fn col2im<T: CudaElement>(
    dev: &CudaDevice,
    dcol: &Tensor,
    g: &Geometry,
    b0: usize,
    images: usize,
    grad_x: &mut Tensor,
) -> Result<()> {
    let dcol_buf = input_slice::<f32>(dcol, "column gradient", dev)?;
    let out = output_slice::<T>(grad_x, "grad_input", dev)?;
    let kernel = format!("col2im_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Im2col, &kernel)?;
    let args = conv_args(g, b0, images);
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(dcol_buf).arg(&args).arg(out);
    let n = images * g.cin * g.in_plane();
    // SAFETY: col2im_<T>(dcol, args, input_grad) writes input_grad[b0·Cin·H·W + e] for e < images·Cin·H·W
    // (images b0 .. b0 + images of a [B, Cin, H, W] gradient) and reads dcol[(b·R + (c·KH + i)·KW + j)·L +
    // u·OW + v] only for u < OH, v < OW, b < images: within dcol's images·R·L elements.
    unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
    Ok(())
}

pub(super) fn backward(
    dev: &CudaDevice,
    input: &Tensor,
    weight: &Tensor,
    grad_output: &Tensor,
    g: &Geometry,
    chunk: usize,
    wanted: Conv2dGradsWanted,
) -> Result<Conv2dGrads> {
    let dtype = input.dtype();
    let device = input.device();
    by_storage!(dtype, T => {
        let (rows, plane) = (g.rows(), g.out_plane());
        let per_out = g.cout * plane;
        let mut grad_w = alloc_zeros::<f32>(dev, g.cout * rows)?;
        let mut grad_b = alloc_zeros::<f32>(dev, g.cout)?;
        let mut grad_x = if wanted.input {
            Some(Tensor::zeros(input.shape(), dtype, &device)?)
        } else {
            None
        };
        let mut w_rep: Option<Tensor> = None;
        for (index, (b0, images)) in chunks(g.batch, chunk).enumerate() {
            let first = index == 0;
            let col = columns::<T>(dev, input, g, b0, images)?;
            let dy = gather_chunk::<T>(dev, grad_output, "grad_output", b0 * per_out, images * per_out)?;
            let dy = Tensor::from_cuda_slice(dy, &[images, g.cout, plane], dev)?;
            if wanted.bias {
                bias_grad(dev, &dy, g, images, first, &mut grad_b)?;
            }
            let parts = matmul(&dy, &col, false, true)?;
            sum_batches(dev, &parts, images, g.cout * rows, first, &mut grad_w)?;
            if let Some(grad_x) = grad_x.as_mut() {
                if !matches!(&w_rep, Some(t) if t.shape()[0] == images) {
                    w_rep = Some(replicated::<T>(dev, weight, g, images)?);
                }
                let dcol = matmul(w_rep.as_ref().expect("set above"), &dy, true, false)?;
                if g.pointwise() {
                    write_chunk::<T>(dev, &dcol, None, b0, images, g.cin, g.in_plane(), grad_x)?;
                } else {
                    col2im::<T>(dev, &dcol, g, b0, images, grad_x)?;
                }
            }
        }
        let weight_grad = Tensor::from_cuda_slice(f32_into::<T>(dev, grad_w)?, weight.shape(), dev)?;
        let bias_grad = if wanted.bias {
            Some(Tensor::from_cuda_slice(f32_into::<T>(dev, grad_b)?, &[g.cout], dev)?)
        } else {
            None
        };
        Ok(Conv2dGrads {
            input: grad_x,
            weight: weight_grad,
            bias: bias_grad,
        })
    })
}
