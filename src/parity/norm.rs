//! Parity entries for the norm family (src/ops/norm). Float inputs (running statistics included) follow
//! the file's `dtype` key; with `grad_out` (shaped like `x`) the gradients are returned too.
//!
//! | `op` | tensors | results |
//! | --- | --- | --- |
//! | `batch_norm_train` | `x` `[B, C, H, W]`, optional `weight`, `bias`, `running_mean`, `running_var` (`[C]`; both or neither), optional `grad_out` | `output`, `mean`, `inv_std` (`[C]`, compute dtype), `running_mean`, `running_var` (updated, with running statistics), `grad_x`, `grad_weight` / `grad_bias` (with `weight` / `bias`) |
//! | `batch_norm_eval` | `x`, `running_mean`, `running_var`, optional `weight`, `bias` | `output` |
//! | `group_norm` | `x`, optional `weight`, `bias`, optional `grad_out` | `output`, `mean`, `inv_std` (`[B, G]`, compute dtype), `grad_x`, `grad_weight` / `grad_bias` (with `weight` / `bias`) |
//!
//! Metadata keys: `eps` (float, default 1e-5; all three), `momentum` (float, default 0.1;
//! `batch_norm_train`), `num_groups` (integer, required; `group_norm`).

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::norm::{
    self, BatchNormConfig, GroupNormConfig, NormGrads, RunningStats, DEFAULT_EPS,
};
use crate::tensor::Tensor;

pub(super) const OPS: &[&str] = &["batch_norm_train", "batch_norm_eval", "group_norm"];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    let optional = |name: &str| -> Result<Option<Tensor>> {
        if inputs.has(name) {
            Ok(Some(inputs.data(name)?))
        } else {
            Ok(None)
        }
    };
    let eps = inputs.parse_or("eps", "a positive float", DEFAULT_EPS)?;
    let x = inputs.data("x")?;
    let (weight, bias) = (optional("weight")?, optional("bias")?);
    let grad_out = optional("grad_out")?;
    let mut results: Results = Vec::new();
    let push_grads = |results: &mut Results, grads: NormGrads| {
        results.push(("grad_x".into(), grads.input));
        if weight.is_some() {
            results.push(("grad_weight".into(), grads.weight));
        }
        if bias.is_some() {
            results.push(("grad_bias".into(), grads.bias));
        }
    };
    match op {
        "batch_norm_train" => {
            let cfg = BatchNormConfig {
                eps,
                momentum: inputs.parse_or("momentum", "a float in [0, 1]", 0.1)?,
            };
            let (rm, rv) = (optional("running_mean")?, optional("running_var")?);
            let running = match (&rm, &rv) {
                (Some(mean), Some(var)) => Some(RunningStats { mean, var }),
                (None, None) => None,
                _ => {
                    return Err(Error::invalid(
                        "running_mean",
                        "give both running_mean and running_var, or neither",
                    ))
                }
            };
            let out = norm::batch_norm_train(&x, weight.as_ref(), bias.as_ref(), running, &cfg)?;
            if let Some(g) = &grad_out {
                let grads = norm::batch_norm_backward(&x, weight.as_ref(), &out.stats, g)?;
                push_grads(&mut results, grads);
            }
            results.push(("output".into(), out.output));
            results.push(("mean".into(), out.stats.mean));
            results.push(("inv_std".into(), out.stats.inv_std));
            if let (Some(m), Some(v)) = (out.running_mean, out.running_var) {
                results.push(("running_mean".into(), m));
                results.push(("running_var".into(), v));
            }
        }
        "batch_norm_eval" => {
            let (mean, var) = (inputs.data("running_mean")?, inputs.data("running_var")?);
            let running = RunningStats {
                mean: &mean,
                var: &var,
            };
            let y = norm::batch_norm_eval(&x, weight.as_ref(), bias.as_ref(), running, eps)?;
            results.push(("output".into(), y));
        }
        "group_norm" => {
            let cfg = GroupNormConfig {
                num_groups: inputs.parse("num_groups", "a positive integer")?,
                eps,
            };
            let out = norm::group_norm(&x, weight.as_ref(), bias.as_ref(), &cfg)?;
            if let Some(g) = &grad_out {
                let grads = norm::group_norm_backward(&x, weight.as_ref(), &out.stats, g, &cfg)?;
                push_grads(&mut results, grads);
            }
            results.push(("output".into(), out.output));
            results.push(("mean".into(), out.stats.mean));
            results.push(("inv_std".into(), out.stats.inv_std));
        }
        _ => return Err(Error::invalid("op", format!("`{op}` is not a norm op"))),
    }
    Ok(results)
}
