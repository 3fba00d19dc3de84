//! Index geometry shared by the CPU reference and the CUDA launches, kept free of device code so that it is
//! tested on every machine: the axis view `[outer, extent, inner]`, the collapse of a permutation to its
//! essential axes, the kernel arguments of the two permute kernels, row copies, and the inverse index map
//! of `index_select`'s backward.

/// `shape` seen as `[outer, extent, inner]` around `axis` (`axis < shape.len()`).
pub(crate) fn around_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// Row-major strides (in elements) of `dims`.
pub(crate) fn strides(dims: &[usize]) -> Vec<usize> {
    let mut out = vec![1; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        out[k] = out[k + 1] * dims[k + 1];
    }
    out
}

/// A permutation reduced to the axes that matter: extent-1 axes dropped, and input axes that stay adjacent
/// and in order in the output merged into one. Moving data by the collapsed form is the same as by the
/// original (the element order of both tensors is unchanged), with fewer index computations and, for the
/// CUDA path, a cleaner choice of kernel. An identity reduces to at most one axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Collapsed {
    /// Input extents, outermost first.
    pub dims: Vec<usize>,
    /// Output axis `k` is input axis `perm[k]`.
    pub perm: Vec<usize>,
}

impl Collapsed {
    pub(crate) fn new(shape: &[usize], perm: &[usize]) -> Collapsed {
        let kept: Vec<usize> = (0..shape.len()).filter(|&a| shape[a] != 1).collect();
        let mut renumbered = vec![usize::MAX; shape.len()];
        for (i, &a) in kept.iter().enumerate() {
            renumbered[a] = i;
        }
        let dims: Vec<usize> = kept.iter().map(|&a| shape[a]).collect();
        let perm: Vec<usize> = perm
            .iter()
            .filter(|&&a| shape[a] != 1)
            .map(|&a| renumbered[a])
            .collect();
        // Runs of consecutive input axes, in output order: (first, last) input axis of each run.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &a in &perm {
            match runs.last_mut() {
                Some(run) if run.1 + 1 == a => run.1 = a,
                _ => runs.push((a, a)),
            }
        }
        let mut by_input: Vec<usize> = (0..runs.len()).collect();
        by_input.sort_by_key(|&r| runs[r].0);
        let mut input_position = vec![0; runs.len()];
        for (i, &r) in by_input.iter().enumerate() {
            input_position[r] = i;
        }
        Collapsed {
            dims: by_input
                .iter()
                .map(|&r| dims[runs[r].0..=runs[r].1].iter().product())
                .collect(),
            perm: input_position,
        }
    }

    pub(crate) fn rank(&self) -> usize {
        self.dims.len()
    }

    /// True when the data keeps its order (a plain copy).
    pub(crate) fn is_identity(&self) -> bool {
        self.perm.iter().enumerate().all(|(k, &a)| k == a)
    }

    /// Output extents.
    pub(crate) fn out_dims(&self) -> Vec<usize> {
        self.perm.iter().map(|&a| self.dims[a]).collect()
    }

    /// Input stride of the axis at each output position.
    pub(crate) fn in_strides_by_output(&self) -> Vec<usize> {
        let s = strides(&self.dims);
        self.perm.iter().map(|&a| s[a]).collect()
    }
}

/// Kernel arguments and the kernel choice of the CUDA permute (also replayed by the unit tests' model of
/// the kernels, so the geometry is checked on machines without a GPU).
#[cfg(any(feature = "cuda", test))]
mod launch {
    use super::super::MAX_RANK;
    use super::{strides, Collapsed};

    /// Arguments of `permute_generic_*` in kernels/shape.cu (one thread per output element, which decomposes
    /// its index over the output extents). Mirrored by a `#[repr(C)]` struct there.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) struct GenericPermuteArgs {
        pub numel: i64,
        /// Output extents, outermost first; unused trailing entries are 1.
        pub out_dims: [i64; MAX_RANK],
        /// Input stride of the axis at each output position; unused entries 0.
        pub in_strides: [i64; MAX_RANK],
        pub rank: i32,
        pub unused: i32,
    }

    /// Batch axes the tiled kernel decomposes per block: every axis but the two it transposes.
    pub(crate) const TILED_BATCH_RANK: usize = MAX_RANK - 2;

    /// Arguments of `permute_tiled_*`: a batched 2-D transpose through a 32 × 32 shared-memory tile, for
    /// permutations that move the input's innermost axis (`a`, stride 1 in the input) away from the output's
    /// innermost position, which is held by axis `b` (stride 1 in the output). Loads are coalesced along `a`,
    /// stores along `b`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) struct TiledPermuteArgs {
        pub a_extent: i64,
        pub b_extent: i64,
        pub b_in_stride: i64,
        pub a_out_stride: i64,
        /// Product of the batch extents.
        pub batch: i64,
        pub batch_dims: [i64; TILED_BATCH_RANK],
        pub batch_in_strides: [i64; TILED_BATCH_RANK],
        pub batch_out_strides: [i64; TILED_BATCH_RANK],
        pub batch_rank: i32,
        pub unused: i32,
    }

    /// The tile edge of `permute_tiled_*`.
    pub(crate) const TILE: usize = 32;
    /// Threads along the tile's second axis (each covers `TILE / TILE_ROWS` rows).
    pub(crate) const TILE_ROWS: usize = 8;

    /// Below this extent on either transposed axis most of a 32 × 32 tile would be idle; the generic
    /// kernel is used instead.
    const MIN_TILED_EXTENT: usize = 8;

    /// How the CUDA path moves a permutation's data.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum PermuteLaunch {
        /// The order is unchanged: one contiguous copy of `numel` elements.
        Copy {
            numel: usize,
        },
        Generic(GenericPermuteArgs),
        Tiled(TiledPermuteArgs),
    }

    impl PermuteLaunch {
        pub(crate) fn new(c: &Collapsed) -> PermuteLaunch {
            let numel: usize = c.dims.iter().product();
            if c.is_identity() {
                return PermuteLaunch::Copy { numel };
            }
            let r = c.rank();
            let out_dims = c.out_dims();
            let in_by_out = c.in_strides_by_output();
            let a = r - 1; // the input's innermost axis
            let b = c.perm[r - 1]; // the output's innermost axis, as an input axis
            if b != a && c.dims[a] >= MIN_TILED_EXTENT && c.dims[b] >= MIN_TILED_EXTENT {
                let out_strides = strides(&out_dims);
                let a_out = c.perm.iter().position(|&p| p == a).unwrap_or(0);
                let mut args = TiledPermuteArgs {
                    a_extent: c.dims[a] as i64,
                    b_extent: c.dims[b] as i64,
                    b_in_stride: strides(&c.dims)[b] as i64,
                    a_out_stride: out_strides[a_out] as i64,
                    batch: 1,
                    batch_dims: [1; TILED_BATCH_RANK],
                    batch_in_strides: [0; TILED_BATCH_RANK],
                    batch_out_strides: [0; TILED_BATCH_RANK],
                    batch_rank: 0,
                    unused: 0,
                };
                // Batch axes in output order, so consecutive batch indices write neighbouring output blocks.
                for (k, &p) in c.perm.iter().enumerate() {
                    if p == a || p == b {
                        continue;
                    }
                    let slot = args.batch_rank as usize;
                    args.batch_dims[slot] = out_dims[k] as i64;
                    args.batch_in_strides[slot] = in_by_out[k] as i64;
                    args.batch_out_strides[slot] = out_strides[k] as i64;
                    args.batch *= out_dims[k] as i64;
                    args.batch_rank += 1;
                }
                return PermuteLaunch::Tiled(args);
            }
            let mut args = GenericPermuteArgs {
                numel: numel as i64,
                out_dims: [1; MAX_RANK],
                in_strides: [0; MAX_RANK],
                rank: r as i32,
                unused: 0,
            };
            for k in 0..r {
                args.out_dims[k] = out_dims[k] as i64;
                args.in_strides[k] = in_by_out[k] as i64;
            }
            PermuteLaunch::Generic(args)
        }
    }
}
#[cfg(any(feature = "cuda", test))]
pub(crate) use launch::*;

/// Copies `outer` runs of `row_len` contiguous elements: run `o` is read from
/// `src[o·src_stride + src_offset ..]` and written to `dst[o·dst_stride + dst_offset ..]`. Narrow, concat
/// (one per part), split (one per part) and narrow's backward (with the rest of each destination row set to
/// zero) are all this. The destination holds exactly `outer·dst_stride` elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowCopy {
    pub outer: usize,
    pub row_len: usize,
    pub src_stride: usize,
    pub src_offset: usize,
    pub dst_stride: usize,
    pub dst_offset: usize,
}

impl RowCopy {
    /// Axis slice `[start, start + len)` of an `[outer, extent, inner]` source into a packed
    /// `[outer, len, inner]` destination.
    pub(crate) fn slice(
        outer: usize,
        extent: usize,
        inner: usize,
        start: usize,
        len: usize,
    ) -> Self {
        RowCopy {
            outer,
            row_len: len * inner,
            src_stride: extent * inner,
            src_offset: start * inner,
            dst_stride: len * inner,
            dst_offset: 0,
        }
    }

    /// A packed `[outer, len, inner]` source into axis slice `[start, start + len)` of an
    /// `[outer, extent, inner]` destination (the inverse of [`RowCopy::slice`]).
    pub(crate) fn place(
        outer: usize,
        extent: usize,
        inner: usize,
        start: usize,
        len: usize,
    ) -> Self {
        RowCopy {
            outer,
            row_len: len * inner,
            src_stride: len * inner,
            src_offset: 0,
            dst_stride: extent * inner,
            dst_offset: start * inner,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.outer == 0 || self.row_len == 0
    }
}

/// `index_select` geometry: source `[outer, src_rows, inner]`, gathered `[outer, dst_rows, inner]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gather {
    pub outer: usize,
    pub src_rows: usize,
    pub dst_rows: usize,
    pub inner: usize,
}

/// The inverse of an index list `idx` (`[M]`, entries in `[0, rows)`), in CSR form: the gathered rows that
/// came from source row `d` are `sources[offsets[d] .. offsets[d + 1]]`, in ascending order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InverseIndex {
    pub offsets: Vec<i64>,
    pub sources: Vec<i64>,
}

impl InverseIndex {
    /// A counting sort by destination; walking `idx` in order keeps every row's sources ascending.
    pub(crate) fn new(idx: &[i64], rows: usize) -> InverseIndex {
        let mut offsets = vec![0i64; rows + 1];
        for &d in idx {
            offsets[d as usize + 1] += 1;
        }
        for d in 0..rows {
            offsets[d + 1] += offsets[d];
        }
        let mut next: Vec<i64> = offsets[..rows].to_vec();
        let mut sources = vec![0i64; idx.len()];
        for (m, &d) in idx.iter().enumerate() {
            let slot = &mut next[d as usize];
            sources[*slot as usize] = m as i64;
            *slot += 1;
        }
        InverseIndex { offsets, sources }
    }

    /// The gathered rows that came from source row `d`, ascending.
    pub(crate) fn sources_of(&self, d: usize) -> &[i64] {
        &self.sources[self.offsets[d] as usize..self.offsets[d + 1] as usize]
    }
}
