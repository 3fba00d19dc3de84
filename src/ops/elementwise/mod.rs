//! Element-wise glue for composing ops on a tape: binary arithmetic with NumPy broadcasting, the reduction
//! that undoes broadcasting, scalar scaling, in-place gradient accumulation, constant fills and the common
//! unary functions — forward and backward, on the CPU and on CUDA.
//!
//! Tensors are dense row-major ([`Tensor`]). Storage may be f32, f16 or bf16 on either device, and f64 on
//! the CPU (for gradchecks). Arithmetic is f32 for f32/f16/bf16 storage (f64 for f64): half inputs are
//! widened on load and every result is rounded once, when it is stored. Every result is bitwise
//! reproducible run to run on both devices: there are no atomics anywhere, and every sum is taken in an
//! order fixed by the shapes alone.
//!
//! # Broadcasting
//!
//! [`add`], [`sub`], [`mul`] and [`div`] follow NumPy: the shapes are right-aligned, missing leading
//! dimensions count as 1, and each pair of dimensions must be equal or contain a 1; the output has the
//! broadcast shape ([`broadcast_shape`]). Both operands must have one dtype and one device; ranks are at most
//! [`MAX_RANK`] = 6. Shape-`[]` (scalar) operands broadcast against anything. Each backward returns the
//! gradients already reduced to each operand's own shape by [`sum_to_shape`], so a tape can add them to its
//! accumulators directly:
//!
//! | op | `∂L/∂a` | `∂L/∂b` |
//! | --- | --- | --- |
//! | `a + b` | `sum_to_shape(g, a)` | `sum_to_shape(g, b)` |
//! | `a − b` | `sum_to_shape(g, a)` | `sum_to_shape(−g, b)` |
//! | `a · b` | `sum_to_shape(g·b, a)` | `sum_to_shape(g·a, b)` |
//! | `a / b` | `sum_to_shape(g/b, a)` | `sum_to_shape(−g·a/b², b)` |
//!
//! The product inside each sum is computed on the fly, inside the reduction (no temporary of the broadcast
//! shape is written).
//!
//! # Reduction order (determinism)
//!
//! [`sum_to_shape`] gives every output element to one CUDA thread, which adds its terms in index order, when
//! there are few terms per element (≤ 32) or many outputs along contiguous memory; otherwise each output
//! element is split into fixed chunks of 8192 terms, each chunk summed by one 256-thread block with a
//! fixed-shape tree reduction, and the chunk sums added in order by one thread. The choice depends on the
//! shapes only, so the bits do not change from run to run. The CPU reference adds each output's terms in
//! index order, one innermost run at a time (each run summed on its own, the run sums then added in order).
//!
//! # Unary functions and their derivatives
//!
//! | op | `y = f(x)` | `∂L/∂x` from | saved |
//! | --- | --- | --- | --- |
//! | [`neg`] | `−x` | `−g` | nothing |
//! | [`relu`] | `max(x, 0)` | `g·[x > 0]` (0 at `x = 0`) | input |
//! | [`sigmoid`] | `1/(1 + e^{−x})` | `g·y·(1 − y)` | output |
//! | [`exp`] | `e^x` | `g·y` | output |
//! | [`log`] | `ln x` | `g/x` | input |
//! | [`sqrt`] | `√x` | `g/(2y)` | output |
//! | [`square`] | `x²` | `2x·g` | input |
//! | [`abs`] | `|x|` | `g·sign(x)` (0 at `x = 0`) | input |
//!
//! `sigmoid` is evaluated without overflow (`e^x/(1 + e^x)` for `x < 0`). Outside a function's domain the
//! IEEE result is returned, as in PyTorch: `log(0) = −∞`, `log(x < 0) = NaN`, `sqrt(x < 0) = NaN`, and
//! `sqrt`'s gradient at `y = 0` is `±∞` (or NaN for `g = 0`). NaN inputs give NaN outputs and gradients
//! (`relu` and `abs` included).
//!
//! # Sizes
//!
//! The broadcasting ops and [`sum_to_shape`] / [`broadcast_to`] index with 32-bit integers: every tensor
//! they touch must have fewer than 2^31 elements (an error otherwise). The same-shape ops (unary functions,
//! [`scale`], [`add_scaled`], [`fill`]) use 64-bit indices and have no such limit. Empty tensors give empty
//! results without a launch; a reduction over an empty axis gives zeros.

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub(crate) mod layout;

use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};
pub use layout::MAX_RANK;

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
pub(crate) use on_device;

// ---------------------------------------------------------------------------------------------------------
// Binary arithmetic with broadcasting

/// A binary arithmetic operation (see the module docs for the gradients).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a − b`
    Sub,
    /// `a · b`
    Mul,
    /// `a / b` (IEEE division: `x/0 = ±∞`, `0/0 = NaN`)
    Div,
}

impl BinaryOp {
    /// `add`, `sub`, `mul` or `div`.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }

    /// Parses the names printed by [`BinaryOp::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div]
            .into_iter()
            .find(|op| op.name() == name)
    }

    /// The code `kernels/elementwise.cu` switches on.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn code(self) -> i32 {
        self as i32
    }
}

/// The gradients of a binary op, each already reduced to its operand's shape (and in its dtype).
#[derive(Debug)]
pub struct BinaryGrads {
    /// `∂L/∂a`, shaped like `a`.
    pub grad_a: Tensor,
    /// `∂L/∂b`, shaped like `b`.
    pub grad_b: Tensor,
}

/// The NumPy broadcast of two shapes: right-aligned, missing leading dimensions count as 1, and each pair
/// must be equal or contain a 1 (`[2, 3, 4, 5]` with `[1, 3, 1, 1]` gives `[2, 3, 4, 5]`; `[4]` with
/// `[2, 3, 4]` gives `[2, 3, 4]`). The error names both shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    layout::broadcast_pair(a, b, ("a", "b"))
}

/// `a ∘ b` element-wise with broadcasting, for `∘` = `op`; the output has [`broadcast_shape`]`(a, b)`.
pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let shape = check_binary(a, b)?;
    let mut out = Tensor::zeros(&shape, a.dtype(), &a.device())?;
    run_binary(op, a, b, &mut out)?;
    Ok(out)
}

/// [`binary`] writing into `out` (the broadcast shape, `a`'s dtype and device; its contents are never read).
pub fn binary_into(op: BinaryOp, a: &Tensor, b: &Tensor, out: &mut Tensor) -> Result<()> {
    let shape = check_binary(a, b)?;
    validate::output_like(out, a, &shape)?;
    run_binary(op, a, b, out)
}

fn run_binary(op: BinaryOp, a: &Tensor, b: &Tensor, out: &mut Tensor) -> Result<()> {
    if out.numel() == 0 {
        return Ok(());
    }
    let it = layout::elementwise(out.shape(), &[a.shape(), b.shape()]);
    on_device!(a,
        cpu => cpu::binary_into(op, a, b, &it, out),
        cuda(dev) => cuda::binary_into(&dev, op, a, b, &it, out),
    )
}

/// Gradients of [`binary`] given `grad_out` (the broadcast shape, the operands' dtype and device), each
/// reduced to its operand's shape (see the table in the module docs).
pub fn binary_backward(
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    grad_out: &Tensor,
) -> Result<BinaryGrads> {
    let shape = check_binary(a, b)?;
    check_grad(grad_out, a, &shape)?;
    let (term_a, term_b) = match op {
        BinaryOp::Add => (Term::Grad, Term::Grad),
        BinaryOp::Sub => (Term::Grad, Term::NegGrad),
        BinaryOp::Mul => (Term::GradTimesB, Term::GradTimesA),
        BinaryOp::Div => (Term::GradOverB, Term::QuotientGradB),
    };
    let operands = Operands {
        grad: grad_out,
        a: Some(a),
        b: Some(b),
    };
    let mut grad_a = Tensor::zeros(a.shape(), a.dtype(), &a.device())?;
    reduce_terms(term_a, &operands, a.shape(), 1.0, &mut grad_a)?;
    let mut grad_b = Tensor::zeros(b.shape(), b.dtype(), &b.device())?;
    reduce_terms(term_b, &operands, b.shape(), 1.0, &mut grad_b)?;
    Ok(BinaryGrads { grad_a, grad_b })
}

/// `a + b` with broadcasting.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Add, a, b)
}

/// `a − b` with broadcasting.
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Sub, a, b)
}

/// `a · b` (element-wise) with broadcasting.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Mul, a, b)
}

/// `a / b` (element-wise) with broadcasting.
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Div, a, b)
}

/// Gradients of [`add`]: `(sum_to_shape(g, a), sum_to_shape(g, b))`.
pub fn add_backward(a: &Tensor, b: &Tensor, grad_out: &Tensor) -> Result<BinaryGrads> {
    binary_backward(BinaryOp::Add, a, b, grad_out)
}

/// Gradients of [`sub`]: `(sum_to_shape(g, a), sum_to_shape(−g, b))`.
pub fn sub_backward(a: &Tensor, b: &Tensor, grad_out: &Tensor) -> Result<BinaryGrads> {
    binary_backward(BinaryOp::Sub, a, b, grad_out)
}

/// Gradients of [`mul`]: `(sum_to_shape(g·b, a), sum_to_shape(g·a, b))`.
pub fn mul_backward(a: &Tensor, b: &Tensor, grad_out: &Tensor) -> Result<BinaryGrads> {
    binary_backward(BinaryOp::Mul, a, b, grad_out)
}

/// Gradients of [`div`]: `(sum_to_shape(g/b, a), sum_to_shape(−g·a/b², b))`.
pub fn div_backward(a: &Tensor, b: &Tensor, grad_out: &Tensor) -> Result<BinaryGrads> {
    binary_backward(BinaryOp::Div, a, b, grad_out)
}

// ---------------------------------------------------------------------------------------------------------
// sum_to_shape and broadcast_to

/// The reduction that undoes broadcasting: sums `x` over every dimension that `shape` broadcasts along, so
/// that `out[j] = Σ_{i ↦ j} x[i]` over the positions `i` of `x` that broadcasting `shape` to `x.shape()`
/// maps onto `j`. `shape` must broadcast to `x.shape()` unchanged (rank at most `x`'s, each right-aligned
/// dimension equal or 1); `[]` sums everything. Deterministic (see the module docs for the order); the
/// result has `x`'s dtype, accumulated in f32 (f64 for f64).
pub fn sum_to_shape(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    check_reduce(x, shape)?;
    let mut out = Tensor::zeros(shape, x.dtype(), &x.device())?;
    reduce_scaled_into(x, shape, 1.0, &mut out)?;
    Ok(out)
}

/// [`sum_to_shape`] into `out`, whose shape is the target (`x`'s dtype and device; contents never read).
pub fn sum_to_shape_into(x: &Tensor, out: &mut Tensor) -> Result<()> {
    let shape = out.shape().to_vec();
    check_reduce(x, &shape)?;
    validate::output_like(out, x, &shape)?;
    reduce_scaled_into(x, &shape, 1.0, out)
}

/// Gradient of [`sum_to_shape`]: `grad_out` (the target shape) broadcast back to `x`'s shape.
pub fn sum_to_shape_backward(x: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    check_indexable(x, "x")?;
    check_indexable(grad_out, "grad_out")?;
    layout::check_reducible(x.shape(), grad_out.shape(), "grad_out", "x")?;
    validate::same_device(&[("x", x), ("grad_out", grad_out)])?;
    validate::same_dtype(&[("x", x), ("grad_out", grad_out)])?;
    broadcast_scaled(grad_out, grad_out.shape(), x.shape(), 1.0, x.dtype())
}

/// `x` broadcast (copied) to `shape`, which must be [`broadcast_shape`]`(x.shape(), shape)` itself. Its
/// gradient is [`sum_to_shape`]`(grad_out, x.shape())`.
pub fn broadcast_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    check_broadcastable(x, "x", shape)?;
    broadcast_scaled(x, x.shape(), shape, 1.0, x.dtype())
}

/// `out = scale · Σ` over the reduction from `x.shape()` to `target` (which broadcasts to it; `out` holds
/// `target`'s elements in any shape, e.g. without the reduced size-1 dimensions). Shapes are checked by the
/// caller; `mean_axes` uses `scale = 1/count`.
pub(crate) fn reduce_scaled_into(
    x: &Tensor,
    target: &[usize],
    scale: f64,
    out: &mut Tensor,
) -> Result<()> {
    let operands = Operands {
        grad: x,
        a: None,
        b: None,
    };
    reduce_terms(Term::Grad, &operands, target, scale, out)
}

/// `scale · g` broadcast to `shape`, with `g`'s elements read as a tensor of `g_shape` (its own shape, or
/// the same elements with the reduced size-1 dimensions restored), which broadcasts to `shape` (checked by
/// the caller). Stored as `dtype`: `g`'s dtype, or a narrower storage dtype when `g` is the f32 scalar
/// gradient of an f32-accumulated reduction.
pub(crate) fn broadcast_scaled(
    g: &Tensor,
    g_shape: &[usize],
    shape: &[usize],
    scale: f64,
    dtype: DType,
) -> Result<Tensor> {
    let mut out = Tensor::zeros(shape, dtype, &g.device())?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let it = layout::elementwise(shape, &[g_shape]);
    on_device!(g,
        cpu => cpu::broadcast_into(g, &it, scale, &mut out)?,
        cuda(dev) => cuda::broadcast_into(&dev, g, &it, scale, &mut out)?,
    );
    Ok(out)
}

/// What each term of a gradient reduction is, from the upstream gradient `g` and the operands `a`, `b`
/// (read through their broadcast strides). Codes match `TERM_*` in kernels/elementwise.cu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Term {
    /// `g`
    Grad = 0,
    /// `−g`
    NegGrad = 1,
    /// `g·b`
    GradTimesB = 2,
    /// `g·a`
    GradTimesA = 3,
    /// `g/b`
    GradOverB = 4,
    /// `−g·a/b²`
    QuotientGradB = 5,
}

/// The tensors a [`Term`] reads: `grad` has the full shape, `a` and `b` broadcast into it.
pub(crate) struct Operands<'a> {
    pub grad: &'a Tensor,
    pub a: Option<&'a Tensor>,
    pub b: Option<&'a Tensor>,
}

/// `out = scale · Σ term` over the reduction from `grad`'s shape to `target` (`out`'s element count).
fn reduce_terms(
    term: Term,
    operands: &Operands<'_>,
    target: &[usize],
    scale: f64,
    out: &mut Tensor,
) -> Result<()> {
    if out.numel() == 0 {
        return Ok(());
    }
    let full = operands.grad.shape();
    let shapes: Vec<&[usize]> = [Some(operands.grad), operands.a, operands.b]
        .into_iter()
        .flatten()
        .map(Tensor::shape)
        .collect();
    let plan = layout::reduction(full, target, &shapes);
    if plan.per_output() == 0 {
        // Summing over an empty axis: every output is an empty sum. `out` may hold anything (an `_into`
        // buffer), so it is filled rather than assumed zero.
        return fill(out, 0.0);
    }
    on_device!(out,
        cpu => cpu::reduce_into(term, operands, &plan, scale, out),
        cuda(dev) => cuda::reduce_into(&dev, term, operands, &plan, scale, out),
    )
}

// ---------------------------------------------------------------------------------------------------------
// Scaling, accumulation, constants

/// `s · x` (`s` finite; rounded to f32 for f32/f16/bf16 storage).
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    check_finite_scalar("s", s)?;
    check_float(x, "x")?;
    let mut out = Tensor::zeros(x.shape(), x.dtype(), &x.device())?;
    run_unary(UnaryKernel::Scale(s), x, &mut out)?;
    Ok(out)
}

/// [`scale`] writing into `out` (`x`'s shape, dtype and device; contents never read).
pub fn scale_into(x: &Tensor, s: f64, out: &mut Tensor) -> Result<()> {
    check_finite_scalar("s", s)?;
    check_float(x, "x")?;
    validate::output_like(out, x, x.shape())?;
    run_unary(UnaryKernel::Scale(s), x, out)
}

/// Gradient of [`scale`]: `s · grad_out`.
pub fn scale_backward(grad_out: &Tensor, s: f64) -> Result<Tensor> {
    scale(grad_out, s).map_err(|e| e.for_argument("x", "grad_out"))
}

/// In-place `acc += alpha · x` (gradient accumulation). `acc` and `x` must have one shape, dtype and device;
/// `alpha` must be finite. Computed as `acc + alpha·x` in f32 (f64 for f64) and rounded once into `acc`.
pub fn add_scaled(acc: &mut Tensor, x: &Tensor, alpha: f64) -> Result<()> {
    check_finite_scalar("alpha", alpha)?;
    check_float(acc, "acc")?;
    if x.shape() != acc.shape() {
        return Err(Error::shape(
            "x",
            format!("{:?} (the shape of `acc`)", acc.shape()),
            x.shape(),
        ));
    }
    validate::same_device(&[("acc", acc), ("x", x)])?;
    validate::same_dtype(&[("acc", acc), ("x", x)])?;
    if acc.numel() == 0 {
        return Ok(());
    }
    on_device!(x,
        cpu => cpu::add_scaled(acc, x, alpha),
        cuda(dev) => cuda::add_scaled(&dev, acc, x, alpha),
    )
}

/// Sets every element of `t` to `value` (rounded to the storage dtype; any value, ±∞ and NaN included).
pub fn fill(t: &mut Tensor, value: f64) -> Result<()> {
    check_float(t, "t")?;
    if t.numel() == 0 {
        return Ok(());
    }
    on_device!(t,
        cpu => cpu::fill(t, value),
        cuda(dev) => cuda::fill(&dev, t, value),
    )
}

/// A tensor of `shape` with every element `value` (rounded to `dtype`, which must be a float dtype).
pub fn full(shape: &[usize], value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
    if !dtype.is_float() {
        return Err(Error::DType {
            arg: "dtype".into(),
            expected: "a float dtype (f32, f64, f16, bf16)".into(),
            got: dtype.to_string(),
        });
    }
    let mut t = Tensor::zeros(shape, dtype, device)?;
    if value != 0.0 || value.is_sign_negative() {
        fill(&mut t, value)?;
    }
    Ok(t)
}

// ---------------------------------------------------------------------------------------------------------
// Unary functions

/// A unary function (see the table in the module docs for its derivative and what its backward reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `−x`.
    Neg,
    /// `max(x, 0)` (NaN stays NaN); the gradient at 0 is 0, as PyTorch's.
    Relu,
    /// `1 / (1 + e^−x)`, computed without overflow for large `|x|`.
    Sigmoid,
    /// `e^x`.
    Exp,
    /// Natural logarithm; `−inf` at 0 and NaN below, as PyTorch's.
    Log,
    /// Square root; NaN below 0.
    Sqrt,
    /// `x²`.
    Square,
    /// `|x|`; the gradient at 0 is 0 (`sign(0)`), as PyTorch's.
    Abs,
}

/// Which forward tensor a unary backward reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// Neither (`neg`).
    Nothing,
    /// The forward input `x`.
    Input,
    /// The forward output `y` (cheaper than recomputing `f(x)`).
    Output,
}

impl UnaryOp {
    /// Every unary op, in code order.
    pub const ALL: [UnaryOp; 8] = [
        UnaryOp::Neg,
        UnaryOp::Relu,
        UnaryOp::Sigmoid,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Square,
        UnaryOp::Abs,
    ];

    /// `neg`, `relu`, `sigmoid`, `exp`, `log`, `sqrt`, `square` or `abs`.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Relu => "relu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Square => "square",
            UnaryOp::Abs => "abs",
        }
    }

    /// Parses the names printed by [`UnaryOp::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        UnaryOp::ALL.into_iter().find(|op| op.name() == name)
    }

    /// What [`unary_backward`] needs from the forward pass.
    pub fn saved(self) -> Saved {
        match self {
            UnaryOp::Neg => Saved::Nothing,
            UnaryOp::Relu | UnaryOp::Log | UnaryOp::Square | UnaryOp::Abs => Saved::Input,
            UnaryOp::Sigmoid | UnaryOp::Exp | UnaryOp::Sqrt => Saved::Output,
        }
    }

    /// The code `kernels/elementwise.cu` switches on (`UNARY_*`).
    pub(crate) fn code(self) -> i32 {
        self as i32
    }
}

/// What the unary kernels compute: one of the functions, or a scalar multiple (`scale`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum UnaryKernel {
    Op(UnaryOp),
    Scale(f64),
}

impl UnaryKernel {
    /// The kernel's op code (`UNARY_SCALE` = 8 after the eight functions) and scalar parameter.
    pub(crate) fn code_and_param(self) -> (i32, f64) {
        match self {
            UnaryKernel::Op(op) => (op.code(), 0.0),
            UnaryKernel::Scale(s) => (8, s),
        }
    }
}

/// `f(x)` element-wise for `f` = `op`.
pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    check_float(x, "x")?;
    let mut out = Tensor::zeros(x.shape(), x.dtype(), &x.device())?;
    run_unary(UnaryKernel::Op(op), x, &mut out)?;
    Ok(out)
}

/// [`unary`] writing into `out` (`x`'s shape, dtype and device; contents never read).
pub fn unary_into(op: UnaryOp, x: &Tensor, out: &mut Tensor) -> Result<()> {
    check_float(x, "x")?;
    validate::output_like(out, x, x.shape())?;
    run_unary(UnaryKernel::Op(op), x, out)
}

fn run_unary(kernel: UnaryKernel, x: &Tensor, out: &mut Tensor) -> Result<()> {
    if x.numel() == 0 {
        return Ok(());
    }
    on_device!(x,
        cpu => cpu::unary_into(kernel, x, out),
        cuda(dev) => cuda::unary_into(&dev, kernel, x, out),
    )
}

/// Gradient of [`unary`] with respect to `x`, given `grad_out` and the forward tensor named by
/// [`UnaryOp::saved`]: `input` (`x`) or `output` (`y`); the other may be `None` (both may be for `neg`).
/// Each given tensor must have `grad_out`'s shape, dtype and device.
pub fn unary_backward(
    op: UnaryOp,
    input: Option<&Tensor>,
    output: Option<&Tensor>,
    grad_out: &Tensor,
) -> Result<Tensor> {
    check_float(grad_out, "grad_out")?;
    for (arg, t) in [("input", input), ("output", output)] {
        if let Some(t) = t {
            if t.shape() != grad_out.shape() {
                return Err(Error::shape(
                    arg,
                    format!("{:?} (the shape of `grad_out`)", grad_out.shape()),
                    t.shape(),
                ));
            }
            validate::same_device(&[("grad_out", grad_out), (arg, t)])?;
            validate::same_dtype(&[("grad_out", grad_out), (arg, t)])?;
        }
    }
    let saved = match op.saved() {
        Saved::Nothing => None,
        Saved::Input => Some(input.ok_or_else(|| missing_saved(op, "input", "x"))?),
        Saved::Output => Some(output.ok_or_else(|| missing_saved(op, "output", "y = f(x)"))?),
    };
    let mut out = Tensor::zeros(grad_out.shape(), grad_out.dtype(), &grad_out.device())?;
    if out.numel() == 0 {
        return Ok(out);
    }
    on_device!(grad_out,
        cpu => cpu::unary_backward_into(op, saved, grad_out, &mut out)?,
        cuda(dev) => cuda::unary_backward_into(&dev, op, saved, grad_out, &mut out)?,
    );
    Ok(out)
}

fn missing_saved(op: UnaryOp, arg: &str, what: &str) -> Error {
    Error::invalid(
        arg,
        format!("the backward of `{}` needs the forward {what}", op.name()),
    )
}

/// `−x`.
pub fn neg(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Neg, x)
}

/// `max(x, 0)`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Relu, x)
}

/// `1/(1 + e^{−x})`, without overflow for large `|x|`.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Sigmoid, x)
}

/// `e^x`.
pub fn exp(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Exp, x)
}

/// `ln x` (`−∞` at 0, NaN below).
pub fn log(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Log, x)
}

/// `√x` (NaN below 0).
pub fn sqrt(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Sqrt, x)
}

/// `x²`.
pub fn square(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Square, x)
}

/// `|x|`.
pub fn abs(x: &Tensor) -> Result<Tensor> {
    unary(UnaryOp::Abs, x)
}

/// Gradient of [`neg`]: `−g`.
pub fn neg_backward(grad_out: &Tensor) -> Result<Tensor> {
    unary_backward(UnaryOp::Neg, None, None, grad_out)
}

/// Gradient of [`relu`] from its input: `g·[x > 0]` (0 at `x = 0`).
pub fn relu_backward(x: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    unary_backward(UnaryOp::Relu, Some(x), None, grad_out)
}

/// Gradient of [`sigmoid`] from its output: `g·y·(1 − y)`.
pub fn sigmoid_backward(y: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    unary_backward(UnaryOp::Sigmoid, None, Some(y), grad_out)
}

/// Gradient of [`exp`] from its output: `g·y`.
pub fn exp_backward(y: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    unary_backward(UnaryOp::Exp, None, Some(y), grad_out)
}

/// Gradient of [`log`] from its input: `g/x`.
pub fn log_backward(x: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    unary_backward(UnaryOp::Log, Some(x), None, grad_out)
}

/// Gradient of [`sqrt`] from its output: `g/(2y)`.
pub fn sqrt_backward(y: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    unary_backward(UnaryOp::Sqrt, None, Some(y), grad_out)
}

/// Gradient of [`square`] from its input: `2x·g`.
pub fn square_backward(x: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    unary_backward(UnaryOp::Square, Some(x), None, grad_out)
}

/// Gradient of [`abs`] from its input: `g·sign(x)` (0 at `x = 0`).
pub fn abs_backward(x: &Tensor, grad_out: &Tensor) -> Result<Tensor> {
    unary_backward(UnaryOp::Abs, Some(x), None, grad_out)
}

// ---------------------------------------------------------------------------------------------------------
// Validation

pub(crate) fn check_float(t: &Tensor, arg: &str) -> Result<()> {
    validate::float(t, arg).map(|_| ())
}

/// A broadcasting or reduction operand: a float tensor of rank ≤ 6 with fewer than 2^31 elements.
pub(crate) fn check_indexable(t: &Tensor, arg: &str) -> Result<()> {
    check_float(t, arg)?;
    layout::check_rank(t.shape(), arg)?;
    validate::fits_i32(t.numel(), arg, "the element count")
}

/// Two broadcast operands of one dtype and device; returns the output shape.
fn check_binary(a: &Tensor, b: &Tensor) -> Result<Vec<usize>> {
    check_indexable(a, "a")?;
    check_indexable(b, "b")?;
    validate::same_device(&[("a", a), ("b", b)])?;
    validate::same_dtype(&[("a", a), ("b", b)])?;
    let shape = layout::broadcast_pair(a.shape(), b.shape(), ("a", "b"))?;
    validate::fits_i32(shape.iter().product(), "a", "the broadcast element count")?;
    Ok(shape)
}

/// `x` and a target `shape` it can be summed down to.
fn check_reduce(x: &Tensor, shape: &[usize]) -> Result<()> {
    check_indexable(x, "x")?;
    layout::check_reducible(x.shape(), shape, "shape", "x")
}

/// `shape` must be what `t`'s shape broadcasts to (rank ≤ 6, < 2^31 elements).
fn check_broadcastable(t: &Tensor, arg: &str, shape: &[usize]) -> Result<()> {
    check_indexable(t, arg)?;
    layout::check_rank(shape, "shape")?;
    layout::check_reducible(shape, t.shape(), arg, "the target shape")?;
    validate::fits_i32(shape.iter().product(), "shape", "the element count")
}

fn check_finite_scalar(arg: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(arg, format!("must be finite, got {v}")))
    }
}

/// An upstream gradient: `shape`, and `like`'s dtype and device.
fn check_grad(grad: &Tensor, like: &Tensor, shape: &[usize]) -> Result<()> {
    validate::shape(grad, "grad_out", shape)?;
    validate::same_device(&[("a", like), ("grad_out", grad)])?;
    validate::same_dtype(&[("a", like), ("grad_out", grad)])?;
    Ok(())
}

#[cfg(test)]
mod tests;
