use super::{scalar_value, with_optional};
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::similarity::{self as op, CosineConfig, Distance, DsigEdgeConfig};
use std::rc::Rc;

impl Tape {
    /// Row L2-normalisation `x / max(‖x‖, eps)` of `x` `[m, D]`.
    pub fn normalize_rows(&self, x: Var, cfg: &CosineConfig) -> Result<Var> {
        let xv = self.value(x)?;
        let out = op::normalize_rows(&xv, cfg)?;
        let cfg = *cfg;
        self.record("normalize_rows", &[x], out, move |g| {
            Ok(vec![Some(op::normalize_rows_backward(&xv, g, &cfg)?)])
        })
    }

    /// Cosine Gram matrix `X̂X̂ᵀ` `[m, m]` of the rows of `x`.
    pub fn cosine_gram(&self, x: Var, cfg: &CosineConfig) -> Result<Var> {
        let xv = self.value(x)?;
        let out = op::cosine_gram(&xv, cfg)?;
        let cfg = *cfg;
        self.record("cosine_gram", &[x], out, move |g| {
            Ok(vec![Some(op::cosine_gram_backward(&xv, g, &cfg)?)])
        })
    }

    /// Cosine similarities `X̂Ŷᵀ` `[m, n]`; gradients to `x` and, when it requires one, `y`.
    pub fn cosine_cross(&self, x: Var, y: Var, cfg: &CosineConfig) -> Result<Var> {
        let (xv, yv) = (self.value(x)?, self.value(y)?);
        let out = op::cosine_cross(&xv, &yv, cfg)?;
        let (cfg, need_y) = (*cfg, self.requires_grad(y)?);
        self.record("cosine_cross", &[x, y], out, move |g| {
            let (gx, gy) = op::cosine_cross_backward(&xv, &yv, g, need_y, &cfg)?;
            Ok(vec![Some(gx), gy])
        })
    }

    /// Pairwise (squared) Euclidean distances between the rows of `x` and of `y` (or within `x` when `y`
    /// is `None`).
    pub fn pairwise_distance(&self, x: Var, y: Option<Var>, kind: Distance) -> Result<Var> {
        let xv = self.value(x)?;
        let yv = y.map(|y| self.value(y)).transpose()?;
        let out = Rc::new(op::pairwise_distance(&xv, yv.as_deref(), kind)?);
        let saved_out = out.clone();
        let need_y = match y {
            Some(y) => self.requires_grad(y)?,
            None => false,
        };
        self.record(
            "pairwise_distance",
            &with_optional(&[x], y),
            out,
            move |g| {
                let (gx, gy) = op::pairwise_distance_backward(
                    &xv,
                    yv.as_deref(),
                    &saved_out,
                    g,
                    kind,
                    need_y,
                )?;
                let mut grads = vec![Some(gx)];
                if yv.is_some() {
                    grads.push(gy);
                }
                Ok(grads)
            },
        )
    }

    /// Dsig's edge loss `loss_weight · ½ · mean((Aˢ − Aᵗ)²)` between the cosine graphs of the `student` and
    /// (detached) `teacher` nodes `[M, D]`, optionally restricted to the constant i64 `nodes` subset;
    /// gradient to the student rows. See [`crate::ops::similarity::DsigEdgeConfig`].
    pub fn dsig_edge_loss(
        &self,
        student: Var,
        teacher: Var,
        nodes: Option<Var>,
        cfg: &DsigEdgeConfig,
    ) -> Result<Var> {
        let (sv, tv) = (self.value(student)?, self.value(teacher)?);
        let nv = nodes.map(|n| self.value(n)).transpose()?;
        let out = op::dsig_edge_loss(&sv, &tv, nv.as_deref(), cfg)?;
        let cfg = *cfg;
        let inputs = with_optional(&[student, teacher], nodes);
        self.record("dsig_edge_loss", &inputs, out, move |g| {
            let scale = scalar_value(g, "grad_loss")?;
            let grad = op::dsig_edge_loss_backward(&sv, &tv, nv.as_deref(), scale, &cfg)?;
            let mut grads = vec![Some(grad), None];
            grads.extend(nv.as_ref().map(|_| None));
            Ok(grads)
        })
    }
}
