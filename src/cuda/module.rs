//! Loading the embedded PTX modules, once per device, and looking up kernels by name.

use crate::cuda::ptx;
use crate::error::{Error, Result};
use crate::tensor::CudaDevice;
use cudarc::driver::CudaFunction;
use cudarc::nvrtc::Ptx;

/// One compiled `kernels/<name>.cu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(dead_code)] // variants are used as each op family's CUDA path lands
pub(crate) enum Module {
    Accumulate,
    Boxes,
    DistKl,
    Elementwise,
    Focal,
    GraphConv,
    Im2col,
    Matmul,
    Norm,
    Optim,
    Prototype,
    Reduce,
    Resize,
    RoiAlign,
    Shape,
    Similarity,
    Softmax,
}

impl Module {
    fn name(self) -> &'static str {
        match self {
            Module::Accumulate => "accumulate",
            Module::Boxes => "boxes",
            Module::DistKl => "dist_kl",
            Module::Elementwise => "elementwise",
            Module::Focal => "focal",
            Module::GraphConv => "graph_conv",
            Module::Im2col => "im2col",
            Module::Matmul => "matmul",
            Module::Norm => "norm",
            Module::Optim => "optim",
            Module::Prototype => "prototype",
            Module::Reduce => "reduce",
            Module::Resize => "resize",
            Module::RoiAlign => "roi_align",
            Module::Shape => "shape",
            Module::Similarity => "similarity",
            Module::Softmax => "softmax",
        }
    }

    fn ptx(self) -> &'static str {
        match self {
            Module::Accumulate => ptx::ACCUMULATE,
            Module::Boxes => ptx::BOXES,
            Module::DistKl => ptx::DIST_KL,
            Module::Elementwise => ptx::ELEMENTWISE,
            Module::Focal => ptx::FOCAL,
            Module::GraphConv => ptx::GRAPH_CONV,
            Module::Im2col => ptx::IM2COL,
            Module::Matmul => ptx::MATMUL,
            Module::Norm => ptx::NORM,
            Module::Optim => ptx::OPTIM,
            Module::Prototype => ptx::PROTOTYPE,
            Module::Reduce => ptx::REDUCE,
            Module::Resize => ptx::RESIZE,
            Module::RoiAlign => ptx::ROI_ALIGN,
            Module::Shape => ptx::SHAPE,
            Module::Similarity => ptx::SIMILARITY,
            Module::Softmax => ptx::SOFTMAX,
        }
    }
}

/// The kernel `name` of `module` on `dev`; the module is JIT-loaded on first use and cached on the device.
pub(crate) fn function(dev: &CudaDevice, module: Module, name: &str) -> Result<CudaFunction> {
    let loaded = {
        let mut cache = dev
            .modules()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match cache.get(module.name()) {
            Some(m) => m.clone(),
            None => {
                if module.ptx().is_empty() {
                    return Err(Error::CudaUnavailable(format!(
                        "module `{}` has no PTX: detkd was built with DETKD_ALLOW_NO_NVCC=1",
                        module.name()
                    )));
                }
                let m = dev
                    .context()
                    .load_module(Ptx::from_src(module.ptx()))
                    .map_err(Error::cuda(format!("loading module `{}`", module.name())))?;
                cache.insert(module.name(), m.clone());
                m
            }
        }
    };
    loaded
        .load_function(name)
        .map_err(Error::cuda(format!("looking up kernel `{name}`")))
}
