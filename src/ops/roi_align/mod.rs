//! RoIAlign (Mask R-CNN) with torchvision-exact semantics, single-level and multi-level (FPN), forward and
//! backward, on the CPU and on CUDA.
//!
//! For every RoI `k = (b, x1, y1, x2, y2)` (image coordinates) and output bin `(ph, pw)`:
//! `off = aligned ? 0.5 : 0`, `x0 = x1·s − off`, `w = x2·s − off − x0` (same for y; clamped to ≥ 1 only when
//! `!aligned`), bins of `w/PW × h/PH`, a `gh × gw` sample grid per bin (`sampling_ratio` if > 0, else
//! `ceil(h/PH) × ceil(w/PW)`), each sample bilinearly interpolated (0 outside `[-1, H] × [-1, W]`), and the bin
//! value is the sum over samples divided by `max(gh·gw, 1)`. See shared/spec/kernels.md B1.
//!
//! Differentiable input: `features` only (RoIAlign has no gradient with respect to the boxes). The backward
//! scatters `grad_out · w / count` to the four taps of every sample. On the CPU it is deterministic; on CUDA
//! it uses f32 atomics, or 64-bit fixed-point atomics when [`RoiAlignConfig::deterministic`] is set, whose
//! result is bitwise identical from run to run.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Real, Tensor};

/// The most FPN levels one multi-level call can pool from (P2–P6).
pub const MAX_LEVELS: usize = 5;

/// Box coordinates (times the spatial scale) beyond this magnitude are rejected: f32 can no longer place
/// samples between pixels there, and the adaptive sampling grid would be astronomically large.
const MAX_SCALED_COORDINATE: f64 = (1u64 << 24) as f64;

/// RoIAlign settings shared by the single- and multi-level entries.
#[derive(Clone, Debug, PartialEq)]
pub struct RoiAlignConfig {
    /// `(PH, PW)`, both > 0.
    pub output_size: (usize, usize),
    /// Samples per bin along each axis if > 0; adaptive (`ceil(bin size)`) if ≤ 0.
    pub sampling_ratio: i32,
    /// Half-pixel-correct boxes (detectron2's ROIAlignV2, mmcv's default). `false` is the legacy behaviour.
    pub aligned: bool,
    /// CUDA backward only: accumulate in 64-bit fixed point so the gradient is bitwise reproducible.
    /// The CPU path is always deterministic.
    pub deterministic: bool,
}

impl Default for RoiAlignConfig {
    /// The distillation papers' setting (Dsig, GKD): 7×7, adaptive sampling, aligned.
    fn default() -> Self {
        RoiAlignConfig {
            output_size: (7, 7),
            sampling_ratio: 0,
            aligned: true,
            deterministic: false,
        }
    }
}

impl RoiAlignConfig {
    /// torchvision's `roi_align` defaults for an output size: adaptive sampling, `aligned = false`.
    pub fn torchvision(output_size: (usize, usize)) -> Self {
        RoiAlignConfig {
            output_size,
            sampling_ratio: -1,
            aligned: false,
            deterministic: false,
        }
    }
}

/// How a multi-level RoIAlign maps each box to one FPN level (spec/methods.md §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelRule {
    /// detectron2: `clamp(⌊4 + log2(√(wh)/224 + 1e-8)⌋, k_min, k_max) − k_min`, where `k_min = log2(1/s_0)`
    /// of the finest level's scale.
    Detectron2,
    /// mmdet: `clamp(⌊log2(√(wh)/56 + 1e-6)⌋, 0, L − 1)`.
    Mmdet,
}

impl LevelRule {
    /// `detectron2` or `mmdet`, as in configs and parity files.
    pub fn name(self) -> &'static str {
        match self {
            LevelRule::Detectron2 => "detectron2",
            LevelRule::Mmdet => "mmdet",
        }
    }

    /// Parses the names printed by [`LevelRule::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "detectron2" => Some(LevelRule::Detectron2),
            "mmdet" => Some(LevelRule::Mmdet),
            _ => None,
        }
    }

    /// The level index (0 = finest) of a box `(x1, y1, x2, y2)`. Boxes with negative area count as area 0.
    /// Computed in f64 on the host for both devices, so CPU and CUDA always agree on the assignment.
    pub fn level_of(self, box_xyxy: [f64; 4], spatial_scales: &[f64]) -> usize {
        let [x1, y1, x2, y2] = box_xyxy;
        let size = ((x2 - x1) * (y2 - y1)).max(0.0).sqrt();
        let last = spatial_scales.len().saturating_sub(1) as f64;
        let level = match self {
            LevelRule::Detectron2 => {
                let min_level = (-spatial_scales[0].log2()).round();
                (4.0 + (size / 224.0 + 1e-8).log2()).floor() - min_level
            }
            LevelRule::Mmdet => (size / 56.0 + 1e-6).log2().floor(),
        };
        level.clamp(0.0, last) as usize
    }
}

/// The FPN levels of a multi-level RoIAlign: one spatial scale per feature map (finest first) and the rule.
#[derive(Clone, Debug, PartialEq)]
pub struct FpnLevels {
    /// `1 / stride` of each feature map, finest first (e.g. `[1/4, 1/8, 1/16, 1/32]` for P2–P5).
    pub spatial_scales: Vec<f64>,
    /// How a RoI's size picks its level.
    pub rule: LevelRule,
}

impl FpnLevels {
    /// P2–P5 (strides 4…32) with the given rule.
    pub fn p2_p5(rule: LevelRule) -> Self {
        FpnLevels {
            spatial_scales: vec![0.25, 0.125, 0.0625, 0.03125],
            rule,
        }
    }
}

/// RoIAlign of `features` `[N, C, H, W]` at `rois` `[K, 5]` = `(batch, x1, y1, x2, y2)`; returns `[K, C, PH, PW]`
/// in the dtype and on the device of `features`. `rois` may be any float dtype, on the host or the same device.
pub fn roi_align(
    features: &Tensor,
    rois: &Tensor,
    spatial_scale: f64,
    cfg: &RoiAlignConfig,
) -> Result<Tensor> {
    let plan = Plan::new(&[features.shape()], rois, &[spatial_scale], None, cfg)?;
    run_forward(&plan, &[features])
}

/// [`roi_align`] writing into a caller-provided `[K, C, PH, PW]` tensor of the features' dtype and device.
pub fn roi_align_into(
    features: &Tensor,
    rois: &Tensor,
    spatial_scale: f64,
    cfg: &RoiAlignConfig,
    out: &mut Tensor,
) -> Result<()> {
    let plan = Plan::new(&[features.shape()], rois, &[spatial_scale], None, cfg)?;
    run_forward_into(&plan, &[features], out)
}

/// Gradient of [`roi_align`] with respect to `features` (shape `features_shape`), given `grad_out`
/// `[K, C, PH, PW]`. The result has `grad_out`'s dtype and device.
pub fn roi_align_backward(
    grad_out: &Tensor,
    rois: &Tensor,
    features_shape: &[usize],
    spatial_scale: f64,
    cfg: &RoiAlignConfig,
) -> Result<Tensor> {
    let plan = Plan::new(&[features_shape], rois, &[spatial_scale], None, cfg)?;
    Ok(run_backward(&plan, grad_out)?.remove(0))
}

/// Multi-level RoIAlign: maps every RoI to one of `features` (FPN levels, finest first, each `[N, C, H_l, W_l]`)
/// with `levels.rule` and pools all RoIs in one pass. Returns `[K, C, PH, PW]` in RoI order.
pub fn roi_align_multilevel(
    features: &[&Tensor],
    rois: &Tensor,
    levels: &FpnLevels,
    cfg: &RoiAlignConfig,
) -> Result<Tensor> {
    let plan = Plan::multilevel(features, rois, levels, cfg)?;
    run_forward(&plan, features)
}

/// [`roi_align_multilevel`] writing into a caller-provided `[K, C, PH, PW]` tensor.
pub fn roi_align_multilevel_into(
    features: &[&Tensor],
    rois: &Tensor,
    levels: &FpnLevels,
    cfg: &RoiAlignConfig,
    out: &mut Tensor,
) -> Result<()> {
    let plan = Plan::multilevel(features, rois, levels, cfg)?;
    run_forward_into(&plan, features, out)
}

/// Gradients of [`roi_align_multilevel`] with respect to every level, given the levels' shapes.
pub fn roi_align_multilevel_backward(
    grad_out: &Tensor,
    rois: &Tensor,
    level_shapes: &[&[usize]],
    levels: &FpnLevels,
    cfg: &RoiAlignConfig,
) -> Result<Vec<Tensor>> {
    let plan = Plan::new(
        level_shapes,
        rois,
        &levels.spatial_scales,
        Some(levels.rule),
        cfg,
    )?;
    run_backward(&plan, grad_out)
}

/// The level index (0 = finest) every RoI is pooled from, after validating `rois` like the forward does.
pub fn assign_levels(rois: &Tensor, levels: &FpnLevels) -> Result<Vec<usize>> {
    validate_scales(&levels.spatial_scales)?;
    let host = host_rois(rois)?;
    check_rois(&host, usize::MAX, &levels.spatial_scales)?;
    Ok(host
        .chunks_exact(5)
        .map(|r| {
            levels
                .rule
                .level_of([r[1], r[2], r[3], r[4]], &levels.spatial_scales)
        })
        .collect())
}

/// Everything both devices need, validated: extents, scales, a host copy of the RoIs and their levels.
pub(crate) struct Plan {
    pub batch: usize,
    pub channels: usize,
    /// `(H, W)` per level.
    pub maps: Vec<(usize, usize)>,
    pub scales: Vec<f64>,
    /// `[K * 5]`, validated.
    pub rois: Vec<f64>,
    pub roi_levels: Vec<usize>,
    pub pooled: (usize, usize),
    pub sampling_ratio: i32,
    pub aligned: bool,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub deterministic: bool,
}

impl Plan {
    fn new(
        level_shapes: &[&[usize]],
        rois: &Tensor,
        scales: &[f64],
        rule: Option<LevelRule>,
        cfg: &RoiAlignConfig,
    ) -> Result<Plan> {
        let (pooled_h, pooled_w) = cfg.output_size;
        if pooled_h == 0 || pooled_w == 0 {
            return Err(Error::invalid(
                "output_size",
                format!("both sides must be > 0, got ({pooled_h}, {pooled_w})"),
            ));
        }
        if level_shapes.is_empty() || level_shapes.len() > MAX_LEVELS {
            return Err(Error::invalid(
                "features",
                format!(
                    "expected 1 to {MAX_LEVELS} feature maps, got {}",
                    level_shapes.len()
                ),
            ));
        }
        if scales.len() != level_shapes.len() {
            return Err(Error::invalid(
                "spatial_scales",
                format!(
                    "expected one scale per feature map ({}), got {}",
                    level_shapes.len(),
                    scales.len()
                ),
            ));
        }
        validate_scales(scales)?;
        let arg = |l: usize| {
            if level_shapes.len() == 1 {
                "features".to_string()
            } else {
                format!("features[{l}]")
            }
        };
        let first = level_shapes[0];
        if first.len() != 4 {
            return Err(Error::shape(arg(0), "[N, C, H, W]", first));
        }
        let (batch, channels) = (first[0], first[1]);
        let mut maps = Vec::with_capacity(level_shapes.len());
        for (l, shape) in level_shapes.iter().enumerate() {
            if shape.len() != 4 || shape[0] != batch || shape[1] != channels {
                return Err(Error::shape(
                    arg(l),
                    format!("[{batch}, {channels}, H, W]"),
                    shape,
                ));
            }
            let (height, width) = (shape[2], shape[3]);
            if height == 0 || width == 0 {
                return Err(Error::shape(arg(l), "a map with H >= 1 and W >= 1", shape));
            }
            // Kernels index planes with i32 and the channel/batch extents as i32.
            validate::fits_i32(height.saturating_mul(width), &arg(l), "H*W")?;
            validate::fits_i32(channels, &arg(l), "C")?;
            maps.push((height, width));
        }
        validate::fits_i32(pooled_h.saturating_mul(pooled_w), "output_size", "PH*PW")?;

        let host = host_rois(rois)?;
        check_rois(&host, batch, scales)?;
        let num_rois = host.len() / 5;
        validate::fits_i32(num_rois, "rois", "K")?;
        let roi_levels = match rule {
            Some(rule) => host
                .chunks_exact(5)
                .map(|r| rule.level_of([r[1], r[2], r[3], r[4]], scales))
                .collect(),
            None => vec![0; num_rois],
        };
        Ok(Plan {
            batch,
            channels,
            maps,
            scales: scales.to_vec(),
            rois: host,
            roi_levels,
            pooled: (pooled_h, pooled_w),
            sampling_ratio: cfg.sampling_ratio,
            aligned: cfg.aligned,
            deterministic: cfg.deterministic,
        })
    }

    fn multilevel(
        features: &[&Tensor],
        rois: &Tensor,
        levels: &FpnLevels,
        cfg: &RoiAlignConfig,
    ) -> Result<Plan> {
        let shapes: Vec<&[usize]> = features.iter().map(|f| f.shape()).collect();
        Plan::new(
            &shapes,
            rois,
            &levels.spatial_scales,
            Some(levels.rule),
            cfg,
        )
    }

    pub fn num_rois(&self) -> usize {
        self.roi_levels.len()
    }

    pub fn batch_index(&self, k: usize) -> usize {
        self.rois[k * 5] as usize
    }

    pub fn output_shape(&self) -> [usize; 4] {
        [self.num_rois(), self.channels, self.pooled.0, self.pooled.1]
    }

    fn level_shape(&self, level: usize) -> [usize; 4] {
        let (h, w) = self.maps[level];
        [self.batch, self.channels, h, w]
    }
}

fn validate_scales(scales: &[f64]) -> Result<()> {
    if scales.is_empty() {
        return Err(Error::invalid(
            "spatial_scales",
            "expected at least one scale",
        ));
    }
    for (l, &s) in scales.iter().enumerate() {
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::invalid(
                "spatial_scale",
                format!("must be finite and > 0, got {s} (level {l})"),
            ));
        }
    }
    Ok(())
}

/// The RoIs as host f64, after checking their shape.
fn host_rois(rois: &Tensor) -> Result<Vec<f64>> {
    validate::rank(rois, "rois", 2, "[K, 5] = (batch, x1, y1, x2, y2)")?;
    if rois.shape()[1] != 5 {
        return Err(Error::shape(
            "rois",
            "[K, 5] = (batch, x1, y1, x2, y2)",
            rois.shape(),
        ));
    }
    rois.to_vec::<f64>()
}

/// Batch indices must be integers in `[0, batch)`; coordinates finite and not absurdly large.
fn check_rois(rois: &[f64], batch: usize, scales: &[f64]) -> Result<()> {
    let max_scale = scales.iter().cloned().fold(0.0, f64::max);
    for (k, r) in rois.chunks_exact(5).enumerate() {
        let b = r[0];
        if !(b.is_finite() && b >= 0.0 && b.fract() == 0.0 && (b as usize) < batch) {
            let range = if batch == usize::MAX {
                "a non-negative integer".to_string()
            } else {
                format!("an integer in [0, {batch})")
            };
            return Err(Error::invalid(
                "rois",
                format!("row {k}: batch index must be {range}, got {b}"),
            ));
        }
        for &v in &r[1..] {
            if !v.is_finite() {
                return Err(Error::invalid(
                    "rois",
                    format!("row {k}: box coordinates must be finite, got {:?}", &r[1..]),
                ));
            }
            if (v * max_scale).abs() > MAX_SCALED_COORDINATE {
                return Err(Error::invalid(
                    "rois",
                    format!(
                        "row {k}: coordinate {v} times spatial scale {max_scale} exceeds {MAX_SCALED_COORDINATE}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// All feature maps must share one device and one dtype; returns them.
fn common_device_dtype(features: &[&Tensor]) -> Result<(Device, DType)> {
    let names: Vec<String> = (0..features.len())
        .map(|l| {
            if features.len() == 1 {
                "features".into()
            } else {
                format!("features[{l}]")
            }
        })
        .collect();
    let named: Vec<(&str, &Tensor)> = names
        .iter()
        .map(String::as_str)
        .zip(features.iter().copied())
        .collect();
    let device = validate::same_device(&named)?;
    let dtype = validate::same_dtype(&named)?;
    validate::float(features[0], &names[0])?;
    Ok((device, dtype))
}

fn run_forward(plan: &Plan, features: &[&Tensor]) -> Result<Tensor> {
    let (device, dtype) = common_device_dtype(features)?;
    if device.is_cpu() {
        return cpu_forward(plan, features, dtype);
    }
    let mut out = Tensor::zeros(&plan.output_shape(), dtype, &device)?;
    run_forward_into(plan, features, &mut out)?;
    Ok(out)
}

fn run_forward_into(plan: &Plan, features: &[&Tensor], out: &mut Tensor) -> Result<()> {
    let (device, dtype) = common_device_dtype(features)?;
    let expected = plan.output_shape();
    validate::shape(out, "out", &expected)?;
    if out.dtype() != dtype || out.device() != device {
        return Err(Error::invalid(
            "out",
            format!(
                "expected {dtype} on {device}, got {} on {}",
                out.dtype(),
                out.device()
            ),
        ));
    }
    if out.numel() == 0 {
        return Ok(()); // K = 0 or C = 0: nothing to compute, no launch
    }
    match device {
        Device::Cpu => {
            *out = cpu_forward(plan, features, dtype)?;
            Ok(())
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::forward(&dev, plan, features, out),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

fn cpu_forward(plan: &Plan, features: &[&Tensor], dtype: DType) -> Result<Tensor> {
    fn typed<T: Real + crate::tensor::HostElement>(
        plan: &Plan,
        features: &[&Tensor],
    ) -> Result<Vec<T>> {
        let widened: Vec<Vec<T>> = features
            .iter()
            .map(|f| f.to_vec::<T>())
            .collect::<Result<_>>()?;
        let levels: Vec<cpu::LevelData<'_, T>> = widened
            .iter()
            .zip(&plan.maps)
            .map(|(data, &(height, width))| cpu::LevelData {
                data,
                height,
                width,
            })
            .collect();
        let mut out = vec![T::zero(); plan.output_shape().iter().product()];
        cpu::forward(plan, &levels, &mut out);
        Ok(out)
    }
    let shape = plan.output_shape();
    match dtype {
        DType::F64 => Tensor::from_vec(typed::<f64>(plan, features)?, &shape),
        // f32 compute for f32 and half storage (half is widened, then rounded once at the end).
        _ => Tensor::from_vec(typed::<f32>(plan, features)?, &shape)?.into_dtype(dtype),
    }
}

fn run_backward(plan: &Plan, grad_out: &Tensor) -> Result<Vec<Tensor>> {
    let expected = plan.output_shape();
    if grad_out.shape() != expected {
        return Err(Error::shape(
            "grad_out",
            format!("{expected:?}"),
            grad_out.shape(),
        ));
    }
    let dtype = validate::float(grad_out, "grad_out")?;
    let device = grad_out.device();
    let zeros = || -> Result<Vec<Tensor>> {
        (0..plan.maps.len())
            .map(|l| Tensor::zeros(&plan.level_shape(l), dtype, &device))
            .collect()
    };
    if grad_out.numel() == 0 {
        return zeros(); // K = 0: zero gradient, no launch
    }
    match &device {
        Device::Cpu => {
            let shapes: Vec<[usize; 4]> =
                (0..plan.maps.len()).map(|l| plan.level_shape(l)).collect();
            let grads = if dtype == DType::F64 {
                cpu::backward::<f64>(plan, grad_out.as_slice()?)
                    .into_iter()
                    .zip(&shapes)
                    .map(|(g, s)| Tensor::from_vec(g, s))
                    .collect::<Result<Vec<_>>>()?
            } else {
                cpu::backward::<f32>(plan, &grad_out.host_values::<f32>()?)
                    .into_iter()
                    .zip(&shapes)
                    .map(|(g, s)| Tensor::from_vec(g, s)?.into_dtype(dtype))
                    .collect::<Result<Vec<_>>>()?
            };
            Ok(grads)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::backward(dev, plan, grad_out),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

#[cfg(test)]
mod tests;
