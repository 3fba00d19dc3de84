//! The crate's single error type. Every message names the argument, what was expected and what was given,
//! so a caller can fix the call without reading the source.

use std::path::PathBuf;

/// Result alias used across detkd.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in detkd. Bad input is always one of these, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor has the wrong rank or extent.
    #[error("`{arg}`: expected shape {expected}, got {got:?}")]
    Shape {
        /// Name of the offending argument or tensor (e.g. `pred`, or a parameter's dotted name).
        arg: String,
        /// The accepted shape or layout, in words (e.g. `[B, C, H, W]` or `a shape with 12 elements`).
        expected: String,
        /// The shape that was passed, one extent per dimension.
        got: Vec<usize>,
    },

    /// A tensor has a dtype the operation does not accept.
    #[error("`{arg}`: expected dtype {expected}, got {got}")]
    DType {
        /// Name of the offending argument or tensor.
        arg: String,
        /// The accepted dtypes, in words (e.g. `f32, f16 or bf16 on a CUDA device`).
        expected: String,
        /// The dtype that was passed, as [`crate::DType::name`] prints it (`f64`, `i64`, ...).
        got: String,
    },

    /// Inputs live on different devices, or on a device the operation does not support.
    #[error("`{arg}`: expected a tensor on {expected}, got one on {got}")]
    Device {
        /// Name of the offending argument or tensor.
        arg: String,
        /// The device the operation needed, in words or as a device name (`cpu`, `cuda:0`).
        expected: String,
        /// The device the tensor is on, as [`crate::Device`] displays it (`cpu`, `cuda:<ordinal>`).
        got: String,
    },

    /// A value is outside its valid range (a batch index, a non-finite coordinate, a zero size...).
    #[error("`{arg}`: {reason}")]
    InvalidArgument {
        /// Name of the offending argument (or the layer prefix / parameter name it concerns).
        arg: String,
        /// What is wrong with the value, in words.
        reason: String,
    },

    /// The CUDA path cannot be used here (no driver, no device, or the crate was built without `cuda`).
    #[error("CUDA is unavailable: {0}")]
    CudaUnavailable(String),

    /// The CUDA driver reported an error while running an operation.
    #[error("CUDA error in {context}: {message}")]
    Cuda {
        /// What detkd was doing: a kernel name, or a step such as `device allocation`.
        context: String,
        /// The driver's own description of the error.
        message: String,
    },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file that could not be read or written.
        path: PathBuf,
        /// The underlying operating-system error.
        source: std::io::Error,
    },

    /// A safetensors file is malformed, truncated, or holds something detkd cannot represent.
    #[error("safetensors {what}: {reason}")]
    Safetensors {
        /// The part at fault: `file`, `header`, a named tensor, a named metadata key or `serialisation`;
        /// prefixed with the file's path when it came from [`crate::tensor::io::load`].
        what: String,
        /// What is wrong with it (the parser's message, a missing name, an unsupported dtype...).
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(arg: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            arg: arg.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Shape`].
    pub fn shape(arg: impl Into<String>, expected: impl Into<String>, got: &[usize]) -> Self {
        Error::Shape {
            arg: arg.into(),
            expected: expected.into(),
            got: got.to_vec(),
        }
    }

    /// The same error, about argument `to` where it named `from` (an op reusing another's checks under
    /// its own argument names); any other error is returned unchanged.
    pub(crate) fn for_argument(self, from: &str, to: &str) -> Self {
        let rename = |arg: String| if arg == from { to.to_string() } else { arg };
        match self {
            Error::Shape { arg, expected, got } => Error::Shape {
                arg: rename(arg),
                expected,
                got,
            },
            Error::DType { arg, expected, got } => Error::DType {
                arg: rename(arg),
                expected,
                got,
            },
            Error::Device { arg, expected, got } => Error::Device {
                arg: rename(arg),
                expected,
                got,
            },
            Error::InvalidArgument { arg, reason } => Error::InvalidArgument {
                arg: rename(arg),
                reason,
            },
            other => other,
        }
    }
}

#[cfg(feature = "cuda")]
impl Error {
    /// Wraps a driver error with what detkd was doing when it happened.
    pub(crate) fn cuda(
        context: impl Into<String>,
    ) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
        let context = context.into();
        move |e| Error::Cuda {
            context,
            message: e.to_string(),
        }
    }
}
