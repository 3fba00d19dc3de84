//! Launch wrappers for kernels/graph_conv.cu (and `f32_to_<T>` of kernels/accumulate.cu). Shapes, dtypes and
//! devices were validated by the callers in mod.rs / glore.rs; every wrapper returns without a launch when its
//! output is empty. Storage tensors are `T` ∈ {f32, f16, bf16}; compute tensors are f32.

use crate::cuda::{alloc_zeros, function, grid_for, input_slice, Module, BLOCK, NULL_DEVICE_PTR};
use crate::error::{Error, Result};
use crate::tensor::{CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

/// Grid-stride loops over blocks (rows, column tiles) need no more blocks than this.
const MAX_BLOCKS: usize = 65_536;

/// Runs `$body` with `$t` bound to the element type of the storage dtype `$dtype`.
macro_rules! by_storage_dtype {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F16 => {
                type $t = f16;
                $body
            }
            DType::BF16 => {
                type $t = bf16;
                $body
            }
            other => Err(Error::DType {
                arg: "tensor".into(),
                expected: "f32, f16 or bf16 on a CUDA device".into(),
                got: other.to_string(),
            }),
        }
    };
}

/// `blocks` blocks of [`BLOCK`] threads (at least one, at most [`MAX_BLOCKS`]; kernels loop over the rest).
fn blocks(count: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (count.clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per column tile of 32 (the `column_sums` pattern in the kernel file).
fn column_tiles(batch: usize, cols: usize) -> LaunchConfig {
    blocks(batch * cols.div_ceil(32))
}

fn f32_buffer(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    alloc_zeros::<f32>(dev, n)
}

fn as_i64(n: usize) -> i64 {
    n as i64 // every extent is a tensor extent, far below 2^63
}

/// `t` (storage) as f32.
pub(super) fn widen(dev: &CudaDevice, t: &Tensor) -> Result<Tensor> {
    let n = t.numel();
    let mut out = f32_buffer(dev, n)?;
    if n > 0 {
        by_storage_dtype!(t.dtype(), T => {
            let x = input_slice::<T>(t, "tensor", dev)?;
            let kernel = format!("widen_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::GraphConv, &kernel)?;
            let n64 = as_i64(n);
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(x).arg(&n64).arg(&mut out);
            // SAFETY: widen_<T>(const T* x, int64 n, float* out) reads n elements of x and writes n floats of
            // out; both buffers hold exactly n elements.
            unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
            Ok(())
        })?;
    }
    Tensor::from_cuda_slice(out, t.shape(), dev)
}

/// The f32 tensor `t` rounded to `dtype`.
pub(super) fn narrow(dev: &CudaDevice, t: &Tensor, dtype: DType) -> Result<Tensor> {
    let src = input_slice::<f32>(t, "tensor", dev)?;
    let n = t.numel();
    by_storage_dtype!(dtype, T => {
        let mut out = alloc_zeros::<T>(dev, n)?;
        if n > 0 {
            let kernel = format!("f32_to_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::Accumulate, &kernel)?;
            let n64 = as_i64(n);
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(src).arg(&n64).arg(&mut out);
            // SAFETY: f32_to_<T>(const float* src, int64 n, T* out) reads n floats and writes n elements; both
            // buffers hold exactly n elements.
            unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
        }
        Tensor::from_cuda_slice(out, t.shape(), dev)
    })
}

/// Degrees of `a` viewed as `[rows, m]` (downloaded for validation) and `s = degree^-1/2` (f32, `s_shape`).
pub(super) fn degrees(
    dev: &CudaDevice,
    a: &Tensor,
    m: usize,
    s_shape: &[usize],
) -> Result<(Vec<f64>, Tensor)> {
    let rows = s_shape.iter().product::<usize>();
    let mut degree = f32_buffer(dev, rows)?;
    let mut inv_sqrt = f32_buffer(dev, rows)?;
    if rows > 0 {
        by_storage_dtype!(a.dtype(), T => {
            let a_buf = input_slice::<T>(a, "adjacency", dev)?;
            let kernel = format!("degree_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::GraphConv, &kernel)?;
            let (rows64, m64) = (as_i64(rows), as_i64(m));
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(a_buf).arg(&rows64).arg(&m64).arg(&mut degree).arg(&mut inv_sqrt);
            // SAFETY: degree_<T>(a, rows, m, degree, inv_sqrt) reads rows*m elements of a (its length: a is
            // [.., m, m] with rows = batch*m) and writes `rows` floats to each output (their length). Blocks
            // loop over rows; the block size is a multiple of 32 as block_reduce_sum requires.
            unsafe { lb.launch(blocks(rows)) }.map_err(Error::cuda(kernel))?;
            Ok(())
        })?;
    }
    let host = dev
        .stream()
        .clone_dtoh(&degree)
        .map_err(Error::cuda("downloading degrees"))?;
    Ok((
        host.into_iter().map(f64::from).collect(),
        Tensor::from_cuda_slice(inv_sqrt, s_shape, dev)?,
    ))
}

/// `Â` (f32, shaped like `a`) from `a` (storage) and `s` (f32).
pub(super) fn normalize(
    dev: &CudaDevice,
    a: &Tensor,
    inv_sqrt: &Tensor,
    m: usize,
) -> Result<Tensor> {
    let n = a.numel();
    let batch = if m == 0 { 0 } else { n / (m * m) };
    let mut out = f32_buffer(dev, n)?;
    if n > 0 {
        let s = input_slice::<f32>(inv_sqrt, "inv_sqrt_degree", dev)?;
        by_storage_dtype!(a.dtype(), T => {
            let a_buf = input_slice::<T>(a, "adjacency", dev)?;
            let kernel = format!("normalize_adjacency_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::GraphConv, &kernel)?;
            let (batch64, m64) = (as_i64(batch), as_i64(m));
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(a_buf).arg(s).arg(&batch64).arg(&m64).arg(&mut out);
            // SAFETY: normalize_adjacency_<T>(a, s, batch, m, a_hat) reads batch*m*m elements of a and writes
            // as many of a_hat (both hold exactly n = batch*m*m), and reads s at b*m + p, b*m + q < batch*m
            // (s holds batch*m floats, checked by the caller).
            unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
            Ok(())
        })?;
    }
    Tensor::from_cuda_slice(out, a.shape(), dev)
}

/// `dA` (storage dtype and shape of `a`) from `g = dÂ` (f32), `a` and `s` (f32).
pub(super) fn adjacency_grad(
    dev: &CudaDevice,
    g: &Tensor,
    a: &Tensor,
    inv_sqrt: &Tensor,
    m: usize,
) -> Result<Tensor> {
    let n = a.numel();
    let batch = if m == 0 { 0 } else { n / (m * m) };
    by_storage_dtype!(a.dtype(), T => {
        let mut out = alloc_zeros::<T>(dev, n)?;
        if n > 0 {
            let g_buf = input_slice::<f32>(g, "grad_a_hat", dev)?;
            let a_buf = input_slice::<T>(a, "adjacency", dev)?;
            let s = input_slice::<f32>(inv_sqrt, "inv_sqrt_degree", dev)?;
            let mut row_sums = f32_buffer(dev, batch * m)?;
            let mut col_sums = f32_buffer(dev, batch * m)?;
            let (batch64, m64) = (as_i64(batch), as_i64(m));
            let stream = dev.stream();

            let kernel = format!("adjacency_grad_row_sums_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::GraphConv, &kernel)?;
            let mut lb = stream.launch_builder(&func);
            lb.arg(g_buf).arg(a_buf).arg(s).arg(&batch64).arg(&m64).arg(&mut row_sums);
            // SAFETY: reads rows r < batch*m of g and a (batch*m*m elements each, their lengths) and s at
            // b*m + k < batch*m; writes row_sums[r] for r < batch*m (its length). Block size is a multiple of
            // 32 for block_reduce_sum.
            unsafe { lb.launch(blocks(batch * m)) }.map_err(Error::cuda(kernel))?;

            let kernel = format!("adjacency_grad_col_sums_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::GraphConv, &kernel)?;
            let mut lb = stream.launch_builder(&func);
            lb.arg(g_buf).arg(a_buf).arg(s).arg(&batch64).arg(&m64).arg(&mut col_sums);
            // SAFETY: as above, column-wise: element (b*m + k)*m + p with k, p < m, b < batch is in bounds of g
            // and a, and col_sums[b*m + p] of col_sums; the block size is a multiple of 32 up to 1024.
            unsafe { lb.launch(column_tiles(batch, m)) }.map_err(Error::cuda(kernel))?;

            let kernel = format!("adjacency_grad_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::GraphConv, &kernel)?;
            let mut lb = stream.launch_builder(&func);
            lb.arg(g_buf).arg(s).arg(&row_sums).arg(&col_sums).arg(&batch64).arg(&m64).arg(&mut out);
            // SAFETY: element-wise over n = batch*m*m elements of g and out (their lengths); s, row_sums and
            // col_sums are read at b*m + p, b*m + q < batch*m (their lengths).
            unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
        }
        Tensor::from_cuda_slice(out, a.shape(), dev)
    })
}

/// `t` repeated `batch` times (`shape` = `[batch, ..t.shape()]`).
pub(super) fn tile_batch(
    dev: &CudaDevice,
    t: &Tensor,
    batch: usize,
    shape: &[usize],
) -> Result<Tensor> {
    let n = t.numel();
    by_storage_dtype!(t.dtype(), T => {
        let mut out = alloc_zeros::<T>(dev, n * batch)?;
        if n * batch > 0 {
            let x = input_slice::<T>(t, "tensor", dev)?;
            let kernel = format!("tile_batch_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::GraphConv, &kernel)?;
            let (n64, batch64) = (as_i64(n), as_i64(batch));
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(x).arg(&n64).arg(&batch64).arg(&mut out);
            // SAFETY: tile_batch_<T>(x, n, batch, out) reads x[i % n] (x holds n elements) and writes out[i]
            // for i < n*batch (out's length).
            unsafe { lb.launch(grid_for(n * batch)) }.map_err(Error::cuda(kernel))?;
        }
        Tensor::from_cuda_slice(out, shape, dev)
    })
}

/// `y + bias` over rows (f32 `y`, storage `bias` of `y`'s last extent, or none), rounded to `dtype`.
pub(super) fn bias_rows(
    dev: &CudaDevice,
    y: &Tensor,
    bias: Option<&Tensor>,
    dtype: DType,
) -> Result<Tensor> {
    let n = y.numel();
    let cols = *y.shape().last().unwrap_or(&0);
    by_storage_dtype!(dtype, T => {
        let mut out = alloc_zeros::<T>(dev, n)?;
        if n > 0 {
            let y_buf = input_slice::<f32>(y, "output", dev)?;
            let bias_buf = bias.map(|b| input_slice::<T>(b, "bias", dev)).transpose()?;
            let kernel = format!("bias_rows_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::GraphConv, &kernel)?;
            let (n64, cols64) = (as_i64(n), as_i64(cols));
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(y_buf);
            match bias_buf {
                Some(b) => lb.arg(b),
                None => lb.arg(&NULL_DEVICE_PTR),
            };
            lb.arg(&n64).arg(&cols64).arg(&mut out);
            // SAFETY: bias_rows_<T>(y, bias, n, cols, out) reads n floats of y, bias[i % cols] (bias holds
            // cols elements, validated by the caller; null is never dereferenced) and writes n elements of
            // out; n > 0 implies cols > 0.
            unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
        }
        Tensor::from_cuda_slice(out, y.shape(), dev)
    })
}

/// Column sums of the f32 `x` viewed as `[batch, rows, cols]`, rounded to `dtype`, shaped `out_shape`.
pub(super) fn col_sums(
    dev: &CudaDevice,
    x: &Tensor,
    (batch, rows, cols): (usize, usize, usize),
    out_shape: &[usize],
    dtype: DType,
) -> Result<Tensor> {
    by_storage_dtype!(dtype, T => {
        let mut out = alloc_zeros::<T>(dev, batch * cols)?;
        if batch * cols > 0 && rows > 0 {
            let x_buf = input_slice::<f32>(x, "tensor", dev)?;
            let kernel = format!("col_sums_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::GraphConv, &kernel)?;
            let (b64, r64, c64) = (as_i64(batch), as_i64(rows), as_i64(cols));
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(x_buf).arg(&b64).arg(&r64).arg(&c64).arg(&mut out);
            // SAFETY: col_sums_<T>(x, batch, rows, cols, out) reads x[(b*rows + r)*cols + c] for b < batch,
            // r < rows, c < cols (x holds batch*rows*cols floats, checked by the caller) and writes
            // out[b*cols + c] (out holds batch*cols); the block size is a multiple of 32 up to 1024.
            unsafe { lb.launch(column_tiles(batch, cols)) }.map_err(Error::cuda(kernel))?;
        }
        Tensor::from_cuda_slice(out, out_shape, dev)
    })
}

/// GloRe node-convolution epilogue `za + z + bias` (+ ReLU) for f32 `za`, `z`, rounded to `dtype`.
pub(super) fn node_conv_epilogue(
    dev: &CudaDevice,
    za: &Tensor,
    z: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
    dtype: DType,
) -> Result<Tensor> {
    let n = za.numel();
    let cols = *za.shape().last().unwrap_or(&0);
    by_storage_dtype!(dtype, T => {
        let mut out = alloc_zeros::<T>(dev, n)?;
        if n > 0 {
            let za_buf = input_slice::<f32>(za, "za", dev)?;
            let z_buf = input_slice::<f32>(z, "z", dev)?;
            let bias_buf = bias.map(|b| input_slice::<T>(b, "bias", dev)).transpose()?;
            let kernel = format!("node_conv_epilogue_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::GraphConv, &kernel)?;
            let (n64, cols64, relu32) = (as_i64(n), as_i64(cols), i32::from(relu));
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(za_buf).arg(z_buf);
            match bias_buf {
                Some(b) => lb.arg(b),
                None => lb.arg(&NULL_DEVICE_PTR),
            };
            lb.arg(&n64).arg(&cols64).arg(&relu32).arg(&mut out);
            // SAFETY: node_conv_epilogue_<T>(za, z, bias, n, cols, relu, out) reads n floats of za and z (both
            // shaped like the output), bias[i % cols] (cols elements, or null and never read) and writes n
            // elements of out.
            unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
        }
        Tensor::from_cuda_slice(out, za.shape(), dev)
    })
}

/// `grad ⊙ 1[relu_output > 0]` (or `grad`) as f32.
pub(super) fn relu_grad(
    dev: &CudaDevice,
    grad: &Tensor,
    relu_output: Option<&Tensor>,
) -> Result<Tensor> {
    let n = grad.numel();
    let mut out = f32_buffer(dev, n)?;
    if n > 0 {
        by_storage_dtype!(grad.dtype(), T => {
            let g_buf = input_slice::<T>(grad, "grad_output", dev)?;
            let o_buf = relu_output
                .map(|o| input_slice::<T>(o, "relu_output", dev))
                .transpose()?;
            let kernel = format!("relu_grad_{}", T::KERNEL_SUFFIX);
            let func = function(dev, Module::GraphConv, &kernel)?;
            let n64 = as_i64(n);
            let mut lb = dev.stream().launch_builder(&func);
            lb.arg(g_buf);
            match o_buf {
                Some(o) => lb.arg(o),
                None => lb.arg(&NULL_DEVICE_PTR),
            };
            lb.arg(&n64).arg(&mut out);
            // SAFETY: relu_grad_<T>(grad, out, n, res) reads n elements of grad and of relu_output (same
            // shape, validated; or null and never read) and writes n floats of res.
            unsafe { lb.launch(grid_for(n)) }.map_err(Error::cuda(kernel))?;
            Ok(())
        })?;
    }
    Tensor::from_cuda_slice(out, grad.shape(), dev)
}
