//! Launch wrappers for kernels/resize.cu. Shapes, dtypes and devices were validated in mod.rs (and empty
//! inputs returned before reaching here); storage tensors are `T` ∈ {f32, f16, bf16}.

use super::AxisTable;
use crate::cuda::{function, grid_for, input_slice, output_slice, Module};
use crate::error::{Error, Result};
use crate::tensor::{CudaDevice, CudaElement, DType, Tensor};
use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
use half::{bf16, f16};

/// Mirrors `struct ResizeArgs` in kernels/resize.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ResizeArgs {
    planes: i64,
    h: i32,
    w: i32,
    oh: i32,
    ow: i32,
}

const _: () = assert!(
    std::mem::size_of::<ResizeArgs>() == 24,
    "must match the kernel's struct"
);

// SAFETY: #[repr(C)], Copy, one i64 then four i32: 24 bytes without padding, laid out exactly like the
// kernel's `ResizeArgs`.
unsafe impl DeviceRepr for ResizeArgs {}

/// Every extent was checked to fit `int` in mod.rs.
fn args(planes: usize, (h, w): (usize, usize), (oh, ow): (usize, usize)) -> ResizeArgs {
    ResizeArgs {
        planes: planes as i64,
        h: h as i32,
        w: w as i32,
        oh: oh as i32,
        ow: ow as i32,
    }
}

/// Runs `$body` with `$t` bound to the element type of the storage dtype `$dtype`.
macro_rules! by_storage {
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
                arg: "input".into(),
                expected: "f32, f16 or bf16 on a CUDA device".into(),
                got: other.to_string(),
            }),
        }
    };
}

/// The bilinear tables of both axes on the device, in the layout kernels/resize.cu reads:
/// index `[i0_h | i1_h | i0_w | i1_w | first_h | end_h | first_w | end_w]`, weight `[l0_h | l1_h | l0_w | l1_w]`.
fn upload_tables(
    dev: &CudaDevice,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Result<(CudaSlice<i32>, CudaSlice<f32>)> {
    let th = AxisTable::<f32>::bilinear(h, oh);
    let tw = AxisTable::<f32>::bilinear(w, ow);
    let index: Vec<i32> = [
        &th.i0[..],
        &th.i1,
        &tw.i0,
        &tw.i1,
        &th.first,
        &th.end,
        &tw.first,
        &tw.end,
    ]
    .concat();
    let weight: Vec<f32> = [&th.l0[..], &th.l1, &tw.l0, &tw.l1].concat();
    let err = || Error::cuda("uploading the resize tables");
    let stream = dev.stream();
    Ok((
        stream.clone_htod(&index).map_err(err())?,
        stream.clone_htod(&weight).map_err(err())?,
    ))
}

fn planes(t: &Tensor) -> usize {
    t.shape()[0] * t.shape()[1]
}

pub(super) fn bilinear_forward_into(
    dev: &CudaDevice,
    input: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    let s = input.shape();
    let (hw, ohw) = ((s[2], s[3]), (out.shape()[2], out.shape()[3]));
    let (index, weight) = upload_tables(dev, hw, ohw)?;
    by_storage!(input.dtype(), T => {
        let x = input_slice::<T>(input, "input", dev)?;
        let y = output_slice::<T>(out, "out", dev)?;
        let kernel = format!("resize_bilinear_forward_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Resize, &kernel)?;
        let a = args(planes(input), hw, ohw);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(x).arg(&index).arg(&weight).arg(&a).arg(y);
        // SAFETY: resize_bilinear_forward_<T>(x, index, weight, args, out) writes out[i] for
        // i < planes·OH·OW (out's shape) and reads x at plane·H·W + row·W + col with row, col taken from the
        // tables, which hold indices in [0, H) and [0, W); index holds 2·OH + 2·OW + 2·H + 2·W entries and
        // weight 2·OH + 2·OW, the layout the kernel reads.
        unsafe { lb.launch(grid_for(planes(input) * ohw.0 * ohw.1)) }.map_err(Error::cuda(kernel))?;
        Ok(())
    })
}

pub(super) fn bilinear_backward_into(
    dev: &CudaDevice,
    grad_output: &Tensor,
    output_size: (usize, usize),
    grad: &mut Tensor,
) -> Result<()> {
    let hw = (grad.shape()[2], grad.shape()[3]);
    let (index, weight) = upload_tables(dev, hw, output_size)?;
    by_storage!(grad_output.dtype(), T => {
        let g = input_slice::<T>(grad_output, "grad_output", dev)?;
        let dx = output_slice::<T>(grad, "grad_input", dev)?;
        let kernel = format!("resize_bilinear_backward_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Resize, &kernel)?;
        let a = args(planes(grad_output), hw, output_size);
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(g).arg(&index).arg(&weight).arg(&a).arg(dx);
        // SAFETY: resize_bilinear_backward_<T>(grad_out, index, weight, args, grad_x) writes grad_x[i] for
        // i < planes·H·W (its shape) and reads grad_out at plane·OH·OW + u·OW + v for u, v in the tables'
        // ranges, which lie in [0, OH) and [0, OW); the tables have the layout the kernel reads.
        unsafe { lb.launch(grid_for(planes(grad_output) * hw.0 * hw.1)) }
            .map_err(Error::cuda(kernel))?;
        Ok(())
    })
}

pub(super) fn nearest2x_forward_into(
    dev: &CudaDevice,
    input: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    let s = input.shape();
    let hw = (s[2], s[3]);
    by_storage!(input.dtype(), T => {
        let x = input_slice::<T>(input, "input", dev)?;
        let y = output_slice::<T>(out, "out", dev)?;
        let kernel = format!("upsample_nearest2x_forward_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Resize, &kernel)?;
        let a = args(planes(input), hw, (2 * hw.0, 2 * hw.1));
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(x).arg(&a).arg(y);
        // SAFETY: upsample_nearest2x_forward_<T>(x, args, out) writes out[i] for i < planes·4·H·W (out is
        // [B, C, 2H, 2W]) and reads x[plane·H·W + (u/2)·W + v/2] with u < 2H, v < 2W: within x's planes·H·W.
        unsafe { lb.launch(grid_for(planes(input) * 4 * hw.0 * hw.1)) }
            .map_err(Error::cuda(kernel))?;
        Ok(())
    })
}

pub(super) fn nearest2x_backward_into(
    dev: &CudaDevice,
    grad_output: &Tensor,
    input_size: (usize, usize),
    grad: &mut Tensor,
) -> Result<()> {
    by_storage!(grad_output.dtype(), T => {
        let g = input_slice::<T>(grad_output, "grad_output", dev)?;
        let dx = output_slice::<T>(grad, "grad_input", dev)?;
        let kernel = format!("upsample_nearest2x_backward_{}", T::KERNEL_SUFFIX);
        let func = function(dev, Module::Resize, &kernel)?;
        let a = args(planes(grad_output), input_size, (2 * input_size.0, 2 * input_size.1));
        let mut lb = dev.stream().launch_builder(&func);
        lb.arg(g).arg(&a).arg(dx);
        // SAFETY: upsample_nearest2x_backward_<T>(grad_out, args, grad_x) writes grad_x[i] for i < planes·H·W
        // (its shape) and reads grad_out at plane·4HW + (2y + {0,1})·2W + 2x + {0,1} with y < H, x < W:
        // within grad_out's planes·2H·2W elements.
        unsafe { lb.launch(grid_for(planes(grad_output) * input_size.0 * input_size.1)) }
            .map_err(Error::cuda(kernel))?;
        Ok(())
    })
}
