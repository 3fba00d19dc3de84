//! Launch wrappers for kernels/norm.cu. Shapes, dtypes and devices were validated in mod.rs (empty batches
//! returned before reaching here); storage tensors are `T` ∈ {f32, f16, bf16}, statistics f32.

use super::{
    BatchNormConfig, BatchNormOutput, Dims, GroupNormConfig, GroupNormOutput, NormGrads, NormStats,
    RunningStats,
};
use crate::cuda::{alloc_zeros, function, grid_for, input_slice, Module, BLOCK, NULL_DEVICE_PTR};
use crate::error::{Error, Result};
use crate::tensor::{CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

/// Mirrors `struct NormArgs` in kernels/norm.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct NormArgs {
    batch: i64,
    channels: i64,
    plane: i64,
    groups: i32,
    eps: f32,
    momentum: f32,
    unused: i32,
}

const _: () = assert!(
    std::mem::size_of::<NormArgs>() == 40,
    "must match the kernel's struct"
);

// SAFETY: #[repr(C)], Copy, three i64 then four 4-byte fields: 40 bytes without padding, laid out exactly
// like the kernel's `NormArgs`.
unsafe impl DeviceRepr for NormArgs {}

fn norm_args(d: &Dims, groups: usize, eps: f64, momentum: f64) -> NormArgs {
    NormArgs {
        batch: d.b as i64,
        channels: d.c as i64,
        plane: d.plane as i64,
        groups: groups as i32,
        eps: eps as f32,
        momentum: momentum as f32,
        unused: 0,
    }
}

/// One block of [`BLOCK`] threads per item (channel or group), looping beyond 65535 blocks.
fn per_item(items: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (items.clamp(1, 65_535) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
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

/// The device buffer of an optional tensor, or null.
fn push_optional<'a, T: CudaElement>(
    lb: &mut LaunchArgs<'a>,
    t: Option<&'a Tensor>,
    arg: &str,
    dev: &CudaDevice,
) -> Result<()> {
    match t {
        Some(t) => {
            lb.arg(input_slice::<T>(t, arg, dev)?);
        }
        None => {
            lb.arg(&NULL_DEVICE_PTR);
        }
    }
    Ok(())
}

fn buffer<T: CudaElement>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    alloc_zeros::<T>(dev, n)
}

fn tensor<T: CudaElement>(data: CudaSlice<T>, shape: &[usize], dev: &CudaDevice) -> Result<Tensor> {
    Tensor::from_cuda_slice(data, shape, dev)
}

pub(super) fn batch_norm_train(
    dev: &CudaDevice,
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running: Option<RunningStats<'_>>,
    cfg: &BatchNormConfig,
    d: &Dims,
) -> Result<BatchNormOutput> {
    by_storage!(input.dtype(), T => {
        let n = input.numel();
        let mut y = buffer::<T>(dev, n)?;
        let mut mean = buffer::<f32>(dev, d.c)?;
        let mut inv_std = buffer::<f32>(dev, d.c)?;
        let mut new_mean = buffer::<T>(dev, d.c)?;
        let mut new_var = buffer::<T>(dev, d.c)?;
        let kernel = format!("batch_norm_train_forward_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Norm, &kernel)?;
        let args = norm_args(d, 1, cfg.eps, cfg.momentum);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(input, "input", dev)?);
        push_optional::<T>(&mut lb, weight, "weight", dev)?;
        push_optional::<T>(&mut lb, bias, "bias", dev)?;
        push_optional::<T>(&mut lb, running.map(|r| r.mean), "running_mean", dev)?;
        push_optional::<T>(&mut lb, running.map(|r| r.var), "running_var", dev)?;
        lb.arg(&args)
            .arg(&mut y)
            .arg(&mut mean)
            .arg(&mut inv_std)
            .arg(&mut new_mean)
            .arg(&mut new_var);
        // SAFETY: batch_norm_train_forward_<T>(x, weight, bias, running_mean, running_var, args, y, mean,
        // inv_std, new_mean, new_var) reads and writes x and y at (b·C + c)·plane + p for b < B, c < C,
        // p < plane (both hold B·C·plane elements) and reads/writes index c < C of every [C] buffer; the
        // optional inputs are [C] tensors or null, and the kernel reads a null one never (it tests each
        // pointer); new_mean/new_var are written only when running_mean is given. One BLOCK-thread block per
        // channel, as block_reduce_sum requires.
        unsafe { lb.launch(per_item(d.c)) }.map_err(Error::cuda(kernel))?;
        let (running_mean, running_var) = if running.is_some() {
            (Some(tensor(new_mean, &[d.c], dev)?), Some(tensor(new_var, &[d.c], dev)?))
        } else {
            (None, None)
        };
        Ok(BatchNormOutput {
            output: tensor(y, input.shape(), dev)?,
            stats: NormStats {
                mean: tensor(mean, &[d.c], dev)?,
                inv_std: tensor(inv_std, &[d.c], dev)?,
            },
            running_mean,
            running_var,
        })
    })
}

pub(super) fn batch_norm_backward(
    dev: &CudaDevice,
    input: &Tensor,
    weight: Option<&Tensor>,
    stats: &NormStats,
    grad_output: &Tensor,
    d: &Dims,
) -> Result<NormGrads> {
    by_storage!(input.dtype(), T => {
        let mut dx = buffer::<T>(dev, input.numel())?;
        let mut dw = buffer::<T>(dev, d.c)?;
        let mut db = buffer::<T>(dev, d.c)?;
        let kernel = format!("batch_norm_backward_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Norm, &kernel)?;
        let args = norm_args(d, 1, 1.0, 0.0);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(input, "input", dev)?);
        push_optional::<T>(&mut lb, weight, "weight", dev)?;
        lb.arg(input_slice::<f32>(&stats.mean, "stats.mean", dev)?)
            .arg(input_slice::<f32>(&stats.inv_std, "stats.inv_std", dev)?)
            .arg(input_slice::<T>(grad_output, "grad_output", dev)?)
            .arg(&args)
            .arg(&mut dx)
            .arg(&mut dw)
            .arg(&mut db);
        // SAFETY: batch_norm_backward_<T>(x, weight, mean, inv_std, grad_out, args, grad_x, grad_weight,
        // grad_bias) reads x and grad_out and writes grad_x at (b·C + c)·plane + p (all B·C·plane elements),
        // reads weight (or nothing when null), mean and inv_std at c < C (all [C]) and writes grad_weight,
        // grad_bias at c < C. One BLOCK-thread block per channel.
        unsafe { lb.launch(per_item(d.c)) }.map_err(Error::cuda(kernel))?;
        Ok(NormGrads {
            input: tensor(dx, input.shape(), dev)?,
            weight: tensor(dw, &[d.c], dev)?,
            bias: tensor(db, &[d.c], dev)?,
        })
    })
}

pub(super) fn batch_norm_eval(
    dev: &CudaDevice,
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running: RunningStats<'_>,
    eps: f64,
    d: &Dims,
) -> Result<Tensor> {
    by_storage!(input.dtype(), T => {
        let n = input.numel();
        let mut y = buffer::<T>(dev, n)?;
        let kernel = format!("batch_norm_eval_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Norm, &kernel)?;
        let args = norm_args(d, 1, eps, 0.0);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(input, "input", dev)?);
        push_optional::<T>(&mut lb, weight, "weight", dev)?;
        push_optional::<T>(&mut lb, bias, "bias", dev)?;
        lb.arg(input_slice::<T>(running.mean, "running_mean", dev)?)
            .arg(input_slice::<T>(running.var, "running_var", dev)?)
            .arg(&args)
            .arg(&mut y);
        // SAFETY: batch_norm_eval_<T>(x, weight, bias, running_mean, running_var, args, y) reads x and writes
        // y at i < B·C·plane (both that long) and reads the [C] tensors at c = (i / plane) % C < C; null
        // weight/bias are never read.
        unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
        tensor(y, input.shape(), dev)
    })
}

pub(super) fn group_norm(
    dev: &CudaDevice,
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    cfg: &GroupNormConfig,
    d: &Dims,
) -> Result<GroupNormOutput> {
    let groups = cfg.num_groups;
    by_storage!(input.dtype(), T => {
        let mut y = buffer::<T>(dev, input.numel())?;
        let mut mean = buffer::<f32>(dev, d.b * groups)?;
        let mut inv_std = buffer::<f32>(dev, d.b * groups)?;
        let kernel = format!("group_norm_forward_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Norm, &kernel)?;
        let args = norm_args(d, groups, cfg.eps, 0.0);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(input, "input", dev)?);
        push_optional::<T>(&mut lb, weight, "weight", dev)?;
        push_optional::<T>(&mut lb, bias, "bias", dev)?;
        lb.arg(&args).arg(&mut y).arg(&mut mean).arg(&mut inv_std);
        // SAFETY: group_norm_forward_<T>(x, weight, bias, args, y, mean, inv_std): group bg < B·G covers
        // elements bg·size .. (bg + 1)·size of x and y with size = (C/G)·plane (G divides C, checked), so all
        // accesses are below B·C·plane; weight/bias (or null) are read at channels < C; mean and inv_std are
        // written at bg < B·G, their length. One BLOCK-thread block per group.
        unsafe { lb.launch(per_item(d.b * groups)) }.map_err(Error::cuda(kernel))?;
        Ok(GroupNormOutput {
            output: tensor(y, input.shape(), dev)?,
            stats: NormStats {
                mean: tensor(mean, &[d.b, groups], dev)?,
                inv_std: tensor(inv_std, &[d.b, groups], dev)?,
            },
        })
    })
}

pub(super) fn group_norm_backward(
    dev: &CudaDevice,
    input: &Tensor,
    weight: Option<&Tensor>,
    stats: &NormStats,
    grad_output: &Tensor,
    cfg: &GroupNormConfig,
    d: &Dims,
) -> Result<NormGrads> {
    let groups = cfg.num_groups;
    by_storage!(input.dtype(), T => {
        let x = input_slice::<T>(input, "input", dev)?;
        let g = input_slice::<T>(grad_output, "grad_output", dev)?;
        let mean = input_slice::<f32>(&stats.mean, "stats.mean", dev)?;
        let inv_std = input_slice::<f32>(&stats.inv_std, "stats.inv_std", dev)?;
        let args = norm_args(d, groups, 1.0, 0.0);

        let mut dx = buffer::<T>(dev, input.numel())?;
        let kernel = format!("group_norm_backward_input_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Norm, &kernel)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(x);
        push_optional::<T>(&mut lb, weight, "weight", dev)?;
        lb.arg(mean).arg(inv_std).arg(g).arg(&args).arg(&mut dx);
        // SAFETY: group_norm_backward_input_<T>(x, weight, mean, inv_std, grad_out, args, grad_x) reads x and
        // grad_out and writes grad_x within group bg's elements bg·size .. (bg + 1)·size (bg < B·G, so below
        // B·C·plane), reads mean/inv_std at bg < B·G and weight (or nothing) at channels < C.
        unsafe { lb.launch(per_item(d.b * groups)) }.map_err(Error::cuda(kernel))?;

        let mut dw = buffer::<T>(dev, d.c)?;
        let mut db = buffer::<T>(dev, d.c)?;
        let kernel = format!("group_norm_param_grads_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Norm, &kernel)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(x).arg(mean).arg(inv_std).arg(g).arg(&args).arg(&mut dw).arg(&mut db);
        // SAFETY: group_norm_param_grads_<T>(x, mean, inv_std, grad_out, args, grad_weight, grad_bias) reads
        // x and grad_out at (b·C + c)·plane + p (below B·C·plane), mean/inv_std at b·G + c/(C/G) < B·G, and
        // writes grad_weight/grad_bias at c < C. One BLOCK-thread block per channel.
        unsafe { lb.launch(per_item(d.c)) }.map_err(Error::cuda(kernel))?;
        Ok(NormGrads {
            input: tensor(dx, input.shape(), dev)?,
            weight: tensor(dw, &[d.c], dev)?,
            bias: tensor(db, &[d.c], dev)?,
        })
    })
}
