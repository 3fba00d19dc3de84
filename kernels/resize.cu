// Spatial resizing of NCHW maps: bilinear with align_corners = False (PyTorch's F.interpolate semantics, any
// output size) and nearest 2x upsampling, forward and backward. See src/ops/resize/mod.rs for the formulas.
//
// The bilinear source indices and weights come from per-axis tables built on the host (the CPU reference's
// own arithmetic), so both devices sample exactly the same taps with the same weights. Backward passes are
// gathers: every input pixel sums the output gradients that read it, in a fixed order; no atomics.
#include "common.cuh"

using namespace detkd;

// Mirrors `ResizeArgs` in src/ops/resize/cuda.rs: one 8-byte field, then four 4-byte fields (24 bytes).
struct ResizeArgs {
    long long planes;  // B·C
    int h, w;          // input extents
    int oh, ow;        // output extents
};

// Table layout (see src/ops/resize/cuda.rs): index = [i0_h | i1_h | i0_w | i1_w | first_h | end_h | first_w |
// end_w], weight = [l0_h | l1_h | l0_w | l1_w]. Output row u reads input rows i0_h[u] (weight l0_h[u]) and
// i1_h[u] (weight l1_h[u]); input row y is read by output rows first_h[y] .. end_h[y] − 1 (an empty range when
// none does). Columns likewise.
struct Tables {
    const int *i0_h, *i1_h, *i0_w, *i1_w, *first_h, *end_h, *first_w, *end_w;
    const float *l0_h, *l1_h, *l0_w, *l1_w;
};

__device__ __forceinline__ Tables tables(const int* index, const float* weight, const ResizeArgs& a) {
    Tables t;
    t.i0_h = index;
    t.i1_h = t.i0_h + a.oh;
    t.i0_w = t.i1_h + a.oh;
    t.i1_w = t.i0_w + a.ow;
    t.first_h = t.i1_w + a.ow;
    t.end_h = t.first_h + a.h;
    t.first_w = t.end_h + a.h;
    t.end_w = t.first_w + a.w;
    t.l0_h = weight;
    t.l1_h = t.l0_h + a.oh;
    t.l0_w = t.l1_h + a.oh;
    t.l1_w = t.l0_w + a.ow;
    return t;
}

// out[p, u, v] = l0_h·(l0_w·x[p, i0_h, i0_w] + l1_w·x[p, i0_h, i1_w]) + l1_h·(l0_w·x[p, i1_h, i0_w] + l1_w·x[p, i1_h, i1_w])
template <typename T>
__device__ void bilinear_forward_impl(const T* __restrict__ x, const int* __restrict__ index,
                                      const float* __restrict__ weight, ResizeArgs a, T* __restrict__ out) {
    const Tables t = tables(index, weight, a);
    const long long out_plane = (long long)a.oh * a.ow, in_plane = (long long)a.h * a.w;
    DETKD_GRID_STRIDE(i, a.planes * out_plane) {
        const int v = (int)(i % a.ow);
        const int u = (int)((i / a.ow) % a.oh);
        const T* src = x + (i / out_plane) * in_plane;
        const T* row0 = src + (long long)t.i0_h[u] * a.w;
        const T* row1 = src + (long long)t.i1_h[u] * a.w;
        const int c0 = t.i0_w[v], c1 = t.i1_w[v];
        const float lw0 = t.l0_w[v], lw1 = t.l1_w[v];
        const float top = lw0 * to_float(row0[c0]) + lw1 * to_float(row0[c1]);
        const float bottom = lw0 * to_float(row1[c0]) + lw1 * to_float(row1[c1]);
        out[i] = from_float<T>(t.l0_h[u] * top + t.l1_h[u] * bottom);
    }
}

// The weight with which output index o reads input index i along one axis.
__device__ __forceinline__ float tap_weight(const int* i0, const int* i1, const float* l0, const float* l1, int o,
                                            int i) {
    return (i0[o] == i ? l0[o] : 0.0f) + (i1[o] == i ? l1[o] : 0.0f);
}

// grad_x[p, y, x] = Σ_{u ascending} w_h(u, y) · Σ_{v ascending} w_w(v, x) · grad_out[p, u, v]
template <typename T>
__device__ void bilinear_backward_impl(const T* __restrict__ grad_out, const int* __restrict__ index,
                                       const float* __restrict__ weight, ResizeArgs a, T* __restrict__ grad_x) {
    const Tables t = tables(index, weight, a);
    const long long out_plane = (long long)a.oh * a.ow, in_plane = (long long)a.h * a.w;
    DETKD_GRID_STRIDE(i, a.planes * in_plane) {
        const int x = (int)(i % a.w);
        const int y = (int)((i / a.w) % a.h);
        const T* g = grad_out + (i / in_plane) * out_plane;
        float sum = 0.0f;
        for (int u = t.first_h[y]; u < t.end_h[y]; ++u) {
            const float wh = tap_weight(t.i0_h, t.i1_h, t.l0_h, t.l1_h, u, y);
            float row = 0.0f;
            for (int v = t.first_w[x]; v < t.end_w[x]; ++v) {
                row += tap_weight(t.i0_w, t.i1_w, t.l0_w, t.l1_w, v, x) * to_float(g[(long long)u * a.ow + v]);
            }
            sum += wh * row;
        }
        grad_x[i] = from_float<T>(sum);
    }
}

// out[p, u, v] = x[p, u / 2, v / 2] for an output of 2H x 2W (a.h, a.w are the input's extents).
template <typename T>
__device__ void nearest2x_forward_impl(const T* __restrict__ x, ResizeArgs a, T* __restrict__ out) {
    const long long ow = 2LL * a.w, out_plane = 4LL * a.h * a.w, in_plane = (long long)a.h * a.w;
    DETKD_GRID_STRIDE(i, a.planes * out_plane) {
        const long long v = i % ow, u = (i / ow) % (2LL * a.h);
        out[i] = x[(i / out_plane) * in_plane + (u >> 1) * a.w + (v >> 1)];
    }
}

// grad_x[p, y, x] = g[2y, 2x] + g[2y, 2x + 1] + g[2y + 1, 2x] + g[2y + 1, 2x + 1], in that order.
template <typename T>
__device__ void nearest2x_backward_impl(const T* __restrict__ grad_out, ResizeArgs a, T* __restrict__ grad_x) {
    const long long ow = 2LL * a.w, out_plane = 4LL * a.h * a.w, in_plane = (long long)a.h * a.w;
    DETKD_GRID_STRIDE(i, a.planes * in_plane) {
        const long long x = i % a.w, y = (i / a.w) % a.h;
        const T* top = grad_out + (i / in_plane) * out_plane + 2 * y * ow + 2 * x;
        const T* bottom = top + ow;
        const float sum = to_float(top[0]) + to_float(top[1]) + to_float(bottom[0]) + to_float(bottom[1]);
        grad_x[i] = from_float<T>(sum);
    }
}

#define DETKD_RESIZE_INSTANCES(T, SUFFIX)                                                                   \
    extern "C" __global__ void resize_bilinear_forward_##SUFFIX(const T* x, const int* index,              \
                                                                const float* weight, ResizeArgs a, T* out) { \
        bilinear_forward_impl<T>(x, index, weight, a, out);                                                 \
    }                                                                                                       \
    extern "C" __global__ void resize_bilinear_backward_##SUFFIX(const T* grad_out, const int* index,      \
                                                                 const float* weight, ResizeArgs a,         \
                                                                 T* grad_x) {                               \
        bilinear_backward_impl<T>(grad_out, index, weight, a, grad_x);                                      \
    }                                                                                                       \
    extern "C" __global__ void upsample_nearest2x_forward_##SUFFIX(const T* x, ResizeArgs a, T* out) {      \
        nearest2x_forward_impl<T>(x, a, out);                                                               \
    }                                                                                                       \
    extern "C" __global__ void upsample_nearest2x_backward_##SUFFIX(const T* grad_out, ResizeArgs a,        \
                                                                    T* grad_x) {                            \
        nearest2x_backward_impl<T>(grad_out, a, grad_x);                                                    \
    }

DETKD_RESIZE_INSTANCES(float, f32)
DETKD_RESIZE_INSTANCES(__half, f16)
DETKD_RESIZE_INSTANCES(__nv_bfloat16, bf16)
