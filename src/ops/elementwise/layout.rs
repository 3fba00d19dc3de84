//! Shape logic shared by the broadcasting ops and the reductions that undo them: NumPy broadcasting rules,
//! and the merged iteration spaces the CPU loops and the CUDA kernels walk.
//!
//! A broadcast operand is read through strides over the full (output) shape, with stride 0 on every
//! dimension it is broadcast along. Adjacent dimensions whose strides compose for every operand are merged
//! (`[8, 256, 100, 168] + [1, 256, 1, 1]` iterates over `[8, 256, 16800]`), and size-1 dimensions are
//! dropped, so the kernels' index arithmetic (one division per merged dimension) stays short.

use crate::error::{Error, Result};

/// The highest rank the broadcasting and reduction ops accept (the CUDA kernels' fixed-size index arrays).
pub const MAX_RANK: usize = 6;

/// `shape` must have at most [`MAX_RANK`] dimensions.
pub(crate) fn check_rank(shape: &[usize], arg: &str) -> Result<()> {
    if shape.len() <= MAX_RANK {
        Ok(())
    } else {
        Err(Error::shape(
            arg,
            format!("with at most {MAX_RANK} dimensions"),
            shape,
        ))
    }
}

/// The NumPy broadcast of two shapes: right-aligned, each pair of dimensions equal or one of them 1.
/// `a` and `b` name the arguments in the error, which gives both shapes.
pub(crate) fn broadcast_pair(a: &[usize], b: &[usize], names: (&str, &str)) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (from_right, slot) in out.iter_mut().rev().enumerate() {
        let da = dim_from_right(a, from_right);
        let db = dim_from_right(b, from_right);
        *slot = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            (x, y) => {
                return Err(Error::shape(
                    names.1,
                    format!(
                        "broadcast-compatible with `{}`'s {a:?} (trailing dimensions equal or 1; \
                         dimension {} from the right is {x} there, {y} here)",
                        names.0,
                        from_right + 1
                    ),
                    b,
                ))
            }
        };
    }
    Ok(out)
}

fn dim_from_right(shape: &[usize], from_right: usize) -> usize {
    if from_right < shape.len() {
        shape[shape.len() - 1 - from_right]
    } else {
        1
    }
}

/// `target` must broadcast to `full` without changing it (the shapes [`sum_to_shape`] accepts): rank at
/// most `full`'s, each right-aligned dimension equal to `full`'s or 1.
///
/// [`sum_to_shape`]: super::sum_to_shape
pub(crate) fn check_reducible(full: &[usize], target: &[usize], arg: &str, of: &str) -> Result<()> {
    let fits = target.len() <= full.len()
        && target
            .iter()
            .rev()
            .zip(full.iter().rev())
            .all(|(&t, &f)| t == f || t == 1);
    if fits {
        Ok(())
    } else {
        Err(Error::shape(
            arg,
            format!(
                "broadcastable to {of}'s {full:?} (rank at most {}, each trailing dimension equal \
                 to it or 1)",
                full.len()
            ),
            target,
        ))
    }
}

/// Row-major strides of `shape` right-aligned inside `full`, 0 on every dimension of `full` that `shape`
/// lacks or has as 1 (the broadcast dimensions).
fn strides_within(shape: &[usize], full: &[usize]) -> Vec<usize> {
    let lead = full.len() - shape.len();
    let mut strides = vec![0; full.len()];
    let mut step = 1;
    for d in (0..shape.len()).rev() {
        if shape[d] != 1 {
            strides[lead + d] = step;
        }
        step *= shape[d];
    }
    strides
}

/// A merged iteration space over the full shape: row-major `dims` and, per operand, its strides over them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Iteration {
    pub dims: Vec<usize>,
    /// `strides[operand][dim]`.
    pub strides: Vec<Vec<usize>>,
}

impl Iteration {
    /// The operand offsets of the element at row-major position `index` of `dims`.
    pub fn offsets<const N: usize>(&self, mut index: usize) -> [usize; N] {
        let mut off = [0; N];
        for d in (0..self.dims.len()).rev() {
            let c = index % self.dims[d];
            index /= self.dims[d];
            for (o, strides) in off.iter_mut().zip(&self.strides) {
                *o += c * strides[d];
            }
        }
        off
    }

    /// Extent of the innermost dimension (1 for a scalar space).
    pub fn inner(&self) -> usize {
        self.dims.last().copied().unwrap_or(1)
    }

    /// Strides of operand `op` along the innermost dimension.
    pub fn inner_stride(&self, op: usize) -> usize {
        self.strides[op].last().copied().unwrap_or(0)
    }

    /// The same space without its innermost dimension (the "rows" the CPU loops walk).
    pub fn outer(&self) -> Iteration {
        let keep = self.dims.len().saturating_sub(1);
        Iteration {
            dims: self.dims[..keep].to_vec(),
            strides: self.strides.iter().map(|s| s[..keep].to_vec()).collect(),
        }
    }
}

/// The iteration space of an element-wise op with output shape `full` whose operands have `shapes`
/// (each broadcast-compatible with `full`, already checked).
pub(crate) fn elementwise(full: &[usize], shapes: &[&[usize]]) -> Iteration {
    let strides: Vec<Vec<usize>> = shapes.iter().map(|s| strides_within(s, full)).collect();
    let kinds = vec![false; full.len()];
    let (dims, strides, _) = merge(full, &strides, &kinds);
    Iteration { dims, strides }
}

/// The iteration space of a reduction from `full` to `target` (broadcast-compatible, already checked):
/// each output element (a row-major position over `kept`) sums the positions of `reduced`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reduction {
    pub kept: Iteration,
    pub reduced: Iteration,
}

impl Reduction {
    /// Output elements (the target's element count).
    pub fn outputs(&self) -> usize {
        self.kept.dims.iter().product()
    }

    /// Terms summed into each output element.
    pub fn per_output(&self) -> usize {
        self.reduced.dims.iter().product()
    }
}

/// The reduction from `full` to `target`, reading operands of `shapes` (each broadcast-compatible with
/// `full`) through their strides.
pub(crate) fn reduction(full: &[usize], target: &[usize], shapes: &[&[usize]]) -> Reduction {
    let strides: Vec<Vec<usize>> = shapes.iter().map(|s| strides_within(s, full)).collect();
    let lead = full.len() - target.len();
    let reduced: Vec<bool> = (0..full.len())
        .map(|d| d < lead || (target[d - lead] == 1 && full[d] != 1))
        .collect();
    let (dims, strides, kinds) = merge(full, &strides, &reduced);
    let pick = |want: bool| {
        let idx: Vec<usize> = (0..dims.len()).filter(|&d| kinds[d] == want).collect();
        Iteration {
            dims: idx.iter().map(|&d| dims[d]).collect(),
            strides: strides
                .iter()
                .map(|s| idx.iter().map(|&d| s[d]).collect())
                .collect(),
        }
    };
    Reduction {
        kept: pick(false),
        reduced: pick(true),
    }
}

/// Drops size-1 dimensions and merges neighbours of the same kind whose strides compose for every operand.
fn merge(
    full: &[usize],
    strides: &[Vec<usize>],
    kinds: &[bool],
) -> (Vec<usize>, Vec<Vec<usize>>, Vec<bool>) {
    let mut dims: Vec<usize> = Vec::new();
    let mut merged: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    let mut merged_kinds: Vec<bool> = Vec::new();
    for d in 0..full.len() {
        if full[d] == 1 {
            continue;
        }
        let composes = dims.last().is_some_and(|_| {
            merged_kinds.last() == Some(&kinds[d])
                && strides
                    .iter()
                    .zip(&merged)
                    .all(|(s, m)| *m.last().unwrap() == s[d] * full[d])
        });
        if composes {
            *dims.last_mut().unwrap() *= full[d];
            for (s, m) in strides.iter().zip(merged.iter_mut()) {
                *m.last_mut().unwrap() = s[d];
            }
        } else {
            dims.push(full[d]);
            for (s, m) in strides.iter().zip(merged.iter_mut()) {
                m.push(s[d]);
            }
            merged_kinds.push(kinds[d]);
        }
    }
    (dims, merged, merged_kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rules_and_message() {
        let b = |x: &[usize], y: &[usize]| broadcast_pair(x, y, ("a", "b"));
        assert_eq!(b(&[2, 3, 4, 5], &[1, 3, 1, 1]).unwrap(), vec![2, 3, 4, 5]);
        assert_eq!(b(&[4], &[2, 3, 4]).unwrap(), vec![2, 3, 4]);
        assert_eq!(b(&[], &[3, 4]).unwrap(), vec![3, 4]);
        assert_eq!(b(&[3, 1], &[1, 5]).unwrap(), vec![3, 5]);
        assert_eq!(b(&[0, 1], &[1, 4]).unwrap(), vec![0, 4]);
        let e = b(&[2, 3], &[4]).unwrap_err().to_string();
        assert!(
            e.contains("`b`") && e.contains("[2, 3]") && e.contains("got [4]"),
            "{e}"
        );
        assert!(b(&[0], &[2]).is_err(), "0 broadcasts only with 0 or 1");
    }

    #[test]
    fn merges_dimensions_that_compose() {
        let it = elementwise(&[8, 256, 100, 168], &[&[8, 256, 100, 168], &[1, 256, 1, 1]]);
        assert_eq!(it.dims, vec![8, 256, 16800]);
        assert_eq!(it.strides, vec![vec![256 * 16800, 16800, 1], vec![0, 1, 0]]);
        let same = elementwise(&[2, 3, 4], &[&[2, 3, 4], &[2, 3, 4]]);
        assert_eq!(same.dims, vec![24]);
        let scalar = elementwise(&[], &[&[], &[]]);
        assert_eq!((scalar.dims.len(), scalar.inner()), (0, 1));
        assert_eq!(scalar.offsets::<2>(0), [0, 0]);
        let it = elementwise(&[2, 3, 4], &[&[4], &[2, 3, 1]]);
        assert_eq!(it.dims, vec![6, 4]);
        assert_eq!(it.offsets::<2>(13), [1, 3]);
    }

    #[test]
    fn reduction_splits_kept_and_reduced() {
        let r = reduction(&[8, 256, 100, 168], &[1, 256, 1, 1], &[&[8, 256, 100, 168]]);
        assert_eq!(r.kept.dims, vec![256]);
        assert_eq!(r.reduced.dims, vec![8, 16800]);
        assert_eq!(r.kept.strides, vec![vec![16800]]);
        assert_eq!(r.reduced.strides, vec![vec![256 * 16800, 1]]);
        assert_eq!((r.outputs(), r.per_output()), (256, 8 * 16800));
        let all = reduction(&[2, 3], &[], &[&[2, 3]]);
        assert_eq!(
            (all.kept.dims.clone(), all.reduced.dims.clone()),
            (vec![], vec![6])
        );
        let none = reduction(&[2, 3], &[2, 3], &[&[2, 3]]);
        assert_eq!((none.outputs(), none.per_output()), (6, 1));
        let empty_axis = reduction(&[0, 3], &[1, 3], &[&[0, 3]]);
        assert_eq!((empty_axis.outputs(), empty_axis.per_output()), (3, 0));
    }

    #[test]
    fn reducible_shapes() {
        assert!(check_reducible(&[2, 3, 4], &[3, 1], "shape", "x").is_ok());
        assert!(check_reducible(&[2, 3, 4], &[], "shape", "x").is_ok());
        let e = check_reducible(&[2, 3, 4], &[5], "shape", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x's [2, 3, 4]") && e.contains("got [5]"), "{e}");
        assert!(check_reducible(&[3], &[1, 3], "shape", "x").is_err());
    }
}
