//! Launch geometry shared by the element-wise and grid-stride kernels.

use cudarc::driver::LaunchConfig;

/// Threads per block for grid-stride kernels: a multiple of the warp size, small enough for full occupancy.
pub(crate) const BLOCK: u32 = 256;

/// Grid-stride kernels need no more blocks than this to fill any current GPU several times over.
const MAX_BLOCKS: usize = 65_536;

/// A 1-D launch covering `n` elements with a grid-stride loop.
pub(crate) fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Passed for pointer arguments a kernel never dereferences (unused FPN levels).
pub(crate) const NULL_DEVICE_PTR: u64 = 0;
