//! Parity entries for the `graph_conv` op family. Every op reads optional `grad_out` (shaped like its
//! output); with it, the gradients are returned too. Float inputs follow the file's `dtype` key.
//!
//! | `op` | tensors | metadata | results |
//! | --- | --- | --- | --- |
//! | `normalized_adjacency` | `adjacency` `[m, m]` / `[B, m, m]` | — | `output` (Â), `inv_sqrt_degree`, `grad_adjacency` |
//! | `graph_conv` | `adjacency`, `x`, `weight`, optional `bias` | `adjacency_grad` (`true`/`false`, default `true`) | `output`, `grad_x`, `grad_weight`, `grad_bias` (with a bias), `grad_adjacency` (when `adjacency_grad`) |
//! | `glore_project` | `v` `[B, S, L]`, `bp` `[B, N, L]` | — | `output` (Z `[B, S, N]`), `grad_v`, `grad_bp` |
//! | `glore_node_conv` | `z` `[B, S, N]`, `adjacency` `[N, N]`, optional `bias` `[N]` | `relu` (`true`/`false`, default `false`) | `output`, `grad_z`, `grad_adjacency`, `grad_bias` (with a bias) |
//! | `glore_reproject` | `y` `[B, S, N]`, `bp` `[B, N, L]` | — | `output` (`[B, S, L]`), `grad_y`, `grad_bp` |

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::graph_conv::{self, GraphConvInputs, NodeConvInputs};
use crate::tensor::Tensor;

pub(super) const OPS: &[&str] = &[
    "normalized_adjacency",
    "graph_conv",
    "glore_project",
    "glore_node_conv",
    "glore_reproject",
];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    let grad_out = if inputs.has("grad_out") {
        Some(inputs.data("grad_out")?)
    } else {
        None
    };
    let optional = |name: &str| -> Result<Option<Tensor>> {
        if inputs.has(name) {
            Ok(Some(inputs.data(name)?))
        } else {
            Ok(None)
        }
    };
    let mut results: Results = Vec::new();
    let mut push = |name: &str, t: Tensor| results.push((name.to_string(), t));
    match op {
        "normalized_adjacency" => {
            let a = inputs.data("adjacency")?;
            let fwd = graph_conv::normalized_adjacency(&a)?;
            if let Some(g) = &grad_out {
                push(
                    "grad_adjacency",
                    graph_conv::normalized_adjacency_backward(&a, &fwd.inv_sqrt_degree, g)?,
                );
            }
            push("output", fwd.a_hat);
            push("inv_sqrt_degree", fwd.inv_sqrt_degree);
        }
        "graph_conv" => {
            let adjacency_grad = inputs.parse_bool("adjacency_grad", Some(true))?;
            let (a, x, w) = (
                inputs.data("adjacency")?,
                inputs.data("x")?,
                inputs.data("weight")?,
            );
            let bias = optional("bias")?;
            let conv = GraphConvInputs {
                adjacency: &a,
                x: &x,
                weight: &w,
                bias: bias.as_ref(),
            };
            let fwd = graph_conv::graph_conv(&conv)?;
            if let Some(g) = &grad_out {
                let grads = graph_conv::graph_conv_backward(&conv, &fwd.saved, g, adjacency_grad)?;
                push("grad_x", grads.x);
                push("grad_weight", grads.weight);
                if let Some(b) = grads.bias {
                    push("grad_bias", b);
                }
                if let Some(da) = grads.adjacency {
                    push("grad_adjacency", da);
                }
            }
            push("output", fwd.output);
        }
        "glore_project" => {
            let (v, bp) = (inputs.data("v")?, inputs.data("bp")?);
            push("output", graph_conv::glore_project(&v, &bp)?);
            if let Some(g) = &grad_out {
                let (dv, dbp) = graph_conv::glore_project_backward(&v, &bp, g)?;
                push("grad_v", dv);
                push("grad_bp", dbp);
            }
        }
        "glore_node_conv" => {
            let relu = inputs.parse_bool("relu", Some(false))?;
            let (z, a) = (inputs.data("z")?, inputs.data("adjacency")?);
            let bias = optional("bias")?;
            let node = NodeConvInputs {
                z: &z,
                adjacency: &a,
                bias: bias.as_ref(),
            };
            let out = graph_conv::glore_node_conv(&node, relu)?;
            if let Some(g) = &grad_out {
                let grads = graph_conv::glore_node_conv_backward(&node, relu.then_some(&out), g)?;
                push("grad_z", grads.z);
                push("grad_adjacency", grads.adjacency);
                if let Some(b) = grads.bias {
                    push("grad_bias", b);
                }
            }
            push("output", out);
        }
        "glore_reproject" => {
            let (y, bp) = (inputs.data("y")?, inputs.data("bp")?);
            push("output", graph_conv::glore_reproject(&y, &bp)?);
            if let Some(g) = &grad_out {
                let (dy, dbp) = graph_conv::glore_reproject_backward(&y, &bp, g)?;
                push("grad_y", dy);
                push("grad_bp", dbp);
            }
        }
        _ => {
            return Err(Error::invalid(
                "op",
                format!("`{op}` is not a graph_conv op"),
            ))
        }
    }
    Ok(results)
}
