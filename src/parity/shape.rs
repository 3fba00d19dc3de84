//! Parity entries for the shape family (src/ops/shape).
//!
//! | op | tensors | results |
//! | --- | --- | --- |
//! | `permute` | `x`, optional `grad_out` (the permuted shape) | `output`, `grad_x` |
//! | `transpose` | `x`, optional `grad_out` | `output`, `grad_x` |
//! | `narrow` | `x`, optional `grad_out` (the slice's shape) | `output`, `grad_x` |
//! | `concat` | `x.0`, `x.1`, … (consecutive), optional `grad_out` (the joined shape) | `output`, `grad_x.0`, `grad_x.1`, … |
//! | `split` | `x`, optional `grad_out.0`, `grad_out.1`, … (one per piece) | `output.0`, `output.1`, …, `grad_x` |
//! | `index_select` | `x`, `indices` (i64 `[M]`), optional `grad_out` (`x`'s shape with `M` on `axis`) | `output`, `grad_x` |
//!
//! Metadata keys:
//!
//! | key | ops | value |
//! | --- | --- | --- |
//! | `perm` | `permute` | comma-separated axes, e.g. `"0,2,3,1"` (output axis `k` is input axis `perm[k]`) |
//! | `dim0`, `dim1` | `transpose` | the two axes to swap |
//! | `axis` | `narrow`, `concat`, `split`, `index_select` | the axis the op works along |
//! | `start`, `length` | `narrow` | the slice `[start, start + length)` |
//! | `sizes` | `split` | comma-separated extents of the pieces (at least one) |
//!
//! The common `dtype` key casts float data and gradients; integer data (i64 labels) keeps its dtype, and
//! `indices` always stays i64 on the host.

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::shape;
use crate::tensor::Tensor;

pub(super) const OPS: &[&str] = &[
    "permute",
    "transpose",
    "narrow",
    "concat",
    "split",
    "index_select",
];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    let mut results: Results = Vec::new();
    let grad_out = || -> Result<Option<Tensor>> {
        if inputs.has("grad_out") {
            Ok(Some(inputs.data("grad_out")?))
        } else {
            Ok(None)
        }
    };
    let axis = || inputs.parse::<usize>("axis", "a non-negative axis");
    match op {
        "permute" => {
            let x = inputs.data("x")?;
            let perm = inputs.parse_list::<usize>("perm", "non-negative axes")?;
            results.push(("output".into(), shape::permute(&x, &perm)?));
            if let Some(g) = grad_out()? {
                results.push(("grad_x".into(), shape::permute_backward(&g, &perm)?));
            }
        }
        "transpose" => {
            let x = inputs.data("x")?;
            let a = inputs.parse::<usize>("dim0", "a non-negative axis")?;
            let b = inputs.parse::<usize>("dim1", "a non-negative axis")?;
            results.push(("output".into(), shape::transpose(&x, a, b)?));
            if let Some(g) = grad_out()? {
                results.push(("grad_x".into(), shape::transpose_backward(&g, a, b)?));
            }
        }
        "narrow" => {
            let x = inputs.data("x")?;
            let axis = axis()?;
            let start = inputs.parse::<usize>("start", "a non-negative integer")?;
            let length = inputs.parse::<usize>("length", "a non-negative integer")?;
            results.push(("output".into(), shape::narrow(&x, axis, start, length)?));
            if let Some(g) = grad_out()? {
                let dx = shape::narrow_backward(&g, x.shape(), axis, start)?;
                results.push(("grad_x".into(), dx));
            }
        }
        "concat" => {
            let axis = axis()?;
            let mut parts = Vec::new();
            while inputs.has(&format!("x.{}", parts.len())) {
                parts.push(inputs.data(&format!("x.{}", parts.len()))?);
            }
            if parts.is_empty() {
                return Err(Error::invalid(
                    "x.0",
                    "concat needs its parts as tensors `x.0`, `x.1`, …; the file has none",
                ));
            }
            let refs: Vec<&Tensor> = parts.iter().collect();
            results.push(("output".into(), shape::concat(&refs, axis)?));
            if let Some(g) = grad_out()? {
                let sizes: Vec<usize> = parts.iter().map(|p| p.shape()[axis]).collect();
                for (i, dx) in shape::concat_backward(&g, axis, &sizes)?
                    .into_iter()
                    .enumerate()
                {
                    results.push((format!("grad_x.{i}"), dx));
                }
            }
        }
        "split" => {
            let x = inputs.data("x")?;
            let axis = axis()?;
            let sizes = inputs.parse_list::<usize>("sizes", "non-negative extents")?;
            for (i, piece) in shape::split(&x, axis, &sizes)?.into_iter().enumerate() {
                results.push((format!("output.{i}"), piece));
            }
            if inputs.has("grad_out.0") {
                let grads = (0..sizes.len())
                    .map(|i| inputs.data(&format!("grad_out.{i}")))
                    .collect::<Result<Vec<_>>>()?;
                let refs: Vec<&Tensor> = grads.iter().collect();
                results.push(("grad_x".into(), shape::split_backward(&refs, axis)?));
            }
        }
        "index_select" => {
            let x = inputs.data("x")?;
            let axis = axis()?;
            let indices = inputs.host("indices")?;
            results.push(("output".into(), shape::index_select(&x, axis, &indices)?));
            if let Some(g) = grad_out()? {
                let dx = shape::index_select_backward(&g, x.shape(), axis, &indices)?;
                results.push(("grad_x".into(), dx));
            }
        }
        _ => return Err(Error::invalid("op", format!("`{op}` is not a shape op"))),
    }
    Ok(results)
}
