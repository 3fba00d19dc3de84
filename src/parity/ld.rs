//! Parity entries for LD (`src/distill/ld.rs`) and for the GFL loss it distils on top of
//! (`src/distill/gfl.rs`).
//!
//! Both read per-level head outputs `[B, C, H_l, W_l]` (levels `0, 1, …` while the names exist) and a
//! batch's dense assignment (kept at its stored dtype on the host; index and label tensors hold integral
//! values in any dtype):
//!
//! | tensor | shape | meaning |
//! | --- | --- | --- |
//! | `anchor_boxes` | `[A, 4]` | every anchor box of one image, pixels, levels finest first |
//! | `points`, `strides` | `[A, 2]`, `[A]` | anchor centres and strides |
//! | `positives` | `[P]` | flattened positive anchors `b·A + a`, ascending |
//! | `positive_boxes`, `positive_labels` | `[P, 4]`, `[P]` | their ground-truth boxes and labels |
//! | `gt_boxes.{i}`, `gt_labels.{i}`, `thresholds.{i}` | `[G_i, 4]`, `[G_i]`, `[G_i]` | image `i`'s ground truth and ATSS thresholds (images `0, 1, …` while present) |
//!
//! - `ld`: tensors `student.cls.{l}`, `student.reg.{l}`, `teacher.cls.{l}`, `teacher.reg.{l}`. Keys: `preset`
//!   (`ld_repo`, the default = [`LdConfig::default`], or `mmdet` = [`LdConfig::mmdet`]), then optional
//!   overrides `ld_weight`, `ld_temperature`, `vlr_weight`, `vlr_temperature`, `kd_weight`,
//!   `kd_temperature`, `vlr_lower_ratio` (floats), `vlr_overlap` (`first_area` | `union`), `reg_max`
//!   (integer, default 16). Results: `loss`, every computed term (`loss_ld`, `loss_ld_vlr`, `loss_kd`), and
//!   the gradients of `loss`, `grad.student.cls.{l}`, `grad.student.reg.{l}`.
//! - `gfl_loss`: tensors `cls.{l}`, `reg.{l}`. Keys (defaults = [`GflLossConfig::default`]): `reg_max`,
//!   `qfl_beta`, `qfl_weight`, `giou_weight`, `dfl_weight`. Results: `loss_qfl`, `loss_bbox`, `loss_dfl`
//!   and each term's own gradients `grad.<term>.cls.{l}`, `grad.<term>.reg.{l}` (zeros where a term does not
//!   reach an input).

use super::{ParityInputs, Results};
use crate::autograd::{Tape, Var};
use crate::distill::gfl::{flatten_head, gfl_loss, GflLossConfig};
use crate::distill::ld::{HeadTensors, LdConfig, LdDistiller};
use crate::distill::{Box4, DenseAssignment, DetectorOutputs, ImageTargets};
use crate::error::{Error, Result};
use crate::ops::boxes::{DiouOverlap, OverlapConfig};
use crate::tensor::Tensor;

pub(super) const OPS: &[&str] = &["ld", "gfl_loss"];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    match op {
        "ld" => ld(inputs),
        "gfl_loss" => gfl(inputs),
        _ => Err(Error::invalid("op", format!("`{op}` is not an LD op"))),
    }
}

/// `{prefix}.0`, `{prefix}.1`, … while present.
fn levels(inputs: &ParityInputs<'_>, prefix: &str) -> Result<Vec<Tensor>> {
    let mut out = Vec::new();
    while inputs.has(&format!("{prefix}.{}", out.len())) {
        out.push(inputs.data(&format!("{prefix}.{}", out.len()))?);
    }
    Ok(out)
}

fn host_values(inputs: &ParityInputs<'_>, name: &str, cols: Option<usize>) -> Result<Vec<f64>> {
    let t = inputs.host(name)?;
    let ok = match cols {
        None => t.rank() == 1,
        Some(c) => t.rank() == 2 && t.shape()[1] == c,
    };
    if !ok {
        let want = cols.map_or("[N]".to_string(), |c| format!("[N, {c}]"));
        return Err(Error::shape(name, want, t.shape()));
    }
    t.to_vec::<f64>()
}

fn indices(inputs: &ParityInputs<'_>, name: &str) -> Result<Vec<usize>> {
    host_values(inputs, name, None)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if v >= 0.0 && v.fract() == 0.0 && v < usize::MAX as f64 {
                Ok(v as usize)
            } else {
                Err(Error::invalid(
                    name,
                    format!("entry {i} is {v}, expected a non-negative integer"),
                ))
            }
        })
        .collect()
}

fn boxes(inputs: &ParityInputs<'_>, name: &str) -> Result<Vec<Box4>> {
    Ok(host_values(inputs, name, Some(4))?
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect())
}

/// The dense assignment of a batch of `batch` images (see the module docs).
fn assignment(inputs: &ParityInputs<'_>, batch: usize) -> Result<DenseAssignment> {
    let anchor_boxes = boxes(inputs, "anchor_boxes")?;
    let points = host_values(inputs, "points", Some(2))?
        .chunks_exact(2)
        .map(|c| [c[0], c[1]])
        .collect();
    let mut images = Vec::new();
    let mut thresholds = Vec::new();
    while inputs.has(&format!("gt_boxes.{}", images.len())) {
        let i = images.len();
        images.push(ImageTargets {
            boxes: boxes(inputs, &format!("gt_boxes.{i}"))?,
            labels: indices(inputs, &format!("gt_labels.{i}"))?,
        });
        thresholds.push(host_values(inputs, &format!("thresholds.{i}"), None)?);
    }
    Ok(DenseAssignment {
        batch,
        anchors_per_image: anchor_boxes.len(),
        points,
        strides: host_values(inputs, "strides", None)?,
        anchor_boxes,
        positives: indices(inputs, "positives")?,
        positive_boxes: boxes(inputs, "positive_boxes")?,
        positive_labels: indices(inputs, "positive_labels")?,
        images,
        thresholds,
    })
}

fn batch_of(levels: &[Tensor], name: &str) -> Result<usize> {
    levels
        .first()
        .and_then(|t| t.shape().first().copied())
        .ok_or_else(|| Error::invalid(name, format!("expected `{name}.0` of shape [B, C, H, W]")))
}

fn ld_config(inputs: &ParityInputs<'_>) -> Result<LdConfig> {
    let preset = if inputs.has_meta("preset") {
        inputs.meta("preset")?
    } else {
        "ld_repo"
    };
    let mut cfg = match preset {
        "ld_repo" => LdConfig::default(),
        "mmdet" => LdConfig::mmdet(),
        other => {
            return Err(Error::invalid(
                "preset",
                format!("expected ld_repo or mmdet, got `{other}`"),
            ))
        }
    };
    let float = |key: &str, default: f64| inputs.parse_or(key, "a float", default);
    cfg.main_ld.weight = float("ld_weight", cfg.main_ld.weight)?;
    cfg.main_ld.temperature = float("ld_temperature", cfg.main_ld.temperature)?;
    cfg.vlr_ld.weight = float("vlr_weight", cfg.vlr_ld.weight)?;
    cfg.vlr_ld.temperature = float("vlr_temperature", cfg.vlr_ld.temperature)?;
    cfg.main_kd.weight = float("kd_weight", cfg.main_kd.weight)?;
    cfg.main_kd.temperature = float("kd_temperature", cfg.main_kd.temperature)?;
    cfg.vlr_lower_ratio = float("vlr_lower_ratio", cfg.vlr_lower_ratio)?;
    if inputs.has_meta("vlr_overlap") {
        let name = inputs.meta("vlr_overlap")?;
        let overlap = DiouOverlap::from_name(name).ok_or_else(|| {
            Error::invalid(
                "vlr_overlap",
                format!("expected first_area or union, got `{name}`"),
            )
        })?;
        cfg.vlr_overlap = OverlapConfig {
            diou_overlap: overlap,
            ..cfg.vlr_overlap
        };
    }
    cfg.reg_max = inputs.parse_or("reg_max", "a positive integer", cfg.reg_max)?;
    Ok(cfg)
}

fn ld(inputs: &ParityInputs<'_>) -> Result<Results> {
    let cfg = ld_config(inputs)?;
    let [s_cls, s_reg, t_cls, t_reg] = ["student.cls", "student.reg", "teacher.cls", "teacher.reg"]
        .map(|prefix| levels(inputs, prefix));
    let (s_cls, s_reg, t_cls, t_reg) = (s_cls?, s_reg?, t_cls?, t_reg?);
    let assign = assignment(inputs, batch_of(&s_cls, "student.cls")?)?;
    let (sc, sr, tc, tr): (Vec<&Tensor>, Vec<&Tensor>, Vec<&Tensor>, Vec<&Tensor>) = (
        s_cls.iter().collect(),
        s_reg.iter().collect(),
        t_cls.iter().collect(),
        t_reg.iter().collect(),
    );
    let out = LdDistiller::new(cfg)?.compute(
        &HeadTensors { cls: &sc, reg: &sr },
        &HeadTensors { cls: &tc, reg: &tr },
        &assign,
    )?;
    let like = &s_cls[0];
    let scalar = |v: f64| -> Result<Tensor> {
        Tensor::from_vec(vec![v], &[])?
            .into_dtype(like.dtype())?
            .to_device(&like.device())
    };
    let mut results: Results = vec![("loss".into(), scalar(out.loss)?)];
    for (name, value) in &out.terms {
        results.push((name.to_string(), scalar(*value)?));
    }
    let names = (0..s_cls.len())
        .map(|l| format!("cls.{l}"))
        .chain((0..s_reg.len()).map(|l| format!("reg.{l}")));
    for (name, grad) in names.zip(out.student_grads) {
        results.push((format!("grad.student.{name}"), grad));
    }
    Ok(results)
}

fn gfl(inputs: &ParityInputs<'_>) -> Result<Results> {
    let defaults = GflLossConfig::default();
    let cfg = GflLossConfig {
        qfl_beta: inputs.parse_or("qfl_beta", "a float", defaults.qfl_beta)?,
        qfl_weight: inputs.parse_or("qfl_weight", "a float", defaults.qfl_weight)?,
        giou_weight: inputs.parse_or("giou_weight", "a float", defaults.giou_weight)?,
        dfl_weight: inputs.parse_or("dfl_weight", "a float", defaults.dfl_weight)?,
        reg_max: inputs.parse_or("reg_max", "a positive integer", defaults.reg_max)?,
    };
    let cls = levels(inputs, "cls")?;
    let reg = levels(inputs, "reg")?;
    let assign = assignment(inputs, batch_of(&cls, "cls")?)?;
    let tape = Tape::new();
    let leaves: Vec<Var> = cls
        .iter()
        .chain(&reg)
        .map(|t| Ok(tape.leaf(t.try_clone()?)))
        .collect::<Result<_>>()?;
    let (cls_vars, reg_vars) = leaves.split_at(cls.len());
    let outputs = DetectorOutputs {
        stages: Vec::new(),
        stage_strides: Vec::new(),
        fpn: Vec::new(),
        fpn_strides: Vec::new(),
        cls: cls_vars.to_vec(),
        reg: reg_vars.to_vec(),
    };
    let (flat_cls, flat_reg) = flatten_head(&tape, &outputs)?;
    let out = gfl_loss(&tape, flat_cls, flat_reg, &assign, &cfg)?;
    let names: Vec<String> = (0..cls.len())
        .map(|l| format!("cls.{l}"))
        .chain((0..reg.len()).map(|l| format!("reg.{l}")))
        .collect();
    let mut results: Results = Vec::new();
    for term in &out.terms {
        results.push((term.name.to_string(), tape.value(term.value)?.try_clone()?));
        let grads = tape.backward(term.value)?;
        for ((name, &leaf), input) in names.iter().zip(&leaves).zip(cls.iter().chain(&reg)) {
            let grad = match grads.get(leaf) {
                Some(g) => g.try_clone()?,
                None => Tensor::zeros(input.shape(), input.dtype(), &input.device())?,
            };
            results.push((format!("grad.{}.{name}", term.name), grad));
        }
    }
    Ok(results)
}
