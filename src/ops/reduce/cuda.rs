//! Launch wrappers for kernels/reduce.cu. Inputs were validated by mod.rs (dtypes, devices, shapes, index
//! ranges); this file picks the kernel instance and launches.

use crate::cuda::{
    alloc_zeros, function, grid_for, input_slice, output_slice, sum_partials, Module, BLOCK,
};
use crate::error::{Error, Result};
use crate::tensor::{CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::{bf16, f16};

fn unsupported(arg: &str, t: &Tensor) -> Error {
    Error::DType {
        arg: arg.into(),
        expected: "f32, f16 or bf16 on a CUDA device".into(),
        got: t.dtype().to_string(),
    }
}

/// Calls `$f::<T>(args)` with `T` the storage type of `$t`.
macro_rules! by_storage {
    ($t:expr, $arg:expr, $f:ident($($a:expr),* $(,)?)) => {
        match $t.dtype() {
            DType::F32 => $f::<f32>($($a),*),
            DType::F16 => $f::<f16>($($a),*),
            DType::BF16 => $f::<bf16>($($a),*),
            _ => Err(unsupported($arg, $t)),
        }
    };
}

/// `scale · Σ x` as an f32 shape-`[]` tensor: per-block partials, then `sum_partials` in a fixed order.
pub(super) fn sum_all(dev: &CudaDevice, x: &Tensor, scale: f64) -> Result<Tensor> {
    fn typed<T: CudaElement>(dev: &CudaDevice, x: &Tensor, scale: f64) -> Result<Tensor> {
        let n = x.numel();
        let cfg = grid_for(n);
        let mut partials = alloc_zeros::<f32>(dev, cfg.grid_dim.0 as usize)?;
        let kernel = format!("sum_all_partials_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Reduce, &kernel)?;
        let n_i64 = n as i64;
        let scale = scale as f32;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(x, "x", dev)?)
            .arg(&n_i64)
            .arg(&scale)
            .arg(&mut partials);
        // SAFETY: sum_all_partials_<T>(x, n, scale, partials) reads x[i] for i < n (x's element count) and
        // writes partials[blockIdx.x] for each block of the grid_for(n) launch: exactly partials' length.
        // BLOCK threads per block, a multiple of 32 as block_reduce_sum requires.
        unsafe { lb.launch(cfg) }.map_err(Error::cuda(kernel))?;
        let total = sum_partials(dev, &partials)?;
        Tensor::from_cuda_slice(total, &[], dev)
    }
    by_storage!(x, "x", typed(dev, x, scale))
}

/// Eight warps per block, one row per warp, grid-stride beyond the block cap.
fn warp_per_row(rows: usize) -> LaunchConfig {
    let warps_per_block = (BLOCK / 32) as usize;
    LaunchConfig {
        grid_dim: (rows.div_ceil(warps_per_block).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn max_last_axis(
    dev: &CudaDevice,
    x: &Tensor,
    rows: usize,
    cols: usize,
    values: &mut Tensor,
    indices: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        x: &Tensor,
        rows: usize,
        cols: usize,
        values: &mut Tensor,
        indices: &mut Tensor,
    ) -> Result<()> {
        let kernel = format!("max_last_axis_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Reduce, &kernel)?;
        let (rows_i64, cols_i32) = (rows as i64, cols as i32);
        let values_buf = output_slice::<T>(values, "values", dev)?;
        let indices_buf = output_slice::<i64>(indices, "indices", dev)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(x, "x", dev)?)
            .arg(&rows_i64)
            .arg(&cols_i32)
            .arg(values_buf)
            .arg(indices_buf);
        // SAFETY: max_last_axis_<T>(x, rows, cols, values, indices) reads x[r·cols + c] for r < rows,
        // c < cols (x holds rows·cols elements) and writes values[r], indices[r] for r < rows, the length of
        // both outputs (x's shape without its last axis). cols < 2^31 was checked in mod.rs.
        unsafe { lb.launch(warp_per_row(rows)) }.map_err(Error::cuda(kernel))?;
        Ok(())
    }
    by_storage!(x, "x", typed(dev, x, rows, cols, values, indices))
}

pub(super) fn max_last_axis_backward(
    dev: &CudaDevice,
    indices: &Tensor,
    host_indices: &[i64],
    grad_values: &Tensor,
    rows: usize,
    cols: usize,
    grad: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        indices: &Tensor,
        host_indices: &[i64],
        grad_values: &Tensor,
        rows: usize,
        cols: usize,
        grad: &mut Tensor,
    ) -> Result<()> {
        // The validated host copy is uploaded when the caller's indices are not on this device.
        let uploaded;
        let index_buf = match indices.cuda_storage().filter(|s| s.device == *dev) {
            Some(_) => input_slice::<i64>(indices, "indices", dev)?,
            None => {
                uploaded = dev
                    .stream()
                    .clone_htod(host_indices)
                    .map_err(Error::cuda("uploading max indices"))?;
                &uploaded
            }
        };
        let kernel = format!("max_last_axis_backward_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Reduce, &kernel)?;
        let (rows_i64, cols_i32) = (rows as i64, cols as i32);
        let grad_buf = output_slice::<T>(grad, "grad", dev)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(grad_values, "grad_values", dev)?)
            .arg(index_buf)
            .arg(&rows_i64)
            .arg(&cols_i32)
            .arg(grad_buf);
        // SAFETY: max_last_axis_backward_<T>(grad_values, indices, rows, cols, grad) writes grad[i] for
        // i < rows·cols (grad has x's shape) and reads grad_values[r], indices[r] for r < rows (both hold
        // rows elements); index values are compared, never used as addresses.
        unsafe { lb.launch(grid_for(rows * cols)) }.map_err(Error::cuda(kernel))?;
        Ok(())
    }
    by_storage!(
        grad,
        "x",
        typed(dev, indices, host_indices, grad_values, rows, cols, grad)
    )
}
