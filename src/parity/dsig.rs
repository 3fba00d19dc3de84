//! Parity entry for Dsig (src/distill/dsig.rs): the method's loss and gradients on given FPN maps and node
//! boxes, with given adapter weights.
//!
//! | `op` | tensors | results |
//! | --- | --- | --- |
//! | `dsig` | `student.fpn.<l>` `[B, C_s, H_l, W_l]`, `teacher.fpn.<l>` `[B, C_t, H_l, W_l]` (`l = 0, 1, …`, finest first), optional `teacher.cls.<l>` `[B, K, H_l, W_l]` (needed for mining), `nodes.fg` and `nodes.bg` (`[K, 5]` = image, x1, y1, x2, y2; rows of one image in order), `param.<name>` for every adapter entry (`distill.dsig.adapter.<l>.weight` / `.bias`; required when the widths differ or `always_adapt`) | `loss`, `term.<name>` (`[]`, f64), `grad.student.fpn.<l>`, `grad.param.<name>` |
//!
//! Metadata keys: `fpn_strides` (comma-separated, required); optional, with the defaults of
//! [`DsigConfig`]: `feat_weight`, `node_fg_weight`, `node_bg_weight`, `edge_weight`, `bg_weight_alpha`,
//! `bg_mining_threshold`, `edge_eps` (floats), `adaptive_bg_weight`, `bg_mining`, `always_adapt` (bools),
//! `levels` (`mmdet`, `detectron2` or `canonical:<size>`).

use super::{ParityInputs, Results};
use crate::distill::dsig::{DsigConfig, DsigDistiller, DsigNodes, NodeLevels};
use crate::distill::{DetectorShape, MethodGradients};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::roi_align::LevelRule;
use crate::tensor::Tensor;

pub(super) const OPS: &[&str] = &["dsig"];

/// Tensors `<prefix>0`, `<prefix>1`, … as data inputs, until the first missing index.
pub(super) fn levels(inputs: &ParityInputs<'_>, prefix: &str) -> Result<Vec<Tensor>> {
    let mut out = Vec::new();
    while inputs.has(&format!("{prefix}{}", out.len())) {
        out.push(inputs.data(&format!("{prefix}{}", out.len()))?);
    }
    Ok(out)
}

/// The FPN maps of a Dsig or DRKD file: `student.fpn.<l>` and `teacher.fpn.<l>`, the batch size, and each
/// side's FPN width as the [`DetectorShape`] the methods size their adapters by.
pub(super) struct FpnPair {
    pub(super) student: Vec<Tensor>,
    pub(super) teacher: Vec<Tensor>,
    pub(super) batch: usize,
    pub(super) student_shape: DetectorShape,
    pub(super) teacher_shape: DetectorShape,
}

pub(super) fn fpn_pair(inputs: &ParityInputs<'_>) -> Result<FpnPair> {
    let student = levels(inputs, "student.fpn.")?;
    let teacher = levels(inputs, "teacher.fpn.")?;
    let (Some(s0), Some(t0)) = (student.first(), teacher.first()) else {
        return Err(Error::invalid(
            "student.fpn.0",
            "the file needs student.fpn.<l> and teacher.fpn.<l> levels",
        ));
    };
    if s0.rank() != 4 || t0.rank() != 4 {
        return Err(Error::shape("student.fpn.0", "[B, C, H, W]", s0.shape()));
    }
    let width = |c: usize| DetectorShape {
        stage_channels: Vec::new(),
        fpn_channels: c,
        num_classes: 0,
        reg_max: 0,
    };
    Ok(FpnPair {
        batch: s0.shape()[0],
        student_shape: width(s0.shape()[1]),
        teacher_shape: width(t0.shape()[1]),
        student,
        teacher,
    })
}

/// A method's result as parity outputs: `loss`, `term.<name>` (`[]`, f64), `grad.student.fpn.<l>` and
/// `grad.param.<name>`.
pub(super) fn method_results(out: MethodGradients, store: &ParamStore) -> Result<Results> {
    let mut results: Results = vec![("loss".into(), Tensor::from_vec(vec![out.loss], &[])?)];
    for (name, value) in out.terms {
        results.push((format!("term.{name}"), Tensor::from_vec(vec![value], &[])?));
    }
    for (l, g) in out.student_grads.into_iter().enumerate() {
        results.push((format!("grad.student.fpn.{l}"), g));
    }
    for (id, g) in out.param_grads {
        results.push((format!("grad.param.{}", store.name(id)), g));
    }
    Ok(results)
}

/// Replaces every entry of `store` by the file's `param.<name>` (converted to `like`'s dtype for floats and
/// moved to its device); an entry missing from the file, or a `param.*` tensor the store lacks, is an error.
pub(super) fn load_params(
    inputs: &ParityInputs<'_>,
    store: &mut ParamStore,
    like: &Tensor,
) -> Result<()> {
    let ids: Vec<_> = store.ids().collect();
    for id in ids {
        let key = format!("param.{}", store.name(id));
        if !inputs.has(&key) {
            return Err(Error::invalid(
                key,
                "the method has this parameter but the file does not",
            ));
        }
        let t = inputs.host(&key)?;
        let t = if t.dtype().is_float() {
            t.to_dtype(like.dtype())?
        } else {
            t
        };
        store.set(id, t.to_device(&like.device())?)?;
    }
    if let Some(extra) = inputs
        .inputs
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("param."))
        .find(|name| store.id(name).is_none())
    {
        return Err(Error::invalid(
            format!("param.{extra}"),
            "the method has no such parameter",
        ));
    }
    Ok(())
}

/// The rows of a `[K, 5]` box list grouped by image (`batch` images).
pub(super) fn boxes_by_image(t: &Tensor, arg: &str, batch: usize) -> Result<Vec<Vec<[f64; 4]>>> {
    if t.rank() != 2 || t.shape()[1] != 5 {
        return Err(Error::shape(
            arg,
            "[K, 5] = (image, x1, y1, x2, y2)",
            t.shape(),
        ));
    }
    let mut out = vec![Vec::new(); batch];
    for r in t.to_vec::<f64>()?.chunks_exact(5) {
        let image = r[0];
        if !(image >= 0.0 && image.fract() == 0.0 && (image as usize) < batch) {
            return Err(Error::invalid(
                arg,
                format!("image index {image} is not an integer in [0, {batch})"),
            ));
        }
        out[image as usize].push([r[1], r[2], r[3], r[4]]);
    }
    Ok(out)
}

fn node_levels(raw: &str) -> Result<NodeLevels> {
    if let Some(rule) = LevelRule::from_name(raw) {
        return Ok(NodeLevels::Rule(rule));
    }
    raw.strip_prefix("canonical:")
        .and_then(|v| v.trim().parse().ok())
        .map(NodeLevels::Canonical)
        .ok_or_else(|| {
            Error::invalid(
                "levels",
                format!("expected `mmdet`, `detectron2` or `canonical:<size>`, got `{raw}`"),
            )
        })
}

fn config(inputs: &ParityInputs<'_>) -> Result<DsigConfig> {
    let d = DsigConfig::default();
    let float = |key: &str, default: f64| inputs.parse_or(key, "a float", default);
    Ok(DsigConfig {
        feat_weight: float("feat_weight", d.feat_weight)?,
        node_fg_weight: float("node_fg_weight", d.node_fg_weight)?,
        node_bg_weight: float("node_bg_weight", d.node_bg_weight)?,
        edge_weight: float("edge_weight", d.edge_weight)?,
        bg_weight_alpha: float("bg_weight_alpha", d.bg_weight_alpha)?,
        bg_mining_threshold: float("bg_mining_threshold", d.bg_mining_threshold)?,
        edge_eps: float("edge_eps", d.edge_eps)?,
        adaptive_bg_weight: inputs.parse_bool("adaptive_bg_weight", Some(d.adaptive_bg_weight))?,
        bg_mining: inputs.parse_bool("bg_mining", Some(d.bg_mining))?,
        always_adapt: inputs.parse_bool("always_adapt", Some(d.always_adapt))?,
        levels: if inputs.has_meta("levels") {
            node_levels(inputs.meta("levels")?)?
        } else {
            d.levels
        },
        ..d
    })
}

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    if op != "dsig" {
        return Err(Error::invalid("op", format!("`{op}` is not a Dsig op")));
    }
    let cfg = config(inputs)?;
    let strides: Vec<f64> = inputs.parse_list("fpn_strides", "floats")?;
    let fpn = fpn_pair(inputs)?;
    let cls = levels(inputs, "teacher.cls.")?;
    let batch = fpn.batch;
    let mut store = ParamStore::new();
    let method = DsigDistiller::new(
        &mut store,
        &fpn.student_shape,
        &fpn.teacher_shape,
        fpn.student.len(),
        cfg,
        0,
    )?;
    load_params(inputs, &mut store, &fpn.student[0])?;
    let group = |key: &str| -> Result<Vec<Vec<[f64; 4]>>> {
        if inputs.has(key) {
            boxes_by_image(&inputs.host(key)?, key, batch)
        } else {
            Ok(vec![Vec::new(); batch])
        }
    };
    let (fg, bg) = (group("nodes.fg")?, group("nodes.bg")?);
    let nodes: Vec<DsigNodes> = fg
        .into_iter()
        .zip(bg)
        .map(|(foreground, background)| DsigNodes {
            foreground,
            background,
        })
        .collect();
    let out = method.compute(
        &store,
        &fpn.student.iter().collect::<Vec<_>>(),
        &fpn.teacher.iter().collect::<Vec<_>>(),
        &cls.iter().collect::<Vec<_>>(),
        &strides,
        &nodes,
    )?;
    method_results(out, &store)
}
