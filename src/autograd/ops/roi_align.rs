use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::roi_align::{self as op, FpnLevels, RoiAlignConfig};

impl Tape {
    /// RoIAlign of `features` `[N, C, H, W]` at the constant `rois` `[K, 5]`; gradient to the features.
    pub fn roi_align(
        &self,
        features: Var,
        rois: Var,
        spatial_scale: f64,
        cfg: &RoiAlignConfig,
    ) -> Result<Var> {
        let (fv, rv) = (self.value(features)?, self.value(rois)?);
        let out = op::roi_align(&fv, &rv, spatial_scale, cfg)?;
        let cfg = cfg.clone();
        self.record("roi_align", &[features, rois], out, move |g| {
            let grad = op::roi_align_backward(g, &rv, fv.shape(), spatial_scale, &cfg)?;
            Ok(vec![Some(grad), None])
        })
    }

    /// Multi-level RoIAlign over FPN levels (finest first) at the constant `rois`, each RoI pooled from the
    /// level `levels.rule` maps it to; gradients to every level.
    pub fn roi_align_multilevel(
        &self,
        features: &[Var],
        rois: Var,
        levels: &FpnLevels,
        cfg: &RoiAlignConfig,
    ) -> Result<Var> {
        let values = features
            .iter()
            .map(|&f| self.value(f))
            .collect::<Result<Vec<_>>>()?;
        let rv = self.value(rois)?;
        let refs: Vec<&crate::Tensor> = values.iter().map(|v| &**v).collect();
        let out = op::roi_align_multilevel(&refs, &rv, levels, cfg)?;
        let (levels, cfg) = (levels.clone(), cfg.clone());
        let mut inputs = features.to_vec();
        inputs.push(rois);
        self.record("roi_align_multilevel", &inputs, out, move |g| {
            let shapes: Vec<&[usize]> = values.iter().map(|v| v.shape()).collect();
            let grads = op::roi_align_multilevel_backward(g, &rv, &shapes, &levels, &cfg)?;
            let mut out: Vec<_> = grads.into_iter().map(Some).collect();
            out.push(None);
            Ok(out)
        })
    }
}
