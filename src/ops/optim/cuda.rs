//! Launch wrappers for kernels/optim.cu. mod.rs validated shapes, dtypes and devices.

use super::{AdamWCoefficients, SgdCoefficients};
use crate::cuda::{
    alloc_zeros, function, grid_for, input_slice, output_slice, sum_partials, Module,
    NULL_DEVICE_PTR,
};
use crate::error::{Error, Result};
use crate::tensor::{CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{DeviceRepr, PushKernelArg};
use half::{bf16, f16};

/// Mirrors `struct SgdArgs` in kernels/optim.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SgdArgs {
    n: i64,
    lr: f32,
    momentum: f32,
    one_minus_dampening: f32,
    weight_decay: f32,
    nesterov: i32,
    first_step: i32,
    has_buffer: i32,
    unused: i32,
}

/// Mirrors `struct AdamWArgs` in kernels/optim.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct AdamWArgs {
    n: i64,
    decay: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
    unused: i32,
}

const _: () = assert!(
    std::mem::size_of::<SgdArgs>() == 40 && std::mem::size_of::<AdamWArgs>() == 40,
    "must match the kernel's structs"
);

// SAFETY: #[repr(C)], Copy, an i64 followed by eight 4-byte scalars: 40 bytes, no padding, no pointers, laid
// out exactly like the kernel's `SgdArgs`.
unsafe impl DeviceRepr for SgdArgs {}
// SAFETY: #[repr(C)], Copy, an i64 followed by seven f32 and an i32: 40 bytes, no padding, no pointers,
// matching the kernel's `AdamWArgs`.
unsafe impl DeviceRepr for AdamWArgs {}

/// Calls `$body` with `$t` bound to the element type of `dtype` (f32, f16, bf16; f64 never reaches the
/// device).
macro_rules! by_dtype {
    ($dtype:expr, |$t:ident| $body:expr) => {
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
                arg: "param".into(),
                expected: "f32, f16 or bf16 on a CUDA device".into(),
                got: other.to_string(),
            }),
        }
    };
}

pub(super) fn sgd_step(
    dev: &CudaDevice,
    param: &mut Tensor,
    grad: &Tensor,
    buffer: Option<&mut Tensor>,
    c: &SgdCoefficients,
) -> Result<()> {
    by_dtype!(param.dtype(), |T| sgd_typed::<T>(
        dev, param, grad, buffer, c
    ))
}

fn sgd_typed<T: CudaElement>(
    dev: &CudaDevice,
    param: &mut Tensor,
    grad: &Tensor,
    buffer: Option<&mut Tensor>,
    c: &SgdCoefficients,
) -> Result<()> {
    let n = param.numel();
    let args = SgdArgs {
        n: n as i64,
        lr: c.lr as f32,
        momentum: c.momentum as f32,
        one_minus_dampening: c.one_minus_dampening as f32,
        weight_decay: c.weight_decay as f32,
        nesterov: c.nesterov as i32,
        first_step: c.first_step as i32,
        has_buffer: buffer.is_some() as i32,
        unused: 0,
    };
    let name = format!("sgd_step_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Optim, &name)?;
    let g = input_slice::<T>(grad, "grad", dev)?;
    let p = output_slice::<T>(param, "param", dev)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(p).arg(g);
    let buffer = match buffer {
        Some(b) => Some(output_slice::<f32>(b, "momentum_buffer", dev)?),
        None => None,
    };
    match buffer {
        Some(b) => lb.arg(b),
        None => lb.arg(&NULL_DEVICE_PTR),
    };
    lb.arg(&args);
    // SAFETY: sgd_step_<T>(T* param, const T* grad, float* buffer, SgdArgs) touches elements [0, n) of each
    // buffer; param and grad hold n elements of T, the momentum buffer n f32 (validated shapes), and the
    // buffer pointer is only read when has_buffer = 1, i.e. when a real buffer was passed.
    unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(name))?;
    Ok(())
}

pub(super) fn adamw_step(
    dev: &CudaDevice,
    param: &mut Tensor,
    grad: &Tensor,
    exp_avg: &mut Tensor,
    exp_avg_sq: &mut Tensor,
    c: &AdamWCoefficients,
) -> Result<()> {
    by_dtype!(param.dtype(), |T| adamw_typed::<T>(
        dev, param, grad, exp_avg, exp_avg_sq, c
    ))
}

fn adamw_typed<T: CudaElement>(
    dev: &CudaDevice,
    param: &mut Tensor,
    grad: &Tensor,
    exp_avg: &mut Tensor,
    exp_avg_sq: &mut Tensor,
    c: &AdamWCoefficients,
) -> Result<()> {
    let n = param.numel();
    let args = AdamWArgs {
        n: n as i64,
        decay: c.decay as f32,
        one_minus_beta1: c.one_minus_beta1 as f32,
        beta2: c.beta2 as f32,
        one_minus_beta2: c.one_minus_beta2 as f32,
        eps: c.eps as f32,
        step_size: c.step_size as f32,
        bias_correction2_sqrt: c.bias_correction2_sqrt as f32,
        unused: 0,
    };
    let name = format!("adamw_step_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Optim, &name)?;
    let g = input_slice::<T>(grad, "grad", dev)?;
    let m = output_slice::<f32>(exp_avg, "exp_avg", dev)?;
    let v = output_slice::<f32>(exp_avg_sq, "exp_avg_sq", dev)?;
    let p = output_slice::<T>(param, "param", dev)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(p).arg(g).arg(m).arg(v).arg(&args);
    // SAFETY: adamw_step_<T>(T* param, const T* grad, float* m, float* v, AdamWArgs) touches elements [0, n)
    // of each buffer; all four hold n elements (validated shapes; m and v are f32).
    unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(name))?;
    Ok(())
}

pub(super) fn squared_norm(dev: &CudaDevice, x: &Tensor) -> Result<f64> {
    by_dtype!(x.dtype(), |T| squared_norm_typed::<T>(dev, x))
}

fn squared_norm_typed<T: CudaElement>(dev: &CudaDevice, x: &Tensor) -> Result<f64> {
    let n = x.numel();
    let cfg = grid_for(n);
    let mut partials = alloc_zeros::<f32>(dev, cfg.grid_dim.0 as usize)?;
    let name = format!("squared_norm_partials_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Optim, &name)?;
    let xs = input_slice::<T>(x, "x", dev)?;
    let n_i64 = n as i64;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(xs).arg(&n_i64).arg(&mut partials);
    // SAFETY: squared_norm_partials_<T>(const T* x, int64 n, float* partials) reads n elements of x and
    // writes partials[blockIdx.x]; partials holds one float per block of this launch.
    unsafe { lb.launch(cfg) }.map_err(Error::cuda(name))?;
    let total = sum_partials(dev, &partials)?;
    let host = dev
        .stream()
        .clone_dtoh(&total)
        .map_err(Error::cuda("device-to-host copy"))?;
    Ok(host[0] as f64)
}

pub(super) fn scale_in_place(dev: &CudaDevice, x: &mut Tensor, s: f64) -> Result<()> {
    by_dtype!(x.dtype(), |T| scale_typed::<T>(dev, x, s))
}

fn scale_typed<T: CudaElement>(dev: &CudaDevice, x: &mut Tensor, s: f64) -> Result<()> {
    let n = x.numel();
    let name = format!("scale_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Optim, &name)?;
    let (n_i64, s32) = (n as i64, s as f32);
    let xs = output_slice::<T>(x, "x", dev)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(xs).arg(&n_i64).arg(&s32);
    // SAFETY: scale_<T>(T* x, int64 n, float s) rewrites elements [0, n) of x, which holds n elements.
    unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(name))?;
    Ok(())
}
