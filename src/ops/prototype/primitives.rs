//! The row-wise and element-wise steps the prototype ops are built from, each dispatched to the CPU
//! reference (cpu.rs) or the CUDA kernels (cuda.rs) by the device of its first argument. Inputs were
//! validated by the public entries in mod.rs; shapes here are taken as given.
//!
//! "Compute dtype" is f64 for f64 tensors and f32 for everything else: intermediates (widened inputs, the
//! product `x·pᵀ`, squared norms, the gradient matrix `G` and its sums) are held in it, so half storage is
//! rounded only once, in the step that produces a result for the caller.

use super::cpu;
#[cfg(feature = "cuda")]
use super::cuda;
use super::{MatchPlan, SoftAssignConfig};
use crate::error::Result;
use crate::tensor::{DType, Device, Tensor};
use std::ops::Deref;

/// Runs `$cpu` on the host or `$cuda` with `$dev` bound to the CUDA device of `$t`.
macro_rules! on_device {
    ($t:expr, cpu => $cpu:expr, cuda($dev:ident) => $cuda:expr $(,)?) => {
        match $t.device() {
            Device::Cpu => $cpu,
            #[cfg(feature = "cuda")]
            Device::Cuda($dev) => $cuda,
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(dev) => dev.unreachable(),
        }
    };
}

/// The dtype intermediates are held in for inputs of `dtype`.
pub(crate) fn compute_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// A tensor that is either borrowed or owned (`Tensor` is not `Clone`, so `Cow` does not apply).
pub(crate) enum MaybeOwned<'a> {
    Borrowed(&'a Tensor),
    Owned(Tensor),
}

impl Deref for MaybeOwned<'_> {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        match self {
            MaybeOwned::Borrowed(t) => t,
            MaybeOwned::Owned(t) => t,
        }
    }
}

/// `x` in its compute dtype: borrowed when it already is, converted otherwise.
pub(crate) fn widen(x: &Tensor) -> Result<MaybeOwned<'_>> {
    let compute = compute_dtype(x.dtype());
    if x.dtype() == compute {
        return Ok(MaybeOwned::Borrowed(x));
    }
    on_device!(x,
        cpu => Ok(MaybeOwned::Owned(x.to_dtype(compute)?)),
        cuda(dev) => Ok(MaybeOwned::Owned(cuda::widen(&dev, x)?)),
    )
}

/// `‖row‖²` of every row of a compute-dtype matrix, `[rows]`.
pub(crate) fn row_sq_norms(x: &Tensor) -> Result<Tensor> {
    on_device!(x,
        cpu => cpu::row_sq_norms(x),
        cuda(dev) => cuda::row_sq_norms(&dev, x),
    )
}

/// The soft assignment (or its log) from the product `gram = x·pᵀ` and the squared norms (compute dtype),
/// into `out` (`[N, K]`, the storage dtype).
pub(crate) fn assignment_from_gram_into(
    gram: &Tensor,
    x_norms: &Tensor,
    p_norms: &Tensor,
    cfg: &SoftAssignConfig,
    out: &mut Tensor,
) -> Result<()> {
    on_device!(gram,
        cpu => cpu::assignment_from_gram_into(gram, x_norms, p_norms, cfg, out),
        cuda(dev) => cuda::assignment_from_gram_into(&dev, gram, x_norms, p_norms, cfg, out),
    )
}

/// The gradient with respect to the squared distances, `G = −dℓ/τ` (`[N, K]`, compute dtype), and its
/// row sums (`[N]`), from the forward's `output` and the upstream `grad_out` (storage dtype).
pub(crate) fn assignment_grad(
    output: &Tensor,
    grad_out: &Tensor,
    cfg: &SoftAssignConfig,
) -> Result<(Tensor, Tensor)> {
    on_device!(output,
        cpu => cpu::assignment_grad(output, grad_out, cfg),
        cuda(dev) => cuda::assignment_grad(&dev, output, grad_out, cfg),
    )
}

/// Column sums of a compute-dtype matrix, `[cols]`, each summed down the rows in one fixed order.
pub(crate) fn col_sums(m: &Tensor) -> Result<Tensor> {
    on_device!(m,
        cpu => cpu::col_sums(m),
        cuda(dev) => cuda::col_sums(&dev, m),
    )
}

/// `2·(sums_r·t[r, :] − prod[r, :])` in `t`'s dtype (`sums`, `prod` in the compute dtype).
pub(crate) fn combine(t: &Tensor, sums: &Tensor, prod: &Tensor) -> Result<Tensor> {
    on_device!(t,
        cpu => cpu::combine(t, sums, prod),
        cuda(dev) => cuda::combine(&dev, t, sums, prod),
    )
}

/// The max-cosine match of the rows of `x` against the candidates in `plan`, into `similarity` (`[N]`,
/// `x`'s dtype) and `index` (`[N]`, i64).
pub(crate) fn max_cosine_into(
    x: &Tensor,
    prototypes: &Tensor,
    plan: &MatchPlan,
    similarity: &mut Tensor,
    index: &mut Tensor,
) -> Result<()> {
    if plan.rows == 0 {
        return Ok(());
    }
    on_device!(x,
        cpu => cpu::max_cosine_into(x, prototypes, plan, similarity, index),
        cuda(dev) => cuda::max_cosine_into(&dev, x, prototypes, plan, similarity, index),
    )
}

/// GKD's robustness weights of the rows (`[N]`, the features' dtype) into `out`.
pub(crate) fn robust_weights_into(
    student: &Tensor,
    teacher: &Tensor,
    student_prototypes: &Tensor,
    teacher_prototypes: &Tensor,
    plan: &MatchPlan,
    out: &mut Tensor,
) -> Result<()> {
    if plan.rows == 0 {
        return Ok(());
    }
    on_device!(student,
        cpu => cpu::robust_weights_into(
            student,
            teacher,
            student_prototypes,
            teacher_prototypes,
            plan,
            out,
        ),
        cuda(dev) => cuda::robust_weights_into(
            &dev,
            student,
            teacher,
            student_prototypes,
            teacher_prototypes,
            plan,
            out,
        ),
    )
}
