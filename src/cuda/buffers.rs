//! Typed access to the device buffers inside tensors, allocation, and the deterministic scalar reduction
//! that every fused loss kernel ends with.

use super::{function, grid_for, Module};
use crate::error::{Error, Result};
use crate::tensor::{CudaData, CudaDevice, CudaElement, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits};

fn device_error(t: &Tensor, arg: &str, dev: &CudaDevice) -> Error {
    Error::Device {
        arg: arg.into(),
        expected: format!("cuda:{}", dev.ordinal()),
        got: t.device().to_string(),
    }
}

fn dtype_error<T: CudaElement>(t: &Tensor, arg: &str) -> Error {
    Error::DType {
        arg: arg.into(),
        expected: T::DTYPE.to_string(),
        got: t.dtype().to_string(),
    }
}

/// The device buffer of `t`, which must be a `T` tensor on `dev`.
pub(crate) fn input_slice<'a, T: CudaElement>(
    t: &'a Tensor,
    arg: &str,
    dev: &CudaDevice,
) -> Result<&'a CudaSlice<T>> {
    let storage = t
        .cuda_storage()
        .filter(|s| s.device == *dev)
        .ok_or_else(|| device_error(t, arg, dev))?;
    T::device_slice(&storage.data).ok_or_else(|| dtype_error::<T>(t, arg))
}

/// The device buffer of `t`, mutably, which must be a `T` tensor on `dev`.
pub(crate) fn output_slice<'a, T: CudaElement>(
    t: &'a mut Tensor,
    arg: &str,
    dev: &CudaDevice,
) -> Result<&'a mut CudaSlice<T>> {
    let on_device = t.cuda_storage().is_some_and(|s| s.device == *dev);
    if !on_device {
        return Err(device_error(t, arg, dev));
    }
    let dtype_err = dtype_error::<T>(t, arg);
    let storage = t.cuda_storage_mut().ok_or_else(|| device_error_msg(arg))?;
    T::device_slice_mut(&mut storage.data).ok_or(dtype_err)
}

fn device_error_msg(arg: &str) -> Error {
    Error::invalid(arg, "expected a CUDA tensor")
}

/// A zero-filled device buffer of `n` elements (one element when `n = 0`: the driver rejects zero-byte
/// allocations; callers take lengths from shapes).
pub(crate) fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
    dev: &CudaDevice,
    n: usize,
) -> Result<CudaSlice<T>> {
    dev.stream()
        .alloc_zeros::<T>(n.max(1))
        .map_err(Error::cuda(format!("allocating {n} elements")))
}

/// Sums per-block partial results (one f32 per block of a `grid_for(n)` launch, written with
/// `detkd::block_reduce_sum`) into one f32, in a fixed order: the scalar is bitwise reproducible.
pub(crate) fn sum_partials(dev: &CudaDevice, partials: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
    let mut out = alloc_zeros::<f32>(dev, 1)?;
    let func = function(dev, Module::Accumulate, "sum_partials_f32")?;
    let n = partials.len() as i64;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(partials).arg(&n).arg(&mut out);
    let mut cfg = grid_for(1);
    cfg.grid_dim = (1, 1, 1);
    // SAFETY: sum_partials_f32(const float* partials, int64 n, float* out) reads n floats (the buffer's
    // length) and writes out[0]; one block of BLOCK threads is what it expects.
    unsafe { lb.launch(cfg) }.map_err(Error::cuda("sum_partials_f32"))?;
    Ok(out)
}

/// An f32 buffer converted to the storage dtype `T` (f32 accumulators of a half-precision op); for `T = f32`
/// the buffer is returned as it is, without a launch.
pub(crate) fn f32_into<T: CudaElement>(
    dev: &CudaDevice,
    acc: CudaSlice<f32>,
) -> Result<CudaSlice<T>> {
    let acc = match T::into_device_slice(CudaData::F32(acc)) {
        Ok(done) => return Ok(done),
        Err(CudaData::F32(acc)) => acc,
        Err(_) => return Err(Error::invalid("accumulator", "expected an f32 buffer")),
    };
    let n = acc.len();
    let mut out = alloc_zeros::<T>(dev, n)?;
    if n == 0 {
        return Ok(out);
    }
    let kernel = format!("f32_to_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Accumulate, &kernel)?;
    let n_i64 = n as i64;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(&acc).arg(&n_i64).arg(&mut out);
    // SAFETY: f32_to_<T>(const float* src, int64 n, T* out) reads n floats of acc and writes n elements of
    // out; both buffers hold n elements.
    unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
    Ok(out)
}
