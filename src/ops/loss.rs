//! Vocabulary shared by the loss ops (focal family, distribution KL / DFL): how per-element losses are
//! reduced, mmdet's `avg_factor` epsilon, and the result of a fused loss+gradient call.

use crate::error::Result;
use crate::tensor::{DType, Device, Tensor};

/// `torch.finfo(torch.float32).eps`, which mmdet's `weight_reduce_loss` adds to `avg_factor` before dividing.
pub const AVG_FACTOR_EPS: f64 = f32::EPSILON as f64;

/// How per-element (per-row, per-anchor) losses are reduced, as PyTorch's and mmdet's `reduction=`.
/// Each op's config documents what its `Mean` divides by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// No reduction: one loss per element (row, anchor).
    None,
    /// The sum divided by the op's count, or by `avg_factor + ε` where the op takes one.
    #[default]
    Mean,
    /// The sum.
    Sum,
}

impl Reduction {
    /// `none`, `mean` or `sum`, as in PyTorch.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::None => "none",
            Reduction::Mean => "mean",
            Reduction::Sum => "sum",
        }
    }

    /// Parses the names printed by [`Reduction::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Reduction::None),
            "mean" => Some(Reduction::Mean),
            "sum" => Some(Reduction::Sum),
            _ => None,
        }
    }
}

/// The result of a fused loss+gradient entry: the reduced loss (shape `[]`) and the gradient with respect
/// to the differentiable input (its shape), already multiplied by the upstream gradient.
#[derive(Debug)]
pub struct LossAndGrad {
    /// The reduced loss, shape `[]`, in the input's dtype.
    pub loss: Tensor,
    /// d loss / d input times the upstream gradient, shaped like the input.
    pub grad: Tensor,
}

/// A shape-`[]` tensor holding `value` (rounded once to `dtype`) on `device`: a reduced loss.
pub(crate) fn scalar(value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
    let t = Tensor::from_vec(vec![value], &[])?.into_dtype(dtype)?;
    if device.is_cpu() {
        Ok(t)
    } else {
        t.to_device(device)
    }
}
