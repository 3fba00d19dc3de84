//! DRKD — dual relation knowledge distillation (Ni et al., IJCAI'23; shared/spec/methods.md §3, §6.4,
//! §6.10): a pixel-wise relation term on every FPN level and an instance-wise relation term on the GT boxes
//! of the two finest levels, as the official code computes them.
//!
//! # Pixel-wise relation
//!
//! Every FPN level `l` passes through a GloRe (global reasoning) unit on each side — `G^s_l` on the student
//! map `S_l`, `G^t_l` on the teacher map `T_l` — and a 1×1 convolution brings the student's unit output to
//! the teacher's width:
//!
//! `L_pix = 1e-3 · Σ_l ‖Conv1x1_l(G^s_l(S_l)) − G^t_l(T_l)‖_F`
//!
//! (`torch.dist(·, ·, p=2)` over the whole `B×C×H×W` tensor: **not squared, not averaged**). A GloRe unit
//! `G(C, mid)` with `S = 2·mid` state channels and `N = mid` nodes maps `X ∈ R^{C×L}` (`L = H·W`, per image):
//!
//! ```text
//! V  = W_s X + b_s                  (S×L, 1×1 conv `conv_state`)
//! Bp = W_p X + b_p                  (N×L, 1×1 conv `conv_proj`)
//! Z  = V·Bpᵀ                        (S×N, no 1/L — Tape::glore_project; `glore_normalize` adds it)
//! H  = Z(I + Aᵀ) + 1_S b_Aᵀ         (Conv1d(N, N, 1) over the nodes + residual — Tape::glore_node_conv)
//! Y  = W_g ReLU(H)                  (S×S Conv1d, no bias)
//! X̃  = Y·Bp                         (S×L — Tape::glore_reproject)
//! O  = X + BN(W_e X̃)                (C×S 1×1 conv, no bias; BatchNorm2d in training mode, ε = 1e-4)
//! ```
//!
//! The BatchNorm runs on batch statistics and its running statistics are updated (momentum 0.1) through
//! [`BufferUpdates`]. Sizes: the official units are `G(256, 64)` on P2, P3 and `G(256, 256)` on P4–P6, i.e.
//! `mid = C/4` on the two finest levels and `mid = C` on the others. Each unit here keeps that ratio to its
//! own input width ([`DrkdConfig::glore_mid_divisors`], default `[4, 4, 1, 1, 1]` for the levels finest
//! first): on TinyGFL's P3–P5 the student units (C = 32) get mid 8, 8, 32 and the teacher units (C = 64)
//! mid 16, 16, 64.
//!
//! # Instance-wise relation
//!
//! On the two finest levels (official P2, P3 → here P3, P4), per image with `n ≥ 1` GT boxes:
//! `R = roi_align(F_l, gt, 3×3, spatial_scale, sampling_ratio = −1 (adaptive), aligned = False)` (torchvision's
//! defaults; `spatial_scale = W_l / (W_0·s_0)`, the official expression, which is `1/s_l` when the input
//! size is divisible by the coarsest stride), `x = flatten(R) ∈ R^{n×d}`, `d = C·9`, and a relation module
//! per side (`θ, φ, g`: `Linear(d, d/2)`, `W`: `Linear(d/2, d)`):
//!
//! ```text
//! F = θ(x)·φ(x)ᵀ                 (n×n)
//! K = softmax_row(x Qᵀ + q)      (the "relation filter": a FRESH RANDOM nn.Linear(d, n) every call)
//! P = softmax_row(F ⊙ K)
//! z = x + W(P·g(x))              (reshaped to n×C×3×3)
//! L_rel = 0.004  · Σ_l Σ_img ‖Conv1x1_l(z^s) − z^t‖_F
//! L_fgI = 0.0024 · Σ_l Σ_img ‖Conv1x1'_l(R^s) − R^t‖_F
//! ```
//!
//! The relation filter `Q ∈ R^{n×d}`, `q ∈ R^n` is never trained: the official code builds a new
//! `nn.Linear(d, n)` (PyTorch's default init, `U(±1/√d)`) inside every forward. Here it is drawn from a
//! generator seeded by the step seed, the level, the image and the side ([`relation_filter_seed`],
//! [`relation_filter`]) — fresh every step, but reproducible, so a gradient check can hold it fixed by
//! reusing the seed. Images without GT boxes contribute 0.
//!
//! The official code pools every image's boxes from the *first* image of the batch (a one-element box list
//! passed to torchvision's `roi_align` with the whole batch); the default pools each image's boxes from its
//! own maps, as the formulas say, and [`InstanceSource::FirstImage`] reproduces the released behaviour.
//!
//! # Trainable parts
//!
//! Everything the loss uses besides the two detectors' features is trainable and lives in the *student's*
//! store, under the official module names prefixed with `distill.drkd.` (so an official state dict loads):
//! `student_non_local.<l>` / `teacher_non_local.<l>` (GloRe units: `conv_state`, `conv_proj`,
//! `gcn.conv1`, `gcn.conv2`, `conv_extend`, `blocker`), `non_local_adaptation.<l>`, `student_relation.<r>` /
//! `teacher_relation.<r>` (`theta.0`, `phi.0`, `g.0`, `W`), `relation_adaptation.<r>`, `for_adaptation.<r>`.
//! The teacher-side modules are trained too (the official quirk: they belong to the student model); only the
//! teacher's features are constants. All parameters start from PyTorch's default initialisation (`U(±1/√fan_in)`,
//! BatchNorm γ = 1, β = 0 — GloRe's paper suggests a zero γ, the code does not). Modules of a term whose
//! weight is 0 are not built.
//!
//! # Paper and code
//!
//! The abstract (the paper body was not available) describes a relation matrix built from instance
//! similarities and a relation filter module; the code instead distils relation-*augmented features*
//! (embedded-Gaussian attention over the instances, `z` above), its filter is an untrained random projection
//! redrawn every call, there is no size-aware weighting, and the teacher-side modules are trained. This
//! module follows the code; which of the two the authors intended is unverified.
//!
//! # Adaptations
//!
//! - The official code is a two-stage detector on P2–P6 (256 channels everywhere); here the FPN is P3–P5 with
//!   different student and teacher widths, so the 1×1 adapters map student width → teacher width (they are
//!   256 → 256 in the official code) and the unit sizes scale as above.
//! - The official single-stage path (weight 0.005, P3/P4) is not runnable as released; this module applies
//!   the two-stage losses unchanged to the one-stage detector.
//!
//! Gradient checks: `‖·‖_F` has a kink at 0 (its gradient is taken as 0 there) and the random filter must be
//! held fixed between evaluations (same step seed).

use super::{
    run_on_tape, Box4, DetectorOutputs, DetectorShape, Distiller, LossTerm, MethodGradients,
    StepContext,
};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::nn::{
    BatchNorm2d, Bound, BufferUpdates, Conv2d, ConvSpec, Linear, ParamId, ParamKind, ParamStore,
};
use crate::ops::conv2d::Conv2dConfig;
use crate::ops::norm::{BatchNormConfig, DRKD_BATCH_NORM_EPS};
use crate::ops::roi_align::RoiAlignConfig;
use crate::tensor::{DType, Tensor};
use crate::testing::Rng;

/// How the distance between a student and a teacher tensor is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelationDistance {
    /// `‖D‖_F = √Σ D²` (`torch.dist`), the official choice; its gradient is `D/‖D‖_F` (0 at `D = 0`).
    Frobenius,
    /// `‖D‖_F / √numel(D)`: the Frobenius norm made independent of the tensor's size.
    RootMeanSquare,
    /// `mean(D²)`: the usual MSE.
    MeanSquare,
}

/// The relation filter `K` of the instance relation module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelationFilter {
    /// `K = softmax(x Qᵀ + q)` with `Q, q` drawn fresh every call (official).
    FreshRandom,
    /// No filter: `P = softmax(F)` (a plain embedded-Gaussian relation; not the official code).
    Disabled,
}

/// Which image's feature maps the instance terms pool an image's GT boxes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceSource {
    /// Each image's own maps (what the formulas describe). Default.
    OwnImage,
    /// The first image of the batch, for every image: what the official code does, because it calls
    /// `roi_align(x, boxes=[gt_bboxes[i]], …)` with the whole batch `x` and a one-element box list, which
    /// torchvision reads as "these boxes belong to image 0". Reproduces the released behaviour.
    FirstImage,
}

/// Which side's relation module a filter belongs to (part of its seed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelationSide {
    /// The student's relation module (`0` in the seed).
    Student = 0,
    /// The teacher-side relation module (`1` in the seed).
    Teacher = 1,
}

/// Settings of [`DrkdDistiller`]; `Default` is the official two-stage configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct DrkdConfig {
    /// Weight of `L_pix` (`4e-3 · 0.25` in the code). Default 1e-3.
    pub pixel_weight: f64,
    /// Weight of `L_rel`. Default 0.004.
    pub relation_weight: f64,
    /// Weight of `L_fgI` (`0.008 · 0.3`). Default 0.0024.
    pub foreground_weight: f64,
    /// Default [`RelationDistance::Frobenius`] (official, all three terms).
    pub distance: RelationDistance,
    /// `mid = max(C / divisor, 1)` of each level's GloRe units (levels finest first; must cover every
    /// level). Default `[4, 4, 1, 1, 1]` (official `G(256, 64)` ×2, `G(256, 256)` ×3).
    pub glore_mid_divisors: Vec<usize>,
    /// Multiply `Z` by `1/L` (GloRe's `normalize` option). Default false (official).
    pub glore_normalize: bool,
    /// The GloRe units' BatchNorm2d. Default ε = 1e-4, momentum 0.1.
    pub batch_norm: BatchNormConfig,
    /// The instance terms use this many finest levels. Default 2.
    pub relation_levels: usize,
    /// Default torchvision's `roi_align(output_size=3)`: adaptive sampling, `aligned = False`.
    pub roi: RoiAlignConfig,
    /// Default [`RelationFilter::FreshRandom`].
    pub relation_filter: RelationFilter,
    /// Default [`InstanceSource::OwnImage`] (see there for the official code's behaviour).
    pub instance_source: InstanceSource,
}

impl Default for DrkdConfig {
    fn default() -> Self {
        DrkdConfig {
            pixel_weight: 1e-3,
            relation_weight: 0.004,
            foreground_weight: 0.0024,
            distance: RelationDistance::Frobenius,
            glore_mid_divisors: vec![4, 4, 1, 1, 1],
            glore_normalize: false,
            batch_norm: BatchNormConfig {
                eps: DRKD_BATCH_NORM_EPS,
                momentum: 0.1,
            },
            relation_levels: 2,
            roi: RoiAlignConfig::torchvision((3, 3)),
            relation_filter: RelationFilter::FreshRandom,
            instance_source: InstanceSource::OwnImage,
        }
    }
}

impl DrkdConfig {
    fn validate(&self, fpn_levels: usize) -> Result<()> {
        for (name, w) in [
            ("pixel_weight", self.pixel_weight),
            ("relation_weight", self.relation_weight),
            ("foreground_weight", self.foreground_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(Error::invalid(
                    name,
                    format!("must be finite and ≥ 0, got {w}"),
                ));
            }
        }
        if self.pixel_weight == 0.0 && self.relation_weight == 0.0 && self.foreground_weight == 0.0
        {
            return Err(Error::invalid(
                "DrkdConfig",
                "every loss weight is 0: no term would be computed",
            ));
        }
        if self.pixel_weight != 0.0 {
            if self.glore_mid_divisors.len() < fpn_levels {
                return Err(Error::invalid(
                    "glore_mid_divisors",
                    format!(
                        "expected a divisor for each of the {fpn_levels} levels, got {:?}",
                        self.glore_mid_divisors
                    ),
                ));
            }
            if self.glore_mid_divisors.contains(&0) {
                return Err(Error::invalid(
                    "glore_mid_divisors",
                    format!("divisors must be ≥ 1, got {:?}", self.glore_mid_divisors),
                ));
            }
        }
        let instance = self.relation_weight != 0.0 || self.foreground_weight != 0.0;
        if instance && (self.relation_levels == 0 || self.relation_levels > fpn_levels) {
            return Err(Error::invalid(
                "relation_levels",
                format!(
                    "expected 1 to {fpn_levels} (the FPN levels), got {}",
                    self.relation_levels
                ),
            ));
        }
        Ok(())
    }

    fn instance_terms(&self) -> bool {
        self.relation_weight != 0.0 || self.foreground_weight != 0.0
    }
}

/// The seed of the relation filter of `side` for `image` on instance level `level` in the step seeded
/// `step_seed`: `step_seed · 0x9E3779B97F4A7C15 + level·2³² + 2·image + side` (mod 2⁶⁴).
pub fn relation_filter_seed(step_seed: u64, level: usize, image: usize, side: RelationSide) -> u64 {
    step_seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((level as u64) << 32)
        .wrapping_add((image as u64).wrapping_mul(2))
        .wrapping_add(side as u64)
}

/// A relation filter `nn.Linear(dim, rows)` as PyTorch initialises it: weight `Q` `[rows, dim]` then bias
/// `q` `[rows]`, all `U(−1/√dim, 1/√dim)` drawn in that order from [`Rng::new(seed)`](Rng) and rounded to
/// f32.
pub fn relation_filter(seed: u64, rows: usize, dim: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let bound = 1.0 / (dim.max(1) as f64).sqrt();
    let weight = (0..rows * dim)
        .map(|_| rng.uniform(-bound, bound) as f32)
        .collect();
    let bias = (0..rows)
        .map(|_| rng.uniform(-bound, bound) as f32)
        .collect();
    (weight, bias)
}

/// `U(±1/√fan_in)` values (PyTorch's default for conv and linear weights and biases), f32.
fn uniform(rng: &mut Rng, n: usize, fan_in: usize) -> Vec<f32> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect()
}

fn add_uniform(
    store: &mut ParamStore,
    name: String,
    shape: &[usize],
    fan_in: usize,
    rng: &mut Rng,
) -> Result<ParamId> {
    let n = shape.iter().product();
    store.add(
        name,
        Tensor::from_vec(uniform(rng, n, fan_in), shape)?,
        ParamKind::Trainable,
    )
}

/// A 1×1 `nn.Conv2d(in, out, bias)` with PyTorch's default initialisation.
fn conv1x1(
    store: &mut ParamStore,
    prefix: &str,
    in_channels: usize,
    out_channels: usize,
    bias: bool,
    rng: &mut Rng,
) -> Result<Conv2d> {
    let weight = add_uniform(
        store,
        format!("{prefix}.weight"),
        &[out_channels, in_channels, 1, 1],
        in_channels,
        rng,
    )?;
    let bias = if bias {
        Some(add_uniform(
            store,
            format!("{prefix}.bias"),
            &[out_channels],
            in_channels,
            rng,
        )?)
    } else {
        None
    };
    Ok(Conv2d {
        spec: ConvSpec::same(in_channels, out_channels, 1),
        weight,
        bias,
        cfg: Conv2dConfig::square(1, 0, 1),
    })
}

/// One GloRe unit `G(C, mid)` (see the module docs).
#[derive(Clone, Debug)]
struct GloreUnit {
    conv_state: Conv2d,
    conv_proj: Conv2d,
    /// `gcn.conv1`: `Conv1d(N, N, 1)`, weight `[N, N, 1]` (= `A`), bias `[N]`.
    node_weight: ParamId,
    node_bias: ParamId,
    /// `gcn.conv2`: `Conv1d(S, S, 1, bias=False)`, weight `[S, S, 1]`.
    state_weight: ParamId,
    conv_extend: Conv2d,
    blocker: BatchNorm2d,
    states: usize,
    nodes: usize,
}

impl GloreUnit {
    fn new(
        store: &mut ParamStore,
        prefix: &str,
        channels: usize,
        mid: usize,
        bn: BatchNormConfig,
        rng: &mut Rng,
    ) -> Result<GloreUnit> {
        let (states, nodes) = (2 * mid, mid);
        let conv_state = conv1x1(
            store,
            &format!("{prefix}.conv_state"),
            channels,
            states,
            true,
            rng,
        )?;
        let conv_proj = conv1x1(
            store,
            &format!("{prefix}.conv_proj"),
            channels,
            nodes,
            true,
            rng,
        )?;
        let node_weight = add_uniform(
            store,
            format!("{prefix}.gcn.conv1.weight"),
            &[nodes, nodes, 1],
            nodes,
            rng,
        )?;
        let node_bias = add_uniform(
            store,
            format!("{prefix}.gcn.conv1.bias"),
            &[nodes],
            nodes,
            rng,
        )?;
        let state_weight = add_uniform(
            store,
            format!("{prefix}.gcn.conv2.weight"),
            &[states, states, 1],
            states,
            rng,
        )?;
        let conv_extend = conv1x1(
            store,
            &format!("{prefix}.conv_extend"),
            states,
            channels,
            false,
            rng,
        )?;
        let blocker = BatchNorm2d::new(store, &format!("{prefix}.blocker"), channels, bn)?;
        Ok(GloreUnit {
            conv_state,
            conv_proj,
            node_weight,
            node_bias,
            state_weight,
            conv_extend,
            blocker,
            states,
            nodes,
        })
    }

    fn forward(
        &self,
        b: &Bound,
        store: &ParamStore,
        x: Var,
        normalize: bool,
        updates: &mut BufferUpdates,
    ) -> Result<Var> {
        let tape = b.tape();
        let shape = tape.shape(x)?;
        let [batch, _, h, w] = shape[..] else {
            return Err(Error::shape("GloRe input", "[B, C, H, W]", &shape));
        };
        let (s, n, l) = (self.states, self.nodes, h * w);
        let v = self.conv_state.forward(b, x)?;
        let v = tape.reshape(v, &[batch, s, l])?;
        let bp = self.conv_proj.forward(b, x)?;
        let bp = tape.reshape(bp, &[batch, n, l])?;
        let mut z = tape.glore_project(v, bp)?;
        if normalize {
            z = tape.scale(z, 1.0 / l.max(1) as f64)?;
        }
        let a = tape.reshape(b.var(self.node_weight), &[n, n])?;
        let relu_h = tape.glore_node_conv(z, a, Some(b.var(self.node_bias)), true)?;
        let relu_h = tape.reshape(relu_h, &[batch, s, n, 1])?;
        let w_g = tape.reshape(b.var(self.state_weight), &[s, s, 1, 1])?;
        let y = tape.conv2d(relu_h, w_g, None, &Conv2dConfig::square(1, 0, 1))?;
        let y = tape.reshape(y, &[batch, s, n])?;
        let x_tilde = tape.glore_reproject(y, bp)?;
        let x_tilde = tape.reshape(x_tilde, &[batch, s, h, w])?;
        let extended = self.conv_extend.forward(b, x_tilde)?;
        let blocked = self.blocker.forward(b, store, extended, updates)?;
        tape.add(x, blocked)
    }
}

/// The official `ObjectRelation_1(d)`: `θ, φ, g = Linear(d, d/2)`, `W = Linear(d/2, d)`.
#[derive(Clone, Debug)]
struct RelationModule {
    theta: Linear,
    phi: Linear,
    g: Linear,
    w: Linear,
}

impl RelationModule {
    fn new(store: &mut ParamStore, prefix: &str, dim: usize, rng: &mut Rng) -> Result<Self> {
        let inner = (dim / 2).max(1);
        Ok(RelationModule {
            theta: Linear::new(store, &format!("{prefix}.theta.0"), dim, inner, true, rng)?,
            phi: Linear::new(store, &format!("{prefix}.phi.0"), dim, inner, true, rng)?,
            g: Linear::new(store, &format!("{prefix}.g.0"), dim, inner, true, rng)?,
            w: Linear::new(store, &format!("{prefix}.W"), inner, dim, true, rng)?,
        })
    }

    /// `z` for the pooled `x` `[n, C, PH, PW]`, with the filter `(Q [n, d], q [n])` when given.
    fn forward(&self, b: &Bound, x: Var, filter: Option<(Var, Var)>) -> Result<Var> {
        let tape = b.tape();
        let shape = tape.shape(x)?;
        let n = shape[0];
        let d: usize = shape[1..].iter().product();
        let flat = tape.reshape(x, &[n, d])?;
        let g = self.g.forward(b, flat)?;
        let theta = self.theta.forward(b, flat)?;
        let phi = self.phi.forward(b, flat)?;
        let mut f = tape.matmul(theta, phi, false, true)?;
        if let Some((q, q_bias)) = filter {
            let logits = tape.matmul(flat, q, false, true)?;
            let logits = tape.add(logits, q_bias)?;
            let k = tape.softmax(logits, 1.0)?;
            f = tape.mul(f, k)?;
        }
        let p = tape.softmax(f, 1.0)?;
        let y = tape.matmul(p, g, false, false)?;
        let wy = self.w.forward(b, y)?;
        let z = tape.add(wy, flat)?;
        tape.reshape(z, &shape)
    }
}

/// The tensors of one DRKD evaluation on a tape (levels finest first).
#[derive(Clone, Copy, Debug)]
pub struct DrkdInputs<'a> {
    /// Student FPN levels `[B, C_s, H_l, W_l]`.
    pub student_fpn: &'a [Var],
    /// Teacher FPN levels `[B, C_t, H_l, W_l]` (constants).
    pub teacher_fpn: &'a [Var],
    /// Stride of every level in pixels.
    pub strides: &'a [f64],
    /// The GT boxes of every image (input pixels).
    pub boxes: &'a [Vec<Box4>],
    /// Seeds the relation filters ([`relation_filter_seed`]).
    pub step_seed: u64,
}

/// DRKD as a [`Distiller`]; see the module docs.
#[derive(Clone, Debug)]
pub struct DrkdDistiller {
    cfg: DrkdConfig,
    levels: usize,
    student_width: usize,
    teacher_width: usize,
    student_glore: Vec<GloreUnit>,
    teacher_glore: Vec<GloreUnit>,
    pixel_adapters: Vec<Conv2d>,
    student_relation: Vec<RelationModule>,
    teacher_relation: Vec<RelationModule>,
    relation_adapters: Vec<Conv2d>,
    foreground_adapters: Vec<Conv2d>,
}

/// A zero loss term (f64 for f64 features, f32 otherwise) on `like`'s device.
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

impl DrkdDistiller {
    /// Builds the method for a student and a teacher with `fpn_levels` FPN levels each and registers its
    /// modules in `store` (the student's) under `distill.drkd.`, in the official module order, initialised
    /// from `seed` as PyTorch initialises them.
    pub fn new(
        store: &mut ParamStore,
        student: &DetectorShape,
        teacher: &DetectorShape,
        fpn_levels: usize,
        cfg: DrkdConfig,
        seed: u64,
    ) -> Result<DrkdDistiller> {
        if fpn_levels == 0 {
            return Err(Error::invalid("fpn_levels", "expected at least one level"));
        }
        cfg.validate(fpn_levels)?;
        let (cs, ct) = (student.fpn_channels, teacher.fpn_channels);
        if cs == 0 || ct == 0 {
            return Err(Error::invalid(
                "fpn_channels",
                format!("FPN widths must be ≥ 1, got student {cs}, teacher {ct}"),
            ));
        }
        let mut rng = Rng::new(seed);
        let p = "distill.drkd";
        let (mut student_glore, mut teacher_glore, mut pixel_adapters) =
            (Vec::new(), Vec::new(), Vec::new());
        if cfg.pixel_weight != 0.0 {
            for (side, width, units) in [
                ("student", cs, &mut student_glore),
                ("teacher", ct, &mut teacher_glore),
            ] {
                for l in 0..fpn_levels {
                    let mid = (width / cfg.glore_mid_divisors[l]).max(1);
                    units.push(GloreUnit::new(
                        store,
                        &format!("{p}.{side}_non_local.{l}"),
                        width,
                        mid,
                        cfg.batch_norm,
                        &mut rng,
                    )?);
                }
            }
            for l in 0..fpn_levels {
                pixel_adapters.push(conv1x1(
                    store,
                    &format!("{p}.non_local_adaptation.{l}"),
                    cs,
                    ct,
                    true,
                    &mut rng,
                )?);
            }
        }
        let (mut student_relation, mut teacher_relation, mut relation_adapters) =
            (Vec::new(), Vec::new(), Vec::new());
        let cells = cfg.roi.output_size.0 * cfg.roi.output_size.1;
        if cfg.relation_weight != 0.0 {
            for (side, width, modules) in [
                ("student", cs, &mut student_relation),
                ("teacher", ct, &mut teacher_relation),
            ] {
                for r in 0..cfg.relation_levels {
                    modules.push(RelationModule::new(
                        store,
                        &format!("{p}.{side}_relation.{r}"),
                        width * cells,
                        &mut rng,
                    )?);
                }
            }
            for r in 0..cfg.relation_levels {
                relation_adapters.push(conv1x1(
                    store,
                    &format!("{p}.relation_adaptation.{r}"),
                    cs,
                    ct,
                    true,
                    &mut rng,
                )?);
            }
        }
        let mut foreground_adapters = Vec::new();
        if cfg.foreground_weight != 0.0 {
            for r in 0..cfg.relation_levels {
                foreground_adapters.push(conv1x1(
                    store,
                    &format!("{p}.for_adaptation.{r}"),
                    cs,
                    ct,
                    true,
                    &mut rng,
                )?);
            }
        }
        Ok(DrkdDistiller {
            cfg,
            levels: fpn_levels,
            student_width: cs,
            teacher_width: ct,
            student_glore,
            teacher_glore,
            pixel_adapters,
            student_relation,
            teacher_relation,
            relation_adapters,
            foreground_adapters,
        })
    }

    /// The settings the method was built with.
    pub fn config(&self) -> &DrkdConfig {
        &self.cfg
    }

    /// `(mid of the student unit, mid of the teacher unit)` of every level (empty without the pixel term).
    pub fn glore_sizes(&self) -> Vec<(usize, usize)> {
        self.student_glore
            .iter()
            .zip(&self.teacher_glore)
            .map(|(s, t)| (s.nodes, t.nodes))
            .collect()
    }

    fn distance(&self, tape: &Tape, a: Var, b: Var) -> Result<Var> {
        let d = tape.sub(a, b)?;
        match self.cfg.distance {
            RelationDistance::Frobenius => tape.frobenius_norm(d),
            RelationDistance::RootMeanSquare => {
                let n = tape.value(d)?.numel().max(1) as f64;
                let norm = tape.frobenius_norm(d)?;
                tape.scale(norm, 1.0 / n.sqrt())
            }
            RelationDistance::MeanSquare => {
                let sq = tape.square(d)?;
                tape.mean_all(sq)
            }
        }
    }

    fn check(&self, tape: &Tape, x: &DrkdInputs<'_>) -> Result<usize> {
        let batch = super::check_fpn_pair(
            tape,
            x.student_fpn,
            x.teacher_fpn,
            x.strides,
            self.levels,
            (self.student_width, self.teacher_width),
        )?;
        if x.boxes.len() != batch {
            return Err(Error::invalid(
                "boxes",
                format!(
                    "expected one list per image ({batch}), got {}",
                    x.boxes.len()
                ),
            ));
        }
        for (i, list) in x.boxes.iter().enumerate() {
            for bx in list {
                super::check_box(bx, &format!("boxes[{i}]"))?;
            }
        }
        Ok(batch)
    }

    /// The filter `(Q, q)` as constants with `like`'s dtype and device.
    fn filter(
        &self,
        tape: &Tape,
        like: &Tensor,
        seed: u64,
        rows: usize,
        dim: usize,
    ) -> Result<Option<(Var, Var)>> {
        if self.cfg.relation_filter == RelationFilter::Disabled {
            return Ok(None);
        }
        let (q, q_bias) = relation_filter(seed, rows, dim);
        let on = |v: Vec<f32>, shape: &[usize]| -> Result<Var> {
            Ok(tape.constant(
                Tensor::from_vec(v, shape)?
                    .into_dtype(like.dtype())?
                    .to_device(&like.device())?,
            ))
        };
        Ok(Some((on(q, &[rows, dim])?, on(q_bias, &[rows])?)))
    }

    /// The weighted terms of one batch on `b`'s tape (see the module docs); BatchNorm running statistics
    /// go to `updates`.
    pub fn terms(
        &self,
        b: &Bound,
        store: &ParamStore,
        x: &DrkdInputs<'_>,
        updates: &mut BufferUpdates,
    ) -> Result<Vec<LossTerm>> {
        let tape = b.tape();
        let batch = self.check(tape, x)?;
        let like = tape.value(x.student_fpn[0])?;
        let cfg = &self.cfg;
        let mut terms = Vec::with_capacity(3);

        if cfg.pixel_weight != 0.0 {
            let mut sum = None;
            if batch > 0 {
                for l in 0..self.levels {
                    let s = self.student_glore[l].forward(
                        b,
                        store,
                        x.student_fpn[l],
                        cfg.glore_normalize,
                        updates,
                    )?;
                    let t = self.teacher_glore[l].forward(
                        b,
                        store,
                        x.teacher_fpn[l],
                        cfg.glore_normalize,
                        updates,
                    )?;
                    let s = self.pixel_adapters[l].forward(b, s)?;
                    add_into(tape, &mut sum, self.distance(tape, s, t)?)?;
                }
            }
            let sum = match sum {
                Some(v) => v,
                None => zero_term(tape, &like)?,
            };
            terms.push(LossTerm {
                name: "loss_drkd_pixel",
                value: tape.scale(sum, cfg.pixel_weight)?,
            });
        }

        if !cfg.instance_terms() {
            return Ok(terms);
        }
        let (mut relation, mut foreground) = (None, None);
        let mut rois = Vec::new();
        for (img, list) in x.boxes.iter().enumerate() {
            let source = match cfg.instance_source {
                InstanceSource::OwnImage => img,
                InstanceSource::FirstImage => 0,
            };
            for bx in list {
                rois.extend([source as f64, bx[0], bx[1], bx[2], bx[3]]);
            }
        }
        if !rois.is_empty() {
            let k = rois.len() / 5;
            let rois = tape.constant(Tensor::from_vec(rois, &[k, 5])?);
            let finest_width = tape.shape(x.student_fpn[0])?[3] as f64;
            for r in 0..cfg.relation_levels {
                let width = tape.shape(x.student_fpn[r])?[3] as f64;
                let scale = width / (finest_width * x.strides[0]);
                let pooled_s = tape.roi_align(x.student_fpn[r], rois, scale, &cfg.roi)?;
                let pooled_t = tape.roi_align(x.teacher_fpn[r], rois, scale, &cfg.roi)?;
                let mut offset = 0;
                for (img, list) in x.boxes.iter().enumerate() {
                    let n = list.len();
                    if n == 0 {
                        continue;
                    }
                    let rs = tape.narrow(pooled_s, 0, offset, n)?;
                    let rt = tape.narrow(pooled_t, 0, offset, n)?;
                    offset += n;
                    if cfg.foreground_weight != 0.0 {
                        let adapted = self.foreground_adapters[r].forward(b, rs)?;
                        add_into(tape, &mut foreground, self.distance(tape, adapted, rt)?)?;
                    }
                    if cfg.relation_weight != 0.0 {
                        let cells = cfg.roi.output_size.0 * cfg.roi.output_size.1;
                        let (ds, dt) = (self.student_width * cells, self.teacher_width * cells);
                        let fs = self.filter(
                            tape,
                            &like,
                            relation_filter_seed(x.step_seed, r, img, RelationSide::Student),
                            n,
                            ds,
                        )?;
                        let ft = self.filter(
                            tape,
                            &like,
                            relation_filter_seed(x.step_seed, r, img, RelationSide::Teacher),
                            n,
                            dt,
                        )?;
                        let zs = self.student_relation[r].forward(b, rs, fs)?;
                        let zt = self.teacher_relation[r].forward(b, rt, ft)?;
                        let zs = self.relation_adapters[r].forward(b, zs)?;
                        add_into(tape, &mut relation, self.distance(tape, zs, zt)?)?;
                    }
                }
            }
        }
        for (name, weight, sum) in [
            ("loss_drkd_relation", cfg.relation_weight, relation),
            ("loss_drkd_foreground", cfg.foreground_weight, foreground),
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

    /// The embedding entry: DRKD's terms of plain tensors (CPU or one device). `student_fpn` are the
    /// differentiated inputs (gradients in [`MethodGradients::student_grads`], same order), `teacher_fpn`
    /// constants, `boxes` the GT boxes per image, `step_seed` seeds the relation filters; `store` holds this
    /// method's modules (bound for training, float entries in the features' dtype and on their device), and
    /// the BatchNorm running-statistics updates are appended to `updates` (apply them with
    /// [`ParamStore::apply`]).
    #[allow(clippy::too_many_arguments)]
    pub fn compute(
        &self,
        store: &ParamStore,
        student_fpn: &[&Tensor],
        teacher_fpn: &[&Tensor],
        strides: &[f64],
        boxes: &[Vec<Box4>],
        step_seed: u64,
        updates: &mut BufferUpdates,
    ) -> Result<MethodGradients> {
        run_on_tape(store, student_fpn, teacher_fpn, |_, b, s, t| {
            self.terms(
                b,
                store,
                &DrkdInputs {
                    student_fpn: s,
                    teacher_fpn: t,
                    strides,
                    boxes,
                    step_seed,
                },
                updates,
            )
        })
    }
}

impl Distiller for DrkdDistiller {
    fn name(&self) -> &'static str {
        "drkd"
    }

    /// The FPN levels of both forwards, the GT boxes of `ctx.assignment.images`, filters seeded by
    /// `ctx.step_seed`.
    fn loss(
        &self,
        b: &Bound,
        store: &ParamStore,
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
        ctx: &StepContext<'_>,
        updates: &mut BufferUpdates,
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
        let boxes: Vec<Vec<Box4>> = ctx
            .assignment
            .images
            .iter()
            .map(|t| t.boxes.clone())
            .collect();
        self.terms(
            b,
            store,
            &DrkdInputs {
                student_fpn: &student.fpn,
                teacher_fpn: &teacher.fpn,
                strides: &student.fpn_strides,
                boxes: &boxes,
                step_seed: ctx.step_seed,
            },
            updates,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::test_support::{gradcheck_method, shape, t, term, trainable_entries};
    use crate::distill::{DenseAssignment, ImageTargets};
    use crate::Device;

    const STRIDES: [f64; 2] = [8.0, 16.0];

    /// A small configuration: student width 2, teacher 4, two levels 8×8 (s8) and 4×4 (s16) of 64×64 images.
    fn small() -> DrkdConfig {
        DrkdConfig {
            glore_mid_divisors: vec![2, 1],
            ..DrkdConfig::default()
        }
    }

    struct Problem {
        student: Vec<Tensor>,
        teacher: Vec<Tensor>,
        boxes: Vec<Vec<Box4>>,
    }

    fn problem(seed: u64) -> Problem {
        let mut rng = Rng::new(seed);
        let maps = [(8, 8), (4, 4)];
        let mut make = |c: usize| -> Vec<Tensor> {
            maps.iter()
                .map(|&(h, w)| t(rng.normal_vec(2 * c * h * w), &[2, c, h, w]))
                .collect()
        };
        let (student, teacher) = (make(2), make(4));
        let boxes = vec![
            vec![[3.3, 5.1, 21.7, 30.2], [30.4, 12.6, 62.1, 50.3]],
            vec![[10.3, 9.8, 50.2, 41.1]],
        ];
        Problem {
            student,
            teacher,
            boxes,
        }
    }

    fn build(cfg: &DrkdConfig) -> (ParamStore, DrkdDistiller) {
        let mut store = ParamStore::new();
        let d = DrkdDistiller::new(&mut store, &shape(2), &shape(4), 2, cfg.clone(), 9).unwrap();
        store.to_dtype(DType::F64).unwrap();
        (store, d)
    }

    fn run(cfg: &DrkdConfig, p: &Problem, seed: u64) -> Result<(MethodGradients, BufferUpdates)> {
        let (store, d) = build(cfg);
        let s: Vec<&Tensor> = p.student.iter().collect();
        let te: Vec<&Tensor> = p.teacher.iter().collect();
        let mut updates = BufferUpdates::default();
        let g = d.compute(&store, &s, &te, &STRIDES, &p.boxes, seed, &mut updates)?;
        Ok((g, updates))
    }

    /// Gradcheck of the whole loss with respect to every student input and to `per_param` entries of every
    /// trainable parameter (spread over each tensor), the relation filters held fixed by the step seed.
    fn check_gradients(cfg: &DrkdConfig, per_param: usize) {
        let p = problem(21);
        let (store, _) = build(cfg);
        gradcheck_method(
            &p.student,
            &trainable_entries(&store, Some(per_param)),
            || build(cfg),
            |d, store, student| {
                let te: Vec<&Tensor> = p.teacher.iter().collect();
                let mut updates = BufferUpdates::default();
                d.compute(store, student, &te, &STRIDES, &p.boxes, 42, &mut updates)
            },
        );
    }

    #[test]
    fn gradcheck_official_config() {
        check_gradients(&small(), 2);
    }

    #[test]
    fn gradcheck_normalised_variants() {
        check_gradients(
            &DrkdConfig {
                distance: RelationDistance::RootMeanSquare,
                glore_normalize: true,
                ..small()
            },
            1,
        );
        check_gradients(
            &DrkdConfig {
                distance: RelationDistance::MeanSquare,
                relation_filter: RelationFilter::Disabled,
                ..small()
            },
            1,
        );
    }

    #[test]
    fn terms_sizes_names_and_running_statistics() {
        let p = problem(4);
        let (out, updates) = run(&small(), &p, 7).unwrap();
        let names: Vec<&str> = out.terms.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "loss_drkd_pixel",
                "loss_drkd_relation",
                "loss_drkd_foreground"
            ]
        );
        assert!(out.terms.iter().all(|(_, v)| v.is_finite() && *v > 0.0));
        // Four BatchNorms (2 levels × 2 sides), three buffers each.
        assert_eq!(updates.updates.len(), 12);
        // A different step seed redraws the relation filters: only the relation term changes.
        let (other, _) = run(&small(), &p, 8).unwrap();
        assert_ne!(
            term(&other, "loss_drkd_relation"),
            term(&out, "loss_drkd_relation")
        );
        for name in ["loss_drkd_pixel", "loss_drkd_foreground"] {
            assert_eq!(term(&other, name), term(&out, name), "{name}");
        }
        // Every trainable parameter gets a gradient (teacher-side modules included).
        let (store, d) = build(&small());
        assert_eq!(out.param_grads.len(), store.trainable().count());
        assert_eq!(d.glore_sizes(), vec![(1, 2), (2, 4)]);

        let mut store = ParamStore::new();
        let d = DrkdDistiller::new(
            &mut store,
            &shape(32),
            &shape(64),
            3,
            DrkdConfig::default(),
            1,
        )
        .unwrap();
        assert_eq!(d.glore_sizes(), vec![(8, 16), (8, 16), (32, 64)]);
        for name in [
            "distill.drkd.student_non_local.0.conv_state.weight",
            "distill.drkd.teacher_non_local.2.gcn.conv1.weight",
            "distill.drkd.teacher_non_local.2.blocker.running_var",
            "distill.drkd.non_local_adaptation.1.bias",
            "distill.drkd.student_relation.1.theta.0.weight",
            "distill.drkd.teacher_relation.0.W.bias",
            "distill.drkd.relation_adaptation.0.weight",
            "distill.drkd.for_adaptation.1.weight",
        ] {
            assert!(store.id(name).is_some(), "{name}");
        }
        let shape_of = |n: &str| store.value(store.id(n).unwrap()).shape().to_vec();
        assert_eq!(
            shape_of("distill.drkd.teacher_non_local.2.gcn.conv1.weight"),
            [64, 64, 1]
        );
        assert_eq!(
            shape_of("distill.drkd.student_relation.0.theta.0.weight"),
            [144, 288]
        );
        assert_eq!(
            shape_of("distill.drkd.relation_adaptation.0.weight"),
            [64, 32, 1, 1]
        );
        assert!(store
            .id("distill.drkd.student_relation.2.W.weight")
            .is_none());
    }

    #[test]
    fn first_image_pooling_reads_image_zero() {
        let first = DrkdConfig {
            instance_source: InstanceSource::FirstImage,
            pixel_weight: 0.0,
            ..small()
        };
        let own = DrkdConfig {
            pixel_weight: 0.0,
            ..small()
        };
        let mut p = problem(12);
        let (a, _) = run(&first, &p, 3).unwrap();
        let (b, _) = run(&own, &p, 3).unwrap();
        assert_ne!(a.loss, b.loss);
        // With image 1's maps replaced by image 0's, both read the same features.
        for maps in [&mut p.student, &mut p.teacher] {
            for m in maps.iter_mut() {
                let shape = m.shape().to_vec();
                let half = m.numel() / 2;
                let mut v = m.to_vec::<f64>().unwrap();
                v.copy_within(..half, half);
                *m = t(v, &shape);
            }
        }
        let (a, _) = run(&first, &p, 3).unwrap();
        let (b, _) = run(&own, &p, 3).unwrap();
        assert_eq!(a.loss, b.loss);
        // The official variant sends every gradient to image 0.
        let g = a.student_grads[0].to_vec::<f64>().unwrap();
        assert!(g[g.len() / 2..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn relation_filter_is_pytorch_default_and_reproducible() {
        let seed = relation_filter_seed(5, 1, 2, RelationSide::Teacher);
        assert_eq!(
            seed,
            5u64.wrapping_mul(0x9E37_79B9_7F4A_7C15) + (1 << 32) + 4 + 1
        );
        let (q, b) = relation_filter(seed, 3, 36);
        assert_eq!((q.len(), b.len()), (108, 3));
        assert_eq!(relation_filter(seed, 3, 36), (q.clone(), b));
        let bound = 1.0 / 6.0;
        assert!(q.iter().all(|v| (v.abs() as f64) <= bound));
        let other = relation_filter(relation_filter_seed(5, 1, 2, RelationSide::Student), 3, 36);
        assert_ne!(other.0, q);
    }

    #[test]
    fn images_without_boxes_empty_batches_and_disabled_terms() {
        let mut p = problem(6);
        p.boxes = vec![vec![], vec![]];
        let (out, _) = run(&small(), &p, 1).unwrap();
        assert!(term(&out, "loss_drkd_pixel").unwrap() > 0.0);
        assert_eq!(term(&out, "loss_drkd_relation"), Some(0.0));
        assert_eq!(term(&out, "loss_drkd_foreground"), Some(0.0));
        // One image without boxes contributes nothing: same instance terms as the other image alone.
        let mut p = problem(6);
        p.boxes[1].clear();
        let (with_empty, _) = run(&small(), &p, 1).unwrap();
        assert!(term(&with_empty, "loss_drkd_relation").unwrap() > 0.0);

        let (store, d) = build(&small());
        let s = [
            Tensor::zeros(&[0, 2, 8, 8], DType::F64, &Device::Cpu).unwrap(),
            Tensor::zeros(&[0, 2, 4, 4], DType::F64, &Device::Cpu).unwrap(),
        ];
        let te = [
            Tensor::zeros(&[0, 4, 8, 8], DType::F64, &Device::Cpu).unwrap(),
            Tensor::zeros(&[0, 4, 4, 4], DType::F64, &Device::Cpu).unwrap(),
        ];
        let out = d
            .compute(
                &store,
                &[&s[0], &s[1]],
                &[&te[0], &te[1]],
                &STRIDES,
                &[],
                0,
                &mut BufferUpdates::default(),
            )
            .unwrap();
        assert_eq!(out.loss, 0.0);

        let pixel_only = DrkdConfig {
            relation_weight: 0.0,
            foreground_weight: 0.0,
            ..small()
        };
        let (store, _) = build(&pixel_only);
        assert!(store.ids().all(|id| store.name(id).contains("non_local")));
        let (out, _) = run(&pixel_only, &problem(6), 1).unwrap();
        assert_eq!(out.terms.len(), 1);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let p = problem(8);
        let (store, d) = build(&small());
        let s: Vec<&Tensor> = p.student.iter().collect();
        let te: Vec<&Tensor> = p.teacher.iter().collect();
        let mut u = BufferUpdates::default();
        let mut err = |s: &[&Tensor], te: &[&Tensor], strides: &[f64], boxes: &[Vec<Box4>]| {
            d.compute(&store, s, te, strides, boxes, 0, &mut u)
                .unwrap_err()
                .to_string()
        };
        let e = err(&s[..1], &te, &STRIDES, &p.boxes);
        assert!(e.contains("expected 2 FPN levels"), "{e}");
        let e = err(&s, &[te[1], te[0]], &STRIDES, &p.boxes);
        assert!(e.contains("teacher_fpn[0]"), "{e}");
        let e = err(&s, &[s[0], s[1]], &STRIDES, &p.boxes);
        assert!(e.contains("teacher width"), "{e}");
        let e = err(&s, &te, &STRIDES, &p.boxes[..1]);
        assert!(e.contains("one list per image"), "{e}");
        let e = err(&s, &te, &[8.0, f64::INFINITY], &p.boxes);
        assert!(e.contains("strides"), "{e}");
        let mut bad = p.boxes.clone();
        bad[0][1] = [5.0, 5.0, 1.0, 9.0];
        let e = err(&s, &te, &STRIDES, &bad);
        assert!(e.contains("boxes[0]") && e.contains("x1 ≤ x2"), "{e}");
        // BatchNorm needs more than one value per channel in training mode.
        let tiny_s = [
            t(vec![0.5; 2 * 64], &[1, 2, 8, 8]),
            t(vec![0.5; 2], &[1, 2, 1, 1]),
        ];
        let tiny_t = [
            t(vec![0.5; 4 * 64], &[1, 4, 8, 8]),
            t(vec![0.5; 4], &[1, 4, 1, 1]),
        ];
        let e = err(
            &[&tiny_s[0], &tiny_s[1]],
            &[&tiny_t[0], &tiny_t[1]],
            &STRIDES,
            &[vec![]],
        );
        assert!(e.contains("more than one value per channel"), "{e}");

        let mut store = ParamStore::new();
        for (cfg, expected) in [
            (
                DrkdConfig {
                    glore_mid_divisors: vec![4],
                    ..DrkdConfig::default()
                },
                "glore_mid_divisors",
            ),
            (
                DrkdConfig {
                    relation_levels: 3,
                    ..DrkdConfig::default()
                },
                "relation_levels",
            ),
            (
                DrkdConfig {
                    pixel_weight: -1.0,
                    ..DrkdConfig::default()
                },
                "pixel_weight",
            ),
            (
                DrkdConfig {
                    pixel_weight: 0.0,
                    relation_weight: 0.0,
                    foreground_weight: 0.0,
                    ..DrkdConfig::default()
                },
                "every loss weight is 0",
            ),
        ] {
            let e = DrkdDistiller::new(&mut store, &shape(2), &shape(4), 2, cfg, 1)
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn engine_entry_matches_the_embedding_entry() {
        let p = problem(10);
        let (store, d) = build(&small());
        let assignment = DenseAssignment {
            batch: 2,
            images: p
                .boxes
                .iter()
                .map(|b| ImageTargets {
                    boxes: b.clone(),
                    labels: vec![0; b.len()],
                })
                .collect(),
            ..Default::default()
        };
        let ctx = StepContext {
            assignment: &assignment,
            student_gfl: None,
            epoch: 0,
            num_epochs: 1,
            step_seed: 99,
            image_size: (64, 64),
        };
        let tape = Tape::new();
        let b = store.bind(&tape);
        let outputs = |fpn: &[Tensor], leaf: bool| DetectorOutputs {
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
            cls: vec![],
            reg: vec![],
        };
        let mut updates = BufferUpdates::default();
        let terms = d
            .loss(
                &b,
                &store,
                &outputs(&p.student, true),
                &outputs(&p.teacher, false),
                &ctx,
                &mut updates,
            )
            .unwrap();
        assert_eq!(updates.updates.len(), 12);
        let (direct, _) = run(&small(), &p, 99).unwrap();
        for (term, (name, value)) in terms.iter().zip(&direct.terms) {
            assert_eq!(term.name, *name);
            let v = tape.value(term.value).unwrap().to_vec::<f64>().unwrap()[0];
            assert_eq!(v, *value, "{name}");
        }
        assert_eq!(d.name(), "drkd");
    }
}
