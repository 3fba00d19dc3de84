// Softmax and log-softmax along the last axis with a temperature, forward and backward. See
// src/ops/softmax/mod.rs for the formulas; src/ops/softmax/cpu.rs is the reference these mirror.
//
// Two launch shapes, chosen on the host from the row length:
//   group kernels  rows of up to 1024 elements: `group` lanes (a power of two, 1..32) of a warp per row,
//                  32/group rows per warp, reductions by xor shuffles within the group;
//   block kernels  longer rows: one 256-thread block per row, block-wide reductions through shared memory.
// Rows are walked with grid-stride loops whose trip counts are uniform over a warp (group kernels) or a
// block (block kernels), so every lane reaches every shuffle and barrier. The forward reads a row three
// times (max, sum of exponentials, write), the backward twice (dot product, write); rows stay in L1/L2.
// Storage f32/f16/bf16, arithmetic f32; no atomics, fixed reduction shapes: results are reproducible.
#include "common.cuh"

using namespace detkd;

// Mirrors `SoftmaxArgs` in src/ops/softmax/cuda.rs (one 8-byte field, four 4-byte fields: 24 bytes).
struct SoftmaxArgs {
    long long rows;
    int cols;
    int group;            // group kernels: lanes per row
    float inv_temperature;
    int log_softmax;      // 1: log-softmax, 0: softmax
};

template <typename T>
__device__ __forceinline__ float load_scaled(const T* p, float inv_t) {
    return to_float(*p) * inv_t;
}

// ---------------------------------------------------------------------------------------------------------
// Reductions

__device__ __forceinline__ float group_max(float v, int group) {
    for (int offset = group >> 1; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset, group));
    return v;
}

__device__ __forceinline__ float group_sum(float v, int group) {
    for (int offset = group >> 1; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset, group);
    return v;
}

// Block-wide maximum / sum returned to every thread; blockDim.x is a multiple of 32, at most 1024. The
// leading barrier protects the shared slots from a previous call's readers, so calls may follow each other.
__device__ __forceinline__ float block_max_all(float v) {
    __shared__ float warp_max[32];
    __shared__ float result;
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) warp_max[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? warp_max[lane] : -INFINITY;
        for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
        if (lane == 0) result = v;
    }
    __syncthreads();
    return result;
}

__device__ __forceinline__ float block_sum_all(float v) {
    __shared__ float result;
    v = block_reduce_sum(v);  // starts with a barrier, so `result` is no longer being read
    if (threadIdx.x == 0) result = v;
    __syncthreads();
    return result;
}

// ---------------------------------------------------------------------------------------------------------
// Forward

// One row's output from its maximum m and exponential sum s (of z - m): p = e^{z-m}/s or (z-m) - ln s.
__device__ __forceinline__ float finish(float z, float m, float s, float log_s, int log_softmax) {
    return log_softmax ? (z - m) - log_s : expf(z - m) / s;
}

template <typename T>
__device__ void softmax_group_impl(const T* __restrict__ x, SoftmaxArgs a, T* __restrict__ out) {
    const int lane = threadIdx.x & 31;
    const int sub = lane & (a.group - 1), slot = lane / a.group, rows_per_warp = 32 / a.group;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long base = warp * rows_per_warp; base < a.rows; base += warps * rows_per_warp) {
        const long long r = base + slot;
        const bool active = r < a.rows;
        const T* row = x + (active ? r : 0) * a.cols;
        float m = -INFINITY;
        if (active)
            for (int c = sub; c < a.cols; c += a.group) m = fmaxf(m, load_scaled(row + c, a.inv_temperature));
        m = group_max(m, a.group);
        float s = 0.0f;
        if (active)
            for (int c = sub; c < a.cols; c += a.group) s += expf(load_scaled(row + c, a.inv_temperature) - m);
        s = group_sum(s, a.group);
        if (active) {
            const float log_s = logf(s);
            T* dst = out + r * a.cols;
            for (int c = sub; c < a.cols; c += a.group)
                dst[c] = from_float<T>(finish(load_scaled(row + c, a.inv_temperature), m, s, log_s, a.log_softmax));
        }
    }
}

template <typename T>
__device__ void softmax_block_impl(const T* __restrict__ x, SoftmaxArgs a, T* __restrict__ out) {
    for (long long r = blockIdx.x; r < a.rows; r += gridDim.x) {
        const T* row = x + r * a.cols;
        float m = -INFINITY;
        for (int c = threadIdx.x; c < a.cols; c += blockDim.x) m = fmaxf(m, load_scaled(row + c, a.inv_temperature));
        m = block_max_all(m);
        float s = 0.0f;
        for (int c = threadIdx.x; c < a.cols; c += blockDim.x) s += expf(load_scaled(row + c, a.inv_temperature) - m);
        s = block_sum_all(s);
        const float log_s = logf(s);
        T* dst = out + r * a.cols;
        for (int c = threadIdx.x; c < a.cols; c += blockDim.x)
            dst[c] = from_float<T>(finish(load_scaled(row + c, a.inv_temperature), m, s, log_s, a.log_softmax));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Backward, from the forward output y (p, or log p) and the upstream gradient g

// softmax: reduce Σ g·p, then p(g − dot)/T.  log-softmax: reduce Σ g, then (g − e^{log p}·Σg)/T.
__device__ __forceinline__ float backward_term(float y, float g, int log_softmax) {
    return log_softmax ? g : g * y;
}

__device__ __forceinline__ float backward_value(float y, float g, float reduced, float inv_t, int log_softmax) {
    return log_softmax ? (g - expf(y) * reduced) * inv_t : y * (g - reduced) * inv_t;
}

template <typename T>
__device__ void softmax_backward_group_impl(const T* __restrict__ y, const T* __restrict__ g, SoftmaxArgs a,
                                            T* __restrict__ out) {
    const int lane = threadIdx.x & 31;
    const int sub = lane & (a.group - 1), slot = lane / a.group, rows_per_warp = 32 / a.group;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long base = warp * rows_per_warp; base < a.rows; base += warps * rows_per_warp) {
        const long long r = base + slot;
        const bool active = r < a.rows;
        const long long offset = (active ? r : 0) * a.cols;
        float reduced = 0.0f;
        if (active)
            for (int c = sub; c < a.cols; c += a.group)
                reduced += backward_term(to_float(y[offset + c]), to_float(g[offset + c]), a.log_softmax);
        reduced = group_sum(reduced, a.group);
        if (active) {
            for (int c = sub; c < a.cols; c += a.group) {
                const float v = backward_value(to_float(y[offset + c]), to_float(g[offset + c]), reduced,
                                               a.inv_temperature, a.log_softmax);
                out[offset + c] = from_float<T>(v);
            }
        }
    }
}

template <typename T>
__device__ void softmax_backward_block_impl(const T* __restrict__ y, const T* __restrict__ g, SoftmaxArgs a,
                                            T* __restrict__ out) {
    for (long long r = blockIdx.x; r < a.rows; r += gridDim.x) {
        const long long offset = r * a.cols;
        float reduced = 0.0f;
        for (int c = threadIdx.x; c < a.cols; c += blockDim.x)
            reduced += backward_term(to_float(y[offset + c]), to_float(g[offset + c]), a.log_softmax);
        reduced = block_sum_all(reduced);
        for (int c = threadIdx.x; c < a.cols; c += blockDim.x) {
            const float v = backward_value(to_float(y[offset + c]), to_float(g[offset + c]), reduced,
                                           a.inv_temperature, a.log_softmax);
            out[offset + c] = from_float<T>(v);
        }
    }
}

#define DETKD_SOFTMAX_INSTANCES(T, SUFFIX)                                                                  \
    extern "C" __global__ void softmax_group_##SUFFIX(const T* x, SoftmaxArgs a, T* out) {                 \
        softmax_group_impl<T>(x, a, out);                                                                 \
    }                                                                                                     \
    extern "C" __global__ void softmax_block_##SUFFIX(const T* x, SoftmaxArgs a, T* out) {                 \
        softmax_block_impl<T>(x, a, out);                                                                 \
    }                                                                                                     \
    extern "C" __global__ void softmax_backward_group_##SUFFIX(const T* y, const T* g, SoftmaxArgs a,      \
                                                               T* out) {                                  \
        softmax_backward_group_impl<T>(y, g, a, out);                                                     \
    }                                                                                                     \
    extern "C" __global__ void softmax_backward_block_##SUFFIX(const T* y, const T* g, SoftmaxArgs a,      \
                                                               T* out) {                                  \
        softmax_backward_block_impl<T>(y, g, a, out);                                                     \
    }

DETKD_SOFTMAX_INSTANCES(float, f32)
DETKD_SOFTMAX_INSTANCES(__half, f16)
DETKD_SOFTMAX_INSTANCES(__nv_bfloat16, bf16)
