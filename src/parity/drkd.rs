//! Parity entry for DRKD (src/distill/drkd.rs): the method's loss and gradients on given FPN maps and GT
//! boxes, with given module weights and a given step seed (which fixes the random relation filters, see
//! [`crate::distill::drkd::relation_filter_seed`]).
//!
//! | `op` | tensors | results |
//! | --- | --- | --- |
//! | `drkd` | `student.fpn.<l>` `[B, C_s, H_l, W_l]`, `teacher.fpn.<l>` `[B, C_t, H_l, W_l]` (`l = 0, 1, …`, finest first), optional `boxes` (`[K, 5]` = image, x1, y1, x2, y2), `param.<name>` for every entry the method registers (trainable parameters and BatchNorm buffers, official names under `distill.drkd.`) | `loss`, `term.<name>` (`[]`, f64), `grad.student.fpn.<l>`, `grad.param.<name>`, `buffer.<name>` (updated BatchNorm buffers) |
//!
//! Metadata keys: `fpn_strides` (comma-separated, required), `step_seed` (integer, default 0); optional,
//! with the defaults of [`DrkdConfig`]: `pixel_weight`, `relation_weight`, `foreground_weight`,
//! `bn_eps`, `bn_momentum` (floats), `glore_mid_divisors` (comma-separated integers), `relation_levels`
//! (integer), `glore_normalize` (bool), `distance` (`frobenius`, `rms`, `mean_square`),
//! `relation_filter` (`random`, `disabled`), `instance_source` (`own`, `first`).

use super::dsig::{boxes_by_image, fpn_pair, load_params, method_results};
use super::{ParityInputs, Results};
use crate::distill::drkd::{
    DrkdConfig, DrkdDistiller, InstanceSource, RelationDistance, RelationFilter,
};
use crate::error::{Error, Result};
use crate::nn::{BufferUpdates, ParamStore};

pub(super) const OPS: &[&str] = &["drkd"];

fn config(inputs: &ParityInputs<'_>) -> Result<DrkdConfig> {
    let d = DrkdConfig::default();
    let float = |key: &str, default: f64| inputs.parse_or(key, "a float", default);
    let distance = match inputs
        .parse_or("distance", "a name", "frobenius".to_string())?
        .as_str()
    {
        "frobenius" => RelationDistance::Frobenius,
        "rms" => RelationDistance::RootMeanSquare,
        "mean_square" => RelationDistance::MeanSquare,
        other => {
            return Err(Error::invalid(
                "distance",
                format!("expected `frobenius`, `rms` or `mean_square`, got `{other}`"),
            ))
        }
    };
    let relation_filter = match inputs
        .parse_or("relation_filter", "a name", "random".to_string())?
        .as_str()
    {
        "random" => RelationFilter::FreshRandom,
        "disabled" => RelationFilter::Disabled,
        other => {
            return Err(Error::invalid(
                "relation_filter",
                format!("expected `random` or `disabled`, got `{other}`"),
            ))
        }
    };
    let instance_source = match inputs
        .parse_or("instance_source", "a name", "own".to_string())?
        .as_str()
    {
        "own" => InstanceSource::OwnImage,
        "first" => InstanceSource::FirstImage,
        other => {
            return Err(Error::invalid(
                "instance_source",
                format!("expected `own` or `first`, got `{other}`"),
            ))
        }
    };
    Ok(DrkdConfig {
        pixel_weight: float("pixel_weight", d.pixel_weight)?,
        relation_weight: float("relation_weight", d.relation_weight)?,
        foreground_weight: float("foreground_weight", d.foreground_weight)?,
        distance,
        glore_mid_divisors: if inputs.has_meta("glore_mid_divisors") {
            inputs.parse_list("glore_mid_divisors", "integers")?
        } else {
            d.glore_mid_divisors.clone()
        },
        glore_normalize: inputs.parse_bool("glore_normalize", Some(d.glore_normalize))?,
        batch_norm: crate::ops::norm::BatchNormConfig {
            eps: float("bn_eps", d.batch_norm.eps)?,
            momentum: float("bn_momentum", d.batch_norm.momentum)?,
        },
        relation_levels: inputs.parse_or("relation_levels", "an integer", d.relation_levels)?,
        relation_filter,
        instance_source,
        ..d
    })
}

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    if op != "drkd" {
        return Err(Error::invalid("op", format!("`{op}` is not a DRKD op")));
    }
    let cfg = config(inputs)?;
    let strides: Vec<f64> = inputs.parse_list("fpn_strides", "floats")?;
    let step_seed: u64 = inputs.parse_or("step_seed", "an unsigned integer", 0)?;
    let fpn = fpn_pair(inputs)?;
    let batch = fpn.batch;
    let mut store = ParamStore::new();
    let method = DrkdDistiller::new(
        &mut store,
        &fpn.student_shape,
        &fpn.teacher_shape,
        fpn.student.len(),
        cfg,
        0,
    )?;
    load_params(inputs, &mut store, &fpn.student[0])?;
    let boxes = if inputs.has("boxes") {
        boxes_by_image(&inputs.host("boxes")?, "boxes", batch)?
    } else {
        vec![Vec::new(); batch]
    };
    let mut updates = BufferUpdates::default();
    let out = method.compute(
        &store,
        &fpn.student.iter().collect::<Vec<_>>(),
        &fpn.teacher.iter().collect::<Vec<_>>(),
        &strides,
        &boxes,
        step_seed,
        &mut updates,
    )?;
    let mut results = method_results(out, &store)?;
    for (id, value) in updates.updates {
        results.push((format!("buffer.{}", store.name(id)), value));
    }
    Ok(results)
}
