//! Launch wrappers for kernels/elementwise.cu. Inputs were validated by mod.rs (shapes, broadcast
//! compatibility, dtypes, devices, element counts below 2^31 where the kernels index with 32 bits); this
//! file converts the host-side iteration plans into the kernels' argument structs, picks the reduction
//! strategy and launches.

use super::layout::{Iteration, Reduction, MAX_RANK};
use super::{BinaryOp, Operands, Term, UnaryKernel, UnaryOp};
use crate::cuda::{
    alloc_zeros, function, grid_for, input_slice, output_slice, Module, BLOCK, NULL_DEVICE_PTR,
};
use crate::error::{Error, Result};
use crate::tensor::{CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

/// Mirrors `struct BroadcastArgs` in kernels/elementwise.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct BroadcastArgs {
    rank: i32,
    numel: i32,
    op: i32,
    unused: i32,
    dims: [i32; MAX_RANK],
    strides: [[i32; MAX_RANK]; 2],
}

/// Mirrors `struct ReduceArgs` in kernels/elementwise.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ReduceArgs {
    kept_rank: i32,
    reduced_rank: i32,
    outputs: i32,
    per_output: i32,
    chunks: i32,
    chunk: i32,
    term: i32,
    scale: f32,
    kept_dims: [i32; MAX_RANK],
    reduced_dims: [i32; MAX_RANK],
    kept_strides: [[i32; MAX_RANK]; 3],
    reduced_strides: [[i32; MAX_RANK]; 3],
}

const _: () = assert!(
    std::mem::size_of::<BroadcastArgs>() == 88 && std::mem::size_of::<ReduceArgs>() == 224,
    "must match the kernel's structs"
);

// SAFETY: #[repr(C)], Copy, only 4-byte integer fields and arrays of them: 88 bytes with no padding
// (asserted above), laid out exactly like the kernel's `BroadcastArgs`; no pointers.
unsafe impl DeviceRepr for BroadcastArgs {}
// SAFETY: as BroadcastArgs: #[repr(C)], 4-byte fields only (i32 and one f32), 224 bytes without padding,
// matching the kernel's `ReduceArgs` field for field.
unsafe impl DeviceRepr for ReduceArgs {}

/// Element counts below 2^31 were checked by mod.rs, so every extent and stride fits an i32.
fn to_i32(v: usize) -> i32 {
    debug_assert!(v <= i32::MAX as usize);
    v as i32
}

fn broadcast_args(it: &Iteration, numel: usize, op: i32) -> BroadcastArgs {
    let mut args = BroadcastArgs {
        rank: to_i32(it.dims.len()),
        numel: to_i32(numel),
        op,
        unused: 0,
        dims: [1; MAX_RANK],
        strides: [[0; MAX_RANK]; 2],
    };
    for (d, &n) in it.dims.iter().enumerate() {
        args.dims[d] = to_i32(n);
    }
    for (slot, strides) in it.strides.iter().take(2).enumerate() {
        for (d, &s) in strides.iter().enumerate() {
            args.strides[slot][d] = to_i32(s);
        }
    }
    args
}

/// Terms per output at or below which one thread sums an output element on its own.
const THREAD_TERMS: usize = 32;
/// Outputs from which one thread per output is used whenever neighbouring outputs are neighbours in
/// memory (the reads of a warp coalesce).
const THREAD_OUTPUTS: usize = 8192;
/// Terms per chunk of the block kernel: 256 threads × 32 terms.
const CHUNK: usize = 8192;
/// The block kernel strides over (output, chunk) pairs beyond this many blocks.
const MAX_REDUCE_BLOCKS: usize = 1 << 18;

/// How a reduction is launched; a function of the shapes only, so results are reproducible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    ThreadPerOutput,
    /// Blocks over chunks of `chunk` terms, `chunks` per output.
    BlockChunks {
        chunks: usize,
    },
}

fn strategy(plan: &Reduction) -> Strategy {
    let (m, k) = (plan.outputs(), plan.per_output());
    let coalesced = plan.kept.strides[0].last() == Some(&1);
    if k <= THREAD_TERMS || (coalesced && m >= THREAD_OUTPUTS) {
        Strategy::ThreadPerOutput
    } else {
        Strategy::BlockChunks {
            chunks: k.div_ceil(CHUNK),
        }
    }
}

fn reduce_args(plan: &Reduction, term: Term, scale: f64, chunks: usize) -> ReduceArgs {
    let mut args = ReduceArgs {
        kept_rank: to_i32(plan.kept.dims.len()),
        reduced_rank: to_i32(plan.reduced.dims.len()),
        outputs: to_i32(plan.outputs()),
        per_output: to_i32(plan.per_output()),
        chunks: to_i32(chunks),
        chunk: to_i32(CHUNK),
        term: term as i32,
        scale: scale as f32,
        kept_dims: [1; MAX_RANK],
        reduced_dims: [1; MAX_RANK],
        kept_strides: [[0; MAX_RANK]; 3],
        reduced_strides: [[0; MAX_RANK]; 3],
    };
    for (d, &n) in plan.kept.dims.iter().enumerate() {
        args.kept_dims[d] = to_i32(n);
    }
    for (d, &n) in plan.reduced.dims.iter().enumerate() {
        args.reduced_dims[d] = to_i32(n);
    }
    for (slot, strides) in plan.kept.strides.iter().enumerate() {
        for (d, &s) in strides.iter().enumerate() {
            args.kept_strides[slot][d] = to_i32(s);
        }
    }
    for (slot, strides) in plan.reduced.strides.iter().enumerate() {
        for (d, &s) in strides.iter().enumerate() {
            args.reduced_strides[slot][d] = to_i32(s);
        }
    }
    args
}

fn unsupported(arg: &str, t: &Tensor) -> Error {
    Error::DType {
        arg: arg.into(),
        expected: "f32, f16 or bf16 on a CUDA device".into(),
        got: t.dtype().to_string(),
    }
}

/// Calls `$f::<T>(args)` with `T` the storage type of `$t`.
macro_rules! by_storage {
    ($t:expr, $arg:expr, $f:ident($($a:expr),* $(,)?)) => {
        match $t.dtype() {
            DType::F32 => $f::<f32>($($a),*),
            DType::F16 => $f::<f16>($($a),*),
            DType::BF16 => $f::<bf16>($($a),*),
            _ => Err(unsupported($arg, $t)),
        }
    };
}

fn push_optional<'a, T>(lb: &mut LaunchArgs<'a>, buf: Option<&'a CudaSlice<T>>) {
    match buf {
        Some(b) => lb.arg(b),
        None => lb.arg(&NULL_DEVICE_PTR),
    };
}

// ---------------------------------------------------------------------------------------------------------
// Binary arithmetic and broadcast copies

pub(super) fn binary_into(
    dev: &CudaDevice,
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    it: &Iteration,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        op: BinaryOp,
        a: &Tensor,
        b: &Tensor,
        it: &Iteration,
        out: &mut Tensor,
    ) -> Result<()> {
        let n = out.numel();
        let args = broadcast_args(it, n, op.code());
        let kernel = format!("binary_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Elementwise, &kernel)?;
        let (a_buf, b_buf) = (
            input_slice::<T>(a, "a", dev)?,
            input_slice::<T>(b, "b", dev)?,
        );
        let out_buf = output_slice::<T>(out, "out", dev)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(a_buf).arg(b_buf).arg(&args).arg(out_buf);
        // SAFETY: binary_<T>(a, b, args, out) writes out[i] for i < n (out's element count) and reads
        // a[oa], b[ob] with oa = Σ c_d·stride_a[d] over the merged dims: the largest is Σ (dim_d−1)·stride_d,
        // the last element of each operand, since the strides are its row-major strides (0 where broadcast).
        unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
        Ok(())
    }
    by_storage!(out, "a", typed(dev, op, a, b, it, out))
}

pub(super) fn broadcast_into(
    dev: &CudaDevice,
    g: &Tensor,
    it: &Iteration,
    scale: f64,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<G: CudaElement, T: CudaElement>(
        dev: &CudaDevice,
        g: &Tensor,
        it: &Iteration,
        scale: f64,
        out: &mut Tensor,
    ) -> Result<()> {
        let n = out.numel();
        let args = broadcast_args(it, n, 0);
        let kernel = if G::DTYPE == T::DTYPE {
            format!("broadcast_{}", T::KERNEL_SUFFIX)
        } else {
            format!("broadcast_f32_to_{}", T::KERNEL_SUFFIX)
        };
        let func = function(dev, Module::Elementwise, &kernel)?;
        let g_buf = input_slice::<G>(g, "grad_out", dev)?;
        let out_buf = output_slice::<T>(out, "out", dev)?;
        let scale = scale as f32;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(g_buf).arg(&args).arg(&scale).arg(out_buf);
        // SAFETY: broadcast[_f32_to]_<T>(g, args, scale, out) writes out[i] for i < n (out's element count)
        // and reads g at its row-major strides over the merged dims (0 where broadcast), at most g's last
        // element.
        unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
        Ok(())
    }
    match (g.dtype(), out.dtype()) {
        (DType::F32, DType::F32) => typed::<f32, f32>(dev, g, it, scale, out),
        (DType::F16, DType::F16) => typed::<f16, f16>(dev, g, it, scale, out),
        (DType::BF16, DType::BF16) => typed::<bf16, bf16>(dev, g, it, scale, out),
        (DType::F32, DType::F16) => typed::<f32, f16>(dev, g, it, scale, out),
        (DType::F32, DType::BF16) => typed::<f32, bf16>(dev, g, it, scale, out),
        _ => Err(unsupported("grad_out", g)),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reductions

pub(super) fn reduce_into(
    dev: &CudaDevice,
    term: Term,
    operands: &Operands<'_>,
    plan: &Reduction,
    scale: f64,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        term: Term,
        operands: &Operands<'_>,
        plan: &Reduction,
        scale: f64,
        out: &mut Tensor,
    ) -> Result<()> {
        let g = input_slice::<T>(operands.grad, "grad_out", dev)?;
        let a = operands
            .a
            .map(|t| input_slice::<T>(t, "a", dev))
            .transpose()?;
        let b = operands
            .b
            .map(|t| input_slice::<T>(t, "b", dev))
            .transpose()?;
        let m = plan.outputs();
        match strategy(plan) {
            Strategy::ThreadPerOutput => {
                let args = reduce_args(plan, term, scale, 1);
                let kernel = format!("reduce_thread_{}", T::KERNEL_SUFFIX);
                let func = function(dev, Module::Elementwise, &kernel)?;
                let out_buf = output_slice::<T>(out, "out", dev)?;
                let mut lb = dev.stream().launch_builder(&func);
                lb.arg(g);
                push_optional(&mut lb, a);
                push_optional(&mut lb, b);
                lb.arg(&args).arg(out_buf);
                // SAFETY: reduce_thread_<T>(g, a, b, args, out) writes out[o] for o < m (out's element
                // count); every operand offset is a kept offset plus a reduced offset, Σ c_d·stride_d over
                // disjoint dimension sets of the operand's own row-major strides, so at most its last
                // element. `a`/`b` are read only by the terms that need them, which are exactly the terms
                // for which mod.rs passes both.
                unsafe { lb.launch(grid_for(m)) }.map_err(Error::cuda(kernel))?;
            }
            Strategy::BlockChunks { chunks } => {
                let args = reduce_args(plan, term, scale, chunks);
                let kernel = format!("reduce_block_{}", T::KERNEL_SUFFIX);
                let func = function(dev, Module::Elementwise, &kernel)?;
                let mut partials = (chunks > 1)
                    .then(|| alloc_zeros::<f32>(dev, m * chunks))
                    .transpose()?;
                let blocks = (m * chunks).min(MAX_REDUCE_BLOCKS);
                let cfg = LaunchConfig {
                    grid_dim: (blocks as u32, 1, 1),
                    block_dim: (BLOCK, 1, 1),
                    shared_mem_bytes: 0,
                };
                {
                    let out_buf = output_slice::<T>(out, "out", dev)?;
                    let mut lb = dev.stream().launch_builder(&func);
                    lb.arg(g);
                    push_optional(&mut lb, a);
                    push_optional(&mut lb, b);
                    lb.arg(&args);
                    match partials.as_mut() {
                        Some(p) => lb.arg(p),
                        None => lb.arg(&NULL_DEVICE_PTR),
                    };
                    lb.arg(out_buf);
                    // SAFETY: reduce_block_<T>(g, a, b, args, partials, out) reads operands as the thread
                    // kernel does (offsets within each operand), and for each (o, c) with o < m, c < chunks
                    // writes out[o] (chunks = 1) or partials[o·chunks + c], within the m·chunks floats
                    // allocated whenever chunks > 1. BLOCK = 256 threads, a multiple of 32, as
                    // block_reduce_sum requires.
                    unsafe { lb.launch(cfg) }.map_err(Error::cuda(kernel))?;
                }
                if let Some(partials) = partials {
                    let kernel = format!("reduce_finish_{}", T::KERNEL_SUFFIX);
                    let func = function(dev, Module::Elementwise, &kernel)?;
                    let out_buf = output_slice::<T>(out, "out", dev)?;
                    let mut lb = dev.stream().launch_builder(&func);
                    lb.arg(&partials).arg(&args).arg(out_buf);
                    // SAFETY: reduce_finish_<T>(partials, args, out) reads partials[o·chunks + c] for
                    // o < m, c < chunks (the buffer holds m·chunks) and writes out[o], o < m.
                    unsafe { lb.launch(grid_for(m)) }.map_err(Error::cuda(kernel))?;
                }
            }
        }
        Ok(())
    }
    by_storage!(
        out,
        "grad_out",
        typed(dev, term, operands, plan, scale, out)
    )
}

// ---------------------------------------------------------------------------------------------------------
// Unary functions, scaling, accumulation, fills

pub(super) fn unary_into(
    dev: &CudaDevice,
    kernel: UnaryKernel,
    x: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        kernel: UnaryKernel,
        x: &Tensor,
        out: &mut Tensor,
    ) -> Result<()> {
        let n = x.numel();
        let (op, param) = kernel.code_and_param();
        let param = param as f32;
        let n_i64 = n as i64;
        let name = format!("unary_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Elementwise, &name)?;
        let x_buf = input_slice::<T>(x, "x", dev)?;
        let out_buf = output_slice::<T>(out, "out", dev)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(x_buf).arg(&n_i64).arg(&op).arg(&param).arg(out_buf);
        // SAFETY: unary_<T>(x, n, op, param, out) reads x[i] and writes out[i] for i < n; both tensors have
        // x's shape (checked in mod.rs), so both buffers hold n elements.
        unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(name))?;
        Ok(())
    }
    by_storage!(x, "x", typed(dev, kernel, x, out))
}

pub(super) fn unary_backward_into(
    dev: &CudaDevice,
    op: UnaryOp,
    saved: Option<&Tensor>,
    grad_out: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        op: UnaryOp,
        saved: Option<&Tensor>,
        grad_out: &Tensor,
        out: &mut Tensor,
    ) -> Result<()> {
        let n = grad_out.numel();
        let n_i64 = n as i64;
        let code = op.code();
        let name = format!("unary_backward_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Elementwise, &name)?;
        let saved = saved
            .map(|t| input_slice::<T>(t, "saved", dev))
            .transpose()?;
        let g = input_slice::<T>(grad_out, "grad_out", dev)?;
        let out_buf = output_slice::<T>(out, "grad", dev)?;
        let mut lb = dev.stream().launch_builder(&func);
        push_optional(&mut lb, saved);
        lb.arg(g).arg(&n_i64).arg(&code).arg(out_buf);
        // SAFETY: unary_backward_<T>(saved, g, n, op, out) reads saved[i] (when not null) and g[i] and
        // writes out[i] for i < n; all three have grad_out's shape (checked in mod.rs). `saved` is null only
        // for neg, whose gradient does not read it.
        unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(name))?;
        Ok(())
    }
    by_storage!(grad_out, "grad_out", typed(dev, op, saved, grad_out, out))
}

pub(super) fn add_scaled(dev: &CudaDevice, acc: &mut Tensor, x: &Tensor, alpha: f64) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        acc: &mut Tensor,
        x: &Tensor,
        alpha: f64,
    ) -> Result<()> {
        let n = x.numel();
        let n_i64 = n as i64;
        let alpha = alpha as f32;
        let name = format!("add_scaled_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Elementwise, &name)?;
        let x_buf = input_slice::<T>(x, "x", dev)?;
        let acc_buf = output_slice::<T>(acc, "acc", dev)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(acc_buf).arg(x_buf).arg(&n_i64).arg(&alpha);
        // SAFETY: add_scaled_<T>(acc, x, n, alpha) reads x[i] and updates acc[i] for i < n; both have one
        // shape (checked in mod.rs). They are distinct buffers: `acc` is borrowed mutably, `x` shared.
        unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(name))?;
        Ok(())
    }
    by_storage!(acc, "acc", typed(dev, acc, x, alpha))
}

pub(super) fn fill(dev: &CudaDevice, t: &mut Tensor, value: f64) -> Result<()> {
    fn typed<T: CudaElement>(dev: &CudaDevice, t: &mut Tensor, value: f64) -> Result<()> {
        let n = t.numel();
        let n_i64 = n as i64;
        // Rounded straight from f64 to the storage dtype here; its f32 widening is exact.
        let value = T::from_f64(value).to_f32();
        let name = format!("fill_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Elementwise, &name)?;
        let buf = output_slice::<T>(t, "t", dev)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(buf).arg(&n_i64).arg(&value);
        // SAFETY: fill_<T>(out, n, value) writes out[i] for i < n, the tensor's element count (its buffer
        // holds at least that many).
        unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(name))?;
        Ok(())
    }
    by_storage!(t, "t", typed(dev, t, value))
}
