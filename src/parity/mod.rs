//! `detkd parity`: run one op on tensors from a safetensors file, the way a user's PyTorch code would, and
//! return the output and input gradients, so detkd can be checked against any reference implementation.
//!
//! The input file's metadata names the op (`op`) and its configuration; its tensors are the op's inputs and,
//! optionally, `grad_out`. Every op family documents its keys in its own file here; README.md has the table.
//! The common key `dtype` (`f32`, `f64`, `f16`, `bf16`) casts the float data inputs before running; boxes,
//! labels and indices keep their stored dtype.

mod boxes;
mod conv2d;
mod dist_kl;
mod drkd;
mod dsig;
mod elementwise;
mod focal;
mod gkd;
mod graph_conv;
mod hgd;
mod ld;
mod norm;
mod optim;
mod prototype;
mod reduce;
mod resize;
mod roi_align;
mod shape;
mod similarity;
mod softmax;

use crate::error::{Error, Result};
use crate::tensor::io::NamedTensors;
use crate::tensor::{DType, Device, Tensor};
use std::str::FromStr;

pub use roi_align::roi_align_metadata;

/// Named result tensors of one parity run.
pub(crate) type Results = Vec<(String, Tensor)>;

/// An op family's entry: the op names it answers to and its runner.
struct Family {
    ops: &'static [&'static str],
    run: fn(&str, &ParityInputs<'_>) -> Result<Results>,
}

const FAMILIES: &[Family] = &[
    Family {
        ops: roi_align::OPS,
        run: roi_align::run,
    },
    Family {
        ops: similarity::OPS,
        run: similarity::run,
    },
    Family {
        ops: graph_conv::OPS,
        run: graph_conv::run,
    },
    Family {
        ops: prototype::OPS,
        run: prototype::run,
    },
    Family {
        ops: focal::OPS,
        run: focal::run,
    },
    Family {
        ops: dist_kl::OPS,
        run: dist_kl::run,
    },
    Family {
        ops: optim::OPS,
        run: optim::run,
    },
    Family {
        ops: shape::OPS,
        run: shape::run,
    },
    Family {
        ops: boxes::OPS,
        run: boxes::run,
    },
    Family {
        ops: elementwise::OPS,
        run: elementwise::run,
    },
    Family {
        ops: reduce::OPS,
        run: reduce::run,
    },
    Family {
        ops: softmax::OPS,
        run: softmax::run,
    },
    Family {
        ops: conv2d::OPS,
        run: conv2d::run,
    },
    Family {
        ops: resize::OPS,
        run: resize::run,
    },
    Family {
        ops: norm::OPS,
        run: norm::run,
    },
    Family {
        ops: ld::OPS,
        run: ld::run,
    },
    Family {
        ops: dsig::OPS,
        run: dsig::run,
    },
    Family {
        ops: drkd::OPS,
        run: drkd::run,
    },
    Family {
        ops: gkd::OPS,
        run: gkd::run,
    },
    Family {
        ops: hgd::OPS,
        run: hgd::run,
    },
];

/// Runs the op described by `inputs` on `device` and returns its results (on the host).
pub fn run(inputs: &NamedTensors, device: &Device) -> Result<NamedTensors> {
    let dtype =
        match inputs.metadata.get("dtype") {
            Some(name) => Some(DType::from_name(name).filter(|d| d.is_float()).ok_or_else(
                || {
                    Error::invalid(
                        "dtype",
                        format!("expected f32, f64, f16 or bf16, got `{name}`"),
                    )
                },
            )?),
            None => None,
        };
    let op = inputs.meta("op")?;
    let family = FAMILIES
        .iter()
        .find(|f| f.ops.contains(&op))
        .ok_or_else(|| {
            let known: Vec<&str> = FAMILIES
                .iter()
                .flat_map(|f| f.ops.iter().copied())
                .collect();
            Error::invalid(
                "op",
                format!("unknown op `{op}` (known: {})", known.join(", ")),
            )
        })?;
    let ctx = ParityInputs {
        inputs,
        device,
        dtype,
    };
    let results = (family.run)(op, &ctx)?;
    let mut out = NamedTensors {
        metadata: inputs.metadata.clone(),
        ..Default::default()
    };
    out.metadata.insert("device".into(), device.to_string());
    for (name, t) in results {
        out.tensors.insert(name, t.to_device(&Device::Cpu)?);
    }
    Ok(out)
}

/// What an op family's runner reads its inputs and configuration through.
pub(crate) struct ParityInputs<'a> {
    inputs: &'a NamedTensors,
    device: &'a Device,
    dtype: Option<DType>,
}

impl ParityInputs<'_> {
    /// A float data input, cast to the file's `dtype` (if given) and moved to the target device.
    pub fn data(&self, name: &str) -> Result<Tensor> {
        let t = self.inputs.get(name)?;
        match self.dtype {
            Some(d) if t.dtype().is_float() && d != t.dtype() => {
                t.to_dtype(d)?.to_device(self.device)
            }
            _ => t.to_device(self.device),
        }
    }

    /// An input kept at its stored dtype on the host: boxes (ops compute coordinates in f32/f64 whatever
    /// the data dtype), labels, index lists.
    pub fn host(&self, name: &str) -> Result<Tensor> {
        self.inputs.get(name)?.try_clone()
    }

    /// An input kept at its stored dtype, moved to the target device (labels for a CUDA kernel).
    pub fn exact(&self, name: &str) -> Result<Tensor> {
        self.inputs.get(name)?.to_device(self.device)
    }

    pub fn has(&self, name: &str) -> bool {
        self.inputs.tensors.contains_key(name)
    }

    pub fn has_meta(&self, key: &str) -> bool {
        self.inputs.metadata.contains_key(key)
    }

    /// Metadata value `key` parsed as `T`; `what` describes the expected form in the error.
    pub fn parse<T: FromStr>(&self, key: &str, what: &str) -> Result<T> {
        let raw = self.inputs.meta(key)?;
        raw.trim()
            .parse()
            .map_err(|_| Error::invalid(key, format!("expected {what}, got `{raw}`")))
    }

    /// Like [`ParityInputs::parse`], with a default when the key is absent.
    pub fn parse_or<T: FromStr>(&self, key: &str, what: &str, default: T) -> Result<T> {
        if self.has_meta(key) {
            self.parse(key, what)
        } else {
            Ok(default)
        }
    }

    /// Comma-separated values.
    pub fn parse_list<T: FromStr>(&self, key: &str, what: &str) -> Result<Vec<T>> {
        let raw = self.inputs.meta(key)?;
        raw.split(',')
            .map(|v| {
                v.trim().parse().map_err(|_| {
                    Error::invalid(key, format!("expected comma-separated {what}, got `{raw}`"))
                })
            })
            .collect()
    }

    /// `true` / `false`, with an optional default when the key is absent.
    pub fn parse_bool(&self, key: &str, default: Option<bool>) -> Result<bool> {
        match (self.inputs.metadata.get(key).map(String::as_str), default) {
            (Some("true"), _) => Ok(true),
            (Some("false"), _) => Ok(false),
            (Some(other), _) => Err(Error::invalid(
                key,
                format!("expected `true` or `false`, got `{other}`"),
            )),
            (None, Some(d)) => Ok(d),
            (None, None) => self.inputs.meta(key).map(|_| false),
        }
    }

    /// A raw metadata string.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.inputs.meta(key)
    }
}
