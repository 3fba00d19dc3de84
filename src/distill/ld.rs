//! LD — Localization Distillation (Zheng et al., CVPR'22) on a GFL head (shared/spec/methods.md §4, §6.6,
//! §6.8): the student's box distributions are pulled towards the teacher's with a temperature KL, at the
//! student's ATSS positives (main LD) and in the *valuable localisation region* around them (VLR LD), and the
//! class logits at the positives are distilled as well (main KD).
//!
//! # Terms
//!
//! With `KL_T(z^s, z^t) = (T²/K) Σ_k p^t_k (log p^t_k − log p^s_k)`, `p = softmax(z / T)` over the `K` entries
//! of a row (mmdet's `knowledge_distillation_kl_div_loss`: `F.kl_div(...).mean(1) · T²`, the teacher detached)
//! and `ε` = f32 machine epsilon (mmdet's `weight_reduce_loss` divides by `avg_factor + ε`):
//!
//! | term | formula (over the batch) | default |
//! | --- | --- | --- |
//! | `loss_ld` (main LD) | `λ_ld · Σ_{j∈P} Σ_e w_j · KL_T(z^s_{j,e}, z^t_{j,e}) / (4 + ε)` over the 17 bins of each side `e ∈ {l, t, r, b}` | `λ = 0.25`, `T = 10` |
//! | `loss_ld_vlr` (VLR LD) | `λ_vlr · Σ_{a∈V} Σ_e v_a · KL_T(z^s_{a,e}, z^t_{a,e}) / (16 + ε)` | `λ = 0.25`, `T = 10` |
//! | `loss_kd` (main KD) | `λ_kd · Σ_l Σ_{j∈P_l} KL_T(x^s_j, x^t_j) / (|P_l| + ε)` over the `C` class logits | `λ = 10`, `T = 2` |
//!
//! - `P` are the student's ATSS positives ([`DenseAssignment::positives`]), `P_l` those on level `l`;
//! - `w_j = max_c σ(x^s_{j,c})`, the student's detached classification score (GFL's box-loss weight);
//!   taken from [`StepContext::student_gfl`] when the student's GFL loss ran on the same tape, computed the
//!   same way otherwise;
//! - `z^s`, `z^t`: student and teacher box logits at the same flattened anchors ([`flatten_head`] of both
//!   outputs), `x^s`, `x^t` the class logits there;
//! - `V`, `v_a`: the valuable localisation region ([`valuable_region`]).
//!
//! The normalisers are the official code's, not means: main LD is divided by the constant 4 (the four sides),
//! **not** by `Σ w_j`, so it grows with the number of positives (methods.md §8.4); VLR LD by the constant 16;
//! main KD is a mean over the positives *of each level* (`avg_factor = pos_inds.shape[0]` inside the LD
//! repository's per-level `loss_single`), summed over levels. Gradients reach the student's box logits
//! (both LD terms) and class logits (KD) only: `∂loss_ld/∂z^s_{j,e} = λ_ld w_j (T/17)(p^s − p^t)/(4 + ε)`,
//! `w_j`, `v_a` and the region are constants.
//!
//! # Configurations
//!
//! [`LdConfig::default`] is the LD repository's (`HikariTJU/LD`) "Main KD + Main LD + VLR LD" setting of its
//! `LDHead` (configs `ld_r*_gflv1_r101_fpn_coco_1x.py`: `loss_ld` 0.25/T 10, `loss_ld_vlr` 0.25/T 10,
//! `loss_kd` 10/T 2). [`LdConfig::mmdet`] is mmdetection's `LDHead`: main LD only. Every term's weight and
//! temperature is configurable; a term with weight 0 is not computed and not reported.
//!
//! # Adaptations and what is left out
//!
//! - The detector is detkd's one-stage GFL (TinyGFL: FPN P3–P5, strides 8/16/32, ATSS top-9, 8·s square
//!   anchors) instead of GFLv1 on P3–P7; LD distils head outputs only, so the teacher and student must have
//!   identical head layouts (levels, sizes, classes, `reg_max`) but may differ in width — no adapters.
//! - The LD repository's `LDHead` also returns a feature-imitation term (`loss_im`, MSE of FPN vectors in a
//!   chosen region; weight 2 in some configs, the "+ imitation" rows of its README). It is not part of the
//!   "Main KD + Main LD + VLR LD" setting and is not implemented here; its `loss_kd_neg` is multiplied by 0
//!   in the repository and is omitted.
//! - The student's own GFL loss ([`super::gfl::gfl_loss`]) is not part of these terms. Note that the LD heads
//!   (repository and mmdet) normalise the student's GIoU and DFL by `Σ w_j + 1e-6` where GFL's head uses
//!   `max(Σ w_j, 1)`.
//!
//! # Inputs and edge cases
//!
//! Student and teacher outputs must agree level by level (`cls` `[B, C, H_l, W_l]`, `reg`
//! `[B, 4·(reg_max + 1), H_l, W_l]`), and the assignment must describe the same anchors (`B·A` rows, one
//! stride per level, every positive in range); anything else is an `Err` naming the argument. Without
//! positives the main LD and KD terms are exactly 0 (mmdet returns `bbox_pred.sum() * 0`); an empty region
//! makes VLR LD 0; an empty batch gives zeros for every term. Non-finite logits are not scanned for and
//! propagate NaN, as in PyTorch; ground-truth boxes must be finite.

use super::gfl::{check_assignment, constant_like, flatten_head, GflLossOutput};
use super::{DenseAssignment, DetectorOutputs, Distiller, LossTerm, MethodGradients, StepContext};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::boxes::{box_diou, box_iou, OverlapConfig};
use crate::ops::dist_kl::{KdKlConfig, KlNormalizer, Reduction, AVG_FACTOR_EPS, GFL_REG_MAX};
use crate::ops::elementwise::sigmoid;
use crate::ops::reduce::max_last_axis;
use crate::ops::shape::index_select;
use crate::tensor::Tensor;

/// mmdet's `avg_factor=4.0` of the main LD term: the weighted KL sum over the four sides of every positive.
pub const MAIN_LD_AVG_FACTOR: f64 = 4.0;

/// The LD repository's `avg_factor=16.0` of the VLR LD term.
pub const VLR_LD_AVG_FACTOR: f64 = 16.0;

/// The LD repository's lower bound of the valuable region: `DIoU ≥ 0.25 · τ_g`.
pub const VLR_LOWER_RATIO: f64 = 0.25;

/// One temperature-KL term: `weight · reduce(KL_T)`; `weight = 0` switches the term off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KlTerm {
    /// The loss weight (mmdet's `loss_weight`); finite, ≥ 0.
    pub weight: f64,
    /// The temperature `T`; finite, > 0.
    pub temperature: f64,
}

/// Settings of LD. `Default` is the LD repository's "Main KD + Main LD + VLR LD" configuration; see the
/// module docs for the formulas.
#[derive(Clone, Debug, PartialEq)]
pub struct LdConfig {
    /// Main LD at the positives. Default weight 0.25, T = 10.
    pub main_ld: KlTerm,
    /// LD in the valuable localisation region. Default weight 0.25, T = 10 (0 in [`LdConfig::mmdet`]).
    pub vlr_ld: KlTerm,
    /// Class-logit KD at the positives. Default weight 10, T = 2 (0 in [`LdConfig::mmdet`]).
    pub main_kd: KlTerm,
    /// `r` of the region's lower bound `DIoU ≥ r · τ_g`; in `[0, 1]`. Default 0.25.
    pub vlr_lower_ratio: f64,
    /// The overlap the region is selected by. Default [`OverlapConfig::ld_repo`]: the LD repository's
    /// `bbox_overlaps(mode='diou')`, whose first term is `I / area(anchor)` rather than the IoU (its `diou`
    /// mode takes the `union = area1` branch); [`OverlapConfig::default`] gives DIoU as methods.md §4 and
    /// the DIoU paper define it. The region's weights `v_a` are plain IoUs either way.
    pub vlr_overlap: OverlapConfig,
    /// Box distributions have `reg_max + 1` bins; must match the heads. Default 16.
    pub reg_max: usize,
}

impl Default for LdConfig {
    /// The LD repository's `LDHead` with `loss_ld` (0.25, T 10), `loss_ld_vlr` (0.25, T 10) and `loss_kd`
    /// (10, T 2), the region `0.25·τ ≤ DIoU < τ` with the repository's DIoU, 17 bins.
    fn default() -> Self {
        LdConfig {
            main_ld: KlTerm {
                weight: 0.25,
                temperature: 10.0,
            },
            vlr_ld: KlTerm {
                weight: 0.25,
                temperature: 10.0,
            },
            main_kd: KlTerm {
                weight: 10.0,
                temperature: 2.0,
            },
            vlr_lower_ratio: VLR_LOWER_RATIO,
            vlr_overlap: OverlapConfig::ld_repo(),
            reg_max: GFL_REG_MAX,
        }
    }
}

impl LdConfig {
    /// mmdetection's `LDHead` (`ld_r18_gflv1_r101_fpn_coco_1x`): main LD only (0.25, T 10).
    pub fn mmdet() -> Self {
        LdConfig {
            vlr_ld: KlTerm {
                weight: 0.0,
                temperature: 10.0,
            },
            main_kd: KlTerm {
                weight: 0.0,
                temperature: 2.0,
            },
            ..LdConfig::default()
        }
    }

    /// Checks every field's range; at least one term must have a positive weight.
    pub fn validate(&self) -> Result<()> {
        for (name, term) in [
            ("main_ld", &self.main_ld),
            ("vlr_ld", &self.vlr_ld),
            ("main_kd", &self.main_kd),
        ] {
            if !(term.weight.is_finite() && term.weight >= 0.0) {
                return Err(Error::invalid(
                    format!("{name}.weight"),
                    format!("expected a finite weight ≥ 0, got {}", term.weight),
                ));
            }
            if !(term.temperature.is_finite() && term.temperature > 0.0) {
                return Err(Error::invalid(
                    format!("{name}.temperature"),
                    format!(
                        "expected a finite temperature > 0, got {}",
                        term.temperature
                    ),
                ));
            }
        }
        if [self.main_ld, self.vlr_ld, self.main_kd]
            .iter()
            .all(|t| t.weight == 0.0)
        {
            return Err(Error::invalid(
                "LdConfig",
                "every term has weight 0: nothing to distil",
            ));
        }
        if !(0.0..=1.0).contains(&self.vlr_lower_ratio) {
            return Err(Error::invalid(
                "vlr_lower_ratio",
                format!("expected a ratio in [0, 1], got {}", self.vlr_lower_ratio),
            ));
        }
        if !(self.vlr_overlap.eps.is_finite() && self.vlr_overlap.eps > 0.0) {
            return Err(Error::invalid(
                "vlr_overlap.eps",
                format!("expected a finite eps > 0, got {}", self.vlr_overlap.eps),
            ));
        }
        if self.reg_max == 0 {
            return Err(Error::invalid(
                "reg_max",
                "expected at least 1 (2 bins per side)",
            ));
        }
        Ok(())
    }

    fn bins(&self) -> usize {
        self.reg_max + 1
    }
}

/// The valuable localisation region of a batch (LD repository, `ATSSAssigner.get_vlr_region`): flattened
/// anchor indices (`b·A + a`, ascending) and their weights.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValuableRegion {
    /// Flattened anchor indices `b·A + a` of the region, ascending.
    pub anchors: Vec<usize>,
    /// `v_a = max IoU(anchor_a, g)` over the boxes `g` that select `a`; every weight is > 0.
    pub weights: Vec<f64>,
}

/// Selects the valuable localisation region of `assign` (LD repository's `get_vlr_region`, methods.md §4).
///
/// For every image and ground-truth box `g` with ATSS threshold `τ_g` (`assign.thresholds`; the repository
/// recomputes the same `mean + std` of the top-9-per-level candidates' IoUs inside `get_vlr_region`), an anchor `a`
/// of that image (all of them: no top-k, no centre-in-box test) is selected by `g` when
/// `r·τ_g ≤ D(anchor_box_a, g) < τ_g`, `r` = `cfg.vlr_lower_ratio`, `D` the DIoU of `cfg.vlr_overlap`
/// (the repository's variant by default). Its weight is `v_a = max IoU(anchor_box_a, g)` over the boxes that
/// select it, and `a` belongs to the region when `v_a > 0` (the repository's `vlr_region > 0`). The region
/// may contain positives. A NaN threshold (a box with a single ATSS candidate) selects nothing, as every
/// comparison with it is false in the repository too. Computed on the host in f64 with
/// [`box_iou`]/[`box_diou`]; ground-truth boxes must be finite.
pub fn valuable_region(assign: &DenseAssignment, cfg: &LdConfig) -> Result<ValuableRegion> {
    check_region_inputs(assign)?;
    let a = assign.anchors_per_image;
    let mut region = ValuableRegion::default();
    if a == 0 {
        return Ok(region);
    }
    let anchors = Tensor::from_vec(
        assign
            .anchor_boxes
            .iter()
            .flat_map(|b| b.iter().copied())
            .collect::<Vec<f64>>(),
        &[a, 4],
    )?;
    let iou_cfg = OverlapConfig {
        eps: cfg.vlr_overlap.eps,
        ..OverlapConfig::default()
    };
    for (image, (targets, thresholds)) in assign.images.iter().zip(&assign.thresholds).enumerate() {
        let g = targets.boxes.len();
        if g == 0 {
            continue;
        }
        let gts = Tensor::from_vec(
            targets
                .boxes
                .iter()
                .flat_map(|b| b.iter().copied())
                .collect::<Vec<f64>>(),
            &[g, 4],
        )?;
        let iou = box_iou(&anchors, &gts, &iou_cfg)
            .map_err(|e| Error::invalid(format!("images[{image}].boxes"), e.to_string()))?
            .to_vec::<f64>()?;
        let diou = box_diou(&anchors, &gts, &cfg.vlr_overlap)?.to_vec::<f64>()?;
        for anchor in 0..a {
            let mut best = f64::NEG_INFINITY;
            for (box_index, &tau) in thresholds.iter().enumerate() {
                let d = diou[anchor * g + box_index];
                if d >= cfg.vlr_lower_ratio * tau && d < tau {
                    best = best.max(iou[anchor * g + box_index]);
                }
            }
            if best > 0.0 {
                region.anchors.push(image * a + anchor);
                region.weights.push(best);
            }
        }
    }
    Ok(region)
}

fn check_region_inputs(assign: &DenseAssignment) -> Result<()> {
    if assign.anchor_boxes.len() != assign.anchors_per_image {
        return Err(Error::invalid(
            "assignment",
            format!(
                "`anchor_boxes` has {} entries for {} anchors per image",
                assign.anchor_boxes.len(),
                assign.anchors_per_image
            ),
        ));
    }
    if assign.images.len() != assign.batch || assign.thresholds.len() != assign.batch {
        return Err(Error::invalid(
            "assignment",
            format!(
                "the valuable region needs the ground truth and ATSS thresholds of all {} images, got {} \
                 `images` and {} `thresholds`",
                assign.batch,
                assign.images.len(),
                assign.thresholds.len()
            ),
        ));
    }
    for (i, (targets, thresholds)) in assign.images.iter().zip(&assign.thresholds).enumerate() {
        if thresholds.len() != targets.boxes.len() {
            return Err(Error::invalid(
                format!("assignment.thresholds[{i}]"),
                format!(
                    "expected one threshold per ground-truth box ({}), got {}",
                    targets.boxes.len(),
                    thresholds.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The level layout shared by the two heads, after validation.
struct HeadLayout {
    batch: usize,
    num_classes: usize,
    /// First anchor offset (within one image) of every level, plus the total at the end.
    level_starts: Vec<usize>,
}

impl HeadLayout {
    fn anchors_per_image(&self) -> usize {
        *self.level_starts.last().unwrap_or(&0)
    }

    fn rows(&self) -> usize {
        self.batch * self.anchors_per_image()
    }

    /// The level of a flattened anchor index.
    fn level_of(&self, flat: usize) -> usize {
        let offset = flat % self.anchors_per_image().max(1);
        self.level_starts.partition_point(|&s| s <= offset) - 1
    }

    fn new(
        tape: &Tape,
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
        cfg: &LdConfig,
    ) -> Result<HeadLayout> {
        let levels = student.reg.len();
        if levels == 0 {
            return Err(Error::invalid(
                "student.reg",
                "expected at least one head level",
            ));
        }
        for (name, count) in [
            ("student.cls", student.cls.len()),
            ("teacher.cls", teacher.cls.len()),
            ("teacher.reg", teacher.reg.len()),
        ] {
            if count != levels {
                return Err(Error::invalid(
                    name,
                    format!("expected {levels} head levels (as student.reg), got {count}"),
                ));
            }
        }
        let channels = 4 * cfg.bins();
        let mut batch = None;
        let mut num_classes = None;
        let mut level_starts = vec![0];
        for l in 0..levels {
            let reg = tape.shape(student.reg[l])?;
            let [b, c, h, w] = reg[..] else {
                return Err(Error::shape(
                    format!("student.reg[{l}]"),
                    format!("[B, {channels}, H, W]"),
                    &reg,
                ));
            };
            if c != channels {
                return Err(Error::shape(
                    format!("student.reg[{l}]"),
                    format!(
                        "[B, 4·(reg_max + 1) = {channels}, H, W] for reg_max {}",
                        cfg.reg_max
                    ),
                    &reg,
                ));
            }
            if *batch.get_or_insert(b) != b {
                return Err(Error::shape(
                    format!("student.reg[{l}]"),
                    format!("batch {} as level 0", batch.unwrap_or(0)),
                    &reg,
                ));
            }
            let cls = tape.shape(student.cls[l])?;
            let [cb, classes, ch, cw] = cls[..] else {
                return Err(Error::shape(
                    format!("student.cls[{l}]"),
                    format!("[{b}, C, {h}, {w}]"),
                    &cls,
                ));
            };
            if (cb, ch, cw) != (b, h, w) || *num_classes.get_or_insert(classes) != classes {
                return Err(Error::shape(
                    format!("student.cls[{l}]"),
                    format!(
                        "[{b}, {}, {h}, {w}] (as student.reg[{l}])",
                        num_classes.unwrap_or(classes)
                    ),
                    &cls,
                ));
            }
            for (name, var, want) in [
                ("teacher.reg", teacher.reg[l], &reg),
                ("teacher.cls", teacher.cls[l], &cls),
            ] {
                let got = tape.shape(var)?;
                if &got != want {
                    return Err(Error::shape(
                        format!("{name}[{l}]"),
                        format!("{want:?} (the student's)"),
                        &got,
                    ));
                }
            }
            let start = level_starts[l];
            level_starts.push(start + h * w);
        }
        Ok(HeadLayout {
            batch: batch.unwrap_or(0),
            num_classes: num_classes.unwrap_or(0),
            level_starts,
        })
    }

    /// The assignment's anchors must be laid out level by level as the head is: one stride per level.
    fn check_strides(&self, assign: &DenseAssignment) -> Result<()> {
        for (l, range) in self.level_starts.windows(2).enumerate() {
            let strides = &assign.strides[range[0]..range[1]];
            if let Some(first) = strides.first() {
                if let Some(i) = strides.iter().position(|s| s != first) {
                    return Err(Error::invalid(
                        "assignment",
                        format!(
                            "anchor {} has stride {} but belongs to head level {l} (anchors {}..{}, \
                             stride {first}): the assignment was made for other level sizes",
                            range[0] + i,
                            strides[i],
                            range[0],
                            range[1]
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Rows `index` (a host index list) of `x` `[N, K·bins]`, reshaped to `[len·K, bins]`.
fn gather_rows(tape: &Tape, x: Var, index: &[usize], rows_per_entry: usize) -> Result<Var> {
    let shape = tape.shape(x)?;
    let idx = Tensor::from_vec(
        index.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        &[index.len()],
    )?;
    let picked = tape.index_select(x, 0, tape.constant(idx))?;
    tape.reshape(
        picked,
        &[index.len() * rows_per_entry, shape[1] / rows_per_entry],
    )
}

fn kl_config(term: &KlTerm, reduction: Reduction) -> KdKlConfig {
    KdKlConfig {
        temperature: term.temperature,
        normalizer: KlNormalizer::MeanOverBins,
        reduction,
        loss_weight: term.weight,
    }
}

/// LD's weighted terms (`loss_ld`, `loss_ld_vlr`, `loss_kd`, those with a nonzero weight, in that order) of
/// the student head outputs (on `tape`, with gradients) against the teacher's (constants) under the
/// student's assignment. See the module docs for the formulas and the checks.
///
/// `student_gfl`, the student's [`super::gfl::gfl_loss`] output on the same tape, supplies `w_j` and the
/// gathered box logits at the positives; without it they are computed here. (Gradient checks pass a
/// [`GflLossOutput`] with fixed `positive_weights` and `positive_reg = None` to hold `w_j` constant.)
pub fn ld_terms(
    tape: &Tape,
    student: &DetectorOutputs,
    teacher: &DetectorOutputs,
    assign: &DenseAssignment,
    student_gfl: Option<&GflLossOutput>,
    cfg: &LdConfig,
) -> Result<Vec<LossTerm>> {
    cfg.validate()?;
    let layout = HeadLayout::new(tape, student, teacher, cfg)?;
    check_assignment(assign, layout.rows(), layout.num_classes)?;
    if assign.anchors_per_image != layout.anchors_per_image() {
        return Err(Error::invalid(
            "assignment",
            format!(
                "{} anchors per image, but the head levels have {}",
                assign.anchors_per_image,
                layout.anchors_per_image()
            ),
        ));
    }
    layout.check_strides(assign)?;
    let bins = cfg.bins();
    let positives = &assign.positives;
    let p = positives.len();
    if let Some(gfl) = student_gfl {
        if gfl.positive_weights.numel() != p {
            return Err(Error::shape(
                "student_gfl.positive_weights",
                format!("[{p}] (one weight per positive)"),
                gfl.positive_weights.shape(),
            ));
        }
        if let Some(reg) = gfl.positive_reg {
            let shape = tape.shape(reg)?;
            if shape != [4 * p, bins] {
                return Err(Error::shape(
                    "student_gfl.positive_reg",
                    format!("[{}, {bins}]", 4 * p),
                    &shape,
                ));
            }
        }
    }
    let region = if cfg.vlr_ld.weight != 0.0 {
        Some(valuable_region(assign, cfg)?)
    } else {
        None
    };

    let like = tape.value(student.reg[0])?;
    let zero = || constant_like(tape, vec![0.0], &[], &like);
    let mut terms = Vec::with_capacity(3);
    if layout.rows() == 0 {
        for (name, term) in [
            ("loss_ld", cfg.main_ld),
            ("loss_ld_vlr", cfg.vlr_ld),
            ("loss_kd", cfg.main_kd),
        ] {
            if term.weight != 0.0 {
                terms.push(LossTerm {
                    name,
                    value: zero()?,
                });
            }
        }
        return Ok(terms);
    }
    let (student_cls, student_reg) = flatten_head(tape, student)?;
    let (teacher_cls, teacher_reg) = flatten_head(tape, teacher)?;

    if cfg.main_ld.weight != 0.0 {
        let value = if p == 0 {
            zero()?
        } else {
            let weights = match student_gfl {
                Some(gfl) => gfl.positive_weights.to_vec::<f64>()?,
                None => score_weights(&*tape.value(student_cls)?, positives)?,
            };
            let student_rows = match student_gfl.and_then(|g| g.positive_reg) {
                Some(reg) => reg,
                None => gather_rows(tape, student_reg, positives, 4)?,
            };
            let teacher_rows = gather_rows(tape, teacher_reg, positives, 4)?;
            let w4: Vec<f64> = weights.iter().flat_map(|&w| [w; 4]).collect();
            let w4 = constant_like(tape, w4, &[4 * p], &like)?;
            tape.kd_kl_div(
                student_rows,
                teacher_rows,
                Some(w4),
                Some(MAIN_LD_AVG_FACTOR),
                &kl_config(&cfg.main_ld, Reduction::Mean),
            )?
        };
        terms.push(LossTerm {
            name: "loss_ld",
            value,
        });
    }

    if let Some(region) = region {
        let v = region.anchors.len();
        let value = if v == 0 {
            zero()?
        } else {
            let student_rows = gather_rows(tape, student_reg, &region.anchors, 4)?;
            let teacher_rows = gather_rows(tape, teacher_reg, &region.anchors, 4)?;
            let v4: Vec<f64> = region.weights.iter().flat_map(|&w| [w; 4]).collect();
            let v4 = constant_like(tape, v4, &[4 * v], &like)?;
            tape.kd_kl_div(
                student_rows,
                teacher_rows,
                Some(v4),
                Some(VLR_LD_AVG_FACTOR),
                &kl_config(&cfg.vlr_ld, Reduction::Mean),
            )?
        };
        terms.push(LossTerm {
            name: "loss_ld_vlr",
            value,
        });
    }

    if cfg.main_kd.weight != 0.0 {
        let value = if p == 0 {
            zero()?
        } else {
            // Σ_l Σ_{j∈P_l} KL_j / (|P_l| + ε) as one weighted sum.
            let levels: Vec<usize> = positives.iter().map(|&j| layout.level_of(j)).collect();
            let mut per_level = vec![0usize; layout.level_starts.len() - 1];
            for &l in &levels {
                per_level[l] += 1;
            }
            let weights: Vec<f64> = levels
                .iter()
                .map(|&l| 1.0 / (per_level[l] as f64 + AVG_FACTOR_EPS))
                .collect();
            let weights = constant_like(tape, weights, &[p], &like)?;
            let student_rows = gather_rows(tape, student_cls, positives, 1)?;
            let teacher_rows = gather_rows(tape, teacher_cls, positives, 1)?;
            tape.kd_kl_div(
                student_rows,
                teacher_rows,
                Some(weights),
                None,
                &kl_config(&cfg.main_kd, Reduction::Sum),
            )?
        };
        terms.push(LossTerm {
            name: "loss_kd",
            value,
        });
    }
    Ok(terms)
}

/// `w_j = max_c σ(x_{j,c})` at the positives, as GFL's head computes it (in the logits' dtype).
fn score_weights(cls: &Tensor, positives: &[usize]) -> Result<Vec<f64>> {
    let index = Tensor::from_vec(
        positives.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        &[positives.len()],
    )?;
    let picked = index_select(cls, 0, &index)?;
    max_last_axis(&sigmoid(&picked)?)?.values.to_vec::<f64>()
}

/// Per-level head outputs as plain tensors, for [`LdDistiller::compute`]: `cls[l]` `[B, C, H_l, W_l]`,
/// `reg[l]` `[B, 4·(reg_max + 1), H_l, W_l]`, finest level first.
#[derive(Clone, Copy, Debug)]
pub struct HeadTensors<'a> {
    /// Class logits per level, `[B, C, H_l, W_l]`.
    pub cls: &'a [&'a Tensor],
    /// Box-distribution logits per level, `[B, 4·(reg_max + 1), H_l, W_l]`.
    pub reg: &'a [&'a Tensor],
}

/// LD as the engine and embedding trainers run it. It has no trainable parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LdDistiller {
    cfg: LdConfig,
}

impl LdDistiller {
    /// A distiller with `cfg` (validated).
    pub fn new(cfg: LdConfig) -> Result<LdDistiller> {
        cfg.validate()?;
        Ok(LdDistiller { cfg })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &LdConfig {
        &self.cfg
    }

    /// The embedding entry: LD's terms of the `student` head outputs against the `teacher`'s under `assign`
    /// (CPU or device tensors, all of one dtype and device), run on a private tape. `w_j` is computed from
    /// the student's class logits. `student_grads` holds the gradients of the total with respect to
    /// `student.cls[0..L]` followed by `student.reg[0..L]`; there are no parameter gradients.
    pub fn compute(
        &self,
        student: &HeadTensors<'_>,
        teacher: &HeadTensors<'_>,
        assign: &DenseAssignment,
    ) -> Result<MethodGradients> {
        let store = crate::nn::ParamStore::new();
        let student_all: Vec<&Tensor> = student.cls.iter().chain(student.reg).copied().collect();
        let teacher_all: Vec<&Tensor> = teacher.cls.iter().chain(teacher.reg).copied().collect();
        let (student_levels, teacher_levels) = (student.cls.len(), teacher.cls.len());
        super::run_on_tape(&store, &student_all, &teacher_all, |tape, _, s, t| {
            let student = head_outputs(s, student_levels);
            let teacher = head_outputs(t, teacher_levels);
            ld_terms(tape, &student, &teacher, assign, None, &self.cfg)
        })
    }
}

fn head_outputs(vars: &[Var], cls_levels: usize) -> DetectorOutputs {
    let (cls, reg) = vars.split_at(cls_levels.min(vars.len()));
    DetectorOutputs {
        stages: Vec::new(),
        stage_strides: Vec::new(),
        fpn: Vec::new(),
        fpn_strides: Vec::new(),
        cls: cls.to_vec(),
        reg: reg.to_vec(),
    }
}

impl Distiller for LdDistiller {
    fn name(&self) -> &'static str {
        "ld"
    }

    /// [`ld_terms`] with the step's assignment and, when present, the student's GFL loss output.
    fn loss(
        &self,
        b: &crate::nn::Bound,
        _store: &crate::nn::ParamStore,
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
        ctx: &StepContext<'_>,
        _updates: &mut crate::nn::BufferUpdates,
    ) -> Result<Vec<LossTerm>> {
        ld_terms(
            b.tape(),
            student,
            teacher,
            ctx.assignment,
            ctx.student_gfl,
            &self.cfg,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{tape_gradcheck, GradcheckOptions};
    use crate::distill::gfl::{gfl_loss, GflLossConfig};
    use crate::distill::test_support::on_tape;
    use crate::distill::{Box4, ImageTargets};
    use crate::engine::assign::{assign_batch, AnchorLevel, AtssConfig, GFL_ANCHOR_SCALE};
    use crate::testing::{assert_close, Rng};
    use std::rc::Rc;

    const CLASSES: usize = 3;
    const REG_MAX: usize = 4;
    const LEVELS: [(usize, usize, f64); 2] = [(4, 4, 8.0), (2, 2, 16.0)];

    /// An ATSS assignment (mmdet's anchors and `ATSSAssigner(topk=9)`) of `images` over `levels`, with
    /// 4·stride anchors (half GFL's, so that the tiny grids here get positives).
    fn assignment(
        levels: &[(usize, usize, f64)],
        images: &[(Vec<Box4>, Vec<usize>)],
    ) -> DenseAssignment {
        let levels: Vec<AnchorLevel> = levels
            .iter()
            .map(|&(height, width, stride)| AnchorLevel {
                height,
                width,
                stride,
            })
            .collect();
        let targets: Vec<ImageTargets> = images
            .iter()
            .map(|(boxes, labels)| ImageTargets {
                boxes: boxes.clone(),
                labels: labels.clone(),
            })
            .collect();
        assign_batch(
            &targets,
            &levels,
            GFL_ANCHOR_SCALE / 2.0,
            &AtssConfig::default(),
        )
        .unwrap()
    }

    fn images() -> Vec<(Vec<Box4>, Vec<usize>)> {
        vec![
            (
                vec![[3.0, 4.5, 19.0, 22.0], [14.5, 10.0, 31.0, 29.5]],
                vec![2, 0],
            ),
            // The large box is matched on the coarse level.
            (
                vec![[6.0, 2.5, 26.5, 20.0], [-18.0, -20.0, 50.0, 49.0]],
                vec![1, 2],
            ),
        ]
    }

    struct Problem {
        student: Vec<Tensor>,
        teacher: Vec<Tensor>,
        assign: DenseAssignment,
        cfg: LdConfig,
    }

    /// Two images over two levels, 3 classes, 5 bins: `student`/`teacher` are `cls` levels then `reg` levels.
    fn problem(seed: u64) -> Problem {
        let mut rng = Rng::new(seed);
        let assign = assignment(&LEVELS, &images());
        let head = |rng: &mut Rng| -> Vec<Tensor> {
            let mut out = Vec::new();
            for channels in [CLASSES, 4 * (REG_MAX + 1)] {
                for &(h, w, _) in &LEVELS {
                    let n = 2 * channels * h * w;
                    let v: Vec<f64> = rng.normal_vec(n).iter().map(|x| 2.0 * x).collect();
                    out.push(Tensor::from_vec(v, &[2, channels, h, w]).unwrap());
                }
            }
            out
        };
        let student = head(&mut rng);
        let teacher = head(&mut rng);
        let cfg = LdConfig {
            reg_max: REG_MAX,
            ..LdConfig::default()
        };
        Problem {
            student,
            teacher,
            assign,
            cfg,
        }
    }

    fn outputs(vars: &[Var]) -> DetectorOutputs {
        head_outputs(vars, vars.len() / 2)
    }

    fn value(tape: &Tape, v: Var) -> f64 {
        tape.value(v).unwrap().to_vec::<f64>().unwrap()[0]
    }

    /// `w_j` of the problem's positives, for holding it fixed.
    fn fixed_weights(p: &Problem) -> GflLossOutput {
        let tape = Tape::new();
        let vars: Vec<Var> = on_tape(&tape, &p.student, false);
        let (cls, _) = flatten_head(&tape, &outputs(&vars)).unwrap();
        let w = score_weights(&tape.value(cls).unwrap(), &p.assign.positives).unwrap();
        let n = w.len();
        GflLossOutput {
            terms: Vec::new(),
            positive_weights: Rc::new(Tensor::from_vec(w, &[n]).unwrap()),
            positive_reg: None,
            num_positives: n as f64,
            weight_sum: 1.0,
        }
    }

    #[test]
    fn the_problem_has_positives_a_region_and_both_levels() {
        let p = problem(1);
        let region = valuable_region(&p.assign, &p.cfg).unwrap();
        let a = p.assign.anchors_per_image;
        assert!(p.assign.positives.len() >= 3, "{:?}", p.assign.positives);
        assert!(p.assign.positives.iter().any(|&j| j % a >= 16));
        assert!(p.assign.positives.iter().any(|&j| j % a < 16));
        assert!(region.anchors.len() >= 3, "{region:?}");
        assert!(region.anchors.iter().any(|&j| j >= a), "{region:?}");
        assert!(region.weights.iter().all(|&w| w > 0.0 && w <= 1.0));
    }

    #[test]
    fn gradcheck_of_the_whole_loss_with_w_fixed() {
        // w_j is detached in LD; holding it fixed makes the numeric derivative that of the same function.
        // The region depends on geometry only and is fixed anyway.
        for cfg_variant in 0..2 {
            let mut p = problem(2 + cfg_variant);
            if cfg_variant == 1 {
                p.cfg.vlr_overlap = OverlapConfig::default();
                p.cfg.main_ld.temperature = 3.0;
                p.cfg.vlr_ld.temperature = 1.5;
                p.cfg.main_kd.temperature = 1.0;
            }
            let fixed = fixed_weights(&p);
            let report = tape_gradcheck(
                |tape, leaves, consts| {
                    let terms = ld_terms(
                        tape,
                        &outputs(leaves),
                        &outputs(consts),
                        &p.assign,
                        Some(&fixed),
                        &p.cfg,
                    )?;
                    assert_eq!(terms.len(), 3);
                    let mut total = terms[0].value;
                    for t in &terms[1..] {
                        total = tape.add(total, t.value)?;
                    }
                    Ok(total)
                },
                &p.student,
                &p.teacher,
                &GradcheckOptions::default(),
            )
            .unwrap();
            assert!(report.nonzero_entries > 50, "{report:?}");
        }
    }

    #[test]
    fn reusing_the_gfl_output_matches_computing_w_here() {
        let p = problem(4);
        let run = |reuse: bool| -> (Vec<f64>, Vec<Vec<f64>>) {
            let tape = Tape::new();
            let leaves: Vec<Var> = on_tape(&tape, &p.student, true);
            let consts: Vec<Var> = on_tape(&tape, &p.teacher, false);
            let student = outputs(&leaves);
            let gfl = if reuse {
                let (cls, reg) = flatten_head(&tape, &student).unwrap();
                let cfg = GflLossConfig {
                    reg_max: REG_MAX,
                    ..Default::default()
                };
                Some(gfl_loss(&tape, cls, reg, &p.assign, &cfg).unwrap())
            } else {
                None
            };
            let terms = ld_terms(
                &tape,
                &student,
                &outputs(&consts),
                &p.assign,
                gfl.as_ref(),
                &p.cfg,
            )
            .unwrap();
            let values = terms.iter().map(|t| value(&tape, t.value)).collect();
            let mut total = terms[0].value;
            for t in &terms[1..] {
                total = tape.add(total, t.value).unwrap();
            }
            let grads = tape.backward(total).unwrap();
            let g = leaves
                .iter()
                .map(|&v| grads.get(v).unwrap().to_vec::<f64>().unwrap())
                .collect();
            (values, g)
        };
        let (v0, g0) = run(false);
        let (v1, g1) = run(true);
        assert_close("terms", &v1, &v0, 1e-14);
        for (a, b) in g1.iter().zip(&g0) {
            assert_close("grads", a, b, 1e-14);
        }
        assert!(v0.iter().all(|v| *v > 0.0), "{v0:?}");
    }

    #[test]
    fn compute_returns_every_student_gradient_in_order() {
        let p = problem(5);
        let s: Vec<&Tensor> = p.student.iter().collect();
        let t: Vec<&Tensor> = p.teacher.iter().collect();
        let ld = LdDistiller::new(p.cfg.clone()).unwrap();
        let out = ld
            .compute(
                &HeadTensors {
                    cls: &s[..2],
                    reg: &s[2..],
                },
                &HeadTensors {
                    cls: &t[..2],
                    reg: &t[2..],
                },
                &p.assign,
            )
            .unwrap();
        let names: Vec<&str> = out.terms.iter().map(|t| t.0).collect();
        assert_eq!(names, ["loss_ld", "loss_ld_vlr", "loss_kd"]);
        let sum: f64 = out.terms.iter().map(|t| t.1).sum();
        assert!((out.loss - sum).abs() < 1e-12);
        assert_eq!(out.student_grads.len(), 4);
        for (g, x) in out.student_grads.iter().zip(&p.student) {
            assert_eq!(g.shape(), x.shape());
            assert!(g.to_vec::<f64>().unwrap().iter().any(|v| *v != 0.0));
        }
        assert!(out.param_grads.is_empty());
        assert_eq!(ld.name(), "ld");
    }

    #[test]
    fn presets_and_config_validation() {
        let mmdet = LdConfig::mmdet();
        assert_eq!(
            mmdet.main_ld,
            KlTerm {
                weight: 0.25,
                temperature: 10.0
            }
        );
        assert_eq!((mmdet.vlr_ld.weight, mmdet.main_kd.weight), (0.0, 0.0));
        let d = LdConfig::default();
        assert_eq!(
            d.main_kd,
            KlTerm {
                weight: 10.0,
                temperature: 2.0
            }
        );
        assert_eq!(d.vlr_overlap, OverlapConfig::ld_repo());

        let p = problem(6);
        let tape = Tape::new();
        let s: Vec<Var> = on_tape(&tape, &p.student, true);
        let t: Vec<Var> = on_tape(&tape, &p.teacher, false);
        let cfg = LdConfig {
            reg_max: REG_MAX,
            ..LdConfig::mmdet()
        };
        let terms = ld_terms(&tape, &outputs(&s), &outputs(&t), &p.assign, None, &cfg).unwrap();
        assert_eq!(terms.len(), 1);
        assert_eq!(terms[0].name, "loss_ld");

        let mut bad = LdConfig::default();
        bad.main_kd.temperature = 0.0;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("main_kd.temperature"));
        let mut bad = LdConfig::default();
        bad.vlr_ld.weight = f64::NAN;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("vlr_ld.weight"));
        let mut bad = LdConfig::mmdet();
        bad.main_ld.weight = 0.0;
        assert!(LdDistiller::new(bad)
            .unwrap_err()
            .to_string()
            .contains("weight 0"));
        let bad = LdConfig {
            vlr_lower_ratio: 1.5,
            ..LdConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("vlr_lower_ratio"));
    }

    /// One image, one ground-truth box `[0, 0, 10, 10]` with threshold 0.5, hand-placed anchors.
    fn region_case(
        anchor_boxes: Vec<Box4>,
        gts: Vec<Box4>,
        thresholds: Vec<f64>,
    ) -> DenseAssignment {
        let a = anchor_boxes.len();
        DenseAssignment {
            batch: 1,
            anchors_per_image: a,
            points: anchor_boxes
                .iter()
                .map(|b| [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0])
                .collect(),
            strides: vec![8.0; a],
            anchor_boxes,
            images: vec![ImageTargets {
                labels: vec![0; gts.len()],
                boxes: gts,
            }],
            thresholds: vec![thresholds],
            ..Default::default()
        }
    }

    #[test]
    fn valuable_region_by_hand() {
        let anchors = vec![
            [0.0, 0.0, 10.0, 10.0],   // IoU 1, DIoU 1 ≥ τ: not valuable
            [0.0, 0.0, 10.0, 20.0],   // IoU 1/2, DIoU 1/2 − 25/500 = 0.45 (both variants)
            [5.0, 0.0, 15.0, 10.0],   // IoU 1/3, DIoU 1/3 − 25/325; repository: 1/2 − 25/325
            [2.0, 2.0, 8.0, 8.0],     // IoU 0.36, DIoU 0.36; repository: 36/36 = 1 ≥ τ
            [20.0, 20.0, 30.0, 30.0], // no overlap
        ];
        let gts = vec![[0.0, 0.0, 10.0, 10.0]];
        let assign = region_case(anchors.clone(), gts.clone(), vec![0.5]);
        let union = LdConfig {
            vlr_overlap: OverlapConfig::default(),
            ..LdConfig::default()
        };
        let r = valuable_region(&assign, &union).unwrap();
        assert_eq!(r.anchors, [1, 2, 3]);
        assert_close("weights", &r.weights, &[0.5, 1.0 / 3.0, 0.36], 1e-12);
        let r = valuable_region(&assign, &LdConfig::default()).unwrap();
        assert_eq!(r.anchors, [1, 2]);
        assert_close("weights", &r.weights, &[0.5, 1.0 / 3.0], 1e-12);

        // The lower bound: r·τ = 0.45 keeps anchor 1 (0.45 ≥ 0.45) and drops anchor 2.
        let tight = LdConfig {
            vlr_lower_ratio: 0.9,
            ..union.clone()
        };
        let r = valuable_region(&assign, &tight).unwrap();
        assert_eq!(r.anchors, [1]);

        // Several boxes: the weight is the largest IoU among the boxes that select the anchor; a NaN threshold
        // (a single ATSS candidate) selects nothing.
        let two = region_case(
            anchors.clone(),
            vec![
                [0.0, 0.0, 10.0, 10.0],
                [0.0, 0.0, 10.0, 18.0],
                [0.0, 0.0, 10.0, 20.0],
            ],
            vec![0.5, 0.95, f64::NAN],
        );
        let r = valuable_region(&two, &union).unwrap();
        // Anchor 1 vs box 1: IoU 0.9, DIoU 0.9 − 1/464 ∈ [0.2375, 0.95) → 0.9 beats 0.5.
        assert_eq!(r.anchors[..2], [0, 1]);
        assert_close("max over boxes", &[r.weights[1]], &[0.9], 1e-12);
    }

    fn run_terms(
        p: &Problem,
        assign: &DenseAssignment,
        cfg: &LdConfig,
    ) -> Result<Vec<(String, f64)>> {
        let tape = Tape::new();
        let s: Vec<Var> = on_tape(&tape, &p.student, true);
        let t: Vec<Var> = on_tape(&tape, &p.teacher, false);
        let terms = ld_terms(&tape, &outputs(&s), &outputs(&t), assign, None, cfg)?;
        Ok(terms
            .iter()
            .map(|t| (t.name.to_string(), value(&tape, t.value)))
            .collect())
    }

    #[test]
    fn no_positives_and_no_boxes_give_zero_terms() {
        let p = problem(7);
        // Positives removed, boxes kept: main LD and KD are exactly 0, the region is still distilled.
        let mut no_pos = p.assign.clone();
        no_pos.positives.clear();
        no_pos.positive_boxes.clear();
        no_pos.positive_labels.clear();
        let terms = run_terms(&p, &no_pos, &p.cfg).unwrap();
        assert_eq!(terms[0], ("loss_ld".into(), 0.0));
        assert!(terms[1].1 > 0.0 && terms[1].1.is_finite(), "{terms:?}");
        assert_eq!(terms[2], ("loss_kd".into(), 0.0));

        // All background (no boxes in any image): every term is 0, and the gradients are zeros.
        let empty = assignment(&LEVELS, &[(vec![], vec![]), (vec![], vec![])]);
        let terms = run_terms(&p, &empty, &p.cfg).unwrap();
        assert_eq!(terms.len(), 3);
        assert!(terms.iter().all(|t| t.1 == 0.0), "{terms:?}");
        let refs: Vec<&Tensor> = p.student.iter().collect();
        let trefs: Vec<&Tensor> = p.teacher.iter().collect();
        let out = LdDistiller::new(p.cfg.clone())
            .unwrap()
            .compute(
                &HeadTensors {
                    cls: &refs[..2],
                    reg: &refs[2..],
                },
                &HeadTensors {
                    cls: &trefs[..2],
                    reg: &trefs[2..],
                },
                &empty,
            )
            .unwrap();
        assert_eq!(out.loss, 0.0);
        for g in &out.student_grads {
            assert!(g.to_vec::<f64>().unwrap().iter().all(|v| *v == 0.0));
        }
    }

    #[test]
    fn an_empty_batch_gives_zero_terms() {
        let tape = Tape::new();
        let mut vars = Vec::new();
        for channels in [CLASSES, 4 * (REG_MAX + 1)] {
            for &(h, w, _) in &LEVELS {
                vars.push(
                    tape.leaf(
                        Tensor::zeros(&[0, channels, h, w], crate::DType::F64, &crate::Device::Cpu)
                            .unwrap(),
                    ),
                );
            }
        }
        let assign = assignment(&LEVELS, &[]);
        let cfg = LdConfig {
            reg_max: REG_MAX,
            ..LdConfig::default()
        };
        let terms = ld_terms(&tape, &outputs(&vars), &outputs(&vars), &assign, None, &cfg).unwrap();
        assert_eq!(terms.len(), 3);
        assert!(terms.iter().all(|t| value(&tape, t.value) == 0.0));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let p = problem(8);
        let tape = Tape::new();
        let s: Vec<Var> = on_tape(&tape, &p.student, true);
        let t: Vec<Var> = on_tape(&tape, &p.teacher, false);
        let err = |student: &DetectorOutputs,
                   teacher: &DetectorOutputs,
                   assign: &DenseAssignment,
                   cfg: &LdConfig| {
            ld_terms(&tape, student, teacher, assign, None, cfg)
                .unwrap_err()
                .to_string()
        };
        let (so, to) = (outputs(&s), outputs(&t));

        // Teacher reg of another size.
        let mut teacher = to.clone();
        teacher.reg[1] = tape.constant(
            Tensor::zeros(&[2, 20, 3, 2], crate::DType::F64, &crate::Device::Cpu).unwrap(),
        );
        let e = err(&so, &teacher, &p.assign, &p.cfg);
        assert!(e.contains("teacher.reg[1]"), "{e}");
        // Teacher cls with other classes.
        let mut teacher = to.clone();
        teacher.cls[0] = tape.constant(
            Tensor::zeros(&[2, 4, 4, 4], crate::DType::F64, &crate::Device::Cpu).unwrap(),
        );
        let e = err(&so, &teacher, &p.assign, &p.cfg);
        assert!(e.contains("teacher.cls[0]"), "{e}");
        // A missing teacher level.
        let mut teacher = to.clone();
        teacher.reg.pop();
        let e = err(&so, &teacher, &p.assign, &p.cfg);
        assert!(
            e.contains("teacher.reg") && e.contains("2 head levels"),
            "{e}"
        );
        // reg_max of the config does not match the heads.
        let e = err(&so, &to, &p.assign, &LdConfig::default());
        assert!(
            e.contains("student.reg[0]") && e.contains("reg_max 16"),
            "{e}"
        );
        // No head levels at all.
        let none = head_outputs(&[], 0);
        let e = err(&none, &none, &p.assign, &p.cfg);
        assert!(e.contains("at least one head level"), "{e}");

        // The assignment describes another batch / another level layout.
        let mut bad = p.assign.clone();
        bad.batch = 1;
        let e = err(&so, &to, &bad, &p.cfg);
        assert!(e.contains("do not match"), "{e}");
        let swapped = assignment(&[(2, 2, 16.0), (4, 4, 8.0)], &images());
        let e = err(&so, &to, &swapped, &p.cfg);
        assert!(e.contains("stride") && e.contains("level"), "{e}");
        let mut bad = p.assign.clone();
        bad.positives[0] = 2 * p.assign.anchors_per_image;
        let e = err(&so, &to, &bad, &p.cfg);
        assert!(e.contains("out of range"), "{e}");
        // The region needs the ground truth and thresholds of every image; the mmdet preset does not.
        let mut bad = p.assign.clone();
        bad.thresholds[1].clear();
        let e = err(&so, &to, &bad, &p.cfg);
        assert!(e.contains("thresholds[1]"), "{e}");
        let mmdet = LdConfig {
            reg_max: REG_MAX,
            ..LdConfig::mmdet()
        };
        assert!(ld_terms(&tape, &so, &to, &bad, None, &mmdet).is_ok());
        let mut bad = p.assign.clone();
        bad.images.pop();
        let e = err(&so, &to, &bad, &p.cfg);
        assert!(e.contains("2 images"), "{e}");
        let mut bad = p.assign.clone();
        bad.images[0].boxes[0][2] = f64::NAN;
        let e = err(&so, &to, &bad, &p.cfg);
        assert!(e.contains("images[0].boxes"), "{e}");

        // A GFL output that does not belong to this assignment.
        let mut gfl = fixed_weights(&p);
        gfl.positive_weights = Rc::new(Tensor::from_vec(vec![0.5; 2], &[2]).unwrap());
        let e = ld_terms(&tape, &so, &to, &p.assign, Some(&gfl), &p.cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("positive_weights"), "{e}");
    }
}
