//! GFL's detection losses (Li et al., NeurIPS'20; mmdet `GFLHead.loss`), the student objective that LD
//! distils on top of (shared/spec/methods.md §4):
//!
//! | term | formula (over all levels of the batch) | weight |
//! | --- | --- | --- |
//! | QFL | `Σ_j Σ_c BCE(x, y)·|y − σ(x)|^β / N`, `N = Σ_images max(N_pos,i, 1)`, `y` = IoU(decoded box (detached), target) at the label | 1 |
//! | GIoU | `Σ_{j∈P} w_j (1 − GIoU) / W` | 2 |
//! | DFL | `Σ_{j∈P} Σ_e w_j DFL(z_{j,e}, t_{j,e}) / 4 / W` | 0.25 |
//!
//! with `w_j = max_c σ(x_{j,c})` (detached) at the positives and `W = max(Σ_j w_j, 1)` (mmdet clamps the
//! averaged factor at 1). Boxes are decoded in stride units: `d = Integral(z)`, the box is
//! `(p − d_l, p − d_t, p + d_r, p + d_b)` around the anchor point `p / stride`, targets are the ground-truth
//! boxes `/ stride`, and DFL targets are their distances clamped to `[0, reg_max − 0.1]`.
//!
//! The loss is computed on the flattened head outputs ([`flatten_head`]): summing per level (as mmdet does)
//! and summing over the concatenation are the same because every normaliser is a batch total.

use super::{DenseAssignment, DetectorOutputs, LossTerm};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::boxes::{bbox2distance, iou_aligned, GiouLossConfig, OverlapConfig};
use crate::ops::dist_kl::{DflConfig, IntegralConfig};
use crate::ops::elementwise::sigmoid;
use crate::ops::focal::QualityFocalConfig;
use crate::ops::loss::Reduction;
use crate::ops::reduce::max_last_axis;
use crate::ops::shape::index_select;
use crate::tensor::Tensor;
use std::rc::Rc;

/// Settings of [`gfl_loss`]; the default is GFL's config (`gfl_r50_fpn_1x_coco`).
#[derive(Clone, Debug, PartialEq)]
pub struct GflLossConfig {
    /// QFL's β. Default 2.
    pub qfl_beta: f64,
    /// QFL loss weight. Default 1.
    pub qfl_weight: f64,
    /// GIoU loss weight. Default 2.
    pub giou_weight: f64,
    /// DFL loss weight. Default 0.25.
    pub dfl_weight: f64,
    /// Box distributions have `reg_max + 1` bins. Default 16.
    pub reg_max: usize,
}

impl Default for GflLossConfig {
    fn default() -> Self {
        GflLossConfig {
            qfl_beta: 2.0,
            qfl_weight: 1.0,
            giou_weight: 2.0,
            dfl_weight: 0.25,
            reg_max: 16,
        }
    }
}

/// The head outputs of a batch flattened to one row per anchor: `cls` `[B·A, C]`, `reg` `[B·A, 4(n+1)]`,
/// rows ordered image by image, then level by level (finest first), then row-major within a level.
pub fn flatten_head(tape: &Tape, outputs: &DetectorOutputs) -> Result<(Var, Var)> {
    let flatten = |levels: &[Var]| -> Result<Var> {
        let mut parts = Vec::with_capacity(levels.len());
        let mut batch = None;
        for &level in levels {
            let shape = tape.shape(level)?;
            let [b, c, h, w] = shape[..] else {
                return Err(Error::shape("head output", "[B, C, H, W]", &shape));
            };
            batch = Some(b);
            let nhwc = tape.permute(level, &[0, 2, 3, 1])?;
            parts.push(tape.reshape(nhwc, &[b, h * w, c])?);
        }
        let joined = tape.concat(&parts, 1)?;
        let shape = tape.shape(joined)?;
        tape.reshape(joined, &[batch.unwrap_or(0) * shape[1], shape[2]])
    };
    Ok((flatten(&outputs.cls)?, flatten(&outputs.reg)?))
}

/// What [`gfl_loss`] computed besides its terms, for methods that distil at the same positives (LD).
#[derive(Debug)]
pub struct GflLossOutput {
    /// `loss_qfl`, `loss_bbox` (GIoU), `loss_dfl`, already weighted.
    pub terms: Vec<LossTerm>,
    /// `w_j` of every positive (detached), `[P]`.
    pub positive_weights: Rc<Tensor>,
    /// The student's box logits at the positives, `[P·4, reg_max + 1]` (`None` without positives).
    pub positive_reg: Option<Var>,
    /// QFL's normaliser `Σ_images max(N_pos,i, 1)`.
    pub num_positives: f64,
    /// GIoU's and DFL's normaliser `W = max(Σ w_j, 1)`.
    pub weight_sum: f64,
}

/// A constant with the dtype and device of `like`.
pub(crate) fn constant_like(
    tape: &Tape,
    values: Vec<f64>,
    shape: &[usize],
    like: &Tensor,
) -> Result<Var> {
    let t = Tensor::from_vec(values, shape)?
        .into_dtype(like.dtype())?
        .to_device(&like.device())?;
    Ok(tape.constant(t))
}

/// Validates an assignment against the flattened head outputs.
pub(crate) fn check_assignment(
    assign: &DenseAssignment,
    rows: usize,
    num_classes: usize,
) -> Result<()> {
    let a = assign.anchors_per_image;
    if assign.batch * a != rows {
        return Err(Error::invalid(
            "assignment",
            format!(
                "{} images × {a} anchors do not match the head's {rows} rows",
                assign.batch
            ),
        ));
    }
    for (what, len) in [
        ("points", assign.points.len()),
        ("strides", assign.strides.len()),
        ("anchor_boxes", assign.anchor_boxes.len()),
    ] {
        if len != a {
            return Err(Error::invalid(
                "assignment",
                format!("`{what}` has {len} entries for {a} anchors per image"),
            ));
        }
    }
    let p = assign.positives.len();
    if assign.positive_boxes.len() != p || assign.positive_labels.len() != p {
        return Err(Error::invalid(
            "assignment",
            "positives, positive_boxes and positive_labels differ in length",
        ));
    }
    if let Some(&bad) = assign.positives.iter().find(|&&i| i >= rows) {
        return Err(Error::invalid(
            "assignment",
            format!("positive anchor {bad} is out of range for {rows} anchors"),
        ));
    }
    if assign.positives.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::invalid(
            "assignment",
            "positives must be strictly ascending",
        ));
    }
    if let Some(&bad) = assign.positive_labels.iter().find(|&&l| l >= num_classes) {
        return Err(Error::invalid(
            "assignment",
            format!("label {bad} is out of range for {num_classes} classes"),
        ));
    }
    Ok(())
}

/// GFL's QFL + GIoU + DFL of the flattened student head outputs (`cls` `[N, C]`, `reg` `[N, 4(n+1)]`) under
/// `assign`. See the module docs for the formulas.
pub fn gfl_loss(
    tape: &Tape,
    cls: Var,
    reg: Var,
    assign: &DenseAssignment,
    cfg: &GflLossConfig,
) -> Result<GflLossOutput> {
    let cls_value = tape.value(cls)?;
    let reg_value = tape.value(reg)?;
    let [rows, num_classes] = cls_value.shape()[..] else {
        return Err(Error::shape("cls", "[N, C]", cls_value.shape()));
    };
    let bins = cfg.reg_max + 1;
    if reg_value.shape() != [rows, 4 * bins] {
        return Err(Error::shape(
            "reg",
            format!("[{rows}, {}]", 4 * bins),
            reg_value.shape(),
        ));
    }
    check_assignment(assign, rows, num_classes)?;
    let p = assign.positives.len();
    let a = assign.anchors_per_image;

    // Per-positive geometry in stride units (constants).
    let mut points = Vec::with_capacity(2 * p);
    let mut targets = Vec::with_capacity(4 * p);
    for (&anchor, gt) in assign.positives.iter().zip(&assign.positive_boxes) {
        let s = assign.strides[anchor % a];
        let pt = assign.points[anchor % a];
        points.extend([pt[0] / s, pt[1] / s]);
        targets.extend(gt.iter().map(|v| v / s));
    }

    let mut labels = vec![num_classes as i64; rows];
    for (&anchor, &label) in assign.positives.iter().zip(&assign.positive_labels) {
        labels[anchor] = label as i64;
    }
    let mut scores = vec![0.0; rows];
    let mut terms = Vec::with_capacity(3);
    // mmdet's `get_targets`: `num_total_pos = Σ_i max(|P_i|, 1)` over the images of the batch.
    let mut per_image = vec![0usize; assign.batch];
    for &anchor in &assign.positives {
        per_image[anchor / a] += 1;
    }
    let num_positives = (per_image.iter().map(|&n| n.max(1)).sum::<usize>() as f64).max(1.0);

    let (positive_weights, positive_reg, weight_sum, box_terms) = if p > 0 {
        let pos_index = Tensor::from_vec(
            assign
                .positives
                .iter()
                .map(|&i| i as i64)
                .collect::<Vec<_>>(),
            &[p],
        )?;
        // w_j = max_c σ(x_jc), detached.
        let cls_pos = index_select(&cls_value, 0, &pos_index)?;
        let w = Rc::new(max_last_axis(&sigmoid(&cls_pos)?)?.values);
        let weight_sum = w.to_vec::<f64>()?.iter().sum::<f64>().max(1.0);

        let pos_index_var = tape.constant(pos_index);
        let reg_pos = tape.index_select(reg, 0, pos_index_var)?;
        let reg_pos = tape.reshape(reg_pos, &[4 * p, bins])?;
        let dist = tape.integral(
            reg_pos,
            &IntegralConfig {
                reg_max: cfg.reg_max,
            },
        )?;
        let dist = tape.reshape(dist, &[p, 4])?;
        let points_var = constant_like(tape, points, &[p, 2], &reg_value)?;
        let targets_var = constant_like(tape, targets, &[p, 4], &reg_value)?;
        let pred_boxes = tape.distance2bbox(points_var, dist, None)?;

        // QFL's quality targets: IoU of the detached decoded boxes with their targets.
        let ious = iou_aligned(
            &*tape.value(pred_boxes)?,
            &*tape.value(targets_var)?,
            &OverlapConfig::default(),
        )?
        .to_vec::<f64>()?;
        for (&anchor, iou) in assign.positives.iter().zip(ious) {
            scores[anchor] = iou;
        }

        let w_var = tape.constant(w.clone());
        let giou_cfg = GiouLossConfig {
            loss_weight: cfg.giou_weight,
            ..Default::default()
        };
        let giou = tape.giou_loss(pred_boxes, targets_var, Some(w_var), Some(1.0), &giou_cfg)?;
        let giou = tape.scale(giou, 1.0 / weight_sum)?;

        let dfl_targets = bbox2distance(
            &*tape.value(points_var)?,
            &*tape.value(targets_var)?,
            Some(cfg.reg_max as f64),
            0.1,
        )?
        .reshape(&[4 * p])?;
        let w4: Vec<f64> = w.to_vec::<f64>()?.iter().flat_map(|&v| [v; 4]).collect();
        let w4 = constant_like(tape, w4, &[4 * p], &reg_value)?;
        let dfl_cfg = DflConfig {
            reg_max: cfg.reg_max,
            reduction: Reduction::Mean,
            loss_weight: cfg.dfl_weight,
        };
        let dfl_targets = tape.constant(dfl_targets);
        let dfl =
            tape.distribution_focal_loss(reg_pos, dfl_targets, Some(w4), Some(4.0), &dfl_cfg)?;
        let dfl = tape.scale(dfl, 1.0 / weight_sum)?;
        (w, Some(reg_pos), weight_sum, Some((giou, dfl)))
    } else {
        let empty = Tensor::from_vec(Vec::<f64>::new(), &[0])?.into_dtype(cls_value.dtype())?;
        (Rc::new(empty), None, 1.0, None)
    };

    let labels = tape.constant(Tensor::from_vec(labels, &[rows])?.to_device(&cls_value.device())?);
    let scores = constant_like(tape, scores, &[rows], &cls_value)?;
    let qfl_cfg = QualityFocalConfig {
        beta: cfg.qfl_beta,
        reduction: Reduction::Mean,
        avg_factor: Some(num_positives),
    };
    let qfl = tape.quality_focal_loss(cls, labels, scores, None, &qfl_cfg)?;
    let qfl = tape.scale(qfl, cfg.qfl_weight)?;
    terms.push(LossTerm {
        name: "loss_qfl",
        value: qfl,
    });
    let (giou, dfl) = match box_terms {
        Some(t) => t,
        // No positives: the box terms are 0 (mmdet multiplies the predictions' sum by 0).
        None => {
            let zero = |tape: &Tape| -> Result<Var> {
                let s = tape.sum_all(reg)?;
                tape.scale(s, 0.0)
            };
            (zero(tape)?, zero(tape)?)
        }
    };
    terms.push(LossTerm {
        name: "loss_bbox",
        value: giou,
    });
    terms.push(LossTerm {
        name: "loss_dfl",
        value: dfl,
    });
    Ok(GflLossOutput {
        terms,
        positive_weights,
        positive_reg,
        num_positives,
        weight_sum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{tape_gradcheck, GradcheckOptions};
    use crate::distill::ImageTargets;
    use crate::testing::Rng;

    /// Two images of 3 anchors (one level, stride 8), 2 classes, reg_max 4; positives 1, 3, 4.
    fn problem() -> (Tensor, Tensor, DenseAssignment, GflLossConfig) {
        let mut rng = Rng::new(21);
        let cls = Tensor::from_vec(rng.normal_vec(6 * 2), &[6, 2]).unwrap();
        let reg = Tensor::from_vec(rng.normal_vec(6 * 20), &[6, 20]).unwrap();
        let points = vec![[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]];
        let assign = DenseAssignment {
            batch: 2,
            anchors_per_image: 3,
            points: points.clone(),
            strides: vec![8.0; 3],
            anchor_boxes: points
                .iter()
                .map(|p| [p[0] - 16.0, p[1] - 16.0, p[0] + 16.0, p[1] + 16.0])
                .collect(),
            positives: vec![1, 3, 4],
            positive_boxes: vec![
                [2.0, -3.0, 21.0, 13.5],
                [-5.0, -2.0, 9.0, 15.0],
                [1.0, 0.5, 27.0, 9.0],
            ],
            positive_labels: vec![1, 0, 1],
            images: vec![ImageTargets::default(); 2],
            thresholds: vec![vec![]; 2],
        };
        let cfg = GflLossConfig {
            reg_max: 4,
            ..Default::default()
        };
        (cls, reg, assign, cfg)
    }

    fn term(out: &GflLossOutput, name: &str) -> Var {
        out.terms.iter().find(|t| t.name == name).unwrap().value
    }

    #[test]
    fn qfl_gradient_to_the_class_logits() {
        let (cls, reg, assign, cfg) = problem();
        let report = tape_gradcheck(
            |tape, leaves, consts| {
                let out = gfl_loss(tape, leaves[0], consts[0], &assign, &cfg)?;
                Ok(term(&out, "loss_qfl"))
            },
            &[cls],
            &[reg],
            &GradcheckOptions::default(),
        )
        .unwrap();
        assert!(report.nonzero_entries > 0);
    }

    #[test]
    fn box_gradients_to_the_distributions() {
        // With the class logits fixed, w_j is constant and GIoU + DFL are smooth in the box logits.
        let (cls, reg, assign, cfg) = problem();
        let report = tape_gradcheck(
            |tape, leaves, consts| {
                let out = gfl_loss(tape, consts[0], leaves[0], &assign, &cfg)?;
                tape.add(term(&out, "loss_bbox"), term(&out, "loss_dfl"))
            },
            &[reg],
            &[cls],
            &GradcheckOptions::default(),
        )
        .unwrap();
        assert!(report.nonzero_entries > 0);
    }

    #[test]
    fn normalisers_and_the_empty_case() {
        let (cls, reg, assign, cfg) = problem();
        let tape = Tape::new();
        let (c, r) = (
            tape.leaf(cls.try_clone().unwrap()),
            tape.leaf(reg.try_clone().unwrap()),
        );
        let out = gfl_loss(&tape, c, r, &assign, &cfg).unwrap();
        // Image 0 has one positive, image 1 two.
        assert_eq!(out.num_positives, 3.0);
        assert_eq!(out.positive_weights.shape(), &[3]);
        // W = Σ max σ < 3 here, clamped at 1 from below.
        assert!(out.weight_sum >= 1.0 && out.weight_sum <= 3.0);
        assert_eq!(tape.shape(out.positive_reg.unwrap()).unwrap(), vec![12, 5]);

        let mut empty = assign.clone();
        empty.positives.clear();
        empty.positive_boxes.clear();
        empty.positive_labels.clear();
        let tape = Tape::new();
        let (c, r) = (tape.leaf(cls), tape.leaf(reg));
        let out = gfl_loss(&tape, c, r, &empty, &cfg).unwrap();
        for name in ["loss_bbox", "loss_dfl"] {
            let v = tape
                .value(term(&out, name))
                .unwrap()
                .to_vec::<f64>()
                .unwrap();
            assert_eq!(v, vec![0.0], "{name}");
        }
        let qfl = tape
            .value(term(&out, "loss_qfl"))
            .unwrap()
            .to_vec::<f64>()
            .unwrap()[0];
        assert!(qfl.is_finite() && qfl > 0.0);

        let mut bad = assign.clone();
        bad.positives = vec![4, 3, 1];
        let tape = Tape::new();
        let (c, r) = (
            tape.leaf(Tensor::zeros(&[6, 2], crate::DType::F64, &crate::Device::Cpu).unwrap()),
            tape.leaf(Tensor::zeros(&[6, 20], crate::DType::F64, &crate::Device::Cpu).unwrap()),
        );
        let e = gfl_loss(&tape, c, r, &bad, &cfg).unwrap_err().to_string();
        assert!(e.contains("ascending"), "{e}");
        let mut bad = assign;
        bad.batch = 3;
        let e = gfl_loss(&tape, c, r, &bad, &cfg).unwrap_err().to_string();
        assert!(e.contains("do not match"), "{e}");
    }
}
