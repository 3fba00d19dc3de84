//! Parity entries for the focal losses.
//!
//! Ops and keys (all optional keys take the official defaults when absent):
//! - `sigmoid_focal_loss` (torchvision): `alpha` (default 0.25; negative = no weighting), `gamma` (2),
//!   `reduction` (`none` | `mean` | `sum`, default `none`). Tensors: `logits`, `targets` (same shape).
//! - `sigmoid_focal_loss_mmcv`: `alpha` (0.25), `gamma` (2), `reduction` (default `mean`). Tensors:
//!   `logits` `[N, C]`, `labels` i64 `[N]` (C = background), optional `weight` `[C]`.
//! - `quality_focal_loss` (GFL/mmdet): `beta` (2), `reduction` (default `mean`), optional `avg_factor`.
//!   Tensors: `logits` `[N, C]`, `labels` i64 `[N]`, `scores` `[N]`, optional `weight` `[N]`.
//!
//! Every op takes an optional `grad_out` (the loss's shape; `[]` for a reduced loss). Results: `output`;
//! with `grad_out`, `grad_logits`; with `grad_out` and a `mean`/`sum` reduction also the fused entry's
//! `fused_output` and `fused_grad_logits` (called with `grad_output` = the value of `grad_out`).

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::focal::{
    self, LossAndGrad, MmcvFocalConfig, QualityFocalConfig, Reduction, SigmoidFocalConfig,
};
use crate::tensor::Tensor;

pub(super) const OPS: &[&str] = &[
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_mmcv",
    "quality_focal_loss",
];

fn reduction(inputs: &ParityInputs<'_>, default: Reduction) -> Result<Reduction> {
    if !inputs.has_meta("reduction") {
        return Ok(default);
    }
    let name = inputs.meta("reduction")?;
    Reduction::from_name(name).ok_or_else(|| {
        Error::invalid(
            "reduction",
            format!("expected none, mean or sum, got `{name}`"),
        )
    })
}

fn optional_data(inputs: &ParityInputs<'_>, name: &str) -> Result<Option<Tensor>> {
    if inputs.has(name) {
        Ok(Some(inputs.data(name)?))
    } else {
        Ok(None)
    }
}

/// Appends the fused entry's results when the loss is reduced (the entry needs a scalar loss).
fn push_fused(
    results: &mut Results,
    reduction: Reduction,
    grad_out: &Tensor,
    fused: impl FnOnce(f64) -> Result<LossAndGrad>,
) -> Result<()> {
    if reduction == Reduction::None {
        return Ok(());
    }
    let upstream = grad_out.to_vec::<f64>()?;
    let [value] = upstream[..] else {
        return Err(Error::shape(
            "grad_out",
            "[] for a reduced loss",
            grad_out.shape(),
        ));
    };
    let LossAndGrad {
        loss,
        grad: grad_logits,
    } = fused(value)?;
    results.push(("fused_output".into(), loss));
    results.push(("fused_grad_logits".into(), grad_logits));
    Ok(())
}

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    let logits = inputs.data("logits")?;
    let grad_out = optional_data(inputs, "grad_out")?;
    let mut results = Vec::new();
    match op {
        "sigmoid_focal_loss" => {
            let cfg = SigmoidFocalConfig {
                alpha: inputs.parse_or("alpha", "a float", 0.25)?,
                gamma: inputs.parse_or("gamma", "a float", 2.0)?,
                reduction: reduction(inputs, Reduction::None)?,
            };
            let targets = inputs.data("targets")?;
            let output = focal::sigmoid_focal_loss(&logits, &targets, &cfg)?;
            results.push(("output".into(), output));
            if let Some(g) = &grad_out {
                let grad = focal::sigmoid_focal_loss_backward(g, &logits, &targets, &cfg)?;
                results.push(("grad_logits".into(), grad));
                push_fused(&mut results, cfg.reduction, g, |v| {
                    focal::sigmoid_focal_loss_fused(&logits, &targets, &cfg, v)
                })?;
            }
        }
        "sigmoid_focal_loss_mmcv" => {
            let cfg = MmcvFocalConfig {
                gamma: inputs.parse_or("gamma", "a float", 2.0)?,
                alpha: inputs.parse_or("alpha", "a float", 0.25)?,
                reduction: reduction(inputs, Reduction::Mean)?,
            };
            let labels = inputs.exact("labels")?;
            let weight = optional_data(inputs, "weight")?;
            let weight = weight.as_ref();
            let output = focal::sigmoid_focal_loss_mmcv(&logits, &labels, weight, &cfg)?;
            results.push(("output".into(), output));
            if let Some(g) = &grad_out {
                let grad =
                    focal::sigmoid_focal_loss_mmcv_backward(g, &logits, &labels, weight, &cfg)?;
                results.push(("grad_logits".into(), grad));
                push_fused(&mut results, cfg.reduction, g, |v| {
                    focal::sigmoid_focal_loss_mmcv_fused(&logits, &labels, weight, &cfg, v)
                })?;
            }
        }
        _ => {
            let cfg = QualityFocalConfig {
                beta: inputs.parse_or("beta", "a float", 2.0)?,
                reduction: reduction(inputs, Reduction::Mean)?,
                avg_factor: if inputs.has_meta("avg_factor") {
                    Some(inputs.parse("avg_factor", "a float")?)
                } else {
                    None
                },
            };
            let labels = inputs.exact("labels")?;
            let scores = inputs.data("scores")?;
            let weight = optional_data(inputs, "weight")?;
            let weight = weight.as_ref();
            let output = focal::quality_focal_loss(&logits, &labels, &scores, weight, &cfg)?;
            results.push(("output".into(), output));
            if let Some(g) = &grad_out {
                let grad =
                    focal::quality_focal_loss_backward(g, &logits, &labels, &scores, weight, &cfg)?;
                results.push(("grad_logits".into(), grad));
                push_fused(&mut results, cfg.reduction, g, |v| {
                    focal::quality_focal_loss_fused(&logits, &labels, &scores, weight, &cfg, v)
                })?;
            }
        }
    }
    Ok(results)
}
