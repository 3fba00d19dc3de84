// Sigmoid focal losses (torchvision and mmcv conventions) and Quality Focal Loss, forward, backward and fused
// loss+gradient (see src/ops/focal/ and shared/spec/methods.md §6.7). The per-element arithmetic mirrors
// src/ops/focal/cpu.rs step for step.
//
// One kernel per form handles every job, selected by FocalArgs:
//   loss_mode  LOSS_NONE      no loss
//              LOSS_ELEMENTS  write each element's (weighted) loss to loss_out[i]
//              LOSS_REDUCE    per-block partial sums of the weighted losses to partials[blockIdx.x]
//   grad_mode  GRAD_NONE      no gradient
//              GRAD_ELEMENTS  grad_in[i] = dloss_i * grad_out[k] * grad_scale  (k = element, or row for QFL)
//              GRAD_DEVICE_SCALAR  ... * grad_out[0] * grad_scale  (a reduced loss's upstream, on the device)
//              GRAD_HOST_SCALAR    ... * grad_scale                (the fused entries)
// The modes are uniform over the launch, so the block-wide reduction is reached by every thread or none.
// One thread per element, 64-bit grid-stride indices; QFL's unreduced per-anchor loss uses one warp per row.
// Storage f32/f16/bf16, arithmetic f32. gamma == 2 (beta == 2) takes a specialised path without powf.
#include "common.cuh"

using namespace detkd;

#define LOSS_NONE 0
#define LOSS_ELEMENTS 1
#define LOSS_REDUCE 2
#define GRAD_NONE 0
#define GRAD_ELEMENTS 1
#define GRAD_DEVICE_SCALAR 2
#define GRAD_HOST_SCALAR 3

// ln(FLT_MIN) = -126 ln 2: mmcv clamps p and 1 - p at FLT_MIN before its logs.
#define DETKD_LOG_FLT_MIN (-87.336544750553109f)

// Mirrors `FocalArgs` in src/ops/focal/cuda.rs field by field (48 bytes, no padding).
struct FocalArgs {
    int64_t numel;    // elements of logits
    int64_t rows;     // N (label forms); numel for torchvision
    int64_t classes;  // C (label forms); 1 for torchvision
    float alpha;      // torchvision / mmcv alpha
    float gamma;      // gamma, or QFL's beta
    float grad_scale;
    int loss_mode;
    int grad_mode;
    int use_alpha;    // torchvision: alpha >= 0
};

// p = sigmoid(x), 1 - p = sigmoid(-x) and log1p(exp(-|x|)) from one exponential, without cancellation.
struct Sigmoid {
    float p, one_minus_p, log1p_exp;
};

__device__ __forceinline__ Sigmoid sigmoid_parts(float x) {
    float e = expf(-fabsf(x));
    float big = 1.0f / (1.0f + e);
    float small = e * big;
    Sigmoid s;
    s.p = x >= 0.0f ? big : small;
    s.one_minus_p = x >= 0.0f ? small : big;
    s.log1p_exp = log1pf(e);
    return s;
}

template <bool GAMMA2>
__device__ __forceinline__ void torchvision_element(float x, float t, const FocalArgs& a, float* loss,
                                                    float* grad) {
    Sigmoid s = sigmoid_parts(x);
    float bce = fmaxf(x, 0.0f) - x * t + s.log1p_exp;
    // 1 - p_t = p(1 - t) + (1 - p)t and p - t = p(1 - t) - (1 - p)t: exact for t in {0, 1}.
    float q = s.p * (1.0f - t) + s.one_minus_p * t;
    float p_minus_t = s.p * (1.0f - t) - s.one_minus_p * t;
    float modulator, d_modulator;
    if (GAMMA2) {
        modulator = q * q;
        d_modulator = 2.0f * q;
    } else {
        // q = 0 only where p(1 - p) = 0 too: the derivative term vanishes (and 0 * inf must not appear).
        d_modulator = (q > 0.0f && a.gamma != 0.0f) ? a.gamma * powf(q, a.gamma - 1.0f) : 0.0f;
        modulator = powf(q, a.gamma);
    }
    float alpha_t = a.use_alpha ? a.alpha * t + (1.0f - a.alpha) * (1.0f - t) : 1.0f;
    *loss = alpha_t * (bce * modulator);
    *grad = alpha_t * (p_minus_t * modulator +
                       bce * (d_modulator * (1.0f - 2.0f * t) * (s.p * s.one_minus_p)));
}

template <bool GAMMA2>
__device__ __forceinline__ float focal_power(float v, float gamma) {
    return GAMMA2 ? v * v : powf(v, gamma);
}

template <bool GAMMA2>
__device__ __forceinline__ void mmcv_element(float x, bool positive, const FocalArgs& a, float* loss,
                                             float* grad) {
    Sigmoid s = sigmoid_parts(x);
    if (positive) {
        // log(max(p, FLT_MIN)) = max(-softplus(-x), ln FLT_MIN)
        float log_p = fmaxf(-(fmaxf(-x, 0.0f) + s.log1p_exp), DETKD_LOG_FLT_MIN);
        float m = focal_power<GAMMA2>(s.one_minus_p, a.gamma);
        *loss = -a.alpha * m * log_p;
        *grad = a.alpha * m * (a.gamma * s.p * log_p - s.one_minus_p);
    } else {
        float log_one_minus_p = fmaxf(-(fmaxf(x, 0.0f) + s.log1p_exp), DETKD_LOG_FLT_MIN);
        float m = focal_power<GAMMA2>(s.p, a.gamma);
        *loss = -(1.0f - a.alpha) * m * log_one_minus_p;
        *grad = (1.0f - a.alpha) * m * (s.p - a.gamma * s.one_minus_p * log_one_minus_p);
    }
}

template <bool BETA2>
__device__ __forceinline__ void quality_element(float x, float y, float beta, float* loss, float* grad) {
    Sigmoid s = sigmoid_parts(x);
    float bce = fmaxf(x, 0.0f) - x * y + s.log1p_exp;
    float d = s.p - y;
    float modulator, d_modulator;
    if (BETA2) {
        modulator = d * d;
        d_modulator = 2.0f * d;
    } else {
        float ad = fabsf(d);
        d_modulator = (ad > 0.0f && beta != 0.0f) ? copysignf(beta * powf(ad, beta - 1.0f), d) : 0.0f;
        modulator = powf(ad, beta);
    }
    *loss = bce * modulator;
    *grad = d * modulator + bce * (d_modulator * (s.p * s.one_minus_p));
}

template <typename T>
__device__ __forceinline__ float upstream(const FocalArgs& a, const T* __restrict__ grad_out, int64_t k) {
    if (a.grad_mode == GRAD_ELEMENTS) return to_float(grad_out[k]) * a.grad_scale;
    if (a.grad_mode == GRAD_DEVICE_SCALAR) return to_float(grad_out[0]) * a.grad_scale;
    return a.grad_scale;
}

// Element i of a [rows, classes] matrix -> (row, column). 32-bit division when every index fits.
__device__ __forceinline__ void row_col(int64_t i, const FocalArgs& a, int64_t* row, int64_t* col) {
    if (a.numel <= 0x7fffffffLL) {
        unsigned r = (unsigned)i / (unsigned)a.classes;
        *row = r;
        *col = i - (int64_t)r * a.classes;
    } else {
        *row = i / a.classes;
        *col = i - *row * a.classes;
    }
}

// Writes this block's partial sum (every thread of the block must call it).
__device__ __forceinline__ void store_partial(float local, const FocalArgs& a, float* __restrict__ partials) {
    if (a.loss_mode != LOSS_REDUCE) return;
    float block_sum = block_reduce_sum(local);
    if (threadIdx.x == 0) partials[blockIdx.x] = block_sum;
}

template <typename T, bool GAMMA2>
__device__ void torchvision_impl(const T* __restrict__ x, const T* __restrict__ targets,
                                 const T* __restrict__ grad_out, const FocalArgs& a, T* __restrict__ loss_out,
                                 float* __restrict__ partials, T* __restrict__ grad_in) {
    float local = 0.0f;
    DETKD_GRID_STRIDE(i, a.numel) {
        float loss, grad;
        torchvision_element<GAMMA2>(to_float(x[i]), to_float(targets[i]), a, &loss, &grad);
        if (a.loss_mode == LOSS_ELEMENTS) loss_out[i] = from_float<T>(loss);
        local += loss;
        if (a.grad_mode != GRAD_NONE) grad_in[i] = from_float<T>(grad * upstream(a, grad_out, i));
    }
    store_partial(local, a, partials);
}

template <typename T, bool GAMMA2>
__device__ void mmcv_impl(const T* __restrict__ x, const int64_t* __restrict__ labels,
                          const T* __restrict__ weight, const T* __restrict__ grad_out, const FocalArgs& a,
                          T* __restrict__ loss_out, float* __restrict__ partials, T* __restrict__ grad_in) {
    float local = 0.0f;
    DETKD_GRID_STRIDE(i, a.numel) {
        int64_t row, col;
        row_col(i, a, &row, &col);
        int64_t label = labels[row];
        // weight[label] for foreground rows only: a background row (label == C) has no class weight.
        float w = (weight != nullptr && label >= 0 && label < a.classes) ? to_float(weight[label]) : 1.0f;
        float loss, grad;
        mmcv_element<GAMMA2>(to_float(x[i]), label == col, a, &loss, &grad);
        loss *= w;
        grad *= w;
        if (a.loss_mode == LOSS_ELEMENTS) loss_out[i] = from_float<T>(loss);
        local += loss;
        if (a.grad_mode != GRAD_NONE) grad_in[i] = from_float<T>(grad * upstream(a, grad_out, i));
    }
    store_partial(local, a, partials);
}

template <typename T, bool BETA2>
__device__ void quality_impl(const T* __restrict__ x, const int64_t* __restrict__ labels,
                             const T* __restrict__ scores, const T* __restrict__ weight,
                             const T* __restrict__ grad_out, const FocalArgs& a, float* __restrict__ partials,
                             T* __restrict__ grad_in) {
    float local = 0.0f;
    DETKD_GRID_STRIDE(i, a.numel) {
        int64_t row, col;
        row_col(i, a, &row, &col);
        float y = labels[row] == col ? to_float(scores[row]) : 0.0f;
        float w = weight != nullptr ? to_float(weight[row]) : 1.0f;
        float loss, grad;
        quality_element<BETA2>(to_float(x[i]), y, a.gamma, &loss, &grad);
        local += loss * w;
        if (a.grad_mode != GRAD_NONE) grad_in[i] = from_float<T>(grad * w * upstream(a, grad_out, row));
    }
    store_partial(local, a, partials);
}

// QFL's unreduced loss: one warp per row sums the row's C element losses (lane order, then a fixed shuffle
// tree), times the row's weight. The row loop is uniform across a warp, so the full-mask shuffles are safe.
template <typename T, bool BETA2>
__device__ void quality_rows_impl(const T* __restrict__ x, const int64_t* __restrict__ labels,
                                  const T* __restrict__ scores, const T* __restrict__ weight, const FocalArgs& a,
                                  T* __restrict__ loss_out) {
    const int lane = threadIdx.x & 31;
    const int64_t warps_per_block = blockDim.x >> 5;
    const int64_t first = (int64_t)blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const int64_t stride = (int64_t)gridDim.x * warps_per_block;
    for (int64_t row = first; row < a.rows; row += stride) {
        const int64_t label = labels[row];
        const float score = to_float(scores[row]);
        float sum = 0.0f;
        for (int64_t col = lane; col < a.classes; col += 32) {
            float loss, grad;
            quality_element<BETA2>(to_float(x[row * a.classes + col]), label == col ? score : 0.0f, a.gamma,
                                   &loss, &grad);
            sum += loss;
        }
        for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_down_sync(0xffffffffu, sum, offset);
        if (lane == 0) {
            float w = weight != nullptr ? to_float(weight[row]) : 1.0f;
            loss_out[row] = from_float<T>(sum * w);
        }
    }
}

// out[0] = sum[0] / divisor, rounded once to the storage type.
template <typename T>
__device__ void finish_impl(const float* __restrict__ sum, double divisor, T* __restrict__ out) {
    if (blockIdx.x == 0 && threadIdx.x == 0) out[0] = from_float<T>((float)((double)sum[0] / divisor));
}

#define DETKD_FOCAL_INSTANCES(T, SUFFIX)                                                                     \
    extern "C" __global__ void torchvision_focal_##SUFFIX(const T* x, const T* targets, const T* grad_out,   \
                                                          FocalArgs a, T* loss_out, float* partials,         \
                                                          T* grad_in) {                                      \
        if (a.gamma == 2.0f)                                                                                 \
            torchvision_impl<T, true>(x, targets, grad_out, a, loss_out, partials, grad_in);                 \
        else                                                                                                 \
            torchvision_impl<T, false>(x, targets, grad_out, a, loss_out, partials, grad_in);                \
    }                                                                                                        \
    extern "C" __global__ void mmcv_focal_##SUFFIX(const T* x, const int64_t* labels, const T* weight,       \
                                                   const T* grad_out, FocalArgs a, T* loss_out,              \
                                                   float* partials, T* grad_in) {                            \
        if (a.gamma == 2.0f)                                                                                 \
            mmcv_impl<T, true>(x, labels, weight, grad_out, a, loss_out, partials, grad_in);                 \
        else                                                                                                 \
            mmcv_impl<T, false>(x, labels, weight, grad_out, a, loss_out, partials, grad_in);                \
    }                                                                                                        \
    extern "C" __global__ void quality_focal_##SUFFIX(const T* x, const int64_t* labels, const T* scores,    \
                                                      const T* weight, const T* grad_out, FocalArgs a,       \
                                                      float* partials, T* grad_in) {                         \
        if (a.gamma == 2.0f)                                                                                 \
            quality_impl<T, true>(x, labels, scores, weight, grad_out, a, partials, grad_in);                \
        else                                                                                                 \
            quality_impl<T, false>(x, labels, scores, weight, grad_out, a, partials, grad_in);               \
    }                                                                                                        \
    extern "C" __global__ void quality_focal_rows_##SUFFIX(const T* x, const int64_t* labels,               \
                                                           const T* scores, const T* weight, FocalArgs a,    \
                                                           T* loss_out) {                                    \
        if (a.gamma == 2.0f)                                                                                 \
            quality_rows_impl<T, true>(x, labels, scores, weight, a, loss_out);                              \
        else                                                                                                 \
            quality_rows_impl<T, false>(x, labels, scores, weight, a, loss_out);                             \
    }                                                                                                        \
    extern "C" __global__ void focal_finish_##SUFFIX(const float* sum, double divisor, T* out) {            \
        finish_impl<T>(sum, divisor, out);                                                                   \
    }

DETKD_FOCAL_INSTANCES(float, f32)
DETKD_FOCAL_INSTANCES(__half, f16)
DETKD_FOCAL_INSTANCES(__nv_bfloat16, bf16)
