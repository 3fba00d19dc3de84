//! Reverse-mode autodiff for composing detkd's ops: the [`Tape`], its ops ([`ops`]), and gradient checking.
//! [`gradcheck()`](gradcheck::gradcheck) is the numerical ground truth every backward pass in detkd is tested against;
//! [`tape_gradcheck`] applies it to any function built on a tape.

pub mod gradcheck;
pub mod ops;
mod tape;

pub use gradcheck::{
    gradcheck, tape_gradcheck, GradcheckFailure, GradcheckOptions, GradcheckReport,
};
pub use tape::{BackwardFn, Gradients, Tape, Var};
