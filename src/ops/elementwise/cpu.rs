//! CPU reference of the element-wise ops: the specification the CUDA kernels are checked against.
//!
//! Generic over the compute type (f64 for f64 tensors, f32 otherwise): half storage is widened on entry
//! and rounded once when a result is stored. Every sum runs in a fixed order (see [`reduce_into`]), so
//! results do not depend on the thread count; independent outputs run in parallel.

use super::layout::{Iteration, Reduction};
use super::{BinaryOp, Operands, Term, UnaryKernel, UnaryOp};
use crate::error::Result;
use crate::tensor::{DType, HostElement, Real, Tensor};
use rayon::prelude::*;

/// A compute type of the reference: f32 or f64.
pub(crate) trait Compute: Real + HostElement {}
impl<T: Real + HostElement> Compute for T {}

/// The dtype the reference computes in for storage `dtype`.
pub(crate) fn compute_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Calls `$f::<T>(args)` with `T` the compute type of `$dtype`, then `$finish` on its result (the closure
/// is expanded once per type).
macro_rules! typed {
    ($dtype:expr, $f:ident($($arg:expr),* $(,)?), $finish:expr) => {
        if $crate::ops::elementwise::cpu::compute_dtype($dtype) == $crate::tensor::DType::F64 {
            $f::<f64>($($arg),*).and_then($finish)
        } else {
            $f::<f32>($($arg),*).and_then($finish)
        }
    };
}
pub(crate) use typed;

/// Compute-type values stored as a `dtype` tensor of `shape` (one rounding for half storage).
pub(crate) fn store<T: Compute>(values: Vec<T>, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::from_vec(values, shape)?.into_dtype(dtype)
}

/// Parallel loops get at least this many elements per task, so small tensors do not pay for scheduling.
const MIN_PER_TASK: usize = 4096;

fn rows_per_task(inner: usize) -> usize {
    MIN_PER_TASK.div_ceil(inner.max(1))
}

// ---------------------------------------------------------------------------------------------------------
// Binary arithmetic

pub(crate) fn binary_value<T: Real>(op: BinaryOp, a: T, b: T) -> T {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
    }
}

pub(super) fn binary_into(
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    it: &Iteration,
    out: &mut Tensor,
) -> Result<()> {
    fn run<T: Compute>(
        op: BinaryOp,
        a: &Tensor,
        b: &Tensor,
        it: &Iteration,
        n: usize,
    ) -> Result<Vec<T>> {
        let (av, bv) = (a.host_values::<T>()?, b.host_values::<T>()?);
        let inner = it.inner();
        let (sa, sb) = (it.inner_stride(0), it.inner_stride(1));
        let outer = it.outer();
        let mut out = vec![T::zero(); n];
        out.par_chunks_mut(inner)
            .with_min_len(rows_per_task(inner))
            .enumerate()
            .for_each(|(row, dst)| {
                let [oa, ob] = outer.offsets::<2>(row);
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = binary_value(op, av[oa + j * sa], bv[ob + j * sb]);
                }
            });
        Ok(out)
    }
    let (shape, dtype) = (out.shape().to_vec(), out.dtype());
    *out = typed!(dtype, run(op, a, b, it, out.numel()), |v| store(
        v, &shape, dtype
    ))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Reductions (sum_to_shape and the binary gradients)

/// One term of a gradient reduction (see [`Term`]); `a` and `b` are 0 when the term does not read them.
pub(crate) fn term_value<T: Real>(term: Term, g: T, a: T, b: T) -> T {
    match term {
        Term::Grad => g,
        Term::NegGrad => -g,
        Term::GradTimesB => g * b,
        Term::GradTimesA => g * a,
        Term::GradOverB => g / b,
        Term::QuotientGradB => -(g * a) / (b * b),
    }
}

/// `out[o] = scale · Σ_k term(o, k)` with `k` in index order: each innermost run of the reduced positions
/// is summed on its own, then the run sums are added in order.
pub(super) fn reduce_into(
    term: Term,
    operands: &Operands<'_>,
    plan: &Reduction,
    scale: f64,
    out: &mut Tensor,
) -> Result<()> {
    fn run<T: Compute>(
        term: Term,
        operands: &Operands<'_>,
        plan: &Reduction,
        scale: f64,
    ) -> Result<Vec<T>> {
        let g = operands.grad.host_values::<T>()?;
        let a = operands.a.map(|t| t.host_values::<T>()).transpose()?;
        let b = operands.b.map(|t| t.host_values::<T>()).transpose()?;
        // Operand positions in the plan: the gradient, then `a` and `b` when present.
        let slot_a = 1;
        let slot_b = 1 + usize::from(a.is_some());
        let inner = plan.reduced.inner();
        let steps: Vec<usize> = (0..3)
            .map(|k| {
                plan.reduced
                    .strides
                    .get(k)
                    .map_or(0, |s| *s.last().unwrap_or(&0))
            })
            .collect();
        let outer = plan.reduced.outer();
        let runs = plan.per_output() / inner;
        let scale = T::from_f64(scale);
        let value = |off: [usize; 3], j: usize| {
            let at = |slot: usize| off[slot] + j * steps[slot];
            let av = a.as_ref().map_or(T::zero(), |a| a[at(slot_a)]);
            let bv = b.as_ref().map_or(T::zero(), |b| b[at(slot_b)]);
            term_value(term, g[at(0)], av, bv)
        };
        Ok((0..plan.outputs())
            .into_par_iter()
            .with_min_len(rows_per_task(plan.per_output()))
            .map(|o| {
                let base = plan.kept.offsets::<3>(o);
                let mut total = T::zero();
                for r in 0..runs {
                    let rel = outer.offsets::<3>(r);
                    let off = [base[0] + rel[0], base[1] + rel[1], base[2] + rel[2]];
                    let mut run_sum = T::zero();
                    for j in 0..inner {
                        run_sum = run_sum + value(off, j);
                    }
                    total = total + run_sum;
                }
                total * scale
            })
            .collect())
    }
    let (shape, dtype) = (out.shape().to_vec(), out.dtype());
    *out = typed!(dtype, run(term, operands, plan, scale), |v| store(
        v, &shape, dtype
    ))?;
    Ok(())
}

/// `out[i] = scale · g[broadcast(i)]`.
pub(super) fn broadcast_into(
    g: &Tensor,
    it: &Iteration,
    scale: f64,
    out: &mut Tensor,
) -> Result<()> {
    fn run<T: Compute>(g: &Tensor, it: &Iteration, scale: f64, n: usize) -> Result<Vec<T>> {
        let gv = g.host_values::<T>()?;
        let scale = T::from_f64(scale);
        let inner = it.inner();
        let step = it.inner_stride(0);
        let outer = it.outer();
        let mut out = vec![T::zero(); n];
        out.par_chunks_mut(inner)
            .with_min_len(rows_per_task(inner))
            .enumerate()
            .for_each(|(row, dst)| {
                let [base] = outer.offsets::<1>(row);
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = gv[base + j * step] * scale;
                }
            });
        Ok(out)
    }
    let (shape, dtype) = (out.shape().to_vec(), out.dtype());
    *out = typed!(dtype, run(g, it, scale, out.numel()), |v| store(
        v, &shape, dtype
    ))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Unary functions, scaling, accumulation, fills

/// `f(x)`; `param` is the factor of `Scale`.
pub(crate) fn unary_value<T: Real>(kernel: UnaryKernel, x: T, param: T) -> T {
    let zero = T::zero();
    let one = T::one();
    match kernel {
        UnaryKernel::Scale(_) => x * param,
        UnaryKernel::Op(op) => match op {
            UnaryOp::Neg => -x,
            UnaryOp::Relu => {
                if x > zero || x.is_nan() {
                    x
                } else {
                    zero
                }
            }
            UnaryOp::Sigmoid => {
                if x >= zero {
                    one / (one + (-x).exp())
                } else {
                    let e = x.exp();
                    e / (one + e)
                }
            }
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Square => x * x,
            UnaryOp::Abs => x.abs(),
        },
    }
}

/// `∂L/∂x` from the saved tensor's value `s` (input or output, see [`UnaryOp::saved`]) and `g`.
pub(crate) fn unary_grad<T: Real>(op: UnaryOp, s: T, g: T) -> T {
    let zero = T::zero();
    let one = T::one();
    match op {
        UnaryOp::Neg => -g,
        UnaryOp::Relu => {
            if s > zero {
                g
            } else if s.is_nan() {
                s
            } else {
                zero
            }
        }
        UnaryOp::Sigmoid => g * s * (one - s),
        UnaryOp::Exp => g * s,
        UnaryOp::Log => g / s,
        UnaryOp::Sqrt => g / (s + s),
        UnaryOp::Square => (s + s) * g,
        UnaryOp::Abs => {
            if s > zero {
                g
            } else if s < zero {
                -g
            } else if s == zero {
                zero
            } else {
                s
            }
        }
    }
}

pub(super) fn unary_into(kernel: UnaryKernel, x: &Tensor, out: &mut Tensor) -> Result<()> {
    fn run<T: Compute>(kernel: UnaryKernel, x: &Tensor) -> Result<Vec<T>> {
        let xv = x.host_values::<T>()?;
        let param = T::from_f64(kernel.code_and_param().1);
        Ok(xv
            .par_iter()
            .with_min_len(MIN_PER_TASK)
            .map(|&v| unary_value(kernel, v, param))
            .collect())
    }
    let (shape, dtype) = (out.shape().to_vec(), out.dtype());
    *out = typed!(dtype, run(kernel, x), |v| store(v, &shape, dtype))?;
    Ok(())
}

pub(super) fn unary_backward_into(
    op: UnaryOp,
    saved: Option<&Tensor>,
    grad_out: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    fn run<T: Compute>(op: UnaryOp, saved: Option<&Tensor>, grad_out: &Tensor) -> Result<Vec<T>> {
        let g = grad_out.host_values::<T>()?;
        let s = saved.map(|t| t.host_values::<T>()).transpose()?;
        Ok(match &s {
            Some(s) => s
                .par_iter()
                .zip(g.par_iter())
                .with_min_len(MIN_PER_TASK)
                .map(|(&s, &g)| unary_grad(op, s, g))
                .collect(),
            None => g
                .par_iter()
                .with_min_len(MIN_PER_TASK)
                .map(|&g| unary_grad(op, T::zero(), g))
                .collect(),
        })
    }
    let (shape, dtype) = (out.shape().to_vec(), out.dtype());
    *out = typed!(dtype, run(op, saved, grad_out), |v| store(v, &shape, dtype))?;
    Ok(())
}

pub(super) fn add_scaled(acc: &mut Tensor, x: &Tensor, alpha: f64) -> Result<()> {
    fn run<T: Compute>(acc: &Tensor, x: &Tensor, alpha: f64) -> Result<Vec<T>> {
        let (av, xv) = (acc.host_values::<T>()?, x.host_values::<T>()?);
        let alpha = T::from_f64(alpha);
        Ok(av
            .par_iter()
            .zip(xv.par_iter())
            .with_min_len(MIN_PER_TASK)
            .map(|(&a, &x)| a + alpha * x)
            .collect())
    }
    let (shape, dtype) = (acc.shape().to_vec(), acc.dtype());
    *acc = typed!(dtype, run(acc, x, alpha), |v| store(v, &shape, dtype))?;
    Ok(())
}

/// Every element set to `value` rounded once, straight from f64, to the storage dtype.
pub(super) fn fill(t: &mut Tensor, value: f64) -> Result<()> {
    *t = Tensor::from_vec(vec![value; t.numel()], t.shape())?.into_dtype(t.dtype())?;
    Ok(())
}
