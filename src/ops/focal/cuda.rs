//! Launch wrappers for kernels/focal.cu. Validation happened when the plan was built; this file moves the
//! small inputs (labels, scores, weights) to the device where they are on the host, and launches.

use super::{reduced_upstream, Family, Inputs, LossAndGrad, Plan, Reduction};
use crate::cuda::{
    alloc_zeros, function, grid_for, input_slice, sum_partials, Module, NULL_DEVICE_PTR,
};
use crate::error::{Error, Result};
use crate::tensor::{CudaData, CudaDevice, CudaElement, Device, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

const LOSS_NONE: i32 = 0;
const LOSS_ELEMENTS: i32 = 1;
const LOSS_REDUCE: i32 = 2;
const GRAD_NONE: i32 = 0;
const GRAD_ELEMENTS: i32 = 1;
const GRAD_DEVICE_SCALAR: i32 = 2;
const GRAD_HOST_SCALAR: i32 = 3;

/// Mirrors `struct FocalArgs` in kernels/focal.cu (same field order: three i64, three f32, three i32).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct FocalArgs {
    numel: i64,
    rows: i64,
    classes: i64,
    alpha: f32,
    gamma: f32,
    grad_scale: f32,
    loss_mode: i32,
    grad_mode: i32,
    use_alpha: i32,
}

const _: () = assert!(
    std::mem::size_of::<FocalArgs>() == 48,
    "must match the kernel's struct"
);

// SAFETY: FocalArgs is #[repr(C)], Copy, holds only i64/f32/i32 fields laid out without padding (24 + 12 +
// 12 bytes, 8-byte aligned), and matches the kernel's struct field for field, so passing its bytes by value
// is sound.
unsafe impl DeviceRepr for FocalArgs {}

/// What one launch computes.
#[derive(Clone, Copy)]
enum Job {
    Forward,
    Backward,
    Fused { grad_output: f64 },
}

fn args(plan: &Plan, loss_mode: i32, grad_mode: i32, grad_scale: f32) -> FocalArgs {
    let (alpha, gamma, use_alpha) = match plan.family {
        Family::Torchvision { alpha, gamma } => (alpha, gamma, alpha >= 0.0),
        Family::Mmcv { alpha, gamma } => (alpha, gamma, true),
        Family::Quality { beta } => (0.0, beta, false),
    };
    FocalArgs {
        numel: plan.numel() as i64,
        rows: plan.rows as i64,
        classes: plan.classes as i64,
        alpha: alpha as f32,
        gamma: gamma as f32,
        grad_scale,
        loss_mode,
        grad_mode,
        use_alpha: use_alpha as i32,
    }
}

/// A tensor already on the device, or a device copy of a host one.
enum Resident<'a> {
    Borrowed(&'a Tensor),
    Uploaded(Tensor),
}

impl Resident<'_> {
    fn tensor(&self) -> &Tensor {
        match self {
            Resident::Borrowed(t) => t,
            Resident::Uploaded(t) => t,
        }
    }
}

fn resident<'a>(t: Option<&'a Tensor>, dev: &CudaDevice) -> Result<Option<Resident<'a>>> {
    let Some(t) = t else { return Ok(None) };
    if t.device().is_cpu() {
        Ok(Some(Resident::Uploaded(
            t.to_device(&Device::Cuda(dev.clone()))?,
        )))
    } else {
        Ok(Some(Resident::Borrowed(t)))
    }
}

/// The device buffers of one call.
struct Buffers<'a, T> {
    logits: &'a CudaSlice<T>,
    targets: Option<&'a CudaSlice<T>>,
    labels: Option<&'a CudaSlice<i64>>,
    scores: Option<&'a CudaSlice<T>>,
    weight: Option<&'a CudaSlice<T>>,
}

/// Where a launch writes.
struct Outputs<'a, T> {
    loss_out: Option<&'a mut CudaSlice<T>>,
    partials: Option<&'a mut CudaSlice<f32>>,
    grad_out: Option<&'a CudaSlice<T>>,
    grad_in: Option<&'a mut CudaSlice<T>>,
}

fn push<'a, T>(lb: &mut LaunchArgs<'a>, buf: Option<&'a CudaSlice<T>>) {
    match buf {
        Some(b) => lb.arg(b),
        None => lb.arg(&NULL_DEVICE_PTR),
    };
}

fn push_mut<'a, T>(lb: &mut LaunchArgs<'a>, buf: Option<&'a mut CudaSlice<T>>) {
    match buf {
        Some(b) => lb.arg(b),
        None => lb.arg(&NULL_DEVICE_PTR),
    };
}

/// Launches the form's element-wise kernel over all `plan.numel()` elements.
fn launch_elements<T: CudaElement>(
    dev: &CudaDevice,
    plan: &Plan,
    bufs: &Buffers<'_, T>,
    a: &FocalArgs,
    out: Outputs<'_, T>,
) -> Result<()> {
    let name = match plan.family {
        Family::Torchvision { .. } => "torchvision_focal",
        Family::Mmcv { .. } => "mmcv_focal",
        Family::Quality { .. } => "quality_focal",
    };
    let kernel = format!("{name}_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Focal, &kernel)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(bufs.logits);
    match plan.family {
        Family::Torchvision { .. } => push(&mut lb, bufs.targets),
        Family::Mmcv { .. } => {
            push(&mut lb, bufs.labels);
            push(&mut lb, bufs.weight);
        }
        Family::Quality { .. } => {
            push(&mut lb, bufs.labels);
            push(&mut lb, bufs.scores);
            push(&mut lb, bufs.weight);
        }
    }
    push(&mut lb, out.grad_out);
    lb.arg(a);
    if !matches!(plan.family, Family::Quality { .. }) {
        push_mut(&mut lb, out.loss_out);
    }
    push_mut(&mut lb, out.partials);
    push_mut(&mut lb, out.grad_in);
    // SAFETY: the argument list matches <form>_focal_<T> in kernels/focal.cu. The logits (and torchvision
    // targets) hold numel elements of T, labels/scores/weight hold N (weight C for mmcv) elements; labels
    // were checked to lie in [0, C] and the kernels index weight only for labels in [0, C). The modes in
    // `a` only touch the buffers passed non-null: loss_out (numel) for LOSS_ELEMENTS, partials (one per
    // block of grid_for(numel)) for LOSS_REDUCE, grad_in (numel) and grad_out (numel, N for QFL, or 1 for
    // a device scalar) for the gradient modes.
    unsafe { lb.launch(grid_for(plan.numel())) }.map_err(Error::cuda(kernel))?;
    Ok(())
}

/// QFL's unreduced per-anchor loss: one warp per row.
fn launch_quality_rows<T: CudaElement>(
    dev: &CudaDevice,
    plan: &Plan,
    bufs: &Buffers<'_, T>,
    a: &FocalArgs,
    loss_out: &mut CudaSlice<T>,
) -> Result<()> {
    let kernel = format!("quality_focal_rows_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Focal, &kernel)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(bufs.logits);
    push(&mut lb, bufs.labels);
    push(&mut lb, bufs.scores);
    push(&mut lb, bufs.weight);
    lb.arg(a);
    lb.arg(loss_out);
    // SAFETY: arguments match quality_focal_rows_<T>: logits N*C elements, labels/scores/weight (optional)
    // N each, loss_out N. Each warp reads rows < N and columns < C only; 32 threads per row.
    unsafe { lb.launch(grid_for(plan.rows.saturating_mul(32))) }.map_err(Error::cuda(kernel))?;
    Ok(())
}

/// Per-block partials -> one f32 sum (fixed order) -> `sum / divisor` in the storage dtype, shape `[]`.
fn finish<T: CudaElement>(
    dev: &CudaDevice,
    partials: &CudaSlice<f32>,
    divisor: f64,
) -> Result<Tensor> {
    let sum = sum_partials(dev, partials)?;
    let mut out = alloc_zeros::<T>(dev, 1)?;
    let kernel = format!("focal_finish_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Focal, &kernel)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(&sum).arg(&divisor).arg(&mut out);
    let one = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: focal_finish_<T>(const float* sum, double divisor, T* out) reads sum[0] and writes out[0];
    // both buffers hold one element.
    unsafe { lb.launch(one) }.map_err(Error::cuda(kernel))?;
    Tensor::from_cuda_slice(out, &[], dev)
}

fn partials_for(dev: &CudaDevice, numel: usize) -> Result<CudaSlice<f32>> {
    alloc_zeros::<f32>(dev, grid_for(numel).grid_dim.0 as usize)
}

pub(super) fn forward(dev: &CudaDevice, plan: &Plan, inputs: &Inputs<'_>) -> Result<Tensor> {
    let (loss, _) = dispatch(dev, plan, inputs, None, Job::Forward)?;
    loss.ok_or_else(|| Error::invalid("focal", "forward produced no loss"))
}

pub(super) fn backward(
    dev: &CudaDevice,
    plan: &Plan,
    inputs: &Inputs<'_>,
    grad_out: &Tensor,
) -> Result<Tensor> {
    let (_, grad) = dispatch(dev, plan, inputs, Some(grad_out), Job::Backward)?;
    grad.ok_or_else(|| Error::invalid("focal", "backward produced no gradient"))
}

pub(super) fn fused(
    dev: &CudaDevice,
    plan: &Plan,
    inputs: &Inputs<'_>,
    grad_output: f64,
) -> Result<LossAndGrad> {
    match dispatch(dev, plan, inputs, None, Job::Fused { grad_output })? {
        (Some(loss), Some(grad)) => Ok(LossAndGrad { loss, grad }),
        _ => Err(Error::invalid("focal", "fused entry produced no result")),
    }
}

type Results = (Option<Tensor>, Option<Tensor>);

fn dispatch(
    dev: &CudaDevice,
    plan: &Plan,
    inputs: &Inputs<'_>,
    grad_out: Option<&Tensor>,
    job: Job,
) -> Result<Results> {
    match inputs.logits.cuda_storage().map(|s| &s.data) {
        Some(CudaData::F32(_)) => run::<f32>(dev, plan, inputs, grad_out, job),
        Some(CudaData::F16(_)) => run::<f16>(dev, plan, inputs, grad_out, job),
        Some(CudaData::BF16(_)) => run::<bf16>(dev, plan, inputs, grad_out, job),
        _ => Err(Error::invalid("logits", "expected a float CUDA tensor")),
    }
}

fn run<T: CudaElement>(
    dev: &CudaDevice,
    plan: &Plan,
    inputs: &Inputs<'_>,
    grad_out: Option<&Tensor>,
    job: Job,
) -> Result<Results> {
    let labels = resident(inputs.labels, dev)?;
    let scores = resident(inputs.scores, dev)?;
    let weight = resident(inputs.weight, dev)?;
    let bufs = Buffers::<T> {
        logits: input_slice::<T>(inputs.logits, "logits", dev)?,
        targets: inputs
            .targets
            .map(|t| input_slice::<T>(t, "targets", dev))
            .transpose()?,
        labels: labels
            .as_ref()
            .map(|t| input_slice::<i64>(t.tensor(), "labels", dev))
            .transpose()?,
        scores: scores
            .as_ref()
            .map(|t| input_slice::<T>(t.tensor(), "scores", dev))
            .transpose()?,
        weight: weight
            .as_ref()
            .map(|t| input_slice::<T>(t.tensor(), "weight", dev))
            .transpose()?,
    };
    let numel = plan.numel();
    let reduced = plan.reduction != Reduction::None;
    let grad_shape = plan.logits_shape.as_slice();
    match job {
        Job::Forward if !reduced => {
            let out_len: usize = plan.output_shape().iter().product();
            let mut out = alloc_zeros::<T>(dev, out_len)?;
            let a = args(plan, LOSS_ELEMENTS, GRAD_NONE, 0.0);
            if matches!(plan.family, Family::Quality { .. }) {
                launch_quality_rows(dev, plan, &bufs, &a, &mut out)?;
            } else {
                let outs = Outputs {
                    loss_out: Some(&mut out),
                    partials: None,
                    grad_out: None,
                    grad_in: None,
                };
                launch_elements(dev, plan, &bufs, &a, outs)?;
            }
            Ok((
                Some(Tensor::from_cuda_slice(out, &plan.output_shape(), dev)?),
                None,
            ))
        }
        Job::Forward => {
            let mut partials = partials_for(dev, numel)?;
            let a = args(plan, LOSS_REDUCE, GRAD_NONE, 0.0);
            let outs = Outputs {
                loss_out: None,
                partials: Some(&mut partials),
                grad_out: None,
                grad_in: None,
            };
            launch_elements(dev, plan, &bufs, &a, outs)?;
            Ok((Some(finish::<T>(dev, &partials, plan.divisor)?), None))
        }
        Job::Backward => {
            let upstream = input_slice::<T>(
                grad_out.ok_or_else(|| Error::invalid("grad_out", "missing"))?,
                "grad_out",
                dev,
            )?;
            let mut grad = alloc_zeros::<T>(dev, numel)?;
            let a = if reduced {
                args(
                    plan,
                    LOSS_NONE,
                    GRAD_DEVICE_SCALAR,
                    reduced_upstream(1.0f32, plan.divisor),
                )
            } else {
                args(plan, LOSS_NONE, GRAD_ELEMENTS, 1.0)
            };
            let outs = Outputs {
                loss_out: None,
                partials: None,
                grad_out: Some(upstream),
                grad_in: Some(&mut grad),
            };
            launch_elements(dev, plan, &bufs, &a, outs)?;
            Ok((None, Some(Tensor::from_cuda_slice(grad, grad_shape, dev)?)))
        }
        Job::Fused { grad_output } => {
            let mut partials = partials_for(dev, numel)?;
            let mut grad = alloc_zeros::<T>(dev, numel)?;
            let scale = reduced_upstream(grad_output as f32, plan.divisor);
            let a = args(plan, LOSS_REDUCE, GRAD_HOST_SCALAR, scale);
            let outs = Outputs {
                loss_out: None,
                partials: Some(&mut partials),
                grad_out: None,
                grad_in: Some(&mut grad),
            };
            launch_elements(dev, plan, &bufs, &a, outs)?;
            let loss = finish::<T>(dev, &partials, plan.divisor)?;
            Ok((
                Some(loss),
                Some(Tensor::from_cuda_slice(grad, grad_shape, dev)?),
            ))
        }
    }
}
