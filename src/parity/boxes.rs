//! Parity entries for the box ops (`src/ops/boxes`).
//!
//! Every tensor is a data input: the file's `dtype` key casts all of them (boxes included), since one call
//! of these ops shares a single dtype.
//!
//! | op | tensors | results |
//! | --- | --- | --- |
//! | `distance2bbox` | `points` `[N, 2]`, `distances` `[N, 4]`, optional `grad_out` `[N, 4]` | `output`, `grad_distances` |
//! | `bbox2distance` | `points` `[N, 2]`, `boxes` `[N, 4]` | `output` |
//! | `overlaps_aligned` | `a`, `b` `[N, 4]` | `output` `[N]` |
//! | `box_overlaps` | `a` `[N, 4]`, `b` `[M, 4]` | `output` `[N, M]` |
//! | `giou_loss` | `pred`, `target` `[N, 4]`, optional `weight` `[N]`, optional `grad_out` (`[N]` or `[]`) | `output`, `grad_pred`; with `grad_out` and a `mean`/`sum` reduction also `fused_output`, `fused_grad_pred` (the fused entry with `grad_scale` = the value of `grad_out`) |
//!
//! Metadata keys (all optional; defaults are the ops' defaults):
//! - `max_shape` (`distance2bbox`): `"H,W"`, clamp the boxes to the image; absent = no clamp.
//! - `max_dist` (`bbox2distance`): float, clamp to `[0, max_dist − eps]`; absent = no clamp.
//! - `eps`: float; `bbox2distance`'s default 0.1, the overlaps' and `giou_loss`'s 1e-6.
//! - `mode` (`overlaps_aligned`, `box_overlaps`): `iou` (default) | `giou` | `diou`.
//! - `diou_overlap` (overlaps): `union` (default) | `first_area` (the LD repository's `mode='diou'`).
//! - `reduction` (`giou_loss`): `none` | `mean` (default) | `sum`; `avg_factor` (float);
//!   `loss_weight` (float, default 1).

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::boxes::{
    self, DiouOverlap, GiouLossConfig, LossAndGrad, LossWeighting, OverlapConfig, OverlapKind,
    Reduction, BBOX2DISTANCE_EPS, GIOU_LOSS_EPS, OVERLAP_EPS,
};
use crate::tensor::Tensor;

pub(super) const OPS: &[&str] = &[
    "distance2bbox",
    "bbox2distance",
    "overlaps_aligned",
    "box_overlaps",
    "giou_loss",
];

fn optional(inputs: &ParityInputs<'_>, name: &str) -> Result<Option<Tensor>> {
    if inputs.has(name) {
        Ok(Some(inputs.data(name)?))
    } else {
        Ok(None)
    }
}

fn overlap_config(inputs: &ParityInputs<'_>) -> Result<(OverlapKind, OverlapConfig)> {
    let mode = if inputs.has_meta("mode") {
        inputs.meta("mode")?
    } else {
        "iou"
    };
    let kind = OverlapKind::from_name(mode).ok_or_else(|| {
        Error::invalid("mode", format!("expected iou, giou or diou, got `{mode}`"))
    })?;
    let diou = if inputs.has_meta("diou_overlap") {
        inputs.meta("diou_overlap")?
    } else {
        "union"
    };
    let diou_overlap = DiouOverlap::from_name(diou).ok_or_else(|| {
        Error::invalid(
            "diou_overlap",
            format!("expected union or first_area, got `{diou}`"),
        )
    })?;
    let cfg = OverlapConfig {
        eps: inputs.parse_or("eps", "a float", OVERLAP_EPS)?,
        diou_overlap,
    };
    Ok((kind, cfg))
}

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    let mut results: Results = Vec::new();
    match op {
        "distance2bbox" => {
            let max_shape = if inputs.has_meta("max_shape") {
                let hw: Vec<f64> = inputs.parse_list("max_shape", "floats H,W")?;
                let [h, w] = hw[..] else {
                    return Err(Error::invalid(
                        "max_shape",
                        format!("expected two values H,W, got {}", hw.len()),
                    ));
                };
                Some((h, w))
            } else {
                None
            };
            let (points, distances) = (inputs.data("points")?, inputs.data("distances")?);
            results.push((
                "output".into(),
                boxes::distance2bbox(&points, &distances, max_shape)?,
            ));
            if let Some(g) = optional(inputs, "grad_out")? {
                let grad = boxes::distance2bbox_backward(&g, &points, &distances, max_shape)?;
                results.push(("grad_distances".into(), grad));
            }
        }
        "bbox2distance" => {
            let max_dist = if inputs.has_meta("max_dist") {
                Some(inputs.parse("max_dist", "a float")?)
            } else {
                None
            };
            let eps = inputs.parse_or("eps", "a float", BBOX2DISTANCE_EPS)?;
            let (points, b) = (inputs.data("points")?, inputs.data("boxes")?);
            results.push((
                "output".into(),
                boxes::bbox2distance(&points, &b, max_dist, eps)?,
            ));
        }
        "overlaps_aligned" | "box_overlaps" => {
            let (kind, cfg) = overlap_config(inputs)?;
            let (a, b) = (inputs.data("a")?, inputs.data("b")?);
            let output = if op == "box_overlaps" {
                boxes::box_overlaps(&a, &b, kind, &cfg)?
            } else {
                boxes::overlaps_aligned(&a, &b, kind, &cfg)?
            };
            results.push(("output".into(), output));
        }
        _ => giou_loss(inputs, &mut results)?,
    }
    Ok(results)
}

fn giou_loss(inputs: &ParityInputs<'_>, results: &mut Results) -> Result<()> {
    let name = if inputs.has_meta("reduction") {
        inputs.meta("reduction")?
    } else {
        "mean"
    };
    let reduction = Reduction::from_name(name).ok_or_else(|| {
        Error::invalid(
            "reduction",
            format!("expected none, mean or sum, got `{name}`"),
        )
    })?;
    let cfg = GiouLossConfig {
        eps: inputs.parse_or("eps", "a float", GIOU_LOSS_EPS)?,
        reduction,
        loss_weight: inputs.parse_or("loss_weight", "a float", 1.0)?,
    };
    let avg_factor = if inputs.has_meta("avg_factor") {
        Some(inputs.parse("avg_factor", "a float")?)
    } else {
        None
    };
    let (pred, target) = (inputs.data("pred")?, inputs.data("target")?);
    let weight = optional(inputs, "weight")?;
    let weighting = LossWeighting::new(weight.as_ref(), avg_factor);
    results.push((
        "output".into(),
        boxes::giou_loss(&pred, &target, weighting, &cfg)?,
    ));
    let Some(g) = optional(inputs, "grad_out")? else {
        return Ok(());
    };
    let grad = boxes::giou_loss_backward(&g, &pred, &target, weighting, &cfg)?;
    results.push(("grad_pred".into(), grad));
    if reduction != Reduction::None {
        let upstream = g.to_vec::<f64>()?;
        let [value] = upstream[..] else {
            return Err(Error::shape("grad_out", "[] for a reduced loss", g.shape()));
        };
        let LossAndGrad { loss, grad } =
            boxes::giou_loss_fused(&pred, &target, weighting, &cfg, value)?;
        results.push(("fused_output".into(), loss));
        results.push(("fused_grad_pred".into(), grad));
    }
    Ok(())
}
