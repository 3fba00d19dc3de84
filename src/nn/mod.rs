//! Layers on the tape: parameters and their binding ([`params`]), initialisation ([`init`]), and the
//! layers the detector and the distillation adapters are built from.

pub mod init;
pub mod layers;
pub mod params;

pub use layers::{BatchNorm2d, BufferUpdates, Conv2d, ConvSpec, GroupNorm, Linear, WeightInit};
pub use params::{Bound, ParamId, ParamKind, ParamStore};
