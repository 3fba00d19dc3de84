use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::matmul as op;

impl Tape {
    /// `op(a)·op(b)` ([`crate::ops::matmul::matmul`]), single or batched; gradients to both operands.
    pub fn matmul(&self, a: Var, b: Var, trans_a: bool, trans_b: bool) -> Result<Var> {
        let (av, bv) = (self.value(a)?, self.value(b)?);
        let out = op::matmul(&av, &bv, trans_a, trans_b)?;
        let (need_a, need_b) = (self.requires_grad(a)?, self.requires_grad(b)?);
        self.record("matmul", &[a, b], out, move |g| {
            // Each operand's gradient is one product; skip the one nobody needs.
            let grad_a = need_a
                .then(|| {
                    if trans_a {
                        op::matmul(&bv, g, trans_b, true)
                    } else {
                        op::matmul(g, &bv, false, !trans_b)
                    }
                })
                .transpose()?;
            let grad_b = need_b
                .then(|| {
                    if trans_b {
                        op::matmul(g, &av, true, trans_a)
                    } else {
                        op::matmul(&av, g, !trans_a, false)
                    }
                })
                .transpose()?;
            Ok(vec![grad_a, grad_b])
        })
    }
}
