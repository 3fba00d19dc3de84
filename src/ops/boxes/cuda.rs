//! Launch wrappers for kernels/boxes.cu. Validation happened when the plans were built (mod.rs: shapes,
//! dtypes, devices, finite targets, parameters); this file picks the kernel instance and launches it.

use super::{GiouPlan, OverlapPlan, Reduction, TransformPlan};
use crate::cuda::{
    alloc_zeros, f32_into, function, grid_for, input_slice, output_slice, sum_partials, Module,
    NULL_DEVICE_PTR,
};
use crate::error::{Error, Result};
use crate::tensor::{CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

const LOSS_NONE: i32 = 0;
const LOSS_ELEMENTS: i32 = 1;
const LOSS_REDUCE: i32 = 2;
const GRAD_NONE: i32 = 0;
const GRAD_ELEMENTS: i32 = 1;
const GRAD_DEVICE_SCALAR: i32 = 2;
const GRAD_HOST_SCALAR: i32 = 3;

/// Output tile of the pairwise kernel (`TILE` in kernels/boxes.cu) and its block shape `TILE × BLOCK_ROWS`.
const TILE: usize = 32;
const BLOCK_ROWS: u32 = 8;

/// Grid dimensions beyond this are covered by the kernels' tile loops (65 535 is the y-dimension limit).
const MAX_GRID: usize = 65_535;

/// Mirrors `struct BoxArgs` in kernels/boxes.cu (same field order: two i64, five f32, five i32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct BoxArgs {
    rows: i64,
    cols: i64,
    eps: f32,
    loss_coef: f32,
    grad_coef: f32,
    bound_y: f32,
    bound_x: f32,
    kind: i32,
    first_area: i32,
    loss_mode: i32,
    grad_mode: i32,
    has_bound: i32,
}

const _: () = assert!(
    std::mem::size_of::<BoxArgs>() == 56,
    "must match the kernel's struct"
);

// SAFETY: BoxArgs is #[repr(C)], Copy, holds only i64/f32/i32 fields (no pointers) laid out without
// padding (16 + 20 + 20 = 56 bytes, 8-byte aligned, asserted above) and matches the kernel's struct field
// for field, so passing its bytes by value is sound.
unsafe impl DeviceRepr for BoxArgs {}

fn unsupported(dtype: DType) -> Error {
    Error::DType {
        arg: "boxes".into(),
        expected: "f32, f16 or bf16 on a CUDA device".into(),
        got: dtype.to_string(),
    }
}

/// Calls `$f::<T>(args)` with `T` the storage type `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($a:expr),* $(,)?)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($a),*),
            DType::F16 => $f::<f16>($($a),*),
            DType::BF16 => $f::<bf16>($($a),*),
            other => Err(unsupported(other)),
        }
    };
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

fn transform_args(plan: &TransformPlan) -> BoxArgs {
    let (bound_y, bound_x) = plan.bound.unwrap_or((0.0, 0.0));
    BoxArgs {
        rows: plan.rows as i64,
        bound_y: bound_y as f32,
        bound_x: bound_x as f32,
        has_bound: i32::from(plan.bound.is_some()),
        ..BoxArgs::default()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Transforms

pub(super) fn distance2bbox(
    dev: &CudaDevice,
    plan: &TransformPlan,
    points: &Tensor,
    distances: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    by_dtype!(
        plan.dtype,
        transform_typed(dev, plan, "distance2bbox", points, distances, None, out)
    )
}

pub(super) fn distance2bbox_backward(
    dev: &CudaDevice,
    plan: &TransformPlan,
    points: &Tensor,
    distances: &Tensor,
    grad_out: &Tensor,
    grad: &mut Tensor,
) -> Result<()> {
    by_dtype!(
        plan.dtype,
        transform_typed(
            dev,
            plan,
            "distance2bbox_backward",
            points,
            distances,
            Some(grad_out),
            grad
        )
    )
}

pub(super) fn bbox2distance(
    dev: &CudaDevice,
    plan: &TransformPlan,
    points: &Tensor,
    boxes: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    by_dtype!(
        plan.dtype,
        transform_typed(dev, plan, "bbox2distance", points, boxes, None, out)
    )
}

/// One thread per row: `<name>_<T>(points, rows4, [grad_out,] args, out)`.
fn transform_typed<T: CudaElement>(
    dev: &CudaDevice,
    plan: &TransformPlan,
    name: &str,
    points: &Tensor,
    rows4: &Tensor,
    grad_out: Option<&Tensor>,
    out: &mut Tensor,
) -> Result<()> {
    let args = transform_args(plan);
    let p = input_slice::<T>(points, "points", dev)?;
    let r = input_slice::<T>(rows4, "boxes", dev)?;
    let g = grad_out
        .map(|g| input_slice::<T>(g, "grad_out", dev))
        .transpose()?;
    let o = output_slice::<T>(out, "out", dev)?;
    let kernel = format!("{name}_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Boxes, &kernel)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(p).arg(r);
    if let Some(g) = g {
        lb.arg(g);
    }
    lb.arg(&args).arg(o);
    // SAFETY: the argument list matches distance2bbox_<T>(points, distances, args, out),
    // distance2bbox_backward_<T>(points, distances, grad_out, args, grad) resp.
    // bbox2distance_<T>(points, boxes, args, out). The plan checked that points hold 2·N elements of T and
    // the row tensors, grad_out and out 4·N; each thread touches rows i < N only.
    unsafe { lb.launch(grid_for(plan.rows)) }.map_err(Error::cuda(kernel))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Overlaps

pub(super) fn overlaps(
    dev: &CudaDevice,
    plan: &OverlapPlan,
    a: &Tensor,
    b: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    by_dtype!(plan.dtype, overlaps_typed(dev, plan, a, b, out))
}

/// The pairwise kernel's launch: one `TILE × TILE` output tile per block (tile loops cover the rest).
fn tiled_launch(rows: usize, cols: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            cols.div_ceil(TILE).clamp(1, MAX_GRID) as u32,
            rows.div_ceil(TILE).clamp(1, MAX_GRID) as u32,
            1,
        ),
        block_dim: (TILE as u32, BLOCK_ROWS, 1),
        shared_mem_bytes: 0,
    }
}

fn overlaps_typed<T: CudaElement>(
    dev: &CudaDevice,
    plan: &OverlapPlan,
    a: &Tensor,
    b: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    let args = BoxArgs {
        rows: plan.rows as i64,
        cols: plan.cols.unwrap_or(0) as i64,
        eps: plan.eps as f32,
        kind: plan.kind.code(),
        first_area: i32::from(plan.first_area),
        ..BoxArgs::default()
    };
    let (name, cfg) = match plan.cols {
        None => ("overlaps_aligned", grid_for(plan.rows)),
        Some(cols) => ("box_overlaps", tiled_launch(plan.rows, cols)),
    };
    let sa = input_slice::<T>(a, "a", dev)?;
    let sb = input_slice::<T>(b, "b", dev)?;
    let o = output_slice::<T>(out, "out", dev)?;
    let kernel = format!("{name}_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Boxes, &kernel)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(sa).arg(sb).arg(&args).arg(o);
    // SAFETY: the argument list matches overlaps_aligned_<T>(a, b, args, out) and box_overlaps_<T>(a, b,
    // args, out). The plan checked a = 4·N elements, b = 4·N (aligned) or 4·M, out = N resp. N·M; the
    // aligned kernel touches rows < N, the tiled one (blockDim = TILE × BLOCK_ROWS, as it expects) loads
    // rows < N / columns < M only and writes out[r·M + c] for r < N, c < M.
    unsafe { lb.launch(cfg) }.map_err(Error::cuda(kernel))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// GIoU loss

/// What one GIoU launch computes and where it writes.
pub(super) enum GiouJob<'a> {
    /// `none`: per-row losses into `loss_rows`; reduced: the returned scalar (`loss_rows` untouched).
    Forward { loss_rows: &'a mut Tensor },
    Backward {
        grad_out: &'a Tensor,
        grad: &'a mut Tensor,
    },
    Fused {
        grad_scale: f64,
        grad: &'a mut Tensor,
    },
}

/// Runs the GIoU kernel; returns the reduced loss (shape `[]`) for a reduced forward or a fused call.
pub(super) fn giou_loss(
    dev: &CudaDevice,
    plan: &GiouPlan,
    pred: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    job: GiouJob<'_>,
) -> Result<Option<Tensor>> {
    by_dtype!(plan.dtype, giou_typed(dev, plan, pred, target, weight, job))
}

fn giou_typed<T: CudaElement>(
    dev: &CudaDevice,
    plan: &GiouPlan,
    pred: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    job: GiouJob<'_>,
) -> Result<Option<Tensor>> {
    let reduced = plan.reduction != Reduction::None;
    let cfg = grid_for(plan.rows);
    let mut args = BoxArgs {
        rows: plan.rows as i64,
        eps: plan.eps as f32,
        loss_coef: plan.loss_coef as f32,
        grad_coef: plan.loss_coef as f32,
        loss_mode: LOSS_NONE,
        grad_mode: GRAD_NONE,
        ..BoxArgs::default()
    };
    let sp = input_slice::<T>(pred, "pred", dev)?;
    let st = input_slice::<T>(target, "target", dev)?;
    let sw = weight
        .map(|w| input_slice::<T>(w, "weight", dev))
        .transpose()?;
    let mut partials = None;
    let (upstream, loss_rows, grad) = match job {
        GiouJob::Forward { loss_rows } => {
            if reduced {
                args.loss_mode = LOSS_REDUCE;
                partials = Some(alloc_zeros::<f32>(dev, cfg.grid_dim.0 as usize)?);
                (None, None, None)
            } else {
                args.loss_mode = LOSS_ELEMENTS;
                (None, Some(output_slice::<T>(loss_rows, "out", dev)?), None)
            }
        }
        GiouJob::Backward { grad_out, grad } => {
            args.grad_mode = if reduced {
                GRAD_DEVICE_SCALAR
            } else {
                GRAD_ELEMENTS
            };
            (
                Some(input_slice::<T>(grad_out, "grad_out", dev)?),
                None,
                Some(output_slice::<T>(grad, "grad", dev)?),
            )
        }
        GiouJob::Fused { grad_scale, grad } => {
            args.loss_mode = LOSS_REDUCE;
            args.grad_mode = GRAD_HOST_SCALAR;
            // Rounded as the CPU rounds it: loss_coef and grad_scale each to f32, then their product.
            args.grad_coef = plan.loss_coef as f32 * grad_scale as f32;
            partials = Some(alloc_zeros::<f32>(dev, cfg.grid_dim.0 as usize)?);
            (None, None, Some(output_slice::<T>(grad, "grad", dev)?))
        }
    };
    let kernel = format!("giou_loss_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Boxes, &kernel)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(sp).arg(st);
    push(&mut lb, sw);
    push(&mut lb, upstream);
    lb.arg(&args);
    push_mut(&mut lb, loss_rows);
    push_mut(&mut lb, partials.as_mut());
    push_mut(&mut lb, grad);
    // SAFETY: the argument list matches giou_loss_<T>(pred, target, weight, grad_out, args, loss_out,
    // partials, grad). The plan checked pred/target/grad = 4·N elements of T, weight and a per-row
    // grad_out / loss_out N, a scalar grad_out at least 1; partials hold one f32 per block of `cfg`. The
    // modes in `args` only touch the buffers passed non-null (weight is read only when non-null), and
    // every thread stays at rows < N.
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
