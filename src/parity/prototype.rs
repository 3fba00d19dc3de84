//! Parity entries for the prototype family (src/ops/prototype).
//!
//! | op | tensors | results |
//! | --- | --- | --- |
//! | `soft_assignment` | `x` `[N, D]`, `prototypes` `[K, D]`, optional `grad_out` `[N, K]` | `output` `[N, K]`; with `grad_out`: `grad_x`, `grad_prototypes` |
//! | `max_cosine_match` | `x` `[N, D]`, `labels` (i64 `[N]`), `prototypes` `[K, D]`, `prototype_labels` (i64 `[K]`) | `similarity` `[N]` (NaN: no prototype of the row's class), `index` (i64 `[N]`, −1: none) |
//! | `gkd_robust_weights` | `student` `[N, Ds]`, `teacher` `[N, Dt]`, `labels`, `student_prototypes` `[K, Ds]`, `teacher_prototypes` `[K, Dt]`, `prototype_labels` | `weight` `[N]` |
//!
//! Metadata keys (all optional): `temperature` (float > 0, default 1.0) and `output` (`probabilities` |
//! `log_probabilities`, default `probabilities`) for `soft_assignment`; `num_classes` (integer ≥ 1,
//! default 80) and `eps` (float, default 1e-12) for `max_cosine_match` and `gkd_robust_weights`. Labels
//! keep their stored dtype (i64) and stay on the host; float inputs are cast to the file's `dtype`.

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::prototype::{
    self, AssignmentOutput, MaxCosineConfig, RobustWeightInputs, SoftAssignConfig,
};

pub(super) const OPS: &[&str] = &["soft_assignment", "max_cosine_match", "gkd_robust_weights"];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    match op {
        "soft_assignment" => soft_assignment(inputs),
        "max_cosine_match" => max_cosine_match(inputs),
        "gkd_robust_weights" => gkd_robust_weights(inputs),
        _ => Err(Error::invalid(
            "op",
            format!("`{op}` is not a prototype op"),
        )),
    }
}

fn soft_assignment(inputs: &ParityInputs<'_>) -> Result<Results> {
    let defaults = SoftAssignConfig::default();
    let output = if inputs.has_meta("output") {
        match inputs.meta("output")? {
            "probabilities" => AssignmentOutput::Probabilities,
            "log_probabilities" => AssignmentOutput::LogProbabilities,
            other => {
                return Err(Error::invalid(
                    "output",
                    format!("expected probabilities or log_probabilities, got `{other}`"),
                ))
            }
        }
    } else {
        defaults.output
    };
    let cfg = SoftAssignConfig {
        temperature: inputs.parse_or("temperature", "a positive float", defaults.temperature)?,
        output,
    };
    let (x, p) = (inputs.data("x")?, inputs.data("prototypes")?);
    let out = prototype::soft_assignment(&x, &p, &cfg)?;
    let mut results: Results = Vec::new();
    if inputs.has("grad_out") {
        let g = inputs.data("grad_out")?;
        let (dx, dp) = prototype::soft_assignment_backward(&x, &p, &out, &g, &cfg, true)?;
        results.push(("grad_x".into(), dx));
        if let Some(dp) = dp {
            results.push(("grad_prototypes".into(), dp));
        }
    }
    results.push(("output".into(), out));
    Ok(results)
}

fn match_config(inputs: &ParityInputs<'_>) -> Result<MaxCosineConfig> {
    let defaults = MaxCosineConfig::default();
    Ok(MaxCosineConfig {
        num_classes: inputs.parse_or("num_classes", "a positive integer", defaults.num_classes)?,
        eps: inputs.parse_or("eps", "a positive float", defaults.eps)?,
    })
}

fn max_cosine_match(inputs: &ParityInputs<'_>) -> Result<Results> {
    let cfg = match_config(inputs)?;
    let (x, p) = (inputs.data("x")?, inputs.data("prototypes")?);
    let (labels, proto_labels) = (inputs.host("labels")?, inputs.host("prototype_labels")?);
    let out = prototype::max_cosine_match(&x, &labels, &p, &proto_labels, &cfg)?;
    Ok(vec![
        ("similarity".into(), out.similarity),
        ("index".into(), out.index),
    ])
}

fn gkd_robust_weights(inputs: &ParityInputs<'_>) -> Result<Results> {
    let cfg = match_config(inputs)?;
    let (student, teacher) = (inputs.data("student")?, inputs.data("teacher")?);
    let (ps, pt) = (
        inputs.data("student_prototypes")?,
        inputs.data("teacher_prototypes")?,
    );
    let (labels, proto_labels) = (inputs.host("labels")?, inputs.host("prototype_labels")?);
    let weight = prototype::gkd_robust_weights(
        &RobustWeightInputs {
            student: &student,
            teacher: &teacher,
            labels: &labels,
            student_prototypes: &ps,
            teacher_prototypes: &pt,
            prototype_labels: &proto_labels,
        },
        &cfg,
    )?;
    Ok(vec![("weight".into(), weight)])
}
