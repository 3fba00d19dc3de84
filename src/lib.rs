//! detkd: hand-written CUDA kernels, CPU references and autograd-style backward passes for knowledge
//! distillation of object detectors.
//!
//! Layers (data flows down, nothing imports upward): [`engine`] (teacher–student training, TinyGFL, data,
//! evaluation, the CLI's jobs) → [`distill`] (the five methods) → [`nn`] (layers and parameters) →
//! [`autograd`] (the tape) → [`ops`] (each primitive's CPU reference and CUDA wrapper) → [`cuda`] →
//! [`tensor`]; [`parity`] runs ops and methods from files for the `detkd parity` tool. Every op validates
//! its inputs on the host and returns [`Error`] for bad input; nothing panics on user data.
//!
//! ```
//! use detkd::ops::roi_align::{roi_align, RoiAlignConfig};
//! use detkd::Tensor;
//!
//! let features = Tensor::from_vec((0..2 * 4 * 4).map(|v| v as f32).collect(), &[1, 2, 4, 4])?;
//! let rois = Tensor::from_vec(vec![0.0f32, 0.5, 0.5, 3.0, 3.0], &[1, 5])?;
//! let pooled = roi_align(&features, &rois, 1.0, &RoiAlignConfig { output_size: (2, 2), ..Default::default() })?;
//! assert_eq!(pooled.shape(), &[1, 2, 2, 2]);
//! # Ok::<(), detkd::Error>(())
//! ```

#![warn(missing_docs)]

pub mod autograd;
pub mod cuda;
pub mod distill;
pub mod engine;
pub mod error;
pub mod nn;
pub mod ops;
pub mod parity;
pub mod tensor;
pub mod testing;

pub use error::{Error, Result};
pub use tensor::{DType, Device, Tensor};
