// Prototype ops: the row-wise and element-wise parts of the soft assignment around its matrix products
// (which run on kernels/matmul.cu), and GKD's hard max-cosine match and robustness weight. See
// src/ops/prototype/mod.rs for the formulas and shared/spec/methods.md §2, §6.5.
//
// Row kernels give one warp to a row (8 rows per 256-thread block, grid-stride over rows) and reduce with
// xor-butterfly shuffles: every lane ends with the same bits (IEEE addition and max are commutative, so the
// two lanes of each pair compute the same value), and each row's sums are taken in one fixed order, so
// results are deterministic. Storage may be f32/f16/bf16; arithmetic is f32; intermediates are f32
// buffers and only the results the caller sees are in the storage dtype.
#include "common.cuh"

using namespace detkd;

// Mirrors `AssignArgs` in src/ops/prototype/cuda.rs (two 8-byte fields, then two 4-byte fields: 24 bytes).
struct AssignArgs {
    long long rows;  // N
    long long cols;  // K
    float temperature;
    int log_output;  // 1: log-probabilities, 0: probabilities
};

// Mirrors `RowArgs` in src/ops/prototype/cuda.rs (24 bytes).
struct RowArgs {
    long long rows;
    long long cols;
    float eps;  // the normalisation's lower bound on the norm (norm kernels only)
    int unused;
};

// Mirrors `ColArgs` in src/ops/prototype/cuda.rs (four 8-byte fields: 32 bytes).
struct ColArgs {
    long long rows;
    long long cols;
    long long rows_per_chunk;
    long long chunks;
};

constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr int WARP = 32;

__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = WARP / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

// fmaxf ignores a NaN operand; a NaN logit still poisons its row through the sum of exponentials.
__device__ __forceinline__ float warp_max(float v) {
    for (int offset = WARP / 2; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// Loops `row` over the rows owned by this warp; `lane` is the thread's lane. Every lane of a warp runs the
// same iterations, so the full-mask shuffles inside are always convergent.
#define DETKD_ROWS_PER_WARP(row, lane, rows)                                                         \
    const int lane = threadIdx.x & (WARP - 1);                                                       \
    for (long long row = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP; row < (rows); \
         row += (long long)gridDim.x * (blockDim.x / WARP))

// The logit z = −max(‖x‖² + ‖p‖² − 2x·p, 0)/τ (a NaN distance stays NaN).
__device__ __forceinline__ float assignment_logit(float x_norm, float p_norm, float dot, float temperature) {
    float d2 = x_norm + p_norm - 2.0f * dot;
    d2 = d2 < 0.0f ? 0.0f : d2;
    return -d2 / temperature;
}

// out[i, k] = softmax_k(z[i, :]) (or its log) from the f32 product gram = x·pᵀ and the squared norms, in
// three passes over the row (max, sum of exponentials, outputs); the row of gram stays in L1/L2 between
// them, so it is read from DRAM once.
template <typename T>
__device__ void soft_assign_impl(const float* __restrict__ gram, const float* __restrict__ x_norms,
                                 const float* __restrict__ p_norms, AssignArgs a, T* __restrict__ out) {
    DETKD_ROWS_PER_WARP(r, lane, a.rows) {
        const float* g = gram + r * a.cols;
        T* dst = out + r * a.cols;
        const float x_norm = x_norms[r];
        float row_max = -INFINITY;
        for (long long k = lane; k < a.cols; k += WARP)
            row_max = fmaxf(row_max, assignment_logit(x_norm, p_norms[k], g[k], a.temperature));
        row_max = warp_max(row_max);
        float sum = 0.0f;
        for (long long k = lane; k < a.cols; k += WARP)
            sum += expf(assignment_logit(x_norm, p_norms[k], g[k], a.temperature) - row_max);
        sum = warp_sum(sum);
        if (a.log_output) {
            const float log_sum = logf(sum);
            for (long long k = lane; k < a.cols; k += WARP)
                dst[k] = from_float<T>(assignment_logit(x_norm, p_norms[k], g[k], a.temperature) - row_max - log_sum);
        } else {
            for (long long k = lane; k < a.cols; k += WARP)
                dst[k] = from_float<T>(expf(assignment_logit(x_norm, p_norms[k], g[k], a.temperature) - row_max) / sum);
        }
    }
}

// The gradient with respect to the squared distances, g = −dℓ/τ (f32 [N, K]), and its row sums, from the
// forward's output and the upstream gradient: dℓ = a(da − Σ a·da) for probabilities, dℓ = dlog a −
// a·Σ dlog a for log-probabilities, with a (= output, or exp(output)) renormalised by its row sum — a no-op
// in exact arithmetic that keeps Σ_k g = 0 when the stored output was rounded to half precision.
template <typename T>
__device__ void soft_assign_grad_impl(const T* __restrict__ output, const T* __restrict__ grad, AssignArgs a,
                                      float* __restrict__ g, float* __restrict__ row_sums) {
    DETKD_ROWS_PER_WARP(r, lane, a.rows) {
        const T* o = output + r * a.cols;
        const T* dout = grad + r * a.cols;
        float* dst = g + r * a.cols;
        float mass = 0.0f, reduced = 0.0f;  // Σ a; Σ dlog a (log output) or Σ a·da
        for (long long k = lane; k < a.cols; k += WARP) {
            const float ak = a.log_output ? expf(to_float(o[k])) : to_float(o[k]);
            mass += ak;
            reduced += a.log_output ? to_float(dout[k]) : ak * to_float(dout[k]);
        }
        mass = warp_sum(mass);
        reduced = warp_sum(reduced);
        if (!a.log_output) reduced /= mass;
        float sum = 0.0f;
        for (long long k = lane; k < a.cols; k += WARP) {
            const float ak = (a.log_output ? expf(to_float(o[k])) : to_float(o[k])) / mass;
            const float gk = to_float(dout[k]);
            const float dl = a.log_output ? gk - ak * reduced : ak * (gk - reduced);
            const float v = -dl / a.temperature;
            dst[k] = v;
            sum += v;
        }
        sum = warp_sum(sum);
        if (lane == 0) row_sums[r] = sum;
    }
}

// out[r] = Σ_c x[r, c]² for an f32 [rows, cols] matrix, one warp per row.
extern "C" __global__ void __launch_bounds__(256) prototype_row_sq_norms_f32(const float* __restrict__ x,
                                                                             RowArgs a, float* __restrict__ out) {
    DETKD_ROWS_PER_WARP(r, lane, a.rows) {
        const float* row = x + r * a.cols;
        float sq = 0.0f;
        for (long long c = lane; c < a.cols; c += WARP) sq += row[c] * row[c];
        sq = warp_sum(sq);
        if (lane == 0) out[r] = sq;
    }
}

// Column sums of an f32 [rows, cols] matrix in two deterministic passes: block (x, chunk) sums the rows of its
// chunk for its columns in ascending order into partial[chunk, c] (coalesced across the threads of a warp);
// the second pass adds the chunks in ascending order.
extern "C" __global__ void __launch_bounds__(256) prototype_col_sums_partial_f32(const float* __restrict__ m,
                                                                                 ColArgs a,
                                                                                 float* __restrict__ partial) {
    const long long chunk = blockIdx.y;
    const long long first = chunk * a.rows_per_chunk;
    const long long last = min(first + a.rows_per_chunk, a.rows);
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < a.cols;
         c += (long long)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (long long r = first; r < last; ++r) s += m[r * a.cols + c];
        partial[chunk * a.cols + c] = s;
    }
}

extern "C" __global__ void prototype_col_sums_finish_f32(const float* __restrict__ partial, ColArgs a,
                                                         float* __restrict__ out) {
    DETKD_GRID_STRIDE(c, a.cols) {
        float s = 0.0f;
        for (long long chunk = 0; chunk < a.chunks; ++chunk) s += partial[chunk * a.cols + c];
        out[c] = s;
    }
}

// out[r, c] = 2·(sums[r]·t[r, c] − prod[r, c]): dX = 2(diag(G1)X − GP) and dP = 2(diag(Gᵀ1)P − GᵀX) once the
// products are known.
template <typename T>
__device__ void combine_impl(const T* __restrict__ t, const float* __restrict__ sums,
                             const float* __restrict__ prod, RowArgs a, T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, a.rows * a.cols) {
        const long long row = i / a.cols;
        out[i] = from_float<T>(2.0f * (sums[row] * to_float(t[i]) - prod[i]));
    }
}

template <typename T>
__device__ void widen_impl(const T* __restrict__ x, long long n, float* __restrict__ out) {
    DETKD_GRID_STRIDE(i, n) { out[i] = to_float(x[i]); }
}

// 1/max(‖x‖, eps) of a row whose squared norm is `sq`; NaN when that is not finite (inf/NaN entries, or an
// overflow beyond ~1.8e19 in f32), so such a row never turns into a silent 0.
__device__ __forceinline__ float inverse_norm(float sq, float eps) {
    if (!isfinite(sq)) return quiet_nan();
    const float norm = sqrtf(sq);
    return 1.0f / (norm > eps ? norm : eps);
}

// out[r] = 1/max(‖x[r, :]‖, eps), one warp per row.
template <typename T>
__device__ void row_inverse_norms_impl(const T* __restrict__ x, RowArgs a, float* __restrict__ out) {
    DETKD_ROWS_PER_WARP(r, lane, a.rows) {
        const T* row = x + r * a.cols;
        float sq = 0.0f;
        for (long long c = lane; c < a.cols; c += WARP) {
            const float v = to_float(row[c]);
            sq += v * v;
        }
        sq = warp_sum(sq);
        if (lane == 0) out[r] = inverse_norm(sq, a.eps);
    }
}

// GKD's hard match, one warp per row: cos(x_r, p_k) = (x_r·p_k)/(max(‖x_r‖, eps)·max(‖p_k‖, eps)) for the
// candidates members[ranges[2r] .. ranges[2r + 1]) (the prototypes of the row's class, ascending index), and
// the first maximum. A NaN cosine, once taken, stays (NaN propagates as in torch.max). No candidate: NaN and
// −1.
template <typename T, typename O>
__device__ void max_cosine_impl(const T* __restrict__ x, const T* __restrict__ p, const float* __restrict__ p_inv_norms,
                                const long long* __restrict__ members, const long long* __restrict__ ranges,
                                RowArgs a, O* __restrict__ similarity, long long* __restrict__ index) {
    DETKD_ROWS_PER_WARP(r, lane, a.rows) {
        const T* row = x + r * a.cols;
        float sq = 0.0f;
        for (long long c = lane; c < a.cols; c += WARP) {
            const float v = to_float(row[c]);
            sq += v * v;
        }
        const float x_inv = inverse_norm(warp_sum(sq), a.eps);
        float best = quiet_nan();
        long long best_k = -1;
        for (long long j = ranges[2 * r]; j < ranges[2 * r + 1]; ++j) {
            const long long k = members[j];
            const T* proto = p + k * a.cols;
            float dot = 0.0f;
            for (long long c = lane; c < a.cols; c += WARP) dot += to_float(row[c]) * to_float(proto[c]);
            const float cosine = warp_sum(dot) * x_inv * p_inv_norms[k];
            if (best_k < 0 || (!isnan(best) && (isnan(cosine) || cosine > best))) {
                best = cosine;
                best_k = k;
            }
        }
        if (lane == 0) {
            similarity[r] = from_float<O>(best);
            index[r] = best_k;
        }
    }
}

// r_i = 1 − |s_i − t_i|, or 1 for a row without prototypes (idx < 0).
template <typename T>
__device__ void gkd_robust_weight_impl(const float* __restrict__ student_sim, const float* __restrict__ teacher_sim,
                                       const long long* __restrict__ index, long long n, T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, n) {
        out[i] = from_float<T>(index[i] < 0 ? 1.0f : 1.0f - fabsf(student_sim[i] - teacher_sim[i]));
    }
}

#define DETKD_PROTOTYPE_INSTANCES(T, SUFFIX)                                                                 \
    extern "C" __global__ void __launch_bounds__(256) soft_assign_##SUFFIX(                                  \
        const float* gram, const float* x_norms, const float* p_norms, AssignArgs a, T* out) {               \
        soft_assign_impl<T>(gram, x_norms, p_norms, a, out);                                                 \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                                        \
        soft_assign_grad_##SUFFIX(const T* output, const T* grad, AssignArgs a, float* g, float* row_sums) { \
        soft_assign_grad_impl<T>(output, grad, a, g, row_sums);                                              \
    }                                                                                                        \
    extern "C" __global__ void prototype_combine_##SUFFIX(const T* t, const float* sums, const float* prod,  \
                                                          RowArgs a, T* out) {                               \
        combine_impl<T>(t, sums, prod, a, out);                                                              \
    }                                                                                                        \
    extern "C" __global__ void prototype_widen_##SUFFIX(const T* x, long long n, float* out) {              \
        widen_impl<T>(x, n, out);                                                                            \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                                        \
        row_inverse_norms_##SUFFIX(const T* x, RowArgs a, float* out) {                                      \
        row_inverse_norms_impl<T>(x, a, out);                                                                \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) max_cosine_##SUFFIX(                                   \
        const T* x, const T* p, const float* p_inv_norms, const long long* members, const long long* ranges, \
        RowArgs a, T* similarity, long long* index) {                                                        \
        max_cosine_impl<T, T>(x, p, p_inv_norms, members, ranges, a, similarity, index);                     \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) max_cosine_to_f32_##SUFFIX(                            \
        const T* x, const T* p, const float* p_inv_norms, const long long* members, const long long* ranges, \
        RowArgs a, float* similarity, long long* index) {                                                    \
        max_cosine_impl<T, float>(x, p, p_inv_norms, members, ranges, a, similarity, index);                 \
    }                                                                                                        \
    extern "C" __global__ void gkd_robust_weight_##SUFFIX(const float* student_sim, const float* teacher_sim, \
                                                          const long long* index, long long n, T* out) {     \
        gkd_robust_weight_impl<T>(student_sim, teacher_sim, index, n, out);                                  \
    }

DETKD_PROTOTYPE_INSTANCES(float, f32)
DETKD_PROTOTYPE_INSTANCES(__half, f16)
DETKD_PROTOTYPE_INSTANCES(__nv_bfloat16, bf16)
