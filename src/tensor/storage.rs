//! Typed element buffers on the host and, with the `cuda` feature, on a CUDA device.

use super::dtype::{DType, Element};
use half::{bf16, f16};

/// Host storage, one variant per dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    /// [`DType::F32`] elements.
    F32(Vec<f32>),
    /// [`DType::F64`] elements (host only; used by gradchecks).
    F64(Vec<f64>),
    /// [`DType::F16`] elements (IEEE half precision).
    F16(Vec<f16>),
    /// [`DType::BF16`] elements (bfloat16).
    BF16(Vec<bf16>),
    /// [`DType::I64`] elements (labels and indices).
    I64(Vec<i64>),
}

/// Applies the same generic expression to whichever typed vector a [`CpuStorage`] holds.
macro_rules! with_cpu_storage {
    ($storage:expr, $v:ident => $body:expr) => {
        match $storage {
            CpuStorage::F32($v) => $body,
            CpuStorage::F64($v) => $body,
            CpuStorage::F16($v) => $body,
            CpuStorage::BF16($v) => $body,
            CpuStorage::I64($v) => $body,
        }
    };
}
pub(crate) use with_cpu_storage;

impl CpuStorage {
    /// The dtype of the held vector.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::I64(_) => DType::I64,
        }
    }

    /// Number of elements held.
    pub fn len(&self) -> usize {
        with_cpu_storage!(self, v => v.len())
    }

    /// Whether no elements are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` zeros of `dtype`.
    pub fn zeros(dtype: DType, len: usize) -> Self {
        match dtype {
            DType::F32 => CpuStorage::F32(vec![0.0; len]),
            DType::F64 => CpuStorage::F64(vec![0.0; len]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; len]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; len]),
            DType::I64 => CpuStorage::I64(vec![0; len]),
        }
    }

    /// The first `len` elements (all of them if there are fewer).
    pub fn truncated(self, len: usize) -> Self {
        let mut s = self;
        with_cpu_storage!(&mut s, v => v.truncate(len));
        s
    }

    /// Converts every element to `T` (through f64, which represents every supported dtype exactly).
    pub fn to_vec_of<T: Element>(&self) -> Vec<T> {
        with_cpu_storage!(self, v => v.iter().map(|x| T::from_f64(x.to_f64())).collect())
    }
}

/// Moves typed vectors in and out of [`CpuStorage`] without runtime dtype dispatch at the call site.
pub trait HostElement: Element {
    /// Moves `data` into the [`CpuStorage`] variant of this type (no copy).
    fn wrap(data: Vec<Self>) -> CpuStorage;
    /// The elements, if `storage` holds this type; `None` for any other dtype (no conversion).
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    /// The elements, mutably, if `storage` holds this type; `None` for any other dtype.
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]>;
}

macro_rules! impl_host_element {
    ($t:ty, $variant:ident) => {
        impl HostElement for $t {
            fn wrap(data: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(data)
            }
            fn slice(storage: &CpuStorage) -> Option<&[Self]> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
impl_host_element!(f32, F32);
impl_host_element!(f64, F64);
impl_host_element!(f16, F16);
impl_host_element!(bf16, BF16);
impl_host_element!(i64, I64);

#[cfg(feature = "cuda")]
pub use cuda_storage::{CudaData, CudaElement, CudaStorage};

#[cfg(feature = "cuda")]
mod cuda_storage {
    use super::super::device::CudaDevice;
    use super::{bf16, f16, DType, HostElement};
    use cudarc::driver::CudaSlice;

    /// Device storage: the buffer and the device (stream) it belongs to.
    #[derive(Debug)]
    pub struct CudaStorage {
        /// The device whose stream owns `data`; every launch on the buffer is ordered on that stream.
        pub device: CudaDevice,
        /// The typed buffer; may be longer than the tensor (an empty tensor keeps a one-element buffer).
        pub data: CudaData,
    }

    /// Device buffers, one variant per dtype the kernels support (f64 stays on the host).
    #[derive(Debug)]
    pub enum CudaData {
        /// [`DType::F32`] elements.
        F32(CudaSlice<f32>),
        /// [`DType::F16`] elements.
        F16(CudaSlice<f16>),
        /// [`DType::BF16`] elements.
        BF16(CudaSlice<bf16>),
        /// [`DType::I64`] elements (labels and indices).
        I64(CudaSlice<i64>),
    }

    impl CudaData {
        /// The dtype of the held buffer.
        pub fn dtype(&self) -> DType {
            match self {
                CudaData::F32(_) => DType::F32,
                CudaData::F16(_) => DType::F16,
                CudaData::BF16(_) => DType::BF16,
                CudaData::I64(_) => DType::I64,
            }
        }
    }

    /// An element type that can live on a CUDA device: f32, f16, bf16 (with kernels) and i64 (labels).
    pub trait CudaElement:
        HostElement + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits
    {
        /// The suffix of this dtype's kernel instantiations (`roi_align_forward_f32`, ...).
        const KERNEL_SUFFIX: &'static str;
        /// Moves a device buffer into the [`CudaData`] variant of this type (no copy).
        fn wrap_device(data: CudaSlice<Self>) -> CudaData;
        /// The buffer, if `data` holds this type; `None` for any other dtype.
        fn device_slice(data: &CudaData) -> Option<&CudaSlice<Self>>;
        /// The buffer, mutably, if `data` holds this type; `None` for any other dtype.
        fn device_slice_mut(data: &mut CudaData) -> Option<&mut CudaSlice<Self>>;
        /// Takes the buffer out if `data` holds this dtype, else hands `data` back.
        fn into_device_slice(data: CudaData) -> Result<CudaSlice<Self>, CudaData>;
    }

    macro_rules! impl_cuda_element {
        ($t:ty, $variant:ident, $suffix:literal) => {
            impl CudaElement for $t {
                const KERNEL_SUFFIX: &'static str = $suffix;
                fn wrap_device(data: CudaSlice<Self>) -> CudaData {
                    CudaData::$variant(data)
                }
                fn device_slice(data: &CudaData) -> Option<&CudaSlice<Self>> {
                    match data {
                        CudaData::$variant(v) => Some(v),
                        _ => None,
                    }
                }
                fn device_slice_mut(data: &mut CudaData) -> Option<&mut CudaSlice<Self>> {
                    match data {
                        CudaData::$variant(v) => Some(v),
                        _ => None,
                    }
                }
                fn into_device_slice(data: CudaData) -> Result<CudaSlice<Self>, CudaData> {
                    match data {
                        CudaData::$variant(v) => Ok(v),
                        other => Err(other),
                    }
                }
            }
        };
    }
    impl_cuda_element!(f32, F32, "f32");
    impl_cuda_element!(f16, F16, "f16");
    impl_cuda_element!(bf16, BF16, "bf16");
    impl_cuda_element!(i64, I64, "i64");
}
