//! CPU reference for RoIAlign: the specification the CUDA kernel is checked against.
//!
//! Deterministic (every output and every gradient element is summed in one fixed order) and parallel over
//! RoIs (forward) or over channel groups (backward). Generic over the compute type: f64 for gradchecks and
//! fixtures, f32 for everything else (half storage is widened to f32 by the caller).

use super::Plan;
use crate::tensor::Real;
use rayon::prelude::*;

/// One level's feature map, `[N, C, H, W]` row-major.
pub(crate) struct LevelData<'a, T> {
    pub data: &'a [T],
    pub height: usize,
    pub width: usize,
}

/// A bilinear sample: four flat indices into one `H x W` plane and their weights.
#[derive(Clone, Copy)]
struct Tap<T> {
    index: [usize; 4],
    weight: [T; 4],
}

/// Every in-range sample of one RoI, grouped by output bin (`bins[b]..bins[b + 1]` index into `taps`),
/// and the divisor `count` shared by all bins.
struct RoiTaps<T> {
    taps: Vec<Tap<T>>,
    bins: Vec<usize>,
    count: T,
}

fn cast<T: Real>(v: f64) -> T {
    T::from_f64(v)
}

/// torchvision's bilinear rule (shared/spec/kernels.md B1); `None` for samples outside `[-1, H] x [-1, W]`.
fn bilinear_tap<T: Real>(y: T, x: T, height: usize, width: usize) -> Option<Tap<T>> {
    let (h, w) = (cast::<T>(height as f64), cast::<T>(width as f64));
    let minus_one = -T::one();
    if !(y >= minus_one && y <= h && x >= minus_one && x <= w) {
        return None;
    }
    let clamp_low = |v: T| if v <= T::zero() { T::zero() } else { v };
    let (mut y, mut x) = (clamp_low(y), clamp_low(x));
    let neighbours = |v: &mut T, extent: usize| {
        let low = v.to_f64() as usize; // truncation, v >= 0
        if low >= extent - 1 {
            *v = cast((extent - 1) as f64);
            (extent - 1, extent - 1)
        } else {
            (low, low + 1)
        }
    };
    let (y_low, y_high) = neighbours(&mut y, height);
    let (x_low, x_high) = neighbours(&mut x, width);
    let ly = y - cast(y_low as f64);
    let lx = x - cast(x_low as f64);
    let (hy, hx) = (T::one() - ly, T::one() - lx);
    Some(Tap {
        index: [
            y_low * width + x_low,
            y_low * width + x_high,
            y_high * width + x_low,
            y_high * width + x_high,
        ],
        weight: [hy * hx, hy * lx, ly * hx, ly * lx],
    })
}

fn roi_taps<T: Real>(plan: &Plan, k: usize) -> RoiTaps<T> {
    let roi = &plan.rois[k * 5..k * 5 + 5];
    let level = plan.roi_levels[k];
    let (height, width) = plan.maps[level];
    let (pooled_h, pooled_w) = plan.pooled;
    let scale: T = cast(plan.scales[level]);
    let offset: T = cast(if plan.aligned { 0.5 } else { 0.0 });
    let start_x = cast::<T>(roi[1]) * scale - offset;
    let start_y = cast::<T>(roi[2]) * scale - offset;
    let mut roi_w = cast::<T>(roi[3]) * scale - offset - start_x;
    let mut roi_h = cast::<T>(roi[4]) * scale - offset - start_y;
    if !plan.aligned {
        roi_w = roi_w.max(T::one());
        roi_h = roi_h.max(T::one());
    }
    let bin_h = roi_h / cast(pooled_h as f64);
    let bin_w = roi_w / cast(pooled_w as f64);
    let grid = |extent: T| -> i64 {
        if plan.sampling_ratio > 0 {
            plan.sampling_ratio as i64
        } else {
            extent.ceil().to_f64() as i64
        }
    };
    let (grid_h, grid_w) = (grid(bin_h), grid(bin_w));
    let count = cast::<T>((grid_h * grid_w).max(1) as f64);

    let mut taps = Vec::new();
    let mut bins = Vec::with_capacity(pooled_h * pooled_w + 1);
    bins.push(0);
    for ph in 0..pooled_h {
        for pw in 0..pooled_w {
            for iy in 0..grid_h.max(0) {
                let y = start_y
                    + cast::<T>(ph as f64) * bin_h
                    + cast::<T>(iy as f64 + 0.5) * bin_h / cast(grid_h as f64);
                for ix in 0..grid_w.max(0) {
                    let x = start_x
                        + cast::<T>(pw as f64) * bin_w
                        + cast::<T>(ix as f64 + 0.5) * bin_w / cast(grid_w as f64);
                    taps.extend(bilinear_tap(y, x, height, width));
                }
            }
            bins.push(taps.len());
        }
    }
    RoiTaps { taps, bins, count }
}

/// `out` is `[K, C, PH, PW]`.
pub(crate) fn forward<T: Real>(plan: &Plan, levels: &[LevelData<'_, T>], out: &mut [T]) {
    let channels = plan.channels;
    let bins = plan.pooled.0 * plan.pooled.1;
    if channels * bins == 0 {
        return;
    }
    out.par_chunks_mut(channels * bins)
        .enumerate()
        .for_each(|(k, out_k)| {
            let taps = roi_taps::<T>(plan, k);
            let level = &levels[plan.roi_levels[k]];
            let plane_len = level.height * level.width;
            let batch = plan.batch_index(k);
            for (c, out_c) in out_k.chunks_mut(bins).enumerate() {
                let plane = &level.data[(batch * channels + c) * plane_len..][..plane_len];
                for (bin, out_bin) in out_c.iter_mut().enumerate() {
                    let mut sum = T::zero();
                    for tap in &taps.taps[taps.bins[bin]..taps.bins[bin + 1]] {
                        sum = sum
                            + (tap.weight[0] * plane[tap.index[0]]
                                + tap.weight[1] * plane[tap.index[1]]
                                + tap.weight[2] * plane[tap.index[2]]
                                + tap.weight[3] * plane[tap.index[3]]);
                    }
                    *out_bin = sum / taps.count;
                }
            }
        });
}

/// Channels per parallel task in the backward: enough to amortise recomputing a RoI's taps per task.
const CHANNEL_GROUP: usize = 16;

/// Returns one `[N, C, H, W]` gradient per level. `grad_out` is `[K, C, PH, PW]`.
pub(crate) fn backward<T: Real>(plan: &Plan, grad_out: &[T]) -> Vec<Vec<T>> {
    let channels = plan.channels;
    let bins = plan.pooled.0 * plan.pooled.1;
    plan.maps
        .iter()
        .enumerate()
        .map(|(level, &(height, width))| {
            let plane_len = height * width;
            let mut grad = vec![T::zero(); plan.batch * channels * plane_len];
            if plane_len == 0 || channels == 0 {
                return grad;
            }
            for (batch, grad_b) in grad.chunks_mut(channels * plane_len).enumerate() {
                // RoIs in index order: the order every pixel's sum is taken in.
                let rois: Vec<usize> = (0..plan.num_rois())
                    .filter(|&k| plan.roi_levels[k] == level && plan.batch_index(k) == batch)
                    .collect();
                if rois.is_empty() {
                    continue;
                }
                grad_b
                    .par_chunks_mut(CHANNEL_GROUP * plane_len)
                    .enumerate()
                    .for_each(|(group, grad_group)| {
                        for &k in &rois {
                            let taps = roi_taps::<T>(plan, k);
                            for (ci, plane) in grad_group.chunks_mut(plane_len).enumerate() {
                                let c = group * CHANNEL_GROUP + ci;
                                let g_k = &grad_out[(k * channels + c) * bins..][..bins];
                                for (bin, &g) in g_k.iter().enumerate() {
                                    for tap in &taps.taps[taps.bins[bin]..taps.bins[bin + 1]] {
                                        for t in 0..4 {
                                            plane[tap.index[t]] = plane[tap.index[t]]
                                                + g * tap.weight[t] / taps.count;
                                        }
                                    }
                                }
                            }
                        }
                    });
            }
            grad
        })
        .collect()
}
