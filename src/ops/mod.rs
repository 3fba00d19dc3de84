//! The primitives the distillation methods decompose into. Each op folder holds the public API and
//! validation (`mod.rs`), the CPU reference (`cpu.rs`) and the CUDA launch wrappers (`cuda.rs`).

pub mod roi_align;
pub(crate) mod validate;
