// Shape and indexing kernels: permute (generic and shared-memory tiled), row copies (narrow, concat,
// split), the zero-padding copy of narrow's backward, index_select, and index_select's deterministic
// backward. See src/ops/shape/mod.rs for the formulas and src/ops/shape/plan.rs for the geometry.
//
// Data movement is instantiated by element width (unsigned short / int / long long: `_b2`, `_b4`, `_b8`) —
// the kernels copy bit patterns, so results are exact for every dtype. Only index_select_backward does
// arithmetic, per storage dtype, in f32. Indices are 64-bit throughout, so no extent overflows.
#include "common.cuh"

using namespace detkd;

#define DETKD_SHAPE_MAX_RANK 6
#define DETKD_TILED_BATCH_RANK 4
#define DETKD_TILE 32
#define DETKD_TILE_ROWS 8

// Mirrors `GenericPermuteArgs` in src/ops/shape/plan.rs (112 bytes).
struct GenericPermuteArgs {
    long long numel;
    long long out_dims[DETKD_SHAPE_MAX_RANK];    // output extents, outermost first
    long long in_strides[DETKD_SHAPE_MAX_RANK];  // input stride of the axis at each output position
    int rank;
    int unused;
};

// Mirrors `TiledPermuteArgs` in src/ops/shape/plan.rs (144 bytes).
struct TiledPermuteArgs {
    long long a_extent;      // the input's innermost axis (input stride 1)
    long long b_extent;      // the output's innermost axis (output stride 1)
    long long b_in_stride;   // input stride of b
    long long a_out_stride;  // output stride of a
    long long batch;         // product of the other extents
    long long batch_dims[DETKD_TILED_BATCH_RANK];
    long long batch_in_strides[DETKD_TILED_BATCH_RANK];
    long long batch_out_strides[DETKD_TILED_BATCH_RANK];
    int batch_rank;
    int unused;
};

// Mirrors `RowCopyArgs` in src/ops/shape/cuda.rs (48 bytes): run o of row_len elements goes from
// src[o * src_stride + src_offset ..] to dst[o * dst_stride + dst_offset ..].
struct RowCopyArgs {
    long long outer;
    long long row_len;
    long long src_stride;
    long long src_offset;
    long long dst_stride;
    long long dst_offset;
};

// Mirrors `GatherArgs` in src/ops/shape/cuda.rs (32 bytes): source [outer, src_rows, inner], gathered
// [outer, dst_rows, inner].
struct GatherArgs {
    long long outer;
    long long src_rows;
    long long dst_rows;
    long long inner;
};

// Row kernels (launched by `rows_launch` in cuda.rs): threadIdx.x walks a row, threadIdx.y picks one of
// the block's rows; both grid axes stride.
#define DETKD_FOR_ROWS(r, rows)                                                                     \
    for (long long r = (long long)blockIdx.y * blockDim.y + threadIdx.y; r < (long long)(rows);    \
         r += (long long)gridDim.y * blockDim.y)
#define DETKD_FOR_COLS(c, cols)                                                                     \
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < (long long)(cols);    \
         c += (long long)gridDim.x * blockDim.x)

// One thread per output element: its index, decomposed over the output extents (innermost first), gives
// the input offset. Consecutive threads read consecutive inputs whenever the innermost axis stays
// innermost (the host sends the other cases to the tiled kernel when both transposed extents are ≥ 8).
// I is the index type of the decomposition: 32-bit when numel fits, since 64-bit division is several
// times slower.
template <typename T, typename I>
__device__ void permute_generic_impl(const T* __restrict__ src, T* __restrict__ dst,
                                     const GenericPermuteArgs& a) {
    DETKD_GRID_STRIDE(i, a.numel) {
        I rest = (I)i;
        long long offset = 0;
#pragma unroll
        for (int k = DETKD_SHAPE_MAX_RANK - 1; k >= 0; --k) {
            if (k < a.rank) {
                const I extent = (I)a.out_dims[k];
                const I coord = rest % extent;
                rest /= extent;
                offset += (long long)coord * a.in_strides[k];
            }
        }
        dst[i] = src[offset];
    }
}

// A batched 2-D transpose through shared memory: each block moves 32 × 32 tiles of the (a, b) plane of one
// batch index. Loads walk a (stride 1 in the input), stores walk b (stride 1 in the output), so both are
// coalesced. Launched with blockDim = (32, 8); tiles stride over gridDim.x, batches over gridDim.y. The
// padded row (33) keeps the transposed reads free of bank conflicts.
template <typename T>
__device__ void permute_tiled_impl(const T* __restrict__ src, T* __restrict__ dst,
                                   const TiledPermuteArgs& a) {
    __shared__ T tile[DETKD_TILE][DETKD_TILE + 1];
    const long long tiles_a = (a.a_extent + DETKD_TILE - 1) / DETKD_TILE;
    const long long tiles = tiles_a * ((a.b_extent + DETKD_TILE - 1) / DETKD_TILE);
    for (long long bt = blockIdx.y; bt < a.batch; bt += gridDim.y) {
        long long rest = bt, in_base = 0, out_base = 0;
        for (int k = a.batch_rank - 1; k >= 0; --k) {
            const long long coord = rest % a.batch_dims[k];
            rest /= a.batch_dims[k];
            in_base += coord * a.batch_in_strides[k];
            out_base += coord * a.batch_out_strides[k];
        }
        for (long long t = blockIdx.x; t < tiles; t += gridDim.x) {
            const long long a0 = (t % tiles_a) * DETKD_TILE, b0 = (t / tiles_a) * DETKD_TILE;
            for (int j = threadIdx.y; j < DETKD_TILE; j += DETKD_TILE_ROWS) {
                const long long av = a0 + threadIdx.x, bv = b0 + j;
                if (av < a.a_extent && bv < a.b_extent) {
                    tile[j][threadIdx.x] = src[in_base + bv * a.b_in_stride + av];
                }
            }
            __syncthreads();
            for (int j = threadIdx.y; j < DETKD_TILE; j += DETKD_TILE_ROWS) {
                const long long av = a0 + j, bv = b0 + threadIdx.x;
                if (av < a.a_extent && bv < a.b_extent) {
                    dst[out_base + av * a.a_out_stride + bv] = tile[threadIdx.x][j];
                }
            }
            __syncthreads();  // the tile is refilled by the next iteration
        }
    }
}

template <typename T>
__device__ void copy_rows_impl(const T* __restrict__ src, T* __restrict__ dst, const RowCopyArgs& a) {
    DETKD_FOR_ROWS(o, a.outer) {
        const T* s = src + o * a.src_stride + a.src_offset;
        T* d = dst + o * a.dst_stride + a.dst_offset;
        DETKD_FOR_COLS(c, a.row_len) { d[c] = s[c]; }
    }
}

// Every element of the [outer, dst_stride] destination: the run of row_len at dst_offset from the source,
// zero bits (+0.0 for floats) elsewhere.
template <typename T>
__device__ void pad_rows_impl(const T* __restrict__ src, T* __restrict__ dst, const RowCopyArgs& a) {
    DETKD_FOR_ROWS(o, a.outer) {
        const T* s = src + o * a.src_stride + a.src_offset;
        T* d = dst + o * a.dst_stride;
        DETKD_FOR_COLS(c, a.dst_stride) {
            const long long rel = c - a.dst_offset;
            d[c] = (rel >= 0 && rel < a.row_len) ? s[rel] : (T)0;
        }
    }
}

template <typename T>
__device__ void index_select_impl(const T* __restrict__ src, const long long* __restrict__ idx,
                                  T* __restrict__ dst, const GatherArgs& a) {
    DETKD_FOR_ROWS(r, a.outer * a.dst_rows) {
        const long long o = r / a.dst_rows, m = r - o * a.dst_rows;
        const T* s = src + (o * a.src_rows + idx[m]) * a.inner;
        T* d = dst + r * a.inner;
        DETKD_FOR_COLS(c, a.inner) { d[c] = s[c]; }
    }
}

// dx[o, d, c] = Σ_{k in [offsets[d], offsets[d+1])} grad[o, sources[k], c]: each output element sums its
// own sources in the ascending order the host's counting sort produced, in f32, and is written once — no
// atomics, so the bits are the same every run and equal the CPU reference (same order, same precision).
template <typename G>
__device__ void index_select_backward_impl(const G* __restrict__ grad, const long long* __restrict__ offsets,
                                           const long long* __restrict__ sources, G* __restrict__ dst,
                                           const GatherArgs& a) {
    DETKD_FOR_ROWS(r, a.outer * a.src_rows) {
        const long long o = r / a.src_rows, d = r - o * a.src_rows;
        const long long begin = offsets[d], end = offsets[d + 1];
        const G* g = grad + o * a.dst_rows * a.inner;
        G* out = dst + r * a.inner;
        DETKD_FOR_COLS(c, a.inner) {
            float acc = 0.0f;
            for (long long k = begin; k < end; ++k) acc += to_float(g[sources[k] * a.inner + c]);
            out[c] = from_float<G>(acc);
        }
    }
}

#define DETKD_SHAPE_MOVE_INSTANCES(T, SUFFIX)                                                                \
    extern "C" __global__ void permute_generic_##SUFFIX(const T* src, T* dst, GenericPermuteArgs a) {       \
        permute_generic_impl<T, unsigned long long>(src, dst, a);                                          \
    }                                                                                                      \
    extern "C" __global__ void permute_generic32_##SUFFIX(const T* src, T* dst, GenericPermuteArgs a) {     \
        permute_generic_impl<T, unsigned int>(src, dst, a);                                                \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(DETKD_TILE* DETKD_TILE_ROWS)                              \
        permute_tiled_##SUFFIX(const T* src, T* dst, TiledPermuteArgs a) {                                 \
        permute_tiled_impl<T>(src, dst, a);                                                                \
    }                                                                                                      \
    extern "C" __global__ void copy_rows_##SUFFIX(const T* src, T* dst, RowCopyArgs a) {                   \
        copy_rows_impl<T>(src, dst, a);                                                                    \
    }                                                                                                      \
    extern "C" __global__ void pad_rows_##SUFFIX(const T* src, T* dst, RowCopyArgs a) {                    \
        pad_rows_impl<T>(src, dst, a);                                                                     \
    }                                                                                                      \
    extern "C" __global__ void index_select_##SUFFIX(const T* src, const long long* idx, T* dst,           \
                                                     GatherArgs a) {                                       \
        index_select_impl<T>(src, idx, dst, a);                                                            \
    }

DETKD_SHAPE_MOVE_INSTANCES(unsigned short, b2)
DETKD_SHAPE_MOVE_INSTANCES(unsigned int, b4)
DETKD_SHAPE_MOVE_INSTANCES(unsigned long long, b8)

#define DETKD_SHAPE_GRAD_INSTANCES(G, SUFFIX)                                                                \
    extern "C" __global__ void index_select_backward_##SUFFIX(const G* grad, const long long* offsets,      \
                                                              const long long* sources, G* dst,             \
                                                              GatherArgs a) {                               \
        index_select_backward_impl<G>(grad, offsets, sources, dst, a);                                     \
    }

DETKD_SHAPE_GRAD_INSTANCES(float, f32)
DETKD_SHAPE_GRAD_INSTANCES(__half, f16)
DETKD_SHAPE_GRAD_INSTANCES(__nv_bfloat16, bf16)
