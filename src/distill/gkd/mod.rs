//! GKD — distilling object detectors with global knowledge (Tang et al., ECCV'22; official code
//! `hikvision-research/DAVAR-Lab-ML`, shared/spec/methods.md §2, §6.5), as its released configuration
//! runs it, adapted to a one-stage GFL detector.
//!
//! Prototypes (a few representative boxes per class and FPN level, chosen jointly in the student's and
//! the teacher's feature spaces before every epoch, [`pgm`]) turn into a **robustness weight** per box
//! `r_b = 1 − |max_k cos(f^s_b, P^s_{c_b,l,k}) − max_k cos(f^t_b, P^t_{c_b,l,k})|` (detached), with `f`
//! the box's pooled feature on the *raw* student / teacher level `l`
//! ([`crate::ops::prototype::gkd_robust_weights`]; `r = 1` for a class without prototypes, and for
//! every box before the first prototypes exist). The weights scale two losses:
//!
//! | term | formula | weight |
//! | --- | --- | --- |
//! | `loss_kd_point` | `a·(1/L) Σ_l Σ M_l(Â_l − T_l)² / max(1, 2ΣM_l)` | 1 |
//! | `loss_bg_point` | `a·(1/L) Σ_l Σ Ō_l(Â_l − T_l)² / max(1, 2ΣŌ_l)` | 4 |
//! | `loss_kd_soft` | `(1/R) Σ_b r'_b (T²/C) Σ_k p^t_bk (log p^t_bk − log p^s_bk)`, `p = softmax(z/T)`, T = 2 | 1 |
//! | `loss_kd_pair` (option) | `a Σ_l mean_{b,j} SmoothL1(r_b cos(f^s_b, P^s_j), r_b cos(f^t_b, P^t_j))` | 5 |
//!
//! - **Decoupled feature imitation.** `Â_l = Conv3×3(S_l)` (pad 1, bias, no activation; parameters
//!   `distill.gkd.adapter.<l>.{weight,bias}` in the student's store, PyTorch's default initialisation, as
//!   the official custom init is never applied) maps the student's width to the teacher's (TinyGFL: 32 →
//!   64). The mask `M_l` `[B, 1, H, W]` (broadcast over channels; the sums `ΣM`, `ΣŌ` count every channel,
//!   as the official mask repeated over `C`) holds, for the GT boxes assigned to level `l`, their `r_b` on
//!   the cells `[⌊y1/s⌋, ⌊y2/s⌋) × [⌊x1/s⌋, ⌊x2/s⌋)` clamped to the map (later boxes overwrite; an empty
//!   extent marks the single cell `(⌊y1/s⌋, ⌊x1/s⌋)` with the larger of its value and `r_b`);
//!   `Ō = 1 − 1[M > 0]` where `M ≥ 0`. A box whose student and teacher similarities differ by more than 1
//!   has `r_b < 0`; the official code then keeps `r_b` in its "one-hot" mask, so its cells count as
//!   background with weight `1 − r_b > 1` (and as foreground with weight `r_b`), and so does this one:
//!   `Ō = 1 − M` where `M ≤ 0`. Sums run over the whole batch. `a = 1 − epoch/num_epochs` (zero-based epoch,
//!   [`GkdConfig::attenuation`]). The official code averages over its 5 levels (`/5`); here `/L`.
//! - **Level assignment** (mmdet's rule, GKD's `_map_roi_levels`):
//!   `lvl(b) = clamp(⌊log2(√((w + 1)(h + 1)) / s₀ + 1e-6)⌋, 0, L − 1)`. The official `s₀ = 56` sends
//!   every box under 112 px to the finest level — on ~128 px images with 6–64 px objects, all of them.
//!   The default here is `s₀ = 16` ([`GkdConfig::level_base_scale`]): boxes under 32 px go to P3, 32–64 px
//!   to P4, larger to P5, i.e. 2–4 cells of their level, so all three levels imitate some foreground.
//! - **Soft-label KD, adapted.** The official code distils the RoI head's 81-way logits of the positive
//!   proposals (weights `r'` from the pooled RoI features). A one-stage GFL detector has no RoI head, so
//!   the class logits at the ATSS positives of [`StepContext::assignment`] are distilled instead, with the
//!   softmax over the `C` class logits (GFL has no background logit; LD's "KD main" does the same),
//!   `R` = number of positives and `r'_b` = the robustness weight of the positive's GT box at the box's
//!   level `lvl(b)`. Without positives the term is a documented 0. No attenuation (as official).
//! - **Global-knowledge loss** (`pair_wise='use_r2i'`, off in the released config and here):
//!   [`GlobalKnowledge::Cosine`], summed over levels, every GT box against every prototype of the level
//!   (all classes), gradient through the student's pooled box features (the prototypes are constants).
//!   [`GlobalKnowledge::SoftAssignment`] is a variant of it (not in the official code): the KL between the
//!   teacher's and the student's soft assignments of the row-normalised box features to the normalised
//!   prototypes, `a·w·(1/N)Σ_b r_b KL(q^t_b ‖ q^s_b)`, `q_b = softmax_k(−‖x̂_b − p̂_k‖²/τ)`
//!   ([`crate::autograd::Tape::soft_assignment`]).
//!
//! Prototypes are rebuilt before every epoch from the current student ([`pgm`] says how an engine
//! calls it). The official code also builds them before the first epoch, from its COCO-trained student
//! checkpoint; a student trained from scratch has no meaningful features then, so an engine may start
//! without prototypes, which makes every weight 1 for that epoch.
//!
//! GT boxes are those of [`DenseAssignment::images`]. The official two-stage code imitates at its
//! positive proposals (`proposal_replace_gt`); a one-stage detector has none, so the GT boxes take their
//! place. Robust weights are computed for every box at every level (as the official code does).
//!
//! Gradients (student): `∂L_fg/∂Â = 2M(Â − T)/max(1, 2ΣM)·a/L`, `∂L_bg/∂Â = 8Ō(Â − T)/max(1, 2ΣŌ)·a/L`,
//! then the adapter's backward; `∂L_soft/∂z_b = r'_b T (p^s_b − p^t_b)/(C R)`. `r`, `r'` and the masks are
//! constants.

pub mod pgm;
#[cfg(test)]
mod tests;

pub use pgm::{
    box_gap_features, joint_matching_pursuit, pgm_sample, tape_box_gap_features,
    GkdPrototypeCollector, GkdPrototypes, LevelPrototypes, PgmConfig, PgmImage, PgmSample,
};

use super::gfl::{check_assignment, constant_like};
use super::{
    Box4, DenseAssignment, DetectorOutputs, DetectorShape, Distiller, ImageTargets, LossTerm,
    MethodGradients, StepContext,
};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::nn::{Bound, BufferUpdates, Conv2d, ConvSpec, ParamStore, WeightInit};
use crate::ops::dist_kl::{KdKlConfig, KlNormalizer};
use crate::ops::loss::Reduction;
use crate::ops::prototype::{
    gkd_robust_weights, AssignmentOutput, MaxCosineConfig, RobustWeightInputs, SoftAssignConfig,
};
use crate::ops::similarity::CosineConfig;
use crate::tensor::Tensor;
use crate::testing::Rng;

/// The prototype-similarity ("global knowledge") loss, off in GKD's released configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum GlobalKnowledge {
    /// Not computed (official `pair_wise='use_pgm'`: prototypes only weight the other terms).
    #[default]
    Off,
    /// The official `use_r2i` loss: SmoothL1 (β = 1) between `r_b·cos(f^s_b, P^s_j)` and
    /// `r_b·cos(f^t_b, P^t_j)`, averaged over boxes and the level's prototypes, summed over levels.
    Cosine,
    /// A soft-assignment variant (module docs). `τ` = 0.2 is the suggested value: on unit vectors
    /// `‖x̂ − p̂‖² = 2(1 − cos)`, so the logits are `−(1 − cos)/0.1`, the distance scale of the PGM's
    /// density kernel (σ = 0.1); a cosine gap of 0.3 between two prototypes is then a factor e³ ≈ 20 in
    /// their assignment, peaked but not one-hot.
    SoftAssignment {
        /// `τ > 0` of `softmax_k(−‖x̂ − p̂_k‖²/τ)`.
        temperature: f64,
    },
}

/// GKD's settings; the default is the released `faster_rcnn_coco_kd_config.py` (`kd_param =
/// [[1, 0], [1], [4, 1]]`, `kd_t = 2`, `kd_attenuation = True`, `pair_wise = 'use_pgm'`,
/// `pair_wise_factor = 5`) with the one-stage adaptations of the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct GkdConfig {
    /// Weight of `loss_kd_point` (`kd_param[2][1]·kd_param[0][0]` = 1).
    pub feature_weight: f64,
    /// Weight of `loss_bg_point` (`kd_param[2][0]·kd_param[0][0]` = 4).
    pub background_weight: f64,
    /// Weight of `loss_kd_soft` (`kd_param[1][0]` = 1).
    pub soft_label_weight: f64,
    /// Soft-label temperature `T` (`kd_t` = 2).
    pub temperature: f64,
    /// Multiply the feature (and global) terms by `a = 1 − epoch/num_epochs` (official: on).
    pub attenuation: bool,
    /// Weight the masks and the soft labels by the prototypes' robustness (`use_pair_kd = True`); off:
    /// `r = 1` everywhere.
    pub robust_weights: bool,
    /// `s₀` of the level rule (module docs). Official: 56 (five levels P2–P6 on COCO); default 16.
    pub level_base_scale: f64,
    /// The optional prototype-similarity loss.
    pub global: GlobalKnowledge,
    /// Its weight (`pair_wise_factor` = 5).
    pub global_weight: f64,
    /// Norm floor of the cosines (`F.normalize`'s 1e-12).
    pub eps: f64,
    /// The prototype generation.
    pub pgm: PgmConfig,
}

impl Default for GkdConfig {
    fn default() -> Self {
        GkdConfig {
            feature_weight: 1.0,
            background_weight: 4.0,
            soft_label_weight: 1.0,
            temperature: 2.0,
            attenuation: true,
            robust_weights: true,
            level_base_scale: 16.0,
            global: GlobalKnowledge::Off,
            global_weight: 5.0,
            eps: 1e-12,
            pgm: PgmConfig::default(),
        }
    }
}

impl GkdConfig {
    fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("feature_weight", self.feature_weight),
            ("background_weight", self.background_weight),
            ("soft_label_weight", self.soft_label_weight),
            ("global_weight", self.global_weight),
        ] {
            if !v.is_finite() {
                return Err(Error::invalid(
                    name,
                    format!("expected a finite weight, got {v}"),
                ));
            }
        }
        for (name, v) in [
            ("temperature", self.temperature),
            ("level_base_scale", self.level_base_scale),
            ("eps", self.eps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::invalid(
                    name,
                    format!("expected a finite value > 0, got {v}"),
                ));
            }
        }
        if let GlobalKnowledge::SoftAssignment { temperature } = self.global {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::invalid(
                    "global.temperature",
                    format!("expected a finite value > 0, got {temperature}"),
                ));
            }
        }
        Ok(())
    }
}

/// GKD's level of a box of `w × h` pixels among `levels` (module docs).
pub fn gkd_box_level(b: &Box4, base_scale: f64, levels: usize) -> usize {
    let scale = ((b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0)).sqrt();
    let lvl = (scale / base_scale + 1e-6).log2().floor();
    if lvl.is_nan() || lvl < 0.0 {
        0
    } else {
        (lvl as usize).min(levels.saturating_sub(1))
    }
}

/// Registers a convolution with PyTorch's default `nn.Conv2d` initialisation (weight and bias uniform in
/// `±1/√fan_in`, i.e. Kaiming-uniform with `a = √5`): the adapters of GKD and HGD.
pub(crate) fn torch_default_conv(
    store: &mut ParamStore,
    prefix: &str,
    spec: ConvSpec,
    rng: &mut Rng,
) -> Result<Conv2d> {
    let conv = Conv2d::new(store, prefix, spec, Some(0.0), WeightInit::Zeros, rng)?;
    let fan_in = spec.in_channels * spec.kernel * spec.kernel;
    let bound = 1.0 / (fan_in as f64).sqrt();
    let mut uniform = |shape: &[usize]| -> Result<Tensor> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect();
        Tensor::from_vec(v, shape)
    };
    let w_shape = store.value(conv.weight).shape().to_vec();
    store.set(conv.weight, uniform(&w_shape)?)?;
    if let Some(bias) = conv.bias {
        store.set(bias, uniform(&[spec.out_channels])?)?;
    }
    Ok(conv)
}

/// The `(weight, bias)` tape variables of adapters registered with a bias.
pub(crate) fn adapter_vars(adapters: &[Conv2d], b: &Bound) -> Vec<(Var, Var)> {
    adapters
        .iter()
        .map(|c| {
            (
                b.var(c.weight),
                b.var(c.bias.expect("adapters are registered with a bias")),
            )
        })
        .collect()
}

/// Checks a batch's ground truth: one entry per image, finite boxes with `x1 ≤ x2`, `y1 ≤ y2`, and, with
/// `num_classes`, one label per box below it.
pub(crate) fn check_images(
    images: &[ImageTargets],
    batch: usize,
    num_classes: Option<usize>,
    arg: &str,
) -> Result<()> {
    if images.len() != batch {
        return Err(Error::invalid(
            arg,
            format!(
                "expected the ground truth of {batch} images, got {}",
                images.len()
            ),
        ));
    }
    for (i, t) in images.iter().enumerate() {
        if let Some(bad) = t
            .boxes
            .iter()
            .find(|b| b.iter().any(|v| !v.is_finite()) || b[2] < b[0] || b[3] < b[1])
        {
            return Err(Error::invalid(
                arg,
                format!("image {i} has a box that is not finite with x1 ≤ x2, y1 ≤ y2: {bad:?}"),
            ));
        }
        let Some(classes) = num_classes else {
            continue;
        };
        if t.boxes.len() != t.labels.len() {
            return Err(Error::invalid(
                arg,
                format!(
                    "image {i} has {} boxes and {} labels",
                    t.boxes.len(),
                    t.labels.len()
                ),
            ));
        }
        if let Some(c) = t.labels.iter().find(|&&c| c >= classes) {
            return Err(Error::invalid(
                arg,
                format!("image {i} has label {c}, out of range for {classes} classes"),
            ));
        }
    }
    Ok(())
}

/// The tensors the embedding entry [`GkdDistiller::compute`] takes for one side (student or teacher).
#[derive(Clone, Debug)]
pub struct GkdInputs<'a> {
    /// FPN levels `[B, F, H_l, W_l]`, finest first.
    pub fpn: Vec<&'a Tensor>,
    /// Their strides in input pixels.
    pub fpn_strides: Vec<f64>,
    /// Classification logits per level `[B, C, H_l, W_l]`.
    pub cls: Vec<&'a Tensor>,
}

/// Per level, the robustness weight of every GT box of the batch (boxes of image 0 first), detached.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RobustWeights {
    pub per_level: Vec<Vec<f64>>,
}

/// The GT boxes of a batch, flattened.
struct BatchBoxes {
    per_image: Vec<Vec<Box4>>,
    labels: Vec<usize>,
    /// The GKD level of each box.
    levels: Vec<usize>,
}

/// GKD as a [`Distiller`]: its adapters live in the student's store; prototypes are set by the engine
/// before each epoch ([`GkdDistiller::set_prototypes`], [`pgm`] docs).
#[derive(Debug)]
pub struct GkdDistiller {
    cfg: GkdConfig,
    num_classes: usize,
    adapters: Vec<Conv2d>,
    prototypes: Option<GkdPrototypes>,
}

impl GkdDistiller {
    /// Registers one adapter `distill.gkd.adapter.<l>` (Conv3×3, `student.fpn_channels →
    /// teacher.fpn_channels`) per FPN level in `store`, initialised from `seed`. `fpn_levels` is the
    /// number of FPN levels both detectors output (TinyGFL: 3).
    pub fn new(
        store: &mut ParamStore,
        student: &DetectorShape,
        teacher: &DetectorShape,
        fpn_levels: usize,
        cfg: GkdConfig,
        seed: u64,
    ) -> Result<GkdDistiller> {
        cfg.validate()?;
        if fpn_levels == 0 {
            return Err(Error::invalid("fpn_levels", "expected at least 1 level"));
        }
        if student.num_classes != teacher.num_classes || student.num_classes == 0 {
            return Err(Error::invalid(
                "teacher",
                format!(
                    "student and teacher must share a nonzero class count, got {} and {}",
                    student.num_classes, teacher.num_classes
                ),
            ));
        }
        let mut rng = Rng::new(seed);
        let adapters = (0..fpn_levels)
            .map(|l| {
                torch_default_conv(
                    store,
                    &format!("distill.gkd.adapter.{l}"),
                    ConvSpec::same(student.fpn_channels, teacher.fpn_channels, 3),
                    &mut rng,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GkdDistiller {
            cfg,
            num_classes: student.num_classes,
            adapters,
            prototypes: None,
        })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &GkdConfig {
        &self.cfg
    }

    /// The adapters (one per FPN level).
    pub fn adapters(&self) -> &[Conv2d] {
        &self.adapters
    }

    /// Replaces the prototypes (checked against the adapters' widths, the level count and the classes).
    pub fn set_prototypes(&mut self, prototypes: GkdPrototypes) -> Result<()> {
        if prototypes.levels.len() != self.adapters.len() {
            return Err(Error::invalid(
                "prototypes",
                format!(
                    "expected {} levels, got {}",
                    self.adapters.len(),
                    prototypes.levels.len()
                ),
            ));
        }
        if prototypes.num_classes != self.num_classes {
            return Err(Error::invalid(
                "prototypes",
                format!(
                    "built for {} classes, the detector has {}",
                    prototypes.num_classes, self.num_classes
                ),
            ));
        }
        for (l, (p, conv)) in prototypes.levels.iter().zip(&self.adapters).enumerate() {
            let k = p.labels.shape()[0];
            let want_s = [k, conv.spec.in_channels];
            let want_t = [k, conv.spec.out_channels];
            if k > 0 && (p.student.shape() != want_s || p.teacher.shape() != want_t) {
                return Err(Error::invalid(
                    "prototypes",
                    format!(
                        "level {l}: expected student {want_s:?} and teacher {want_t:?}, got {:?} and {:?}",
                        p.student.shape(),
                        p.teacher.shape()
                    ),
                ));
            }
        }
        self.prototypes = Some(prototypes);
        Ok(())
    }

    /// Forgets the prototypes (every robustness weight becomes 1).
    pub fn clear_prototypes(&mut self) {
        self.prototypes = None;
    }

    /// The current prototypes, if any were set.
    pub fn prototypes(&self) -> Option<&GkdPrototypes> {
        self.prototypes.as_ref()
    }

    /// The embedding entry: GKD's terms on plain tensors (CPU or device, all on one device), with the
    /// adapters taken from `store` (the store [`GkdDistiller::new`] registered them in, on the same
    /// device). `ctx.assignment` supplies the GT boxes and the positives; `ctx.epoch` / `num_epochs` the
    /// attenuation. Student gradients come back in the order `student.fpn` then `student.cls`; adapter
    /// gradients in [`MethodGradients::param_grads`].
    pub fn compute(
        &self,
        store: &ParamStore,
        student: &GkdInputs<'_>,
        teacher: &GkdInputs<'_>,
        ctx: &StepContext<'_>,
    ) -> Result<MethodGradients> {
        let levels = student.fpn.len();
        if student.cls.len() != levels || teacher.cls.len() != teacher.fpn.len() {
            return Err(Error::invalid(
                "cls",
                format!(
                    "expected one classification map per FPN level, got {}/{} (student) and {}/{} (teacher)",
                    student.cls.len(),
                    levels,
                    teacher.cls.len(),
                    teacher.fpn.len()
                ),
            ));
        }
        let s_all: Vec<&Tensor> = student.fpn.iter().chain(&student.cls).copied().collect();
        let t_all: Vec<&Tensor> = teacher.fpn.iter().chain(&teacher.cls).copied().collect();
        let t_levels = teacher.fpn.len();
        super::run_on_tape(store, &s_all, &t_all, |tape, b, s, t| {
            let outputs = |v: &[Var], n: usize, strides: &[f64]| DetectorOutputs {
                stages: Vec::new(),
                stage_strides: Vec::new(),
                fpn: v[..n].to_vec(),
                fpn_strides: strides.to_vec(),
                cls: v[n..].to_vec(),
                reg: Vec::new(),
            };
            let so = outputs(s, levels, &student.fpn_strides);
            let to = outputs(t, t_levels, &teacher.fpn_strides);
            let adapters = self.adapter_vars(b);
            Ok(self.terms(tape, &adapters, &so, &to, ctx, None)?.0)
        })
    }

    /// The robustness weights `r` GKD would use for this batch: per FPN level, one per GT box of
    /// `ctx.assignment.images` (image 0's boxes first); all 1 without prototypes. For inspection and
    /// logging; [`GkdDistiller::compute`] computes them itself.
    pub fn robust_weights_of(
        &self,
        student: &GkdInputs<'_>,
        teacher: &GkdInputs<'_>,
        ctx: &StepContext<'_>,
    ) -> Result<Vec<Vec<f64>>> {
        let tape = Tape::new();
        let side = |inputs: &GkdInputs<'_>| -> Result<DetectorOutputs> {
            let constants = |v: &[&Tensor]| -> Result<Vec<Var>> {
                v.iter()
                    .map(|t| Ok(tape.constant(t.try_clone()?)))
                    .collect()
            };
            Ok(DetectorOutputs {
                stages: Vec::new(),
                stage_strides: Vec::new(),
                fpn: constants(&inputs.fpn)?,
                fpn_strides: inputs.fpn_strides.clone(),
                cls: Vec::new(),
                reg: Vec::new(),
            })
        };
        let (so, to) = (side(student)?, side(teacher)?);
        let batch = self.check_levels(&tape, &so, &to)?;
        let boxes = self.batch_boxes(ctx.assignment, batch)?;
        let features = if self.prototypes.is_some() && !boxes.labels.is_empty() {
            Some(self.box_features(&tape, &so, &to, &boxes, false)?)
        } else {
            None
        };
        Ok(self
            .weights_or_ones(&tape, features.as_deref(), &boxes)?
            .per_level)
    }

    fn adapter_vars(&self, b: &Bound) -> Vec<(Var, Var)> {
        adapter_vars(&self.adapters, b)
    }

    /// Checks the batch's GT boxes and assigns their levels.
    fn batch_boxes(&self, assign: &DenseAssignment, batch: usize) -> Result<BatchBoxes> {
        check_images(
            &assign.images,
            batch,
            Some(self.num_classes),
            "assignment.images",
        )?;
        let per_image: Vec<Vec<Box4>> = assign.images.iter().map(|t| t.boxes.clone()).collect();
        let labels = assign
            .images
            .iter()
            .flat_map(|t| t.labels.iter().copied())
            .collect();
        let levels = per_image
            .iter()
            .flatten()
            .map(|b| gkd_box_level(b, self.cfg.level_base_scale, self.adapters.len()))
            .collect();
        Ok(BatchBoxes {
            per_image,
            labels,
            levels,
        })
    }

    /// Validates the two forwards' FPN levels against the adapters; returns the batch size.
    fn check_levels(
        &self,
        tape: &Tape,
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
    ) -> Result<usize> {
        let levels = self.adapters.len();
        for (who, out) in [("student", student), ("teacher", teacher)] {
            if out.fpn.len() != levels || out.fpn_strides.len() != levels {
                return Err(Error::invalid(
                    format!("{who}.fpn"),
                    format!(
                        "expected {levels} FPN levels and strides, got {} and {}",
                        out.fpn.len(),
                        out.fpn_strides.len()
                    ),
                ));
            }
        }
        if student.fpn_strides != teacher.fpn_strides {
            return Err(Error::invalid(
                "teacher.fpn_strides",
                format!(
                    "expected the student's strides {:?}, got {:?}",
                    student.fpn_strides, teacher.fpn_strides
                ),
            ));
        }
        let mut batch = None;
        for (l, conv) in self.adapters.iter().enumerate() {
            let s = tape.shape(student.fpn[l])?;
            let t = tape.shape(teacher.fpn[l])?;
            let [b, cs, h, w] = s[..] else {
                return Err(Error::shape(
                    format!("student.fpn[{l}]"),
                    "[B, C, H, W]",
                    &s,
                ));
            };
            if cs != conv.spec.in_channels {
                return Err(Error::shape(
                    format!("student.fpn[{l}]"),
                    format!(
                        "[B, {}, H, W] (the adapter's input width)",
                        conv.spec.in_channels
                    ),
                    &s,
                ));
            }
            let want_t = [b, conv.spec.out_channels, h, w];
            if t != want_t {
                return Err(Error::shape(
                    format!("teacher.fpn[{l}]"),
                    format!(
                        "{want_t:?} (the student's batch and map size, the adapter's output width)"
                    ),
                    &t,
                ));
            }
            if b == 0 || h == 0 || w == 0 {
                return Err(Error::shape(
                    format!("student.fpn[{l}]"),
                    "a non-empty batch and map",
                    &s,
                ));
            }
            if batch.is_some_and(|prev| prev != b) {
                return Err(Error::shape(
                    format!("student.fpn[{l}]"),
                    format!("batch {} as level 0", batch.unwrap_or(0)),
                    &s,
                ));
            }
            batch = Some(b);
        }
        Ok(batch.unwrap_or(0))
    }

    /// Per level, the boxes' pooled features on the tape: the student's (differentiable with `with_grad`,
    /// for the global loss; detached otherwise) and the teacher's (constants).
    fn box_features(
        &self,
        tape: &Tape,
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
        boxes: &BatchBoxes,
        with_grad: bool,
    ) -> Result<Vec<(Var, Var)>> {
        (0..self.adapters.len())
            .map(|l| {
                let stride = student.fpn_strides[l];
                let s = if with_grad {
                    student.fpn[l]
                } else {
                    tape.detach(student.fpn[l])?
                };
                Ok((
                    tape_box_gap_features(tape, s, stride, &boxes.per_image)?,
                    tape_box_gap_features(tape, teacher.fpn[l], stride, &boxes.per_image)?,
                ))
            })
            .collect()
    }

    /// The robustness weights of every box at every level from its pooled `features` (1 at a level
    /// without prototypes).
    fn robust_weights(
        &self,
        tape: &Tape,
        protos: &GkdPrototypes,
        features: &[(Var, Var)],
        boxes: &BatchBoxes,
    ) -> Result<RobustWeights> {
        let n = boxes.labels.len();
        let labels = Tensor::from_vec(
            boxes.labels.iter().map(|&c| c as i64).collect::<Vec<_>>(),
            &[n],
        )?;
        let cfg = MaxCosineConfig {
            num_classes: self.num_classes,
            eps: self.cfg.eps,
        };
        let mut per_level = Vec::with_capacity(self.adapters.len());
        for (p, &(fs, ft)) in protos.levels.iter().zip(features) {
            if p.labels.shape()[0] == 0 {
                per_level.push(vec![1.0; n]);
                continue;
            }
            let (fs, ft) = (tape.value(fs)?, tape.value(ft)?);
            let (ps, pt) = pgm::level_on(p, fs.dtype(), &fs.device())?;
            let r = gkd_robust_weights(
                &RobustWeightInputs {
                    student: &fs,
                    teacher: &ft,
                    labels: &labels,
                    student_prototypes: &ps,
                    teacher_prototypes: &pt,
                    prototype_labels: &p.labels,
                },
                &cfg,
            )?;
            per_level.push(r.to_vec::<f64>()?);
        }
        Ok(RobustWeights { per_level })
    }

    /// The weights of every box: from the prototypes when there are any (and the weights are on), else
    /// 1. `features` must be given in the first case.
    fn weights_or_ones(
        &self,
        tape: &Tape,
        features: Option<&[(Var, Var)]>,
        boxes: &BatchBoxes,
    ) -> Result<RobustWeights> {
        match (self.prototypes.as_ref(), features) {
            (Some(protos), Some(f)) if self.cfg.robust_weights => {
                self.robust_weights(tape, protos, f, boxes)
            }
            _ => Ok(RobustWeights {
                per_level: vec![vec![1.0; boxes.labels.len()]; self.adapters.len()],
            }),
        }
    }

    /// GKD's terms; `fixed` replaces the robustness weights (gradient checks hold them constant).
    /// Returns the terms and the weights used.
    pub(crate) fn terms(
        &self,
        tape: &Tape,
        adapters: &[(Var, Var)],
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
        ctx: &StepContext<'_>,
        fixed: Option<&RobustWeights>,
    ) -> Result<(Vec<LossTerm>, RobustWeights)> {
        if adapters.len() != self.adapters.len() {
            return Err(Error::invalid(
                "adapters",
                format!(
                    "expected {} adapters, got {}",
                    self.adapters.len(),
                    adapters.len()
                ),
            ));
        }
        let batch = self.check_levels(tape, student, teacher)?;
        let boxes = self.batch_boxes(ctx.assignment, batch)?;
        let n = boxes.labels.len();
        // The pooled box features, once: for the weights and for the global loss.
        let global = self.cfg.global != GlobalKnowledge::Off;
        let needs_weights = fixed.is_none() && self.cfg.robust_weights;
        let features = if n > 0 && self.prototypes.is_some() && (needs_weights || global) {
            Some(self.box_features(tape, student, teacher, &boxes, global)?)
        } else {
            None
        };
        let robust = match fixed {
            Some(r) => {
                if r.per_level.len() != self.adapters.len()
                    || r.per_level.iter().any(|v| v.len() != n)
                {
                    return Err(Error::invalid(
                        "robust weights",
                        format!("expected {} levels of {n} weights", self.adapters.len()),
                    ));
                }
                r.clone()
            }
            None => self.weights_or_ones(tape, features.as_deref(), &boxes)?,
        };
        let attenuation = if self.cfg.attenuation {
            if ctx.num_epochs == 0 || ctx.epoch >= ctx.num_epochs {
                return Err(Error::invalid(
                    "epoch",
                    format!(
                        "the attenuation 1 − epoch/num_epochs needs epoch < num_epochs, got {} of {}",
                        ctx.epoch, ctx.num_epochs
                    ),
                ));
            }
            1.0 - ctx.epoch as f64 / ctx.num_epochs as f64
        } else {
            1.0
        };

        let (fg, bg) = self.feature_terms(tape, adapters, student, teacher, &boxes, &robust)?;
        let levels = self.adapters.len() as f64;
        let mut terms = vec![
            LossTerm {
                name: "loss_kd_point",
                value: tape.scale(fg, self.cfg.feature_weight * attenuation / levels)?,
            },
            LossTerm {
                name: "loss_bg_point",
                value: tape.scale(bg, self.cfg.background_weight * attenuation / levels)?,
            },
            LossTerm {
                name: "loss_kd_soft",
                value: self.soft_label_term(
                    tape,
                    student,
                    teacher,
                    ctx.assignment,
                    &boxes,
                    &robust,
                )?,
            },
        ];
        if global {
            let g = self.global_term(tape, student, features.as_deref(), &boxes, &robust)?;
            terms.push(LossTerm {
                name: "loss_kd_pair",
                value: tape.scale(g, self.cfg.global_weight * attenuation)?,
            });
        }
        Ok((terms, robust))
    }

    /// `Σ_l L_fg,l` and `Σ_l L_bg,l` (unweighted, unattenuated).
    fn feature_terms(
        &self,
        tape: &Tape,
        adapters: &[(Var, Var)],
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
        boxes: &BatchBoxes,
        robust: &RobustWeights,
    ) -> Result<(Var, Var)> {
        let mut fg_total: Option<Var> = None;
        let mut bg_total: Option<Var> = None;
        for (l, (conv, &(w, bias))) in self.adapters.iter().zip(adapters).enumerate() {
            let adapted = tape.conv2d(student.fpn[l], w, Some(bias), &conv.cfg)?;
            let target = teacher.fpn[l];
            let t_value = tape.value(target)?;
            let [b, c, h, wd] = t_value.shape()[..] else {
                unreachable!("checked in check_levels")
            };
            let mask = self.level_mask(
                l,
                student.fpn_strides[l],
                boxes,
                &robust.per_level[l],
                b,
                h,
                wd,
            );
            // The official `1 − onehot`, where `onehot` is the mask with its positive cells set to 1: a
            // cell of a box with r_b ≤ 0 keeps −r_b in it (module docs).
            let background: Vec<f64> = mask
                .iter()
                .map(|&m| if m > 0.0 { 0.0 } else { 1.0 - m })
                .collect();
            let fg_norm = (2.0 * c as f64 * mask.iter().sum::<f64>()).max(1.0);
            let bg_norm = (2.0 * c as f64 * background.iter().sum::<f64>()).max(1.0);
            let diff = tape.sub(adapted, target)?;
            let sq = tape.square(diff)?;
            let weighted = |m: Vec<f64>, norm: f64| -> Result<Var> {
                let m = constant_like(tape, m, &[b, 1, h, wd], &t_value)?;
                let s = tape.sum_all(tape.mul(sq, m)?)?;
                tape.scale(s, 1.0 / norm)
            };
            let fg = weighted(mask, fg_norm)?;
            let bg = weighted(background, bg_norm)?;
            fg_total = Some(match fg_total {
                Some(acc) => tape.add(acc, fg)?,
                None => fg,
            });
            bg_total = Some(match bg_total {
                Some(acc) => tape.add(acc, bg)?,
                None => bg,
            });
        }
        Ok((
            fg_total.expect("at least one level"),
            bg_total.expect("at least one level"),
        ))
    }

    /// The mask `M_l` `[B, 1, H, W]` (row-major) of level `l` (module docs).
    #[allow(clippy::too_many_arguments)]
    fn level_mask(
        &self,
        level: usize,
        stride: f64,
        boxes: &BatchBoxes,
        weights: &[f64],
        batch: usize,
        h: usize,
        w: usize,
    ) -> Vec<f64> {
        let mut mask = vec![0.0f64; batch * h * w];
        let mut n = 0;
        for (img, list) in boxes.per_image.iter().enumerate() {
            let plane = &mut mask[img * h * w..(img + 1) * h * w];
            for bx in list {
                let (r, lvl): (f64, usize) = (weights[n], boxes.levels[n]);
                n += 1;
                if lvl != level {
                    continue;
                }
                let cell =
                    |v: f64, limit: usize| (v / stride).floor().max(0.0).min(limit as f64) as usize;
                let (lx, ly) = (cell(bx[0], w - 1), cell(bx[1], h - 1));
                let (rx, ry) = (cell(bx[2], w), cell(bx[3], h));
                if rx <= lx || ry <= ly {
                    let p = &mut plane[ly * w + lx];
                    *p = (*p).max(r);
                } else {
                    for y in ly..ry {
                        plane[y * w + lx..y * w + rx].fill(r);
                    }
                }
            }
        }
        mask
    }

    /// `loss_kd_soft` (weighted), 0 without positives.
    fn soft_label_term(
        &self,
        tape: &Tape,
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
        assign: &DenseAssignment,
        boxes: &BatchBoxes,
        robust: &RobustWeights,
    ) -> Result<Var> {
        let s_cls = flatten_levels(tape, &student.cls, "student.cls")?;
        let t_cls = flatten_levels(tape, &teacher.cls, "teacher.cls")?;
        let s_shape = tape.shape(s_cls)?;
        let t_shape = tape.shape(t_cls)?;
        if s_shape != t_shape {
            return Err(Error::shape(
                "teacher.cls",
                format!("{s_shape:?} (flattened like the student's)"),
                &t_shape,
            ));
        }
        if s_shape[1] != self.num_classes {
            return Err(Error::shape(
                "student.cls",
                format!("[B, {}, H, W] per level", self.num_classes),
                &s_shape,
            ));
        }
        check_assignment(assign, s_shape[0], self.num_classes)?;
        let p = assign.positives.len();
        if p == 0 {
            let s = tape.sum_all(s_cls)?;
            return tape.scale(s, 0.0);
        }
        // r' of each positive: the weight of its GT box (same image, box and label) at the box's level.
        let mut starts = Vec::with_capacity(boxes.per_image.len());
        let mut acc = 0;
        for list in &boxes.per_image {
            starts.push(acc);
            acc += list.len();
        }
        let mut weights = Vec::with_capacity(p);
        for ((&anchor, gt), &label) in assign
            .positives
            .iter()
            .zip(&assign.positive_boxes)
            .zip(&assign.positive_labels)
        {
            let img = anchor / assign.anchors_per_image;
            let found = boxes.per_image[img]
                .iter()
                .zip(&assign.images[img].labels)
                .position(|(b, &c)| b == gt && c == label)
                .ok_or_else(|| {
                    Error::invalid(
                        "assignment",
                        format!(
                            "positive anchor {anchor}'s box {gt:?} (label {label}) is not a ground-truth box of image {img}"
                        ),
                    )
                })?;
            let k = starts[img] + found;
            weights.push(robust.per_level[boxes.levels[k]][k]);
        }
        let t_value = tape.value(t_cls)?;
        let index = Tensor::from_vec(
            assign
                .positives
                .iter()
                .map(|&i| i as i64)
                .collect::<Vec<_>>(),
            &[p],
        )?
        .to_device(&t_value.device())?;
        let index = tape.constant(index);
        let s_pos = tape.index_select(s_cls, 0, index)?;
        let t_pos = tape.index_select(t_cls, 0, index)?;
        let w = constant_like(tape, weights, &[p], &t_value)?;
        let cfg = KdKlConfig {
            temperature: self.cfg.temperature,
            normalizer: KlNormalizer::MeanOverBins,
            reduction: Reduction::Mean,
            loss_weight: self.cfg.soft_label_weight,
        };
        tape.kd_kl_div(s_pos, t_pos, Some(w), None, &cfg)
    }

    /// `Σ_l L_g,l` (unweighted, unattenuated) from the boxes' pooled `features` (the student's
    /// differentiable): 0 without prototypes or boxes (no features).
    fn global_term(
        &self,
        tape: &Tape,
        student: &DetectorOutputs,
        features: Option<&[(Var, Var)]>,
        boxes: &BatchBoxes,
        robust: &RobustWeights,
    ) -> Result<Var> {
        let n = boxes.labels.len();
        let zero = || -> Result<Var> {
            let s = tape.sum_all(student.fpn[0])?;
            tape.scale(s, 0.0)
        };
        let (Some(protos), Some(features)) = (&self.prototypes, features) else {
            return zero();
        };
        let cos_cfg = CosineConfig { eps: self.cfg.eps };
        let mut total: Option<Var> = None;
        for (l, (p, &(fs, ft))) in protos.levels.iter().zip(features).enumerate() {
            if p.labels.shape()[0] == 0 {
                continue;
            }
            let like = tape.value(ft)?;
            let (ps, pt) = pgm::level_on(p, like.dtype(), &like.device())?;
            let (ps, pt) = (tape.constant(ps), tape.constant(pt));
            let r = constant_like(tape, robust.per_level[l].clone(), &[n, 1], &like)?;
            let level_loss = match self.cfg.global {
                GlobalKnowledge::Off => unreachable!("global_term runs only when enabled"),
                GlobalKnowledge::Cosine => {
                    let cs = tape.cosine_cross(fs, ps, &cos_cfg)?;
                    let ct = tape.cosine_cross(ft, pt, &cos_cfg)?;
                    let d = tape.mul(tape.sub(cs, ct)?, r)?;
                    tape.mean_all(smooth_l1(tape, d, &like)?)?
                }
                GlobalKnowledge::SoftAssignment { temperature } => {
                    let xs = tape.normalize_rows(fs, &cos_cfg)?;
                    let xt = tape.normalize_rows(ft, &cos_cfg)?;
                    let ps = tape.normalize_rows(ps, &cos_cfg)?;
                    let pt = tape.normalize_rows(pt, &cos_cfg)?;
                    let log_cfg = SoftAssignConfig {
                        temperature,
                        output: AssignmentOutput::LogProbabilities,
                    };
                    let log_qs = tape.soft_assignment(xs, ps, &log_cfg)?;
                    let log_qt = tape.soft_assignment(xt, pt, &log_cfg)?;
                    let qt = tape.exp(log_qt)?;
                    // KL(q^t ‖ q^s) per box = Σ_k q^t (log q^t − log q^s), weighted by r_b, averaged.
                    let kl = tape.mul(qt, tape.sub(log_qt, log_qs)?)?;
                    let kl = tape.mul(kl, r)?;
                    tape.scale(tape.sum_all(kl)?, 1.0 / n as f64)?
                }
            };
            total = Some(match total {
                Some(acc) => tape.add(acc, level_loss)?,
                None => level_loss,
            });
        }
        match total {
            Some(t) => Ok(t),
            None => zero(),
        }
    }
}

/// `SmoothL1_{β=1}(d) = ½m² + max(|d| − 1, 0)` with `m = |d| − max(|d| − 1, 0) = min(|d|, 1)`: `½d²` for
/// `|d| < 1`, `|d| − ½` beyond, gradient `clip(d, −1, 1)`.
fn smooth_l1(tape: &Tape, d: Var, like: &Tensor) -> Result<Var> {
    let one = constant_like(tape, vec![1.0], &[], like)?;
    let abs = tape.abs(d)?;
    let excess = tape.relu(tape.sub(abs, one)?)?;
    let m = tape.sub(abs, excess)?;
    let quad = tape.scale(tape.square(m)?, 0.5)?;
    tape.add(quad, excess)
}

/// Per-level head maps `[B, C, H_l, W_l]` flattened to `[B·A, C]` (image, then level, then row-major),
/// the anchor order of [`DenseAssignment`].
fn flatten_levels(tape: &Tape, levels: &[Var], arg: &str) -> Result<Var> {
    if levels.is_empty() {
        return Err(Error::invalid(arg, "expected at least one level"));
    }
    let mut parts = Vec::with_capacity(levels.len());
    let mut batch = 0;
    for &level in levels {
        let shape = tape.shape(level)?;
        let [b, c, h, w] = shape[..] else {
            return Err(Error::shape(arg, "[B, C, H, W]", &shape));
        };
        batch = b;
        let nhwc = tape.permute(level, &[0, 2, 3, 1])?;
        parts.push(tape.reshape(nhwc, &[b, h * w, c])?);
    }
    let joined = if parts.len() == 1 {
        parts[0]
    } else {
        tape.concat(&parts, 1)?
    };
    let shape = tape.shape(joined)?;
    tape.reshape(joined, &[batch * shape[1], shape[2]])
}

impl Distiller for GkdDistiller {
    fn name(&self) -> &'static str {
        "gkd"
    }

    fn loss(
        &self,
        b: &Bound,
        _store: &ParamStore,
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
        ctx: &StepContext<'_>,
        _updates: &mut BufferUpdates,
    ) -> Result<Vec<LossTerm>> {
        let adapters = self.adapter_vars(b);
        Ok(self
            .terms(b.tape(), &adapters, student, teacher, ctx, None)?
            .0)
    }
}
