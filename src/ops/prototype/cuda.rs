//! Launch wrappers for kernels/prototype.cu. Inputs were validated by mod.rs (shapes, dtypes, devices,
//! label ranges, and the candidate lists built from them); this file only picks the kernel instance and
//! launches it.

use super::{AssignmentOutput, MatchPlan, SoftAssignConfig};
use crate::cuda::{alloc_zeros, function, grid_for, input_slice, output_slice, Module, BLOCK};
use crate::error::{Error, Result};
use crate::tensor::{CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

/// Mirrors `struct AssignArgs` in kernels/prototype.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct AssignArgs {
    rows: i64,
    cols: i64,
    temperature: f32,
    log_output: i32,
}

/// Mirrors `struct RowArgs` in kernels/prototype.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RowArgs {
    rows: i64,
    cols: i64,
    eps: f32,
    unused: i32,
}

/// Mirrors `struct ColArgs` in kernels/prototype.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ColArgs {
    rows: i64,
    cols: i64,
    rows_per_chunk: i64,
    chunks: i64,
}

const _: () = assert!(
    std::mem::size_of::<AssignArgs>() == 24
        && std::mem::size_of::<RowArgs>() == 24
        && std::mem::size_of::<ColArgs>() == 32,
    "must match the kernel's structs"
);

// SAFETY: #[repr(C)], Copy, two i64 then two 4-byte fields: 24 bytes with no padding, laid out exactly like
// the kernel's `AssignArgs`.
unsafe impl DeviceRepr for AssignArgs {}
// SAFETY: as AssignArgs: #[repr(C)], two i64 then an f32 and an i32, 24 bytes, no padding, matching `RowArgs`.
unsafe impl DeviceRepr for RowArgs {}
// SAFETY: #[repr(C)], Copy, four i64: 32 bytes with no padding, matching the kernel's `ColArgs`.
unsafe impl DeviceRepr for ColArgs {}

/// Rows per 256-thread block of the warp-per-row kernels.
const ROWS_PER_BLOCK: usize = BLOCK as usize / 32;

/// Rows each block of the first column-sum pass adds up.
const COL_SUM_CHUNK: usize = 512;

/// One warp per row, eight rows per block, grid-stride over rows beyond 65 535 blocks.
fn warp_rows_launch(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(ROWS_PER_BLOCK).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn row_args(rows: usize, cols: usize, eps: f64) -> RowArgs {
    RowArgs {
        rows: rows as i64,
        cols: cols as i64,
        eps: eps as f32,
        unused: 0,
    }
}

fn assign_args(rows: usize, cols: usize, cfg: &SoftAssignConfig) -> AssignArgs {
    AssignArgs {
        rows: rows as i64,
        cols: cols as i64,
        temperature: cfg.temperature as f32,
        log_output: (cfg.output == AssignmentOutput::LogProbabilities) as i32,
    }
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

fn f32_tensor(data: CudaSlice<f32>, shape: &[usize], dev: &CudaDevice) -> Result<Tensor> {
    Tensor::from_cuda_slice(data, shape, dev)
}

/// A host vector on the device (a one-element buffer for an empty one: zero-byte allocations are invalid).
fn upload_i64(dev: &CudaDevice, values: &[i64]) -> Result<CudaSlice<i64>> {
    if values.is_empty() {
        return alloc_zeros::<i64>(dev, 0);
    }
    dev.stream()
        .clone_htod(values)
        .map_err(Error::cuda("host-to-device copy"))
}

// ---------------------------------------------------------------------------------------------------------
// Soft assignment

pub(super) fn widen(dev: &CudaDevice, x: &Tensor) -> Result<Tensor> {
    fn typed<T: CudaElement>(dev: &CudaDevice, x: &Tensor) -> Result<Tensor> {
        let n = x.numel();
        let mut out = alloc_zeros::<f32>(dev, n)?;
        if n > 0 {
            let kernel = format!("prototype_widen_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::Prototype, &kernel)?;
            let n_i64 = n as i64;
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(input_slice::<T>(x, "x", dev)?)
                .arg(&n_i64)
                .arg(&mut out);
            // SAFETY: prototype_widen_<T>(x, n, out) reads n elements of x and writes n floats; both hold n.
            unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
        }
        f32_tensor(out, x.shape(), dev)
    }
    by_storage!(x, "x", typed(dev, x))
}

pub(super) fn row_sq_norms(dev: &CudaDevice, x: &Tensor) -> Result<Tensor> {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let mut out = alloc_zeros::<f32>(dev, rows)?;
    if rows > 0 {
        let func = function(dev, Module::Prototype, "prototype_row_sq_norms_f32")?;
        let args = row_args(rows, cols, 0.0);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<f32>(x, "x", dev)?)
            .arg(&args)
            .arg(&mut out);
        // SAFETY: prototype_row_sq_norms_f32(x, args, out) reads rows·cols floats of x (an f32 [rows, cols]
        // tensor) and writes out[r] for r < rows, out's length.
        unsafe { lb.launch(warp_rows_launch(rows)) }
            .map_err(Error::cuda("prototype_row_sq_norms_f32"))?;
    }
    f32_tensor(out, &[rows], dev)
}

pub(super) fn assignment_from_gram_into(
    dev: &CudaDevice,
    gram: &Tensor,
    x_norms: &Tensor,
    p_norms: &Tensor,
    cfg: &SoftAssignConfig,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        gram: &Tensor,
        x_norms: &Tensor,
        p_norms: &Tensor,
        cfg: &SoftAssignConfig,
        out: &mut Tensor,
    ) -> Result<()> {
        let (n, k) = (gram.shape()[0], gram.shape()[1]);
        let kernel = format!("soft_assign_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Prototype, &kernel)?;
        let args = assign_args(n, k, cfg);
        let out_buf = output_slice::<T>(out, "out", dev)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<f32>(gram, "gram", dev)?)
            .arg(input_slice::<f32>(x_norms, "x norms", dev)?)
            .arg(input_slice::<f32>(p_norms, "prototype norms", dev)?)
            .arg(&args)
            .arg(out_buf);
        // SAFETY: soft_assign_<T>(gram, x_norms, p_norms, args, out): gram and out hold n·k elements (both
        // [n, k]; out's shape was checked by the caller), x_norms n and p_norms k; each warp touches row
        // r < n, columns k' < k only.
        unsafe { lb.launch(warp_rows_launch(n)) }.map_err(Error::cuda(kernel))?;
        Ok(())
    }
    by_storage!(out, "out", typed(dev, gram, x_norms, p_norms, cfg, out))
}

pub(super) fn assignment_grad(
    dev: &CudaDevice,
    output: &Tensor,
    grad_out: &Tensor,
    cfg: &SoftAssignConfig,
) -> Result<(Tensor, Tensor)> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        output: &Tensor,
        grad_out: &Tensor,
        cfg: &SoftAssignConfig,
    ) -> Result<(Tensor, Tensor)> {
        let (n, k) = (output.shape()[0], output.shape()[1]);
        let mut g = alloc_zeros::<f32>(dev, n * k)?;
        let mut row_sums = alloc_zeros::<f32>(dev, n)?;
        let kernel = format!("soft_assign_grad_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Prototype, &kernel)?;
        let args = assign_args(n, k, cfg);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(output, "output", dev)?)
            .arg(input_slice::<T>(grad_out, "grad_out", dev)?)
            .arg(&args)
            .arg(&mut g)
            .arg(&mut row_sums);
        // SAFETY: soft_assign_grad_<T>(output, grad, args, g, row_sums): output, grad and g hold n·k
        // elements ([n, k], checked by the caller; g allocated so), row_sums n; warps touch rows r < n only.
        unsafe { lb.launch(warp_rows_launch(n)) }.map_err(Error::cuda(kernel))?;
        Ok((
            f32_tensor(g, &[n, k], dev)?,
            f32_tensor(row_sums, &[n], dev)?,
        ))
    }
    by_storage!(output, "output", typed(dev, output, grad_out, cfg))
}

pub(super) fn col_sums(dev: &CudaDevice, m: &Tensor) -> Result<Tensor> {
    let (rows, cols) = (m.shape()[0], m.shape()[1]);
    let mut out = alloc_zeros::<f32>(dev, cols)?;
    if rows == 0 || cols == 0 {
        return f32_tensor(out, &[cols], dev);
    }
    // At most 65 535 chunks (the grid's y extent).
    let rows_per_chunk = COL_SUM_CHUNK.max(rows.div_ceil(65_535));
    let chunks = rows.div_ceil(rows_per_chunk);
    let args = ColArgs {
        rows: rows as i64,
        cols: cols as i64,
        rows_per_chunk: rows_per_chunk as i64,
        chunks: chunks as i64,
    };
    let mut partial = alloc_zeros::<f32>(dev, chunks * cols)?;
    let func = function(dev, Module::Prototype, "prototype_col_sums_partial_f32")?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(input_slice::<f32>(m, "matrix", dev)?)
        .arg(&args)
        .arg(&mut partial);
    let cfg = LaunchConfig {
        grid_dim: (
            cols.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32,
            chunks as u32,
            1,
        ),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: prototype_col_sums_partial_f32(m, args, partial): block (x, chunk) reads m[r·cols + c] for
    // rows r of its chunk (< rows) and columns c < cols — within m's rows·cols floats — and writes
    // partial[chunk·cols + c] with chunk < chunks (the grid's y extent), within partial's chunks·cols.
    unsafe { lb.launch(cfg) }.map_err(Error::cuda("prototype_col_sums_partial_f32"))?;
    let func = function(dev, Module::Prototype, "prototype_col_sums_finish_f32")?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(&partial).arg(&args).arg(&mut out);
    // SAFETY: prototype_col_sums_finish_f32(partial, args, out) reads partial[chunk·cols + c] for
    // chunk < chunks, c < cols (its length is chunks·cols) and writes out[c] for c < cols (out's length).
    unsafe { lb.launch(grid_for(cols)) }.map_err(Error::cuda("prototype_col_sums_finish_f32"))?;
    f32_tensor(out, &[cols], dev)
}

pub(super) fn combine(
    dev: &CudaDevice,
    t: &Tensor,
    sums: &Tensor,
    prod: &Tensor,
) -> Result<Tensor> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        t: &Tensor,
        sums: &Tensor,
        prod: &Tensor,
    ) -> Result<Tensor> {
        let (rows, cols) = (t.shape()[0], t.shape()[1]);
        let mut out = alloc_zeros::<T>(dev, rows * cols)?;
        if rows * cols > 0 {
            let kernel = format!("prototype_combine_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::Prototype, &kernel)?;
            let args = row_args(rows, cols, 0.0);
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(input_slice::<T>(t, "x", dev)?)
                .arg(input_slice::<f32>(sums, "sums", dev)?)
                .arg(input_slice::<f32>(prod, "product", dev)?)
                .arg(&args)
                .arg(&mut out);
            // SAFETY: prototype_combine_<T>(t, sums, prod, args, out): t, prod and out hold rows·cols
            // elements (prod is the [rows, cols] product), sums rows; indices are i < rows·cols and
            // i / cols < rows.
            unsafe { lb.launch(grid_for(rows * cols)) }.map_err(Error::cuda(kernel))?;
        }
        Tensor::from_cuda_slice(out, t.shape(), dev)
    }
    by_storage!(t, "x", typed(dev, t, sums, prod))
}

// ---------------------------------------------------------------------------------------------------------
// Hard max-cosine match

/// `1/max(‖p_k‖, eps)` of every prototype, `[K]` f32 (NaN for a row whose squared norm is not finite).
fn inverse_norms<T: CudaElement>(dev: &CudaDevice, p: &Tensor, eps: f64) -> Result<CudaSlice<f32>> {
    let (rows, cols) = (p.shape()[0], p.shape()[1]);
    let mut out = alloc_zeros::<f32>(dev, rows)?;
    if rows > 0 {
        let kernel = format!("row_inverse_norms_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Prototype, &kernel)?;
        let args = row_args(rows, cols, eps);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(p, "prototypes", dev)?)
            .arg(&args)
            .arg(&mut out);
        // SAFETY: row_inverse_norms_<T>(p, args, out) reads rows·cols elements of p (a [rows, cols] tensor)
        // and writes out[r] for r < rows, out's length.
        unsafe { lb.launch(warp_rows_launch(rows)) }.map_err(Error::cuda(kernel))?;
    }
    Ok(out)
}

/// Launches the match of `x` against `p` with the candidate lists of `plan` (already on the device), the
/// similarity going to `similarity` (element type `O`: the storage type, or f32 for the weights).
#[allow(clippy::too_many_arguments)]
fn launch_max_cosine<T: CudaElement, O: CudaElement>(
    dev: &CudaDevice,
    x: &Tensor,
    p: &Tensor,
    members: &CudaSlice<i64>,
    ranges: &CudaSlice<i64>,
    eps: f64,
    similarity: &mut CudaSlice<O>,
    index: &mut CudaSlice<i64>,
) -> Result<()> {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let p_inv = inverse_norms::<T>(dev, p, eps)?;
    let kernel = if O::DTYPE == T::DTYPE {
        format!("max_cosine_{}", T::KERNEL_SUFFIX)
    } else {
        format!("max_cosine_to_f32_{}", T::KERNEL_SUFFIX)
    };
    let func = function(dev, Module::Prototype, &kernel)?;
    let args = row_args(rows, cols, eps);
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(input_slice::<T>(x, "x", dev)?)
        .arg(input_slice::<T>(p, "prototypes", dev)?)
        .arg(&p_inv)
        .arg(members)
        .arg(ranges)
        .arg(&args)
        .arg(similarity)
        .arg(index);
    // SAFETY: max_cosine[_to_f32]_<T>(x, p, p_inv, members, ranges, args, similarity, index): warp r < rows
    // reads x's row r (x is [rows, cols]), ranges[2r], ranges[2r + 1] (ranges holds 2·rows entries), and
    // members[j] for j in that range, which the host built within [0, K] for members of length K; each
    // members[j] is a prototype row < K, so p[k·cols..] and p_inv[k] lie within p's K·cols elements and
    // p_inv's K. similarity and index hold `rows` elements and get element r.
    unsafe { lb.launch(warp_rows_launch(rows)) }.map_err(Error::cuda(kernel))?;
    Ok(())
}

/// The candidate lists of `plan` on the device: (members, ranges).
fn upload_plan(dev: &CudaDevice, plan: &MatchPlan) -> Result<(CudaSlice<i64>, CudaSlice<i64>)> {
    Ok((
        upload_i64(dev, &plan.members)?,
        upload_i64(dev, &plan.ranges)?,
    ))
}

pub(super) fn max_cosine_into(
    dev: &CudaDevice,
    x: &Tensor,
    prototypes: &Tensor,
    plan: &MatchPlan,
    similarity: &mut Tensor,
    index: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        x: &Tensor,
        prototypes: &Tensor,
        plan: &MatchPlan,
        similarity: &mut Tensor,
        index: &mut Tensor,
    ) -> Result<()> {
        let index_buf = output_slice::<i64>(index, "index", dev)?;
        let sim_buf = output_slice::<T>(similarity, "similarity", dev)?;
        if plan.members.is_empty() {
            // K = 0: no row has a candidate. Filled by copies from the host, without a launch.
            let stream = dev.stream();
            let nan = vec![T::from_f64(f64::NAN); plan.rows];
            stream
                .memcpy_htod(&nan, sim_buf)
                .map_err(Error::cuda("host-to-device copy"))?;
            return stream
                .memcpy_htod(&vec![-1i64; plan.rows], index_buf)
                .map_err(Error::cuda("host-to-device copy"));
        }
        let (members, ranges) = upload_plan(dev, plan)?;
        launch_max_cosine::<T, T>(
            dev, x, prototypes, &members, &ranges, plan.eps, sim_buf, index_buf,
        )
    }
    by_storage!(x, "x", typed(dev, x, prototypes, plan, similarity, index))
}

pub(super) fn robust_weights_into(
    dev: &CudaDevice,
    student: &Tensor,
    teacher: &Tensor,
    student_prototypes: &Tensor,
    teacher_prototypes: &Tensor,
    plan: &MatchPlan,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        student: &Tensor,
        teacher: &Tensor,
        student_prototypes: &Tensor,
        teacher_prototypes: &Tensor,
        plan: &MatchPlan,
        out: &mut Tensor,
    ) -> Result<()> {
        let n = plan.rows;
        let out_buf = output_slice::<T>(out, "out", dev)?;
        if plan.members.is_empty() {
            // K = 0: every row is without prototypes and gets weight 1, by a copy (no launch).
            return dev
                .stream()
                .memcpy_htod(&vec![T::from_f64(1.0); n], out_buf)
                .map_err(Error::cuda("host-to-device copy"));
        }
        let (members, ranges) = upload_plan(dev, plan)?;
        let mut student_sim = alloc_zeros::<f32>(dev, n)?;
        let mut teacher_sim = alloc_zeros::<f32>(dev, n)?;
        let mut index = alloc_zeros::<i64>(dev, n)?;
        let mut teacher_index = alloc_zeros::<i64>(dev, n)?;
        launch_max_cosine::<T, f32>(
            dev,
            student,
            student_prototypes,
            &members,
            &ranges,
            plan.eps,
            &mut student_sim,
            &mut index,
        )?;
        launch_max_cosine::<T, f32>(
            dev,
            teacher,
            teacher_prototypes,
            &members,
            &ranges,
            plan.eps,
            &mut teacher_sim,
            &mut teacher_index,
        )?;
        let kernel = format!("gkd_robust_weight_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Prototype, &kernel)?;
        let n_i64 = n as i64;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(&student_sim)
            .arg(&teacher_sim)
            .arg(&index)
            .arg(&n_i64)
            .arg(out_buf);
        // SAFETY: gkd_robust_weight_<T>(s, t, index, n, out) reads and writes elements i < n of five buffers
        // that each hold n (out is the [n] output tensor, checked by the caller).
        unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
        Ok(())
    }
    by_storage!(
        student,
        "student",
        typed(
            dev,
            student,
            teacher,
            student_prototypes,
            teacher_prototypes,
            plan,
            out
        )
    )
}
