//! The optimizer the engine trains with: per-parameter state over a [`ParamStore`], a linear warm-up +
//! cosine learning-rate schedule, and optional gradient clipping, on top of the fused update kernels of
//! [`crate::ops::optim`].

use crate::error::{Error, Result};
use crate::nn::{ParamId, ParamStore};
use crate::ops::optim::{adamw_step, clip_grad_norm, sgd_step, zero_state, AdamWConfig, SgdConfig};
use crate::tensor::Tensor;
use std::collections::BTreeMap;

/// Which update rule; the config's `lr` is the base (peak) learning rate of the schedule.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// SGD with momentum and coupled weight decay (PyTorch's `torch.optim.SGD`).
    Sgd(SgdConfig),
    /// AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW`).
    AdamW(AdamWConfig),
}

impl OptimizerConfig {
    /// The configured `lr`: the schedule's peak learning rate.
    pub fn base_lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd(c) => c.lr,
            OptimizerConfig::AdamW(c) => c.lr,
        }
    }
}

/// Linear warm-up from `warmup_ratio · lr` over `warmup_iters`, then cosine decay to `min_lr_ratio · lr` at
/// `total_iters` (mmdet's `warmup='linear'` + `CosineAnnealing`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Peak learning rate, reached at the end of the warm-up.
    pub base_lr: f64,
    /// Length of the linear warm-up, in iterations (0 = none).
    pub warmup_iters: usize,
    /// Fraction of `base_lr` the warm-up starts from (mmdet's `warmup_ratio`; the engine uses 0.001).
    pub warmup_ratio: f64,
    /// Iteration at which the cosine reaches its floor (the run's length, ≥ 1); the rate stays there after.
    pub total_iters: usize,
    /// Floor of the cosine as a fraction of `base_lr` (mmdet's `min_lr_ratio`; the engine uses 0.01).
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// The learning rate of iteration `iter` (0-based).
    pub fn lr(&self, iter: usize) -> f64 {
        if iter < self.warmup_iters {
            let k = iter as f64 / self.warmup_iters as f64;
            return self.base_lr * (self.warmup_ratio + (1.0 - self.warmup_ratio) * k);
        }
        let span = self.total_iters.saturating_sub(self.warmup_iters).max(1) as f64;
        let progress = ((iter - self.warmup_iters) as f64 / span).min(1.0);
        let min = self.base_lr * self.min_lr_ratio;
        min + (self.base_lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

enum State {
    Momentum(Option<Tensor>),
    Adam { m: Tensor, v: Tensor },
}

/// Optimizer state for every trainable parameter of one store.
pub struct Optimizer {
    config: OptimizerConfig,
    schedule: Schedule,
    grad_clip: Option<f64>,
    state: BTreeMap<ParamId, State>,
    iter: usize,
}

/// What one [`Optimizer::step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Learning rate the schedule gave this step.
    pub lr: f64,
    /// The total gradient norm before clipping.
    pub grad_norm: f64,
    /// `false` when the step was skipped because the gradient norm was not finite.
    pub applied: bool,
}

impl Optimizer {
    /// An optimizer with empty state; `grad_clip` is the maximum total gradient norm. Fails when
    /// `schedule.total_iters` is 0 or `grad_clip` is not finite and > 0.
    pub fn new(
        config: OptimizerConfig,
        schedule: Schedule,
        grad_clip: Option<f64>,
    ) -> Result<Self> {
        if schedule.total_iters == 0 {
            return Err(Error::invalid(
                "total_iters",
                "expected at least one iteration",
            ));
        }
        if let Some(c) = grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::invalid(
                    "grad_clip",
                    format!("expected > 0, got {c}"),
                ));
            }
        }
        Ok(Optimizer {
            config,
            schedule,
            grad_clip,
            state: BTreeMap::new(),
            iter: 0,
        })
    }

    /// Iterations taken so far.
    pub fn iteration(&self) -> usize {
        self.iter
    }

    /// Applies one update to the parameters that got a gradient. A non-finite total gradient norm skips
    /// the update (and is reported), so one bad batch cannot poison the weights.
    pub fn step(
        &mut self,
        store: &mut ParamStore,
        grads: Vec<(ParamId, Option<Tensor>)>,
    ) -> Result<StepStats> {
        let lr = self.schedule.lr(self.iter);
        self.iter += 1;
        let mut grads: Vec<(ParamId, Tensor)> = grads
            .into_iter()
            .filter_map(|(id, g)| g.map(|g| (id, g)))
            .collect();
        let grad_norm = {
            let mut refs: Vec<&mut Tensor> = grads.iter_mut().map(|(_, g)| g).collect();
            match self.grad_clip {
                Some(max) => clip_grad_norm(&mut refs, max)?,
                None => {
                    let mut total = 0.0;
                    for g in refs {
                        total += crate::ops::optim::squared_norm(g)?;
                    }
                    total.sqrt()
                }
            }
        };
        if !grad_norm.is_finite() {
            return Ok(StepStats {
                lr,
                grad_norm,
                applied: false,
            });
        }
        for (id, grad) in grads {
            let param = store.value_mut(id)?;
            match &self.config {
                OptimizerConfig::Sgd(c) => {
                    let cfg = SgdConfig { lr, ..*c };
                    let state = self
                        .state
                        .entry(id)
                        .or_insert_with(|| State::Momentum(None));
                    let State::Momentum(buffer) = state else {
                        return Err(Error::invalid("optimizer", "state kind changed"));
                    };
                    if cfg.momentum > 0.0 {
                        let first = buffer.is_none();
                        if first {
                            *buffer = Some(zero_state(param)?);
                        }
                        sgd_step(param, &grad, buffer.as_mut(), first, &cfg)?;
                    } else {
                        sgd_step(param, &grad, None, true, &cfg)?;
                    }
                }
                OptimizerConfig::AdamW(c) => {
                    let cfg = AdamWConfig { lr, ..*c };
                    if let std::collections::btree_map::Entry::Vacant(slot) = self.state.entry(id) {
                        let (m, v) = (zero_state(param)?, zero_state(param)?);
                        slot.insert(State::Adam { m, v });
                    }
                    let Some(State::Adam { m, v }) = self.state.get_mut(&id) else {
                        return Err(Error::invalid("optimizer", "state kind changed"));
                    };
                    adamw_step(param, &grad, m, v, self.iter as u64, &cfg)?;
                }
            }
        }
        Ok(StepStats {
            lr,
            grad_norm,
            applied: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule {
            base_lr: 0.1,
            warmup_iters: 10,
            warmup_ratio: 0.001,
            total_iters: 110,
            min_lr_ratio: 0.0,
        };
        assert!((s.lr(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr(5) - 0.1 * (0.001 + 0.999 * 0.5)).abs() < 1e-12);
        assert!((s.lr(10) - 0.1).abs() < 1e-12);
        assert!((s.lr(60) - 0.05).abs() < 1e-12);
        assert!(s.lr(110).abs() < 1e-12 && s.lr(500).abs() < 1e-12);
    }
}
