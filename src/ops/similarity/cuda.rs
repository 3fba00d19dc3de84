//! Launch wrappers for kernels/similarity.cu. Inputs were validated by mod.rs (shapes, dtypes, devices,
//! index ranges and distinctness); this file only picks the kernel instance and launches it.

use super::primitives::PairMode;
use crate::cuda::{
    alloc_zeros, function, grid_for, input_slice, output_slice, sum_partials, Module, BLOCK,
    NULL_DEVICE_PTR,
};
use crate::error::{Error, Result};
use crate::tensor::{CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

/// Mirrors `struct RowArgs` in kernels/similarity.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RowArgs {
    rows: i64,
    cols: i64,
    eps: f32,
    unused: i32,
}

/// Mirrors `struct PairArgs` in kernels/similarity.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct PairArgs {
    rows: i64,
    cols: i64,
    self_mode: i32,
    take_sqrt: i32,
}

const _: () = assert!(
    std::mem::size_of::<RowArgs>() == 24 && std::mem::size_of::<PairArgs>() == 24,
    "must match the kernel's structs"
);

// SAFETY: #[repr(C)], Copy, two i64 then two 4-byte fields: 24 bytes with no padding, laid out exactly like
// the kernel's `RowArgs`.
unsafe impl DeviceRepr for RowArgs {}
// SAFETY: as RowArgs: #[repr(C)], two i64 then two i32, 24 bytes, no padding, matching `PairArgs`.
unsafe impl DeviceRepr for PairArgs {}

fn row_args(rows: usize, cols: usize, eps: f64) -> RowArgs {
    RowArgs {
        rows: rows as i64,
        cols: cols as i64,
        eps: eps as f32,
        unused: 0,
    }
}

fn pair_args(rows: usize, cols: usize, mode: PairMode) -> PairArgs {
    PairArgs {
        rows: rows as i64,
        cols: cols as i64,
        self_mode: mode.self_mode as i32,
        take_sqrt: mode.take_sqrt as i32,
    }
}

/// One 256-thread block per row (grid-stride over rows beyond 65535), as the row kernels expect.
fn row_launch(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.clamp(1, 65_535) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
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

fn push_index<'a>(lb: &mut LaunchArgs<'a>, index: Option<&'a CudaSlice<i64>>) {
    match index {
        Some(i) => lb.arg(i),
        None => lb.arg(&NULL_DEVICE_PTR),
    };
}

fn index_slice<'a>(
    index: Option<&'a Tensor>,
    dev: &CudaDevice,
) -> Result<Option<&'a CudaSlice<i64>>> {
    index
        .map(|t| input_slice::<i64>(t, "nodes", dev))
        .transpose()
}

fn f32_tensor(data: CudaSlice<f32>, shape: &[usize], dev: &CudaDevice) -> Result<Tensor> {
    Tensor::from_cuda_slice(data, shape, dev)
}

// ---------------------------------------------------------------------------------------------------------
// Row normalisation

pub(super) fn normalize_into(
    dev: &CudaDevice,
    x: &Tensor,
    index: Option<&Tensor>,
    eps: f64,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement, O: CudaElement>(
        dev: &CudaDevice,
        x: &Tensor,
        index: Option<&Tensor>,
        eps: f64,
        out: &mut Tensor,
    ) -> Result<()> {
        let (rows, cols) = (out.shape()[0], out.shape()[1]);
        let x_buf = input_slice::<T>(x, "x", dev)?;
        let index = index_slice(index, dev)?;
        let out_buf = output_slice::<O>(out, "out", dev)?;
        let kernel = if O::DTYPE == T::DTYPE {
            format!("normalize_rows_{}", T::KERNEL_SUFFIX)
        } else {
            format!("normalize_rows_to_f32_{}", T::KERNEL_SUFFIX)
        };
        let func = function(dev, Module::Similarity, &kernel)?;
        let args = row_args(rows, cols, eps);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(x_buf);
        push_index(&mut lb, index);
        lb.arg(&args).arg(out_buf);
        // SAFETY: normalize_rows[_to_f32]_<T>(x, index, args, out): out holds rows·cols elements of O (its
        // shape); each output row r reads input row index[r] (validated in [0, x rows) on the host) or r
        // (then out has x's row count), so every x access lies within its rows·cols elements.
        unsafe { lb.launch(row_launch(rows)) }.map_err(Error::cuda(kernel))?;
        Ok(())
    }
    match (x.dtype(), out.dtype()) {
        (DType::F32, DType::F32) => typed::<f32, f32>(dev, x, index, eps, out),
        (DType::F16, DType::F16) => typed::<f16, f16>(dev, x, index, eps, out),
        (DType::F16, DType::F32) => typed::<f16, f32>(dev, x, index, eps, out),
        (DType::BF16, DType::BF16) => typed::<bf16, bf16>(dev, x, index, eps, out),
        (DType::BF16, DType::F32) => typed::<bf16, f32>(dev, x, index, eps, out),
        _ => Err(unsupported("x", x)),
    }
}

pub(super) fn normalize_backward(
    dev: &CudaDevice,
    x: &Tensor,
    index: Option<&Tensor>,
    grad_hat: &Tensor,
    rows_total: usize,
    eps: f64,
) -> Result<Tensor> {
    fn typed<T: CudaElement, G: CudaElement>(
        dev: &CudaDevice,
        x: &Tensor,
        index: Option<&Tensor>,
        grad_hat: &Tensor,
        rows_total: usize,
        eps: f64,
    ) -> Result<Tensor> {
        let (rows, cols) = (grad_hat.shape()[0], grad_hat.shape()[1]);
        // Zero-filled: with an index, unselected rows are never written.
        let mut out = Tensor::zeros(&[rows_total, cols], T::DTYPE, &x.device())?;
        let x_buf = input_slice::<T>(x, "x", dev)?;
        let g_buf = input_slice::<G>(grad_hat, "grad_out", dev)?;
        let index = index_slice(index, dev)?;
        let out_buf = output_slice::<T>(&mut out, "grad", dev)?;
        let kernel = if G::DTYPE == T::DTYPE {
            format!("normalize_rows_backward_{}", T::KERNEL_SUFFIX)
        } else {
            format!("normalize_rows_backward_f32grad_{}", T::KERNEL_SUFFIX)
        };
        let func = function(dev, Module::Similarity, &kernel)?;
        let args = row_args(rows, cols, eps);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(x_buf);
        push_index(&mut lb, index);
        lb.arg(g_buf).arg(&args).arg(out_buf);
        // SAFETY: normalize_rows_backward[_f32grad]_<T>(x, index, grad_hat, args, out): grad_hat is
        // rows·cols; x and out are rows_total·cols; every row written/read is index[r] (validated in
        // [0, rows_total) and distinct, so no two blocks write one row) or r < rows = rows_total.
        unsafe { lb.launch(row_launch(rows)) }.map_err(Error::cuda(kernel))?;
        Ok(out)
    }
    match (x.dtype(), grad_hat.dtype()) {
        (DType::F32, DType::F32) => typed::<f32, f32>(dev, x, index, grad_hat, rows_total, eps),
        (DType::F16, DType::F16) => typed::<f16, f16>(dev, x, index, grad_hat, rows_total, eps),
        (DType::F16, DType::F32) => typed::<f16, f32>(dev, x, index, grad_hat, rows_total, eps),
        (DType::BF16, DType::BF16) => typed::<bf16, bf16>(dev, x, index, grad_hat, rows_total, eps),
        (DType::BF16, DType::F32) => typed::<bf16, f32>(dev, x, index, grad_hat, rows_total, eps),
        _ => Err(unsupported("grad_out", grad_hat)),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Gram-side helpers

pub(super) fn symmetrize(dev: &CudaDevice, g: &Tensor) -> Result<Tensor> {
    fn typed<T: CudaElement>(dev: &CudaDevice, g: &Tensor) -> Result<Tensor> {
        let m = g.shape()[0];
        let mut out = alloc_zeros::<f32>(dev, m * m)?;
        let kernel = format!("symmetrize_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Similarity, &kernel)?;
        let args = row_args(m, m, 0.0);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(g, "grad_out", dev)?)
            .arg(&args)
            .arg(&mut out);
        // SAFETY: symmetrize_<T>(g, args, out) reads and writes indices below m·m, the length of both g
        // (an [m, m] tensor) and out.
        unsafe { lb.launch(grid_for(m * m)) }.map_err(Error::cuda(kernel))?;
        f32_tensor(out, &[m, m], dev)
    }
    by_storage!(g, "grad_out", typed(dev, g))
}

pub(super) fn widen(dev: &CudaDevice, x: &Tensor) -> Result<Tensor> {
    fn typed<T: CudaElement>(dev: &CudaDevice, x: &Tensor) -> Result<Tensor> {
        let n = x.numel();
        let mut out = alloc_zeros::<f32>(dev, n)?;
        if n > 0 {
            let kernel = format!("widen_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::Similarity, &kernel)?;
            let n_i64 = n as i64;
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(input_slice::<T>(x, "x", dev)?)
                .arg(&n_i64)
                .arg(&mut out);
            // SAFETY: widen_<T>(x, n, out) reads n elements of x and writes n floats; both have length n.
            unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
        }
        f32_tensor(out, x.shape(), dev)
    }
    by_storage!(x, "x", typed(dev, x))
}

pub(super) fn row_sq_norms(dev: &CudaDevice, x: &Tensor) -> Result<Tensor> {
    fn typed<T: CudaElement>(dev: &CudaDevice, x: &Tensor) -> Result<Tensor> {
        let (rows, cols) = (x.shape()[0], x.shape()[1]);
        let mut out = alloc_zeros::<f32>(dev, rows)?;
        let kernel = format!("row_sq_norms_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Similarity, &kernel)?;
        let args = row_args(rows, cols, 0.0);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(x, "x", dev)?)
            .arg(&args)
            .arg(&mut out);
        // SAFETY: row_sq_norms_<T>(x, args, out) reads rows·cols elements of x (its length) and writes
        // out[r] for r < rows (out's length).
        unsafe { lb.launch(row_launch(rows)) }.map_err(Error::cuda(kernel))?;
        f32_tensor(out, &[rows], dev)
    }
    by_storage!(x, "x", typed(dev, x))
}

pub(super) fn assemble_distance_into(
    dev: &CudaDevice,
    gram: &Tensor,
    nx: &Tensor,
    ny: &Tensor,
    mode: PairMode,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        gram: &Tensor,
        nx: &Tensor,
        ny: &Tensor,
        mode: PairMode,
        out: &mut Tensor,
    ) -> Result<()> {
        let (m, n) = (gram.shape()[0], gram.shape()[1]);
        let kernel = format!("sq_euclidean_assemble_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Similarity, &kernel)?;
        let args = pair_args(m, n, mode);
        let out_buf = output_slice::<T>(out, "out", dev)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<f32>(gram, "gram", dev)?)
            .arg(input_slice::<f32>(nx, "x norms", dev)?)
            .arg(input_slice::<f32>(ny, "y norms", dev)?)
            .arg(&args)
            .arg(out_buf);
        // SAFETY: sq_euclidean_assemble_<T>(gram, nx, ny, args, out): gram and out hold m·n elements,
        // nx m and ny n (m = n in self mode); indices are i < m·n, i / n < m and i % n < n.
        unsafe { lb.launch(grid_for(m * n)) }.map_err(Error::cuda(kernel))?;
        Ok(())
    }
    by_storage!(out, "out", typed(dev, gram, nx, ny, mode, out))
}

pub(super) fn distance_grad_prep(
    dev: &CudaDevice,
    grad: &Tensor,
    dist: &Tensor,
    mode: PairMode,
) -> Result<Tensor> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        grad: &Tensor,
        dist: &Tensor,
        mode: PairMode,
    ) -> Result<Tensor> {
        let (m, n) = (grad.shape()[0], grad.shape()[1]);
        let mut out = alloc_zeros::<f32>(dev, m * n)?;
        let kernel = format!("euclidean_grad_prep_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Similarity, &kernel)?;
        let args = pair_args(m, n, mode);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(grad, "grad_out", dev)?)
            .arg(input_slice::<T>(dist, "output", dev)?)
            .arg(&args)
            .arg(&mut out);
        // SAFETY: euclidean_grad_prep_<T>(grad, dist, args, out): all three hold m·n elements; in self mode
        // m = n, so the transposed index col·n + row is below m·n as well.
        unsafe { lb.launch(grid_for(m * n)) }.map_err(Error::cuda(kernel))?;
        f32_tensor(out, &[m, n], dev)
    }
    by_storage!(grad, "grad_out", typed(dev, grad, dist, mode))
}

pub(super) fn row_sums(dev: &CudaDevice, m: &Tensor) -> Result<Tensor> {
    let (rows, cols) = (m.shape()[0], m.shape()[1]);
    let mut out = alloc_zeros::<f32>(dev, rows)?;
    let func = function(dev, Module::Similarity, "row_sums_f32")?;
    let args = row_args(rows, cols, 0.0);
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(input_slice::<f32>(m, "matrix", dev)?)
        .arg(&args)
        .arg(&mut out);
    // SAFETY: row_sums_f32(m, args, out) reads rows·cols floats of m (its length) and writes out[r < rows].
    unsafe { lb.launch(row_launch(rows)) }.map_err(Error::cuda("row_sums_f32"))?;
    f32_tensor(out, &[rows], dev)
}

pub(super) fn col_sums(dev: &CudaDevice, m: &Tensor) -> Result<Tensor> {
    let (rows, cols) = (m.shape()[0], m.shape()[1]);
    let mut out = alloc_zeros::<f32>(dev, cols)?;
    let func = function(dev, Module::Similarity, "col_sums_f32")?;
    let args = row_args(rows, cols, 0.0);
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(input_slice::<f32>(m, "matrix", dev)?)
        .arg(&args)
        .arg(&mut out);
    // SAFETY: col_sums_f32(m, args, out) reads m[r·cols + c] for r < rows, c < cols (m's length is
    // rows·cols) and writes out[c < cols].
    unsafe { lb.launch(grid_for(cols)) }.map_err(Error::cuda("col_sums_f32"))?;
    f32_tensor(out, &[cols], dev)
}

pub(super) fn combine(
    dev: &CudaDevice,
    x: &Tensor,
    rowsum: &Tensor,
    prod: &Tensor,
) -> Result<Tensor> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        x: &Tensor,
        rowsum: &Tensor,
        prod: &Tensor,
    ) -> Result<Tensor> {
        let (rows, cols) = (x.shape()[0], x.shape()[1]);
        let mut out = alloc_zeros::<T>(dev, rows * cols)?;
        let kernel = format!("euclidean_combine_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Similarity, &kernel)?;
        let args = row_args(rows, cols, 0.0);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(x, "x", dev)?)
            .arg(input_slice::<f32>(rowsum, "row sums", dev)?)
            .arg(input_slice::<f32>(prod, "product", dev)?)
            .arg(&args)
            .arg(&mut out);
        // SAFETY: euclidean_combine_<T>(x, rowsum, prod, args, out): x, prod and out hold rows·cols
        // elements, rowsum rows; indices are i < rows·cols and i / cols < rows.
        unsafe { lb.launch(grid_for(rows * cols)) }.map_err(Error::cuda(kernel))?;
        Tensor::from_cuda_slice(out, x.shape(), dev)
    }
    by_storage!(x, "x", typed(dev, x, rowsum, prod))
}

/// f32 `src` into `out` of the same shape (f32: a device copy; f16/bf16: `f32_to_<T>`).
pub(super) fn convert_into(dev: &CudaDevice, src: &Tensor, out: &mut Tensor) -> Result<()> {
    fn typed<T: CudaElement>(dev: &CudaDevice, src: &Tensor, out: &mut Tensor) -> Result<()> {
        let n = src.numel();
        let src_buf = input_slice::<f32>(src, "src", dev)?;
        let out_buf = output_slice::<T>(out, "out", dev)?;
        let kernel = format!("f32_to_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Accumulate, &kernel)?;
        let n_i64 = n as i64;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(src_buf).arg(&n_i64).arg(out_buf);
        // SAFETY: f32_to_<T>(src, n, out) reads n floats and writes n elements; src and out have the same
        // shape, so both hold n.
        unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
        Ok(())
    }
    if src.numel() == 0 {
        return Ok(());
    }
    match out.dtype() {
        DType::F32 => {
            let src_buf = input_slice::<f32>(src, "src", dev)?;
            let out_buf = output_slice::<f32>(out, "out", dev)?;
            dev.stream()
                .memcpy_dtod(src_buf, out_buf)
                .map_err(Error::cuda("device copy"))
        }
        DType::F16 => typed::<f16>(dev, src, out),
        DType::BF16 => typed::<bf16>(dev, src, out),
        _ => Err(unsupported("out", out)),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Dsig edge loss

pub(super) fn edge_loss_and_grad(
    dev: &CudaDevice,
    a_s: &mut Tensor,
    a_t: &Tensor,
    loss_scale: f64,
    grad_scale: Option<f64>,
) -> Result<Tensor> {
    let total = a_t.numel();
    let cfg = grid_for(total);
    let mut partials = alloc_zeros::<f32>(dev, cfg.grid_dim.0 as usize)?;
    let func = function(dev, Module::Similarity, "dsig_edge_loss_f32")?;
    let total_i64 = total as i64;
    let loss_scale = loss_scale as f32;
    let grad_scale_f32 = grad_scale.unwrap_or(0.0) as f32;
    let write_grad = grad_scale.is_some() as i32;
    let a_t_buf = input_slice::<f32>(a_t, "teacher gram", dev)?;
    let a_s_buf = output_slice::<f32>(a_s, "student gram", dev)?;
    let mut lb = dev.stream().launch_builder(&func);
    lb.arg(a_s_buf)
        .arg(a_t_buf)
        .arg(&total_i64)
        .arg(&loss_scale)
        .arg(&grad_scale_f32)
        .arg(&write_grad)
        .arg(&mut partials);
    // SAFETY: dsig_edge_loss_f32(a_s, a_t, total, ...) reads and writes indices below total, the length of
    // both [m, m] matrices, and writes partials[blockIdx.x] for each of the grid_for(total) blocks, which
    // is exactly partials' length.
    unsafe { lb.launch(cfg) }.map_err(Error::cuda("dsig_edge_loss_f32"))?;
    let loss = sum_partials(dev, &partials)?;
    f32_tensor(loss, &[], dev)
}
