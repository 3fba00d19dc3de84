//! safetensors load/save of named tensors, with the file's string metadata.
//!
//! Names, dtypes and shapes are preserved exactly. A malformed, truncated or unsupported file is an
//! [`Error::Safetensors`] naming the file and what is wrong; nothing here panics on bad bytes.

use super::{with_cpu_storage, CpuStorage, DType, Device, Tensor};
use crate::error::{Error, Result};
use half::{bf16, f16};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Tensors by name plus the file's `__metadata__` map.
#[derive(Debug, Default)]
pub struct NamedTensors {
    /// The tensors by their names in the file (e.g. `backbone.conv1.weight`), sorted by name; host tensors.
    pub tensors: BTreeMap<String, Tensor>,
    /// The file's `__metadata__` string map (empty when the file has none).
    pub metadata: BTreeMap<String, String>,
}

impl NamedTensors {
    /// The tensor called `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::Safetensors {
            what: format!("tensor `{name}`"),
            reason: format!(
                "not in the file (it has: {})",
                self.tensors.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// The metadata value under `key`, or an error naming it.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::Safetensors {
                what: format!("metadata key `{key}`"),
                reason: "missing".into(),
            })
    }
}

/// Reads a safetensors file into host tensors.
pub fn load(path: impl AsRef<Path>) -> Result<NamedTensors> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(&bytes).map_err(|e| match e {
        Error::Safetensors { what, reason } => Error::Safetensors {
            what: format!("{} ({what})", path.display()),
            reason,
        },
        other => other,
    })
}

/// Parses safetensors bytes into host tensors. F32, F64, F16, BF16 and I64 tensors are supported.
pub fn from_bytes(bytes: &[u8]) -> Result<NamedTensors> {
    let parsed = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        what: "file".into(),
        reason: e.to_string(),
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| Error::Safetensors {
        what: "header".into(),
        reason: e.to_string(),
    })?;
    let mut out = NamedTensors::default();
    if let Some(meta) = header.metadata() {
        out.metadata = meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    for (name, view) in parsed.tensors() {
        let tensor = tensor_from_view(&name, &view)?;
        out.tensors.insert(name, tensor);
    }
    Ok(out)
}

fn tensor_from_view(name: &str, view: &TensorView<'_>) -> Result<Tensor> {
    // The data may sit at any byte offset in the file, so collect into aligned vectors instead of casting.
    let data = view.data();
    let storage = match view.dtype() {
        StDtype::F32 => CpuStorage::F32(bytemuck::pod_collect_to_vec::<u8, f32>(data)),
        StDtype::F64 => CpuStorage::F64(bytemuck::pod_collect_to_vec::<u8, f64>(data)),
        StDtype::F16 => CpuStorage::F16(bytemuck::pod_collect_to_vec::<u8, f16>(data)),
        StDtype::BF16 => CpuStorage::BF16(bytemuck::pod_collect_to_vec::<u8, bf16>(data)),
        StDtype::I64 => CpuStorage::I64(bytemuck::pod_collect_to_vec::<u8, i64>(data)),
        other => {
            return Err(Error::Safetensors {
                what: format!("tensor `{name}`"),
                reason: format!(
                    "dtype {other:?} is not supported (expected F32, F64, F16, BF16 or I64)"
                ),
            })
        }
    };
    Tensor::from_cpu_storage(storage, view.shape())
}

fn safetensors_dtype(dtype: DType) -> StDtype {
    match dtype {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        DType::I64 => StDtype::I64,
    }
}

/// Serialises named tensors (copied to the host if needed) and metadata to safetensors bytes.
pub fn to_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut host: Vec<(String, Vec<usize>, DType, Vec<u8>)> = Vec::new();
    for (name, tensor) in tensors {
        let cpu;
        let storage = match tensor.cpu_storage() {
            Some(s) => s,
            None => {
                cpu = tensor.to_device(&Device::Cpu)?;
                cpu.cpu_storage()
                    .expect("to_device(Cpu) returns a host tensor")
            }
        };
        let bytes = with_cpu_storage!(storage, v => bytemuck::cast_slice::<_, u8>(v).to_vec());
        host.push((
            name.to_string(),
            tensor.shape().to_vec(),
            tensor.dtype(),
            bytes,
        ));
    }
    let mut views = Vec::with_capacity(host.len());
    for (name, shape, dtype, bytes) in &host {
        let view =
            TensorView::new(safetensors_dtype(*dtype), shape.clone(), bytes).map_err(|e| {
                Error::Safetensors {
                    what: format!("tensor `{name}`"),
                    reason: e.to_string(),
                }
            })?;
        views.push((name.as_str(), view));
    }
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    safetensors::serialize(views, (!meta.is_empty()).then_some(meta)).map_err(|e| {
        Error::Safetensors {
            what: "serialisation".into(),
            reason: e.to_string(),
        }
    })
}

/// Writes named tensors and metadata to a safetensors file.
pub fn save<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_bytes(tensors, metadata)?;
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<(String, Tensor)>, BTreeMap<String, String>) {
        let tensors = vec![
            (
                "a.weight".to_string(),
                Tensor::from_vec(vec![1.0f32, -2.5, 3.25, 0.0, 5.0, 6.0], &[2, 3]).unwrap(),
            ),
            (
                "b".to_string(),
                Tensor::from_vec(vec![0.1f64, 0.2], &[2]).unwrap(),
            ),
            (
                "c".to_string(),
                Tensor::from_vec(vec![f16::from_f32(1.5); 4], &[1, 2, 2]).unwrap(),
            ),
            (
                "d".to_string(),
                Tensor::from_vec(vec![bf16::from_f32(-3.0); 3], &[3]).unwrap(),
            ),
            (
                "empty".to_string(),
                Tensor::from_vec(Vec::<f32>::new(), &[0, 5]).unwrap(),
            ),
            (
                "labels".to_string(),
                Tensor::from_vec(vec![3i64, -1, 80], &[3]).unwrap(),
            ),
        ];
        let meta = BTreeMap::from([("op".to_string(), "roi_align".to_string())]);
        (tensors, meta)
    }

    #[test]
    fn round_trip_preserves_names_dtypes_shapes_and_values() {
        let (tensors, meta) = sample();
        let bytes = to_bytes(tensors.iter().map(|(n, t)| (n.as_str(), t)), &meta).unwrap();
        let back = from_bytes(&bytes).unwrap();
        assert_eq!(back.metadata, meta);
        assert_eq!(back.tensors.len(), tensors.len());
        for (name, t) in &tensors {
            let b = back.get(name).unwrap();
            assert_eq!(b.shape(), t.shape(), "{name}");
            assert_eq!(b.dtype(), t.dtype(), "{name}");
            assert_eq!(b.cpu_storage(), t.cpu_storage(), "{name}");
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let (tensors, meta) = sample();
        let bytes = to_bytes(tensors.iter().map(|(n, t)| (n.as_str(), t)), &meta).unwrap();
        for len in 0..bytes.len() {
            assert!(
                from_bytes(&bytes[..len]).is_err(),
                "truncated to {len} bytes parsed"
            );
        }
    }

    #[test]
    fn garbage_and_bad_headers_are_errors() {
        assert!(from_bytes(b"").is_err());
        assert!(from_bytes(&[0xff; 64]).is_err());
        let mut bad_json = 8u64.to_le_bytes().to_vec();
        bad_json.extend_from_slice(b"{not json");
        assert!(from_bytes(&bad_json).is_err());
        // A header whose offsets point past the data.
        let header = br#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let mut short = (header.len() as u64).to_le_bytes().to_vec();
        short.extend_from_slice(header);
        short.extend_from_slice(&[0u8; 8]);
        let err = from_bytes(&short).unwrap_err();
        assert!(err.to_string().starts_with("safetensors"), "{err}");
    }

    #[test]
    fn unsupported_dtype_is_named() {
        let header = br#"{"idx":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 8]);
        let err = from_bytes(&bytes).unwrap_err().to_string();
        assert!(err.contains("`idx`") && err.contains("U8"), "{err}");
    }

    #[test]
    fn missing_file_and_missing_tensor_are_named() {
        let err = load("/nonexistent/detkd.safetensors")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/detkd.safetensors"), "{err}");
        let err = NamedTensors::default().get("w").unwrap_err().to_string();
        assert!(err.contains("`w`"), "{err}");
    }
}
