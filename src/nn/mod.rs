//! Layers on the tape: parameters and their binding ([`params`]), initialisation ([`init`]), and the
//! layers the detector and the distillation adapters are built from.

pub mod init;
pub mod params;

pub use params::{Bound, ParamId, ParamKind, ParamStore};
