//! Host-side input checks shared by every op. Each returns an [`Error`] naming the argument, what was
//! expected and what was given; ops call them before touching data or launching anything.

use super::loss::Reduction;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// `t` must have rank `rank`; `layout` describes it in the message, e.g. `"[N, C]"`.
pub(crate) fn rank(t: &Tensor, arg: &str, rank: usize, layout: &str) -> Result<()> {
    if t.rank() == rank {
        Ok(())
    } else {
        Err(Error::shape(arg, layout, t.shape()))
    }
}

/// `t` must have exactly `shape`.
pub(crate) fn shape(t: &Tensor, arg: &str, shape: &[usize]) -> Result<()> {
    if t.shape() == shape {
        Ok(())
    } else {
        Err(Error::shape(arg, format!("{shape:?}"), t.shape()))
    }
}

/// `t` must hold floats (f32, f64, f16, bf16); returns the dtype.
pub(crate) fn float(t: &Tensor, arg: &str) -> Result<DType> {
    if t.dtype().is_float() {
        Ok(t.dtype())
    } else {
        Err(Error::DType {
            arg: arg.into(),
            expected: "a float dtype (f32, f64, f16, bf16)".into(),
            got: t.dtype().to_string(),
        })
    }
}

/// `t` must have dtype `dtype`.
pub(crate) fn dtype(t: &Tensor, arg: &str, dtype: DType) -> Result<()> {
    if t.dtype() == dtype {
        Ok(())
    } else {
        Err(Error::DType {
            arg: arg.into(),
            expected: dtype.to_string(),
            got: t.dtype().to_string(),
        })
    }
}

/// All tensors must be on one device; returns it. The first tensor sets the expectation.
pub(crate) fn same_device(tensors: &[(&str, &Tensor)]) -> Result<Device> {
    let device = tensors
        .first()
        .map(|(_, t)| t.device())
        .ok_or_else(|| Error::invalid("inputs", "expected at least one tensor"))?;
    for (arg, t) in &tensors[1..] {
        if t.device() != device {
            return Err(Error::Device {
                arg: (*arg).into(),
                expected: device.to_string(),
                got: t.device().to_string(),
            });
        }
    }
    Ok(device)
}

/// All tensors must share one dtype; returns it.
pub(crate) fn same_dtype(tensors: &[(&str, &Tensor)]) -> Result<DType> {
    let dtype = tensors
        .first()
        .map(|(_, t)| t.dtype())
        .ok_or_else(|| Error::invalid("inputs", "expected at least one tensor"))?;
    for (arg, t) in &tensors[1..] {
        self::dtype(t, arg, dtype)?;
    }
    Ok(dtype)
}

/// Every value must be finite; the message gives the first offending index.
#[allow(dead_code)] // for ops with finite-valued inputs (targets, boxes, adjacency)
pub(crate) fn finite(values: &[f64], arg: &str) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::invalid(
            arg,
            format!("values must be finite, element {i} is {}", values[i]),
        )),
    }
}

/// A size the kernels index with `int` must be below 2^31.
pub(crate) fn fits_i32(n: usize, arg: &str, what: &str) -> Result<()> {
    if n <= i32::MAX as usize {
        Ok(())
    } else {
        Err(Error::invalid(
            arg,
            format!("{what} = {n} exceeds 2^31 - 1"),
        ))
    }
}

/// The upstream gradient of a loss over `rows` rows: `[rows]` for reduction `none`, else a scalar (`[]` or
/// `[1]`), with the loss's dtype and device.
pub(crate) fn loss_grad_out(
    grad_out: &Tensor,
    reduction: Reduction,
    rows: usize,
    dtype: DType,
    device: &Device,
) -> Result<()> {
    let ok = match reduction {
        Reduction::None => grad_out.shape() == [rows],
        _ => grad_out.shape().is_empty() || grad_out.shape() == [1],
    };
    if !ok {
        let expected = match reduction {
            Reduction::None => format!("[{rows}] (one per row, reduction `none`)"),
            r => format!("[] or [1] (a scalar, reduction `{}`)", r.name()),
        };
        return Err(Error::shape("grad_out", expected, grad_out.shape()));
    }
    self::dtype(grad_out, "grad_out", dtype)?;
    if grad_out.device() != *device {
        return Err(Error::Device {
            arg: "grad_out".into(),
            expected: device.to_string(),
            got: grad_out.device().to_string(),
        });
    }
    Ok(())
}

/// An output buffer (caller-provided or freshly made) must have `shape`, `dtype` and `device`.
pub(crate) fn output(
    t: &Tensor,
    arg: &str,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<()> {
    self::shape(t, arg, shape)?;
    if t.dtype() != dtype || t.device() != *device {
        return Err(Error::invalid(
            arg,
            format!(
                "expected {dtype} on {device}, got {} on {}",
                t.dtype(),
                t.device()
            ),
        ));
    }
    Ok(())
}

/// An output buffer `out` must have `shape`, and `like`'s dtype and device.
pub(crate) fn output_like(out: &Tensor, like: &Tensor, shape: &[usize]) -> Result<()> {
    output(out, "out", shape, like.dtype(), &like.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_argument_expectation_and_value() {
        let t = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
        let i = Tensor::from_vec(vec![1i64, 2], &[2]).unwrap();
        let e = rank(&t, "logits", 2, "[N, C]").unwrap_err().to_string();
        assert_eq!(e, "`logits`: expected shape [N, C], got [2]");
        let e = shape(&t, "x", &[3]).unwrap_err().to_string();
        assert_eq!(e, "`x`: expected shape [3], got [2]");
        let e = float(&i, "logits").unwrap_err().to_string();
        assert!(e.contains("`logits`") && e.contains("got i64"), "{e}");
        let e = same_dtype(&[("a", &t), ("b", &i)]).unwrap_err().to_string();
        assert_eq!(e, "`b`: expected dtype f32, got i64");
        assert!(same_device(&[("a", &t), ("b", &i)]).is_ok());
        let e = finite(&[0.0, f64::NAN], "boxes").unwrap_err().to_string();
        assert!(e.contains("element 1 is NaN"), "{e}");
        assert!(fits_i32(1 << 31, "n", "rows").is_err());
        assert!(fits_i32((1 << 31) - 1, "n", "rows").is_ok());
    }
}
