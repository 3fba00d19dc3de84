//! Parity entries for the softmax family (src/ops/softmax).
//!
//! | op | tensors | results |
//! | --- | --- | --- |
//! | `softmax_last_axis`, `log_softmax_last_axis` | `x`, optional `grad_out` (`x`'s shape) | `output`, `grad_x` |
//!
//! Metadata key: `temperature` (float, default 1; finite and non-zero).

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::softmax;

pub(super) const OPS: &[&str] = &["softmax_last_axis", "log_softmax_last_axis"];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    let temperature = inputs.parse_or("temperature", "a float", 1.0)?;
    let x = inputs.data("x")?;
    let log = match op {
        "softmax_last_axis" => false,
        "log_softmax_last_axis" => true,
        _ => return Err(Error::invalid("op", format!("`{op}` is not a softmax op"))),
    };
    let y = if log {
        softmax::log_softmax_last_axis(&x, temperature)?
    } else {
        softmax::softmax_last_axis(&x, temperature)?
    };
    let mut results: Results = Vec::new();
    if inputs.has("grad_out") {
        let g = inputs.data("grad_out")?;
        let dx = if log {
            softmax::log_softmax_last_axis_backward(&y, &g, temperature)?
        } else {
            softmax::softmax_last_axis_backward(&y, &g, temperature)?
        };
        results.push(("grad_x".into(), dx));
    }
    results.push(("output".into(), y));
    Ok(results)
}
