//! Launch wrapper for kernels/matmul.cu.

use super::Dims;
use crate::cuda::{function, input_slice, output_slice, Module};
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
}

const _: () = assert!(
    std::mem::size_of::<MatmulArgs>() == 56,
    "must match the kernel's struct"
);

// SAFETY: #[repr(C)], Copy, only integers and floats, laid out exactly like the kernel's MatmulArgs (three
// 8-byte fields, then 4-byte fields, padded to 56 bytes on both sides).
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
    let c_buf = output_slice::<T>(out, "out", dev)?;
    let args = MatmulArgs {
        stride_a: (d.m * d.k) as i64,
        stride_b: (d.k * d.n) as i64,
        stride_c: (d.m * d.n) as i64,
        m: d.m as i32,
        n: d.n as i32,
        k: d.k as i32,
        trans_a: d.trans_a as i32,
        trans_b: d.trans_b as i32,
        alpha,
        beta,
    };
    let kernel = format!("matmul_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Matmul, &kernel)?;
    let cfg = LaunchConfig {
        grid_dim: (
            d.n.div_ceil(64) as u32,
            d.m.div_ceil(64) as u32,
            d.batch as u32,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(a_buf).arg(b_buf).arg(c_buf).arg(&args);
    // SAFETY: matmul_<T>(a, b, c, args) reads batch·M·K elements of a, batch·K·N of b and writes batch·M·N of
    // c, which are exactly the validated buffer lengths; the grid covers ceil(N/64) x ceil(M/64) x batch
    // tiles (M, N < 2^31, batch <= 65535 checked) and 256 threads is the block shape the kernel assumes.
    unsafe { lb.launch(cfg) }.map_err(Error::cuda(kernel))?;
    Ok(())
}
