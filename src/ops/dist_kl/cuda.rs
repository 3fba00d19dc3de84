//! Launch wrappers for kernels/dist_kl.cu. All validation happened in the plans (mod.rs); this file picks the
//! lane mapping, moves the DFL targets to the device and launches.

use super::{Inputs, IntegralPlan, LossKind, LossPlan, Reduction};
use crate::cuda::{
    alloc_zeros, f32_into, function, grid_for, input_slice, output_slice, sum_partials, Module,
    NULL_DEVICE_PTR,
};
use crate::error::{Error, Result};
use crate::tensor::{CudaData, CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

/// Mirrors `struct RowArgs` in kernels/dist_kl.cu (same field order: one i64, then eight 4-byte fields).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RowArgs {
    rows: i64,
    bins: i32,
    group: i32,
    inv_temperature: f32,
    loss_coef: f32,
    grad_coef: f32,
    upstream_per_row: i32,
    padding: [i32; 2],
}

const _: () = assert!(
    std::mem::size_of::<RowArgs>() == 40,
    "must match the kernel's struct"
);

// SAFETY: RowArgs is #[repr(C)], Copy, holds only i64/i32/f32 fields (no pointers), has no implicit padding
// (8 + 8·4 = 40 bytes, asserted above; `padding` fills the tail) and matches the kernel's struct field for
// field.
unsafe impl DeviceRepr for RowArgs {}

/// Lanes per row: the smallest power of two giving each lane at most 4 bins, at most a warp
/// (see the mapping comment in kernels/dist_kl.cu). GFL's 17 bins get 8 lanes, 4 rows per warp.
fn lanes_per_row(bins: usize) -> usize {
    bins.div_ceil(4).next_power_of_two().clamp(1, 32)
}

/// Enough warps for one row group per row (grid-stride beyond the launch cap), `BLOCK` threads per block.
fn launch_config(rows: usize, group: usize) -> LaunchConfig {
    let rows_per_warp = 32 / group;
    grid_for(rows.div_ceil(rows_per_warp) * 32)
}

fn row_args(rows: usize, bins: usize, group: usize) -> RowArgs {
    RowArgs {
        rows: rows as i64,
        bins: bins as i32,
        group: group as i32,
        inv_temperature: 1.0,
        loss_coef: 1.0,
        grad_coef: 1.0,
        upstream_per_row: 1,
        padding: [0; 2],
    }
}

fn push_input<'a, T>(lb: &mut LaunchArgs<'a>, buf: Option<&'a CudaSlice<T>>) {
    match buf {
        Some(b) => lb.arg(b),
        None => lb.arg(&NULL_DEVICE_PTR),
    };
}

fn push_output<'a, T>(lb: &mut LaunchArgs<'a>, buf: Option<&'a mut CudaSlice<T>>) {
    match buf {
        Some(b) => lb.arg(b),
        None => lb.arg(&NULL_DEVICE_PTR),
    };
}

/// Runs the KL or DFL kernel of `plan`. `upstream` is given for a backward pass; `loss_rows` for a `none`
/// forward; `grad` for backward and fused calls. Returns the reduced loss (shape `[]`) when the plan reduces
/// and this is not a backward pass.
pub(super) fn launch_loss(
    dev: &CudaDevice,
    plan: &LossPlan,
    inputs: &Inputs<'_>,
    weight: Option<&Tensor>,
    upstream: Option<&Tensor>,
    loss_rows: Option<&mut Tensor>,
    grad: Option<&mut Tensor>,
) -> Result<Option<Tensor>> {
    match plan.dtype {
        DType::F32 => loss_typed::<f32>(dev, plan, inputs, weight, upstream, loss_rows, grad),
        DType::F16 => loss_typed::<f16>(dev, plan, inputs, weight, upstream, loss_rows, grad),
        DType::BF16 => loss_typed::<bf16>(dev, plan, inputs, weight, upstream, loss_rows, grad),
        other => Err(Error::DType {
            arg: inputs.logits().1.into(),
            expected: "f32, f16 or bf16 on a CUDA device".into(),
            got: other.to_string(),
        }),
    }
}

/// DFL targets as a device f32 buffer: borrowed when `label` already is one on `dev`, else uploaded from
/// the validated host copy.
enum LabelBuffer<'a> {
    Borrowed(&'a CudaSlice<f32>),
    Owned(CudaSlice<f32>),
}

impl LabelBuffer<'_> {
    fn slice(&self) -> &CudaSlice<f32> {
        match self {
            LabelBuffer::Borrowed(s) => s,
            LabelBuffer::Owned(s) => s,
        }
    }
}

fn label_buffer<'a>(
    dev: &CudaDevice,
    plan: &LossPlan,
    label: &'a Tensor,
) -> Result<LabelBuffer<'a>> {
    if let Some(storage) = label.cuda_storage().filter(|s| s.device == *dev) {
        if let CudaData::F32(slice) = &storage.data {
            return Ok(LabelBuffer::Borrowed(slice));
        }
    }
    let host: Vec<f32> = plan.labels.iter().map(|&y| y as f32).collect();
    let slice = dev
        .stream()
        .clone_htod(&host)
        .map_err(Error::cuda("uploading DFL targets"))?;
    Ok(LabelBuffer::Owned(slice))
}

#[allow(clippy::too_many_arguments)]
fn loss_typed<T: CudaElement>(
    dev: &CudaDevice,
    plan: &LossPlan,
    inputs: &Inputs<'_>,
    weight: Option<&Tensor>,
    upstream: Option<&Tensor>,
    loss_rows: Option<&mut Tensor>,
    grad: Option<&mut Tensor>,
) -> Result<Option<Tensor>> {
    let group = lanes_per_row(plan.bins);
    let cfg = launch_config(plan.rows, group);
    let mut args = row_args(plan.rows, plan.bins, group);
    args.loss_coef = plan.loss_coef as f32;
    args.grad_coef = plan.grad_coef as f32;
    args.upstream_per_row = i32::from(plan.reduction == Reduction::None);
    if let LossKind::Kl { temperature } = plan.kind {
        args.inv_temperature = (1.0 / temperature) as f32;
    }
    let want_total = plan.reduction != Reduction::None && upstream.is_none();

    let weight = weight
        .map(|w| input_slice::<T>(w, "weight", dev))
        .transpose()?;
    let upstream = upstream
        .map(|u| input_slice::<T>(u, "grad_out", dev))
        .transpose()?;
    let mut partials = if want_total {
        Some(alloc_zeros::<f32>(dev, cfg.grid_dim.0 as usize)?)
    } else {
        None
    };
    let loss_rows = loss_rows
        .map(|t| output_slice::<T>(t, "loss", dev))
        .transpose()?;
    let grad = grad
        .map(|t| output_slice::<T>(t, "grad", dev))
        .transpose()?;

    let (kernel, first, second, labels);
    match inputs {
        Inputs::Kl { student, teacher } => {
            kernel = format!("kd_kl_{}", T::KERNEL_SUFFIX);
            first = input_slice::<T>(student, "student", dev)?;
            second = Some(input_slice::<T>(teacher, "teacher", dev)?);
            labels = None;
        }
        Inputs::Dfl { pred, label } => {
            kernel = format!("dfl_{}", T::KERNEL_SUFFIX);
            first = input_slice::<T>(pred, "pred", dev)?;
            second = None;
            labels = Some(label_buffer(dev, plan, label)?);
        }
    }
    let func = function(dev, Module::DistKl, &kernel)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(first);
    match (&second, &labels) {
        (Some(teacher), _) => lb.arg(*teacher),
        (None, Some(labels)) => lb.arg(labels.slice()),
        (None, None) => return Err(Error::invalid("inputs", "missing teacher or targets")),
    };
    push_input(&mut lb, weight);
    push_input(&mut lb, upstream);
    lb.arg(&args);
    push_output(&mut lb, loss_rows);
    push_output(&mut lb, partials.as_mut());
    push_output(&mut lb, grad);
    // SAFETY: the argument list matches kd_kl_<T> (student, teacher, weight, upstream, args, loss_rows,
    // partials, grad) resp. dfl_<T> (pred, f32 targets, ...). The plan checked every shape: the logits
    // (and teacher, gradient) hold R*B elements of T, targets / weights / per-row outputs R, a scalar
    // upstream at least 1, partials one f32 per block of `cfg`; targets lie in [0, B - 1). The kernel
    // reads and writes only rows < R, bins < B, and partials[blockIdx.x].
    unsafe { lb.launch(cfg) }.map_err(Error::cuda(kernel))?;

    match partials {
        Some(partials) => {
            let total = sum_partials(dev, &partials)?;
            Ok(Some(Tensor::from_cuda_slice(
                f32_into::<T>(dev, total)?,
                &[],
                dev,
            )?))
        }
        None => Ok(None),
    }
}

/// Runs the Integral kernel: forward into `out` (`upstream` None) or backward into `grad`.
pub(super) fn launch_integral(
    dev: &CudaDevice,
    plan: &IntegralPlan,
    logits: &Tensor,
    upstream: Option<&Tensor>,
    out: Option<&mut Tensor>,
    grad: Option<&mut Tensor>,
) -> Result<()> {
    match plan.dtype {
        DType::F32 => integral_typed::<f32>(dev, plan, logits, upstream, out, grad),
        DType::F16 => integral_typed::<f16>(dev, plan, logits, upstream, out, grad),
        DType::BF16 => integral_typed::<bf16>(dev, plan, logits, upstream, out, grad),
        other => Err(Error::DType {
            arg: "logits".into(),
            expected: "f32, f16 or bf16 on a CUDA device".into(),
            got: other.to_string(),
        }),
    }
}

fn integral_typed<T: CudaElement>(
    dev: &CudaDevice,
    plan: &IntegralPlan,
    logits: &Tensor,
    upstream: Option<&Tensor>,
    out: Option<&mut Tensor>,
    grad: Option<&mut Tensor>,
) -> Result<()> {
    let group = lanes_per_row(plan.bins);
    let cfg = launch_config(plan.rows, group);
    let args = row_args(plan.rows, plan.bins, group);
    let z = input_slice::<T>(logits, "logits", dev)?;
    let upstream = upstream
        .map(|u| input_slice::<T>(u, "grad_out", dev))
        .transpose()?;
    let out = out.map(|t| output_slice::<T>(t, "out", dev)).transpose()?;
    let grad = grad
        .map(|t| output_slice::<T>(t, "grad", dev))
        .transpose()?;
    let kernel = format!("integral_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::DistKl, &kernel)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(z);
    push_input(&mut lb, upstream);
    lb.arg(&args);
    push_output(&mut lb, out);
    push_output(&mut lb, grad);
    // SAFETY: the argument list matches integral_<T> (logits, upstream, args, out, grad); the plan checked
    // that logits and grad hold R*B elements and upstream / out R; the kernel touches rows < R only.
    unsafe { lb.launch(cfg) }.map_err(Error::cuda(kernel))?;
    Ok(())
}
