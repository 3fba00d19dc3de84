// Pairwise instance similarity: the row-wise and element-wise parts around the Gram products (which run on
// kernels/matmul.cu). See src/ops/similarity/mod.rs for the formulas and shared/spec/methods.md §6.2, §6.3.
//
// Row-wise kernels give one 256-thread block to a row (grid-stride over rows) and reduce with
// block_reduce_sum, so every row's sums are taken in one fixed order: results are deterministic. Storage
// may be f32/f16/bf16; arithmetic is f32. Intermediates (normalised rows, Gram matrices, gradient matrices)
// are f32 buffers; only the results the caller sees are in the storage dtype.
#include "common.cuh"

using namespace detkd;

// Mirrors `RowArgs` in src/ops/similarity/cuda.rs (two 8-byte fields, then two 4-byte fields: 24 bytes).
struct RowArgs {
    long long rows;  // rows processed (output rows of a gather, input rows otherwise)
    long long cols;
    float eps;
    int unused;
};

// Mirrors `PairArgs` in src/ops/similarity/cuda.rs (24 bytes).
struct PairArgs {
    long long rows;  // m
    long long cols;  // n
    int self_mode;   // 1: y is x; the diagonal is exactly 0 and the gradient is symmetrised
    int take_sqrt;   // 1: plain Euclidean distance; 0: squared
};

// Sum of v over the block, returned to every thread. The shared slot is read by all threads before any of
// them can enter the next reduction (block_reduce_sum starts with __syncthreads), so back-to-back calls
// are safe.
__device__ __forceinline__ float block_sum_all(float v) {
    __shared__ float total;
    v = block_reduce_sum(v);
    if (threadIdx.x == 0) total = v;
    __syncthreads();
    return total;
}

__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }

// out[r, :] = x[src, :] / max(‖x[src, :]‖, eps) with src = index ? index[r] : r. A row whose squared norm
// is not finite (inf/NaN inputs, or overflow beyond ~1.8e19 in f32) becomes NaN: never a silent 0.
template <typename T, typename O>
__device__ void normalize_rows_impl(const T* __restrict__ x, const long long* __restrict__ index, RowArgs a,
                                    O* __restrict__ out) {
    for (long long r = blockIdx.x; r < a.rows; r += gridDim.x) {
        const long long src = index != nullptr ? index[r] : r;
        const T* row = x + src * a.cols;
        O* dst = out + r * a.cols;
        float sq = 0.0f;
        for (long long c = threadIdx.x; c < a.cols; c += blockDim.x) {
            const float v = to_float(row[c]);
            sq += v * v;
        }
        sq = block_sum_all(sq);
        const bool finite = isfinite(sq);
        const float norm = sqrtf(sq);
        const float denom = norm > a.eps ? norm : a.eps;
        for (long long c = threadIdx.x; c < a.cols; c += blockDim.x) {
            const float v = finite ? to_float(row[c]) / denom : quiet_nan();
            dst[c] = from_float<O>(v);
        }
    }
}

// Gradient of the row normalisation, scattered back: out[src, :] = (g − x̂(x̂·g))/‖x‖ if ‖x‖ > eps, else
// g/eps, with x̂ = x[src]/‖x[src]‖ and g = grad_hat[r, :]. With an index, rows not listed are left alone
// (the caller zero-fills `out`); indices are distinct (checked on the host), so no two blocks write a row.
template <typename T, typename G>
__device__ void normalize_rows_backward_impl(const T* __restrict__ x, const long long* __restrict__ index,
                                             const G* __restrict__ grad_hat, RowArgs a, T* __restrict__ out) {
    for (long long r = blockIdx.x; r < a.rows; r += gridDim.x) {
        const long long src = index != nullptr ? index[r] : r;
        const T* row = x + src * a.cols;
        const G* g = grad_hat + r * a.cols;
        T* dst = out + src * a.cols;
        float sq = 0.0f, dot = 0.0f;
        for (long long c = threadIdx.x; c < a.cols; c += blockDim.x) {
            const float v = to_float(row[c]);
            sq += v * v;
            dot += v * to_float(g[c]);
        }
        sq = block_sum_all(sq);
        dot = block_sum_all(dot);
        const bool finite = isfinite(sq);
        const float norm = sqrtf(sq);
        if (norm > a.eps) {
            const float inv = 1.0f / norm;
            const float proj = dot * inv;  // x̂·g
            for (long long c = threadIdx.x; c < a.cols; c += blockDim.x) {
                const float v = (to_float(g[c]) - to_float(row[c]) * inv * proj) * inv;
                dst[c] = from_float<T>(finite ? v : quiet_nan());
            }
        } else {
            const float inv_eps = 1.0f / a.eps;
            for (long long c = threadIdx.x; c < a.cols; c += blockDim.x) {
                const float v = to_float(g[c]) * inv_eps;
                dst[c] = from_float<T>(finite ? v : quiet_nan());
            }
        }
    }
}

// out[r] = Σ_c x[r, c]²
template <typename T>
__device__ void row_sq_norms_impl(const T* __restrict__ x, RowArgs a, float* __restrict__ out) {
    for (long long r = blockIdx.x; r < a.rows; r += gridDim.x) {
        const T* row = x + r * a.cols;
        float sq = 0.0f;
        for (long long c = threadIdx.x; c < a.cols; c += blockDim.x) {
            const float v = to_float(row[c]);
            sq += v * v;
        }
        sq = block_reduce_sum(sq);
        if (threadIdx.x == 0) out[r] = sq;
    }
}

// out = g + gᵀ for a square [m, m] g (a.rows = a.cols = m).
template <typename T>
__device__ void symmetrize_impl(const T* __restrict__ g, RowArgs a, float* __restrict__ out) {
    const long long m = a.rows;
    DETKD_GRID_STRIDE(i, m * m) {
        const long long row = i / m, col = i % m;
        out[i] = to_float(g[i]) + to_float(g[col * m + row]);
    }
}

// Squared (or plain) Euclidean distance from the Gram matrix and the squared row norms:
// d² = max(nx_i + ny_j − 2·gram_ij, 0) (NaN stays NaN); self mode forces the diagonal to exactly 0.
template <typename T>
__device__ void sq_euclidean_assemble_impl(const float* __restrict__ gram, const float* __restrict__ nx,
                                           const float* __restrict__ ny, PairArgs a, T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, a.rows * a.cols) {
        const long long row = i / a.cols, col = i % a.cols;
        float d2 = nx[row] + ny[col] - 2.0f * gram[i];
        d2 = d2 < 0.0f ? 0.0f : d2;
        if (a.self_mode && row == col) d2 = 0.0f;
        out[i] = from_float<T>(a.take_sqrt ? sqrtf(d2) : d2);
    }
}

// The gradient with respect to the squared distances, G' = dD² (squared) or dD/(2D) (plain), zero where the
// distance is 0 (clamped pairs, the diagonal in self mode). In self mode out = G' + G'ᵀ.
template <typename T>
__device__ __forceinline__ float euclidean_grad_entry(const T* grad, const T* dist, long long i, int take_sqrt) {
    const float d = to_float(dist[i]);
    if (d == 0.0f) return 0.0f;
    const float g = to_float(grad[i]);
    return take_sqrt ? g / (2.0f * d) : g;
}

template <typename T>
__device__ void euclidean_grad_prep_impl(const T* __restrict__ grad, const T* __restrict__ dist, PairArgs a,
                                         float* __restrict__ out) {
    DETKD_GRID_STRIDE(i, a.rows * a.cols) {
        const long long row = i / a.cols, col = i % a.cols;
        float v;
        if (a.self_mode) {
            v = row == col ? 0.0f
                           : euclidean_grad_entry(grad, dist, i, a.take_sqrt) +
                                 euclidean_grad_entry(grad, dist, col * a.cols + row, a.take_sqrt);
        } else {
            v = euclidean_grad_entry(grad, dist, i, a.take_sqrt);
        }
        out[i] = v;
    }
}

// out[r, c] = 2·(rowsum[r]·x[r, c] − prod[r, c]): dX = 2(diag(G1)X − GY) once GY is known.
template <typename T>
__device__ void euclidean_combine_impl(const T* __restrict__ x, const float* __restrict__ rowsum,
                                       const float* __restrict__ prod, RowArgs a, T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, a.rows * a.cols) {
        const long long row = i / a.cols;
        out[i] = from_float<T>(2.0f * (rowsum[row] * to_float(x[i]) - prod[i]));
    }
}

template <typename T>
__device__ void widen_impl(const T* __restrict__ x, long long n, float* __restrict__ out) {
    DETKD_GRID_STRIDE(i, n) { out[i] = to_float(x[i]); }
}

#define DETKD_SIMILARITY_INSTANCES(T, SUFFIX)                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                                        \
        normalize_rows_##SUFFIX(const T* x, const long long* index, RowArgs a, T* out) {                     \
        normalize_rows_impl<T, T>(x, index, a, out);                                                         \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                                        \
        normalize_rows_to_f32_##SUFFIX(const T* x, const long long* index, RowArgs a, float* out) {          \
        normalize_rows_impl<T, float>(x, index, a, out);                                                     \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) normalize_rows_backward_##SUFFIX(                     \
        const T* x, const long long* index, const T* grad_hat, RowArgs a, T* out) {                          \
        normalize_rows_backward_impl<T, T>(x, index, grad_hat, a, out);                                      \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) normalize_rows_backward_f32grad_##SUFFIX(             \
        const T* x, const long long* index, const float* grad_hat, RowArgs a, T* out) {                      \
        normalize_rows_backward_impl<T, float>(x, index, grad_hat, a, out);                                  \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                                        \
        row_sq_norms_##SUFFIX(const T* x, RowArgs a, float* out) {                                           \
        row_sq_norms_impl<T>(x, a, out);                                                                     \
    }                                                                                                        \
    extern "C" __global__ void symmetrize_##SUFFIX(const T* g, RowArgs a, float* out) {                      \
        symmetrize_impl<T>(g, a, out);                                                                       \
    }                                                                                                        \
    extern "C" __global__ void sq_euclidean_assemble_##SUFFIX(const float* gram, const float* nx,            \
                                                              const float* ny, PairArgs a, T* out) {         \
        sq_euclidean_assemble_impl<T>(gram, nx, ny, a, out);                                                 \
    }                                                                                                        \
    extern "C" __global__ void euclidean_grad_prep_##SUFFIX(const T* grad, const T* dist, PairArgs a,        \
                                                            float* out) {                                    \
        euclidean_grad_prep_impl<T>(grad, dist, a, out);                                                     \
    }                                                                                                        \
    extern "C" __global__ void euclidean_combine_##SUFFIX(const T* x, const float* rowsum,                   \
                                                          const float* prod, RowArgs a, T* out) {            \
        euclidean_combine_impl<T>(x, rowsum, prod, a, out);                                                  \
    }                                                                                                        \
    extern "C" __global__ void widen_##SUFFIX(const T* x, long long n, float* out) { widen_impl<T>(x, n, out); }

DETKD_SIMILARITY_INSTANCES(float, f32)
DETKD_SIMILARITY_INSTANCES(__half, f16)
DETKD_SIMILARITY_INSTANCES(__nv_bfloat16, bf16)

// out[r] = Σ_c m[r, c] for an f32 [rows, cols] matrix, one block per row.
extern "C" __global__ void __launch_bounds__(256) row_sums_f32(const float* __restrict__ m, RowArgs a,
                                                                float* __restrict__ out) {
    for (long long r = blockIdx.x; r < a.rows; r += gridDim.x) {
        const float* row = m + r * a.cols;
        float s = 0.0f;
        for (long long c = threadIdx.x; c < a.cols; c += blockDim.x) s += row[c];
        s = block_reduce_sum(s);
        if (threadIdx.x == 0) out[r] = s;
    }
}

// out[c] = Σ_r m[r, c], one thread per column summing down the rows in order (coalesced across threads).
extern "C" __global__ void col_sums_f32(const float* __restrict__ m, RowArgs a, float* __restrict__ out) {
    DETKD_GRID_STRIDE(c, a.cols) {
        float s = 0.0f;
        for (long long r = 0; r < a.rows; ++r) s += m[r * a.cols + c];
        out[c] = s;
    }
}

// The Dsig edge loss on two f32 [m, m] Gram matrices, fused with its gradient. Per element
// diff = a_s − a_t; the block's Σ diff², times loss_scale, goes to partials[blockIdx.x] (summed afterwards by
// sum_partials_f32 in a fixed order), and, when write_grad is set, a_s is overwritten with
// grad_scale·diff (the matrix that multiplies X̂s in the gradient). Launched with grid_for(total) blocks,
// which is exactly the length of `partials`.
extern "C" __global__ void __launch_bounds__(256)
    dsig_edge_loss_f32(float* __restrict__ a_s, const float* __restrict__ a_t, long long total, float loss_scale,
                       float grad_scale, int write_grad, float* __restrict__ partials) {
    float local = 0.0f;
    DETKD_GRID_STRIDE(i, total) {
        const float diff = a_s[i] - a_t[i];
        local += diff * diff;
        if (write_grad) a_s[i] = grad_scale * diff;
    }
    local = block_reduce_sum(local);
    if (threadIdx.x == 0) partials[blockIdx.x] = local * loss_scale;
}
