// Generic accumulation helpers used by several backward passes: max|x| (for the fixed-point scale),
// fixed-point -> storage dtype, and f32 scratch -> storage dtype.
#include "common.cuh"

using namespace detkd;

// max |x| over n elements as float bits, combined into *out_bits with atomicMax. Non-negative floats order
// like their bit patterns, and |NaN| has a pattern above inf, so a NaN input shows up as a pattern >= inf.
// *out_bits must be zero before the launch.
template <typename T>
__device__ void abs_max_impl(const T* __restrict__ x, int64_t n, unsigned int* out_bits) {
    unsigned int local = 0;
    DETKD_GRID_STRIDE(i, n) {
        unsigned int bits = __float_as_uint(fabsf(to_float(x[i])));
        local = bits > local ? bits : local;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        unsigned int other = __shfl_down_sync(0xffffffffu, local, offset);
        local = other > local ? other : local;
    }
    if ((threadIdx.x & 31) == 0 && local != 0) atomicMax(out_bits, local);
}

// out[i] = acc[i] / scale, or NaN everywhere when the scale source was not finite.
template <typename T>
__device__ void fixed_point_to_impl(const unsigned long long* __restrict__ acc, int64_t n,
                                    const unsigned int* __restrict__ abs_max_bits, double max_terms,
                                    T* __restrict__ out) {
    double scale = fixed_point_scale(*abs_max_bits, max_terms);
    DETKD_GRID_STRIDE(i, n) {
        float v = scale == 0.0 ? __int_as_float(0x7fc00000) : (float)((double)(long long)acc[i] / scale);
        out[i] = from_float<T>(v);
    }
}

template <typename T>
__device__ void f32_to_impl(const float* __restrict__ src, int64_t n, T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, n) { out[i] = from_float<T>(src[i]); }
}

#define DETKD_ACCUMULATE_INSTANCES(T, SUFFIX)                                                          \
    extern "C" __global__ void abs_max_##SUFFIX(const T* x, int64_t n, unsigned int* out_bits) {     \
        abs_max_impl<T>(x, n, out_bits);                                                             \
    }                                                                                                \
    extern "C" __global__ void fixed_point_to_##SUFFIX(const unsigned long long* acc, int64_t n,     \
                                                       const unsigned int* abs_max_bits,             \
                                                       double max_terms, T* out) {                   \
        fixed_point_to_impl<T>(acc, n, abs_max_bits, max_terms, out);                                \
    }                                                                                                \
    extern "C" __global__ void f32_to_##SUFFIX(const float* src, int64_t n, T* out) {                \
        f32_to_impl<T>(src, n, out);                                                                 \
    }

DETKD_ACCUMULATE_INSTANCES(float, f32)
DETKD_ACCUMULATE_INSTANCES(__half, f16)
DETKD_ACCUMULATE_INSTANCES(__nv_bfloat16, bf16)

// Final pass of a deterministic two-pass sum: one block adds the per-block partials in a fixed order.
extern "C" __global__ void sum_partials_f32(const float* __restrict__ partials, int64_t n, float* out) {
    float v = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += partials[i];
    v = block_reduce_sum(v);
    if (threadIdx.x == 0) out[0] = v;
}
