//! Shape and indexing ops: permute / transpose, narrow, concat / split and index_select, with their
//! backward passes — the glue between the numeric ops when gradients flow through reshaped, sliced,
//! joined or gathered tensors. CPU reference and CUDA kernels (kernels/shape.cu).
//!
//! Tensors are dense and row-major. The forward ops move data only, so they accept every dtype a device
//! holds (f32, f16, bf16 and i64 on both; f64 on the CPU): labels and index lists can be permuted,
//! sliced, joined and gathered like features. Their results are exact — bit for bit the input elements,
//! NaN payloads and signed zeros included — and CUDA agrees with the CPU bitwise. The backward entries
//! take float gradients. Only [`index_select_backward`] adds numbers; it does so in one fixed order (see
//! there), so it too is bitwise reproducible and bitwise equal on both devices.
//!
//! # Formulas
//!
//! With `x` of shape `[d_0, …, d_{r−1}]`:
//!
//! - [`permute`]`(x, p)`: `y[i_0, …, i_{r−1}] = x[j]` with `j_{p[k]} = i_k`; `y.shape[k] = x.shape[p[k]]`
//!   (PyTorch's `x.permute(p)`). Backward: `dx = permute(dy, p⁻¹)`. [`transpose`]`(x, a, b)` is the
//!   permutation swapping axes `a` and `b`, its own inverse. Rank ≤ [`MAX_RANK`].
//! - [`narrow`]`(x, axis, start, len)`: `y[…, i, …] = x[…, start + i, …]` for `i < len` along `axis`.
//!   Backward ([`narrow_backward`]): `dx` is zero except `dx[…, start + i, …] = dy[…, i, …]`.
//! - [`concat`](fn@concat)`([x_0, …, x_{n−1}], axis)`: the parts laid end to end along `axis` (all other
//!   extents equal). Backward ([`concat_backward`]): `dy` split back into the parts' extents. [`split`] is
//!   the converse, and [`split_backward`] is a concat.
//! - [`index_select`]`(x, axis, idx)` with `idx` an i64 list `[M]`: `y[…, m, …] = x[…, idx[m], …]`
//!   (`torch.index_select`). Backward: `dx[…, d, …] = Σ_{m : idx[m] = d} dy[…, m, …]`.
//!
//! # Validation
//!
//! Every entry checks on the host before touching data: permutations (length = rank, entries in range,
//! each axis once), axes in range, slices inside their axis, concat parts agreeing off the concat axis
//! (the message names the part and the axis), index lists (rank 1, dtype i64, every entry in
//! `[0, extent)`: the message gives the first bad position and value), gradient shapes, dtypes and
//! devices, output buffers of `_into` entries. An empty result returns without a launch.
//!
//! # CUDA
//!
//! The data-movement kernels are instantiated per element width and copy bit patterns. A permutation is
//! first collapsed (unit axes dropped, axes that stay adjacent merged); one that moves the innermost axis
//! runs as a batched transpose through 32 × 32 shared-memory tiles (coalesced loads and stores), any other
//! as one thread per element. Narrow, concat, split and narrow's backward are strided row copies. Results
//! of the allocating entries are written in full by their launch, so they skip the zero-fill.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod plan;

use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};
use plan::{around_axis, Collapsed, Gather, InverseIndex, RowCopy};

/// The highest rank [`permute`] and [`transpose`] accept (the CUDA kernels hold coordinates in fixed
/// arrays of this size; detection tensors are at most 5-D). The other ops view tensors as
/// `[outer, extent, inner]` around their axis and take any rank.
pub const MAX_RANK: usize = 6;

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

// ---------------------------------------------------------------------------------------------------------
// Permute and transpose

/// `x.permute(perm)`: output axis `k` is input axis `perm[k]` (see the module docs). Any dtype; rank ≤
/// [`MAX_RANK`].
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let shape = check_permutation(x, "x", perm)?;
    let mut out = new_output(&shape, x.dtype(), &x.device())?;
    permute_into(x, perm, &mut out)?;
    Ok(out)
}

/// [`permute`] writing into `out` (the permuted shape, `x`'s dtype and device; its contents are never
/// read, every element is written).
pub fn permute_into(x: &Tensor, perm: &[usize], out: &mut Tensor) -> Result<()> {
    let shape = check_permutation(x, "x", perm)?;
    validate::output_like(out, x, &shape)?;
    if out.numel() == 0 {
        return Ok(());
    }
    let collapsed = Collapsed::new(x.shape(), perm);
    on_device!(x,
        cpu => {
            *out = cpu::permute(x, &collapsed, &shape)?;
            Ok(())
        },
        cuda(dev) => cuda::permute_into(&dev, x, &plan::PermuteLaunch::new(&collapsed), out),
    )
}

/// Gradient of [`permute`]: `dx = permute(grad_out, perm⁻¹)`, for a float `grad_out` of the permuted
/// shape.
pub fn permute_backward(grad_out: &Tensor, perm: &[usize]) -> Result<Tensor> {
    validate::float(grad_out, "grad_out")?;
    check_permutation(grad_out, "grad_out", perm)?;
    permute(grad_out, &inverse_permutation(perm)?)
}

/// The inverse `q` of a permutation `p` of `0..p.len()`: `q[p[k]] = k`.
pub fn inverse_permutation(perm: &[usize]) -> Result<Vec<usize>> {
    check_perm_entries(perm, perm.len())?;
    let mut inverse = vec![0; perm.len()];
    for (k, &a) in perm.iter().enumerate() {
        inverse[a] = k;
    }
    Ok(inverse)
}

/// `x.transpose(a, b)`: [`permute`] by the permutation that swaps axes `a` and `b` (`a = b` is a copy).
pub fn transpose(x: &Tensor, a: usize, b: usize) -> Result<Tensor> {
    permute(x, &swap_permutation(x, "x", a, b)?)
}

/// Gradient of [`transpose`]: the same swap applied to `grad_out` (a swap is its own inverse).
pub fn transpose_backward(grad_out: &Tensor, a: usize, b: usize) -> Result<Tensor> {
    validate::float(grad_out, "grad_out")?;
    transpose(grad_out, a, b)
}

fn swap_permutation(x: &Tensor, arg: &str, a: usize, b: usize) -> Result<Vec<usize>> {
    check_rank_limit(x, arg)?;
    for (name, axis) in [("a", a), ("b", b)] {
        check_axis(x, arg, name, axis)?;
    }
    let mut perm: Vec<usize> = (0..x.rank()).collect();
    perm.swap(a, b);
    Ok(perm)
}

/// Checks `perm` against `t` and returns the permuted shape.
fn check_permutation(t: &Tensor, arg: &str, perm: &[usize]) -> Result<Vec<usize>> {
    check_rank_limit(t, arg)?;
    if perm.len() != t.rank() {
        return Err(Error::invalid(
            "perm",
            format!(
                "expected a permutation of the {} axes of `{arg}` (shape {:?}), got {perm:?} with {} entries",
                t.rank(),
                t.shape(),
                perm.len()
            ),
        ));
    }
    check_perm_entries(perm, t.rank())?;
    Ok(perm.iter().map(|&a| t.shape()[a]).collect())
}

/// Every entry of `perm` in `[0, rank)` and no axis twice.
fn check_perm_entries(perm: &[usize], rank: usize) -> Result<()> {
    let mut seen_at = vec![usize::MAX; rank];
    for (k, &a) in perm.iter().enumerate() {
        if a >= rank {
            return Err(Error::invalid(
                "perm",
                format!("expected a permutation of 0..{rank}, got {perm:?}: entry {k} is {a}, not an axis"),
            ));
        }
        if seen_at[a] != usize::MAX {
            return Err(Error::invalid(
                "perm",
                format!(
                    "expected a permutation of 0..{rank}, got {perm:?}: axis {a} appears twice (entries {} and {k})",
                    seen_at[a]
                ),
            ));
        }
        seen_at[a] = k;
    }
    Ok(())
}

fn check_rank_limit(t: &Tensor, arg: &str) -> Result<()> {
    if t.rank() <= MAX_RANK {
        Ok(())
    } else {
        Err(Error::shape(
            arg,
            format!("a tensor of rank at most {MAX_RANK}"),
            t.shape(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Narrow

/// `x.narrow(axis, start, len)`: elements `start .. start + len` along `axis` (see the module docs). Any
/// dtype; `len = 0` gives an empty tensor.
pub fn narrow(x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    let shape = check_slice(x.shape(), "x", axis, start, len)?;
    let mut out = new_output(&shape, x.dtype(), &x.device())?;
    narrow_into(x, axis, start, len, &mut out)?;
    Ok(out)
}

/// [`narrow`] writing into `out` (`x`'s shape with `len` on `axis`, `x`'s dtype and device).
pub fn narrow_into(
    x: &Tensor,
    axis: usize,
    start: usize,
    len: usize,
    out: &mut Tensor,
) -> Result<()> {
    let shape = check_slice(x.shape(), "x", axis, start, len)?;
    validate::output_like(out, x, &shape)?;
    if out.numel() == 0 {
        return Ok(());
    }
    let (outer, extent, inner) = around_axis(x.shape(), axis);
    copy_rows_into(
        &[(x, RowCopy::slice(outer, extent, inner, start, len))],
        out,
    )
}

/// Gradient of [`narrow`]: a zero tensor of `input_shape` with the float `grad_out`
/// (`input_shape` with the slice's length on `axis`) written at `start` along `axis`.
pub fn narrow_backward(
    grad_out: &Tensor,
    input_shape: &[usize],
    axis: usize,
    start: usize,
) -> Result<Tensor> {
    check_narrow_grad(grad_out, input_shape, axis, start)?;
    let mut out = new_output(input_shape, grad_out.dtype(), &grad_out.device())?;
    narrow_backward_into(grad_out, axis, start, &mut out)?;
    Ok(out)
}

/// [`narrow_backward`] writing into `out`, whose shape is the forward's input shape (`grad_out`'s dtype
/// and device). Every element of `out` is written: the zeros too.
pub fn narrow_backward_into(
    grad_out: &Tensor,
    axis: usize,
    start: usize,
    out: &mut Tensor,
) -> Result<()> {
    let input_shape = out.shape().to_vec();
    check_narrow_grad(grad_out, &input_shape, axis, start)?;
    validate::output_like(out, grad_out, &input_shape)?;
    if out.numel() == 0 {
        return Ok(());
    }
    let (outer, extent, inner) = around_axis(&input_shape, axis);
    let copy = RowCopy::place(outer, extent, inner, start, grad_out.shape()[axis]);
    on_device!(grad_out,
        cpu => {
            *out = cpu::pad_rows(grad_out, copy, &input_shape)?;
            Ok(())
        },
        cuda(dev) => cuda::pad_rows_into(&dev, grad_out, copy, out),
    )
}

/// `shape` narrowed to `[start, start + len)` on `axis`, after checking that the slice lies inside it.
fn check_slice(
    shape: &[usize],
    arg: &str,
    axis: usize,
    start: usize,
    len: usize,
) -> Result<Vec<usize>> {
    check_axis_of(shape, arg, "axis", axis)?;
    let extent = shape[axis];
    if start > extent {
        return Err(Error::invalid(
            "start",
            format!(
                "{start} is past the end of axis {axis} of `{arg}` (shape {shape:?}, extent {extent})"
            ),
        ));
    }
    if len > extent - start {
        return Err(Error::invalid(
            "len",
            format!(
                "the slice [{start}, {start} + {len}) runs past the end of axis {axis} of `{arg}` \
                 (shape {shape:?}, extent {extent})"
            ),
        ));
    }
    let mut out = shape.to_vec();
    out[axis] = len;
    Ok(out)
}

fn check_narrow_grad(
    grad_out: &Tensor,
    input_shape: &[usize],
    axis: usize,
    start: usize,
) -> Result<()> {
    validate::float(grad_out, "grad_out")?;
    check_axis_of(input_shape, "input_shape", "axis", axis)?;
    if grad_out.rank() != input_shape.len() {
        return Err(Error::shape(
            "grad_out",
            format!(
                "rank {} (as `input_shape` {input_shape:?})",
                input_shape.len()
            ),
            grad_out.shape(),
        ));
    }
    let len = grad_out.shape()[axis];
    let expected = check_slice(input_shape, "input_shape", axis, start, len)?;
    validate::shape(grad_out, "grad_out", &expected)
}

// ---------------------------------------------------------------------------------------------------------
// Concat and split

/// `torch.cat(parts, axis)`: the parts laid end to end along `axis`. All parts share rank, dtype and
/// device, and every extent off `axis`; any dtype; parts may be empty along `axis`.
pub fn concat(parts: &[&Tensor], axis: usize) -> Result<Tensor> {
    let shape = check_concat(parts, axis)?;
    let mut out = new_output(&shape, parts[0].dtype(), &parts[0].device())?;
    concat_into(parts, axis, &mut out)?;
    Ok(out)
}

/// [`concat`](fn@concat) writing into `out` (the joined shape, the parts' dtype and device).
pub fn concat_into(parts: &[&Tensor], axis: usize, out: &mut Tensor) -> Result<()> {
    let shape = check_concat(parts, axis)?;
    validate::output_like(out, parts[0], &shape)?;
    if out.numel() == 0 {
        return Ok(());
    }
    let (outer, total, inner) = around_axis(&shape, axis);
    let mut copies = Vec::with_capacity(parts.len());
    let mut start = 0;
    for part in parts {
        let len = part.shape()[axis];
        copies.push((*part, RowCopy::place(outer, total, inner, start, len)));
        start += len;
    }
    copy_rows_into(&copies, out)
}

/// Gradient of [`concat`](fn@concat): `grad_out` (float, the joined shape) split along `axis` into the parts'
/// extents `sizes` (the same as [`split`]).
pub fn concat_backward(grad_out: &Tensor, axis: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
    validate::float(grad_out, "grad_out")?;
    split(grad_out, axis, sizes)
}

/// `torch.split(x, sizes, axis)`: consecutive pieces of `x` along `axis` with extents `sizes` (which must
/// sum to the extent of `axis`; zeros give empty pieces). Any dtype.
pub fn split(x: &Tensor, axis: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
    check_axis(x, "x", "axis", axis)?;
    let total = sizes
        .iter()
        .try_fold(0usize, |s, &n| s.checked_add(n))
        .filter(|&s| s == x.shape()[axis]);
    if total.is_none() {
        return Err(Error::invalid(
            "sizes",
            format!(
                "expected extents summing to {} (axis {axis} of `x`, shape {:?}), got {sizes:?}",
                x.shape()[axis],
                x.shape()
            ),
        ));
    }
    let (outer, extent, inner) = around_axis(x.shape(), axis);
    let mut pieces = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for &len in sizes {
        let mut shape = x.shape().to_vec();
        shape[axis] = len;
        let mut piece = new_output(&shape, x.dtype(), &x.device())?;
        if piece.numel() > 0 {
            let copy = RowCopy::slice(outer, extent, inner, start, len);
            copy_rows_into(&[(x, copy)], &mut piece)?;
        }
        pieces.push(piece);
        start += len;
    }
    Ok(pieces)
}

/// Gradient of [`split`]: the pieces' float gradients joined along `axis` (the same as
/// [`concat`](fn@concat)).
pub fn split_backward(grads: &[&Tensor], axis: usize) -> Result<Tensor> {
    for (i, g) in grads.iter().enumerate() {
        validate::float(g, &format!("grads[{i}]"))?;
    }
    concat(grads, axis)
}

/// Checks the parts and returns the joined shape.
fn check_concat(parts: &[&Tensor], axis: usize) -> Result<Vec<usize>> {
    let first = parts
        .first()
        .ok_or_else(|| Error::invalid("parts", "expected at least one tensor, got none"))?;
    check_axis(first, "parts[0]", "axis", axis)?;
    let names: Vec<String> = (0..parts.len()).map(|i| format!("parts[{i}]")).collect();
    let named: Vec<(&str, &Tensor)> = names
        .iter()
        .map(String::as_str)
        .zip(parts.iter().copied())
        .collect();
    validate::same_device(&named)?;
    validate::same_dtype(&named)?;
    let mut shape = first.shape().to_vec();
    for (i, part) in parts.iter().enumerate().skip(1) {
        if part.rank() != first.rank() {
            return Err(Error::shape(
                format!("parts[{i}]"),
                format!(
                    "rank {} (as `parts[0]`, shape {:?})",
                    first.rank(),
                    first.shape()
                ),
                part.shape(),
            ));
        }
        if let Some(j) =
            (0..first.rank()).find(|&j| j != axis && part.shape()[j] != first.shape()[j])
        {
            return Err(Error::shape(
                format!("parts[{i}]"),
                format!(
                    "extent {} on axis {j} (as `parts[0]`, shape {:?}; only the concat axis {axis} may differ)",
                    first.shape()[j],
                    first.shape()
                ),
                part.shape(),
            ));
        }
        shape[axis] = shape[axis]
            .checked_add(part.shape()[axis])
            .ok_or_else(|| Error::invalid("parts", "the joined extent overflows usize"))?;
    }
    Ok(shape)
}

// ---------------------------------------------------------------------------------------------------------
// index_select

/// `torch.index_select(x, axis, indices)`: the entries of `axis` listed in `indices` (i64, rank 1, `[M]`,
/// every entry in `[0, extent)`; duplicates and any order allowed), giving `x`'s shape with `M` on `axis`.
/// Any dtype for `x`. `indices` may live on the host or on `x`'s device; it is read on the host to be
/// validated (a device synchronisation when it lives on a GPU).
pub fn index_select(x: &Tensor, axis: usize, indices: &Tensor) -> Result<Tensor> {
    check_axis(x, "x", "axis", axis)?;
    let idx = check_indices(indices, x, axis)?;
    let mut shape = x.shape().to_vec();
    shape[axis] = idx.len();
    let mut out = new_output(&shape, x.dtype(), &x.device())?;
    gather_into(x, axis, indices, &idx, &mut out)?;
    Ok(out)
}

/// [`index_select`] writing into `out` (`x`'s shape with `M` on `axis`, `x`'s dtype and device).
pub fn index_select_into(
    x: &Tensor,
    axis: usize,
    indices: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    check_axis(x, "x", "axis", axis)?;
    let idx = check_indices(indices, x, axis)?;
    let mut shape = x.shape().to_vec();
    shape[axis] = idx.len();
    validate::output_like(out, x, &shape)?;
    gather_into(x, axis, indices, &idx, out)
}

/// Gradient of [`index_select`]: `dx[…, d, …] = Σ_{m : indices[m] = d} grad_out[…, m, …]`, a zero tensor
/// of `input_shape` with the rows of the float `grad_out` (`input_shape` with `M` on `axis`) added at
/// their source rows.
///
/// Deterministic and atomics-free: the indices are read on the host for validation anyway, so the host
/// also builds their inverse map — for every destination row, the gathered rows that came from it, in
/// ascending order (CSR: a counting sort, O(M + extent)) — and each output element then sums its own
/// sources in that fixed order, in f32 for f32/f16/bf16 storage (f64 for f64) with one rounding at the end.
/// No two threads write one element and no addition order depends on scheduling, so the result is
/// bitwise identical run to run, and bitwise equal on the CPU and on CUDA; a scatter with float atomics
/// would be neither. Rows no index points to are exactly zero.
pub fn index_select_backward(
    grad_out: &Tensor,
    input_shape: &[usize],
    axis: usize,
    indices: &Tensor,
) -> Result<Tensor> {
    let idx = check_scatter(grad_out, input_shape, axis, indices)?;
    if idx.is_empty() {
        return Tensor::zeros(input_shape, grad_out.dtype(), &grad_out.device());
    }
    let mut out = new_output(input_shape, grad_out.dtype(), &grad_out.device())?;
    scatter_into(grad_out, axis, &idx, &mut out)?;
    Ok(out)
}

/// [`index_select_backward`] writing into `out`, whose shape is the forward's input shape (`grad_out`'s
/// dtype and device). Every element of `out` is written, the zeros too.
pub fn index_select_backward_into(
    grad_out: &Tensor,
    axis: usize,
    indices: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    let input_shape = out.shape().to_vec();
    let idx = check_scatter(grad_out, &input_shape, axis, indices)?;
    validate::output_like(out, grad_out, &input_shape)?;
    scatter_into(grad_out, axis, &idx, out)
}

#[cfg_attr(not(feature = "cuda"), allow(unused_variables))] // `indices`: used on CUDA
fn gather_into(
    x: &Tensor,
    axis: usize,
    indices: &Tensor,
    idx: &[i64],
    out: &mut Tensor,
) -> Result<()> {
    if out.numel() == 0 {
        return Ok(());
    }
    let (outer, src_rows, inner) = around_axis(x.shape(), axis);
    let gather = Gather {
        outer,
        src_rows,
        dst_rows: idx.len(),
        inner,
    };
    on_device!(x,
        cpu => {
            *out = cpu::index_select(x, idx, gather, out.shape())?;
            Ok(())
        },
        cuda(dev) => {
            // Validated above; a list already on the device is used where it is.
            let uploaded;
            let on_device = if indices.device() == x.device() {
                indices
            } else {
                uploaded = Tensor::from_vec(idx.to_vec(), &[idx.len()])?.to_device(&x.device())?;
                &uploaded
            };
            cuda::index_select_into(&dev, x, on_device, gather, out)
        },
    )
}

fn scatter_into(grad_out: &Tensor, axis: usize, idx: &[i64], out: &mut Tensor) -> Result<()> {
    if out.numel() == 0 {
        return Ok(());
    }
    let (outer, src_rows, inner) = around_axis(out.shape(), axis);
    let gather = Gather {
        outer,
        src_rows,
        dst_rows: idx.len(),
        inner,
    };
    let inverse = InverseIndex::new(idx, src_rows);
    on_device!(grad_out,
        cpu => {
            *out = cpu::index_select_backward(grad_out, &inverse, gather, out.shape())?;
            Ok(())
        },
        cuda(dev) => cuda::index_select_backward_into(&dev, grad_out, &inverse, gather, out),
    )
}

/// Validates the index list against axis `axis` of `x` and returns it on the host.
fn check_indices(indices: &Tensor, x: &Tensor, axis: usize) -> Result<Vec<i64>> {
    check_index_list(indices, x.shape(), "x", axis, &x.device())
}

fn check_index_list(
    indices: &Tensor,
    shape: &[usize],
    arg: &str,
    axis: usize,
    device: &Device,
) -> Result<Vec<i64>> {
    validate::rank(
        indices,
        "indices",
        1,
        "[M] (a list of positions along the axis)",
    )?;
    validate::dtype(indices, "indices", DType::I64)?;
    let where_ = indices.device();
    if !where_.is_cpu() && where_ != *device {
        return Err(Error::Device {
            arg: "indices".into(),
            expected: if device.is_cpu() {
                format!("cpu (where `{arg}` is)")
            } else {
                format!("cpu or {device} (where `{arg}` is)")
            },
            got: where_.to_string(),
        });
    }
    let idx = indices.to_vec::<i64>()?;
    let extent = shape[axis];
    if let Some((pos, &v)) = idx
        .iter()
        .enumerate()
        .find(|(_, &v)| v < 0 || v as u64 >= extent as u64)
    {
        let why = if v < 0 {
            "negative positions are not accepted".to_string()
        } else {
            "past the end".to_string()
        };
        return Err(Error::invalid(
            "indices",
            format!(
                "entry {pos} is {v}, outside [0, {extent}) (axis {axis} of `{arg}`, shape {shape:?}): {why}"
            ),
        ));
    }
    Ok(idx)
}

fn check_scatter(
    grad_out: &Tensor,
    input_shape: &[usize],
    axis: usize,
    indices: &Tensor,
) -> Result<Vec<i64>> {
    validate::float(grad_out, "grad_out")?;
    check_axis_of(input_shape, "input_shape", "axis", axis)?;
    let idx = check_index_list(
        indices,
        input_shape,
        "input_shape",
        axis,
        &grad_out.device(),
    )?;
    let mut expected = input_shape.to_vec();
    expected[axis] = idx.len();
    validate::shape(grad_out, "grad_out", &expected)?;
    Ok(idx)
}

// ---------------------------------------------------------------------------------------------------------
// Shared helpers

/// A result tensor that the op's launch then fills completely: on CUDA its buffer is left unset (a
/// `Tensor::zeros` memset would be a wasted pass over memory as large as the result), on the host it is
/// zeros (the reference replaces it anyway). Only for results every element of which is written.
fn new_output(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    match device {
        Device::Cpu => Tensor::zeros(shape, dtype, device),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::unset_output(dev, shape, dtype),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(dev) => dev.unreachable(),
    }
}

/// Runs row copies from each source into `out` (whose every element the copies cover or, for a single
/// slice source, which it fills), on the device of `out`.
fn copy_rows_into(copies: &[(&Tensor, RowCopy)], out: &mut Tensor) -> Result<()> {
    let live: Vec<(&Tensor, RowCopy)> = copies
        .iter()
        .copied()
        .filter(|(_, c)| !c.is_empty())
        .collect();
    on_device!(out,
        cpu => {
            *out = cpu::copy_rows(&live, out.numel(), out.shape(), out.dtype())?;
            Ok(())
        },
        cuda(dev) => cuda::copy_rows_into(&dev, &live, out),
    )
}

fn check_axis(t: &Tensor, arg: &str, name: &str, axis: usize) -> Result<()> {
    check_axis_of(t.shape(), arg, name, axis)
}

fn check_axis_of(shape: &[usize], arg: &str, name: &str, axis: usize) -> Result<()> {
    if axis < shape.len() {
        Ok(())
    } else if shape.is_empty() {
        Err(Error::invalid(
            name,
            format!("`{arg}` is a scalar (rank 0) and has no axis {axis}"),
        ))
    } else {
        Err(Error::invalid(
            name,
            format!(
                "expected an axis of `{arg}` (shape {shape:?}) in [0, {}), got {axis}",
                shape.len()
            ),
        ))
    }
}

#[cfg(test)]
mod tests;
