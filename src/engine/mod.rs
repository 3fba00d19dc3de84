//! The teacher–student engine's host-side pieces: evaluation of detections (COCO metrics, NMS, GFL
//! post-processing).

pub mod eval;
