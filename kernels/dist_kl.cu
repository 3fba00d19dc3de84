// Distribution losses on short rows (see src/ops/dist_kl/): the temperature KL of LD / KD, GFL's Distribution
// Focal Loss and GFL's Integral. Storage f32/f16/bf16, arithmetic in f32, stable log-softmax per row.
//
// Thread mapping: a row of B bins is handled by a group of G lanes of one warp (G a power of two, 32/G rows
// per warp); lane j of a group reads bins j, j + G, j + 2G, ... The host picks G = next_pow2(ceil(B / 4))
// clamped to [1, 32], so each lane holds at most ~4 bins: for GFL's B = 17 that is G = 8, four rows per warp,
// three loads per lane, and one warp-wide load instruction reads bins [8i, 8i + 8) of four consecutive rows,
// all inside the 4 * 17 contiguous elements those rows occupy. Across a warp's loads every byte of those
// rows is fetched from DRAM once; the three passes below (max, sum of exps, outputs) re-read the row from
// L1. Group reductions are __shfl_xor_sync butterflies over log2(G) steps. A warp per row (G = 32) would
// leave 15 of 32 lanes idle at B = 17; a thread per row would need B registers and stride-B accesses.
// Class-logit KD (B = 80) gets G = 32 with three bins per lane.
//
// Speed of light (shared/spec/kernels.md E), b bytes per element, R rows, B bins:
//   KL forward  reads 2·b·R·B (+ b·R weights), writes b·R (none) or one f32 per block (reduced);
//   KL backward / fused additionally write b·R·B; DFL reads b·R·B + 4·R (f32 targets); Integral reads b·R·B.
//   MUFU: 2 exp per KL element pair (exps are cached in registers between passes), 1-2 per DFL / Integral
//   element: at 8 B per f32 pair and 3 TB/s that is ~0.75e12 exp/s against ~4.2e12 MUFU ops/s (H100), so
//   the kernels stay memory-bound also for 4 B pairs (f16/bf16). Temperature scaling is a multiply by 1/T
//   (PyTorch divides; the two differ by at most one rounding) because an IEEE divide per element would
//   cost more than the exps.
//   At R = 80 000, B = 17, f32: KL forward 10.9 MB ≈ 3.6 us at 3 TB/s, fused 16.3 MB ≈ 5.4 us; a launch
//   costs a few us, so at the LD shape both kernels sit at launch latency and the deterministic two-pass
//   reduction (per-block partials, then sum_partials_f32) adds one more small launch.
//
// Reductions never use float atomics: every block writes one partial (block_reduce_sum) and
// accumulate.cu's sum_partials_f32 adds them in a fixed order, so losses are bitwise reproducible.
#include "common.cuh"

using namespace detkd;

// Mirrors `RowArgs` in src/ops/dist_kl/cuda.rs: one i64, then eight 4-byte fields (two of them explicit
// padding), 40 bytes with no implicit padding.
struct RowArgs {
    int64_t rows;
    int bins;
    int group;               // lanes per row: a power of two dividing 32
    float inv_temperature;   // KL only: 1/T, rounded once on the host
    float loss_coef;         // multiplies every row's raw loss (loss_weight, reduction divisor, c·T²)
    float grad_coef;         // multiplies every row's raw gradient (loss_weight, divisor, c·T, fused upstream)
    int upstream_per_row;    // 1: upstream[row] (reduction none), 0: upstream[0] (reduced loss)
    int padding[2];
};

namespace {

constexpr unsigned FULL_MASK = 0xffffffffu;

__device__ __forceinline__ float group_max(float v, int group) {
    for (int offset = group >> 1; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

__device__ __forceinline__ float group_sum(float v, int group) {
    for (int offset = group >> 1; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

// Where a thread sits: its lane in the row group, the group's slot in the warp, and the warp-level loop.
struct RowLoop {
    int lane_in_group;
    int slot;
    int rows_per_warp;
    int64_t first_base;
    int64_t stride;
};

__device__ __forceinline__ RowLoop row_loop(int group) {
    RowLoop l;
    const int lane = threadIdx.x & 31;
    l.lane_in_group = lane & (group - 1);
    l.slot = lane / group;
    l.rows_per_warp = 32 / group;
    const int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    l.first_base = warp * l.rows_per_warp;
    l.stride = warps * l.rows_per_warp;
    return l;
}

// The upstream factor of row `row`: 1 without an upstream tensor (forward, fused), else its value.
template <typename T>
__device__ __forceinline__ float upstream_of(const T* upstream, const RowArgs& a, int64_t row) {
    if (upstream == nullptr) return 1.0f;
    return to_float(upstream[a.upstream_per_row ? row : 0]);
}

// Every thread of the grid must call this exactly once (it synchronises the block).
__device__ __forceinline__ void write_partial(float* partials, float local) {
    if (partials == nullptr) return;  // uniform over the grid
    const float block = block_reduce_sum(local);
    if (threadIdx.x == 0) partials[blockIdx.x] = block;
}

}  // namespace

// Bins per lane kept in registers between the passes of the KL (x = z/T and its exp): with the host's choice
// of G every row with B <= 4 * 32 fits; larger rows re-read (and re-exponentiate) the bins beyond the cache.
constexpr int KL_CACHE = 4;

// KD KL. Outputs (any may be null): loss_rows[R] (reduction none), partials[gridDim.x] (reduced loss),
// grad[R * B] (backward / fused). The loop over rows is warp-uniform (base is the same for every lane of a
// warp), so the full-mask shuffles are always executed by all 32 lanes, also for a partial last group.
//
// Per row, as in the CPU reference: x = z * (1/T), m = max x, e_k = exp(x_k - m), S = sum e,
// log p_k = (x_k - m) - ln S, p_k = e_k * (1/S); KL = sum p^t (log p^t - log p^s), grad = f (p^s - p^t).
template <typename T>
__device__ void kd_kl_impl(const T* __restrict__ student, const T* __restrict__ teacher,
                           const T* __restrict__ weight, const T* __restrict__ upstream, const RowArgs a,
                           T* __restrict__ loss_rows, float* __restrict__ partials, T* __restrict__ grad) {
    const RowLoop l = row_loop(a.group);
    const bool want_loss = loss_rows != nullptr || partials != nullptr;
    const float inv_t = a.inv_temperature;
    float local = 0.0f;
    for (int64_t base = l.first_base; base < a.rows; base += l.stride) {
        const int64_t row = base + l.slot;
        const bool valid = row < a.rows;
        const int64_t offset = valid ? row * a.bins : 0;
        const T* __restrict__ s = student + offset;
        const T* __restrict__ t = teacher + offset;
        const int tail = l.lane_in_group + KL_CACHE * a.group;  // first bin not cached by this lane

        // Pass 1: x = z / T (cached) and the row maxima.
        float xs[KL_CACHE], xt[KL_CACHE];
        float max_s = -INFINITY, max_t = -INFINITY;
#pragma unroll
        for (int j = 0; j < KL_CACHE; ++j) {
            const int k = l.lane_in_group + j * a.group;
            xs[j] = 0.0f;
            xt[j] = 0.0f;
            if (valid && k < a.bins) {
                xs[j] = to_float(s[k]) * inv_t;
                xt[j] = to_float(t[k]) * inv_t;
                max_s = fmaxf(max_s, xs[j]);
                max_t = fmaxf(max_t, xt[j]);
            }
        }
        for (int k = tail; valid && k < a.bins; k += a.group) {
            max_s = fmaxf(max_s, to_float(s[k]) * inv_t);
            max_t = fmaxf(max_t, to_float(t[k]) * inv_t);
        }
        max_s = group_max(max_s, a.group);
        max_t = group_max(max_t, a.group);

        // Pass 2: e = exp(x - max) (cached) and the row sums.
        float es[KL_CACHE], et[KL_CACHE];
        float sum_s = 0.0f, sum_t = 0.0f;
#pragma unroll
        for (int j = 0; j < KL_CACHE; ++j) {
            const int k = l.lane_in_group + j * a.group;
            es[j] = 0.0f;
            et[j] = 0.0f;
            if (valid && k < a.bins) {
                es[j] = expf(xs[j] - max_s);
                et[j] = expf(xt[j] - max_t);
                sum_s += es[j];
                sum_t += et[j];
            }
        }
        for (int k = tail; valid && k < a.bins; k += a.group) {
            sum_s += expf(to_float(s[k]) * inv_t - max_s);
            sum_t += expf(to_float(t[k]) * inv_t - max_t);
        }
        sum_s = group_sum(sum_s, a.group);
        sum_t = group_sum(sum_t, a.group);

        // Pass 3: KL terms and gradients.
        float kl = 0.0f;
        if (valid) {
            const float ln_s = logf(sum_s), ln_t = logf(sum_t);
            const float inv_sum_s = 1.0f / sum_s, inv_sum_t = 1.0f / sum_t;
            const float w = weight != nullptr ? to_float(weight[row]) : 1.0f;
            const float factor = a.grad_coef * w * upstream_of(upstream, a, row);
            auto element = [&](int k, float x_s, float x_t, float e_s, float e_t) {
                const float log_ps = (x_s - max_s) - ln_s;
                const float log_pt = (x_t - max_t) - ln_t;
                const float pt = e_t * inv_sum_t;
                kl += pt * (log_pt - log_ps);
                if (grad != nullptr) grad[offset + k] = from_float<T>(factor * (e_s * inv_sum_s - pt));
            };
#pragma unroll
            for (int j = 0; j < KL_CACHE; ++j) {
                const int k = l.lane_in_group + j * a.group;
                if (k < a.bins) element(k, xs[j], xt[j], es[j], et[j]);
            }
            for (int k = tail; k < a.bins; k += a.group) {
                const float x_s = to_float(s[k]) * inv_t, x_t = to_float(t[k]) * inv_t;
                element(k, x_s, x_t, expf(x_s - max_s), expf(x_t - max_t));
            }
        }
        if (want_loss) {  // uniform over the grid
            kl = group_sum(kl, a.group);
            if (valid && l.lane_in_group == 0) {
                const float w = weight != nullptr ? to_float(weight[row]) : 1.0f;
                const float loss = a.loss_coef * w * kl;
                if (loss_rows != nullptr) loss_rows[row] = from_float<T>(loss);
                local += loss;
            }
        }
    }
    write_partial(partials, local);
}

// DFL with validated targets label[R] (f32, 0 <= y < B - 1). Same outputs and loop as kd_kl_impl.
template <typename T>
__device__ void dfl_impl(const T* __restrict__ pred, const float* __restrict__ label,
                         const T* __restrict__ weight, const T* __restrict__ upstream, const RowArgs a,
                         T* __restrict__ loss_rows, float* __restrict__ partials, T* __restrict__ grad) {
    const RowLoop l = row_loop(a.group);
    float local = 0.0f;
    for (int64_t base = l.first_base; base < a.rows; base += l.stride) {
        const int64_t row = base + l.slot;
        const bool valid = row < a.rows;
        const int64_t offset = valid ? row * a.bins : 0;
        const T* __restrict__ z = pred + offset;

        float row_max = -INFINITY;
        if (valid) {
            for (int k = l.lane_in_group; k < a.bins; k += a.group) row_max = fmaxf(row_max, to_float(z[k]));
        }
        row_max = group_max(row_max, a.group);
        float sum = 0.0f;
        if (valid) {
            for (int k = l.lane_in_group; k < a.bins; k += a.group) sum += expf(to_float(z[k]) - row_max);
        }
        sum = group_sum(sum, a.group);
        if (!valid) continue;  // no shuffles below: leaving the iteration early is safe

        const float y = label[row];
        // The host guarantees 0 <= y < B - 1; the clamp only keeps a violated contract in bounds.
        const int left = min(max((int)y, 0), a.bins - 2);
        const int right = left + 1;
        const float weight_left = (float)right - y;
        const float weight_right = y - (float)left;
        const float w = weight != nullptr ? to_float(weight[row]) : 1.0f;
        if (grad != nullptr) {
            const float factor = a.grad_coef * w * upstream_of(upstream, a, row);
            const float weight_sum = weight_left + weight_right;
            const float inv_sum = 1.0f / sum;
            for (int k = l.lane_in_group; k < a.bins; k += a.group) {
                float d = expf(to_float(z[k]) - row_max) * inv_sum * weight_sum;
                if (k == left) d -= weight_left;
                if (k == right) d -= weight_right;
                grad[offset + k] = from_float<T>(factor * d);
            }
        }
        if (l.lane_in_group == 0) {
            const float log_sum_exp = row_max + logf(sum);
            const float raw = (log_sum_exp - to_float(z[left])) * weight_left +
                              (log_sum_exp - to_float(z[right])) * weight_right;
            const float loss = a.loss_coef * w * raw;
            if (loss_rows != nullptr) loss_rows[row] = from_float<T>(loss);
            local += loss;
        }
    }
    write_partial(partials, local);
}

// Integral: out[R] = sum_k k softmax(z)_k (forward, when out is not null); grad[R * B] =
// upstream[row] * q_k * (k - d) (backward, when grad is not null).
template <typename T>
__device__ void integral_impl(const T* __restrict__ logits, const T* __restrict__ upstream, const RowArgs a,
                              T* __restrict__ out, T* __restrict__ grad) {
    const RowLoop l = row_loop(a.group);
    for (int64_t base = l.first_base; base < a.rows; base += l.stride) {
        const int64_t row = base + l.slot;
        const bool valid = row < a.rows;
        const int64_t offset = valid ? row * a.bins : 0;
        const T* __restrict__ z = logits + offset;

        float row_max = -INFINITY;
        if (valid) {
            for (int k = l.lane_in_group; k < a.bins; k += a.group) row_max = fmaxf(row_max, to_float(z[k]));
        }
        row_max = group_max(row_max, a.group);
        float sum = 0.0f, weighted = 0.0f;
        if (valid) {
            for (int k = l.lane_in_group; k < a.bins; k += a.group) {
                const float e = expf(to_float(z[k]) - row_max);
                sum += e;
                weighted += (float)k * e;
            }
        }
        sum = group_sum(sum, a.group);
        weighted = group_sum(weighted, a.group);
        if (!valid) continue;  // no shuffles below

        const float d = weighted / sum;
        const float inv_sum = 1.0f / sum;
        if (out != nullptr && l.lane_in_group == 0) out[row] = from_float<T>(d);
        if (grad != nullptr) {
            const float g = upstream_of(upstream, a, row);
            for (int k = l.lane_in_group; k < a.bins; k += a.group) {
                const float q = expf(to_float(z[k]) - row_max) * inv_sum;
                grad[offset + k] = from_float<T>(g * q * ((float)k - d));
            }
        }
    }
}

#define DETKD_DIST_KL_INSTANCES(T, SUFFIX)                                                                  \
    extern "C" __global__ void kd_kl_##SUFFIX(const T* student, const T* teacher, const T* weight,          \
                                              const T* upstream, RowArgs a, T* loss_rows, float* partials, \
                                              T* grad) {                                                   \
        kd_kl_impl<T>(student, teacher, weight, upstream, a, loss_rows, partials, grad);                   \
    }                                                                                                       \
    extern "C" __global__ void dfl_##SUFFIX(const T* pred, const float* label, const T* weight,            \
                                            const T* upstream, RowArgs a, T* loss_rows, float* partials,   \
                                            T* grad) {                                                     \
        dfl_impl<T>(pred, label, weight, upstream, a, loss_rows, partials, grad);                          \
    }                                                                                                       \
    extern "C" __global__ void integral_##SUFFIX(const T* logits, const T* upstream, RowArgs a, T* out,    \
                                                 T* grad) {                                                \
        integral_impl<T>(logits, upstream, a, out, grad);                                                   \
    }

DETKD_DIST_KL_INSTANCES(float, f32)
DETKD_DIST_KL_INSTANCES(__half, f16)
DETKD_DIST_KL_INSTANCES(__nv_bfloat16, bf16)
