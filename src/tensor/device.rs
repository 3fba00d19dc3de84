//! Where a tensor lives. `Device::Cuda` exists in every build so that code matching on devices compiles with
//! and without the `cuda` feature; without it, [`CudaDevice`] cannot be constructed.

use std::fmt;

/// A compute device: the host CPU or one CUDA device (a context and the stream detkd launches on).
#[derive(Clone, Debug, PartialEq)]
pub enum Device {
    /// The host; ops run synchronously on the CPU reference kernels. Displays as `cpu`.
    Cpu,
    /// One CUDA device and the stream detkd launches on. Displays as `cuda:<ordinal>`.
    Cuda(CudaDevice),
}

impl Device {
    /// Whether this is [`Device::Cpu`].
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// Waits until all work detkd queued on this device has finished (a no-op on the CPU, whose ops are
    /// synchronous). Needed before timing, and before handing buffers to code on another stream.
    pub fn synchronize(&self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => d
                .stream()
                .synchronize()
                .map_err(crate::Error::cuda("stream synchronize")),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(d) => d.unreachable(),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(d) => write!(f, "cuda:{}", d.ordinal()),
        }
    }
}

#[cfg(feature = "cuda")]
pub use with_cuda::CudaDevice;
#[cfg(not(feature = "cuda"))]
pub use without_cuda::CudaDevice;

#[cfg(feature = "cuda")]
mod with_cuda {
    use cudarc::driver::{CudaContext, CudaModule, CudaStream};
    use std::collections::HashMap;
    use std::fmt;
    use std::sync::{Arc, Mutex};

    /// A handle to one CUDA device: its context, the stream every detkd launch on it is ordered on, and the
    /// kernel modules loaded so far. Cheap to clone; clones share the stream and modules.
    #[derive(Clone)]
    pub struct CudaDevice {
        inner: Arc<Inner>,
    }

    struct Inner {
        stream: Arc<CudaStream>,
        name: String,
        modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    }

    impl CudaDevice {
        /// Runs detkd's work on `stream`, e.g. a stream owned by the embedding trainer, so that detkd's launches
        /// are ordered with the caller's own kernels without extra synchronisation.
        pub fn from_stream(stream: Arc<CudaStream>) -> Self {
            let name = stream
                .context()
                .name()
                .unwrap_or_else(|_| "unknown CUDA device".into());
            CudaDevice {
                inner: Arc::new(Inner {
                    stream,
                    name,
                    modules: Mutex::new(HashMap::new()),
                }),
            }
        }

        /// The CUDA device index, as in `cuda:0` (counted among the devices visible to this process).
        pub fn ordinal(&self) -> usize {
            self.inner.stream.context().ordinal()
        }

        /// The device's marketing name, e.g. "NVIDIA H100 80GB HBM3".
        pub fn name(&self) -> &str {
            &self.inner.name
        }

        /// The cudarc context of the device.
        pub fn context(&self) -> &Arc<CudaContext> {
            self.inner.stream.context()
        }

        /// The stream every detkd launch and copy on this device is queued on.
        pub fn stream(&self) -> &Arc<CudaStream> {
            &self.inner.stream
        }

        /// Loaded kernel modules, keyed by module name; filled lazily by the CUDA layer.
        pub(crate) fn modules(&self) -> &Mutex<HashMap<&'static str, Arc<CudaModule>>> {
            &self.inner.modules
        }
    }

    impl PartialEq for CudaDevice {
        fn eq(&self, other: &Self) -> bool {
            Arc::ptr_eq(&self.inner, &other.inner)
                || (self.ordinal() == other.ordinal()
                    && Arc::ptr_eq(self.inner.stream.context(), other.inner.stream.context()))
        }
    }

    impl fmt::Debug for CudaDevice {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "CudaDevice({}: {})", self.ordinal(), self.name())
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod without_cuda {
    /// Uninhabited without the `cuda` feature: no value of it can exist, so `Device::Cuda` is unreachable.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct CudaDevice {
        never: std::convert::Infallible,
    }

    impl CudaDevice {
        /// The CUDA device index; never callable without the `cuda` feature.
        pub fn ordinal(&self) -> usize {
            match self.never {}
        }

        /// The device's name; never callable without the `cuda` feature.
        pub fn name(&self) -> &str {
            match self.never {}
        }

        /// Turns the impossible value into any type, for exhaustive matches on [`super::Device`].
        pub(crate) fn unreachable<T>(&self) -> T {
            match self.never {}
        }
    }
}
