//! Parity entries for the reduction family (src/ops/reduce).
//!
//! | op | tensors | results |
//! | --- | --- | --- |
//! | `sum_all`, `mean_all` | `x`, optional `grad_out` (`[]`) | `output` (`[]`, f32 for half storage), `grad_x` |
//! | `sum_axes`, `mean_axes` | `x`, optional `grad_out` (the output's shape) | `output`, `grad_x` |
//! | `max_last_axis` | `x`, optional `grad_values` (`x`'s shape without the last axis) | `values`, `indices` (i64), `grad_x` |
//!
//! Metadata keys: `axes` (`sum_axes`, `mean_axes`; comma-separated integers, negative from the end),
//! `keepdim` (`true` / `false`, default `false`).

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::reduce;
use crate::tensor::Tensor;

pub(super) const OPS: &[&str] = &[
    "sum_all",
    "mean_all",
    "sum_axes",
    "mean_axes",
    "max_last_axis",
];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    let optional = |name: &str| -> Result<Option<Tensor>> {
        if inputs.has(name) {
            Ok(Some(inputs.data(name)?))
        } else {
            Ok(None)
        }
    };
    let x = inputs.data("x")?;
    let mut results: Results = Vec::new();
    let mut push = |name: &str, t: Tensor| results.push((name.to_string(), t));
    match op {
        "sum_all" | "mean_all" => {
            let mean = op == "mean_all";
            push(
                "output",
                if mean {
                    reduce::mean_all(&x)?
                } else {
                    reduce::sum_all(&x)?
                },
            );
            if let Some(g) = optional("grad_out")? {
                let dx = if mean {
                    reduce::mean_all_backward(&x, &g)?
                } else {
                    reduce::sum_all_backward(&x, &g)?
                };
                push("grad_x", dx);
            }
        }
        "sum_axes" | "mean_axes" => {
            let mean = op == "mean_axes";
            let axes: Vec<isize> = inputs.parse_list("axes", "integers")?;
            let keepdim = inputs.parse_bool("keepdim", Some(false))?;
            push(
                "output",
                if mean {
                    reduce::mean_axes(&x, &axes, keepdim)?
                } else {
                    reduce::sum_axes(&x, &axes, keepdim)?
                },
            );
            if let Some(g) = optional("grad_out")? {
                let dx = if mean {
                    reduce::mean_axes_backward(&x, &axes, keepdim, &g)?
                } else {
                    reduce::sum_axes_backward(&x, &axes, keepdim, &g)?
                };
                push("grad_x", dx);
            }
        }
        "max_last_axis" => {
            let m = reduce::max_last_axis(&x)?;
            if let Some(g) = optional("grad_values")? {
                push(
                    "grad_x",
                    reduce::max_last_axis_backward(&x, &m.indices, &g)?,
                );
            }
            push("values", m.values);
            push("indices", m.indices);
        }
        _ => return Err(Error::invalid("op", format!("`{op}` is not a reduction"))),
    }
    Ok(results)
}
