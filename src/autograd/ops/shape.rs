use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::shape as op;

impl Tape {
    /// The same elements in another shape of equal size (a copy: tensors own their buffers).
    pub fn reshape(&self, x: Var, shape: &[usize]) -> Result<Var> {
        let xv = self.value(x)?;
        let out = xv.try_clone()?.reshape(shape)?;
        let in_shape = xv.shape().to_vec();
        self.record("reshape", &[x], out, move |g| {
            Ok(vec![Some(g.try_clone()?.reshape(&in_shape)?)])
        })
    }

    /// Axes reordered: output axis `i` is input axis `perm[i]`.
    pub fn permute(&self, x: Var, perm: &[usize]) -> Result<Var> {
        let out = op::permute(&*self.value(x)?, perm)?;
        let perm = perm.to_vec();
        self.record("permute", &[x], out, move |g| {
            Ok(vec![Some(op::permute_backward(g, &perm)?)])
        })
    }

    /// Axes `a` and `b` swapped.
    pub fn transpose(&self, x: Var, a: usize, b: usize) -> Result<Var> {
        let out = op::transpose(&*self.value(x)?, a, b)?;
        self.record("transpose", &[x], out, move |g| {
            Ok(vec![Some(op::transpose_backward(g, a, b)?)])
        })
    }

    /// `len` entries of `axis` from `start`.
    pub fn narrow(&self, x: Var, axis: usize, start: usize, len: usize) -> Result<Var> {
        let xv = self.value(x)?;
        let out = op::narrow(&xv, axis, start, len)?;
        let in_shape = xv.shape().to_vec();
        self.record("narrow", &[x], out, move |g| {
            Ok(vec![Some(op::narrow_backward(g, &in_shape, axis, start)?)])
        })
    }

    /// The parts joined along `axis`.
    pub fn concat(&self, parts: &[Var], axis: usize) -> Result<Var> {
        let values = parts
            .iter()
            .map(|&p| self.value(p))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&crate::Tensor> = values.iter().map(|v| &**v).collect();
        let out = op::concat(&refs, axis)?;
        let sizes: Vec<usize> = values.iter().map(|v| v.shape()[axis]).collect();
        self.record("concat", parts, out, move |g| {
            Ok(op::concat_backward(g, axis, &sizes)?
                .into_iter()
                .map(Some)
                .collect())
        })
    }

    /// `x` cut along `axis` into consecutive pieces of the given sizes (one narrow each).
    pub fn split(&self, x: Var, axis: usize, sizes: &[usize]) -> Result<Vec<Var>> {
        let extent = *self
            .shape(x)?
            .get(axis)
            .ok_or_else(|| Error::invalid("axis", format!("axis {axis} is out of range")))?;
        if sizes.iter().sum::<usize>() != extent {
            return Err(Error::invalid(
                "sizes",
                format!("the sizes {sizes:?} do not add up to the axis extent {extent}"),
            ));
        }
        let mut start = 0;
        let mut out = Vec::with_capacity(sizes.len());
        for &len in sizes {
            out.push(self.narrow(x, axis, start, len)?);
            start += len;
        }
        Ok(out)
    }

    /// Entries `indices` (a constant i64 list) of `axis`; duplicates allowed, their gradients add up
    /// (deterministically).
    pub fn index_select(&self, x: Var, axis: usize, indices: Var) -> Result<Var> {
        let (xv, iv) = (self.value(x)?, self.value(indices)?);
        let out = op::index_select(&xv, axis, &iv)?;
        let in_shape = xv.shape().to_vec();
        self.record("index_select", &[x, indices], out, move |g| {
            Ok(vec![
                Some(op::index_select_backward(g, &in_shape, axis, &iv)?),
                None,
            ])
        })
    }
}
