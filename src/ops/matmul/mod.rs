//! Matrix products `C = op(A)·op(B)` (op = optional transpose), single or batched, on the CPU and CUDA.
//!
//! The building block of the similarity, graph-convolution and prototype ops and of the tape's linear
//! layers. Shapes: `A` is `[M, K]` (`[K, M]` with `trans_a`), `B` is `[K, N]` (`[N, K]` with `trans_b`), `C`
//! is `[M, N]`; with a leading batch dimension on both operands, one product per batch entry. Arithmetic is
//! f32 (f64 on the CPU for f64 tensors); every element is summed in ascending `k` by one thread, so results
//! are deterministic on both devices.
//!
//! Backward ([`matmul_backward`]): `dA = G·op(B)ᵀ` and `dB = op(A)ᵀ·G`, transposed back when the operand was
//! used transposed — themselves two products.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// Extents of one (batched) product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

impl Dims {
    fn output_shape(&self, batched: bool) -> Vec<usize> {
        if batched {
            vec![self.batch, self.m, self.n]
        } else {
            vec![self.m, self.n]
        }
    }
}

/// `op(a)·op(b)`; see the module docs for shapes. The result has `a`'s dtype and device.
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let (dims, batched) = check(a, b, trans_a, trans_b)?;
    let device = a.device();
    let shape = dims.output_shape(batched);
    if dims.m * dims.n * dims.batch == 0 {
        return Tensor::zeros(&shape, a.dtype(), &device);
    }
    match &device {
        Device::Cpu => cpu_matmul(a, b, &dims, &shape),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let mut out = Tensor::zeros(&shape, a.dtype(), &device)?;
            cuda::matmul_into(dev, a, b, &dims, 1.0, 0.0, &mut out)?;
            Ok(out)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// [`matmul`] writing into `out`, which must already have the product's shape, dtype and device (its
/// previous contents are ignored, never read).
pub fn matmul_into(
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
    out: &mut Tensor,
) -> Result<()> {
    let (dims, batched) = check(a, b, trans_a, trans_b)?;
    validate::shape(out, "out", &dims.output_shape(batched))?;
    validate::same_device(&[("a", a), ("out", out)])?;
    validate::same_dtype(&[("a", a), ("out", out)])?;
    if out.numel() == 0 {
        return Ok(());
    }
    match &a.device() {
        Device::Cpu => {
            *out = cpu_matmul(a, b, &dims, &dims.output_shape(batched))?;
            Ok(())
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::matmul_into(dev, a, b, &dims, 1.0, 0.0, out),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// Gradients of `C = matmul(a, b, trans_a, trans_b)` given `grad_c`: returns `(dA, dB)`.
pub fn matmul_backward(
    a: &Tensor,
    b: &Tensor,
    grad_c: &Tensor,
    trans_a: bool,
    trans_b: bool,
) -> Result<(Tensor, Tensor)> {
    let (dims, batched) = check(a, b, trans_a, trans_b)?;
    validate::shape(grad_c, "grad_c", &dims.output_shape(batched))?;
    let grad_a = if trans_a {
        matmul(b, grad_c, trans_b, true)?
    } else {
        matmul(grad_c, b, false, !trans_b)?
    };
    let grad_b = if trans_b {
        matmul(grad_c, a, true, trans_a)?
    } else {
        matmul(a, grad_c, !trans_a, false)?
    };
    Ok((grad_a, grad_b))
}

/// Validates operands; returns the product's extents and whether it is batched.
fn check(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<(Dims, bool)> {
    validate::same_device(&[("a", a), ("b", b)])?;
    validate::float(a, "a")?;
    validate::same_dtype(&[("a", a), ("b", b)])?;
    let batched = match (a.rank(), b.rank()) {
        (2, 2) => false,
        (3, 3) => true,
        _ => {
            return Err(Error::invalid(
                "b",
                format!(
                    "expected two matrices or two batches of matrices, got shapes {:?} and {:?}",
                    a.shape(),
                    b.shape()
                ),
            ))
        }
    };
    let (sa, sb) = if batched {
        (&a.shape()[1..], &b.shape()[1..])
    } else {
        (a.shape(), b.shape())
    };
    let batch = if batched { a.shape()[0] } else { 1 };
    if batched && b.shape()[0] != batch {
        return Err(Error::shape(
            "b",
            format!("a batch of {batch} matrices"),
            b.shape(),
        ));
    }
    let (m, k) = if trans_a {
        (sa[1], sa[0])
    } else {
        (sa[0], sa[1])
    };
    let (kb, n) = if trans_b {
        (sb[1], sb[0])
    } else {
        (sb[0], sb[1])
    };
    if k != kb {
        return Err(Error::shape(
            "b",
            format!(
                "{} with {k} rows to match a's {k} columns (a{} is {m}x{k})",
                if trans_b {
                    "a transposed operand"
                } else {
                    "an operand"
                },
                if trans_a { "ᵀ" } else { "" }
            ),
            b.shape(),
        ));
    }
    for (v, what) in [(m, "M"), (n, "N"), (k, "K")] {
        validate::fits_i32(v, "a", what)?;
    }
    // The CUDA grid has ceil(M/64) blocks in y, at most 65535.
    if m.div_ceil(64) > u16::MAX as usize {
        return Err(Error::invalid(
            "a",
            format!("M = {m} exceeds 65535·64 rows"),
        ));
    }
    if batch > u16::MAX as usize {
        return Err(Error::invalid("a", format!("batch {batch} exceeds 65535")));
    }
    Ok((
        Dims {
            batch,
            m,
            n,
            k,
            trans_a,
            trans_b,
        },
        batched,
    ))
}

fn cpu_matmul(a: &Tensor, b: &Tensor, dims: &Dims, shape: &[usize]) -> Result<Tensor> {
    let dtype = a.dtype();
    if dtype == DType::F64 {
        let c = cpu::matmul::<f64>(&a.host_values()?, &b.host_values()?, dims);
        return Tensor::from_vec(c, shape);
    }
    let c = cpu::matmul::<f32>(&a.host_values()?, &b.host_values()?, dims);
    Tensor::from_vec(c, shape)?.into_dtype(dtype)
}

#[cfg(test)]
mod tests;
