//! Dsig — distillation of a structured instance graph (Chen et al., ICCV'21; shared/spec/methods.md §1,
//! §6.1–6.2), adapted to a one-stage detector.
//!
//! # What is distilled
//!
//! Per image, a graph whose **nodes** are RoIs pooled from the FPN — `n_f` foreground nodes and `n_b`
//! background nodes — with the *same* boxes pooled from the student's (adapted) and the teacher's maps:
//! `v = flatten(RoIAlignV2_7×7(F, box)) ∈ R^D`, `D = C_t·7·7` (aligned, adaptive sampling, each box pooled
//! from one FPN level, see [`NodeLevels`]). The **edges** are the cosine similarities
//! `A = N(V)N(V)ᵀ` (`N` = row L2-normalisation, ε = 1e-12) over `V = [fg; bg[M]]` (`m = n_f + |M|` rows),
//! where `M` are the *mined* background nodes. The losses, as the official code computes them (summed over
//! the images of the batch, not averaged):
//!
//! | term | formula | weight (R18←R50) |
//! | --- | --- | --- |
//! | `loss_dsig_feat` | `Σ_l mean_{B×C×H×W}(Â_l(S_l) − T_l)²` (full-map MSE on every FPN level) | 0.5 |
//! | `loss_dsig_node_fg` | `Σ_img mean_{n_f×D}(v^s − v^t)²` | 0.5 |
//! | `loss_dsig_node_bg` | `Σ_img α·(n_f/n_b)·mean_{n_b×D}(v^s − v^t)²` over **all** sampled bg nodes, α = 7.5 | 0.5 |
//! | `loss_dsig_edge` | `Σ_img ½·mean_{m×m}(A^s − A^t)²` ([`Tape::dsig_edge_loss`] on the node subset) | 2.0 |
//!
//! `Â_l` is a trainable 1×1 convolution from the student's FPN width to the teacher's
//! (`distill.dsig.adapter.<l>.{weight,bias}`), present when the widths differ (TinyGFL: 32 → 64; the
//! official students and teachers share a 256-wide FPN and need none); the node features are pooled from the
//! adapted maps. The teacher's maps are used raw and are constants. Other official configurations are
//! presets: [`DsigConfig::r50_r101`], [`DsigConfig::r101_r152`], [`DsigConfig::retinanet`].
//!
//! **Background mining** (no gradient): the official code keeps a bg RoI for the graph when the teacher's
//! box-head cross-entropy of "background" is `≥ θ = 0.6` (hard negatives; no top-k cap). A one-stage
//! detector has no box head and no background class, so the teacher's background probability of a node is
//! taken as `p_bg = 1 − max_c σ(z^t_c)` at the anchor point nearest to the node's centre
//! (`(⌊c_x/s + ½⌋, ⌊c_y/s + ½⌋)`, clamped to the map; anchors sit at `(x·s, y·s)`) on the level the node is
//! pooled from, and `CE = −log p_bg = softplus(max_c z^t_c)` (computed in that stable form); bg node `j` is
//! kept iff `CE_j ≥ θ`. Without mining ([`DsigConfig::bg_mining`] = false) the graph has the fg nodes only,
//! as in the official code.
//!
//! **Paper and code.** The abstract (the paper body was not available) describes the node, edge, adaptive
//! bg-weight and bg-mining parts; the released configurations of the small students also use the full-map
//! FPN MSE (and RoI logit/delta KD). The defaults follow the released R18←R50 configuration.
//!
//! # Adaptations to a one-stage GFL detector (stated plainly)
//!
//! - **No RPN, no RoI sampler.** Dsig pools the RoIs its Faster R-CNN samples for the box head: 512 per
//!   image from the RPN proposals plus the GT boxes, labelled by an IoU-0.5 matcher, at most 25 % foreground.
//!   Here the foreground nodes are the **ground-truth boxes** (`StepContext::assignment.images[b]`), and the
//!   background nodes are **random boxes sampled every step** ([`BackgroundSampling`], seeded by
//!   `StepContext::step_seed` and the image index): sizes drawn like the image's GT sizes (a random GT box's
//!   `w, h` scaled by a log-uniform factor in `[1/1.5, 1.5]`) or from a configured range, positions uniform
//!   inside the image, kept only when their IoU with every GT box is `< 0.5` (the matcher's threshold). The
//!   default count is `n_b = 3·n_f` (Dsig's sampler keeps fg:bg at 1:3 when the foreground fills its 25 %
//!   quota), at most 384 per image (512 × 75 %). An image without GT gets no nodes.
//! - **Mining** on the teacher's dense classification logits instead of its box head (above).
//! - **Levels**: P3–P5 instead of P2–P5, with mmdet's mapping rule by default (see [`NodeLevels`]).
//! - **Not included**: the RoI-logit KL and class-specific delta L1 terms of the R18←R50 config (they need
//!   an RoI box head), and the RetinaNet config's anchor-logit and delta KD.
//! - **The RetinaNet variant** (nodes = the student's post-NMS predicted boxes, no bg nodes, no mining) is
//!   available through [`DsigDistiller::compute`] with caller-given node boxes and [`DsigConfig::retinanet`].
//!
//! Images without GT contribute 0 to the node terms (the official `mean` of an empty set would be NaN), an
//! image without bg nodes contributes 0 to the bg term, and an empty batch gives zero terms.

use super::gfl::constant_like;
use super::{
    run_on_tape, Box4, DetectorOutputs, DetectorShape, Distiller, ImageTargets, LossTerm,
    MethodGradients, StepContext,
};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::nn::{Bound, BufferUpdates, Conv2d, ConvSpec, ParamKind, ParamStore};
use crate::ops::conv2d::Conv2dConfig;
use crate::ops::roi_align::{FpnLevels, LevelRule, RoiAlignConfig, MAX_LEVELS};
use crate::ops::similarity::{DsigEdgeConfig, DEFAULT_EPS};
use crate::tensor::{DType, Tensor};
use crate::testing::Rng;

/// How every node box is mapped to the FPN level it is pooled from (level 0 = the finest level given).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NodeLevels {
    /// One of [`LevelRule`]'s rules, pooled in one multi-level RoIAlign call. `Rule(LevelRule::Mmdet)` =
    /// `clamp(⌊log2(√(wh)/56 + 1e-6)⌋, 0, L − 1)` is the default: on TinyGFL's P3–P5 every box below
    /// 112 px (all of its 6–64 px objects) is pooled from P3, the finest map, where a 6-px box still spans
    /// most of a cell and a 64-px box 8×8 cells (mmdet sends boxes below 112 px to its finest level, P2, in
    /// the same way). `Rule(LevelRule::Detectron2)` is the official Dsig mapping on P2–P5
    /// (`⌊4 + log2(√(wh)/224)⌋`).
    Rule(LevelRule),
    /// mmdet's rule with another canonical size `c`: `clamp(⌊log2(√(wh)/c + 1e-6)⌋, 0, L − 1)`; e.g. 16
    /// spreads TinyGFL's boxes over P3 (< 32 px), P4 (32–63 px) and P5 (≥ 64 px). Pooled level by level.
    Canonical(f64),
}

impl NodeLevels {
    /// The level of `b` among `strides.len()` levels (finest first).
    pub fn level_of(self, b: Box4, strides: &[f64]) -> usize {
        match self {
            NodeLevels::Rule(rule) => {
                let scales: Vec<f64> = strides.iter().map(|s| 1.0 / s).collect();
                rule.level_of(b, &scales)
            }
            NodeLevels::Canonical(canonical) => {
                let size = ((b[2] - b[0]) * (b[3] - b[1])).max(0.0).sqrt();
                let last = strides.len().saturating_sub(1) as f64;
                (size / canonical + 1e-6).log2().floor().clamp(0.0, last) as usize
            }
        }
    }
}

/// How background boxes are sized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BackgroundSizes {
    /// Each box takes the `w, h` of a uniformly chosen GT box of the image, both scaled by one factor
    /// `exp(U(−ln j, ln j))` (log-uniform in `[1/j, j]`), `j > 1`.
    LikeGroundTruth {
        /// The largest scale factor `j` (default 1.5).
        jitter: f64,
    },
    /// `w` and `h` independently log-uniform in `[min, max]` pixels.
    Range {
        /// Smallest side in pixels.
        min: f64,
        /// Largest side in pixels.
        max: f64,
    },
}

/// How many background boxes are sampled per image, and how (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackgroundSampling {
    /// `n_b = min(round(per_foreground · n_f), max_per_image)`. Default 3 (Dsig's 1:3 fg:bg quota).
    pub per_foreground: f64,
    /// Default 384 (512 sampled RoIs × 75 % background).
    pub max_per_image: usize,
    /// A box is background iff its IoU with every GT box is `<` this. Default 0.5 (Dsig's matcher).
    pub max_iou: f64,
    /// Default `LikeGroundTruth { jitter: 1.5 }`.
    pub sizes: BackgroundSizes,
    /// Draws per box before giving up on it (crowded images may then get fewer boxes). Default 50.
    pub attempts: usize,
}

impl Default for BackgroundSampling {
    fn default() -> Self {
        BackgroundSampling {
            per_foreground: 3.0,
            max_per_image: 384,
            max_iou: 0.5,
            sizes: BackgroundSizes::LikeGroundTruth { jitter: 1.5 },
            attempts: 50,
        }
    }
}

/// Settings of [`DsigDistiller`]. `Default` is the official R18←R50 (also MNV2←R50, EB0←R101) Faster R-CNN
/// configuration's Dsig terms: `L = 0.5·L_feat + 0.5·L_nfg + 0.5·L_nbg + 2.0·L_edge`, α = 7.5, θ = 0.6.
/// A weight of 0 disables its term (it is neither computed nor reported).
#[derive(Clone, Debug, PartialEq)]
pub struct DsigConfig {
    /// `KD.FEATURE_LOSS_WEIGHT` (full-map FPN MSE). Default 0.5.
    pub feat_weight: f64,
    /// `KD.FEATURE_ROIPOOL_FG_LOSS_WEIGHT`. Default 0.5.
    pub node_fg_weight: f64,
    /// `KD.FEATURE_ROIPOOL_BG_LOSS_WEIGHT`. Default 0.5.
    pub node_bg_weight: f64,
    /// `KD.REGION_CORRELATION_LOSS_WEIGHT_POOL`. Default 2.0.
    pub edge_weight: f64,
    /// `KD.USE_BG_WEIGHT_SCALE`: scale each image's bg node loss by `α·n_f/n_b`. Default true.
    pub adaptive_bg_weight: bool,
    /// `KD.BG_WEIGHT_ALPHA` (α). Default 7.5.
    pub bg_weight_alpha: f64,
    /// `KD.BG_FEATURE_MINING_ON`: add the mined bg nodes to the graph. Default true.
    pub bg_mining: bool,
    /// `KD.BG_MINING_THRS` (θ). Default 0.6.
    pub bg_mining_threshold: f64,
    /// Background boxes of [`DsigDistiller::sample_nodes`].
    pub background: BackgroundSampling,
    /// Default `NodeLevels::Rule(LevelRule::Mmdet)`.
    pub levels: NodeLevels,
    /// Default ROIAlignV2: 7×7, adaptive sampling (`sampling_ratio = 0`), aligned.
    pub roi: RoiAlignConfig,
    /// Row-normalisation ε of the graph. Default 1e-12 (`F.normalize`).
    pub edge_eps: f64,
    /// Register an adapter even when the student and teacher FPN widths agree. Default false.
    pub always_adapt: bool,
}

impl Default for DsigConfig {
    fn default() -> Self {
        DsigConfig {
            feat_weight: 0.5,
            node_fg_weight: 0.5,
            node_bg_weight: 0.5,
            edge_weight: 2.0,
            adaptive_bg_weight: true,
            bg_weight_alpha: 7.5,
            bg_mining: true,
            bg_mining_threshold: 0.6,
            background: BackgroundSampling::default(),
            levels: NodeLevels::Rule(LevelRule::Mmdet),
            roi: RoiAlignConfig::default(),
            edge_eps: DEFAULT_EPS,
            always_adapt: false,
        }
    }
}

impl DsigConfig {
    /// The official R18←R50 configuration (= `Default`).
    pub fn r18_r50() -> Self {
        DsigConfig::default()
    }

    /// The official R50←R101 configuration: no feature MSE, edge weight 1.0.
    pub fn r50_r101() -> Self {
        DsigConfig {
            feat_weight: 0.0,
            edge_weight: 1.0,
            ..DsigConfig::default()
        }
    }

    /// The official R101←R152 configuration: no feature MSE, no bg node loss, edge weight 1.0.
    pub fn r101_r152() -> Self {
        DsigConfig {
            feat_weight: 0.0,
            node_bg_weight: 0.0,
            edge_weight: 1.0,
            ..DsigConfig::default()
        }
    }

    /// The official RetinaNet configuration's graph terms: nodes are the caller's boxes (the student's
    /// predicted boxes, given as foreground to [`DsigDistiller::compute`]), no bg nodes, no mining;
    /// `0.5·L_feat + 0.5·L_nfg + 1.0·L_edge`, detectron2's level rule.
    pub fn retinanet() -> Self {
        DsigConfig {
            feat_weight: 0.5,
            node_fg_weight: 0.5,
            node_bg_weight: 0.0,
            edge_weight: 1.0,
            bg_mining: false,
            background: BackgroundSampling {
                per_foreground: 0.0,
                ..BackgroundSampling::default()
            },
            levels: NodeLevels::Rule(LevelRule::Detectron2),
            ..DsigConfig::default()
        }
    }

    fn validate(&self) -> Result<()> {
        for (name, w) in [
            ("feat_weight", self.feat_weight),
            ("node_fg_weight", self.node_fg_weight),
            ("node_bg_weight", self.node_bg_weight),
            ("edge_weight", self.edge_weight),
            ("bg_weight_alpha", self.bg_weight_alpha),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(Error::invalid(
                    name,
                    format!("must be finite and ≥ 0, got {w}"),
                ));
            }
        }
        if [
            self.feat_weight,
            self.node_fg_weight,
            self.node_bg_weight,
            self.edge_weight,
        ]
        .iter()
        .all(|&w| w == 0.0)
        {
            return Err(Error::invalid(
                "DsigConfig",
                "every loss weight is 0: no term would be computed",
            ));
        }
        if !self.bg_mining_threshold.is_finite() {
            return Err(Error::invalid(
                "bg_mining_threshold",
                format!("must be finite, got {}", self.bg_mining_threshold),
            ));
        }
        if !(self.edge_eps.is_finite() && self.edge_eps > 0.0) {
            return Err(Error::invalid(
                "edge_eps",
                format!("must be finite and > 0, got {}", self.edge_eps),
            ));
        }
        if let NodeLevels::Canonical(c) = self.levels {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::invalid(
                    "levels",
                    format!("the canonical size must be finite and > 0, got {c}"),
                ));
            }
        }
        let bg = &self.background;
        if !(bg.per_foreground.is_finite() && bg.per_foreground >= 0.0) {
            return Err(Error::invalid(
                "background.per_foreground",
                format!("must be finite and ≥ 0, got {}", bg.per_foreground),
            ));
        }
        if !(bg.max_iou.is_finite() && bg.max_iou > 0.0 && bg.max_iou <= 1.0) {
            return Err(Error::invalid(
                "background.max_iou",
                format!("must be in (0, 1], got {}", bg.max_iou),
            ));
        }
        match bg.sizes {
            BackgroundSizes::LikeGroundTruth { jitter }
                if !(jitter.is_finite() && jitter >= 1.0) =>
            {
                return Err(Error::invalid(
                    "background.sizes",
                    format!("the jitter must be finite and ≥ 1, got {jitter}"),
                ))
            }
            BackgroundSizes::Range { min, max }
                if !(min.is_finite() && max.is_finite() && min > 0.0 && max >= min) =>
            {
                return Err(Error::invalid(
                    "background.sizes",
                    format!("expected 0 < min ≤ max (finite), got min {min}, max {max}"),
                ))
            }
            _ => {}
        }
        Ok(())
    }
}

/// The node boxes of one image (input pixels): foreground first, then background.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DsigNodes {
    /// Foreground nodes (GT boxes in training; the caller's boxes in the RetinaNet variant).
    pub foreground: Vec<Box4>,
    /// Background nodes (all enter the bg node loss; the mined ones also the graph).
    pub background: Vec<Box4>,
}

/// The tensors of one Dsig evaluation on a tape (levels finest first).
#[derive(Clone, Copy, Debug)]
pub struct DsigInputs<'a> {
    /// Student FPN levels `[B, C_s, H_l, W_l]`.
    pub student_fpn: &'a [Var],
    /// Teacher FPN levels `[B, C_t, H_l, W_l]` (constants).
    pub teacher_fpn: &'a [Var],
    /// Teacher classification logits `[B, K, H_l, W_l]` per level (constants); needed only for mining
    /// (may be empty when [`DsigConfig::bg_mining`] is off or the edge term disabled).
    pub teacher_cls: &'a [Var],
    /// Stride of every level in pixels.
    pub strides: &'a [f64],
    /// One entry per image.
    pub nodes: &'a [DsigNodes],
}

/// Dsig as a [`Distiller`]; see the module docs.
#[derive(Clone, Debug)]
pub struct DsigDistiller {
    cfg: DsigConfig,
    levels: usize,
    student_width: usize,
    teacher_width: usize,
    /// One 1×1 convolution per level, or none when the widths agree.
    adapters: Vec<Conv2d>,
}

/// PyTorch's default `nn.Conv2d` initialisation, `U(±1/√fan_in)` for the weight and the bias, of a 1×1
/// convolution registered as `<prefix>.weight` / `<prefix>.bias`.
fn conv1x1(
    store: &mut ParamStore,
    prefix: &str,
    in_channels: usize,
    out_channels: usize,
    rng: &mut Rng,
) -> Result<Conv2d> {
    let bound = 1.0 / (in_channels.max(1) as f64).sqrt();
    let mut uniform =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect() };
    let weight = store.add(
        format!("{prefix}.weight"),
        Tensor::from_vec(
            uniform(in_channels * out_channels),
            &[out_channels, in_channels, 1, 1],
        )?,
        ParamKind::Trainable,
    )?;
    let bias = store.add(
        format!("{prefix}.bias"),
        Tensor::from_vec(uniform(out_channels), &[out_channels])?,
        ParamKind::Trainable,
    )?;
    Ok(Conv2d {
        spec: ConvSpec::same(in_channels, out_channels, 1),
        weight,
        bias: Some(bias),
        cfg: Conv2dConfig::square(1, 0, 1),
    })
}

/// A zero loss term with the scalar dtype the losses use for `like` (f64 for f64, f32 otherwise) on its
/// device.
fn zero_term(tape: &Tape, like: &Tensor) -> Result<Var> {
    let dtype = if like.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let t = Tensor::from_vec(vec![0.0f64], &[])?
        .into_dtype(dtype)?
        .to_device(&like.device())?;
    Ok(tape.constant(t))
}

fn add_into(tape: &Tape, acc: &mut Option<Var>, v: Var) -> Result<()> {
    *acc = Some(match *acc {
        Some(a) => tape.add(a, v)?,
        None => v,
    });
    Ok(())
}

fn iou(a: &Box4, b: &Box4) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The seed of image `image`'s background boxes in the step seeded `step_seed`.
fn background_seed(step_seed: u64, image: usize) -> u64 {
    step_seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(image as u64)
}

/// Samples `count` background boxes inside an image of `image_size = (H, W)` pixels, each with IoU `<`
/// `cfg.max_iou` with every box of `gt` (see [`BackgroundSampling`]). Returns fewer boxes when some could
/// not be placed within `cfg.attempts` draws, and none when sizes are drawn like the GT and `gt` is empty.
pub fn sample_background_boxes(
    gt: &[Box4],
    image_size: (usize, usize),
    count: usize,
    cfg: &BackgroundSampling,
    rng: &mut Rng,
) -> Vec<Box4> {
    let (height, width) = (image_size.0 as f64, image_size.1 as f64);
    let mut out = Vec::with_capacity(count);
    if height <= 0.0 || width <= 0.0 {
        return out;
    }
    for _ in 0..count {
        for _ in 0..cfg.attempts.max(1) {
            let (w, h) = match cfg.sizes {
                BackgroundSizes::LikeGroundTruth { jitter } => {
                    if gt.is_empty() {
                        return out;
                    }
                    let g = gt[rng.below(gt.len())];
                    let s = rng.uniform(-jitter.ln(), jitter.ln()).exp();
                    ((g[2] - g[0]) * s, (g[3] - g[1]) * s)
                }
                BackgroundSizes::Range { min, max } => (
                    rng.uniform(min.ln(), max.ln()).exp(),
                    rng.uniform(min.ln(), max.ln()).exp(),
                ),
            };
            let (w, h) = (w.clamp(1.0, width), h.clamp(1.0, height));
            let x1 = rng.uniform(0.0, width - w);
            let y1 = rng.uniform(0.0, height - h);
            let candidate = [x1, y1, x1 + w, y1 + h];
            if gt.iter().all(|g| iou(&candidate, g) < cfg.max_iou) {
                out.push(candidate);
                break;
            }
        }
    }
    out
}

impl DsigDistiller {
    /// Builds the method for a student and a teacher with `fpn_levels` FPN levels each, registering the
    /// adapters (when the FPN widths differ, or [`DsigConfig::always_adapt`]) in `store` under
    /// `distill.dsig.adapter.<l>`, initialised from `seed` like PyTorch's `nn.Conv2d`.
    pub fn new(
        store: &mut ParamStore,
        student: &DetectorShape,
        teacher: &DetectorShape,
        fpn_levels: usize,
        cfg: DsigConfig,
        seed: u64,
    ) -> Result<DsigDistiller> {
        cfg.validate()?;
        if fpn_levels == 0 || fpn_levels > MAX_LEVELS {
            return Err(Error::invalid(
                "fpn_levels",
                format!("expected 1 to {MAX_LEVELS} levels, got {fpn_levels}"),
            ));
        }
        let (cs, ct) = (student.fpn_channels, teacher.fpn_channels);
        if cs == 0 || ct == 0 {
            return Err(Error::invalid(
                "fpn_channels",
                format!("FPN widths must be ≥ 1, got student {cs}, teacher {ct}"),
            ));
        }
        let mut rng = Rng::new(seed);
        let adapters = if cs != ct || cfg.always_adapt {
            (0..fpn_levels)
                .map(|l| {
                    conv1x1(
                        store,
                        &format!("distill.dsig.adapter.{l}"),
                        cs,
                        ct,
                        &mut rng,
                    )
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok(DsigDistiller {
            cfg,
            levels: fpn_levels,
            student_width: cs,
            teacher_width: ct,
            adapters,
        })
    }

    /// The settings the method was built with.
    pub fn config(&self) -> &DsigConfig {
        &self.cfg
    }

    /// The registered adapters (one per level, or none).
    pub fn adapters(&self) -> &[Conv2d] {
        &self.adapters
    }

    /// The nodes of a training step: the GT boxes as foreground and `min(round(r·n_f), max)` background
    /// boxes per image, sampled from a generator seeded by `step_seed` and the image index (the same step
    /// seed gives the same boxes).
    pub fn sample_nodes(
        &self,
        targets: &[ImageTargets],
        image_size: (usize, usize),
        step_seed: u64,
    ) -> Vec<DsigNodes> {
        let bg = &self.cfg.background;
        targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let count = ((bg.per_foreground * t.boxes.len() as f64).round() as usize)
                    .min(bg.max_per_image);
                let mut rng = Rng::new(background_seed(step_seed, i));
                DsigNodes {
                    foreground: t.boxes.clone(),
                    background: sample_background_boxes(&t.boxes, image_size, count, bg, &mut rng),
                }
            })
            .collect()
    }

    /// The mined background nodes of every image (indices into `nodes[b].background`, ascending): those
    /// whose teacher background cross-entropy `softplus(max_c z^t_c)` at the nearest anchor point on their
    /// level is `≥ θ`. `teacher_cls` are the teacher's logits `[B, K, H_l, W_l]` per level (any device).
    pub fn mine_background(
        &self,
        teacher_cls: &[&Tensor],
        strides: &[f64],
        nodes: &[DsigNodes],
    ) -> Result<Vec<Vec<usize>>> {
        if teacher_cls.len() != strides.len() {
            return Err(Error::invalid(
                "teacher_cls",
                format!(
                    "expected one map per level ({}), got {}",
                    strides.len(),
                    teacher_cls.len()
                ),
            ));
        }
        let batch = nodes.len();
        // max_c z^t per level on the host, [B, H, W] (computed on the tensors' device).
        let mut maxima: Vec<Option<(Vec<f64>, usize, usize)>> = vec![None; strides.len()];
        let mut out = Vec::with_capacity(batch);
        for (b, n) in nodes.iter().enumerate() {
            let mut kept = Vec::new();
            for (j, bx) in n.background.iter().enumerate() {
                let l = self.cfg.levels.level_of(*bx, strides);
                if maxima[l].is_none() {
                    let cls = teacher_cls[l];
                    let shape = cls.shape();
                    if shape.len() != 4 || shape[0] != batch || shape[1] == 0 {
                        return Err(Error::shape(
                            format!("teacher_cls[{l}]"),
                            format!("[{batch}, K ≥ 1, H, W]"),
                            shape,
                        ));
                    }
                    let (h, w) = (shape[2], shape[3]);
                    let nhwc = crate::ops::shape::permute(cls, &[0, 2, 3, 1])?;
                    let m = crate::ops::reduce::max_last_axis(&nhwc)?.values;
                    maxima[l] = Some((m.to_vec::<f64>()?, h, w));
                }
                let Some((values, h, w)) = maxima[l].as_ref() else {
                    continue;
                };
                if *h == 0 || *w == 0 {
                    continue;
                }
                let s = strides[l];
                let cell = |c: f64, extent: usize| -> usize {
                    ((c / s + 0.5).floor().max(0.0) as usize).min(extent.saturating_sub(1))
                };
                let (x, y) = (
                    cell(0.5 * (bx[0] + bx[2]), *w),
                    cell(0.5 * (bx[1] + bx[3]), *h),
                );
                let z = values[(b * h + y) * w + x];
                // −log(1 − σ(z)) = softplus(z), stable for both signs.
                let ce = z.max(0.0) + (-z.abs()).exp().ln_1p();
                if ce >= self.cfg.bg_mining_threshold {
                    kept.push(j);
                }
            }
            out.push(kept);
        }
        Ok(out)
    }

    /// Validates the inputs against each other and the method; returns the batch size.
    fn check(&self, tape: &Tape, x: &DsigInputs<'_>) -> Result<usize> {
        let batch = super::check_fpn_pair(
            tape,
            x.student_fpn,
            x.teacher_fpn,
            x.strides,
            self.levels,
            (self.student_width, self.teacher_width),
        )?;
        if x.nodes.len() != batch {
            return Err(Error::invalid(
                "nodes",
                format!(
                    "expected one entry per image ({batch}), got {}",
                    x.nodes.len()
                ),
            ));
        }
        for (b, n) in x.nodes.iter().enumerate() {
            for bx in &n.foreground {
                super::check_box(bx, &format!("nodes[{b}].foreground"))?;
            }
            for bx in &n.background {
                super::check_box(bx, &format!("nodes[{b}].background"))?;
            }
        }
        Ok(batch)
    }

    /// Pools every node box (rows `[K, 5]` = batch index and box) from `maps`, each from its level;
    /// returns `[K, C, 7, 7]` in row order.
    fn pool(&self, tape: &Tape, maps: &[Var], rois: &[f64], strides: &[f64]) -> Result<Var> {
        let k = rois.len() / 5;
        match self.cfg.levels {
            NodeLevels::Rule(rule) => {
                let levels = FpnLevels {
                    spatial_scales: strides.iter().map(|s| 1.0 / s).collect(),
                    rule,
                };
                let rois = tape.constant(Tensor::from_vec(rois.to_vec(), &[k, 5])?);
                tape.roi_align_multilevel(maps, rois, &levels, &self.cfg.roi)
            }
            NodeLevels::Canonical(_) => {
                let level: Vec<usize> = rois
                    .chunks_exact(5)
                    .map(|r| self.cfg.levels.level_of([r[1], r[2], r[3], r[4]], strides))
                    .collect();
                let mut parts = Vec::new();
                let mut order = Vec::with_capacity(k);
                for (l, &map) in maps.iter().enumerate() {
                    let rows: Vec<usize> = (0..k).filter(|&i| level[i] == l).collect();
                    if rows.is_empty() {
                        continue;
                    }
                    let data: Vec<f64> = rows
                        .iter()
                        .flat_map(|&i| rois[5 * i..5 * i + 5].iter().copied())
                        .collect();
                    let part_rois = tape.constant(Tensor::from_vec(data, &[rows.len(), 5])?);
                    parts.push(tape.roi_align(map, part_rois, 1.0 / strides[l], &self.cfg.roi)?);
                    order.extend(rows);
                }
                let joined = if parts.len() == 1 {
                    parts[0]
                } else {
                    tape.concat(&parts, 0)?
                };
                if order.iter().enumerate().all(|(j, &i)| i == j) {
                    return Ok(joined);
                }
                // Row i of the result is the joined row that holds RoI i.
                let mut position = vec![0i64; k];
                for (j, &i) in order.iter().enumerate() {
                    position[i] = j as i64;
                }
                let index = tape.constant(Tensor::from_vec(position, &[k])?);
                tape.index_select(joined, 0, index)
            }
        }
    }

    /// The weighted terms of one batch on `b`'s tape (see the module docs for the formulas).
    pub fn terms(&self, b: &Bound, x: &DsigInputs<'_>) -> Result<Vec<LossTerm>> {
        let tape = b.tape();
        let batch = self.check(tape, x)?;
        let like = tape.value(x.student_fpn[0])?;
        let cfg = &self.cfg;
        let mut terms = Vec::with_capacity(4);

        let adapted: Vec<Var> = if self.adapters.is_empty() {
            x.student_fpn.to_vec()
        } else {
            x.student_fpn
                .iter()
                .zip(&self.adapters)
                .map(|(&s, a)| a.forward(b, s))
                .collect::<Result<_>>()?
        };

        if cfg.feat_weight != 0.0 {
            let mut sum = None;
            if batch > 0 {
                for (&s, &t) in adapted.iter().zip(x.teacher_fpn) {
                    let mse = tape.mse_loss(s, t)?;
                    add_into(tape, &mut sum, mse)?;
                }
            }
            let sum = match sum {
                Some(v) => v,
                None => zero_term(tape, &like)?,
            };
            terms.push(LossTerm {
                name: "loss_dsig_feat",
                value: tape.scale(sum, cfg.feat_weight)?,
            });
        }

        let wants_nodes =
            cfg.node_fg_weight != 0.0 || cfg.node_bg_weight != 0.0 || cfg.edge_weight != 0.0;
        if !wants_nodes {
            return Ok(terms);
        }
        let (mut fg, mut bg, mut edge) = (None, None, None);
        // Rows: every image's foreground, then every image's background, so each node loss reads one
        // contiguous block.
        let mut rois = Vec::new();
        for (img, n) in x.nodes.iter().enumerate() {
            for bx in &n.foreground {
                rois.extend([img as f64, bx[0], bx[1], bx[2], bx[3]]);
            }
        }
        let num_fg = rois.len() / 5;
        for (img, n) in x.nodes.iter().enumerate() {
            for bx in &n.background {
                rois.extend([img as f64, bx[0], bx[1], bx[2], bx[3]]);
            }
        }
        let mine = cfg.bg_mining && cfg.edge_weight != 0.0;
        let mined = if mine && x.nodes.iter().any(|n| !n.background.is_empty()) {
            let values = x
                .teacher_cls
                .iter()
                .map(|&v| tape.value(v))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&Tensor> = values.iter().map(|v| &**v).collect();
            if refs.len() != self.levels {
                return Err(Error::invalid(
                    "teacher_cls",
                    format!(
                        "background mining needs the teacher's logits on all {} levels, got {}",
                        self.levels,
                        refs.len()
                    ),
                ));
            }
            for (l, (cls, &s)) in refs.iter().zip(x.student_fpn).enumerate() {
                let map = tape.shape(s)?;
                let shape = cls.shape();
                if shape.len() != 4 || shape[0] != batch || shape[1] == 0 || shape[2..] != map[2..]
                {
                    return Err(Error::shape(
                        format!("teacher_cls[{l}]"),
                        format!(
                            "[{batch}, K ≥ 1, {}, {}] (the level's map size)",
                            map[2], map[3]
                        ),
                        shape,
                    ));
                }
            }
            self.mine_background(&refs, x.strides, x.nodes)?
        } else {
            vec![Vec::new(); x.nodes.len()]
        };

        if !rois.is_empty() {
            let k = rois.len() / 5;
            let d = self.teacher_width * cfg.roi.output_size.0 * cfg.roi.output_size.1;
            let pooled_s = self.pool(tape, &adapted, &rois, x.strides)?;
            let pooled_s = tape.reshape(pooled_s, &[k, d])?;
            let pooled_t = self.pool(tape, x.teacher_fpn, &rois, x.strides)?;
            let pooled_t = tape.reshape(pooled_t, &[k, d])?;
            let edge_cfg = DsigEdgeConfig {
                eps: cfg.edge_eps,
                loss_weight: 1.0,
            };
            // Per-row weights turn the per-image means into one weighted sum over a block of rows:
            // Σ_img mean_{n×D}(v^s − v^t)² = Σ_rows w_row Σ_d (v^s − v^t)², w_row = 1/(n·D) in its image.
            let mut row_weight = vec![0.0; k];
            let (mut fg_offset, mut bg_offset) = (0, num_fg);
            for (n, mined) in x.nodes.iter().zip(&mined) {
                let (nf, nb) = (n.foreground.len(), n.background.len());
                if nf > 0 && cfg.node_fg_weight != 0.0 {
                    row_weight[fg_offset..fg_offset + nf].fill(1.0 / (nf * d) as f64);
                }
                let bg_scale = if cfg.adaptive_bg_weight {
                    cfg.bg_weight_alpha * nf as f64 / nb.max(1) as f64
                } else {
                    1.0
                };
                if nb > 0 && cfg.node_bg_weight != 0.0 {
                    row_weight[bg_offset..bg_offset + nb].fill(bg_scale / (nb * d) as f64);
                }
                let m = nf + mined.len();
                if m > 0 && cfg.edge_weight != 0.0 {
                    // The graph's vertices, selected inside the op.
                    let ids: Vec<i64> = (fg_offset..fg_offset + nf)
                        .chain(mined.iter().map(|&j| bg_offset + j))
                        .map(|i| i as i64)
                        .collect();
                    let ids = tape.constant(Tensor::from_vec(ids, &[m])?);
                    let e = tape.dsig_edge_loss(pooled_s, pooled_t, Some(ids), &edge_cfg)?;
                    add_into(tape, &mut edge, e)?;
                }
                fg_offset += nf;
                bg_offset += nb;
            }
            let blocks = [
                (cfg.node_fg_weight != 0.0 && num_fg > 0, 0, num_fg),
                (cfg.node_bg_weight != 0.0 && num_fg < k, num_fg, k - num_fg),
            ];
            // One pass over the rows any node term reads.
            let (start, end) = match blocks {
                [(true, ..), (true, ..)] => (0, k),
                [(true, s, n), _] | [_, (true, s, n)] => (s, s + n),
                _ => (0, 0),
            };
            if end > start {
                let (s, t) = if (start, end) == (0, k) {
                    (pooled_s, pooled_t)
                } else {
                    (
                        tape.narrow(pooled_s, 0, start, end - start)?,
                        tape.narrow(pooled_t, 0, start, end - start)?,
                    )
                };
                let diff = tape.sub(s, t)?;
                let sq = tape.square(diff)?;
                let row_sums = tape.sum_axes(sq, &[1], false)?;
                for (i, &(wanted, lo, len)) in blocks.iter().enumerate() {
                    if !wanted {
                        continue;
                    }
                    let mut w = vec![0.0; end - start];
                    w[lo - start..lo - start + len].copy_from_slice(&row_weight[lo..lo + len]);
                    let w = constant_like(tape, w, &[end - start], &*tape.value(row_sums)?)?;
                    let prod = tape.mul(row_sums, w)?;
                    let total = tape.sum_all(prod)?;
                    if i == 0 {
                        fg = Some(total);
                    } else {
                        bg = Some(total);
                    }
                }
            }
        }
        for (name, weight, sum) in [
            ("loss_dsig_node_fg", cfg.node_fg_weight, fg),
            ("loss_dsig_node_bg", cfg.node_bg_weight, bg),
            ("loss_dsig_edge", cfg.edge_weight, edge),
        ] {
            if weight == 0.0 {
                continue;
            }
            let sum = match sum {
                Some(v) => v,
                None => zero_term(tape, &like)?,
            };
            terms.push(LossTerm {
                name,
                value: tape.scale(sum, weight)?,
            });
        }
        Ok(terms)
    }

    /// The embedding entry: Dsig's terms of plain tensors (CPU or one device) for caller-given nodes.
    /// `student_fpn` become the differentiated inputs (their gradients come back in
    /// [`MethodGradients::student_grads`], same order), `teacher_fpn` and `teacher_cls` (may be empty
    /// without mining) are constants, `store` holds this method's adapters (bound for training; its float
    /// entries must have the features' dtype and device). For the RetinaNet variant pass the student's
    /// predicted boxes as `foreground` and no background with [`DsigConfig::retinanet`].
    pub fn compute(
        &self,
        store: &ParamStore,
        student_fpn: &[&Tensor],
        teacher_fpn: &[&Tensor],
        teacher_cls: &[&Tensor],
        strides: &[f64],
        nodes: &[DsigNodes],
    ) -> Result<MethodGradients> {
        let mut teacher: Vec<&Tensor> = teacher_fpn.to_vec();
        teacher.extend_from_slice(teacher_cls);
        let levels = teacher_fpn.len();
        run_on_tape(store, student_fpn, &teacher, |_, b, s, t| {
            self.terms(
                b,
                &DsigInputs {
                    student_fpn: s,
                    teacher_fpn: &t[..levels],
                    teacher_cls: &t[levels..],
                    strides,
                    nodes,
                },
            )
        })
    }
}

impl Distiller for DsigDistiller {
    fn name(&self) -> &'static str {
        "dsig"
    }

    /// Nodes from [`DsigDistiller::sample_nodes`] (GT foreground, background seeded by `ctx.step_seed`),
    /// features from the FPN levels, mining from the teacher's classification logits.
    fn loss(
        &self,
        b: &Bound,
        _store: &ParamStore,
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
        ctx: &StepContext<'_>,
        _updates: &mut BufferUpdates,
    ) -> Result<Vec<LossTerm>> {
        if student.fpn_strides != teacher.fpn_strides {
            return Err(Error::invalid(
                "fpn_strides",
                format!(
                    "student {:?} and teacher {:?} differ",
                    student.fpn_strides, teacher.fpn_strides
                ),
            ));
        }
        let nodes = self.sample_nodes(&ctx.assignment.images, ctx.image_size, ctx.step_seed);
        self.terms(
            b,
            &DsigInputs {
                student_fpn: &student.fpn,
                teacher_fpn: &teacher.fpn,
                teacher_cls: &teacher.cls,
                strides: &student.fpn_strides,
                nodes: &nodes,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::test_support::{gradcheck_method, shape, t, term, trainable_entries};
    use crate::distill::DenseAssignment;
    use crate::Device;

    const STRIDES: [f64; 2] = [8.0, 16.0];

    /// Two images of 64×64 px, FPN 8×8 (s8) and 4×4 (s16), student width 2, teacher 3, 2 classes.
    struct Problem {
        student: Vec<Tensor>,
        teacher: Vec<Tensor>,
        cls: Vec<Tensor>,
        nodes: Vec<DsigNodes>,
    }

    fn problem(seed: u64) -> Problem {
        let mut rng = Rng::new(seed);
        let maps = [(8, 8), (4, 4)];
        let mut make = |c: usize| -> Vec<Tensor> {
            maps.iter()
                .map(|&(h, w)| t(rng.normal_vec(2 * c * h * w), &[2, c, h, w]))
                .collect()
        };
        let (student, teacher) = (make(2), make(3));
        // Logits far from the mining threshold (softplus(z) = 0.6 at z ≈ −0.1).
        let cls = maps
            .iter()
            .map(|&(h, w)| {
                let v = rng
                    .normal_vec(2 * 2 * h * w)
                    .into_iter()
                    .map(|z| if z >= 0.0 { z + 1.0 } else { z - 1.0 })
                    .collect();
                t(v, &[2, 2, h, w])
            })
            .collect();
        let nodes = vec![
            DsigNodes {
                foreground: vec![[3.3, 5.1, 21.7, 30.2], [30.4, 12.6, 62.1, 50.3]],
                background: vec![
                    [40.2, 1.7, 47.9, 9.4],
                    [1.1, 40.3, 13.6, 60.8],
                    [20.5, 33.3, 55.2, 63.1],
                    [50.6, 50.2, 58.3, 61.7],
                ],
            },
            DsigNodes {
                foreground: vec![[10.3, 9.8, 50.2, 41.1]],
                background: vec![[2.2, 44.1, 18.9, 60.3], [45.7, 3.2, 61.4, 27.6]],
            },
        ];
        Problem {
            student,
            teacher,
            cls,
            nodes,
        }
    }

    fn build(cfg: &DsigConfig, dtype: DType) -> (ParamStore, DsigDistiller) {
        let mut store = ParamStore::new();
        let d = DsigDistiller::new(&mut store, &shape(2), &shape(3), 2, cfg.clone(), 5).unwrap();
        store.to_dtype(dtype).unwrap();
        (store, d)
    }

    fn run(cfg: &DsigConfig, p: &Problem) -> Result<MethodGradients> {
        let (store, d) = build(cfg, DType::F64);
        let s: Vec<&Tensor> = p.student.iter().collect();
        let te: Vec<&Tensor> = p.teacher.iter().collect();
        let c: Vec<&Tensor> = p.cls.iter().collect();
        d.compute(&store, &s, &te, &c, &STRIDES, &p.nodes)
    }

    /// Gradcheck of the whole loss with respect to the student's FPN levels and the adapters, through the
    /// embedding entry (mining and the sampled nodes are fixed: they depend on the teacher only).
    fn check_gradients(cfg: &DsigConfig) {
        let p = problem(11);
        let (store, _) = build(cfg, DType::F64);
        gradcheck_method(
            &p.student,
            &trainable_entries(&store, None),
            || build(cfg, DType::F64),
            |d, store, student| {
                let te: Vec<&Tensor> = p.teacher.iter().collect();
                let c: Vec<&Tensor> = p.cls.iter().collect();
                d.compute(store, student, &te, &c, &STRIDES, &p.nodes)
            },
        );
    }

    #[test]
    fn gradcheck_default_config() {
        check_gradients(&DsigConfig::default());
    }

    #[test]
    fn gradcheck_level_by_level_pooling_with_mining() {
        // Canonical 16 pools the boxes from both levels; the fixed adaptive weight path is exercised too.
        check_gradients(&DsigConfig {
            levels: NodeLevels::Canonical(16.0),
            adaptive_bg_weight: false,
            ..DsigConfig::default()
        });
    }

    #[test]
    fn terms_follow_the_formulas() {
        let p = problem(3);
        let cfg = DsigConfig::default();
        let out = run(&cfg, &p).unwrap();
        let names: Vec<&str> = out.terms.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "loss_dsig_feat",
                "loss_dsig_node_fg",
                "loss_dsig_node_bg",
                "loss_dsig_edge"
            ]
        );
        let sum: f64 = out.terms.iter().map(|(_, v)| v).sum();
        assert!((sum - out.loss).abs() < 1e-12);
        assert!(out.terms.iter().all(|(_, v)| v.is_finite() && *v > 0.0));
        // Turning the bg weight off leaves the other terms unchanged.
        let no_bg = run(
            &DsigConfig {
                node_bg_weight: 0.0,
                ..cfg.clone()
            },
            &p,
        )
        .unwrap();
        assert_eq!(term(&no_bg, "loss_dsig_node_bg"), None);
        for name in ["loss_dsig_feat", "loss_dsig_node_fg", "loss_dsig_edge"] {
            assert_eq!(term(&no_bg, name), term(&out, name), "{name}");
        }
        // The bg term scales with α (adaptive weight α·n_f/n_b).
        let alpha2 = run(
            &DsigConfig {
                bg_weight_alpha: 15.0,
                ..cfg.clone()
            },
            &p,
        )
        .unwrap();
        let ratio =
            term(&alpha2, "loss_dsig_node_bg").unwrap() / term(&out, "loss_dsig_node_bg").unwrap();
        assert!((ratio - 2.0).abs() < 1e-12, "{ratio}");
    }

    #[test]
    fn mining_selects_hard_negatives_at_the_node_centre() {
        let cfg = DsigConfig::default();
        let (_, d) = build(&cfg, DType::F64);
        // One level 8×8 at stride 8 (mmdet's rule puts every small box on level 0), one image, 1 class.
        let mut logits = vec![-4.0; 64];
        logits[2 * 8 + 3] = 2.0; // anchor (x 3, y 2) = pixel (24, 16)
        logits[7 * 8 + 7] = -0.05; // softplus(−0.05) ≈ 0.669 ≥ 0.6: mined
        logits[5 * 8 + 1] = -0.2; // softplus(−0.2) ≈ 0.598 < 0.6: not mined
        let cls = t(logits, &[1, 1, 8, 8]);
        let nodes = vec![DsigNodes {
            foreground: vec![],
            background: vec![
                [20.0, 12.0, 28.0, 20.0], // centre (24, 16) → mined
                [0.0, 0.0, 8.0, 8.0],     // centre (4, 4) → anchor (1, 1): logit −4
                [60.0, 60.0, 70.0, 70.0], // centre (65, 65) → clamped to (7, 7)
                [6.0, 38.0, 10.0, 42.0],  // centre (8, 40) → anchor (1, 5)
            ],
        }];
        let mined = d
            .mine_background(&[&cls, &cls], &[8.0, 16.0], &nodes)
            .unwrap();
        assert_eq!(mined, vec![vec![0, 2]]);
        let err = d
            .mine_background(&[&cls], &[8.0, 16.0], &nodes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("one map per level"), "{err}");
    }

    #[test]
    fn background_boxes_are_background_and_reproducible() {
        let gt = vec![[10.0, 12.0, 40.0, 50.0], [70.0, 20.0, 90.0, 36.0]];
        let cfg = BackgroundSampling::default();
        let sample = |seed| sample_background_boxes(&gt, (128, 128), 30, &cfg, &mut Rng::new(seed));
        let a = sample(1);
        assert_eq!(a.len(), 30);
        assert_eq!(a, sample(1));
        assert_ne!(a, sample(2));
        for b in &a {
            assert!(
                b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 128.0 && b[3] <= 128.0,
                "{b:?}"
            );
            assert!(gt.iter().all(|g| iou(b, g) < 0.5), "{b:?}");
            // Sizes like the GT: each side within [1/1.5, 1.5] of some GT box's.
            let (w, h) = (b[2] - b[0], b[3] - b[1]);
            assert!(gt.iter().any(|g| {
                let (s_w, s_h) = (w / (g[2] - g[0]), h / (g[3] - g[1]));
                (s_w - s_h).abs() < 1e-9 && (1.0 / 1.5 - 1e-9..=1.5 + 1e-9).contains(&s_w)
            }));
        }
        assert!(sample_background_boxes(&[], (128, 128), 5, &cfg, &mut Rng::new(1)).is_empty());
        let ranged = BackgroundSampling {
            sizes: BackgroundSizes::Range {
                min: 6.0,
                max: 20.0,
            },
            ..cfg
        };
        for b in sample_background_boxes(&gt, (128, 128), 20, &ranged, &mut Rng::new(4)) {
            let (w, h) = (b[2] - b[0], b[3] - b[1]);
            assert!(
                (6.0..=20.0).contains(&w) && (6.0..=20.0).contains(&h),
                "{b:?}"
            );
        }
        // Boxes of ≥ 100 px against a GT box covering the image all have IoU ≥ 0.61: none placed, no hang.
        let full = [[0.0, 0.0, 128.0, 128.0]];
        let large = BackgroundSampling {
            sizes: BackgroundSizes::Range {
                min: 100.0,
                max: 128.0,
            },
            ..cfg
        };
        assert!(sample_background_boxes(&full, (128, 128), 4, &large, &mut Rng::new(3)).is_empty());

        let (_, d) = build(&DsigConfig::default(), DType::F64);
        let targets = vec![
            ImageTargets {
                boxes: gt.clone(),
                labels: vec![0, 1],
            },
            ImageTargets::default(),
        ];
        let nodes = d.sample_nodes(&targets, (128, 128), 77);
        assert_eq!(nodes, d.sample_nodes(&targets, (128, 128), 77));
        assert_eq!(nodes[0].foreground, gt);
        assert_eq!(nodes[0].background.len(), 6); // 3 per GT box
        assert_eq!(nodes[1], DsigNodes::default());
    }

    #[test]
    fn images_without_boxes_and_empty_batches_give_zero_node_terms() {
        let mut p = problem(5);
        p.nodes = vec![DsigNodes::default(); 2];
        let out = run(&DsigConfig::default(), &p).unwrap();
        assert!(term(&out, "loss_dsig_feat").unwrap() > 0.0);
        for name in ["loss_dsig_node_fg", "loss_dsig_node_bg", "loss_dsig_edge"] {
            assert_eq!(term(&out, name), Some(0.0), "{name}");
        }
        assert!(out.student_grads.iter().all(|g| g
            .to_vec::<f64>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite())));

        // Background only (no fg): the adaptive weight α·0/n_b is 0; all bg mined → edges over bg.
        let mut p = problem(5);
        p.nodes[0].foreground.clear();
        p.nodes[1].foreground.clear();
        let out = run(&DsigConfig::default(), &p).unwrap();
        assert_eq!(term(&out, "loss_dsig_node_fg"), Some(0.0));
        assert_eq!(term(&out, "loss_dsig_node_bg"), Some(0.0));
        assert!(term(&out, "loss_dsig_edge").unwrap().is_finite());

        // No background mined (teacher sure everywhere it is background): the graph is the fg nodes.
        let mut p = problem(5);
        for c in &mut p.cls {
            *c = t(vec![-9.0; c.numel()], c.shape());
        }
        let mined_none = run(&DsigConfig::default(), &p).unwrap();
        let no_mining = run(
            &DsigConfig {
                bg_mining: false,
                ..DsigConfig::default()
            },
            &p,
        )
        .unwrap();
        assert_eq!(
            term(&mined_none, "loss_dsig_edge"),
            term(&no_mining, "loss_dsig_edge")
        );

        // An empty batch: zero terms.
        let (store, d) = build(&DsigConfig::default(), DType::F64);
        let s = [
            Tensor::zeros(&[0, 2, 8, 8], DType::F64, &Device::Cpu).unwrap(),
            Tensor::zeros(&[0, 2, 4, 4], DType::F64, &Device::Cpu).unwrap(),
        ];
        let te = [
            Tensor::zeros(&[0, 3, 8, 8], DType::F64, &Device::Cpu).unwrap(),
            Tensor::zeros(&[0, 3, 4, 4], DType::F64, &Device::Cpu).unwrap(),
        ];
        let out = d
            .compute(
                &store,
                &[&s[0], &s[1]],
                &[&te[0], &te[1]],
                &[],
                &STRIDES,
                &[],
            )
            .unwrap();
        assert_eq!(out.loss, 0.0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let p = problem(8);
        let (store, d) = build(&DsigConfig::default(), DType::F64);
        let s: Vec<&Tensor> = p.student.iter().collect();
        let te: Vec<&Tensor> = p.teacher.iter().collect();
        let c: Vec<&Tensor> = p.cls.iter().collect();
        let err = |r: Result<MethodGradients>| r.unwrap_err().to_string();

        let e = err(d.compute(&store, &s[..1], &te, &c, &STRIDES, &p.nodes));
        assert!(
            e.contains("student_fpn") && e.contains("expected 2 FPN levels"),
            "{e}"
        );
        let e = err(d.compute(&store, &s, &[te[1], te[0]], &c, &STRIDES, &p.nodes));
        assert!(e.contains("teacher_fpn[0]"), "{e}");
        let wrong_width = t(vec![0.0; 2 * 3 * 64], &[2, 3, 8, 8]);
        let e = err(d.compute(&store, &[&wrong_width, s[1]], &te, &c, &STRIDES, &p.nodes));
        assert!(e.contains("student FPN width"), "{e}");
        let e = err(d.compute(&store, &s, &te, &c, &STRIDES, &p.nodes[..1]));
        assert!(e.contains("one entry per image"), "{e}");
        let e = err(d.compute(&store, &s, &te, &c, &[8.0, 0.0], &p.nodes));
        assert!(e.contains("strides"), "{e}");
        let mut bad = p.nodes.clone();
        bad[1].background[0][2] = f64::NAN;
        let e = err(d.compute(&store, &s, &te, &c, &STRIDES, &bad));
        assert!(e.contains("nodes[1].background"), "{e}");
        let e = err(d.compute(&store, &s, &te, &[], &STRIDES, &p.nodes));
        assert!(e.contains("background mining needs"), "{e}");
        let small_cls = t(vec![0.0; 2 * 2 * 16], &[2, 2, 4, 4]);
        let e = err(d.compute(&store, &s, &te, &[&small_cls, c[1]], &STRIDES, &p.nodes));
        assert!(e.contains("teacher_cls[0]"), "{e}");

        let mut store = ParamStore::new();
        let zero = DsigConfig {
            feat_weight: 0.0,
            node_fg_weight: 0.0,
            node_bg_weight: 0.0,
            edge_weight: 0.0,
            ..DsigConfig::default()
        };
        let e = DsigDistiller::new(&mut store, &shape(2), &shape(3), 2, zero, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("every loss weight is 0"), "{e}");
        let e = DsigDistiller::new(
            &mut store,
            &shape(2),
            &shape(3),
            6,
            DsigConfig::default(),
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("fpn_levels"), "{e}");
        let e = DsigDistiller::new(
            &mut store,
            &shape(2),
            &shape(3),
            2,
            DsigConfig {
                levels: NodeLevels::Canonical(-1.0),
                ..DsigConfig::default()
            },
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("canonical"), "{e}");
    }

    #[test]
    fn adapters_only_when_widths_differ() {
        let mut store = ParamStore::new();
        let d = DsigDistiller::new(
            &mut store,
            &shape(4),
            &shape(4),
            3,
            DsigConfig::default(),
            1,
        )
        .unwrap();
        assert!(d.adapters().is_empty() && store.is_empty());
        let d = DsigDistiller::new(
            &mut store,
            &shape(2),
            &shape(4),
            3,
            DsigConfig::default(),
            1,
        )
        .unwrap();
        assert_eq!(d.adapters().len(), 3);
        let names: Vec<&str> = store.ids().map(|id| store.name(id)).collect();
        assert_eq!(
            names,
            [
                "distill.dsig.adapter.0.weight",
                "distill.dsig.adapter.0.bias",
                "distill.dsig.adapter.1.weight",
                "distill.dsig.adapter.1.bias",
                "distill.dsig.adapter.2.weight",
                "distill.dsig.adapter.2.bias"
            ]
        );
        let w = store.value(store.id("distill.dsig.adapter.0.weight").unwrap());
        assert_eq!(w.shape(), &[4, 2, 1, 1]);
        let bound = 1.0 / 2f64.sqrt();
        assert!(w.to_vec::<f64>().unwrap().iter().all(|v| v.abs() <= bound));
    }

    #[test]
    fn engine_entry_matches_the_embedding_entry() {
        let p = problem(9);
        let cfg = DsigConfig::default();
        let (store, d) = build(&cfg, DType::F64);
        let targets: Vec<ImageTargets> = p
            .nodes
            .iter()
            .map(|n| ImageTargets {
                labels: vec![0; n.foreground.len()],
                boxes: n.foreground.clone(),
            })
            .collect();
        let assignment = DenseAssignment {
            batch: 2,
            images: targets.clone(),
            ..Default::default()
        };
        let ctx = StepContext {
            assignment: &assignment,
            student_gfl: None,
            epoch: 0,
            num_epochs: 1,
            step_seed: 1234,
            image_size: (64, 64),
        };
        let tape = Tape::new();
        let b = store.bind(&tape);
        let outputs = |fpn: &[Tensor], cls: &[Tensor], leaf: bool| DetectorOutputs {
            stages: vec![],
            stage_strides: vec![],
            fpn: fpn
                .iter()
                .map(|f| {
                    let f = f.try_clone().unwrap();
                    if leaf {
                        tape.leaf(f)
                    } else {
                        tape.constant(f)
                    }
                })
                .collect(),
            fpn_strides: STRIDES.to_vec(),
            cls: cls
                .iter()
                .map(|c| tape.constant(c.try_clone().unwrap()))
                .collect(),
            reg: vec![],
        };
        let student = outputs(&p.student, &[], true);
        let teacher = outputs(&p.teacher, &p.cls, false);
        let terms = d
            .loss(
                &b,
                &store,
                &student,
                &teacher,
                &ctx,
                &mut BufferUpdates::default(),
            )
            .unwrap();
        let nodes = d.sample_nodes(&targets, (64, 64), 1234);
        let s: Vec<&Tensor> = p.student.iter().collect();
        let te: Vec<&Tensor> = p.teacher.iter().collect();
        let c: Vec<&Tensor> = p.cls.iter().collect();
        let direct = d.compute(&store, &s, &te, &c, &STRIDES, &nodes).unwrap();
        assert_eq!(terms.len(), direct.terms.len());
        for (term, (name, value)) in terms.iter().zip(&direct.terms) {
            assert_eq!(term.name, *name);
            let v = tape.value(term.value).unwrap().to_vec::<f64>().unwrap()[0];
            assert_eq!(v, *value, "{name}");
        }
        assert_eq!(d.name(), "dsig");
    }
}
