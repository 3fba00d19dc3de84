//! Parity entries for the similarity family (src/ops/similarity).
//!
//! | op | tensors | results |
//! | --- | --- | --- |
//! | `normalize_rows` | `x` `[m, D]`, optional `grad_out` `[m, D]` | `output`, `grad_x` |
//! | `cosine_gram` | `x`, optional `grad_out` `[m, m]` | `output`, `grad_x` |
//! | `cosine_cross` | `x`, `y` `[n, D]`, optional `grad_out` `[m, n]` | `output`, `grad_x`, `grad_y` |
//! | `sq_euclidean`, `euclidean` | `x`, optional `y` (absent: distances within `x`), optional `grad_out` | `output`, `grad_x`, `grad_y` (with `y`) |
//! | `dsig_edge_loss` | `student`, `teacher` `[M, D]`, optional `nodes` (i64 `[m]`) | `loss` (`[]`), `grad_student` |
//!
//! Metadata keys (all optional): `eps` (float, default 1e-12; cosine ops and `dsig_edge_loss`),
//! `loss_weight` (float, default 1.0; `dsig_edge_loss`). `nodes` keeps its stored dtype (i64).

use super::{ParityInputs, Results};
use crate::error::{Error, Result};
use crate::ops::similarity::{self, CosineConfig, Distance, DsigEdgeConfig, DEFAULT_EPS};

pub(super) const OPS: &[&str] = &[
    "normalize_rows",
    "cosine_gram",
    "cosine_cross",
    "sq_euclidean",
    "euclidean",
    "dsig_edge_loss",
];

pub(super) fn run(op: &str, inputs: &ParityInputs<'_>) -> Result<Results> {
    let eps = inputs.parse_or("eps", "a positive float", DEFAULT_EPS)?;
    let cos = CosineConfig { eps };
    let grad_out = if inputs.has("grad_out") {
        Some(inputs.data("grad_out")?)
    } else {
        None
    };
    let mut results: Results = Vec::new();
    let mut push = |name: &str, t| results.push((name.to_string(), t));
    match op {
        "normalize_rows" => {
            let x = inputs.data("x")?;
            push("output", similarity::normalize_rows(&x, &cos)?);
            if let Some(g) = &grad_out {
                push("grad_x", similarity::normalize_rows_backward(&x, g, &cos)?);
            }
        }
        "cosine_gram" => {
            let x = inputs.data("x")?;
            push("output", similarity::cosine_gram(&x, &cos)?);
            if let Some(g) = &grad_out {
                push("grad_x", similarity::cosine_gram_backward(&x, g, &cos)?);
            }
        }
        "cosine_cross" => {
            let (x, y) = (inputs.data("x")?, inputs.data("y")?);
            push("output", similarity::cosine_cross(&x, &y, &cos)?);
            if let Some(g) = &grad_out {
                let (dx, dy) = similarity::cosine_cross_backward(&x, &y, g, true, &cos)?;
                push("grad_x", dx);
                if let Some(dy) = dy {
                    push("grad_y", dy);
                }
            }
        }
        "sq_euclidean" | "euclidean" => {
            let kind = if op == "euclidean" {
                Distance::Euclidean
            } else {
                Distance::Squared
            };
            let x = inputs.data("x")?;
            let y = if inputs.has("y") {
                Some(inputs.data("y")?)
            } else {
                None
            };
            let out = similarity::pairwise_distance(&x, y.as_ref(), kind)?;
            if let Some(g) = &grad_out {
                let (dx, dy) =
                    similarity::pairwise_distance_backward(&x, y.as_ref(), &out, g, kind, true)?;
                push("grad_x", dx);
                if let Some(dy) = dy {
                    push("grad_y", dy);
                }
            }
            push("output", out);
        }
        "dsig_edge_loss" => {
            let cfg = DsigEdgeConfig {
                eps,
                loss_weight: inputs.parse_or("loss_weight", "a float", 1.0)?,
            };
            let (student, teacher) = (inputs.data("student")?, inputs.data("teacher")?);
            let nodes = if inputs.has("nodes") {
                Some(inputs.host("nodes")?)
            } else {
                None
            };
            let out =
                similarity::dsig_edge_loss_with_grad(&student, &teacher, nodes.as_ref(), &cfg)?;
            push("loss", out.loss);
            push("grad_student", out.grad);
        }
        _ => {
            return Err(Error::invalid(
                "op",
                format!("`{op}` is not a similarity op"),
            ))
        }
    }
    Ok(results)
}
