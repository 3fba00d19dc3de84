// Full sums / means (first pass of the deterministic two-pass reduction; accumulate.cu's sum_partials_f32
// is the second) and the maximum along the last axis with its position, plus that maximum's gradient. See
// src/ops/reduce/mod.rs for the formulas; src/ops/reduce/cpu.rs is the reference.
//
// Storage f32/f16/bf16, arithmetic f32, 64-bit element indices. No atomics: each block writes one partial,
// each row is reduced by one warp, each gradient element is written by one thread.
#include "common.cuh"

using namespace detkd;

// partials[blockIdx.x] = scale * (sum of this block's grid-stride slice of x). The grid is grid_for(n) on
// the host, a function of n only, so the slices and the tree order are fixed and the sum is reproducible.
template <typename T>
__device__ void sum_all_partials_impl(const T* __restrict__ x, int64_t n, float scale, float* __restrict__ partials) {
    float local = 0.0f;
    DETKD_GRID_STRIDE(i, n) { local += to_float(x[i]); }
    const float block = block_reduce_sum(local);
    if (threadIdx.x == 0) partials[blockIdx.x] = block * scale;
}

// (value, index) of a running maximum: a NaN beats every number; among equals (or NaNs) the lower index
// wins. An empty lane holds (-inf, INT64_MAX), which any real element beats or ties with a lower index.
struct ArgMax {
    float value;
    long long index;
};

__device__ __forceinline__ bool beats(float v, long long i, const ArgMax& best) {
    const bool v_nan = isnan(v), best_nan = isnan(best.value);
    if (v_nan || best_nan) return v_nan && (!best_nan || i < best.index);
    return v > best.value || (v == best.value && i < best.index);
}

// One warp per row (grid-stride over rows): each lane scans its columns in increasing order, then a
// butterfly over the warp keeps the winner. values[r] is the element itself (exact in T).
template <typename T>
__device__ void max_last_axis_impl(const T* __restrict__ x, long long rows, int cols, T* __restrict__ values,
                                   long long* __restrict__ indices) {
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long r = warp; r < rows; r += warps) {
        const T* row = x + r * cols;
        ArgMax best = {-INFINITY, 0x7fffffffffffffffLL};
        for (int c = lane; c < cols; c += 32) {
            const float v = to_float(row[c]);
            if (beats(v, c, best)) {
                best.value = v;
                best.index = c;
            }
        }
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float v = __shfl_xor_sync(0xffffffffu, best.value, offset);
            const long long i = __shfl_xor_sync(0xffffffffu, best.index, offset);
            if (beats(v, i, best)) {
                best.value = v;
                best.index = i;
            }
        }
        if (lane == 0) {
            values[r] = from_float<T>(best.value);
            indices[r] = best.index;
        }
    }
}

// grad[r, c] = (c == indices[r]) ? grad_values[r] : 0, one thread per element (indices validated on the
// host to lie in [0, cols)).
template <typename T>
__device__ void max_last_axis_backward_impl(const T* __restrict__ grad_values, const long long* __restrict__ indices,
                                            long long rows, int cols, T* __restrict__ grad) {
    DETKD_GRID_STRIDE(i, rows * cols) {
        const long long r = i / cols, c = i % cols;
        grad[i] = c == indices[r] ? grad_values[r] : from_float<T>(0.0f);
    }
}

#define DETKD_REDUCE_INSTANCES(T, SUFFIX)                                                                    \
    extern "C" __global__ void sum_all_partials_##SUFFIX(const T* x, int64_t n, float scale, float* partials) { \
        sum_all_partials_impl<T>(x, n, scale, partials);                                                   \
    }                                                                                                      \
    extern "C" __global__ void max_last_axis_##SUFFIX(const T* x, long long rows, int cols, T* values,      \
                                                      long long* indices) {                                \
        max_last_axis_impl<T>(x, rows, cols, values, indices);                                             \
    }                                                                                                      \
    extern "C" __global__ void max_last_axis_backward_##SUFFIX(const T* grad_values, const long long* indices, \
                                                               long long rows, int cols, T* grad) {        \
        max_last_axis_backward_impl<T>(grad_values, indices, rows, cols, grad);                            \
    }

DETKD_REDUCE_INSTANCES(float, f32)
DETKD_REDUCE_INSTANCES(__half, f16)
DETKD_REDUCE_INSTANCES(__nv_bfloat16, bf16)
