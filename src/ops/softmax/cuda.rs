//! Launch wrappers for kernels/softmax.cu. Inputs were validated by mod.rs (dtypes, devices, shapes, the
//! temperature, the row length below 2^31); this file picks the launch shape and the kernel instance.

use super::{Kind, Rows};
use crate::cuda::{function, input_slice, output_slice, Module, BLOCK};
use crate::error::{Error, Result};
use crate::tensor::{CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

/// Mirrors `struct SoftmaxArgs` in kernels/softmax.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SoftmaxArgs {
    rows: i64,
    cols: i32,
    group: i32,
    inv_temperature: f32,
    log_softmax: i32,
}

const _: () = assert!(
    std::mem::size_of::<SoftmaxArgs>() == 24,
    "must match the kernel's struct"
);

// SAFETY: #[repr(C)], Copy, one i64 then four 4-byte fields: 24 bytes with no padding (asserted above),
// laid out exactly like the kernel's `SoftmaxArgs`; no pointers.
unsafe impl DeviceRepr for SoftmaxArgs {}

/// Rows up to this long go to the group kernels (at most 32 elements per lane).
const GROUP_MAX_COLS: usize = 1024;
/// Grid-stride loops cover rows beyond this many blocks.
const MAX_BLOCKS: usize = 65_535;

/// The launch for `rows` rows of `cols`: the kernel-name stem, the lanes per row and the geometry.
fn launch(rows: Rows) -> (&'static str, usize, LaunchConfig) {
    let block = |blocks: usize| LaunchConfig {
        grid_dim: (blocks.clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    if rows.cols <= GROUP_MAX_COLS {
        // The smallest power of two giving each lane at most four elements, at most a warp.
        let group = rows.cols.div_ceil(4).next_power_of_two().clamp(1, 32);
        let rows_per_block = (BLOCK as usize / 32) * (32 / group);
        ("group", group, block(rows.rows.div_ceil(rows_per_block)))
    } else {
        ("block", 0, block(rows.rows))
    }
}

fn args(kind: Kind, rows: Rows, group: usize) -> SoftmaxArgs {
    SoftmaxArgs {
        rows: rows.rows as i64,
        cols: rows.cols as i32,
        group: group.max(1) as i32,
        inv_temperature: rows.inv_temperature as f32,
        log_softmax: (kind == Kind::LogSoftmax) as i32,
    }
}

fn unsupported(arg: &str, t: &Tensor) -> Error {
    Error::DType {
        arg: arg.into(),
        expected: "f32, f16 or bf16 on a CUDA device".into(),
        got: t.dtype().to_string(),
    }
}

pub(super) fn forward_into(
    dev: &CudaDevice,
    kind: Kind,
    x: &Tensor,
    rows: Rows,
    out: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        kind: Kind,
        x: &Tensor,
        rows: Rows,
        out: &mut Tensor,
    ) -> Result<()> {
        let (stem, group, cfg) = launch(rows);
        let kernel = format!("softmax_{stem}_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Softmax, &kernel)?;
        let a = args(kind, rows, group);
        let out_buf = output_slice::<T>(out, "out", dev)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(x, "x", dev)?).arg(&a).arg(out_buf);
        // SAFETY: softmax_{group,block}_<T>(x, args, out) reads and writes indices r·cols + c with r < rows,
        // c < cols, i.e. below the element count of x and out (both x's shape, checked in mod.rs). The group
        // kernels get a power-of-two group ≤ 32, the block kernels BLOCK = 256 threads (a multiple of 32).
        unsafe { lb.launch(cfg) }.map_err(Error::cuda(kernel))?;
        Ok(())
    }
    match x.dtype() {
        DType::F32 => typed::<f32>(dev, kind, x, rows, out),
        DType::F16 => typed::<f16>(dev, kind, x, rows, out),
        DType::BF16 => typed::<bf16>(dev, kind, x, rows, out),
        _ => Err(unsupported("x", x)),
    }
}

pub(super) fn backward_into(
    dev: &CudaDevice,
    kind: Kind,
    output: &Tensor,
    grad_out: &Tensor,
    rows: Rows,
    grad: &mut Tensor,
) -> Result<()> {
    fn typed<T: CudaElement>(
        dev: &CudaDevice,
        kind: Kind,
        output: &Tensor,
        grad_out: &Tensor,
        rows: Rows,
        grad: &mut Tensor,
    ) -> Result<()> {
        let (stem, group, cfg) = launch(rows);
        let kernel = format!("softmax_backward_{stem}_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Softmax, &kernel)?;
        let a = args(kind, rows, group);
        let grad_buf = output_slice::<T>(grad, "grad", dev)?;
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(input_slice::<T>(output, "output", dev)?)
            .arg(input_slice::<T>(grad_out, "grad_out", dev)?)
            .arg(&a)
            .arg(grad_buf);
        // SAFETY: softmax_backward_{group,block}_<T>(y, g, args, out) reads y and g and writes out at
        // r·cols + c with r < rows, c < cols; all three have output's shape (checked in mod.rs).
        unsafe { lb.launch(cfg) }.map_err(Error::cuda(kernel))?;
        Ok(())
    }
    match output.dtype() {
        DType::F32 => typed::<f32>(dev, kind, output, grad_out, rows, grad),
        DType::F16 => typed::<f16>(dev, kind, output, grad_out, rows, grad),
        DType::BF16 => typed::<bf16>(dev, kind, output, grad_out, rows, grad),
        _ => Err(unsupported("output", output)),
    }
}
