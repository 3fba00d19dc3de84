//! Gradient checking (and, later, the tape). [`gradcheck`] is the numerical ground truth every backward
//! pass in detkd is tested against.

pub mod gradcheck;

pub use gradcheck::{gradcheck, GradcheckFailure, GradcheckOptions, GradcheckReport};
