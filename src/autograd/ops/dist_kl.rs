use super::with_optional;
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::dist_kl::{self as op, DflConfig, IntegralConfig, KdKlConfig, LossWeighting};

impl Tape {
    /// LD / KD temperature KL of `student` `[R, B]` against the (always detached) `teacher` logits, with
    /// optional constant per-row `weight` `[R]` and mmdet's `avg_factor`; gradient to the student only.
    /// See [`crate::ops::dist_kl::kd_kl_div`].
    pub fn kd_kl_div(
        &self,
        student: Var,
        teacher: Var,
        weight: Option<Var>,
        avg_factor: Option<f64>,
        cfg: &KdKlConfig,
    ) -> Result<Var> {
        let (sv, tv) = (self.value(student)?, self.value(teacher)?);
        let wv = weight.map(|w| self.value(w)).transpose()?;
        let out = op::kd_kl_div(&sv, &tv, LossWeighting::new(wv.as_deref(), avg_factor), cfg)?;
        let cfg = cfg.clone();
        let inputs = with_optional(&[student, teacher], weight);
        self.record("kd_kl_div", &inputs, out, move |g| {
            let weighting = LossWeighting::new(wv.as_deref(), avg_factor);
            let grad = op::kd_kl_div_backward(g, &sv, &tv, weighting, &cfg)?;
            let mut grads = vec![Some(grad), None];
            grads.extend(wv.as_ref().map(|_| None));
            Ok(grads)
        })
    }

    /// GFL's Distribution Focal Loss of `pred` `[N, reg_max + 1]` at the constant continuous targets
    /// `label` `[N]`, optional constant `weight` `[N]` and `avg_factor`; gradient to `pred`.
    pub fn distribution_focal_loss(
        &self,
        pred: Var,
        label: Var,
        weight: Option<Var>,
        avg_factor: Option<f64>,
        cfg: &DflConfig,
    ) -> Result<Var> {
        let (pv, yv) = (self.value(pred)?, self.value(label)?);
        let wv = weight.map(|w| self.value(w)).transpose()?;
        let weighting = LossWeighting::new(wv.as_deref(), avg_factor);
        let out = op::distribution_focal_loss(&pv, &yv, weighting, cfg)?;
        let cfg = cfg.clone();
        let inputs = with_optional(&[pred, label], weight);
        self.record("distribution_focal_loss", &inputs, out, move |g| {
            let weighting = LossWeighting::new(wv.as_deref(), avg_factor);
            let grad = op::distribution_focal_loss_backward(g, &pv, &yv, weighting, &cfg)?;
            let mut grads = vec![Some(grad), None];
            grads.extend(wv.as_ref().map(|_| None));
            Ok(grads)
        })
    }

    /// GFL's Integral: the expected bin index `Σ_k k·softmax(z)_k` over the last dimension of `logits`
    /// `[..., reg_max + 1]`; gradient to the logits.
    pub fn integral(&self, logits: Var, cfg: &IntegralConfig) -> Result<Var> {
        let lv = self.value(logits)?;
        let out = op::integral(&lv, cfg)?;
        let cfg = cfg.clone();
        self.record("integral", &[logits], out, move |g| {
            Ok(vec![Some(op::integral_backward(g, &lv, &cfg)?)])
        })
    }
}
