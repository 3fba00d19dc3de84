//! The teacher–student engine: label assignment, (later) the detector, data, evaluation and the loops.

pub mod assign;
