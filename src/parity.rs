//! `detkd parity`: run one op on tensors from a safetensors file, the way a user's PyTorch code would, and
//! return the output and input gradients, so detkd can be checked against any reference implementation.
//!
//! The input file's metadata names the op and its configuration; its tensors are the op's inputs and,
//! optionally, `grad_out`. Metadata keys (all values are strings):
//!
//! | key | ops | meaning |
//! | --- | --- | --- |
//! | `op` | all | `roi_align` or `roi_align_multilevel` |
//! | `dtype` | all | optional: `f32`, `f64`, `f16`, `bf16`; data inputs (not boxes) are cast to it first (default: as stored) |
//! | `output_size` | roi_align* | `"PH,PW"` |
//! | `sampling_ratio` | roi_align* | integer; > 0 fixed grid, ≤ 0 adaptive |
//! | `aligned` | roi_align* | `true` / `false` |
//! | `deterministic` | roi_align* | optional `true` / `false` (CUDA backward) |
//! | `spatial_scale` | roi_align | float |
//! | `spatial_scales` | roi_align_multilevel | comma-separated floats, finest level first |
//! | `level_rule` | roi_align_multilevel | `detectron2` or `mmdet` |
//!
//! Tensors: `features` (multilevel: `features.0`, `features.1`, …), `rois` `[K, 5]`, optional `grad_out`.
//! Results: `output`, and with `grad_out`: `grad_features` (multilevel: `grad_features.0`, …).

use crate::error::{Error, Result};
use crate::ops::roi_align::{self, FpnLevels, LevelRule, RoiAlignConfig};
use crate::tensor::io::NamedTensors;
use crate::tensor::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::str::FromStr;

/// Runs the op described by `inputs` on `device` and returns its results (on the host).
pub fn run(inputs: &NamedTensors, device: &Device) -> Result<NamedTensors> {
    let dtype = match inputs.metadata.get("dtype") {
        Some(name) => Some(DType::from_name(name).ok_or_else(|| {
            Error::invalid(
                "dtype",
                format!("expected f32, f64, f16 or bf16, got `{name}`"),
            )
        })?),
        None => None,
    };
    // Boxes stay on the host at their stored precision: ops compute coordinates in f32 (f64 for f64 data)
    // whatever the storage dtype, so rounding them to half would test something no caller does.
    let load = |name: &str| -> Result<Tensor> {
        let t = inputs.get(name)?;
        match dtype {
            _ if name == "rois" => t.try_clone(),
            Some(d) if d != t.dtype() => t.to_dtype(d)?.to_device(device),
            _ => t.to_device(device),
        }
    };
    let op = inputs.meta("op")?;
    let results = match op {
        "roi_align" | "roi_align_multilevel" => {
            run_roi_align(inputs, op == "roi_align_multilevel", &load)?
        }
        other => {
            return Err(Error::invalid(
                "op",
                format!("unknown op `{other}` (known: roi_align, roi_align_multilevel)"),
            ))
        }
    };
    let mut out = NamedTensors {
        metadata: inputs.metadata.clone(),
        ..Default::default()
    };
    out.metadata.insert("device".into(), device.to_string());
    for (name, t) in results {
        out.tensors.insert(name, t.to_device(&Device::Cpu)?);
    }
    Ok(out)
}

fn parse<T: FromStr>(inputs: &NamedTensors, key: &str, what: &str) -> Result<T> {
    let raw = inputs.meta(key)?;
    raw.trim()
        .parse()
        .map_err(|_| Error::invalid(key, format!("expected {what}, got `{raw}`")))
}

fn parse_list<T: FromStr>(inputs: &NamedTensors, key: &str, what: &str) -> Result<Vec<T>> {
    let raw = inputs.meta(key)?;
    raw.split(',')
        .map(|v| {
            v.trim().parse().map_err(|_| {
                Error::invalid(key, format!("expected comma-separated {what}, got `{raw}`"))
            })
        })
        .collect()
}

fn parse_bool(inputs: &NamedTensors, key: &str, default: Option<bool>) -> Result<bool> {
    match (inputs.metadata.get(key).map(String::as_str), default) {
        (Some("true"), _) => Ok(true),
        (Some("false"), _) => Ok(false),
        (Some(other), _) => Err(Error::invalid(
            key,
            format!("expected `true` or `false`, got `{other}`"),
        )),
        (None, Some(d)) => Ok(d),
        (None, None) => inputs.meta(key).map(|_| false),
    }
}

fn run_roi_align(
    inputs: &NamedTensors,
    multilevel: bool,
    load: &dyn Fn(&str) -> Result<Tensor>,
) -> Result<Vec<(String, Tensor)>> {
    let size: Vec<usize> = parse_list(inputs, "output_size", "two positive integers")?;
    let [ph, pw] = size[..] else {
        return Err(Error::invalid(
            "output_size",
            format!("expected `PH,PW`, got {size:?}"),
        ));
    };
    let cfg = RoiAlignConfig {
        output_size: (ph, pw),
        sampling_ratio: parse(inputs, "sampling_ratio", "an integer")?,
        aligned: parse_bool(inputs, "aligned", None)?,
        deterministic: parse_bool(inputs, "deterministic", Some(false))?,
    };
    let rois = load("rois")?;
    let grad_out = match inputs.tensors.contains_key("grad_out") {
        true => Some(load("grad_out")?),
        false => None,
    };
    let mut results = Vec::new();
    if multilevel {
        let scales: Vec<f64> = parse_list(inputs, "spatial_scales", "floats")?;
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
            .map(|l| load(&format!("features.{l}")))
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
        let scale: f64 = parse(inputs, "spatial_scale", "a float")?;
        let features = load("features")?;
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
