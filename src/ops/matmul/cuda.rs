//! Launch wrapper for kernels/matmul.cu.

use super::Dims;
use crate::cuda::{alloc_zeros, function, grid_for, input_slice, output_slice, Module};
use crate::error::{Error, Result};
use crate::tensor::{CudaData, CudaDevice, CudaElement, Tensor};
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

/// Mirrors `struct MatmulArgs` in kernels/matmul.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct MatmulArgs {
    stride_a: i64,
    stride_b: i64,
    stride_c: i64,
    m: i32,
    n: i32,
    k: i32,
    trans_a: i32,
    trans_b: i32,
    alpha: f32,
    beta: f32,
    k_chunk: i32,
    splits: i32,
}

const _: () = assert!(
    std::mem::size_of::<MatmulArgs>() == 64,
    "must match the kernel's struct"
);

// SAFETY: #[repr(C)], Copy, only integers and floats, laid out exactly like the kernel's MatmulArgs (three
// 8-byte fields, then nine 4-byte fields, padded to 64 bytes on both sides).
unsafe impl DeviceRepr for MatmulArgs {}

/// `out = alpha·op(a)·op(b) + beta·out` for validated operands (`out` already has the product's shape).
pub(super) fn matmul_into(
    dev: &CudaDevice,
    a: &Tensor,
    b: &Tensor,
    dims: &Dims,
    alpha: f32,
    beta: f32,
    out: &mut Tensor,
) -> Result<()> {
    match a.cuda_storage().map(|s| &s.data) {
        Some(CudaData::F32(_)) => typed::<f32>(dev, a, b, dims, alpha, beta, out),
        Some(CudaData::F16(_)) => typed::<f16>(dev, a, b, dims, alpha, beta, out),
        Some(CudaData::BF16(_)) => typed::<bf16>(dev, a, b, dims, alpha, beta, out),
        _ => Err(Error::invalid("a", "expected a float CUDA tensor")),
    }
}

/// Tile edge of the kernel (both M and N) and its K step.
const TILE: usize = 64;
const TILE_K: usize = 16;

/// How many chunks to split K into: only when C has too few tiles to occupy the GPU (~132 SMs) and K is
/// long enough that each chunk still streams ≥ 1024 of it. Aims at ~256 blocks in all.
fn split_k(d: &Dims) -> usize {
    let tiles = d.m.div_ceil(TILE) * d.n.div_ceil(TILE) * d.batch;
    if tiles >= 128 || d.k < 2048 {
        return 1;
    }
    let by_work = d.k / 1024;
    let by_fill = 256usize.div_ceil(tiles);
    let by_grid = u16::MAX as usize / d.batch;
    by_work.min(by_fill).min(by_grid).clamp(1, 64)
}

fn typed<T: CudaElement>(
    dev: &CudaDevice,
    a: &Tensor,
    b: &Tensor,
    d: &Dims,
    alpha: f32,
    beta: f32,
    out: &mut Tensor,
) -> Result<()> {
    let a_buf = input_slice::<T>(a, "a", dev)?;
    let b_buf = input_slice::<T>(b, "b", dev)?;
    let requested = split_k(d);
    // Chunks are whole K steps; recount so that no chunk is empty.
    let k_chunk = d.k.div_ceil(requested).div_ceil(TILE_K) * TILE_K;
    let splits = if requested > 1 {
        d.k.div_ceil(k_chunk)
    } else {
        1
    };
    let mn = d.m * d.n;
    let mut args = MatmulArgs {
        stride_a: (d.m * d.k) as i64,
        stride_b: (d.k * d.n) as i64,
        stride_c: mn as i64,
        m: d.m as i32,
        n: d.n as i32,
        k: d.k as i32,
        trans_a: d.trans_a as i32,
        trans_b: d.trans_b as i32,
        alpha,
        beta,
        k_chunk: if splits > 1 {
            k_chunk as i32
        } else {
            d.k as i32
        },
        splits: splits as i32,
    };
    let cfg = LaunchConfig {
        grid_dim: (
            d.n.div_ceil(TILE) as u32,
            d.m.div_ceil(TILE) as u32,
            (d.batch * splits) as u32,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    if splits == 1 {
        let c_buf = output_slice::<T>(out, "out", dev)?;
        let kernel = format!("matmul_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Matmul, &kernel)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(a_buf).arg(b_buf).arg(c_buf).arg(&args);
        // SAFETY: matmul_<T>(a, b, c, args) reads batch·M·K elements of a, batch·K·N of b and writes
        // batch·M·N of c, exactly the validated buffer lengths; the grid covers ceil(N/64) x ceil(M/64) x batch
        // tiles (M < 65535·64, N < 2^31, batch ≤ 65535 checked) with the 256 threads the kernel assumes.
        unsafe { lb.launch(cfg) }.map_err(Error::cuda(kernel))?;
        return Ok(());
    }

    // Split-K: f32 partial products per chunk, then a fixed-order sum into C.
    let mut partial = alloc_zeros::<f32>(dev, d.batch * splits * mn)?;
    args.alpha = 1.0;
    args.beta = 0.0;
    let kernel = format!("matmul_split_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Matmul, &kernel)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(a_buf).arg(b_buf).arg(&mut partial).arg(&args);
    // SAFETY: as above, with blockIdx.z = batch·splits + split (batch·splits ≤ 65535 by split_k) and the
    // output a scratch of batch·splits·M·N floats; each chunk reads K columns [split·k_chunk, min(K, ..)).
    unsafe { lb.launch(cfg) }.map_err(Error::cuda(kernel.clone()))?;

    let c_buf = output_slice::<T>(out, "out", dev)?;
    let kernel = format!("matmul_reduce_splits_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Matmul, &kernel)?;
    let (mn_i64, total, splits_i32) = (mn as i64, (d.batch * mn) as i64, splits as i32);
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(&partial)
        .arg(c_buf)
        .arg(&mn_i64)
        .arg(&total)
        .arg(&splits_i32)
        .arg(&alpha)
        .arg(&beta);
    // SAFETY: matmul_reduce_splits_<T>(partial, c, mn, total, splits, alpha, beta) reads batch·splits·mn
    // floats of partial (its length) and reads/writes total = batch·mn elements of c (its length).
    unsafe { lb.launch(grid_for(d.batch * mn)) }.map_err(Error::cuda(kernel))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(batch: usize, m: usize, n: usize, k: usize) -> Dims {
        Dims {
            batch,
            m,
            n,
            k,
            trans_a: false,
            trans_b: true,
        }
    }

    #[test]
    fn split_k_only_for_few_tiles_and_long_k() {
        assert_eq!(
            split_k(&dims(1, 1024, 1024, 12_544)),
            1,
            "256 tiles fill the GPU"
        );
        assert_eq!(split_k(&dims(1, 64, 64, 2_000)), 1, "short K");
        // GloRe projection: 2 x (128 x 64) over K = 67 200 -> 4 tiles, 64 chunks of ~1 056.
        assert_eq!(split_k(&dims(2, 128, 64, 67_200)), 64);
        // Chunks never exceed what K supports at >= 1024 each.
        assert_eq!(split_k(&dims(1, 64, 64, 5_000)), 4);
        // The grid's z extent (batch · splits) stays within 65535.
        assert_eq!(split_k(&dims(40_000, 8, 8, 4_096)), 1);
    }
}
