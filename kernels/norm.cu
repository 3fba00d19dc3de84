// BatchNorm2d (training statistics with running-stat update, eval with running statistics) and GroupNorm,
// forward and backward. See src/ops/norm/mod.rs for the formulas.
//
// Every reduction belongs to one 256-thread block (a channel for BatchNorm, an (image, group) pair or a
// channel for GroupNorm) and goes through block_reduce_sum, so each sum has an order fixed by the launch
// shape: results are bitwise reproducible, with no atomics. Statistics are two-pass (mean, then the centred
// sum of squares) in f32; storage may be f32/f16/bf16, converted on load and rounded once on store. Optional
// tensors (weight, bias, running statistics) are null pointers when absent.
#include "common.cuh"

using namespace detkd;

// Mirrors `NormArgs` in src/ops/norm/cuda.rs: three 8-byte fields, then four 4-byte fields (40 bytes).
struct NormArgs {
    long long batch;
    long long channels;
    long long plane;  // H·W
    int groups;       // GroupNorm only
    float eps;
    float momentum;   // BatchNorm training only
    int unused;
};

// The block's sum of v, returned to every thread (the slot is read by all threads before the next
// block_reduce_sum can overwrite it: that one starts with __syncthreads).
__device__ __forceinline__ float block_sum_all(float v) {
    __shared__ float total;
    v = block_reduce_sum(v);
    if (threadIdx.x == 0) total = v;
    __syncthreads();
    return total;
}

template <typename T>
__device__ __forceinline__ float load_or(const T* p, long long i, float fallback) {
    return p != nullptr ? to_float(p[i]) : fallback;
}

// ---------------------------------------------------------------------------------------------------------
// BatchNorm2d

// Per channel c (one block): mean = Σx/N, var = Σ(x − mean)²/N over the N = B·H·W values, inv_std =
// 1/√(var + eps); y = (x − mean)·inv_std·γ + β. With running statistics, the updated ones are
// (1 − m)·running + m·stat, the variance unbiased (Σ(x − mean)²/(N − 1)) as in PyTorch.
template <typename T>
__device__ void bn_train_forward_impl(const T* __restrict__ x, const T* __restrict__ weight,
                                      const T* __restrict__ bias, const T* __restrict__ running_mean,
                                      const T* __restrict__ running_var, NormArgs a, T* __restrict__ y,
                                      float* __restrict__ mean_out, float* __restrict__ inv_std_out,
                                      T* __restrict__ new_mean, T* __restrict__ new_var) {
    const float n = (float)(a.batch * a.plane);
    for (long long c = blockIdx.x; c < a.channels; c += gridDim.x) {
        float s = 0.0f;
        for (long long b = 0; b < a.batch; ++b) {
            const T* row = x + (b * a.channels + c) * a.plane;
            for (long long p = threadIdx.x; p < a.plane; p += blockDim.x) s += to_float(row[p]);
        }
        const float mean = block_sum_all(s) / n;
        float sq = 0.0f;
        for (long long b = 0; b < a.batch; ++b) {
            const T* row = x + (b * a.channels + c) * a.plane;
            for (long long p = threadIdx.x; p < a.plane; p += blockDim.x) {
                const float d = to_float(row[p]) - mean;
                sq += d * d;
            }
        }
        sq = block_sum_all(sq);
        const float inv_std = 1.0f / sqrtf(sq / n + a.eps);
        const float gamma = load_or(weight, c, 1.0f), beta = load_or(bias, c, 0.0f);
        for (long long b = 0; b < a.batch; ++b) {
            const long long base = (b * a.channels + c) * a.plane;
            for (long long p = threadIdx.x; p < a.plane; p += blockDim.x) {
                y[base + p] = from_float<T>((to_float(x[base + p]) - mean) * inv_std * gamma + beta);
            }
        }
        if (threadIdx.x == 0) {
            mean_out[c] = mean;
            inv_std_out[c] = inv_std;
            if (running_mean != nullptr) {
                const float m = a.momentum;
                new_mean[c] = from_float<T>(m * mean + (1.0f - m) * to_float(running_mean[c]));
                new_var[c] = from_float<T>(m * (sq / (n - 1.0f)) + (1.0f - m) * to_float(running_var[c]));
            }
        }
    }
}

// Per channel c (one block), with x̂ = (x − mean)·inv_std: dβ = Σdy, dγ = Σdy·x̂ and
// dx = γ·inv_std·(dy − dβ/N − x̂·dγ/N).
template <typename T>
__device__ void bn_backward_impl(const T* __restrict__ x, const T* __restrict__ weight,
                                 const float* __restrict__ mean_in, const float* __restrict__ inv_std_in,
                                 const T* __restrict__ grad_out, NormArgs a, T* __restrict__ grad_x,
                                 T* __restrict__ grad_weight, T* __restrict__ grad_bias) {
    const float n = (float)(a.batch * a.plane);
    for (long long c = blockIdx.x; c < a.channels; c += gridDim.x) {
        const float mean = mean_in[c], inv_std = inv_std_in[c];
        float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
        for (long long b = 0; b < a.batch; ++b) {
            const long long base = (b * a.channels + c) * a.plane;
            for (long long p = threadIdx.x; p < a.plane; p += blockDim.x) {
                const float g = to_float(grad_out[base + p]);
                sum_dy += g;
                sum_dy_xhat += g * (to_float(x[base + p]) - mean) * inv_std;
            }
        }
        sum_dy = block_sum_all(sum_dy);
        sum_dy_xhat = block_sum_all(sum_dy_xhat);
        const float scale = load_or(weight, c, 1.0f) * inv_std;
        const float mean_dy = sum_dy / n, mean_dy_xhat = sum_dy_xhat / n;
        for (long long b = 0; b < a.batch; ++b) {
            const long long base = (b * a.channels + c) * a.plane;
            for (long long p = threadIdx.x; p < a.plane; p += blockDim.x) {
                const float xhat = (to_float(x[base + p]) - mean) * inv_std;
                const float g = to_float(grad_out[base + p]);
                grad_x[base + p] = from_float<T>(scale * (g - mean_dy - xhat * mean_dy_xhat));
            }
        }
        if (threadIdx.x == 0) {
            grad_weight[c] = from_float<T>(sum_dy_xhat);
            grad_bias[c] = from_float<T>(sum_dy);
        }
    }
}

// y = (x − running_mean)/√(running_var + eps)·γ + β, element-wise.
template <typename T>
__device__ void bn_eval_impl(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                             const T* __restrict__ running_mean, const T* __restrict__ running_var, NormArgs a,
                             T* __restrict__ y) {
    DETKD_GRID_STRIDE(i, a.batch * a.channels * a.plane) {
        const long long c = (i / a.plane) % a.channels;
        const float inv_std = 1.0f / sqrtf(to_float(running_var[c]) + a.eps);
        const float v = (to_float(x[i]) - to_float(running_mean[c])) * inv_std;
        y[i] = from_float<T>(v * load_or(weight, c, 1.0f) + load_or(bias, c, 0.0f));
    }
}

// ---------------------------------------------------------------------------------------------------------
// GroupNorm: group g of image b is the contiguous run of (C/G)·H·W elements starting at (b·C + g·C/G)·H·W.

// Per (b, g) (one block): mean, var (biased) over the group, inv_std = 1/√(var + eps);
// y = (x − mean)·inv_std·γ_c + β_c.
template <typename T>
__device__ void gn_forward_impl(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                                NormArgs a, T* __restrict__ y, float* __restrict__ mean_out,
                                float* __restrict__ inv_std_out) {
    const long long per_group = a.channels / a.groups;
    const long long size = per_group * a.plane;
    const float n = (float)size;
    for (long long bg = blockIdx.x; bg < a.batch * a.groups; bg += gridDim.x) {
        const long long base = bg * size;  // (b·C + g·C/G)·H·W = (b·G + g)·size
        const long long c0 = (bg % a.groups) * per_group;
        float s = 0.0f;
        for (long long i = threadIdx.x; i < size; i += blockDim.x) s += to_float(x[base + i]);
        const float mean = block_sum_all(s) / n;
        float sq = 0.0f;
        for (long long i = threadIdx.x; i < size; i += blockDim.x) {
            const float d = to_float(x[base + i]) - mean;
            sq += d * d;
        }
        const float inv_std = 1.0f / sqrtf(block_sum_all(sq) / n + a.eps);
        for (long long i = threadIdx.x; i < size; i += blockDim.x) {
            const long long c = c0 + i / a.plane;
            const float v = (to_float(x[base + i]) - mean) * inv_std;
            y[base + i] = from_float<T>(v * load_or(weight, c, 1.0f) + load_or(bias, c, 0.0f));
        }
        if (threadIdx.x == 0) {
            mean_out[bg] = mean;
            inv_std_out[bg] = inv_std;
        }
    }
}

// Per (b, g) (one block), with d = dy·γ_c and M = (C/G)·H·W: dx = inv_std·(d − Σd/M − x̂·Σ(d·x̂)/M).
template <typename T>
__device__ void gn_backward_input_impl(const T* __restrict__ x, const T* __restrict__ weight,
                                       const float* __restrict__ mean_in, const float* __restrict__ inv_std_in,
                                       const T* __restrict__ grad_out, NormArgs a, T* __restrict__ grad_x) {
    const long long per_group = a.channels / a.groups;
    const long long size = per_group * a.plane;
    const float n = (float)size;
    for (long long bg = blockIdx.x; bg < a.batch * a.groups; bg += gridDim.x) {
        const long long base = bg * size;
        const long long c0 = (bg % a.groups) * per_group;
        const float mean = mean_in[bg], inv_std = inv_std_in[bg];
        float sum_d = 0.0f, sum_d_xhat = 0.0f;
        for (long long i = threadIdx.x; i < size; i += blockDim.x) {
            const float d = to_float(grad_out[base + i]) * load_or(weight, c0 + i / a.plane, 1.0f);
            sum_d += d;
            sum_d_xhat += d * (to_float(x[base + i]) - mean) * inv_std;
        }
        const float mean_d = block_sum_all(sum_d) / n;
        const float mean_d_xhat = block_sum_all(sum_d_xhat) / n;
        for (long long i = threadIdx.x; i < size; i += blockDim.x) {
            const float d = to_float(grad_out[base + i]) * load_or(weight, c0 + i / a.plane, 1.0f);
            const float xhat = (to_float(x[base + i]) - mean) * inv_std;
            grad_x[base + i] = from_float<T>(inv_std * (d - mean_d - xhat * mean_d_xhat));
        }
    }
}

// Per channel c (one block): dγ_c = Σ_{b, p} dy·x̂, dβ_c = Σ_{b, p} dy, with x̂ from the (b, g(c)) statistics.
template <typename T>
__device__ void gn_param_grads_impl(const T* __restrict__ x, const float* __restrict__ mean_in,
                                    const float* __restrict__ inv_std_in, const T* __restrict__ grad_out,
                                    NormArgs a, T* __restrict__ grad_weight, T* __restrict__ grad_bias) {
    const long long per_group = a.channels / a.groups;
    for (long long c = blockIdx.x; c < a.channels; c += gridDim.x) {
        float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
        for (long long b = 0; b < a.batch; ++b) {
            const long long stat = b * a.groups + c / per_group;
            const float mean = mean_in[stat], inv_std = inv_std_in[stat];
            const long long base = (b * a.channels + c) * a.plane;
            for (long long p = threadIdx.x; p < a.plane; p += blockDim.x) {
                const float g = to_float(grad_out[base + p]);
                sum_dy += g;
                sum_dy_xhat += g * (to_float(x[base + p]) - mean) * inv_std;
            }
        }
        sum_dy = block_reduce_sum(sum_dy);
        sum_dy_xhat = block_reduce_sum(sum_dy_xhat);
        if (threadIdx.x == 0) {
            grad_weight[c] = from_float<T>(sum_dy_xhat);
            grad_bias[c] = from_float<T>(sum_dy);
        }
    }
}

#define DETKD_NORM_INSTANCES(T, SUFFIX)                                                                      \
    extern "C" __global__ void __launch_bounds__(256) batch_norm_train_forward_##SUFFIX(                     \
        const T* x, const T* weight, const T* bias, const T* running_mean, const T* running_var, NormArgs a, \
        T* y, float* mean, float* inv_std, T* new_mean, T* new_var) {                                        \
        bn_train_forward_impl<T>(x, weight, bias, running_mean, running_var, a, y, mean, inv_std, new_mean,  \
                                 new_var);                                                                   \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) batch_norm_backward_##SUFFIX(                          \
        const T* x, const T* weight, const float* mean, const float* inv_std, const T* grad_out, NormArgs a, \
        T* grad_x, T* grad_weight, T* grad_bias) {                                                           \
        bn_backward_impl<T>(x, weight, mean, inv_std, grad_out, a, grad_x, grad_weight, grad_bias);          \
    }                                                                                                        \
    extern "C" __global__ void batch_norm_eval_##SUFFIX(const T* x, const T* weight, const T* bias,          \
                                                        const T* running_mean, const T* running_var,         \
                                                        NormArgs a, T* y) {                                  \
        bn_eval_impl<T>(x, weight, bias, running_mean, running_var, a, y);                                   \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) group_norm_forward_##SUFFIX(                           \
        const T* x, const T* weight, const T* bias, NormArgs a, T* y, float* mean, float* inv_std) {         \
        gn_forward_impl<T>(x, weight, bias, a, y, mean, inv_std);                                            \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) group_norm_backward_input_##SUFFIX(                    \
        const T* x, const T* weight, const float* mean, const float* inv_std, const T* grad_out, NormArgs a, \
        T* grad_x) {                                                                                         \
        gn_backward_input_impl<T>(x, weight, mean, inv_std, grad_out, a, grad_x);                            \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) group_norm_param_grads_##SUFFIX(                       \
        const T* x, const float* mean, const float* inv_std, const T* grad_out, NormArgs a, T* grad_weight,  \
        T* grad_bias) {                                                                                      \
        gn_param_grads_impl<T>(x, mean, inv_std, grad_out, a, grad_weight, grad_bias);                       \
    }

DETKD_NORM_INSTANCES(float, f32)
DETKD_NORM_INSTANCES(__half, f16)
DETKD_NORM_INSTANCES(__nv_bfloat16, bf16)
