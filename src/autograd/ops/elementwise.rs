use super::scalar_value;
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::elementwise::{self as ew, BinaryOp, UnaryOp};
use crate::ops::{reduce, softmax};
use crate::tensor::Tensor;
use std::rc::Rc;

impl Tape {
    fn binary(&self, op: BinaryOp, name: &'static str, a: Var, b: Var) -> Result<Var> {
        let (av, bv) = (self.value(a)?, self.value(b)?);
        let out = ew::binary(op, &av, &bv)?;
        self.record(name, &[a, b], out, move |g| {
            let grads = ew::binary_backward(op, &av, &bv, g)?;
            Ok(vec![Some(grads.grad_a), Some(grads.grad_b)])
        })
    }

    /// `a + b` with NumPy broadcasting; each gradient is reduced back to its operand's shape.
    pub fn add(&self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Add, "add", a, b)
    }

    /// `a − b` with broadcasting.
    pub fn sub(&self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Sub, "sub", a, b)
    }

    /// `a ⊙ b` with broadcasting (masks, weights, gates).
    pub fn mul(&self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Mul, "mul", a, b)
    }

    /// `a / b` with broadcasting.
    pub fn div(&self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Div, "div", a, b)
    }

    /// `s · x` for a host scalar `s` (loss weights).
    pub fn scale(&self, x: Var, s: f64) -> Result<Var> {
        let out = ew::scale(&*self.value(x)?, s)?;
        self.record("scale", &[x], out, move |g| {
            Ok(vec![Some(ew::scale_backward(g, s)?)])
        })
    }

    /// `x` broadcast to `shape`; the gradient is summed back.
    pub fn broadcast_to(&self, x: Var, shape: &[usize]) -> Result<Var> {
        let xv = self.value(x)?;
        let out = ew::broadcast_to(&xv, shape)?;
        self.record("broadcast_to", &[x], out, move |g| {
            Ok(vec![Some(ew::sum_to_shape(g, xv.shape())?)])
        })
    }

    fn unary(&self, op: UnaryOp, name: &'static str, x: Var) -> Result<Var> {
        let xv = self.value(x)?;
        let out = Rc::new(ew::unary(op, &xv)?);
        let saved_out = out.clone();
        self.record(name, &[x], out, move |g| {
            Ok(vec![Some(ew::unary_backward(
                op,
                Some(&xv),
                Some(&saved_out),
                g,
            )?)])
        })
    }

    /// `−x`.
    pub fn neg(&self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Neg, "neg", x)
    }

    /// `max(x, 0)`; gradient 0 at 0.
    pub fn relu(&self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Relu, "relu", x)
    }

    /// `σ(x)`.
    pub fn sigmoid(&self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Sigmoid, "sigmoid", x)
    }

    /// `eˣ`.
    pub fn exp(&self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Exp, "exp", x)
    }

    /// `ln x`.
    pub fn log(&self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Log, "log", x)
    }

    /// `√x`.
    pub fn sqrt(&self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Sqrt, "sqrt", x)
    }

    /// `x²`.
    pub fn square(&self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Square, "square", x)
    }

    /// `|x|`; gradient 0 at 0.
    pub fn abs(&self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Abs, "abs", x)
    }

    /// The sum of every element, shape `[]` (f32 for half storage).
    pub fn sum_all(&self, x: Var) -> Result<Var> {
        let xv = self.value(x)?;
        let out = reduce::sum_all(&xv)?;
        self.record("sum_all", &[x], out, move |g| {
            Ok(vec![Some(reduce::sum_all_backward(&xv, g)?)])
        })
    }

    /// The mean of every element, shape `[]` (NaN for an empty tensor, as `torch.mean`).
    pub fn mean_all(&self, x: Var) -> Result<Var> {
        let xv = self.value(x)?;
        let out = reduce::mean_all(&xv)?;
        self.record("mean_all", &[x], out, move |g| {
            Ok(vec![Some(reduce::mean_all_backward(&xv, g)?)])
        })
    }

    /// Sums over `axes` (negative counts from the end).
    pub fn sum_axes(&self, x: Var, axes: &[isize], keepdim: bool) -> Result<Var> {
        let xv = self.value(x)?;
        let out = reduce::sum_axes(&xv, axes, keepdim)?;
        let axes = axes.to_vec();
        self.record("sum_axes", &[x], out, move |g| {
            Ok(vec![Some(reduce::sum_axes_backward(
                &xv, &axes, keepdim, g,
            )?)])
        })
    }

    /// Means over `axes`.
    pub fn mean_axes(&self, x: Var, axes: &[isize], keepdim: bool) -> Result<Var> {
        let xv = self.value(x)?;
        let out = reduce::mean_axes(&xv, axes, keepdim)?;
        let axes = axes.to_vec();
        self.record("mean_axes", &[x], out, move |g| {
            Ok(vec![Some(reduce::mean_axes_backward(
                &xv, &axes, keepdim, g,
            )?)])
        })
    }

    /// The maximum over the last axis and its (first) position; the gradient goes to that position.
    pub fn max_last_axis(&self, x: Var) -> Result<(Var, Rc<Tensor>)> {
        let xv = self.value(x)?;
        let reduce::MaxLastAxis { values, indices } = reduce::max_last_axis(&xv)?;
        let indices = Rc::new(indices);
        let saved = indices.clone();
        let v = self.record("max_last_axis", &[x], values, move |g| {
            Ok(vec![Some(reduce::max_last_axis_backward(&xv, &saved, g)?)])
        })?;
        Ok((v, indices))
    }

    /// `softmax(x / T)` over the last axis.
    pub fn softmax(&self, x: Var, temperature: f64) -> Result<Var> {
        let out = Rc::new(softmax::softmax_last_axis(&*self.value(x)?, temperature)?);
        let saved = out.clone();
        self.record("softmax", &[x], out, move |g| {
            Ok(vec![Some(softmax::softmax_last_axis_backward(
                &saved,
                g,
                temperature,
            )?)])
        })
    }

    /// `log_softmax(x / T)` over the last axis.
    pub fn log_softmax(&self, x: Var, temperature: f64) -> Result<Var> {
        let out = Rc::new(softmax::log_softmax_last_axis(
            &*self.value(x)?,
            temperature,
        )?);
        let saved = out.clone();
        self.record("log_softmax", &[x], out, move |g| {
            Ok(vec![Some(softmax::log_softmax_last_axis_backward(
                &saved,
                g,
                temperature,
            )?)])
        })
    }

    /// `mean((a − b)²)` over all elements (`F.mse_loss`).
    pub fn mse_loss(&self, a: Var, b: Var) -> Result<Var> {
        let d = self.sub(a, b)?;
        let sq = self.square(d)?;
        self.mean_all(sq)
    }

    /// The Frobenius norm `‖x‖_F = √Σx²` (`torch.dist(a, b, p=2)` of a difference), shape `[]`; its
    /// gradient is `x / ‖x‖_F`, and 0 at `x = 0` (where `√` has no derivative), as spec'd for DRKD.
    pub fn frobenius_norm(&self, x: Var) -> Result<Var> {
        let xv = self.value(x)?;
        let sq = ew::square(&xv)?;
        let total = reduce::sum_all(&sq)?;
        let norm = ew::sqrt(&total)?;
        let norm_value = scalar_value(&norm, "norm")?;
        self.record("frobenius_norm", &[x], norm, move |g| {
            let upstream = scalar_value(g, "grad_norm")?;
            let s = if norm_value > 0.0 {
                upstream / norm_value
            } else {
                0.0
            };
            Ok(vec![Some(ew::scale(&xv, s)?)])
        })
    }
}
