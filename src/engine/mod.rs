//! The teacher–student engine: label assignment ([`assign`]) and evaluation of detections ([`eval`]: COCO
//! metrics, NMS, GFL post-processing).

pub mod assign;
pub mod eval;
