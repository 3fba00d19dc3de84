// Kernels for the `graph_conv` op family (see src/ops/graph_conv/): the element- and row-wise parts of the
// normalised graph convolution (degrees, D^-1/2 (A + I) D^-1/2, the adjacency gradient, bias) and of the
// GloRe node convolution (residual + bias + ReLU, ReLU mask). Every matrix product goes through matmul.cu.
//
// T is the storage dtype (f32, f16, bf16) of tensors the caller owns (A, bias, upstream gradients, outputs);
// intermediates computed by the host code (products, degrees, D^-1/2) are f32; arithmetic is f32.
// No atomics: every output element is summed by one thread (or one block, in a fixed order), so results
// are deterministic for a fixed launch shape.
#include "common.cuh"

using namespace detkd;

// ---------------------------------------------------------------------------------------------------------
// Reduction patterns

// Column sums of a [batch, rows, cols] matrix given element-wise by load(b, r, c): one block per tile of
// 32 columns of one batch entry; lane = column, warp w sums rows w, w + warps, ... (coalesced reads along a
// row), then warp 0 adds the per-warp partials in warp order and calls store(b, c, sum). Any block size that
// is a multiple of 32 up to 1024 works.
template <typename Load, typename Store>
__device__ __forceinline__ void column_sums(int64_t batch, int64_t rows, int64_t cols, Load load,
                                            Store store) {
    __shared__ float partial[32][33];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int64_t tiles_per_batch = (cols + 31) / 32;
    const int64_t tiles = batch * tiles_per_batch;
    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int64_t b = tile / tiles_per_batch;
        const int64_t c = (tile - b * tiles_per_batch) * 32 + lane;
        float sum = 0.0f;
        if (c < cols) {
            for (int64_t r = warp; r < rows; r += warps) sum += load(b, r, c);
        }
        partial[warp][lane] = sum;
        __syncthreads();
        if (warp == 0 && c < cols) {
            float total = 0.0f;
            for (int w = 0; w < warps; ++w) total += partial[w][lane];
            store(b, c, total);
        }
        __syncthreads();  // partial is rewritten by the next tile
    }
}

// ---------------------------------------------------------------------------------------------------------
// Normalised adjacency  Â = D^-1/2 (A + I) D^-1/2

// One block per row r of A viewed as [rows = batch*m, m]: degree[r] = 1 + Σ_j A[r, j] (the row sum of
// A + I) and inv_sqrt[r] = degree^-1/2. The host checks the degrees before anything reads inv_sqrt.
template <typename T>
__device__ void degree_impl(const T* __restrict__ a, int64_t rows, int64_t m, float* __restrict__ degree,
                            float* __restrict__ inv_sqrt) {
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {  // uniform per block: all threads reduce
        const T* row = a + r * m;
        float sum = 0.0f;
        for (int64_t j = threadIdx.x; j < m; j += blockDim.x) sum += to_float(row[j]);
        sum = block_reduce_sum(sum);
        if (threadIdx.x == 0) {
            const float d = sum + 1.0f;
            degree[r] = d;
            inv_sqrt[r] = 1.0f / sqrtf(d);
        }
    }
}

// a_hat[b, p, q] = s[b, p] · (A[b, p, q] + δ_pq) · s[b, q]  over batch*m*m elements.
template <typename T>
__device__ void normalize_adjacency_impl(const T* __restrict__ a, const float* __restrict__ inv_sqrt,
                                         int64_t batch, int64_t m, float* __restrict__ a_hat) {
    const int64_t mm = m * m;
    DETKD_GRID_STRIDE(i, batch * mm) {
        const int64_t b = i / mm, rem = i - b * mm, p = rem / m, q = rem - p * m;
        const float tilde = to_float(a[i]) + (p == q ? 1.0f : 0.0f);
        a_hat[i] = inv_sqrt[b * m + p] * tilde * inv_sqrt[b * m + q];
    }
}

// The two sums of the adjacency gradient, with G = dÂ and Â rebuilt from A and s:
//   row_sums[b, p] = Σ_k G[b, p, k] Â[b, p, k],   col_sums[b, p] = Σ_k G[b, k, p] Â[b, k, p].
// Row sums: one block per row (block_reduce_sum).
template <typename T>
__device__ void adjacency_grad_row_sums_impl(const float* __restrict__ g, const T* __restrict__ a,
                                             const float* __restrict__ s, int64_t batch, int64_t m,
                                             float* __restrict__ row_sums) {
    for (int64_t r = blockIdx.x; r < batch * m; r += gridDim.x) {
        const int64_t b = r / m, p = r - b * m;
        const float* g_row = g + r * m;
        const T* a_row = a + r * m;
        const float* s_b = s + b * m;
        float sum = 0.0f;
        for (int64_t k = threadIdx.x; k < m; k += blockDim.x) {
            sum += g_row[k] * (to_float(a_row[k]) + (k == p ? 1.0f : 0.0f)) * s_b[k];
        }
        sum = block_reduce_sum(sum);
        if (threadIdx.x == 0) row_sums[r] = sum * s_b[p];
    }
}

// Column sums: the column_sums tile pattern.
template <typename T>
__device__ void adjacency_grad_col_sums_impl(const float* __restrict__ g, const T* __restrict__ a,
                                             const float* __restrict__ s, int64_t batch, int64_t m,
                                             float* __restrict__ col_sums) {
    column_sums(
        batch, m, m,
        [=](int64_t b, int64_t k, int64_t p) {
            const int64_t idx = (b * m + k) * m + p;
            return g[idx] * (to_float(a[idx]) + (k == p ? 1.0f : 0.0f)) * s[b * m + k];
        },
        [=](int64_t b, int64_t p, float total) { col_sums[b * m + p] = total * s[b * m + p]; });
}

// dA[b, p, q] = G[b, p, q] s_p s_q − ½ s_p² (row_sums[b, p] + col_sums[b, p])   (see mod.rs for the derivation).
template <typename T>
__device__ void adjacency_grad_impl(const float* __restrict__ g, const float* __restrict__ s,
                                    const float* __restrict__ row_sums, const float* __restrict__ col_sums,
                                    int64_t batch, int64_t m, T* __restrict__ out) {
    const int64_t mm = m * m;
    DETKD_GRID_STRIDE(i, batch * mm) {
        const int64_t b = i / mm, rem = i - b * mm, p = rem / m, q = rem - p * m;
        const float sp = s[b * m + p], sq = s[b * m + q];
        const float v = g[i] * sp * sq - 0.5f * sp * sp * (row_sums[b * m + p] + col_sums[b * m + p]);
        out[i] = from_float<T>(v);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Element-wise helpers

// out[i] = x[i] as f32.
template <typename T>
__device__ void widen_impl(const T* __restrict__ x, int64_t n, float* __restrict__ out) {
    DETKD_GRID_STRIDE(i, n) { out[i] = to_float(x[i]); }
}

// out[b, i] = x[i] for b < batch: a shared operand repeated for a batched product.
template <typename T>
__device__ void tile_batch_impl(const T* __restrict__ x, int64_t n, int64_t batch, T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, n * batch) { out[i] = x[i % n]; }
}

// out[r, c] = y[r, c] + bias[c] over n = rows*cols elements; bias may be null (plain conversion).
template <typename T>
__device__ void bias_rows_impl(const float* __restrict__ y, const T* __restrict__ bias, int64_t n, int64_t cols,
                               T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, n) {
        float v = y[i];
        if (bias != nullptr) v += to_float(bias[i % cols]);
        out[i] = from_float<T>(v);
    }
}

// out[b, c] = Σ_r x[b, r, c] (summed in a fixed order).
template <typename T>
__device__ void col_sums_impl(const float* __restrict__ x, int64_t batch, int64_t rows, int64_t cols,
                              T* __restrict__ out) {
    column_sums(
        batch, rows, cols, [=](int64_t b, int64_t r, int64_t c) { return x[(b * rows + r) * cols + c]; },
        [=](int64_t b, int64_t c, float total) { out[b * cols + c] = from_float<T>(total); });
}

// GloRe node convolution epilogue: out = za + z + bias[c] (bias may be null), then ReLU when relu != 0.
// NaN stays NaN through the ReLU, as in PyTorch.
template <typename T>
__device__ void node_conv_epilogue_impl(const float* __restrict__ za, const float* __restrict__ z,
                                        const T* __restrict__ bias, int64_t n, int64_t cols, int relu,
                                        T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, n) {
        float v = za[i] + z[i];
        if (bias != nullptr) v += to_float(bias[i % cols]);
        if (relu && v < 0.0f) v = 0.0f;
        out[i] = from_float<T>(v);
    }
}

// res = grad ⊙ 1[out > 0] in f32 (the ReLU backward from the ReLU's output); out may be null (no ReLU).
template <typename T>
__device__ void relu_grad_impl(const T* __restrict__ grad, const T* __restrict__ out, int64_t n,
                               float* __restrict__ res) {
    DETKD_GRID_STRIDE(i, n) {
        const float g = to_float(grad[i]);
        res[i] = (out == nullptr || to_float(out[i]) > 0.0f) ? g : 0.0f;
    }
}

// ---------------------------------------------------------------------------------------------------------

#define DETKD_GRAPH_CONV_INSTANCES(T, SUFFIX)                                                                \
    extern "C" __global__ void degree_##SUFFIX(const T* a, int64_t rows, int64_t m, float* degree,          \
                                               float* inv_sqrt) {                                          \
        degree_impl<T>(a, rows, m, degree, inv_sqrt);                                                      \
    }                                                                                                      \
    extern "C" __global__ void normalize_adjacency_##SUFFIX(const T* a, const float* inv_sqrt, int64_t batch, \
                                                            int64_t m, float* a_hat) {                     \
        normalize_adjacency_impl<T>(a, inv_sqrt, batch, m, a_hat);                                         \
    }                                                                                                      \
    extern "C" __global__ void adjacency_grad_row_sums_##SUFFIX(const float* g, const T* a, const float* s,  \
                                                                int64_t batch, int64_t m, float* row_sums) { \
        adjacency_grad_row_sums_impl<T>(g, a, s, batch, m, row_sums);                                      \
    }                                                                                                      \
    extern "C" __global__ void adjacency_grad_col_sums_##SUFFIX(const float* g, const T* a, const float* s,  \
                                                                int64_t batch, int64_t m, float* col_sums) { \
        adjacency_grad_col_sums_impl<T>(g, a, s, batch, m, col_sums);                                      \
    }                                                                                                      \
    extern "C" __global__ void adjacency_grad_##SUFFIX(const float* g, const float* s, const float* row_sums, \
                                                       const float* col_sums, int64_t batch, int64_t m,      \
                                                       T* out) {                                           \
        adjacency_grad_impl<T>(g, s, row_sums, col_sums, batch, m, out);                                   \
    }                                                                                                      \
    extern "C" __global__ void widen_##SUFFIX(const T* x, int64_t n, float* out) { widen_impl<T>(x, n, out); } \
    extern "C" __global__ void tile_batch_##SUFFIX(const T* x, int64_t n, int64_t batch, T* out) {            \
        tile_batch_impl<T>(x, n, batch, out);                                                              \
    }                                                                                                      \
    extern "C" __global__ void bias_rows_##SUFFIX(const float* y, const T* bias, int64_t n, int64_t cols,     \
                                                  T* out) {                                                \
        bias_rows_impl<T>(y, bias, n, cols, out);                                                          \
    }                                                                                                      \
    extern "C" __global__ void col_sums_##SUFFIX(const float* x, int64_t batch, int64_t rows, int64_t cols,   \
                                                 T* out) {                                                 \
        col_sums_impl<T>(x, batch, rows, cols, out);                                                       \
    }                                                                                                      \
    extern "C" __global__ void node_conv_epilogue_##SUFFIX(const float* za, const float* z, const T* bias,    \
                                                           int64_t n, int64_t cols, int relu, T* out) {    \
        node_conv_epilogue_impl<T>(za, z, bias, n, cols, relu, out);                                       \
    }                                                                                                      \
    extern "C" __global__ void relu_grad_##SUFFIX(const T* grad, const T* out, int64_t n, float* res) {       \
        relu_grad_impl<T>(grad, out, n, res);                                                              \
    }

DETKD_GRAPH_CONV_INSTANCES(float, f32)
DETKD_GRAPH_CONV_INSTANCES(__half, f16)
DETKD_GRAPH_CONV_INSTANCES(__nv_bfloat16, bf16)
