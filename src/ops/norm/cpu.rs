//! CPU reference of the normalisations: the specification the CUDA kernels are checked against.
//!
//! Everything is computed in f64 whatever the storage (statistics, as PyTorch's CPU kernels accumulate
//! them, and the element-wise parts too), then rounded once: to the storage dtype for outputs and gradients,
//! to the compute dtype for the saved statistics. Channels (BatchNorm) and groups (GroupNorm) run in
//! parallel; every sum runs in one fixed order (images, then positions ascending).

use super::{
    compute_dtype, BatchNormConfig, BatchNormOutput, Dims, GroupNormConfig, GroupNormOutput,
    NormGrads, NormStats, RunningStats,
};
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::borrow::Cow;

fn values(t: &Tensor) -> Result<Cow<'_, [f64]>> {
    t.host_values::<f64>()
}

fn optional(t: Option<&Tensor>) -> Result<Option<Cow<'_, [f64]>>> {
    t.map(values).transpose()
}

fn tensor_like(values: Vec<f64>, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(values, shape)?.into_dtype(like.dtype())
}

fn stats_tensor(values: Vec<f64>, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(values, shape)?.into_dtype(compute_dtype(like.dtype()))
}

/// The planes of channel `c`, images ascending.
fn channel_planes<'a>(
    x: &'a [f64],
    d: &Dims,
    c: usize,
) -> impl Iterator<Item = &'a [f64]> + Clone + 'a {
    let (channels, plane) = (d.c, d.plane);
    (0..d.b).map(move |b| &x[(b * channels + c) * plane..][..plane])
}

/// `(mean, Σ(x − mean)²)` of the values in `rows`, two-pass.
fn mean_and_centred_squares<'a>(
    rows: impl Iterator<Item = &'a [f64]> + Clone,
    n: f64,
) -> (f64, f64) {
    let mean = rows.clone().flatten().sum::<f64>() / n;
    let sq = rows.flatten().map(|v| (v - mean) * (v - mean)).sum::<f64>();
    (mean, sq)
}

pub(super) fn batch_norm_train(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running: Option<RunningStats<'_>>,
    cfg: &BatchNormConfig,
    d: &Dims,
) -> Result<BatchNormOutput> {
    let x = values(input)?;
    let (gamma, beta) = (optional(weight)?, optional(bias)?);
    let n = (d.b * d.plane) as f64;
    let stats: Vec<(f64, f64)> = (0..d.c)
        .into_par_iter()
        .map(|c| mean_and_centred_squares(channel_planes(&x, d, c), n))
        .collect();
    let inv_std: Vec<f64> = stats
        .iter()
        .map(|&(_, sq)| 1.0 / (sq / n + cfg.eps).sqrt())
        .collect();
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(d.plane)
        .zip(x.par_chunks(d.plane))
        .enumerate()
        .for_each(|(q, (dst, src))| {
            let c = q % d.c;
            let g = gamma.as_ref().map_or(1.0, |g| g[c]);
            let b = beta.as_ref().map_or(0.0, |b| b[c]);
            for (o, &v) in dst.iter_mut().zip(src) {
                *o = (v - stats[c].0) * inv_std[c] * g + b;
            }
        });
    let (running_mean, running_var) = match running {
        Some(r) => {
            let (rm, rv) = (values(r.mean)?, values(r.var)?);
            let m = cfg.momentum;
            let mean: Vec<f64> = (0..d.c)
                .map(|c| m * stats[c].0 + (1.0 - m) * rm[c])
                .collect();
            let var: Vec<f64> = (0..d.c)
                .map(|c| m * (stats[c].1 / (n - 1.0)) + (1.0 - m) * rv[c])
                .collect();
            (
                Some(tensor_like(mean, &[d.c], input)?),
                Some(tensor_like(var, &[d.c], input)?),
            )
        }
        None => (None, None),
    };
    Ok(BatchNormOutput {
        output: tensor_like(y, input.shape(), input)?,
        stats: NormStats {
            mean: stats_tensor(stats.iter().map(|s| s.0).collect(), &[d.c], input)?,
            inv_std: stats_tensor(inv_std, &[d.c], input)?,
        },
        running_mean,
        running_var,
    })
}

pub(super) fn batch_norm_backward(
    input: &Tensor,
    weight: Option<&Tensor>,
    stats: &NormStats,
    grad_output: &Tensor,
    d: &Dims,
) -> Result<NormGrads> {
    let (x, g) = (values(input)?, values(grad_output)?);
    let gamma = optional(weight)?;
    let (mean, inv_std) = (values(&stats.mean)?, values(&stats.inv_std)?);
    let n = (d.b * d.plane) as f64;
    // (Σdy, Σdy·x̂) per channel.
    let sums: Vec<(f64, f64)> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let mut acc = (0.0, 0.0);
            for (xs, gs) in channel_planes(&x, d, c).zip(channel_planes(&g, d, c)) {
                for (&v, &dy) in xs.iter().zip(gs) {
                    acc.0 += dy;
                    acc.1 += dy * (v - mean[c]) * inv_std[c];
                }
            }
            acc
        })
        .collect();
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(d.plane).enumerate().for_each(|(q, dst)| {
        let c = q % d.c;
        let scale = gamma.as_ref().map_or(1.0, |w| w[c]) * inv_std[c];
        let (mean_dy, mean_dy_xhat) = (sums[c].0 / n, sums[c].1 / n);
        let (xs, gs) = (&x[q * d.plane..][..d.plane], &g[q * d.plane..][..d.plane]);
        for ((o, &v), &dy) in dst.iter_mut().zip(xs).zip(gs) {
            let xhat = (v - mean[c]) * inv_std[c];
            *o = scale * (dy - mean_dy - xhat * mean_dy_xhat);
        }
    });
    Ok(NormGrads {
        input: tensor_like(dx, input.shape(), input)?,
        weight: tensor_like(sums.iter().map(|s| s.1).collect(), &[d.c], input)?,
        bias: tensor_like(sums.iter().map(|s| s.0).collect(), &[d.c], input)?,
    })
}

pub(super) fn batch_norm_eval(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running: RunningStats<'_>,
    eps: f64,
    d: &Dims,
) -> Result<Tensor> {
    let x = values(input)?;
    let (gamma, beta) = (optional(weight)?, optional(bias)?);
    let (rm, rv) = (values(running.mean)?, values(running.var)?);
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(d.plane)
        .zip(x.par_chunks(d.plane))
        .enumerate()
        .for_each(|(q, (dst, src))| {
            let c = q % d.c;
            let inv_std = 1.0 / (rv[c] + eps).sqrt();
            let g = gamma.as_ref().map_or(1.0, |g| g[c]);
            let b = beta.as_ref().map_or(0.0, |b| b[c]);
            for (o, &v) in dst.iter_mut().zip(src) {
                *o = (v - rm[c]) * inv_std * g + b;
            }
        });
    tensor_like(y, input.shape(), input)
}

pub(super) fn group_norm(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    cfg: &GroupNormConfig,
    d: &Dims,
) -> Result<GroupNormOutput> {
    let x = values(input)?;
    let (gamma, beta) = (optional(weight)?, optional(bias)?);
    let groups = cfg.num_groups;
    let per_group = d.c / groups;
    let size = per_group * d.plane;
    let mut y = vec![0.0; x.len()];
    let stats: Vec<(f64, f64)> = y
        .par_chunks_mut(size)
        .zip(x.par_chunks(size))
        .enumerate()
        .map(|(bg, (dst, src))| {
            let (mean, sq) = mean_and_centred_squares(std::iter::once(src), size as f64);
            let inv_std = 1.0 / (sq / size as f64 + cfg.eps).sqrt();
            let c0 = (bg % groups) * per_group;
            for (k, (row_out, row_in)) in
                dst.chunks_mut(d.plane).zip(src.chunks(d.plane)).enumerate()
            {
                let c = c0 + k;
                let g = gamma.as_ref().map_or(1.0, |g| g[c]);
                let b = beta.as_ref().map_or(0.0, |b| b[c]);
                for (o, &v) in row_out.iter_mut().zip(row_in) {
                    *o = (v - mean) * inv_std * g + b;
                }
            }
            (mean, inv_std)
        })
        .collect();
    let stats_shape = [d.b, groups];
    Ok(GroupNormOutput {
        output: tensor_like(y, input.shape(), input)?,
        stats: NormStats {
            mean: stats_tensor(stats.iter().map(|s| s.0).collect(), &stats_shape, input)?,
            inv_std: stats_tensor(stats.iter().map(|s| s.1).collect(), &stats_shape, input)?,
        },
    })
}

pub(super) fn group_norm_backward(
    input: &Tensor,
    weight: Option<&Tensor>,
    stats: &NormStats,
    grad_output: &Tensor,
    cfg: &GroupNormConfig,
    d: &Dims,
) -> Result<NormGrads> {
    let (x, g) = (values(input)?, values(grad_output)?);
    let gamma = optional(weight)?;
    let (mean, inv_std) = (values(&stats.mean)?, values(&stats.inv_std)?);
    let groups = cfg.num_groups;
    let per_group = d.c / groups;
    let size = per_group * d.plane;
    let gamma_of = |c: usize| gamma.as_ref().map_or(1.0, |w| w[c]);
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(size).enumerate().for_each(|(bg, dst)| {
        let (xs, gs) = (&x[bg * size..][..size], &g[bg * size..][..size]);
        let c0 = (bg % groups) * per_group;
        let (mu, inv) = (mean[bg], inv_std[bg]);
        let (mut sum_d, mut sum_d_xhat) = (0.0, 0.0);
        for (k, (xr, gr)) in xs.chunks(d.plane).zip(gs.chunks(d.plane)).enumerate() {
            let w = gamma_of(c0 + k);
            for (&v, &dy) in xr.iter().zip(gr) {
                sum_d += dy * w;
                sum_d_xhat += dy * w * (v - mu) * inv;
            }
        }
        let (mean_d, mean_d_xhat) = (sum_d / size as f64, sum_d_xhat / size as f64);
        for (k, ((out, xr), gr)) in dst
            .chunks_mut(d.plane)
            .zip(xs.chunks(d.plane))
            .zip(gs.chunks(d.plane))
            .enumerate()
        {
            let w = gamma_of(c0 + k);
            for ((o, &v), &dy) in out.iter_mut().zip(xr).zip(gr) {
                let xhat = (v - mu) * inv;
                *o = inv * (dy * w - mean_d - xhat * mean_d_xhat);
            }
        }
    });
    // (Σdy·x̂, Σdy) per channel, with each image's group statistics.
    let sums: Vec<(f64, f64)> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let mut acc = (0.0, 0.0);
            for (b, (xs, gs)) in channel_planes(&x, d, c)
                .zip(channel_planes(&g, d, c))
                .enumerate()
            {
                let stat = b * groups + c / per_group;
                for (&v, &dy) in xs.iter().zip(gs) {
                    acc.0 += dy * (v - mean[stat]) * inv_std[stat];
                    acc.1 += dy;
                }
            }
            acc
        })
        .collect();
    Ok(NormGrads {
        input: tensor_like(dx, input.shape(), input)?,
        weight: tensor_like(sums.iter().map(|s| s.0).collect(), &[d.c], input)?,
        bias: tensor_like(sums.iter().map(|s| s.1).collect(), &[d.c], input)?,
    })
}
