use super::with_optional;
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::focal::{self as op, MmcvFocalConfig, QualityFocalConfig, SigmoidFocalConfig};

impl Tape {
    /// torchvision's sigmoid focal loss of `logits` against the constant float `targets`; gradient to the
    /// logits. See [`crate::ops::focal::sigmoid_focal_loss`].
    pub fn sigmoid_focal_loss(
        &self,
        logits: Var,
        targets: Var,
        cfg: &SigmoidFocalConfig,
    ) -> Result<Var> {
        let (lv, tv) = (self.value(logits)?, self.value(targets)?);
        let out = op::sigmoid_focal_loss(&lv, &tv, cfg)?;
        let cfg = cfg.clone();
        self.record("sigmoid_focal_loss", &[logits, targets], out, move |g| {
            let grad = op::sigmoid_focal_loss_backward(g, &lv, &tv, &cfg)?;
            Ok(vec![Some(grad), None])
        })
    }

    /// mmcv's sigmoid focal loss of `logits` `[N, C]` at the constant i64 `labels` `[N]` (C = background),
    /// optional constant per-class `weight` `[C]`; gradient to the logits.
    pub fn sigmoid_focal_loss_mmcv(
        &self,
        logits: Var,
        labels: Var,
        weight: Option<Var>,
        cfg: &MmcvFocalConfig,
    ) -> Result<Var> {
        let (lv, yv) = (self.value(logits)?, self.value(labels)?);
        let wv = weight.map(|w| self.value(w)).transpose()?;
        let out = op::sigmoid_focal_loss_mmcv(&lv, &yv, wv.as_deref(), cfg)?;
        let cfg = cfg.clone();
        let inputs = with_optional(&[logits, labels], weight);
        self.record("sigmoid_focal_loss_mmcv", &inputs, out, move |g| {
            let grad = op::sigmoid_focal_loss_mmcv_backward(g, &lv, &yv, wv.as_deref(), &cfg)?;
            let mut grads = vec![Some(grad), None];
            grads.extend(wv.as_ref().map(|_| None));
            Ok(grads)
        })
    }

    /// GFL's Quality Focal Loss of `logits` `[N, C]` with constant i64 `labels` `[N]` (C = background),
    /// constant IoU `scores` `[N]` and optional constant per-anchor `weight` `[N]`; gradient to the logits.
    pub fn quality_focal_loss(
        &self,
        logits: Var,
        labels: Var,
        scores: Var,
        weight: Option<Var>,
        cfg: &QualityFocalConfig,
    ) -> Result<Var> {
        let (lv, yv, sv) = (
            self.value(logits)?,
            self.value(labels)?,
            self.value(scores)?,
        );
        let wv = weight.map(|w| self.value(w)).transpose()?;
        let out = op::quality_focal_loss(&lv, &yv, &sv, wv.as_deref(), cfg)?;
        let cfg = cfg.clone();
        let inputs = with_optional(&[logits, labels, scores], weight);
        self.record("quality_focal_loss", &inputs, out, move |g| {
            let grad = op::quality_focal_loss_backward(g, &lv, &yv, &sv, wv.as_deref(), &cfg)?;
            let mut grads = vec![Some(grad), None, None];
            grads.extend(wv.as_ref().map(|_| None));
            Ok(grads)
        })
    }
}
