//! CPU reference of the optimizer updates: the same per-element formulas as kernels/optim.cu, in f32
//! (f64 for f64 parameters), one element at a time in index order.

use super::{AdamWCoefficients, SgdCoefficients};
use crate::error::Result;
use crate::tensor::{DType, HostElement, Real, Tensor};
use half::{bf16, f16};

/// Calls `$body` with `$p` (the parameter's element type) and `$s` (the state/compute type) bound to the
/// types of `param`'s dtype.
macro_rules! by_dtype {
    ($param:expr, |$p:ident, $s:ident| $body:expr) => {
        match $param.dtype() {
            DType::F32 => {
                type $p = f32;
                type $s = f32;
                $body
            }
            DType::F64 => {
                type $p = f64;
                type $s = f64;
                $body
            }
            DType::F16 => {
                type $p = f16;
                type $s = f32;
                $body
            }
            DType::BF16 => {
                type $p = bf16;
                type $s = f32;
                $body
            }
            DType::I64 => unreachable!("validated: parameters are floats"),
        }
    };
}

fn cast<S: Real>(v: f64) -> S {
    S::from_f64(v)
}

pub(super) fn sgd_step(
    param: &mut Tensor,
    grad: &Tensor,
    buffer: Option<&mut Tensor>,
    c: &SgdCoefficients,
) -> Result<()> {
    by_dtype!(param, |P, S| sgd_typed::<P, S>(param, grad, buffer, c))
}

fn sgd_typed<P: HostElement, S: Real + HostElement>(
    param: &mut Tensor,
    grad: &Tensor,
    buffer: Option<&mut Tensor>,
    c: &SgdCoefficients,
) -> Result<()> {
    let (lr, mu, keep, wd) = (
        cast::<S>(c.lr),
        cast::<S>(c.momentum),
        cast::<S>(c.one_minus_dampening),
        cast::<S>(c.weight_decay),
    );
    let grad = grad.as_slice::<P>()?;
    let mut buffer = match buffer {
        Some(b) => Some(b.as_mut_slice::<S>()?),
        None => None,
    };
    let param = param.as_mut_slice::<P>()?;
    for i in 0..param.len() {
        let p = S::from_f64(param[i].to_f64());
        let mut g = S::from_f64(grad[i].to_f64()) + wd * p;
        if let Some(buf) = buffer.as_deref_mut() {
            let b = if c.first_step {
                g
            } else {
                mu * buf[i] + keep * g
            };
            buf[i] = b;
            g = if c.nesterov { g + mu * b } else { b };
        }
        param[i] = P::from_f64((p - lr * g).to_f64());
    }
    Ok(())
}

pub(super) fn adamw_step(
    param: &mut Tensor,
    grad: &Tensor,
    exp_avg: &mut Tensor,
    exp_avg_sq: &mut Tensor,
    c: &AdamWCoefficients,
) -> Result<()> {
    by_dtype!(param, |P, S| adamw_typed::<P, S>(
        param, grad, exp_avg, exp_avg_sq, c
    ))
}

fn adamw_typed<P: HostElement, S: Real + HostElement>(
    param: &mut Tensor,
    grad: &Tensor,
    exp_avg: &mut Tensor,
    exp_avg_sq: &mut Tensor,
    c: &AdamWCoefficients,
) -> Result<()> {
    let decay = cast::<S>(c.decay);
    let (w1, b2, w2, eps) = (
        cast::<S>(c.one_minus_beta1),
        cast::<S>(c.beta2),
        cast::<S>(c.one_minus_beta2),
        cast::<S>(c.eps),
    );
    let (step_size, bc2_sqrt) = (cast::<S>(c.step_size), cast::<S>(c.bias_correction2_sqrt));
    let grad = grad.as_slice::<P>()?;
    let m = exp_avg.as_mut_slice::<S>()?;
    let v = exp_avg_sq.as_mut_slice::<S>()?;
    let param = param.as_mut_slice::<P>()?;
    for i in 0..param.len() {
        let g = S::from_f64(grad[i].to_f64());
        let p = S::from_f64(param[i].to_f64()) * decay;
        m[i] = m[i] + w1 * (g - m[i]);
        v[i] = b2 * v[i] + w2 * g * g;
        let denom = v[i].sqrt() / bc2_sqrt + eps;
        param[i] = P::from_f64((p - step_size * (m[i] / denom)).to_f64());
    }
    Ok(())
}

pub(super) fn squared_norm(x: &Tensor) -> f64 {
    by_dtype!(x, |P, S| squared_norm_typed::<P, S>(x))
}

fn squared_norm_typed<P: HostElement, S: Real>(x: &Tensor) -> f64 {
    // Validated: a float host tensor, so the slice exists.
    let values = x.as_slice::<P>().unwrap_or(&[]);
    values
        .iter()
        .fold(S::zero(), |acc, v| {
            let v = S::from_f64(v.to_f64());
            acc + v * v
        })
        .to_f64()
}

pub(super) fn scale_in_place(x: &mut Tensor, s: f64) -> Result<()> {
    by_dtype!(x, |P, S| scale_typed::<P, S>(x, s))
}

fn scale_typed<P: HostElement, S: Real>(x: &mut Tensor, s: f64) -> Result<()> {
    let s = cast::<S>(s);
    for v in x.as_mut_slice::<P>()? {
        *v = P::from_f64((S::from_f64(v.to_f64()) * s).to_f64());
    }
    Ok(())
}
