//! The teacher–student engine's host-side pieces.
//!
//! - [`data`]: detection data sets (synthetic shapes, COCO-format files), transforms, batch collation and a
//!   seeded data loader.

pub mod data;
