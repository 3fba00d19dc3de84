// RoIAlign forward and backward (torchvision semantics, see shared/spec/kernels.md B1), single- or multi-level.
//
// One launch covers every FPN level: each RoI carries a level index (computed on the host by the level rule),
// the kernel picks that level's feature map, extent and spatial scale from RoiAlignArgs. Single-level RoIAlign
// is the one-level case. Storage may be f32/f16/bf16; coordinates and sums are f32.
#include "common.cuh"

using namespace detkd;

#define DETKD_MAX_LEVELS 5

// Mirrors `RoiAlignArgs` in src/ops/roi_align/cuda.rs field by field (all 4-byte fields, no padding).
struct RoiAlignArgs {
    int height[DETKD_MAX_LEVELS];
    int width[DETKD_MAX_LEVELS];
    float spatial_scale[DETKD_MAX_LEVELS];
    int num_levels;
    int num_rois;
    int channels;
    int pooled_h;
    int pooled_w;
    int sampling_ratio;
    int aligned;
};

// Where one RoI's samples are, in the coordinates of its feature map.
struct RoiGeometry {
    float start_x, start_y, bin_w, bin_h, count;
    int grid_h, grid_w, batch, level;
};

__device__ __forceinline__ RoiGeometry roi_geometry(const float* __restrict__ rois,
                                                    const int* __restrict__ roi_levels, int64_t k,
                                                    const RoiAlignArgs& a) {
    const float* roi = rois + k * 5;
    RoiGeometry g;
    g.batch = (int)roi[0];
    g.level = a.num_levels > 1 ? roi_levels[k] : 0;
    float scale = a.spatial_scale[g.level];
    float offset = a.aligned ? 0.5f : 0.0f;
    g.start_x = roi[1] * scale - offset;
    g.start_y = roi[2] * scale - offset;
    float roi_w = roi[3] * scale - offset - g.start_x;
    float roi_h = roi[4] * scale - offset - g.start_y;
    if (!a.aligned) {  // legacy behaviour: force malformed RoIs to be 1x1
        roi_w = fmaxf(roi_w, 1.0f);
        roi_h = fmaxf(roi_h, 1.0f);
    }
    g.bin_h = roi_h / (float)a.pooled_h;
    g.bin_w = roi_w / (float)a.pooled_w;
    g.grid_h = a.sampling_ratio > 0 ? a.sampling_ratio : (int)ceilf(roi_h / (float)a.pooled_h);
    g.grid_w = a.sampling_ratio > 0 ? a.sampling_ratio : (int)ceilf(roi_w / (float)a.pooled_w);
    g.count = (float)max(g.grid_h * g.grid_w, 1);
    return g;
}

// The four bilinear taps of a sample at (y, x) in an HxW map. Returns false when the sample lies outside
// [-1, H] x [-1, W] (written as a negated in-range test so NaN coordinates also land here).
__device__ __forceinline__ bool bilinear_taps(float y, float x, int height, int width, int idx[4], float w[4]) {
    if (!(y >= -1.0f && y <= (float)height && x >= -1.0f && x <= (float)width)) return false;
    y = fmaxf(y, 0.0f);
    x = fmaxf(x, 0.0f);
    int y_low = (int)y, x_low = (int)x, y_high, x_high;
    if (y_low >= height - 1) {
        y_high = y_low = height - 1;
        y = (float)y_low;
    } else {
        y_high = y_low + 1;
    }
    if (x_low >= width - 1) {
        x_high = x_low = width - 1;
        x = (float)x_low;
    } else {
        x_high = x_low + 1;
    }
    float ly = y - (float)y_low, lx = x - (float)x_low;
    float hy = 1.0f - ly, hx = 1.0f - lx;
    idx[0] = y_low * width + x_low;
    idx[1] = y_low * width + x_high;
    idx[2] = y_high * width + x_low;
    idx[3] = y_high * width + x_high;
    w[0] = hy * hx;
    w[1] = hy * lx;
    w[2] = ly * hx;
    w[3] = ly * lx;
    return true;
}

template <typename P>
__device__ __forceinline__ P select_level(int level, P p0, P p1, P p2, P p3, P p4) {
    switch (level) {
        case 0: return p0;
        case 1: return p1;
        case 2: return p2;
        case 3: return p3;
        default: return p4;
    }
}

// Output element i of a [K, C, PH, PW] tensor.
struct BinIndex {
    int64_t k;
    int c, ph, pw;
};

__device__ __forceinline__ BinIndex bin_index(int64_t i, const RoiAlignArgs& a) {
    BinIndex b;
    b.pw = (int)(i % a.pooled_w);
    b.ph = (int)((i / a.pooled_w) % a.pooled_h);
    b.c = (int)((i / ((int64_t)a.pooled_w * a.pooled_h)) % a.channels);
    b.k = i / ((int64_t)a.pooled_w * a.pooled_h * a.channels);
    return b;
}

// Calls visit(idx[4], w[4]) for every in-range bilinear sample of bin (ph, pw), in the same order as the CPU
// reference (iy outer, ix inner).
template <typename Visit>
__device__ __forceinline__ void for_each_sample(const RoiGeometry& g, int ph, int pw, int height, int width,
                                                Visit visit) {
    for (int iy = 0; iy < g.grid_h; ++iy) {
        const float y = g.start_y + ph * g.bin_h + ((float)iy + 0.5f) * g.bin_h / (float)g.grid_h;
        for (int ix = 0; ix < g.grid_w; ++ix) {
            const float x = g.start_x + pw * g.bin_w + ((float)ix + 0.5f) * g.bin_w / (float)g.grid_w;
            int idx[4];
            float w[4];
            if (bilinear_taps(y, x, height, width, idx, w)) visit(idx, w);
        }
    }
}

// One thread per output element (k, c, ph, pw).
template <typename T>
__device__ void roi_align_forward_impl(const T* f0, const T* f1, const T* f2, const T* f3, const T* f4,
                                       const float* __restrict__ rois, const int* __restrict__ roi_levels,
                                       RoiAlignArgs a, T* __restrict__ out) {
    const int64_t total = (int64_t)a.num_rois * a.channels * a.pooled_h * a.pooled_w;
    DETKD_GRID_STRIDE(i, total) {
        const BinIndex b = bin_index(i, a);
        const RoiGeometry g = roi_geometry(rois, roi_levels, b.k, a);
        const int height = a.height[g.level], width = a.width[g.level];
        const T* __restrict__ plane = select_level(g.level, f0, f1, f2, f3, f4) +
                                      ((int64_t)g.batch * a.channels + b.c) * height * width;
        float sum = 0.0f;
        for_each_sample(g, b.ph, b.pw, height, width, [&](const int* idx, const float* w) {
            sum += w[0] * to_float(plane[idx[0]]) + w[1] * to_float(plane[idx[1]]) +
                   w[2] * to_float(plane[idx[2]]) + w[3] * to_float(plane[idx[3]]);
        });
        out[i] = from_float<T>(sum / g.count);
    }
}

// One thread per grad_out element; scatters into per-level accumulators (f32 atomics, or 64-bit fixed point
// for the deterministic mode; see common.cuh). `abs_max_bits`/`max_terms` only matter for fixed point.
template <typename T, typename Acc>
__device__ void roi_align_backward_impl(const T* __restrict__ grad_out, const float* __restrict__ rois,
                                        const int* __restrict__ roi_levels, RoiAlignArgs a,
                                        const unsigned int* abs_max_bits, double max_terms,
                                        Acc* g0, Acc* g1, Acc* g2, Acc* g3, Acc* g4) {
    const double scale = abs_max_bits != nullptr ? fixed_point_scale(*abs_max_bits, max_terms) : 1.0;
    const int64_t total = (int64_t)a.num_rois * a.channels * a.pooled_h * a.pooled_w;
    DETKD_GRID_STRIDE(i, total) {
        const BinIndex b = bin_index(i, a);
        const RoiGeometry g = roi_geometry(rois, roi_levels, b.k, a);
        const int height = a.height[g.level], width = a.width[g.level];
        Acc* plane = select_level(g.level, g0, g1, g2, g3, g4) +
                     ((int64_t)g.batch * a.channels + b.c) * height * width;
        const float grad = to_float(grad_out[i]);
        for_each_sample(g, b.ph, b.pw, height, width, [&](const int* idx, const float* w) {
#pragma unroll
            for (int t = 0; t < 4; ++t) accumulate(plane + idx[t], grad * w[t] / g.count, scale);
        });
    }
}

#define DETKD_ROI_ALIGN_INSTANCES(T, SUFFIX)                                                              \
    extern "C" __global__ void roi_align_forward_##SUFFIX(const T* f0, const T* f1, const T* f2,          \
                                                          const T* f3, const T* f4, const float* rois,    \
                                                          const int* roi_levels, RoiAlignArgs a, T* out) { \
        roi_align_forward_impl<T>(f0, f1, f2, f3, f4, rois, roi_levels, a, out);                          \
    }                                                                                                     \
    extern "C" __global__ void roi_align_backward_atomic_##SUFFIX(                                        \
        const T* grad_out, const float* rois, const int* roi_levels, RoiAlignArgs a, float* g0,          \
        float* g1, float* g2, float* g3, float* g4) {                                                     \
        roi_align_backward_impl<T, float>(grad_out, rois, roi_levels, a, nullptr, 0.0, g0, g1, g2, g3, g4); \
    }                                                                                                     \
    extern "C" __global__ void roi_align_backward_fixed_##SUFFIX(                                         \
        const T* grad_out, const float* rois, const int* roi_levels, RoiAlignArgs a,                     \
        const unsigned int* abs_max_bits, double max_terms, unsigned long long* g0,                      \
        unsigned long long* g1, unsigned long long* g2, unsigned long long* g3, unsigned long long* g4) { \
        roi_align_backward_impl<T, unsigned long long>(grad_out, rois, roi_levels, a, abs_max_bits,      \
                                                       max_terms, g0, g1, g2, g3, g4);                   \
    }

DETKD_ROI_ALIGN_INSTANCES(float, f32)
DETKD_ROI_ALIGN_INSTANCES(__half, f16)
DETKD_ROI_ALIGN_INSTANCES(__nv_bfloat16, bf16)
