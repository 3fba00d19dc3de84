//! Parity entries for the optimizer updates (src/ops/optim): run `steps` updates from `param` with the
//! gradients `grad.0`, `grad.1`, … (one per step) and return the final state, as `torch.optim` would.
//!
//! | op | tensors | metadata (defaults = the configs' defaults) | results |
//! | --- | --- | --- | --- |
//! | `sgd` | `param`, `grad.0` … `grad.{steps−1}` | `steps`, `lr`, `momentum`, `dampening`, `weight_decay`, `nesterov` | `param`, `momentum_buffer` (with momentum) |
//! | `adamw` | `param`, `grad.0` … | `steps`, `lr`, `beta1`, `beta2`, `eps`, `weight_decay` | `param`, `exp_avg`, `exp_avg_sq` |
//! | `clip_grad_norm` | `grad.0` … `grad.{count−1}` | `count`, `max_norm` | `grad.i` (clipped), `total_norm` (`[]`, f64) |
//!
//! Every gradient follows the file's `dtype` key together with `param`; state is f32 (f64 for f64).

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::optim::{adamw_step, clip_grad_norm, sgd_step, zero_state, AdamWConfig, SgdConfig};
use crate::tensor::{Device, Tensor};

pub(super) const OPS: &[&str] = &["sgd", "adamw", "clip_grad_norm"];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    match op {
        "sgd" => sgd(inputs),
        "adamw" => adamw(inputs),
        "clip_grad_norm" => clip(inputs),
        _ => Err(Error::invalid("op", format!("`{op}` is not an optim op"))),
    }
}

fn numbered(inputs: &ParityInputs<'_>, count_key: &str) -> Result<Vec<Tensor>> {
    let count: usize = inputs.parse(count_key, "a non-negative integer")?;
    (0..count)
        .map(|i| inputs.data(&format!("grad.{i}")))
        .collect()
}

fn sgd(inputs: &ParityInputs<'_>) -> Result<Results> {
    let d = SgdConfig::default();
    let cfg = SgdConfig {
        lr: inputs.parse_or("lr", "a float", d.lr)?,
        momentum: inputs.parse_or("momentum", "a float", d.momentum)?,
        dampening: inputs.parse_or("dampening", "a float", d.dampening)?,
        weight_decay: inputs.parse_or("weight_decay", "a float", d.weight_decay)?,
        nesterov: inputs.parse_bool("nesterov", Some(d.nesterov))?,
    };
    let mut param = inputs.data("param")?;
    let mut buffer = zero_state(&param)?;
    for (step, grad) in numbered(inputs, "steps")?.iter().enumerate() {
        sgd_step(&mut param, grad, Some(&mut buffer), step == 0, &cfg)?;
    }
    let mut results = vec![("param".to_string(), param)];
    if cfg.momentum > 0.0 {
        results.push(("momentum_buffer".into(), buffer));
    }
    Ok(results)
}

fn adamw(inputs: &ParityInputs<'_>) -> Result<Results> {
    let d = AdamWConfig::default();
    let cfg = AdamWConfig {
        lr: inputs.parse_or("lr", "a float", d.lr)?,
        beta1: inputs.parse_or("beta1", "a float", d.beta1)?,
        beta2: inputs.parse_or("beta2", "a float", d.beta2)?,
        eps: inputs.parse_or("eps", "a float", d.eps)?,
        weight_decay: inputs.parse_or("weight_decay", "a float", d.weight_decay)?,
    };
    let mut param = inputs.data("param")?;
    let (mut m, mut v) = (zero_state(&param)?, zero_state(&param)?);
    for (step, grad) in numbered(inputs, "steps")?.iter().enumerate() {
        adamw_step(&mut param, grad, &mut m, &mut v, step as u64 + 1, &cfg)?;
    }
    Ok(vec![
        ("param".into(), param),
        ("exp_avg".into(), m),
        ("exp_avg_sq".into(), v),
    ])
}

fn clip(inputs: &ParityInputs<'_>) -> Result<Results> {
    let max_norm = inputs.parse("max_norm", "a float")?;
    let mut grads = numbered(inputs, "count")?;
    let total = {
        let mut refs: Vec<&mut Tensor> = grads.iter_mut().collect();
        clip_grad_norm(&mut refs, max_norm)?
    };
    let mut results: Results = grads
        .into_iter()
        .enumerate()
        .map(|(i, g)| (format!("grad.{i}"), g))
        .collect();
    results.push((
        "total_norm".into(),
        Tensor::from_vec(vec![total], &[])?.to_device(&Device::Cpu)?,
    ));
    Ok(results)
}
