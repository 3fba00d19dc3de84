//! The primitives the distillation methods decompose into. Each op folder holds the public API and
//! validation (`mod.rs`), the CPU reference (`cpu.rs`) and the CUDA launch wrappers (`cuda.rs`).

pub mod boxes;
pub mod conv2d;
pub mod dist_kl;
pub mod elementwise;
pub mod focal;
pub mod graph_conv;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod prototype;
pub mod reduce;
pub mod resize;
pub mod roi_align;
pub mod shape;
pub mod similarity;
pub mod softmax;
pub(crate) mod validate;
