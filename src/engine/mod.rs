//! The teacher–student engine: data ([`data`]: the synthetic shapes set, COCO-format loading, transforms,
//! batching), label assignment ([`assign`]) and evaluation of detections ([`eval`]: COCO metrics, NMS, GFL
//! post-processing).

pub mod assign;
pub mod data;
pub mod demo;
pub mod eval;
pub mod jobs;
pub mod methods;
pub mod model;
pub mod optim;
pub mod report;
pub mod teacher_cache;
pub mod train;
