//! Launch wrappers for kernels/shape.cu. Shapes, axes, slices and index lists were validated by mod.rs and
//! the geometry built by plan.rs; this file picks the kernel instance and launches it.
//!
//! The data-movement kernels are instantiated by element width (`_b2` for f16/bf16, `_b4` for f32, `_b8`
//! for i64): they copy bit patterns, so one instance serves every dtype of that width.

use super::plan::{
    Gather, GenericPermuteArgs, InverseIndex, PermuteLaunch, RowCopy, TiledPermuteArgs, TILE,
    TILE_ROWS,
};
use crate::cuda::{function, grid_for, input_slice, output_slice, Module, BLOCK};
use crate::error::{Error, Result};
use crate::tensor::{CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

/// Mirrors `struct RowCopyArgs` in kernels/shape.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RowCopyArgs {
    outer: i64,
    row_len: i64,
    src_stride: i64,
    src_offset: i64,
    dst_stride: i64,
    dst_offset: i64,
}

/// Mirrors `struct GatherArgs` in kernels/shape.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GatherArgs {
    outer: i64,
    src_rows: i64,
    dst_rows: i64,
    inner: i64,
}

const _: () = assert!(
    std::mem::size_of::<RowCopyArgs>() == 48
        && std::mem::size_of::<GatherArgs>() == 32
        && std::mem::size_of::<GenericPermuteArgs>() == 112
        && std::mem::size_of::<TiledPermuteArgs>() == 144,
    "must match the kernel's structs"
);

// SAFETY: #[repr(C)], Copy, six i64 fields: 48 bytes without padding, laid out exactly like the kernel's
// `RowCopyArgs`.
unsafe impl DeviceRepr for RowCopyArgs {}
// SAFETY: #[repr(C)], Copy, four i64 fields: 32 bytes without padding, as the kernel's `GatherArgs`.
unsafe impl DeviceRepr for GatherArgs {}
// SAFETY: #[repr(C)], Copy: one i64, two [i64; 6], two i32 — 112 bytes without padding, matching the
// kernel's `GenericPermuteArgs` field for field.
unsafe impl DeviceRepr for GenericPermuteArgs {}
// SAFETY: #[repr(C)], Copy: five i64, three [i64; 4], two i32 — 144 bytes without padding, matching the
// kernel's `TiledPermuteArgs` field for field.
unsafe impl DeviceRepr for TiledPermuteArgs {}

impl From<RowCopy> for RowCopyArgs {
    fn from(c: RowCopy) -> Self {
        RowCopyArgs {
            outer: c.outer as i64,
            row_len: c.row_len as i64,
            src_stride: c.src_stride as i64,
            src_offset: c.src_offset as i64,
            dst_stride: c.dst_stride as i64,
            dst_offset: c.dst_offset as i64,
        }
    }
}

impl From<Gather> for GatherArgs {
    fn from(g: Gather) -> Self {
        GatherArgs {
            outer: g.outer as i64,
            src_rows: g.src_rows as i64,
            dst_rows: g.dst_rows as i64,
            inner: g.inner as i64,
        }
    }
}

/// Calls `$f::<T>(args, suffix)` with `T` the storage type of `$dtype` and `suffix` its width's kernel
/// suffix.
macro_rules! by_width {
    ($dtype:expr, $f:ident($($a:expr),* $(,)?)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($a,)* "b4"),
            DType::F16 => $f::<f16>($($a,)* "b2"),
            DType::BF16 => $f::<bf16>($($a,)* "b2"),
            DType::I64 => $f::<i64>($($a,)* "b8"),
            DType::F64 => Err(Error::DType {
                arg: "x".into(),
                expected: "f32, f16, bf16 or i64 on a CUDA device".into(),
                got: "f64".into(),
            }),
        }
    };
}

/// Row kernels: threads along a row (x, up to 256 for long rows, at least a warp) and several rows per
/// block when rows are short (y); both grid axes stride, so any extent is covered.
fn rows_launch(rows: usize, row_len: usize) -> LaunchConfig {
    let bx = row_len.next_power_of_two().clamp(32, BLOCK as usize) as u32;
    let by = BLOCK / bx;
    LaunchConfig {
        grid_dim: (
            row_len.div_ceil(bx as usize).clamp(1, 1 << 16) as u32,
            rows.div_ceil(by as usize).clamp(1, 65_535) as u32,
            1,
        ),
        block_dim: (bx, by, 1),
        shared_mem_bytes: 0,
    }
}

/// A `shape` tensor of `dtype` on `dev` whose buffer is not initialised (one element for an empty shape:
/// the driver rejects zero-byte allocations). mod.rs uses it only for results that the following launches
/// write in full.
pub(super) fn unset_output(dev: &CudaDevice, shape: &[usize], dtype: DType) -> Result<Tensor> {
    fn typed<T: CudaElement>(dev: &CudaDevice, shape: &[usize], _suffix: &str) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        // SAFETY: the memory is left unset, which is sound for these plain-data element types (any bit
        // pattern is a valid f32/f16/bf16/i64, so even a stray read is no undefined behaviour), and every
        // caller hands the tensor to a launch that writes each of its n elements before anyone reads it
        // (see `new_output` in mod.rs); an empty tensor's one-element buffer is never read.
        let buf = unsafe { dev.stream().alloc::<T>(n.max(1)) }
            .map_err(Error::cuda(format!("allocating {n} elements")))?;
        Tensor::from_cuda_slice(buf, shape, dev)
    }
    by_width!(dtype, typed(dev, shape))
}

// ---------------------------------------------------------------------------------------------------------
// Permute

pub(super) fn permute_into(
    dev: &CudaDevice,
    x: &Tensor,
    launch: &PermuteLaunch,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        x: &Tensor,
        launch: &PermuteLaunch,
        out: &mut Tensor,
        suffix: &str,
    ) -> Result<()> {
        let numel = x.numel();
        let src = input_slice::<T>(x, "x", dev)?;
        let dst = output_slice::<T>(out, "out", dev)?;
        match launch {
            PermuteLaunch::Copy { numel } => {
                let args = RowCopyArgs::from(RowCopy {
                    outer: 1,
                    row_len: *numel,
                    src_stride: *numel,
                    src_offset: 0,
                    dst_stride: *numel,
                    dst_offset: 0,
                });
                let kernel = format!("copy_rows_{suffix}");
                let func = function(dev, Module::Shape, &kernel)?;
                let mut lb = dev.stream().launch_builder(&func);
                lb.arg(src).arg(dst).arg(&args);
                // SAFETY: copy_rows_<w>(src, dst, args) copies one run of `numel` elements from src[0..] to
                // dst[0..]; x and out both hold numel elements (equal shapes up to the order of extents).
                unsafe { lb.launch(rows_launch(1, *numel)) }.map_err(Error::cuda(kernel))?;
            }
            PermuteLaunch::Generic(args) => {
                // 32-bit index arithmetic (several times cheaper than 64-bit division) whenever it fits.
                let kernel = if numel <= u32::MAX as usize {
                    format!("permute_generic32_{suffix}")
                } else {
                    format!("permute_generic_{suffix}")
                };
                let func = function(dev, Module::Shape, &kernel)?;
                let mut lb = dev.stream().launch_builder(&func);
                lb.arg(src).arg(dst).arg(args);
                // SAFETY: permute_generic[32]_<w>(src, dst, args) writes dst[i] for i < args.numel = numel
                // (out's length) and reads src at Σ_k coord_k·in_strides[k] with coord_k < out_dims[k]: the
                // strides are x's own (collapsed) strides, so the offset stays below numel (x's length).
                unsafe { lb.launch(grid_for(numel)) }.map_err(Error::cuda(kernel))?;
            }
            PermuteLaunch::Tiled(args) => {
                let tiles = (args.a_extent as usize).div_ceil(TILE)
                    * (args.b_extent as usize).div_ceil(TILE);
                let cfg = LaunchConfig {
                    grid_dim: (
                        tiles.clamp(1, 1 << 20) as u32,
                        (args.batch as usize).clamp(1, 65_535) as u32,
                        1,
                    ),
                    block_dim: (TILE as u32, TILE_ROWS as u32, 1),
                    shared_mem_bytes: 0,
                };
                let kernel = format!("permute_tiled_{suffix}");
                let func = function(dev, Module::Shape, &kernel)?;
                let mut lb = dev.stream().launch_builder(&func);
                lb.arg(src).arg(dst).arg(args);
                // SAFETY: permute_tiled_<w>(src, dst, args) is launched with the (TILE, TILE_ROWS) block it
                // is written for; every access is guarded by a < a_extent and b < b_extent, and the batch,
                // a and b coordinates address x by its own (collapsed) strides and out by the permuted
                // shape's strides, so both offsets stay below numel, the length of each buffer.
                unsafe { lb.launch(cfg) }.map_err(Error::cuda(kernel))?;
            }
        }
        Ok(())
    }
    by_width!(x.dtype(), typed(dev, x, launch, out))
}

// ---------------------------------------------------------------------------------------------------------
// Row copies and narrow's backward

pub(super) fn copy_rows_into(
    dev: &CudaDevice,
    copies: &[(&Tensor, RowCopy)],
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        copies: &[(&Tensor, RowCopy)],
        out: &mut Tensor,
        suffix: &str,
    ) -> Result<()> {
        let kernel = format!("copy_rows_{suffix}");
        let func = function(dev, Module::Shape, &kernel)?;
        let dst = output_slice::<T>(out, "out", dev)?;
        for (src, copy) in copies {
            let src_buf = input_slice::<T>(src, "x", dev)?;
            let args = RowCopyArgs::from(*copy);
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(src_buf).arg(&mut *dst).arg(&args);
            // SAFETY: copy_rows_<w>(src, dst, args) reads src[o·src_stride + src_offset + c] and writes
            // dst[o·dst_stride + dst_offset + c] for o < outer, c < row_len. The plan comes from validated
            // shapes: the source is [outer, ·, ·] with src_offset + row_len ≤ src_stride, and the
            // destination holds outer·dst_stride elements with dst_offset + row_len ≤ dst_stride.
            unsafe { lb.launch(rows_launch(copy.outer, copy.row_len)) }
                .map_err(Error::cuda(kernel.clone()))?;
        }
        Ok(())
    }
    by_width!(out.dtype(), typed(dev, copies, out))
}

pub(super) fn pad_rows_into(
    dev: &CudaDevice,
    src: &Tensor,
    copy: RowCopy,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        src: &Tensor,
        copy: RowCopy,
        out: &mut Tensor,
        suffix: &str,
    ) -> Result<()> {
        let kernel = format!("pad_rows_{suffix}");
        let func = function(dev, Module::Shape, &kernel)?;
        let src_buf = input_slice::<T>(src, "grad_out", dev)?;
        let dst = output_slice::<T>(out, "out", dev)?;
        let args = RowCopyArgs::from(copy);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(src_buf).arg(dst).arg(&args);
        // SAFETY: pad_rows_<w>(src, dst, args) writes dst[o·dst_stride + c] for o < outer, c < dst_stride
        // (out holds exactly outer·dst_stride elements) and reads src[o·src_stride + src_offset + c −
        // dst_offset] only where dst_offset ≤ c < dst_offset + row_len: inside the packed
        // [outer, len, inner] gradient (src_stride = row_len, src_offset = 0).
        unsafe { lb.launch(rows_launch(copy.outer, copy.dst_stride)) }
            .map_err(Error::cuda(kernel))?;
        Ok(())
    }
    by_width!(out.dtype(), typed(dev, src, copy, out))
}

// ---------------------------------------------------------------------------------------------------------
// index_select and its backward

pub(super) fn index_select_into(
    dev: &CudaDevice,
    x: &Tensor,
    indices: &Tensor,
    gather: Gather,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        x: &Tensor,
        indices: &Tensor,
        gather: Gather,
        out: &mut Tensor,
        suffix: &str,
    ) -> Result<()> {
        let kernel = format!("index_select_{suffix}");
        let func = function(dev, Module::Shape, &kernel)?;
        let src = input_slice::<T>(x, "x", dev)?;
        let idx = input_slice::<i64>(indices, "indices", dev)?;
        let dst = output_slice::<T>(out, "out", dev)?;
        let args = GatherArgs::from(gather);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(src).arg(idx).arg(dst).arg(&args);
        // SAFETY: index_select_<w>(src, idx, dst, args) writes row r < outer·dst_rows of the
        // [outer, dst_rows, inner] output (out's shape) from row o·src_rows + idx[r % dst_rows] of the
        // [outer, src_rows, inner] input; idx holds dst_rows entries, each validated on the host to lie in
        // [0, src_rows).
        unsafe { lb.launch(rows_launch(gather.outer * gather.dst_rows, gather.inner)) }
            .map_err(Error::cuda(kernel))?;
        Ok(())
    }
    by_width!(x.dtype(), typed(dev, x, indices, gather, out))
}

pub(super) fn index_select_backward_into(
    dev: &CudaDevice,
    grad: &Tensor,
    inverse: &InverseIndex,
    gather: Gather,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        grad: &Tensor,
        inverse: &InverseIndex,
        gather: Gather,
        out: &mut Tensor,
    ) -> Result<()> {
        let device = grad.device();
        let offsets = Tensor::from_vec(inverse.offsets.clone(), &[inverse.offsets.len()])?
            .to_device(&device)?;
        let sources = Tensor::from_vec(inverse.sources.clone(), &[inverse.sources.len()])?
            .to_device(&device)?;
        let kernel = format!("index_select_backward_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Shape, &kernel)?;
        let g = input_slice::<T>(grad, "grad_out", dev)?;
        let off = input_slice::<i64>(&offsets, "offsets", dev)?;
        let srcs = input_slice::<i64>(&sources, "sources", dev)?;
        let dst = output_slice::<T>(out, "out", dev)?;
        let args = GatherArgs::from(gather);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(g).arg(off).arg(srcs).arg(dst).arg(&args);
        // SAFETY: index_select_backward_<T>(grad, offsets, sources, dst, args) writes every element of the
        // [outer, src_rows, inner] output (out's shape). Row d reads offsets[d] and offsets[d + 1]
        // (src_rows + 1 entries) and, between them, sources[k] — gathered-row numbers below dst_rows, the
        // counting sort of the validated indices — so grad is read inside its [outer, dst_rows, inner]
        // extent. With dst_rows = 0 every range is empty and neither sources nor grad is read.
        unsafe { lb.launch(rows_launch(gather.outer * gather.src_rows, gather.inner)) }
            .map_err(Error::cuda(kernel))?;
        Ok(())
    }
    match grad.dtype() {
        DType::F32 => typed::<f32>(dev, grad, inverse, gather, out),
        DType::F16 => typed::<f16>(dev, grad, inverse, gather, out),
        DType::BF16 => typed::<bf16>(dev, grad, inverse, gather, out),
        other => Err(Error::DType {
            arg: "grad_out".into(),
            expected: "f32, f16 or bf16 on a CUDA device".into(),
            got: other.to_string(),
        }),
    }
}
