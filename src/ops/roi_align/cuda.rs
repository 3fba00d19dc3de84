//! Launch wrappers for kernels/roi_align.cu. All validation happened in [`Plan::new`]; this file only moves
//! the plan to the device and launches.

use super::{Plan, MAX_LEVELS};
use crate::cuda::{
    alloc_zeros, f32_into, function, grid_for, input_slice, output_slice, Module, NULL_DEVICE_PTR,
};
use crate::error::{Error, Result};
use crate::tensor::{CudaData, CudaDevice, CudaElement, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchArgs, PushKernelArg};
use half::{bf16, f16};

/// Mirrors `struct RoiAlignArgs` in kernels/roi_align.cu (same field order; all 4-byte fields).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RoiAlignArgs {
    height: [i32; MAX_LEVELS],
    width: [i32; MAX_LEVELS],
    spatial_scale: [f32; MAX_LEVELS],
    num_levels: i32,
    num_rois: i32,
    channels: i32,
    pooled_h: i32,
    pooled_w: i32,
    sampling_ratio: i32,
    aligned: i32,
}

const _: () = assert!(
    std::mem::size_of::<RoiAlignArgs>() == 88,
    "must match the kernel's struct"
);

// SAFETY: RoiAlignArgs is #[repr(C)], Copy, holds only i32/f32 arrays and fields (no pointers, no padding),
// and its layout matches the kernel's struct field for field, so passing its bytes by value is sound.
unsafe impl DeviceRepr for RoiAlignArgs {}

/// The plan on the device: the kernel arguments, the RoIs as f32 and (multi-level only) the level indices.
struct DevicePlan {
    args: RoiAlignArgs,
    rois: CudaSlice<f32>,
    roi_levels: Option<CudaSlice<i32>>,
}

fn upload_plan(dev: &CudaDevice, plan: &Plan) -> Result<DevicePlan> {
    let mut args = RoiAlignArgs {
        height: [0; MAX_LEVELS],
        width: [0; MAX_LEVELS],
        spatial_scale: [0.0; MAX_LEVELS],
        num_levels: plan.maps.len() as i32,
        num_rois: plan.num_rois() as i32,
        channels: plan.channels as i32,
        pooled_h: plan.pooled.0 as i32,
        pooled_w: plan.pooled.1 as i32,
        sampling_ratio: plan.sampling_ratio,
        aligned: plan.aligned as i32,
    };
    for (l, &(h, w)) in plan.maps.iter().enumerate() {
        args.height[l] = h as i32;
        args.width[l] = w as i32;
        args.spatial_scale[l] = plan.scales[l] as f32;
    }
    let stream = dev.stream();
    let rois_f32: Vec<f32> = plan.rois.iter().map(|&v| v as f32).collect();
    let rois = stream
        .clone_htod(&rois_f32)
        .map_err(Error::cuda("uploading rois"))?;
    let roi_levels = if plan.maps.len() > 1 {
        let levels: Vec<i32> = plan.roi_levels.iter().map(|&l| l as i32).collect();
        Some(
            stream
                .clone_htod(&levels)
                .map_err(Error::cuda("uploading roi levels"))?,
        )
    } else {
        None
    };
    Ok(DevicePlan {
        args,
        rois,
        roi_levels,
    })
}

fn push_optional<'a, T>(lb: &mut LaunchArgs<'a>, buf: Option<&'a CudaSlice<T>>) {
    match buf {
        Some(b) => lb.arg(b),
        None => lb.arg(&NULL_DEVICE_PTR),
    };
}

pub(super) fn forward(
    dev: &CudaDevice,
    plan: &Plan,
    features: &[&Tensor],
    out: &mut Tensor,
) -> Result<()> {
    match out.cuda_storage().map(|s| &s.data) {
        Some(CudaData::F32(_)) => forward_typed::<f32>(dev, plan, features, out),
        Some(CudaData::F16(_)) => forward_typed::<f16>(dev, plan, features, out),
        Some(CudaData::BF16(_)) => forward_typed::<bf16>(dev, plan, features, out),
        _ => Err(Error::invalid("out", "expected a float CUDA tensor")),
    }
}

fn forward_typed<T: CudaElement>(
    dev: &CudaDevice,
    plan: &Plan,
    features: &[&Tensor],
    out: &mut Tensor,
) -> Result<()> {
    let device_plan = upload_plan(dev, plan)?;
    let levels: Vec<&CudaSlice<T>> = features
        .iter()
        .enumerate()
        .map(|(l, f)| input_slice::<T>(f, &format!("features[{l}]"), dev))
        .collect::<Result<_>>()?;
    let kernel = format!("roi_align_forward_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::RoiAlign, &kernel)?;
    let out_slice = output_slice::<T>(out, "out", dev)?;
    let total = plan.output_shape().iter().product::<usize>();
    let mut lb = dev.stream().launch_builder(&func);
    for l in 0..MAX_LEVELS {
        push_optional(&mut lb, levels.get(l).copied());
    }
    lb.arg(&device_plan.rois);
    push_optional(&mut lb, device_plan.roi_levels.as_ref());
    lb.arg(&device_plan.args);
    lb.arg(out_slice);
    // SAFETY: the argument list matches roi_align_forward_<T> (5 level pointers, rois, levels, args, out).
    // Plan::new checked every batch index, the level table covers every index in roi_levels, each level
    // buffer holds N*C*H*W elements of T and `out` holds K*C*PH*PW, so every access is in bounds.
    unsafe { lb.launch(grid_for(total)) }.map_err(Error::cuda(kernel))?;
    Ok(())
}

pub(super) fn backward(dev: &CudaDevice, plan: &Plan, grad_out: &Tensor) -> Result<Vec<Tensor>> {
    match grad_out.cuda_storage().map(|s| &s.data) {
        Some(CudaData::F32(_)) => backward_typed::<f32>(dev, plan, grad_out),
        Some(CudaData::F16(_)) => backward_typed::<f16>(dev, plan, grad_out),
        Some(CudaData::BF16(_)) => backward_typed::<bf16>(dev, plan, grad_out),
        _ => Err(Error::invalid("grad_out", "expected a float CUDA tensor")),
    }
}

fn backward_typed<T: CudaElement>(
    dev: &CudaDevice,
    plan: &Plan,
    grad_out: &Tensor,
) -> Result<Vec<Tensor>> {
    let device_plan = upload_plan(dev, plan)?;
    let grad = input_slice::<T>(grad_out, "grad_out", dev)?;
    let level_len = |l: usize| plan.batch * plan.channels * plan.maps[l].0 * plan.maps[l].1;
    let total = plan.output_shape().iter().product::<usize>();

    let grads: Vec<CudaSlice<T>> = if plan.deterministic {
        // 1. max|grad_out| sets the fixed-point scale; 2. scatter as 64-bit integers; 3. convert.
        let mut abs_max_bits = alloc_zeros::<u32>(dev, 1)?;
        launch_reduce(
            dev,
            "abs_max",
            T::KERNEL_SUFFIX,
            grad,
            total,
            &mut abs_max_bits,
        )?;
        let max_terms = total as f64;
        let mut acc: Vec<CudaSlice<u64>> = (0..plan.maps.len())
            .map(|l| alloc_zeros::<u64>(dev, level_len(l)))
            .collect::<Result<_>>()?;
        let kernel = format!("roi_align_backward_fixed_{}", T::KERNEL_SUFFIX);
        launch_scatter(
            dev,
            &device_plan,
            grad,
            total,
            &kernel,
            Some((&abs_max_bits, &max_terms)),
            &mut acc,
        )?;
        acc.iter()
            .enumerate()
            .map(|(l, a)| fixed_point_to::<T>(dev, a, level_len(l), &abs_max_bits, max_terms))
            .collect::<Result<_>>()?
    } else {
        let mut acc: Vec<CudaSlice<f32>> = (0..plan.maps.len())
            .map(|l| alloc_zeros::<f32>(dev, level_len(l)))
            .collect::<Result<_>>()?;
        let kernel = format!("roi_align_backward_atomic_{}", T::KERNEL_SUFFIX);
        launch_scatter(dev, &device_plan, grad, total, &kernel, None, &mut acc)?;
        acc.into_iter()
            .map(|a| f32_into::<T>(dev, a))
            .collect::<Result<_>>()?
    };
    grads
        .into_iter()
        .enumerate()
        .map(|(l, g)| Tensor::from_cuda_slice(g, &plan.level_shape(l), dev))
        .collect()
}

/// Launches a backward scatter kernel, `(grad_out, rois, roi_levels, args, [abs_max_bits, max_terms,]
/// g0..g4)`: one accumulator per level, null pointers for the levels that do not exist.
fn launch_scatter<T: CudaElement, A>(
    dev: &CudaDevice,
    device_plan: &DevicePlan,
    grad: &CudaSlice<T>,
    total: usize,
    kernel: &str,
    fixed_point: Option<(&CudaSlice<u32>, &f64)>,
    acc: &mut [CudaSlice<A>],
) -> Result<()> {
    let func = function(dev, Module::RoiAlign, kernel)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(grad);
    lb.arg(&device_plan.rois);
    push_optional(&mut lb, device_plan.roi_levels.as_ref());
    lb.arg(&device_plan.args);
    if let Some((abs_max_bits, max_terms)) = fixed_point {
        lb.arg(abs_max_bits).arg(max_terms);
    }
    let levels = acc.len();
    for a in acc.iter_mut() {
        lb.arg(a);
    }
    for _ in levels..MAX_LEVELS {
        lb.arg(&NULL_DEVICE_PTR);
    }
    // SAFETY: the arguments match roi_align_backward_{atomic,fixed}_<T> (fixed_point is Some exactly for the
    // fixed kernels); each accumulator holds N*C*H*W elements of its level (f32 or u64 as the kernel
    // expects), grad_out K*C*PH*PW elements; batch and level indices were validated by Plan::new.
    unsafe { lb.launch(grid_for(total)) }.map_err(Error::cuda(kernel))?;
    Ok(())
}

/// Runs `<name>_<suffix>(x, n, out)` from kernels/accumulate.cu.
fn launch_reduce<T: CudaElement>(
    dev: &CudaDevice,
    name: &str,
    suffix: &str,
    x: &CudaSlice<T>,
    n: usize,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    let kernel = format!("{name}_{suffix}");
    let func = function(dev, Module::Accumulate, &kernel)?;
    let n_i64 = n as i64;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(x).arg(&n_i64).arg(out);
    // SAFETY: abs_max_<T>(const T* x, int64_t n, unsigned* out) reads n elements of x (its length) and
    // writes one u32.
    unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
    Ok(())
}

/// Fixed-point accumulator -> storage dtype (NaN everywhere if grad_out held a non-finite value).
fn fixed_point_to<T: CudaElement>(
    dev: &CudaDevice,
    acc: &CudaSlice<u64>,
    n: usize,
    abs_max_bits: &CudaSlice<u32>,
    max_terms: f64,
) -> Result<CudaSlice<T>> {
    let mut out = alloc_zeros::<T>(dev, n)?;
    if n == 0 {
        return Ok(out);
    }
    let kernel = format!("fixed_point_to_{}", T::KERNEL_SUFFIX);
    let func = function(dev, Module::Accumulate, &kernel)?;
    let n_i64 = n as i64;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(acc)
        .arg(&n_i64)
        .arg(abs_max_bits)
        .arg(&max_terms)
        .arg(&mut out);
    // SAFETY: fixed_point_to_<T> reads n u64 of acc and one u32, writes n elements of out (all length n).
    unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
    Ok(out)
}
