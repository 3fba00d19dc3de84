// Optimizer updates (src/ops/optim): one thread per element, state in f32, parameters in their storage
// dtype, and a deterministic squared norm for gradient clipping.
#include "common.cuh"

using namespace detkd;

// Mirrors `SgdArgs` in src/ops/optim/cuda.rs.
struct SgdArgs {
    int64_t n;
    float lr, momentum, one_minus_dampening, weight_decay;
    int nesterov, first_step, has_buffer, unused;
};

// Mirrors `AdamWArgs` in src/ops/optim/cuda.rs.
struct AdamWArgs {
    int64_t n;
    float decay;  // 1 - lr * weight_decay
    float one_minus_beta1, beta2, one_minus_beta2, eps, step_size, bias_correction2_sqrt;
    int unused;
};

template <typename T>
__device__ void sgd_step_impl(T* __restrict__ param, const T* __restrict__ grad, float* __restrict__ buffer,
                              SgdArgs a) {
    DETKD_GRID_STRIDE(i, a.n) {
        const float p = to_float(param[i]);
        float g = to_float(grad[i]) + a.weight_decay * p;
        if (a.has_buffer) {
            const float b = a.first_step ? g : a.momentum * buffer[i] + a.one_minus_dampening * g;
            buffer[i] = b;
            g = a.nesterov ? g + a.momentum * b : b;
        }
        param[i] = from_float<T>(p - a.lr * g);
    }
}

template <typename T>
__device__ void adamw_step_impl(T* __restrict__ param, const T* __restrict__ grad, float* __restrict__ m,
                                float* __restrict__ v, AdamWArgs a) {
    DETKD_GRID_STRIDE(i, a.n) {
        const float g = to_float(grad[i]);
        const float p = to_float(param[i]) * a.decay;
        const float mi = m[i] + a.one_minus_beta1 * (g - m[i]);
        const float vi = a.beta2 * v[i] + a.one_minus_beta2 * g * g;
        m[i] = mi;
        v[i] = vi;
        // Division and square root are IEEE-rounded (no fast math), as in the CPU reference.
        const float denom = sqrtf(vi) / a.bias_correction2_sqrt + a.eps;
        param[i] = from_float<T>(p - a.step_size * (mi / denom));
    }
}

// Per-block partial sums of x², combined by sum_partials_f32 in a fixed order.
template <typename T>
__device__ void squared_norm_partials_impl(const T* __restrict__ x, int64_t n, float* __restrict__ partials) {
    float acc = 0.0f;
    DETKD_GRID_STRIDE(i, n) {
        const float v = to_float(x[i]);
        acc += v * v;
    }
    acc = block_reduce_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

template <typename T>
__device__ void scale_impl(T* __restrict__ x, int64_t n, float s) {
    DETKD_GRID_STRIDE(i, n) { x[i] = from_float<T>(to_float(x[i]) * s); }
}

#define DETKD_OPTIM_INSTANCES(T, SUFFIX)                                                               \
    extern "C" __global__ void sgd_step_##SUFFIX(T* param, const T* grad, float* buffer, SgdArgs a) {  \
        sgd_step_impl<T>(param, grad, buffer, a);                                                    \
    }                                                                                                \
    extern "C" __global__ void adamw_step_##SUFFIX(T* param, const T* grad, float* m, float* v,        \
                                                   AdamWArgs a) {                                    \
        adamw_step_impl<T>(param, grad, m, v, a);                                                    \
    }                                                                                                \
    extern "C" __global__ void squared_norm_partials_##SUFFIX(const T* x, int64_t n, float* partials) { \
        squared_norm_partials_impl<T>(x, n, partials);                                               \
    }                                                                                                \
    extern "C" __global__ void scale_##SUFFIX(T* x, int64_t n, float s) { scale_impl<T>(x, n, s); }

DETKD_OPTIM_INSTANCES(float, f32)
DETKD_OPTIM_INSTANCES(__half, f16)
DETKD_OPTIM_INSTANCES(__nv_bfloat16, bf16)
