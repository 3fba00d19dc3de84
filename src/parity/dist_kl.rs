//! Parity entries for the distribution losses (`src/ops/dist_kl`).
//!
//! Ops and their metadata keys (all optional except `op`; defaults are the ops' config defaults):
//! - `kd_kl_div`: `temperature` (float, default 10), `normalizer` (`bins_mean` | `bins_sum`, default
//!   `bins_mean` = mmdet's `.mean(1)`), `reduction` (`none` | `sum` | `mean`, default `mean`), `avg_factor`
//!   (float), `loss_weight` (float, default 1), `fused` (`true` | `false`, default `false`). Tensors:
//!   `student`, `teacher` `[R, B]`, optional `weight` `[R]`, optional `grad_out`. Results: `output`,
//!   `grad_student` (when `grad_out` is given, or always when fused).
//! - `distribution_focal_loss`: `reg_max` (integer, default 16), `reduction`, `avg_factor`, `loss_weight`,
//!   `fused` as above. Tensors: `pred` `[N, reg_max + 1]`, `label` `[N]` (kept at its stored dtype on the
//!   host), optional `weight` `[N]`, optional `grad_out`. Results: `output`, `grad_pred`.
//! - `integral`: `reg_max` (integer, default 16). Tensors: `logits` `[..., reg_max + 1]`, optional
//!   `grad_out`. Results: `output`, `grad_logits`.
//!
//! `fused = true` runs the fused loss + gradient entry with the scalar upstream gradient `grad_out`
//! (1 when absent); it needs reduction `sum` or `mean`.

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::dist_kl::{
    self, DflConfig, IntegralConfig, KdKlConfig, KlNormalizer, LossWeighting, Reduction,
};
use crate::tensor::Tensor;

pub(super) const OPS: &[&str] = &["kd_kl_div", "distribution_focal_loss", "integral"];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    match op {
        "kd_kl_div" => kd_kl_div(inputs),
        "distribution_focal_loss" => distribution_focal_loss(inputs),
        "integral" => integral(inputs),
        _ => Err(Error::invalid("op", format!("`{op}` is not a dist_kl op"))),
    }
}

/// The keys shared by both losses.
struct LossKeys {
    reduction: Reduction,
    avg_factor: Option<f64>,
    loss_weight: f64,
    fused: bool,
    weight: Option<Tensor>,
    grad_out: Option<Tensor>,
}

impl LossKeys {
    fn parse(inputs: &ParityInputs<'_>) -> Result<LossKeys> {
        let name = if inputs.has_meta("reduction") {
            inputs.meta("reduction")?
        } else {
            "mean"
        };
        let reduction = Reduction::from_name(name).ok_or_else(|| {
            Error::invalid(
                "reduction",
                format!("expected none, sum or mean, got `{name}`"),
            )
        })?;
        let avg_factor = if inputs.has_meta("avg_factor") {
            Some(inputs.parse("avg_factor", "a float")?)
        } else {
            None
        };
        let optional = |name: &str| -> Result<Option<Tensor>> {
            if inputs.has(name) {
                Ok(Some(inputs.data(name)?))
            } else {
                Ok(None)
            }
        };
        Ok(LossKeys {
            reduction,
            avg_factor,
            loss_weight: inputs.parse_or("loss_weight", "a float", 1.0)?,
            fused: inputs.parse_bool("fused", Some(false))?,
            weight: optional("weight")?,
            grad_out: optional("grad_out")?,
        })
    }

    fn weighting(&self) -> LossWeighting<'_> {
        LossWeighting::new(self.weight.as_ref(), self.avg_factor)
    }

    /// The scalar upstream gradient of a fused run.
    fn grad_scale(&self) -> Result<f64> {
        match &self.grad_out {
            None => Ok(1.0),
            Some(g) if g.numel() == 1 => Ok(g.to_vec::<f64>()?[0]),
            Some(g) => Err(Error::shape(
                "grad_out",
                "a scalar ([] or [1]) for a fused run",
                g.shape(),
            )),
        }
    }
}

fn kd_kl_div(inputs: &ParityInputs<'_>) -> Result<Results> {
    let keys = LossKeys::parse(inputs)?;
    let normalizer_name = if inputs.has_meta("normalizer") {
        inputs.meta("normalizer")?
    } else {
        KlNormalizer::default().name()
    };
    let cfg = KdKlConfig {
        temperature: inputs.parse_or(
            "temperature",
            "a float",
            KdKlConfig::default().temperature,
        )?,
        normalizer: KlNormalizer::from_name(normalizer_name).ok_or_else(|| {
            Error::invalid(
                "normalizer",
                format!("expected bins_mean or bins_sum, got `{normalizer_name}`"),
            )
        })?,
        reduction: keys.reduction,
        loss_weight: keys.loss_weight,
    };
    let student = inputs.data("student")?;
    let teacher = inputs.data("teacher")?;
    let weighting = keys.weighting();
    if keys.fused {
        let fused =
            dist_kl::kd_kl_div_fused(&student, &teacher, weighting, &cfg, keys.grad_scale()?)?;
        return Ok(vec![
            ("output".into(), fused.loss),
            ("grad_student".into(), fused.grad),
        ]);
    }
    let mut results = vec![(
        "output".to_string(),
        dist_kl::kd_kl_div(&student, &teacher, weighting, &cfg)?,
    )];
    if let Some(g) = &keys.grad_out {
        let grad = dist_kl::kd_kl_div_backward(g, &student, &teacher, weighting, &cfg)?;
        results.push(("grad_student".into(), grad));
    }
    Ok(results)
}

fn reg_max(inputs: &ParityInputs<'_>) -> Result<usize> {
    inputs.parse_or("reg_max", "a positive integer", dist_kl::GFL_REG_MAX)
}

fn distribution_focal_loss(inputs: &ParityInputs<'_>) -> Result<Results> {
    let keys = LossKeys::parse(inputs)?;
    let cfg = DflConfig {
        reg_max: reg_max(inputs)?,
        reduction: keys.reduction,
        loss_weight: keys.loss_weight,
    };
    let pred = inputs.data("pred")?;
    let label = inputs.host("label")?;
    let weighting = keys.weighting();
    if keys.fused {
        let fused = dist_kl::distribution_focal_loss_fused(
            &pred,
            &label,
            weighting,
            &cfg,
            keys.grad_scale()?,
        )?;
        return Ok(vec![
            ("output".into(), fused.loss),
            ("grad_pred".into(), fused.grad),
        ]);
    }
    let mut results = vec![(
        "output".to_string(),
        dist_kl::distribution_focal_loss(&pred, &label, weighting, &cfg)?,
    )];
    if let Some(g) = &keys.grad_out {
        let grad = dist_kl::distribution_focal_loss_backward(g, &pred, &label, weighting, &cfg)?;
        results.push(("grad_pred".into(), grad));
    }
    Ok(results)
}

fn integral(inputs: &ParityInputs<'_>) -> Result<Results> {
    let cfg = IntegralConfig {
        reg_max: reg_max(inputs)?,
    };
    let logits = inputs.data("logits")?;
    let mut results = vec![("output".to_string(), dist_kl::integral(&logits, &cfg)?)];
    if inputs.has("grad_out") {
        let g = inputs.data("grad_out")?;
        results.push((
            "grad_logits".into(),
            dist_kl::integral_backward(&g, &logits, &cfg)?,
        ));
    }
    Ok(results)
}
