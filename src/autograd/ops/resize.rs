use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::resize as op;

impl Tape {
    /// Bilinear resize of `[B, C, H, W]` to `size = (h, w)` (`F.interpolate(mode='bilinear',
    /// align_corners=False)`).
    pub fn resize_bilinear(&self, x: Var, size: (usize, usize)) -> Result<Var> {
        let xv = self.value(x)?;
        let out = op::resize_bilinear(&xv, size)?;
        let input_size = (xv.shape()[2], xv.shape()[3]);
        self.record("resize_bilinear", &[x], out, move |g| {
            Ok(vec![Some(op::resize_bilinear_backward(g, input_size)?)])
        })
    }

    /// Nearest-neighbour 2× upsampling (`F.interpolate(scale_factor=2, mode='nearest')`), as in FPN.
    pub fn upsample_nearest2x(&self, x: Var) -> Result<Var> {
        let out = op::upsample_nearest2x(&*self.value(x)?)?;
        self.record("upsample_nearest2x", &[x], out, move |g| {
            Ok(vec![Some(op::upsample_nearest2x_backward(g)?)])
        })
    }
}
