use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::norm::{self as op, BatchNormConfig, GroupNormConfig, RunningStats};
use crate::tensor::Tensor;
use std::rc::Rc;

/// The updated running statistics of a training-mode [`Tape::batch_norm_train`], for the caller to store.
#[derive(Debug)]
pub struct UpdatedRunningStats {
    /// The new `running_mean`, `[C]`, in the input's dtype and on its device.
    pub mean: Tensor,
    /// The new `running_var` (momentum-blended with the batch's unbiased variance), `[C]`, like `mean`.
    pub var: Tensor,
}

impl Tape {
    /// GroupNorm of `[B, C, H, W]` with optional affine `weight`/`bias` `[C]`.
    pub fn group_norm(
        &self,
        x: Var,
        weight: Option<Var>,
        bias: Option<Var>,
        cfg: &GroupNormConfig,
    ) -> Result<Var> {
        let xv = self.value(x)?;
        let wv = weight.map(|w| self.value(w)).transpose()?;
        let bv = bias.map(|b| self.value(b)).transpose()?;
        let op::GroupNormOutput { output, stats } =
            op::group_norm(&xv, wv.as_deref(), bv.as_deref(), cfg)?;
        let stats = Rc::new(stats);
        let cfg = *cfg;
        let mut inputs = vec![x];
        inputs.extend(weight);
        inputs.extend(bias);
        let (has_w, has_b) = (weight.is_some(), bias.is_some());
        self.record("group_norm", &inputs, output, move |g| {
            let grads = op::group_norm_backward(&xv, wv.as_deref(), &stats, g, &cfg)?;
            let mut out = vec![Some(grads.input)];
            if has_w {
                out.push(Some(grads.weight));
            }
            if has_b {
                out.push(Some(grads.bias));
            }
            Ok(out)
        })
    }

    /// BatchNorm2d in training mode (batch statistics) with optional affine `weight`/`bias` `[C]`; with
    /// `running` statistics, also returns their momentum update (the caller stores it).
    pub fn batch_norm_train(
        &self,
        x: Var,
        weight: Option<Var>,
        bias: Option<Var>,
        running: Option<(&Tensor, &Tensor)>,
        cfg: &BatchNormConfig,
    ) -> Result<(Var, Option<UpdatedRunningStats>)> {
        let xv = self.value(x)?;
        let wv = weight.map(|w| self.value(w)).transpose()?;
        let bv = bias.map(|b| self.value(b)).transpose()?;
        let op::BatchNormOutput {
            output,
            stats,
            running_mean,
            running_var,
        } = op::batch_norm_train(
            &xv,
            wv.as_deref(),
            bv.as_deref(),
            running.map(|(mean, var)| RunningStats { mean, var }),
            cfg,
        )?;
        let updated = match (running_mean, running_var) {
            (Some(mean), Some(var)) => Some(UpdatedRunningStats { mean, var }),
            _ => None,
        };
        let stats = Rc::new(stats);
        let mut inputs = vec![x];
        inputs.extend(weight);
        inputs.extend(bias);
        let (has_w, has_b) = (weight.is_some(), bias.is_some());
        let y = self.record("batch_norm_train", &inputs, output, move |g| {
            let grads = op::batch_norm_backward(&xv, wv.as_deref(), &stats, g)?;
            let mut out = vec![Some(grads.input)];
            if has_w {
                out.push(Some(grads.weight));
            }
            if has_b {
                out.push(Some(grads.bias));
            }
            Ok(out)
        })?;
        Ok((y, updated))
    }

    /// BatchNorm2d in evaluation mode (running statistics; no gradient to them).
    pub fn batch_norm_eval(
        &self,
        x: Var,
        weight: Option<Var>,
        bias: Option<Var>,
        running: (&Tensor, &Tensor),
        eps: f64,
    ) -> Result<Var> {
        // Evaluation mode is affine in x: y = x·a + c with a = γ/√(var + ε), c = β − mean·a.
        let xv = self.value(x)?;
        let wv = weight.map(|w| self.value(w)).transpose()?;
        let bv = bias.map(|b| self.value(b)).transpose()?;
        let stats = RunningStats {
            mean: running.0,
            var: running.1,
        };
        let out = op::batch_norm_eval(&xv, wv.as_deref(), bv.as_deref(), stats, eps)?;
        let channels = xv.shape().get(1).copied().unwrap_or(0);
        let inv_std: Vec<f64> = running
            .1
            .to_vec::<f64>()?
            .iter()
            .map(|v| 1.0 / (v + eps).sqrt())
            .collect();
        let gamma = match &wv {
            Some(w) => w.to_vec::<f64>()?,
            None => vec![1.0; channels],
        };
        let scale: Vec<f64> = inv_std.iter().zip(&gamma).map(|(s, g)| s * g).collect();
        let like = xv.clone();
        let mut inputs = vec![x];
        inputs.extend(weight);
        inputs.extend(bias);
        let affine_needs_grad = [weight, bias]
            .iter()
            .flatten()
            .map(|&v| self.requires_grad(v))
            .collect::<Result<Vec<_>>>()?
            .contains(&true);
        if affine_needs_grad {
            return Err(crate::Error::invalid(
                "batch_norm_eval",
                "γ/β get no gradient in evaluation mode; bind the layer frozen (as constants)",
            ));
        }
        let extra = inputs.len() - 1;
        self.record("batch_norm_eval", &inputs, out, move |g| {
            let s = Tensor::from_vec(scale.clone(), &[1, channels, 1, 1])?
                .into_dtype(like.dtype())?
                .to_device(&like.device())?;
            let mut grads = vec![Some(crate::ops::elementwise::mul(g, &s)?)];
            grads.extend((0..extra).map(|_| None));
            Ok(grads)
        })
    }
}
