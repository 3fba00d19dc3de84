use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::prototype::{self as op, SoftAssignConfig};
use std::rc::Rc;

impl Tape {
    /// Soft assignment `softmax_k(−‖x_i − p_k‖²/τ)` (or its log) of `x` `[N, D]` to `prototypes` `[K, D]`;
    /// gradients to `x` and, when they require one, the prototypes.
    pub fn soft_assignment(&self, x: Var, prototypes: Var, cfg: &SoftAssignConfig) -> Result<Var> {
        let (xv, pv) = (self.value(x)?, self.value(prototypes)?);
        let out = Rc::new(op::soft_assignment(&xv, &pv, cfg)?);
        let saved = out.clone();
        let need_p = self.requires_grad(prototypes)?;
        let cfg = *cfg;
        self.record("soft_assignment", &[x, prototypes], out, move |g| {
            let (gx, gp) = op::soft_assignment_backward(&xv, &pv, &saved, g, &cfg, need_p)?;
            Ok(vec![Some(gx), gp])
        })
    }
}
