//! Parity entries for GKD (src/distill/gkd): the whole loss with its gradients, and the prototype
//! generation.
//!
//! | op | tensors | results |
//! | --- | --- | --- |
//! | `gkd` | `student.fpn.<l>`, `teacher.fpn.<l>` `[B, F, H_l, W_l]`, `student.cls.<l>`, `teacher.cls.<l>` `[B, C, H_l, W_l]`, `boxes` `[M, 4]` with `box_image` (i64 `[M]`, ascending) and `labels` (i64 `[M]`), `positives` (i64 `[P]`, flattened anchors, ascending) with `positive_gt` (i64 `[P]`, a row of `boxes`), the adapters `distill.gkd.adapter.<l>.weight` / `.bias`, optional prototypes `prototypes.<l>.student` `[K, Fs]`, `prototypes.<l>.teacher` `[K, Ft]`, `prototypes.<l>.labels` (i64 `[K]`) | `loss`, one scalar per term (`loss_kd_point`, `loss_bg_point`, `loss_kd_soft`, `loss_kd_pair`), `robust.<l>` `[M]`, `grad.student.fpn.<l>`, `grad.student.cls.<l>`, `grad.distill.gkd.adapter.<l>.weight` / `.bias` |
//! | `gkd_prototypes` | `student` `[N, Ds]`, `teacher` `[N, Dt]`, `labels` (i64 `[N]`) | `index` (i64 `[K]`, rows chosen, class by class), `prototype_labels` (i64 `[K]`), `student_prototypes` `[K, Ds]`, `teacher_prototypes` `[K, Dt]` |
//!
//! Metadata of `gkd`: `strides` (comma-separated, one per level), `num_classes`, `epoch`, `num_epochs`
//! (required); optional config keys with [`GkdConfig`]'s defaults: `feature_weight`, `background_weight`,
//! `soft_label_weight`, `temperature`, `attenuation` and `robust_weights` (`true`/`false`),
//! `level_base_scale`, `global` (`off` | `cosine` | `soft_assignment`), `global_temperature` (for
//! `soft_assignment`, default 0.2), `global_weight`. Without prototype tensors the robustness weights are 1.
//! Metadata of `gkd_prototypes`: `num_classes` (required); optional `max_prototypes`, `alpha`,
//! `density_bandwidth`, `density_quantile`, `eps` ([`PgmConfig`]'s defaults).

use super::{ParityInputs, Results};
use crate::distill::gkd::{
    GkdConfig, GkdDistiller, GkdInputs, GkdPrototypes, GlobalKnowledge, LevelPrototypes, PgmConfig,
};
use crate::distill::{Box4, DenseAssignment, DetectorShape, ImageTargets, StepContext};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::tensor::{DType, Tensor};

pub(super) const OPS: &[&str] = &["gkd", "gkd_prototypes"];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    match op {
        "gkd" => gkd(inputs),
        "gkd_prototypes" => gkd_prototypes(inputs),
        _ => Err(Error::invalid("op", format!("`{op}` is not a GKD op"))),
    }
}

/// Integer list tensor `name` (any integer dtype) as `usize`s, each below `bound`.
pub(super) fn indices(inputs: &ParityInputs<'_>, name: &str, bound: usize) -> Result<Vec<usize>> {
    let t = inputs.host(name)?;
    if t.dtype() != DType::I64 || t.rank() != 1 {
        return Err(Error::invalid(
            name,
            format!("expected an i64 vector, got {} {:?}", t.dtype(), t.shape()),
        ));
    }
    t.to_vec::<i64>()?
        .into_iter()
        .map(|v| {
            usize::try_from(v)
                .ok()
                .filter(|&u| u < bound)
                .ok_or_else(|| {
                    Error::invalid(name, format!("entry {v} is out of range [0, {bound})"))
                })
        })
        .collect()
}

/// `boxes` `[M, 4]` grouped by `box_image` (ascending) into `batch` images, with their `labels`.
pub(super) fn image_targets(
    inputs: &ParityInputs<'_>,
    batch: usize,
    num_classes: usize,
) -> Result<Vec<ImageTargets>> {
    let boxes = inputs.host("boxes")?;
    let m = match boxes.shape() {
        &[m, 4] => m,
        s => return Err(Error::shape("boxes", "[M, 4]", s)),
    };
    let coords = boxes.to_vec::<f64>()?;
    let image = indices(inputs, "box_image", batch)?;
    let labels = if inputs.has("labels") {
        indices(inputs, "labels", num_classes)?
    } else {
        vec![0; m]
    };
    if image.len() != m || labels.len() != m {
        return Err(Error::invalid(
            "boxes",
            format!(
                "{m} boxes, {} image indices and {} labels",
                image.len(),
                labels.len()
            ),
        ));
    }
    if image.windows(2).any(|w| w[0] > w[1]) {
        return Err(Error::invalid(
            "box_image",
            "expected ascending image indices",
        ));
    }
    let mut targets = vec![ImageTargets::default(); batch];
    for (i, (&img, &c)) in image.iter().zip(&labels).enumerate() {
        let b: Box4 = [
            coords[4 * i],
            coords[4 * i + 1],
            coords[4 * i + 2],
            coords[4 * i + 3],
        ];
        targets[img].boxes.push(b);
        targets[img].labels.push(c);
    }
    Ok(targets)
}

/// The `student.<kind>.<i>` / `teacher.<kind>.<i>` tensors, `i = 0, 1, …` while present.
pub(super) fn levels(inputs: &ParityInputs<'_>, side: &str, kind: &str) -> Result<Vec<Tensor>> {
    let mut out = Vec::new();
    while inputs.has(&format!("{side}.{kind}.{}", out.len())) {
        out.push(inputs.data(&format!("{side}.{kind}.{}", out.len()))?);
    }
    Ok(out)
}

/// Sets every store entry from the tensor of the same name (cast and moved like the data inputs).
pub(super) fn load_params(store: &mut ParamStore, inputs: &ParityInputs<'_>) -> Result<()> {
    let ids: Vec<_> = store.ids().collect();
    for id in ids {
        let name = store.name(id).to_string();
        store.set(id, inputs.data(&name)?)?;
    }
    Ok(())
}

/// The loss and its terms (scalars in `dtype`), the student gradients under `grad.<input name>` and the
/// parameter gradients under `grad.<parameter name>`.
pub(super) fn gradient_results(
    store: &ParamStore,
    out: crate::distill::MethodGradients,
    student_names: &[String],
    dtype: DType,
) -> Result<Results> {
    let scalar = |v: f64| Tensor::from_vec(vec![v], &[])?.into_dtype(dtype);
    let mut results: Results = vec![("loss".into(), scalar(out.loss)?)];
    for (name, v) in &out.terms {
        results.push(((*name).into(), scalar(*v)?));
    }
    for (name, g) in student_names.iter().zip(out.student_grads) {
        results.push((format!("grad.{name}"), g));
    }
    for (id, g) in out.param_grads {
        results.push((format!("grad.{}", store.name(id)), g));
    }
    Ok(results)
}

fn gkd_config(inputs: &ParityInputs<'_>) -> Result<GkdConfig> {
    let d = GkdConfig::default();
    let global = match inputs
        .has_meta("global")
        .then(|| inputs.meta("global"))
        .transpose()?
    {
        None | Some("off") => GlobalKnowledge::Off,
        Some("cosine") => GlobalKnowledge::Cosine,
        Some("soft_assignment") => GlobalKnowledge::SoftAssignment {
            temperature: inputs.parse_or("global_temperature", "a positive float", 0.2)?,
        },
        Some(other) => {
            return Err(Error::invalid(
                "global",
                format!("expected off, cosine or soft_assignment, got `{other}`"),
            ))
        }
    };
    Ok(GkdConfig {
        feature_weight: inputs.parse_or("feature_weight", "a float", d.feature_weight)?,
        background_weight: inputs.parse_or("background_weight", "a float", d.background_weight)?,
        soft_label_weight: inputs.parse_or("soft_label_weight", "a float", d.soft_label_weight)?,
        temperature: inputs.parse_or("temperature", "a positive float", d.temperature)?,
        attenuation: inputs.parse_bool("attenuation", Some(d.attenuation))?,
        robust_weights: inputs.parse_bool("robust_weights", Some(d.robust_weights))?,
        level_base_scale: inputs.parse_or(
            "level_base_scale",
            "a positive float",
            d.level_base_scale,
        )?,
        global,
        global_weight: inputs.parse_or("global_weight", "a float", d.global_weight)?,
        ..d
    })
}

fn gkd(inputs: &ParityInputs<'_>) -> Result<Results> {
    let cfg = gkd_config(inputs)?;
    let (s_fpn, t_fpn) = (
        levels(inputs, "student", "fpn")?,
        levels(inputs, "teacher", "fpn")?,
    );
    let (s_cls, t_cls) = (
        levels(inputs, "student", "cls")?,
        levels(inputs, "teacher", "cls")?,
    );
    let strides: Vec<f64> = inputs.parse_list("strides", "floats")?;
    let num_classes: usize = inputs.parse("num_classes", "a positive integer")?;
    let width = |v: &[Tensor], what: &str| -> Result<usize> {
        v.first()
            .filter(|t| t.rank() == 4)
            .map(|t| t.shape()[1])
            .ok_or_else(|| Error::invalid(what, "expected `<side>.fpn.0` of shape [B, F, H, W]"))
    };
    let detector = |fpn_channels| DetectorShape {
        stage_channels: Vec::new(),
        fpn_channels,
        num_classes,
        reg_max: 0,
    };
    let mut store = ParamStore::new();
    let mut distiller = GkdDistiller::new(
        &mut store,
        &detector(width(&s_fpn, "student.fpn")?),
        &detector(width(&t_fpn, "teacher.fpn")?),
        s_fpn.len(),
        cfg,
        0,
    )?;
    load_params(&mut store, inputs)?;
    if inputs.has("prototypes.0.labels") {
        let mut protos = Vec::with_capacity(s_fpn.len());
        for l in 0..s_fpn.len() {
            let labels = inputs.host(&format!("prototypes.{l}.labels"))?;
            let k = labels.numel();
            protos.push(LevelPrototypes {
                student: inputs
                    .host(&format!("prototypes.{l}.student"))?
                    .to_dtype(DType::F64)?,
                teacher: inputs
                    .host(&format!("prototypes.{l}.teacher"))?
                    .to_dtype(DType::F64)?,
                labels,
                source_rows: (0..k).collect(),
            });
        }
        distiller.set_prototypes(GkdPrototypes {
            levels: protos,
            num_classes,
        })?;
    }

    // The assignment: anchors per image from the class maps, positives and their GT boxes.
    let batch = s_cls.first().map(|t| t.shape()[0]).unwrap_or(0);
    let sizes: Vec<(usize, usize)> = s_cls
        .iter()
        .map(|t| match t.shape() {
            &[_, _, h, w] => Ok((h, w)),
            s => Err(Error::shape("student.cls", "[B, C, H, W]", s)),
        })
        .collect::<Result<_>>()?;
    if sizes.len() != strides.len() {
        return Err(Error::invalid(
            "strides",
            format!("expected {} strides, got {}", sizes.len(), strides.len()),
        ));
    }
    let mut points = Vec::new();
    let mut anchor_strides = Vec::new();
    for (&(h, w), &s) in sizes.iter().zip(&strides) {
        for y in 0..h {
            for x in 0..w {
                points.push([(x as f64 + 0.5) * s, (y as f64 + 0.5) * s]);
                anchor_strides.push(s);
            }
        }
    }
    let anchors = points.len();
    let images = image_targets(inputs, batch, num_classes)?;
    let flat_boxes: Vec<(Box4, usize)> = images
        .iter()
        .flat_map(|t| t.boxes.iter().copied().zip(t.labels.iter().copied()))
        .collect();
    let positives = indices(inputs, "positives", batch * anchors)?;
    let positive_gt = indices(inputs, "positive_gt", flat_boxes.len())?;
    if positive_gt.len() != positives.len() {
        return Err(Error::invalid(
            "positive_gt",
            format!(
                "expected {} entries, got {}",
                positives.len(),
                positive_gt.len()
            ),
        ));
    }
    let assign = DenseAssignment {
        batch,
        anchors_per_image: anchors,
        anchor_boxes: points
            .iter()
            .zip(&anchor_strides)
            .map(|(p, s)| {
                [
                    p[0] - 4.0 * s,
                    p[1] - 4.0 * s,
                    p[0] + 4.0 * s,
                    p[1] + 4.0 * s,
                ]
            })
            .collect(),
        points,
        strides: anchor_strides,
        positive_boxes: positive_gt.iter().map(|&g| flat_boxes[g].0).collect(),
        positive_labels: positive_gt.iter().map(|&g| flat_boxes[g].1).collect(),
        positives,
        thresholds: images.iter().map(|t| vec![0.0; t.boxes.len()]).collect(),
        images,
    };
    let ctx = StepContext {
        assignment: &assign,
        student_gfl: None,
        epoch: inputs.parse("epoch", "a non-negative integer")?,
        num_epochs: inputs.parse("num_epochs", "a positive integer")?,
        step_seed: 0,
        image_size: (0, 0),
    };
    let student = GkdInputs {
        fpn: s_fpn.iter().collect(),
        fpn_strides: strides.clone(),
        cls: s_cls.iter().collect(),
    };
    let teacher = GkdInputs {
        fpn: t_fpn.iter().collect(),
        fpn_strides: strides.clone(),
        cls: t_cls.iter().collect(),
    };
    let robust = distiller.robust_weights_of(&student, &teacher, &ctx)?;
    let out = distiller.compute(&store, &student, &teacher, &ctx)?;
    let names: Vec<String> = (0..s_fpn.len())
        .map(|l| format!("student.fpn.{l}"))
        .chain((0..s_cls.len()).map(|l| format!("student.cls.{l}")))
        .collect();
    let dtype = s_fpn[0].dtype();
    let mut results = gradient_results(&store, out, &names, dtype)?;
    for (l, r) in robust.into_iter().enumerate() {
        let n = r.len();
        results.push((
            format!("robust.{l}"),
            Tensor::from_vec(r, &[n])?.into_dtype(dtype)?,
        ));
    }
    Ok(results)
}

fn gkd_prototypes(inputs: &ParityInputs<'_>) -> Result<Results> {
    let d = PgmConfig::default();
    let cfg = PgmConfig {
        max_prototypes: inputs.parse_or(
            "max_prototypes",
            "a non-negative integer",
            d.max_prototypes,
        )?,
        alpha: inputs.parse_or("alpha", "a float ≥ 0", d.alpha)?,
        density_bandwidth: inputs.parse_or(
            "density_bandwidth",
            "a positive float",
            d.density_bandwidth,
        )?,
        density_quantile: inputs.parse_or(
            "density_quantile",
            "a float in [0, 1)",
            d.density_quantile,
        )?,
        eps: inputs.parse_or("eps", "a positive float", d.eps)?,
        ..d
    };
    let num_classes: usize = inputs.parse("num_classes", "a positive integer")?;
    let (student, teacher) = (inputs.data("student")?, inputs.data("teacher")?);
    let labels = indices(inputs, "labels", num_classes)?;
    let dtype = student.dtype();
    let protos = GkdPrototypes::build(&[student], &[teacher], &labels, num_classes, &cfg)?;
    let level = protos.levels.into_iter().next().expect("one level");
    let k = level.source_rows.len();
    Ok(vec![
        (
            "index".into(),
            Tensor::from_vec(
                level
                    .source_rows
                    .iter()
                    .map(|&r| r as i64)
                    .collect::<Vec<_>>(),
                &[k],
            )?,
        ),
        ("prototype_labels".into(), level.labels),
        (
            "student_prototypes".into(),
            level.student.into_dtype(dtype)?,
        ),
        (
            "teacher_prototypes".into(),
            level.teacher.into_dtype(dtype)?,
        ),
    ])
}
