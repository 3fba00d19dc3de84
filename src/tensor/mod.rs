//! Dense, contiguous, row-major tensors on the host or a CUDA device.
//!
//! A [`Tensor`] is deliberately plain: a shape, a dtype and one buffer. Ops take tensors by reference and return
//! new ones; layouts are always contiguous NCHW-style row-major, so kernels never see strides.

mod device;
mod dtype;
pub mod io;
mod storage;

pub use device::{CudaDevice, Device};
pub use dtype::{DType, Element, Real};
pub(crate) use storage::with_cpu_storage;
pub use storage::{CpuStorage, HostElement};
#[cfg(feature = "cuda")]
pub use storage::{CudaData, CudaElement, CudaStorage};

use crate::error::{Error, Result};

/// Where a tensor's elements are.
#[derive(Debug)]
pub enum Storage {
    /// A host buffer.
    Cpu(CpuStorage),
    /// A buffer on a CUDA device (only with the `cuda` feature).
    #[cfg(feature = "cuda")]
    Cuda(CudaStorage),
}

/// A dense row-major tensor.
#[derive(Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

/// Number of elements of `shape`, or an error if it overflows `usize`.
fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Error::invalid(
                "shape",
                format!("{shape:?} has more elements than fit in memory"),
            )
        })
}

impl Tensor {
    /// A host tensor owning `data`, which must hold exactly `shape.iter().product()` elements.
    pub fn from_vec<T: HostElement>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_cpu_storage(T::wrap(data), shape)
    }

    /// A host tensor over `storage`, which must hold exactly `shape.iter().product()` elements; the dtype is
    /// the storage's.
    pub fn from_cpu_storage(storage: CpuStorage, shape: &[usize]) -> Result<Tensor> {
        let n = element_count(shape)?;
        if storage.len() != n {
            return Err(Error::invalid(
                "data",
                format!("shape {shape:?} needs {n} elements, got {}", storage.len()),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cpu(storage),
        })
    }

    /// Wraps an existing device buffer (e.g. one owned by the embedding trainer) without copying.
    #[cfg(feature = "cuda")]
    pub fn from_cuda_slice<T: CudaElement>(
        data: cudarc::driver::CudaSlice<T>,
        shape: &[usize],
        device: &CudaDevice,
    ) -> Result<Tensor> {
        let n = element_count(shape)?;
        // An empty tensor may sit in a non-empty buffer (zero-byte device allocations are invalid).
        if data.len() != n && n != 0 {
            return Err(Error::invalid(
                "data",
                format!(
                    "shape {shape:?} needs {n} elements, got a device buffer of {}",
                    data.len()
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cuda(CudaStorage {
                device: device.clone(),
                data: T::wrap_device(data),
            }),
        })
    }

    /// A zero-filled tensor.
    pub fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let n = element_count(shape)?;
        let storage = match device {
            Device::Cpu => Storage::Cpu(CpuStorage::zeros(dtype, n)),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => Storage::Cuda(CudaStorage::zeros(dev, dtype, n)?),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(dev) => dev.unreachable(),
        };
        Ok(Tensor {
            shape: shape.to_vec(),
            storage,
        })
    }

    /// The extent of each dimension, outermost first (row-major; `[]` for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions (0 for a scalar).
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements: the product of the shape (1 for a scalar, 0 if any extent is 0).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The element type of the storage.
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::Cpu(s) => s.dtype(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.data.dtype(),
        }
    }

    /// Where the elements are: [`Device::Cpu`], or the CUDA device (a cheap handle clone) holding them.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => Device::Cuda(s.device.clone()),
        }
    }

    /// The underlying buffer, host or device.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The host buffer, if this tensor lives on the host.
    pub fn cpu_storage(&self) -> Option<&CpuStorage> {
        match &self.storage {
            Storage::Cpu(s) => Some(s),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => None,
        }
    }

    /// The device buffer, if this tensor lives on a CUDA device.
    #[cfg(feature = "cuda")]
    pub fn cuda_storage(&self) -> Option<&CudaStorage> {
        match &self.storage {
            Storage::Cpu(_) => None,
            Storage::Cuda(s) => Some(s),
        }
    }

    /// The device buffer, mutably, if this tensor lives on a CUDA device.
    #[cfg(feature = "cuda")]
    pub fn cuda_storage_mut(&mut self) -> Option<&mut CudaStorage> {
        match &mut self.storage {
            Storage::Cpu(_) => None,
            Storage::Cuda(s) => Some(s),
        }
    }

    /// The elements of a host tensor of dtype `T`, without copying.
    pub fn as_slice<T: HostElement>(&self) -> Result<&[T]> {
        let storage = self.cpu_storage().ok_or_else(|| Error::Device {
            arg: "tensor".into(),
            expected: "cpu".into(),
            got: self.device().to_string(),
        })?;
        T::slice(storage).ok_or_else(|| Error::DType {
            arg: "tensor".into(),
            expected: T::DTYPE.to_string(),
            got: self.dtype().to_string(),
        })
    }

    /// The elements of a host tensor of dtype `T`, mutably, without copying (in-place updates such as an
    /// optimizer step on the CPU).
    pub fn as_mut_slice<T: HostElement>(&mut self) -> Result<&mut [T]> {
        let (device, dtype) = (self.device(), self.dtype());
        let storage = self.cpu_storage_mut().ok_or_else(|| Error::Device {
            arg: "tensor".into(),
            expected: "cpu".into(),
            got: device.to_string(),
        })?;
        T::slice_mut(storage).ok_or_else(|| Error::DType {
            arg: "tensor".into(),
            expected: T::DTYPE.to_string(),
            got: dtype.to_string(),
        })
    }

    /// The host buffer, mutably, if this tensor lives on the host.
    pub fn cpu_storage_mut(&mut self) -> Option<&mut CpuStorage> {
        match &mut self.storage {
            Storage::Cpu(s) => Some(s),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => None,
        }
    }

    /// Copies the elements to a host vector, converting them to `T` (exact for widening conversions).
    pub fn to_vec<T: HostElement>(&self) -> Result<Vec<T>> {
        match &self.storage {
            Storage::Cpu(s) => Ok(s.to_vec_of::<T>()),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => self.to_device(&Device::Cpu)?.to_vec::<T>(),
        }
    }

    /// The same elements with another shape of equal element count.
    pub fn reshape(self, shape: &[usize]) -> Result<Tensor> {
        let n = element_count(shape)?;
        if n != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("a shape with {} elements", self.numel()),
                shape,
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: self.storage,
        })
    }

    /// A copy converted to `dtype`. On a CUDA device the conversion goes through the host.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let host = match &self.storage {
            Storage::Cpu(s) => convert_storage(s, dtype),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => {
                let cpu = self.to_device(&Device::Cpu)?;
                return cpu.to_dtype(dtype)?.to_device(&self.device());
            }
        };
        Tensor::from_cpu_storage(host, &self.shape)
    }

    /// This tensor converted to `dtype`; free when it already has that dtype.
    pub fn into_dtype(self, dtype: DType) -> Result<Tensor> {
        if self.dtype() == dtype {
            Ok(self)
        } else {
            self.to_dtype(dtype)
        }
    }

    /// The elements as `T` on the host: borrowed when they already are, converted (copied) otherwise.
    pub fn host_values<T: HostElement>(&self) -> Result<std::borrow::Cow<'_, [T]>> {
        match self.cpu_storage().and_then(T::slice) {
            Some(slice) => Ok(std::borrow::Cow::Borrowed(slice)),
            None => Ok(std::borrow::Cow::Owned(self.to_vec::<T>()?)),
        }
    }

    /// A deep copy.
    pub fn try_clone(&self) -> Result<Tensor> {
        self.to_device(&self.device())
    }

    /// A copy on `device` (a deep copy even when it is already there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        let storage = match (&self.storage, device) {
            (Storage::Cpu(s), Device::Cpu) => Storage::Cpu(s.clone()),
            #[cfg(feature = "cuda")]
            (Storage::Cpu(s), Device::Cuda(dev)) => Storage::Cuda(upload(s, dev)?),
            #[cfg(feature = "cuda")]
            (Storage::Cuda(s), Device::Cpu) => Storage::Cpu(download(s, self.numel())?),
            #[cfg(feature = "cuda")]
            (Storage::Cuda(s), Device::Cuda(dev)) if s.device == *dev => {
                Storage::Cuda(copy_on_device(s)?)
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(s), Device::Cuda(dev)) => {
                Storage::Cuda(upload(&download(s, self.numel())?, dev)?)
            }
            #[cfg(not(feature = "cuda"))]
            (Storage::Cpu(_), Device::Cuda(dev)) => dev.unreachable(),
        };
        Ok(Tensor {
            shape: self.shape.clone(),
            storage,
        })
    }
}

fn convert_storage(s: &CpuStorage, dtype: DType) -> CpuStorage {
    match dtype {
        DType::F32 => CpuStorage::F32(s.to_vec_of()),
        DType::F64 => CpuStorage::F64(s.to_vec_of()),
        DType::F16 => CpuStorage::F16(s.to_vec_of()),
        DType::BF16 => CpuStorage::BF16(s.to_vec_of()),
        DType::I64 => CpuStorage::I64(s.to_vec_of()),
    }
}

#[cfg(feature = "cuda")]
impl CudaStorage {
    /// A zero-filled device buffer (memset on the device, no host traffic). Empty tensors get a one-element
    /// buffer: the driver rejects zero-byte allocations, and tensor lengths come from shapes, not buffers.
    pub fn zeros(dev: &CudaDevice, dtype: DType, len: usize) -> Result<CudaStorage> {
        let stream = dev.stream();
        let err = || Error::cuda("device allocation");
        let len = len.max(1);
        let data = match dtype {
            DType::F32 => CudaData::F32(stream.alloc_zeros(len).map_err(err())?),
            DType::F16 => CudaData::F16(stream.alloc_zeros(len).map_err(err())?),
            DType::BF16 => CudaData::BF16(stream.alloc_zeros(len).map_err(err())?),
            DType::I64 => CudaData::I64(stream.alloc_zeros(len).map_err(err())?),
            DType::F64 => return Err(f64_on_device()),
        };
        Ok(CudaStorage {
            device: dev.clone(),
            data,
        })
    }
}

#[cfg(feature = "cuda")]
fn f64_on_device() -> Error {
    Error::DType {
        arg: "tensor".into(),
        expected: "f32, f16, bf16 or i64 on a CUDA device (f64 is host-only)".into(),
        got: "f64".into(),
    }
}

#[cfg(feature = "cuda")]
fn upload(s: &CpuStorage, dev: &CudaDevice) -> Result<CudaStorage> {
    if s.is_empty() {
        return CudaStorage::zeros(dev, s.dtype(), 0);
    }
    let stream = dev.stream();
    let err = || Error::cuda("host-to-device copy");
    let data = match s {
        CpuStorage::F32(v) => CudaData::F32(stream.clone_htod(v).map_err(err())?),
        CpuStorage::F16(v) => CudaData::F16(stream.clone_htod(v).map_err(err())?),
        CpuStorage::BF16(v) => CudaData::BF16(stream.clone_htod(v).map_err(err())?),
        CpuStorage::I64(v) => CudaData::I64(stream.clone_htod(v).map_err(err())?),
        CpuStorage::F64(_) => return Err(f64_on_device()),
    };
    Ok(CudaStorage {
        device: dev.clone(),
        data,
    })
}

/// A device-to-device copy on the buffer's own stream (no host round trip).
#[cfg(feature = "cuda")]
fn copy_on_device(s: &CudaStorage) -> Result<CudaStorage> {
    let stream = s.device.stream();
    let err = || Error::cuda("device-to-device copy");
    let data = match &s.data {
        CudaData::F32(v) => CudaData::F32(stream.clone_dtod(v).map_err(err())?),
        CudaData::F16(v) => CudaData::F16(stream.clone_dtod(v).map_err(err())?),
        CudaData::BF16(v) => CudaData::BF16(stream.clone_dtod(v).map_err(err())?),
        CudaData::I64(v) => CudaData::I64(stream.clone_dtod(v).map_err(err())?),
    };
    Ok(CudaStorage {
        device: s.device.clone(),
        data,
    })
}

#[cfg(feature = "cuda")]
/// The first `len` elements of a device buffer (which may be longer: see [`CudaStorage::zeros`]).
fn download(s: &CudaStorage, len: usize) -> Result<CpuStorage> {
    let stream = s.device.stream();
    let err = || Error::cuda("device-to-host copy");
    if len == 0 {
        return Ok(CpuStorage::zeros(s.data.dtype(), 0));
    }
    Ok(match &s.data {
        CudaData::F32(v) => CpuStorage::F32(stream.clone_dtoh(v).map_err(err())?),
        CudaData::F16(v) => CpuStorage::F16(stream.clone_dtoh(v).map_err(err())?),
        CudaData::BF16(v) => CpuStorage::BF16(stream.clone_dtoh(v).map_err(err())?),
        CudaData::I64(v) => CpuStorage::I64(stream.clone_dtoh(v).map_err(err())?),
    }
    .truncated(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_length() {
        let err = Tensor::from_vec(vec![1.0f32; 5], &[2, 3]).unwrap_err();
        assert!(err.to_string().contains("needs 6 elements, got 5"), "{err}");
    }

    #[test]
    fn dtype_round_trip_and_reshape() {
        let t = Tensor::from_vec(vec![1.5f64, -2.0, 0.25, 4.0], &[2, 2]).unwrap();
        let h = t.to_dtype(DType::BF16).unwrap();
        assert_eq!(h.dtype(), DType::BF16);
        assert_eq!(h.to_vec::<f64>().unwrap(), vec![1.5, -2.0, 0.25, 4.0]);
        let r = h.reshape(&[4]).unwrap();
        assert_eq!(r.shape(), &[4]);
        assert!(r.reshape(&[3]).is_err());
    }

    #[test]
    fn as_slice_reports_dtype_mismatch() {
        let t = Tensor::from_vec(vec![1.0f32], &[1]).unwrap();
        let err = t.as_slice::<f64>().unwrap_err();
        assert!(
            err.to_string().contains("expected dtype f64, got f32"),
            "{err}"
        );
    }

    #[test]
    fn overflowing_shape_is_an_error() {
        assert!(Tensor::zeros(&[usize::MAX, 2], DType::F32, &Device::Cpu).is_err());
    }
}
