//! The ops of the [`Tape`](super::Tape), one file per op family of [`crate::ops`] (plus the glue the
//! distillation methods and layers need). Each is a method on `Tape` that runs the family's forward,
//! records the output, and captures what its backward needs by sharing the input values (`Rc`, no copies).
//!
//! Conventions, the same for every op:
//! - every tensor argument is a [`Var`]: targets, labels, weights and teacher tensors are
//!   recorded with [`Tape::constant`](super::Tape::constant);
//! - arguments documented as *constant* (labels, boxes, targets, weights, the teacher side of a KD loss)
//!   never receive a gradient, even when they were computed from leaves: the op treats them as detached,
//!   exactly like the official code's `.detach()`;
//! - configs are the op family's own structs, with the official defaults.

mod boxes;
mod conv2d;
mod dist_kl;
mod elementwise;
mod focal;
mod graph_conv;
mod matmul;
mod norm;
mod prototype;
mod resize;
mod roi_align;
mod shape;
mod similarity;

pub use norm::UpdatedRunningStats;

use super::Var;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The value of a one-element tensor on the host (a device scalar is copied back, which synchronises).
pub(crate) fn scalar_value(t: &Tensor, arg: &str) -> Result<f64> {
    if t.numel() != 1 {
        return Err(Error::shape(arg, "a one-element tensor", t.shape()));
    }
    Ok(t.to_vec::<f64>()?[0])
}

/// `Some(var)` inputs as a list (for optional weights and biases).
fn with_optional(vars: &[Var], optional: Option<Var>) -> Vec<Var> {
    let mut all = vars.to_vec();
    all.extend(optional);
    all
}

#[cfg(test)]
mod tests;
