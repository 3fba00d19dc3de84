//! Parity entries for the element-wise family (src/ops/elementwise).
//!
//! | op | tensors | results |
//! | --- | --- | --- |
//! | `add`, `sub`, `mul`, `div` | `a`, `b` (broadcast-compatible), optional `grad_out` (broadcast shape) | `output`, `grad_a`, `grad_b` |
//! | `sum_to_shape` | `x`, optional `grad_out` (the target shape) | `output`, `grad_x` |
//! | `broadcast_to` | `x`, optional `grad_out` (the target shape) | `output`, `grad_x` |
//! | `scale` | `x`, optional `grad_out` | `output`, `grad_x` |
//! | `add_scaled` | `acc`, `x` (same shape) | `output` (`acc + alpha·x`) |
//! | `fill` | `x` (any contents; sets shape, dtype, device) | `output` (every element `value`) |
//! | `neg`, `relu`, `sigmoid`, `exp`, `log`, `sqrt`, `square`, `abs` | `x`, optional `grad_out` | `output`, `grad_x` |
//!
//! Metadata keys: `shape` (`sum_to_shape`, `broadcast_to`; comma-separated extents, empty for `[]`),
//! `s` (float, `scale`), `alpha` (float, `add_scaled`), `value` (float, `fill`; `nan`, `inf`, `-inf`
//! accepted).

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::elementwise::{self, BinaryOp, UnaryOp};
use crate::tensor::Tensor;

pub(super) const OPS: &[&str] = &[
    "add",
    "sub",
    "mul",
    "div",
    "sum_to_shape",
    "broadcast_to",
    "scale",
    "add_scaled",
    "fill",
    "neg",
    "relu",
    "sigmoid",
    "exp",
    "log",
    "sqrt",
    "square",
    "abs",
];

/// A comma-separated shape; an empty (or all-blank) value is the scalar shape `[]`.
pub(super) fn parse_shape(inputs: &ParityInputs<'_>, key: &str) -> Result<Vec<usize>> {
    if inputs.meta(key)?.trim().is_empty() {
        Ok(Vec::new())
    } else {
        inputs.parse_list(key, "non-negative integers")
    }
}

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    let grad_out = if inputs.has("grad_out") {
        Some(inputs.data("grad_out")?)
    } else {
        None
    };
    let mut results: Results = Vec::new();
    let mut push = |name: &str, t: Tensor| results.push((name.to_string(), t));
    if let Some(bin) = BinaryOp::from_name(op) {
        let (a, b) = (inputs.data("a")?, inputs.data("b")?);
        push("output", elementwise::binary(bin, &a, &b)?);
        if let Some(g) = &grad_out {
            let grads = elementwise::binary_backward(bin, &a, &b, g)?;
            push("grad_a", grads.grad_a);
            push("grad_b", grads.grad_b);
        }
        return Ok(results);
    }
    if let Some(un) = UnaryOp::from_name(op) {
        let x = inputs.data("x")?;
        let y = elementwise::unary(un, &x)?;
        if let Some(g) = &grad_out {
            push(
                "grad_x",
                elementwise::unary_backward(un, Some(&x), Some(&y), g)?,
            );
        }
        push("output", y);
        return Ok(results);
    }
    match op {
        "sum_to_shape" => {
            let x = inputs.data("x")?;
            let shape = parse_shape(inputs, "shape")?;
            push("output", elementwise::sum_to_shape(&x, &shape)?);
            if let Some(g) = &grad_out {
                push("grad_x", elementwise::sum_to_shape_backward(&x, g)?);
            }
        }
        "broadcast_to" => {
            let x = inputs.data("x")?;
            let shape = parse_shape(inputs, "shape")?;
            push("output", elementwise::broadcast_to(&x, &shape)?);
            if let Some(g) = &grad_out {
                push("grad_x", elementwise::sum_to_shape(g, x.shape())?);
            }
        }
        "scale" => {
            let x = inputs.data("x")?;
            let s = inputs.parse("s", "a float")?;
            push("output", elementwise::scale(&x, s)?);
            if let Some(g) = &grad_out {
                push("grad_x", elementwise::scale_backward(g, s)?);
            }
        }
        "add_scaled" => {
            let mut acc = inputs.data("acc")?;
            let x = inputs.data("x")?;
            elementwise::add_scaled(&mut acc, &x, inputs.parse("alpha", "a float")?)?;
            push("output", acc);
        }
        "fill" => {
            let mut x = inputs.data("x")?;
            elementwise::fill(&mut x, inputs.parse("value", "a float")?)?;
            push("output", x);
        }
        _ => {
            return Err(Error::invalid(
                "op",
                format!("`{op}` is not an element-wise op"),
            ))
        }
    }
    Ok(results)
}
