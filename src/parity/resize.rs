//! Parity entries for the resize family (src/ops/resize). Float inputs follow the file's `dtype` key; with
//! `grad_out` (shaped like the output) the input gradient is returned too.
//!
//! | `op` | tensors | metadata | results |
//! | --- | --- | --- | --- |
//! | `resize_bilinear` | `x` `[B, C, H, W]`, optional `grad_out` `[B, C, OH, OW]` | `size`: `"OH,OW"` (required) | `output`, `grad_x` |
//! | `upsample_nearest2x` | `x`, optional `grad_out` `[B, C, 2H, 2W]` | — | `output`, `grad_x` |

use super::conv2d::parse_pair;
use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::resize;

pub(super) const OPS: &[&str] = &["resize_bilinear", "upsample_nearest2x"];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    let x = inputs.data("x")?;
    let grad_out = if inputs.has("grad_out") {
        Some(inputs.data("grad_out")?)
    } else {
        None
    };
    let input_size = x.shape().get(2..4).map(|s| (s[0], s[1]));
    let mut results: Results = Vec::new();
    match op {
        "resize_bilinear" => {
            inputs.meta("size")?;
            let size = parse_pair(inputs, "size", (0, 0))?;
            results.push(("output".into(), resize::resize_bilinear(&x, size)?));
            if let (Some(g), Some(hw)) = (&grad_out, input_size) {
                results.push(("grad_x".into(), resize::resize_bilinear_backward(g, hw)?));
            }
        }
        "upsample_nearest2x" => {
            results.push(("output".into(), resize::upsample_nearest2x(&x)?));
            if let Some(g) = &grad_out {
                results.push(("grad_x".into(), resize::upsample_nearest2x_backward(g)?));
            }
        }
        _ => return Err(Error::invalid("op", format!("`{op}` is not a resize op"))),
    }
    Ok(results)
}
