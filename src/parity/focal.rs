//! Parity entries for the `focal` op family.

use super::{ParityInputs, Results};
use crate::error::{Error, Result};

pub(super) const OPS: &[&str] = &[];

pub(super) fn run(op: &str, _inputs: &ParityInputs<'_>) -> Result<Results> {
    Err(Error::invalid(
        "op",
        format!("`{op}` has no parity entry yet"),
    ))
}
