use super::with_optional;
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::graph_conv::{self as op, GraphConvInputs, GraphConvSaved, NodeConvInputs};
use std::rc::Rc;

impl Tape {
    /// `Ŷ = ÂXW + b` over the normalised adjacency `Â = D^-½(A + I)D^-½` of `adjacency` `[m, m]` (or
    /// `[B, m, m]` with `x` `[B, m, Din]`), `weight` `[Din, Dout]`, optional `bias` `[Dout]`. Gradients to
    /// `x`, `weight`, `bias` and, when it requires one (edges built from similarities), `adjacency`.
    pub fn graph_conv(
        &self,
        adjacency: Var,
        x: Var,
        weight: Var,
        bias: Option<Var>,
    ) -> Result<Var> {
        let (av, xv, wv) = (self.value(adjacency)?, self.value(x)?, self.value(weight)?);
        let bv = bias.map(|b| self.value(b)).transpose()?;
        let op::GraphConvOutput { output, saved } = op::graph_conv(&GraphConvInputs {
            adjacency: &av,
            x: &xv,
            weight: &wv,
            bias: bv.as_deref(),
        })?;
        let saved: Rc<GraphConvSaved> = Rc::new(saved);
        let adjacency_grad = self.requires_grad(adjacency)?;
        let inputs = with_optional(&[adjacency, x, weight], bias);
        self.record("graph_conv", &inputs, output, move |g| {
            let inputs = GraphConvInputs {
                adjacency: &av,
                x: &xv,
                weight: &wv,
                bias: bv.as_deref(),
            };
            let grads = op::graph_conv_backward(&inputs, &saved, g, adjacency_grad)?;
            let mut out = vec![grads.adjacency, Some(grads.x), Some(grads.weight)];
            if bv.is_some() {
                out.push(grads.bias);
            }
            Ok(out)
        })
    }

    /// GloRe projection `Z = V·Bpᵀ` (`v` `[B, S, L]`, `bp` `[B, N, L]` → `[B, S, N]`, no 1/L scaling).
    pub fn glore_project(&self, v: Var, bp: Var) -> Result<Var> {
        let (vv, bv) = (self.value(v)?, self.value(bp)?);
        let out = op::glore_project(&vv, &bv)?;
        self.record("glore_project", &[v, bp], out, move |g| {
            let (gv, gb) = op::glore_project_backward(&vv, &bv, g)?;
            Ok(vec![Some(gv), Some(gb)])
        })
    }

    /// GloRe node convolution `H = Z(I + Aᵀ) + 1_S b_Aᵀ`, optionally followed by ReLU (`z` `[B, S, N]`,
    /// `adjacency` `[N, N]`, optional `bias` `[N]`).
    pub fn glore_node_conv(
        &self,
        z: Var,
        adjacency: Var,
        bias: Option<Var>,
        relu: bool,
    ) -> Result<Var> {
        let (zv, av) = (self.value(z)?, self.value(adjacency)?);
        let bv = bias.map(|b| self.value(b)).transpose()?;
        let out = Rc::new(op::glore_node_conv(
            &NodeConvInputs {
                z: &zv,
                adjacency: &av,
                bias: bv.as_deref(),
            },
            relu,
        )?);
        let saved_out = relu.then(|| out.clone());
        let inputs = with_optional(&[z, adjacency], bias);
        self.record("glore_node_conv", &inputs, out, move |g| {
            let inputs = NodeConvInputs {
                z: &zv,
                adjacency: &av,
                bias: bv.as_deref(),
            };
            let grads = op::glore_node_conv_backward(&inputs, saved_out.as_deref(), g)?;
            let mut out = vec![Some(grads.z), Some(grads.adjacency)];
            if bv.is_some() {
                out.push(grads.bias);
            }
            Ok(out)
        })
    }

    /// GloRe reprojection `X̃ = Y·Bp` (`y` `[B, S, N]`, `bp` `[B, N, L]` → `[B, S, L]`).
    pub fn glore_reproject(&self, y: Var, bp: Var) -> Result<Var> {
        let (yv, bv) = (self.value(y)?, self.value(bp)?);
        let out = op::glore_reproject(&yv, &bv)?;
        self.record("glore_reproject", &[y, bp], out, move |g| {
            let (gy, gb) = op::glore_reproject_backward(&yv, &bv, g)?;
            Ok(vec![Some(gy), Some(gb)])
        })
    }
}
