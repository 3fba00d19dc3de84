//! Parity entry for the HGD engineering proposal (src/distill/hgd).
//!
//! | op | tensors | results |
//! | --- | --- | --- |
//! | `hgd` | `student.stage.<k>`, `teacher.stage.<k>` (backbone stages), `student.fpn.<l>`, `teacher.fpn.<l>` (FPN levels), `boxes` `[M, 4]` with `box_image` (i64 `[M]`, ascending), the adapters `distill.hgd.adapter.<k>.weight` / `.bias` (stages first, then FPN levels) | `loss`, `loss_hgd_proposal`, `grad.student.stage.<k>`, `grad.student.fpn.<l>`, `grad.distill.hgd.adapter.<k>.weight` / `.bias` |
//!
//! Metadata: `stage_strides` and `fpn_strides` (comma-separated; the teacher's, where the boxes are
//! projected; `fpn_strides` may be absent without FPN levels); optional [`HgdConfig`] keys with its
//! defaults: `temperature`, `gt_share`, `gamma`, `micro_weighting` and `macro_weighting`
//! (`true`/`false`).

use super::gkd::{gradient_results, image_targets, levels, load_params};
use super::{ParityInputs, Results};
use crate::distill::hgd::{HgdConfig, HgdDistiller, HgdInputs};
use crate::distill::DetectorShape;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::tensor::Tensor;

pub(super) const OPS: &[&str] = &["hgd"];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    match op {
        "hgd" => hgd(inputs),
        _ => Err(Error::invalid("op", format!("`{op}` is not an HGD op"))),
    }
}

fn hgd(inputs: &ParityInputs<'_>) -> Result<Results> {
    let d = HgdConfig::default();
    let cfg = HgdConfig {
        temperature: inputs.parse_or("temperature", "a positive float", d.temperature)?,
        gt_share: inputs.parse_or("gt_share", "a float in [0, 1]", d.gt_share)?,
        gamma: inputs.parse_or("gamma", "a float", d.gamma)?,
        micro_weighting: inputs.parse_bool("micro_weighting", Some(d.micro_weighting))?,
        macro_weighting: inputs.parse_bool("macro_weighting", Some(d.macro_weighting))?,
    };
    let (s_stages, t_stages) = (
        levels(inputs, "student", "stage")?,
        levels(inputs, "teacher", "stage")?,
    );
    let (s_fpn, t_fpn) = (
        levels(inputs, "student", "fpn")?,
        levels(inputs, "teacher", "fpn")?,
    );
    let stage_strides: Vec<f64> = inputs.parse_list("stage_strides", "floats")?;
    let fpn_strides: Vec<f64> = if inputs.has_meta("fpn_strides") {
        inputs.parse_list("fpn_strides", "floats")?
    } else {
        Vec::new()
    };
    let widths = |v: &[Tensor], what: &str| -> Result<Vec<usize>> {
        v.iter()
            .map(|t| match t.shape() {
                &[_, c, _, _] => Ok(c),
                s => Err(Error::shape(what, "[B, C, H, W]", s)),
            })
            .collect()
    };
    let detector = |stages: &[Tensor], fpn: &[Tensor], side: &str| -> Result<DetectorShape> {
        Ok(DetectorShape {
            stage_channels: widths(stages, side)?,
            fpn_channels: widths(fpn, side)?.first().copied().unwrap_or(1),
            num_classes: 1,
            reg_max: 0,
        })
    };
    let mut store = ParamStore::new();
    let distiller = HgdDistiller::new(
        &mut store,
        &detector(&s_stages, &s_fpn, "student")?,
        &detector(&t_stages, &t_fpn, "teacher")?,
        s_fpn.len(),
        cfg,
        0,
    )?;
    load_params(&mut store, inputs)?;
    let batch = s_stages
        .first()
        .or(s_fpn.first())
        .map(|t| t.shape()[0])
        .unwrap_or(0);
    let images = image_targets(inputs, batch, 1)?;
    let student = HgdInputs {
        stages: s_stages.iter().collect(),
        stage_strides: stage_strides.clone(),
        fpn: s_fpn.iter().collect(),
        fpn_strides: fpn_strides.clone(),
    };
    let teacher = HgdInputs {
        stages: t_stages.iter().collect(),
        stage_strides,
        fpn: t_fpn.iter().collect(),
        fpn_strides,
    };
    let out = distiller.compute(&store, &student, &teacher, &images)?;
    let names: Vec<String> = (0..s_stages.len())
        .map(|k| format!("student.stage.{k}"))
        .chain((0..s_fpn.len()).map(|l| format!("student.fpn.{l}")))
        .collect();
    let dtype = s_stages
        .first()
        .or(s_fpn.first())
        .map(|t| t.dtype())
        .unwrap_or(crate::DType::F64);
    gradient_results(&store, out, &names, dtype)
}
