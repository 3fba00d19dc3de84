//! The CUDA layer: device discovery that never panics, the embedded PTX modules, and launch helpers.
//!
//! Without the `cuda` feature only [`probe`] and [`gpu_for_test`] exist, and they report that CUDA is
//! unavailable, so callers need no `cfg` of their own.

use crate::error::{Error, Result};
use crate::tensor::{CudaDevice, Device};

#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
mod module;

#[cfg(feature = "cuda")]
mod buffers;

#[cfg(feature = "cuda")]
pub(crate) use buffers::{alloc_zeros, f32_into, input_slice, output_slice, sum_partials};
#[cfg(feature = "cuda")]
#[allow(unused_imports)] // BLOCK: for kernels whose launch shape depends on the block size
pub(crate) use launch::{grid_for, BLOCK, NULL_DEVICE_PTR};
#[cfg(feature = "cuda")]
pub(crate) use module::{function, Module};

/// The PTX text of every `kernels/*.cu`, compiled by build.rs (empty strings when built with
/// `DETKD_ALLOW_NO_NVCC=1`).
#[cfg(feature = "cuda")]
pub mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Device 0, opened once per process. Never panics: without a driver, a device, or the `cuda` feature it
/// returns [`Error::CudaUnavailable`] saying which.
pub fn probe() -> Result<CudaDevice> {
    #[cfg(feature = "cuda")]
    {
        use std::sync::OnceLock;
        static DEVICE: OnceLock<std::result::Result<CudaDevice, String>> = OnceLock::new();
        DEVICE
            .get_or_init(open_device_zero)
            .clone()
            .map_err(Error::CudaUnavailable)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(Error::CudaUnavailable(
            "detkd was built without the `cuda` feature (cargo build --features cuda)".into(),
        ))
    }
}

/// The CUDA device if one is usable, else the CPU.
pub fn default_device() -> Device {
    probe().map(Device::Cuda).unwrap_or(Device::Cpu)
}

#[cfg(feature = "cuda")]
fn open_device_zero() -> std::result::Result<CudaDevice, String> {
    use cudarc::driver::CudaContext;
    // SAFETY: is_culib_present only attempts to dlopen the driver library and reports whether that worked;
    // it calls no driver entry point. Without it, the first driver call would panic inside cudarc.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the NVIDIA driver library (libcuda.so) was not found".into());
    }
    let count =
        CudaContext::device_count().map_err(|e| format!("cuInit/cuDeviceGetCount failed: {e}"))?;
    if count < 1 {
        return Err("the driver reports no CUDA device".into());
    }
    let ctx =
        CudaContext::new(0).map_err(|e| format!("cannot create a context on device 0: {e}"))?;
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| format!("cannot query the compute capability: {e}"))?;
    if major < 8 {
        return Err(format!(
            "device 0 has compute capability {major}.{minor}; detkd's PTX targets sm_80 and newer"
        ));
    }
    let stream = ctx
        .new_stream()
        .map_err(|e| format!("cannot create a stream: {e}"))?;
    Ok(CudaDevice::from_stream(stream))
}

/// For GPU tests: the device, or `None` after printing a `SKIP` line when none is usable. With
/// `DETKD_REQUIRE_GPU=1` a missing device is a panic instead, so a GPU run cannot pass by skipping.
pub fn gpu_for_test(test: &str) -> Option<CudaDevice> {
    match probe() {
        Ok(dev) => Some(dev),
        Err(e) => {
            if std::env::var("DETKD_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: DETKD_REQUIRE_GPU=1 but {e}");
            }
            eprintln!("SKIP {test}: {e}");
            None
        }
    }
}
