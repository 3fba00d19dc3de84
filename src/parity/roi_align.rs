//! Parity entries for RoIAlign. Keys: `output_size` (`"PH,PW"`), `sampling_ratio`, `aligned`, optional
//! `deterministic`; single level: `spatial_scale`; multilevel: `spatial_scales` (finest first) and
//! `level_rule` (`detectron2` | `mmdet`). Tensors: `features` (multilevel `features.0`, …), `rois` `[K, 5]`,
//! optional `grad_out`. Results: `output`, `grad_features` (multilevel `grad_features.0`, …).

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::roi_align::{self, FpnLevels, LevelRule, RoiAlignConfig};
use crate::tensor::Tensor;
use std::collections::BTreeMap;

pub(super) const OPS: &[&str] = &["roi_align", "roi_align_multilevel"];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    let size: Vec<usize> = inputs.parse_list("output_size", "two positive integers")?;
    let [ph, pw] = size[..] else {
        return Err(Error::invalid(
            "output_size",
            format!("expected `PH,PW`, got {size:?}"),
        ));
    };
    let cfg = RoiAlignConfig {
        output_size: (ph, pw),
        sampling_ratio: inputs.parse("sampling_ratio", "an integer")?,
        aligned: inputs.parse_bool("aligned", None)?,
        deterministic: inputs.parse_bool("deterministic", Some(false))?,
    };
    let rois = inputs.host("rois")?;
    let grad_out = if inputs.has("grad_out") {
        Some(inputs.data("grad_out")?)
    } else {
        None
    };
    let mut results = Vec::new();
    if op == "roi_align_multilevel" {
        let scales: Vec<f64> = inputs.parse_list("spatial_scales", "floats")?;
        let rule_name = inputs.meta("level_rule")?;
        let rule = LevelRule::from_name(rule_name).ok_or_else(|| {
            Error::invalid(
                "level_rule",
                format!("expected detectron2 or mmdet, got `{rule_name}`"),
            )
        })?;
        let levels = FpnLevels {
            spatial_scales: scales,
            rule,
        };
        let features: Vec<Tensor> = (0..levels.spatial_scales.len())
            .map(|l| inputs.data(&format!("features.{l}")))
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = features.iter().collect();
        results.push((
            "output".to_string(),
            roi_align::roi_align_multilevel(&refs, &rois, &levels, &cfg)?,
        ));
        if let Some(g) = &grad_out {
            let shapes: Vec<&[usize]> = features.iter().map(|f| f.shape()).collect();
            let grads = roi_align::roi_align_multilevel_backward(g, &rois, &shapes, &levels, &cfg)?;
            for (l, grad) in grads.into_iter().enumerate() {
                results.push((format!("grad_features.{l}"), grad));
            }
        }
    } else {
        let scale: f64 = inputs.parse("spatial_scale", "a float")?;
        let features = inputs.data("features")?;
        results.push((
            "output".to_string(),
            roi_align::roi_align(&features, &rois, scale, &cfg)?,
        ));
        if let Some(g) = &grad_out {
            let grad = roi_align::roi_align_backward(g, &rois, features.shape(), scale, &cfg)?;
            results.push(("grad_features".to_string(), grad));
        }
    }
    Ok(results)
}

/// Metadata for a parity input file describing a single-level RoIAlign call.
pub fn roi_align_metadata(cfg: &RoiAlignConfig, spatial_scale: f64) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("op".into(), "roi_align".into()),
        (
            "output_size".into(),
            format!("{},{}", cfg.output_size.0, cfg.output_size.1),
        ),
        ("sampling_ratio".into(), cfg.sampling_ratio.to_string()),
        ("aligned".into(), cfg.aligned.to_string()),
        ("deterministic".into(), cfg.deterministic.to_string()),
        ("spatial_scale".into(), spatial_scale.to_string()),
    ])
}
