//! The layers the detector and the distillation adapters are built from. Each registers its parameters in a
//! [`ParamStore`] under PyTorch's names (`<prefix>.weight`, `<prefix>.bias`, `<prefix>.running_mean`, …) and
//! layouts, so a checkpoint loads into the same module written in PyTorch, and runs on a [`Bound`] store.

use super::init;
use super::params::{Bound, ParamId, ParamKind, ParamStore};
use crate::autograd::Var;
use crate::error::{Error, Result};
use crate::ops::conv2d::Conv2dConfig;
use crate::ops::norm::{BatchNormConfig, GroupNormConfig};
use crate::tensor::Tensor;
use crate::testing::Rng;

/// How a weight is initialised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightInit {
    /// Kaiming-normal, `fan_out`, ReLU gain (mmcv's `kaiming_init`, torchvision's ResNet).
    KaimingFanOut,
    /// Normal(0, std²) (mmcv's `normal_init`; GFL's head uses std 0.01).
    Normal(f64),
    /// All zeros (e.g. a residual branch's last norm, or a GloRe output).
    Zeros,
}

fn init_weight(shape: &[usize], init: WeightInit, rng: &mut Rng) -> Result<Tensor> {
    match init {
        WeightInit::KaimingFanOut => init::kaiming_normal_fan_out(shape, rng),
        WeightInit::Normal(std) => init::normal(shape, std, rng),
        WeightInit::Zeros => init::constant(shape, 0.0),
    }
}

/// Geometry of a [`Conv2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Input channels `Cin` (`in_channels` of `nn.Conv2d`), ≥ 1.
    pub in_channels: usize,
    /// Output channels `Cout` (`out_channels` of `nn.Conv2d`), ≥ 1.
    pub out_channels: usize,
    /// Square kernel side.
    pub kernel: usize,
    /// Step between output positions along both axes, ≥ 1 ([`ConvSpec::same`]: 1).
    pub stride: usize,
    /// Zeros added on every side of the input ([`ConvSpec::same`]: `kernel / 2`).
    pub padding: usize,
    /// Spacing between kernel taps along both axes, ≥ 1 ([`ConvSpec::same`]: 1).
    pub dilation: usize,
}

impl ConvSpec {
    /// A `k×k` convolution, stride 1, "same" padding `k/2`.
    pub fn same(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        ConvSpec {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: kernel / 2,
            dilation: 1,
        }
    }

    /// The same convolution with stride `s`.
    pub fn stride(self, s: usize) -> Self {
        ConvSpec { stride: s, ..self }
    }
}

/// `nn.Conv2d` (groups = 1): weight `[out, in, k, k]`, optional bias `[out]`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// The geometry the layer was built with.
    pub spec: ConvSpec,
    /// `<prefix>.weight`, `[out_channels, in_channels, kernel, kernel]` (OIHW).
    pub weight: ParamId,
    /// `<prefix>.bias`, `[out_channels]`; `None` for a bias-free convolution (e.g. before a norm).
    pub bias: Option<ParamId>,
    /// The op configuration derived from `spec` (square stride, padding, dilation; default workspace).
    pub cfg: Conv2dConfig,
}

impl Conv2d {
    /// Registers `<prefix>.weight` (and `<prefix>.bias`, initialised to `bias`, when given).
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        spec: ConvSpec,
        bias: Option<f64>,
        init: WeightInit,
        rng: &mut Rng,
    ) -> Result<Conv2d> {
        if spec.in_channels == 0 || spec.out_channels == 0 || spec.kernel == 0 {
            return Err(Error::invalid(
                prefix,
                format!("a convolution needs channels and a kernel ≥ 1, got {spec:?}"),
            ));
        }
        let shape = [
            spec.out_channels,
            spec.in_channels,
            spec.kernel,
            spec.kernel,
        ];
        let weight = store.add(
            format!("{prefix}.weight"),
            init_weight(&shape, init, rng)?,
            ParamKind::Trainable,
        )?;
        let bias = bias
            .map(|b| {
                store.add(
                    format!("{prefix}.bias"),
                    init::constant(&[spec.out_channels], b)?,
                    ParamKind::Trainable,
                )
            })
            .transpose()?;
        Ok(Conv2d {
            spec,
            weight,
            bias,
            cfg: Conv2dConfig::square(spec.stride, spec.padding, spec.dilation),
        })
    }

    /// `x` `[B, in_channels, H, W]` to `[B, out_channels, OH, OW]`, with
    /// `OH = ⌊(H + 2·padding − dilation·(kernel − 1) − 1) / stride⌋ + 1` (likewise `OW`).
    pub fn forward(&self, b: &Bound, x: Var) -> Result<Var> {
        b.tape().conv2d(
            x,
            b.var(self.weight),
            self.bias.map(|id| b.var(id)),
            &self.cfg,
        )
    }
}

/// `nn.GroupNorm(num_groups, channels)` with affine `weight` (1) and `bias` (0).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    /// `<prefix>.weight` (γ), `[channels]`, initialised to 1.
    pub weight: ParamId,
    /// `<prefix>.bias` (β), `[channels]`, initialised to 0.
    pub bias: ParamId,
    /// The number of groups and ε (1e-5, PyTorch's default).
    pub cfg: GroupNormConfig,
}

impl GroupNorm {
    /// Registers `<prefix>.weight` and `<prefix>.bias`, both `[channels]`; `num_groups` must be ≥ 1 and
    /// divide `channels`.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        channels: usize,
        num_groups: usize,
    ) -> Result<GroupNorm> {
        if num_groups == 0 || channels % num_groups != 0 {
            return Err(Error::invalid(
                prefix,
                format!("{num_groups} groups do not divide {channels} channels"),
            ));
        }
        Ok(GroupNorm {
            weight: store.add(
                format!("{prefix}.weight"),
                init::constant(&[channels], 1.0)?,
                ParamKind::Trainable,
            )?,
            bias: store.add(
                format!("{prefix}.bias"),
                init::constant(&[channels], 0.0)?,
                ParamKind::Trainable,
            )?,
            cfg: GroupNormConfig {
                num_groups,
                ..Default::default()
            },
        })
    }

    /// Normalises `x` `[B, channels, H, W]` over each image's groups of `channels / num_groups` channels,
    /// then applies the per-channel affine; the output has the input's shape.
    pub fn forward(&self, b: &Bound, x: Var) -> Result<Var> {
        b.tape().group_norm(
            x,
            Some(b.var(self.weight)),
            Some(b.var(self.bias)),
            &self.cfg,
        )
    }
}

/// Running-statistics updates produced by training-mode BatchNorm layers during a forward; applied to the
/// store after the step ([`ParamStore::apply`]).
#[derive(Debug, Default)]
pub struct BufferUpdates {
    /// New values for buffers, in the order the layers ran; each has the shape of the entry it replaces.
    pub updates: Vec<(ParamId, Tensor)>,
}

impl ParamStore {
    /// Stores the collected buffer updates (the tape of the step must be dropped first).
    pub fn apply(&mut self, updates: BufferUpdates) -> Result<()> {
        for (id, value) in updates.updates {
            self.set(id, value)?;
        }
        Ok(())
    }
}

/// `nn.BatchNorm2d(channels, eps, momentum)`: affine `weight`/`bias`, buffers `running_mean`, `running_var`
/// and `num_batches_tracked` (PyTorch's state-dict names).
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    /// `<prefix>.weight` (γ), trainable, `[channels]`, initialised to 1.
    pub weight: ParamId,
    /// `<prefix>.bias` (β), trainable, `[channels]`, initialised to 0.
    pub bias: ParamId,
    /// `<prefix>.running_mean`, a buffer, `[channels]`, initialised to 0.
    pub running_mean: ParamId,
    /// `<prefix>.running_var` (unbiased), a buffer, `[channels]`, initialised to 1.
    pub running_var: ParamId,
    /// `<prefix>.num_batches_tracked`, an i64 scalar buffer (shape `[]`) counting training-mode forwards.
    pub num_batches_tracked: ParamId,
    /// ε and the running-statistics momentum, as given to [`BatchNorm2d::new`].
    pub cfg: BatchNormConfig,
}

impl BatchNorm2d {
    /// Registers the five entries under `<prefix>.`, with PyTorch's initial values.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        channels: usize,
        cfg: BatchNormConfig,
    ) -> Result<BatchNorm2d> {
        let add = |store: &mut ParamStore, name: &str, value: f64, kind| {
            store.add(
                format!("{prefix}.{name}"),
                init::constant(&[channels], value)?,
                kind,
            )
        };
        Ok(BatchNorm2d {
            weight: add(store, "weight", 1.0, ParamKind::Trainable)?,
            bias: add(store, "bias", 0.0, ParamKind::Trainable)?,
            running_mean: add(store, "running_mean", 0.0, ParamKind::Buffer)?,
            running_var: add(store, "running_var", 1.0, ParamKind::Buffer)?,
            num_batches_tracked: store.add(
                format!("{prefix}.num_batches_tracked"),
                Tensor::from_vec(vec![0i64], &[])?,
                ParamKind::Buffer,
            )?,
            cfg,
        })
    }

    /// Training mode (batch statistics, running statistics updated into `updates`) when the store was bound
    /// for training, evaluation mode (running statistics) when it was bound frozen.
    pub fn forward(
        &self,
        b: &Bound,
        store: &ParamStore,
        x: Var,
        updates: &mut BufferUpdates,
    ) -> Result<Var> {
        let tape = b.tape();
        let (w, bias) = (Some(b.var(self.weight)), Some(b.var(self.bias)));
        let mean = store.value(self.running_mean);
        let var = store.value(self.running_var);
        if !b.training() {
            return tape.batch_norm_eval(x, w, bias, (mean, var), self.cfg.eps);
        }
        let (y, updated) = tape.batch_norm_train(x, w, bias, Some((mean, var)), &self.cfg)?;
        if let Some(u) = updated {
            updates.updates.push((self.running_mean, u.mean));
            updates.updates.push((self.running_var, u.var));
            let tracked = store.value(self.num_batches_tracked).to_vec::<i64>()?[0];
            updates.updates.push((
                self.num_batches_tracked,
                Tensor::from_vec(vec![tracked + 1], &[])?
                    .to_device(&store.value(self.num_batches_tracked).device())?,
            ));
        }
        Ok(y)
    }
}

/// `nn.Linear(in, out)`: weight `[out, in]`, optional bias `[out]`; `y = x Wᵀ + b` on `[N, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `<prefix>.weight`, `[out_features, in_features]`.
    pub weight: ParamId,
    /// `<prefix>.bias`, `[out_features]`; `None` when built without a bias.
    pub bias: Option<ParamId>,
}

impl Linear {
    /// PyTorch's default initialisation: `U(−1/√in, 1/√in)` for both (uniform from the seeded generator).
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Linear> {
        let bound = 1.0 / (in_features.max(1) as f64).sqrt();
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect() };
        let weight = store.add(
            format!("{prefix}.weight"),
            Tensor::from_vec(
                uniform(in_features * out_features),
                &[out_features, in_features],
            )?,
            ParamKind::Trainable,
        )?;
        let bias = if bias {
            Some(store.add(
                format!("{prefix}.bias"),
                Tensor::from_vec(uniform(out_features), &[out_features])?,
                ParamKind::Trainable,
            )?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// `x` `[N, in_features]` to `x Wᵀ + b`, `[N, out_features]`.
    pub fn forward(&self, b: &Bound, x: Var) -> Result<Var> {
        let tape = b.tape();
        let y = tape.matmul(x, b.var(self.weight), false, true)?;
        match self.bias {
            Some(bias) => tape.add(y, b.var(bias)),
            None => Ok(y),
        }
    }
}
