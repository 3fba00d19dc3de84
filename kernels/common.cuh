// Shared device helpers: dtype conversion (storage in f32/f16/bf16, arithmetic in f32), grid-stride loops,
// and the fixed-point accumulator behind every deterministic backward.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace detkd {

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
    return __bfloat162float(v);
}

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// Fixed-point accumulation: every addend is rounded to a multiple of 2^-e and added as a 64-bit integer.
// Integer addition is associative, so the sum is bitwise identical whatever order the atomics land in.
// The scale is chosen from a bound on the largest possible sum: max|addend source| * max_terms < 2^62,
// leaving a bit of headroom for the per-addend rounding. For a typical backward this keeps ~40 more bits of
// precision than an f32 atomic sum.
//
// `abs_max_bits` holds the bit pattern of max|x| (see abs_max in accumulate.cu); a pattern >= inf means the
// input held inf or NaN, and scale 0 marks that case so the finaliser writes NaN instead of a wrong number.
__device__ __forceinline__ double fixed_point_scale(unsigned int abs_max_bits, double max_terms) {
    if (abs_max_bits >= 0x7f800000u) return 0.0;
    double bound = (double)__uint_as_float(abs_max_bits) * max_terms;
    if (bound == 0.0) return 1.0;
    int exponent;
    frexp(bound, &exponent);  // bound < 2^exponent
    return ldexp(1.0, 62 - exponent);
}

__device__ __forceinline__ void accumulate(float* acc, float v, double /*scale*/) { atomicAdd(acc, v); }

__device__ __forceinline__ void accumulate(unsigned long long* acc, float v, double scale) {
    long long fixed = __double2ll_rn((double)v * scale);
    atomicAdd(acc, (unsigned long long)fixed);  // two's complement: adding the bits adds the values
}

}  // namespace detkd

// Grid-stride loop with a 64-bit index, so element counts above 2^31 stay correct.
#define DETKD_GRID_STRIDE(i, n)                                                                   \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (int64_t)(n);          \
         i += (int64_t)blockDim.x * gridDim.x)

namespace detkd {

// Sum of `v` over the block, valid in thread 0. Every thread of the block must call it (it synchronises);
// blockDim.x must be a multiple of 32 and <= 1024. The order
// of additions depends only on the thread layout, so results are reproducible for a fixed launch shape.
__device__ __forceinline__ float block_reduce_sum(float v) {
    __shared__ float warp_sums[32];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // warp_sums may still be read by a previous call
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = threadIdx.x < warps ? warp_sums[threadIdx.x] : 0.0f;
    if (warp == 0) {
        for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    return v;
}

}  // namespace detkd
