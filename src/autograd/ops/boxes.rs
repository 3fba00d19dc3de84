use super::with_optional;
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::boxes::{self as op, GiouLossConfig};
use crate::ops::dist_kl::LossWeighting;

impl Tape {
    /// Boxes `(p_x − l, p_y − t, p_x + r, p_y + b)` from the constant `points` `[N, 2]` and `distances`
    /// `[N, 4]`, optionally clamped to `max_shape = (h, w)`; gradient to the distances.
    pub fn distance2bbox(
        &self,
        points: Var,
        distances: Var,
        max_shape: Option<(f64, f64)>,
    ) -> Result<Var> {
        let (pv, dv) = (self.value(points)?, self.value(distances)?);
        let out = op::distance2bbox(&pv, &dv, max_shape)?;
        self.record("distance2bbox", &[points, distances], out, move |g| {
            Ok(vec![
                None,
                Some(op::distance2bbox_backward(g, &pv, &dv, max_shape)?),
            ])
        })
    }

    /// mmdet's GIoU loss `1 − GIoU(pred, target)` with optional constant per-row `weight` and
    /// `avg_factor`; gradient to `pred` only (targets are constants).
    pub fn giou_loss(
        &self,
        pred: Var,
        target: Var,
        weight: Option<Var>,
        avg_factor: Option<f64>,
        cfg: &GiouLossConfig,
    ) -> Result<Var> {
        let (pv, tv) = (self.value(pred)?, self.value(target)?);
        let wv = weight.map(|w| self.value(w)).transpose()?;
        let out = op::giou_loss(&pv, &tv, LossWeighting::new(wv.as_deref(), avg_factor), cfg)?;
        let cfg = cfg.clone();
        let inputs = with_optional(&[pred, target], weight);
        self.record("giou_loss", &inputs, out, move |g| {
            let weighting = LossWeighting::new(wv.as_deref(), avg_factor);
            let grad = op::giou_loss_backward(g, &pv, &tv, weighting, &cfg)?;
            let mut grads = vec![Some(grad), None];
            grads.extend(wv.as_ref().map(|_| None));
            Ok(grads)
        })
    }
}
