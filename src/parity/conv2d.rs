//! Parity entry for the conv2d family (src/ops/conv2d). Float inputs follow the file's `dtype` key; with
//! `grad_out` (shaped like the output) the gradients are returned too.
//!
//! | `op` | tensors | results |
//! | --- | --- | --- |
//! | `conv2d` | `x` `[B, Cin, H, W]`, `weight` `[Cout, Cin, KH, KW]`, optional `bias` `[Cout]`, optional `grad_out` | `output`, `grad_x`, `grad_weight`, `grad_bias` (with a bias) |
//!
//! Metadata keys (all optional): `stride`, `padding`, `dilation` — `"h,w"` or one integer for both axes
//! (defaults 1, 0, 1, PyTorch's); `workspace_bytes` — the per-chunk scratch limit (an integer, default
//! 256 MiB; a tiny value forces one image per chunk).

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::conv2d::{self, Conv2dConfig, Conv2dGradsWanted, DEFAULT_WORKSPACE_BYTES};

pub(super) const OPS: &[&str] = &["conv2d"];

/// `"h,w"` or `"n"` (both axes) under `key`, or `default` when absent.
pub(super) fn parse_pair(
    inputs: &ParityInputs<'_>,
    key: &str,
    default: (usize, usize),
) -> Result<(usize, usize)> {
    if !inputs.has_meta(key) {
        return Ok(default);
    }
    let values: Vec<usize> = inputs.parse_list(key, "non-negative integers")?;
    match values[..] {
        [n] => Ok((n, n)),
        [h, w] => Ok((h, w)),
        _ => Err(Error::invalid(
            key,
            format!("expected `h,w` or one integer, got `{}`", inputs.meta(key)?),
        )),
    }
}

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    if op != "conv2d" {
        return Err(Error::invalid("op", format!("`{op}` is not a conv2d op")));
    }
    let cfg = Conv2dConfig {
        stride: parse_pair(inputs, "stride", (1, 1))?,
        padding: parse_pair(inputs, "padding", (0, 0))?,
        dilation: parse_pair(inputs, "dilation", (1, 1))?,
        workspace_bytes: inputs.parse_or(
            "workspace_bytes",
            "an integer",
            DEFAULT_WORKSPACE_BYTES,
        )?,
    };
    let (x, weight) = (inputs.data("x")?, inputs.data("weight")?);
    let bias = if inputs.has("bias") {
        Some(inputs.data("bias")?)
    } else {
        None
    };
    let mut results: Results = vec![(
        "output".into(),
        conv2d::conv2d(&x, &weight, bias.as_ref(), &cfg)?,
    )];
    if inputs.has("grad_out") {
        let wanted = Conv2dGradsWanted {
            input: true,
            bias: bias.is_some(),
        };
        let grads = conv2d::conv2d_backward(&x, &weight, &inputs.data("grad_out")?, wanted, &cfg)?;
        if let Some(dx) = grads.input {
            results.push(("grad_x".into(), dx));
        }
        results.push(("grad_weight".into(), grads.weight));
        if let Some(db) = grads.bias {
            results.push(("grad_bias".into(), db));
        }
    }
    Ok(results)
}
