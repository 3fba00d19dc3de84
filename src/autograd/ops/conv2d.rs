use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::conv2d::{self as op, Conv2dConfig, Conv2dGradsWanted};

impl Tape {
    /// 2-D convolution of `input` `[B, Cin, H, W]` with `weight` `[Cout, Cin, KH, KW]` (PyTorch's OIHW) and an
    /// optional `bias` `[Cout]`; gradients to every input that requires one.
    pub fn conv2d(
        &self,
        input: Var,
        weight: Var,
        bias: Option<Var>,
        cfg: &Conv2dConfig,
    ) -> Result<Var> {
        let (xv, wv) = (self.value(input)?, self.value(weight)?);
        let bv = bias.map(|b| self.value(b)).transpose()?;
        let out = op::conv2d(&xv, &wv, bv.as_deref(), cfg)?;
        let wanted = Conv2dGradsWanted {
            input: self.requires_grad(input)?,
            bias: bv.is_some(),
        };
        let cfg = *cfg;
        let mut inputs = vec![input, weight];
        inputs.extend(bias);
        self.record("conv2d", &inputs, out, move |g| {
            let grads = op::conv2d_backward(&xv, &wv, g, wanted, &cfg)?;
            let mut out = vec![grads.input, Some(grads.weight)];
            if bv.is_some() {
                out.push(grads.bias);
            }
            Ok(out)
        })
    }
}
