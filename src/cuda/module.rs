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
    DistKl,
    Focal,
    GraphConv,
    Im2col,
    Matmul,
    Norm,
    Prototype,
    Resize,
    RoiAlign,
    Similarity,
}

impl Module {
    fn name(self) -> &'static str {
        match self {
            Module::Accumulate => "accumulate",
            Module::DistKl => "dist_kl",
            Module::Focal => "focal",
            Module::GraphConv => "graph_conv",
            Module::Im2col => "im2col",
            Module::Matmul => "matmul",
            Module::Norm => "norm",
            Module::Prototype => "prototype",
            Module::Resize => "resize",
            Module::RoiAlign => "roi_align",
            Module::Similarity => "similarity",
        }
    }

    fn ptx(self) -> &'static str {
        match self {
            Module::Accumulate => ptx::ACCUMULATE,
            Module::DistKl => ptx::DIST_KL,
            Module::Focal => ptx::FOCAL,
            Module::GraphConv => ptx::GRAPH_CONV,
            Module::Im2col => ptx::IM2COL,
            Module::Matmul => ptx::MATMUL,
            Module::Norm => ptx::NORM,
            Module::Prototype => ptx::PROTOTYPE,
            Module::Resize => ptx::RESIZE,
            Module::RoiAlign => ptx::ROI_ALIGN,
            Module::Similarity => ptx::SIMILARITY,
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
