//! TinyGFL: a one-stage GFL detector small enough to train on a CPU in minutes — a 4-stage residual
//! backbone, an FPN, and GFL's shared head (classification logits for C classes, box-distribution logits
//! `4·(reg_max + 1)`), with GroupNorm throughout (batch-size independent, as GFL's head).
//!
//! ```text
//! image ─ stem (3×3 s2) ─ stage1 (s4) ─ stage2 (s8) ─ stage3 (s16) ─ stage4 (s32)      backbone
//!                                          │             │             │
//!                              lateral 1×1 + top-down nearest 2× ─ output 3×3           neck: P3 P4 P5
//!                                          │             │             │
//!                          shared head: cls convs → gfl_cls (C),  reg convs → gfl_reg (4·17) · scale_l
//! ```
//!
//! Each stage is a stride-2 `conv3×3–GN–ReLU` followed by `depth` basic residual blocks
//! (`conv–GN–ReLU–conv–GN` + identity, ReLU). Parameter names and layouts follow PyTorch
//! (`backbone.stage1.0.conv.weight`, OIHW), so checkpoints load into the equivalent PyTorch module
//! (scripts/tiny_gfl.py). Initialisation: Kaiming (fan-out) for the backbone and the neck (mmdet uses
//! Xavier for the neck), Normal(0, 0.01) for the head, and the classification bias at `σ(b) = 0.01`, as
//! mmdet's GFL head. Differences from mmdet's GFL: FPN levels P3–P5 only (no P6/P7: the images are
//! small), a 3×3 stem, and the per-level scales have shape `[1]` (mmcv's `Scale` is 0-d).

use crate::autograd::Var;
use crate::distill::DetectorOutputs;
use crate::error::{Error, Result};
use crate::nn::{
    init, Bound, Conv2d, ConvSpec, GroupNorm, ParamId, ParamKind, ParamStore, WeightInit,
};
use crate::testing::Rng;

/// Widths and depths of a [`TinyGfl`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyGflConfig {
    /// Object classes C (≥ 1): the output channels of the classification branch.
    pub num_classes: usize,
    /// Output channels of the stride-2 3×3 stem (≥ 1).
    pub stem_channels: usize,
    /// Output channels of stages 1–4 (strides 4, 8, 16, 32).
    pub stage_channels: [usize; 4],
    /// Residual blocks after each stage's stride-2 convolution.
    pub stage_depths: [usize; 4],
    /// FPN width (P3–P5 from stages 2–4).
    pub fpn_channels: usize,
    /// Stacked `conv–GN–ReLU` layers in each head branch.
    pub head_convs: usize,
    /// Width of the head's stacked convolutions (≥ 1; unused when `head_convs` is 0).
    pub head_channels: usize,
    /// Box distributions have `reg_max + 1` bins.
    pub reg_max: usize,
    /// GroupNorm group size (channels per group).
    pub channels_per_group: usize,
}

impl TinyGflConfig {
    /// The teacher preset.
    pub fn teacher(num_classes: usize) -> Self {
        TinyGflConfig {
            num_classes,
            stem_channels: 16,
            stage_channels: [32, 64, 128, 256],
            stage_depths: [1, 1, 1, 1],
            fpn_channels: 64,
            head_convs: 2,
            head_channels: 64,
            reg_max: 16,
            channels_per_group: 8,
        }
    }

    /// The student preset: half the widths and a single head conv per branch, about a quarter of the
    /// teacher's FLOPs.
    pub fn student(num_classes: usize) -> Self {
        TinyGflConfig {
            num_classes,
            stem_channels: 8,
            stage_channels: [16, 32, 64, 128],
            stage_depths: [1, 1, 1, 1],
            fpn_channels: 32,
            head_convs: 1,
            head_channels: 32,
            reg_max: 16,
            channels_per_group: 8,
        }
    }

    /// Strides of the backbone stages.
    pub const STAGE_STRIDES: [f64; 4] = [4.0, 8.0, 16.0, 32.0];
    /// Strides of the FPN levels P3–P5.
    pub const FPN_STRIDES: [f64; 3] = [8.0, 16.0, 32.0];

    /// Multiply-accumulates of one forward on an `h × w` input (convolutions only; norms, activations and
    /// the upsampling are a few percent more). How the presets compare.
    pub fn conv_macs(&self, h: usize, w: usize) -> u64 {
        let conv = |cin: usize, cout: usize, k: usize, oh: usize, ow: usize| -> u64 {
            (cin * cout * k * k * oh * ow) as u64
        };
        let (mut h, mut w) = (h.div_ceil(2), w.div_ceil(2));
        let mut macs = conv(3, self.stem_channels, 3, h, w);
        let mut c = self.stem_channels;
        let mut sizes = Vec::new();
        for (&out, &depth) in self.stage_channels.iter().zip(&self.stage_depths) {
            (h, w) = (h.div_ceil(2), w.div_ceil(2));
            macs += conv(c, out, 3, h, w) + 2 * depth as u64 * conv(out, out, 3, h, w);
            c = out;
            sizes.push((h, w));
        }
        let f = self.fpn_channels;
        let last = if self.head_convs == 0 {
            f
        } else {
            self.head_channels
        };
        for (&cin, &(h, w)) in self.stage_channels[1..].iter().zip(&sizes[1..]) {
            macs += conv(cin, f, 1, h, w) + conv(f, f, 3, h, w);
            for i in 0..self.head_convs {
                let cin = if i == 0 { f } else { self.head_channels };
                macs += 2 * conv(cin, self.head_channels, 3, h, w);
            }
            macs +=
                conv(last, self.num_classes, 3, h, w) + conv(last, 4 * (self.reg_max + 1), 3, h, w);
        }
        macs
    }

    fn validate(&self) -> Result<()> {
        let widths = [
            ("stem_channels", self.stem_channels),
            ("fpn_channels", self.fpn_channels),
            ("head_channels", self.head_channels),
        ];
        for (name, c) in widths
            .into_iter()
            .chain(self.stage_channels.iter().map(|&c| ("stage_channels", c)))
        {
            if c == 0 {
                return Err(Error::invalid(name, "widths must be ≥ 1"));
            }
        }
        if self.num_classes == 0 {
            return Err(Error::invalid("num_classes", "expected at least 1 class"));
        }
        if self.channels_per_group == 0 {
            return Err(Error::invalid("channels_per_group", "expected ≥ 1"));
        }
        Ok(())
    }

    fn groups(&self, channels: usize) -> usize {
        let g = (channels / self.channels_per_group).max(1);
        // The largest group count not above `g` that divides the channels evenly.
        (1..=g).rev().find(|d| channels % d == 0).unwrap_or(1)
    }
}

/// `conv (no bias) – GN – ReLU`, mmcv's `ConvModule` with GN.
#[derive(Clone, Debug)]
struct ConvGnRelu {
    conv: Conv2d,
    gn: GroupNorm,
}

impl ConvGnRelu {
    fn new(
        store: &mut ParamStore,
        prefix: &str,
        spec: ConvSpec,
        groups: usize,
        init: WeightInit,
        rng: &mut Rng,
    ) -> Result<Self> {
        Ok(ConvGnRelu {
            conv: Conv2d::new(store, &format!("{prefix}.conv"), spec, None, init, rng)?,
            gn: GroupNorm::new(store, &format!("{prefix}.gn"), spec.out_channels, groups)?,
        })
    }

    fn forward(&self, b: &Bound, x: Var) -> Result<Var> {
        let y = self.conv.forward(b, x)?;
        let y = self.gn.forward(b, y)?;
        b.tape().relu(y)
    }
}

/// `conv–GN–ReLU–conv–GN` + identity, ReLU.
#[derive(Clone, Debug)]
struct BasicBlock {
    conv1: Conv2d,
    gn1: GroupNorm,
    conv2: Conv2d,
    gn2: GroupNorm,
}

impl BasicBlock {
    fn new(
        store: &mut ParamStore,
        prefix: &str,
        c: usize,
        groups: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        let spec = ConvSpec::same(c, c, 3);
        let k = WeightInit::KaimingFanOut;
        Ok(BasicBlock {
            conv1: Conv2d::new(store, &format!("{prefix}.conv1"), spec, None, k, rng)?,
            gn1: GroupNorm::new(store, &format!("{prefix}.gn1"), c, groups)?,
            conv2: Conv2d::new(store, &format!("{prefix}.conv2"), spec, None, k, rng)?,
            gn2: GroupNorm::new(store, &format!("{prefix}.gn2"), c, groups)?,
        })
    }

    fn forward(&self, b: &Bound, x: Var) -> Result<Var> {
        let t = b.tape();
        let y = self.gn1.forward(b, self.conv1.forward(b, x)?)?;
        let y = t.relu(y)?;
        let y = self.gn2.forward(b, self.conv2.forward(b, y)?)?;
        let y = t.add(y, x)?;
        t.relu(y)
    }
}

/// The detector: its parameters live in the [`ParamStore`] passed to [`TinyGfl::new`].
#[derive(Clone, Debug)]
pub struct TinyGfl {
    /// The architecture it was built with.
    pub cfg: TinyGflConfig,
    stem: ConvGnRelu,
    stages: Vec<(ConvGnRelu, Vec<BasicBlock>)>,
    lateral: Vec<Conv2d>,
    output: Vec<Conv2d>,
    cls_convs: Vec<ConvGnRelu>,
    reg_convs: Vec<ConvGnRelu>,
    gfl_cls: Conv2d,
    gfl_reg: Conv2d,
    scales: Vec<ParamId>,
}

impl TinyGfl {
    /// Registers every parameter (names under `backbone.`, `neck.`, `head.`), initialised from `seed`.
    pub fn new(store: &mut ParamStore, cfg: &TinyGflConfig, seed: u64) -> Result<TinyGfl> {
        cfg.validate()?;
        let mut rng = Rng::new(seed);
        let rng = &mut rng;
        let k = WeightInit::KaimingFanOut;
        let stem = ConvGnRelu::new(
            store,
            "backbone.stem",
            ConvSpec::same(3, cfg.stem_channels, 3).stride(2),
            cfg.groups(cfg.stem_channels),
            k,
            rng,
        )?;
        let mut stages = Vec::with_capacity(4);
        let mut in_c = cfg.stem_channels;
        for (i, (&c, &depth)) in cfg.stage_channels.iter().zip(&cfg.stage_depths).enumerate() {
            let prefix = format!("backbone.stage{}", i + 1);
            let down = ConvGnRelu::new(
                store,
                &format!("{prefix}.0"),
                ConvSpec::same(in_c, c, 3).stride(2),
                cfg.groups(c),
                k,
                rng,
            )?;
            let blocks = (0..depth)
                .map(|j| {
                    BasicBlock::new(store, &format!("{prefix}.{}", j + 1), c, cfg.groups(c), rng)
                })
                .collect::<Result<Vec<_>>>()?;
            stages.push((down, blocks));
            in_c = c;
        }
        let f = cfg.fpn_channels;
        let mut lateral = Vec::new();
        let mut output = Vec::new();
        for (l, &c) in cfg.stage_channels[1..].iter().enumerate() {
            lateral.push(Conv2d::new(
                store,
                &format!("neck.lateral.{l}"),
                ConvSpec::same(c, f, 1),
                Some(0.0),
                k,
                rng,
            )?);
            output.push(Conv2d::new(
                store,
                &format!("neck.output.{l}"),
                ConvSpec::same(f, f, 3),
                Some(0.0),
                k,
                rng,
            )?);
        }
        let h = cfg.head_channels;
        let head_init = WeightInit::Normal(0.01);
        let branch = |store: &mut ParamStore, name: &str, rng: &mut Rng| {
            (0..cfg.head_convs)
                .map(|i| {
                    let in_c = if i == 0 { f } else { h };
                    ConvGnRelu::new(
                        store,
                        &format!("head.{name}.{i}"),
                        ConvSpec::same(in_c, h, 3),
                        cfg.groups(h),
                        head_init,
                        rng,
                    )
                })
                .collect::<Result<Vec<_>>>()
        };
        let cls_convs = branch(store, "cls_convs", rng)?;
        let reg_convs = branch(store, "reg_convs", rng)?;
        let last = if cfg.head_convs == 0 { f } else { h };
        let gfl_cls = Conv2d::new(
            store,
            "head.gfl_cls",
            ConvSpec::same(last, cfg.num_classes, 3),
            Some(init::bias_init_with_prob(0.01)),
            head_init,
            rng,
        )?;
        let gfl_reg = Conv2d::new(
            store,
            "head.gfl_reg",
            ConvSpec::same(last, 4 * (cfg.reg_max + 1), 3),
            Some(0.0),
            head_init,
            rng,
        )?;
        let scales = (0..TinyGflConfig::FPN_STRIDES.len())
            .map(|l| {
                store.add(
                    format!("head.scales.{l}.scale"),
                    init::constant(&[1], 1.0)?,
                    ParamKind::Trainable,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TinyGfl {
            cfg: cfg.clone(),
            stem,
            stages,
            lateral,
            output,
            cls_convs,
            reg_convs,
            gfl_cls,
            gfl_reg,
            scales,
        })
    }

    /// The forward of a batch `images` `[B, 3, H, W]` (H and W multiples of 32): every stage, the FPN levels
    /// and the head outputs, which the distillation methods read.
    pub fn forward(&self, b: &Bound, images: Var) -> Result<DetectorOutputs> {
        let t = b.tape();
        let shape = t.shape(images)?;
        if shape.len() != 4 || shape[1] != 3 || shape[2] % 32 != 0 || shape[3] % 32 != 0 {
            return Err(Error::shape(
                "images",
                "[B, 3, H, W] with H and W multiples of 32",
                &shape,
            ));
        }
        let mut x = self.stem.forward(b, images)?;
        let mut stages = Vec::with_capacity(4);
        for (down, blocks) in &self.stages {
            x = down.forward(b, x)?;
            for block in blocks {
                x = block.forward(b, x)?;
            }
            stages.push(x);
        }
        // Top-down: P5 = L5, P4 = L4 + up(P5), P3 = L3 + up(P4).
        let laterals = self
            .lateral
            .iter()
            .zip(&stages[1..])
            .map(|(conv, &c)| conv.forward(b, c))
            .collect::<Result<Vec<_>>>()?;
        let mut merged = laterals.clone();
        for l in (0..merged.len() - 1).rev() {
            let up = t.upsample_nearest2x(merged[l + 1])?;
            merged[l] = t.add(laterals[l], up)?;
        }
        let fpn = self
            .output
            .iter()
            .zip(&merged)
            .map(|(conv, &m)| conv.forward(b, m))
            .collect::<Result<Vec<_>>>()?;
        let mut cls = Vec::with_capacity(fpn.len());
        let mut reg = Vec::with_capacity(fpn.len());
        for (l, &p) in fpn.iter().enumerate() {
            let mut c = p;
            for layer in &self.cls_convs {
                c = layer.forward(b, c)?;
            }
            let mut r = p;
            for layer in &self.reg_convs {
                r = layer.forward(b, r)?;
            }
            cls.push(self.gfl_cls.forward(b, c)?);
            let box_logits = self.gfl_reg.forward(b, r)?;
            reg.push(t.mul(box_logits, b.var(self.scales[l]))?);
        }
        Ok(DetectorOutputs {
            stages,
            stage_strides: TinyGflConfig::STAGE_STRIDES.to_vec(),
            fpn,
            fpn_strides: TinyGflConfig::FPN_STRIDES.to_vec(),
            cls,
            reg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::Tape;
    use crate::{DType, Tensor};

    fn tiny() -> TinyGflConfig {
        TinyGflConfig {
            num_classes: 3,
            stem_channels: 4,
            stage_channels: [4, 8, 8, 8],
            stage_depths: [1, 0, 1, 0],
            fpn_channels: 8,
            head_convs: 1,
            head_channels: 8,
            reg_max: 4,
            channels_per_group: 4,
        }
    }

    /// `Σ cls·c₁ + Σ reg·c₂` with fixed random weights: a scalar that depends on every output.
    fn probe(tape: &Tape, out: &DetectorOutputs, rng: &mut Rng) -> Result<Var> {
        let mut total: Option<Var> = None;
        for &v in out.cls.iter().chain(&out.reg).chain(&out.stages) {
            let shape = tape.shape(v)?;
            let n: usize = shape.iter().product();
            let w = Tensor::from_vec(rng.normal_vec(n), &shape)?;
            let w = tape.constant(w.into_dtype(tape.value(v)?.dtype())?);
            let s = tape.sum_all(tape.mul(v, w)?)?;
            total = Some(match total {
                None => s,
                Some(t) => tape.add(t, s)?,
            });
        }
        Ok(total.expect("outputs"))
    }

    #[test]
    fn shapes_names_and_presets() {
        let mut store = ParamStore::new();
        let model = TinyGfl::new(&mut store, &tiny(), 0).unwrap();
        assert!(store.id("backbone.stage1.0.conv.weight").is_some());
        assert!(store.id("backbone.stage1.1.conv2.weight").is_some());
        assert!(store.id("head.gfl_reg.bias").is_some());
        let tape = Tape::new();
        let b = store.bind(&tape);
        let x =
            tape.constant(Tensor::zeros(&[2, 3, 64, 96], DType::F32, &crate::Device::Cpu).unwrap());
        let out = model.forward(&b, x).unwrap();
        let shapes: Vec<Vec<usize>> = out.reg.iter().map(|&v| tape.shape(v).unwrap()).collect();
        assert_eq!(
            shapes,
            vec![vec![2, 20, 8, 12], vec![2, 20, 4, 6], vec![2, 20, 2, 3]]
        );
        assert_eq!(tape.shape(out.cls[0]).unwrap(), vec![2, 3, 8, 12]);
        assert_eq!(tape.shape(out.stages[0]).unwrap(), vec![2, 4, 16, 24]);
        let e = model
            .forward(
                &b,
                tape.constant(
                    Tensor::zeros(&[1, 3, 60, 64], DType::F32, &crate::Device::Cpu).unwrap(),
                ),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiples of 32"), "{e}");

        // The student preset has about a quarter of the teacher's parameters and multiply-adds.
        let (mut s, mut t) = (ParamStore::new(), ParamStore::new());
        TinyGfl::new(&mut s, &TinyGflConfig::student(8), 0).unwrap();
        TinyGfl::new(&mut t, &TinyGflConfig::teacher(8), 0).unwrap();
        let ratio = t.num_trainable_elements() as f64 / s.num_trainable_elements() as f64;
        assert!((3.0..5.0).contains(&ratio), "{ratio}");
        let (sm, tm) = (
            TinyGflConfig::student(8).conv_macs(128, 128),
            TinyGflConfig::teacher(8).conv_macs(128, 128),
        );
        let ratio = tm as f64 / sm as f64;
        assert!((3.5..6.0).contains(&ratio), "{ratio}: {tm} / {sm}");
    }

    #[test]
    fn directional_gradient_of_the_whole_network() {
        // ⟨∇L, v⟩ against (L(θ + εv) − L(θ − εv)) / 2ε in f64, for a random direction v over every parameter.
        let mut store = ParamStore::new();
        let model = TinyGfl::new(&mut store, &tiny(), 3).unwrap();
        store.to_dtype(DType::F64).unwrap();
        let mut rng = Rng::new(5);
        let images = Tensor::from_vec(rng.normal_vec(2 * 3 * 32 * 32), &[2, 3, 32, 32]).unwrap();
        let loss_at = |store: &ParamStore| -> (f64, Vec<(ParamId, Option<Tensor>)>) {
            let tape = Tape::new();
            let b = store.bind(&tape);
            let x = tape.constant(images.try_clone().unwrap());
            let out = model.forward(&b, x).unwrap();
            let l = probe(&tape, &out, &mut Rng::new(99)).unwrap();
            let value = tape.value(l).unwrap().to_vec::<f64>().unwrap()[0];
            let mut grads = tape.backward(l).unwrap();
            (value, b.gradients(store, &mut grads))
        };
        let (_, grads) = loss_at(&store);
        let ids: Vec<ParamId> = store.trainable().collect();
        let dirs: Vec<Vec<f64>> = ids
            .iter()
            .map(|&id| rng.normal_vec(store.value(id).numel()))
            .collect();
        let analytic: f64 = grads
            .iter()
            .zip(&dirs)
            .map(|((_, g), d)| {
                let g = g
                    .as_ref()
                    .expect("every parameter gets a gradient")
                    .to_vec::<f64>()
                    .unwrap();
                g.iter().zip(d).map(|(a, b)| a * b).sum::<f64>()
            })
            .sum();
        let eps = 1e-6;
        let shifted = |sign: f64| {
            let mut s = ParamStore::new();
            TinyGfl::new(&mut s, &tiny(), 3).unwrap();
            s.to_dtype(DType::F64).unwrap();
            for (&id, d) in ids.iter().zip(&dirs) {
                let v: Vec<f64> = store
                    .value(id)
                    .to_vec::<f64>()
                    .unwrap()
                    .iter()
                    .zip(d)
                    .map(|(p, d)| p + sign * eps * d)
                    .collect();
                s.set(id, Tensor::from_vec(v, store.value(id).shape()).unwrap())
                    .unwrap();
            }
            loss_at(&s).0
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps);
        let err = (analytic - numeric).abs();
        assert!(
            err <= 1e-6 + 1e-4 * numeric.abs(),
            "analytic {analytic} numeric {numeric}"
        );
    }
}
