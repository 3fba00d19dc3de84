// Box geometry: GFL's distance <-> box transforms, mmdet's bbox_overlaps (IoU, GIoU, DIoU; aligned and
// pairwise) and the GIoU loss with its gradient (see src/ops/boxes/ and shared/spec/methods.md §4, §6.9).
// The per-box arithmetic mirrors src/ops/boxes/cpu.rs step for step.
//
// Boxes are rows of 4 (x1, y1, x2, y2), points rows of 2, distances rows of 4 (l, t, r, b). Storage is
// f32/f16/bf16, arithmetic f32. Element kernels give one thread to a row (64-bit grid-stride indices); the
// pairwise matrix uses 32 x 32 output tiles staged through shared memory (box_overlaps_impl).
//
// max/min propagate NaN (fmaxf/fminf would drop it and turn a NaN prediction into a finite loss), and the
// gradient of max/min splits in half at a tie, as PyTorch's torch.max/torch.min of two tensors do.
//
// GIoU loss modes, uniform over a launch (so the block-wide reduction is reached by every thread or none):
//   loss_mode  LOSS_NONE      no loss
//              LOSS_ELEMENTS  loss_out[i] = (L_i * w_i) * loss_coef
//              LOSS_REDUCE    per-block partial sums of (L_i * w_i) * loss_coef to partials[blockIdx.x]
//   grad_mode  GRAD_NONE      no gradient
//              GRAD_ELEMENTS       grad[i, :] = dL_i * (w_i * (grad_coef * grad_out[i]))
//              GRAD_DEVICE_SCALAR  grad[i, :] = dL_i * (w_i * (grad_coef * grad_out[0]))
//              GRAD_HOST_SCALAR    grad[i, :] = dL_i * (w_i * grad_coef)
#include "common.cuh"

using namespace detkd;

#define LOSS_NONE 0
#define LOSS_ELEMENTS 1
#define LOSS_REDUCE 2
#define GRAD_NONE 0
#define GRAD_ELEMENTS 1
#define GRAD_DEVICE_SCALAR 2
#define GRAD_HOST_SCALAR 3

#define KIND_IOU 0
#define KIND_GIOU 1
#define KIND_DIOU 2

// Mirrors `BoxArgs` in src/ops/boxes/cuda.rs field by field (56 bytes, no padding).
struct BoxArgs {
    int64_t rows;     // N
    int64_t cols;     // M of the pairwise matrix, else 0
    float eps;        // bbox_overlaps' clamp of the union / enclosing area (or diagonal²)
    float loss_coef;  // loss_weight / divisor
    float grad_coef;  // loss_coef, times the host upstream gradient for the fused entry
    float bound_y;    // distance2bbox: image height; bbox2distance: upper clamp (max_dist - eps)
    float bound_x;    // distance2bbox: image width
    int kind;         // KIND_*
    int first_area;   // DIoU: overlap over area(a) instead of the union (LD repo's mode='diou')
    int loss_mode;
    int grad_mode;
    int has_bound;    // distance2bbox: clamp to the image; bbox2distance: clamp to [0, bound_y]
};

__device__ __forceinline__ float max_nan(float a, float b) { return a >= b ? a : (b > a ? b : a + b); }
__device__ __forceinline__ float min_nan(float a, float b) { return a <= b ? a : (b < a ? b : a + b); }
// (x).clamp(min=0) with NaN propagated.
__device__ __forceinline__ float clamp0(float x) { return x > 0.0f ? x : (x <= 0.0f ? 0.0f : x); }
// clamp(x, 0, hi) with NaN propagated.
__device__ __forceinline__ float clamp_to(float x, float hi) {
    return x < 0.0f ? 0.0f : (x > hi ? hi : x);
}
// The share of d max(a, b) that goes to a: 1, 1/2 at a tie, 0.
__device__ __forceinline__ float max_share(float a, float b) { return a > b ? 1.0f : (a == b ? 0.5f : 0.0f); }
__device__ __forceinline__ float min_share(float a, float b) { return max_share(b, a); }

template <typename T>
__device__ __forceinline__ float4 load_box(const T* __restrict__ p, int64_t i) {
    return make_float4(to_float(p[4 * i]), to_float(p[4 * i + 1]), to_float(p[4 * i + 2]),
                       to_float(p[4 * i + 3]));
}

// One entry of bbox_overlaps(a, b, mode, eps): IoU = I / max(U, eps) (DIoU with first_area: I / max(A_a,
// eps)); GIoU = IoU - (C - U) / C with C = max(enclosing area, eps); DIoU = IoU - rho² / max(c², eps).
__device__ __forceinline__ float overlap_value(float4 a, float4 b, const BoxArgs& args) {
    const float area1 = (a.z - a.x) * (a.w - a.y);
    const float area2 = (b.z - b.x) * (b.w - b.y);
    const float w = clamp0(min_nan(a.z, b.z) - max_nan(a.x, b.x));
    const float h = clamp0(min_nan(a.w, b.w) - max_nan(a.y, b.y));
    const float overlap = w * h;
    const float denominator =
        (args.kind == KIND_DIOU && args.first_area) ? area1 : area1 + area2 - overlap;
    const float union_area = max_nan(denominator, args.eps);
    const float iou = overlap / union_area;
    if (args.kind == KIND_IOU) return iou;
    const float ew = clamp0(max_nan(a.z, b.z) - min_nan(a.x, b.x));
    const float eh = clamp0(max_nan(a.w, b.w) - min_nan(a.y, b.y));
    if (args.kind == KIND_GIOU) {
        const float enclose = max_nan(ew * eh, args.eps);
        return iou - (enclose - union_area) / enclose;
    }
    const float cx = (b.x + b.z) - (a.x + a.z);
    const float cy = (b.y + b.w) - (a.y + a.w);
    const float rho2 = cx * cx / 4.0f + cy * cy / 4.0f;
    const float diag2 = max_nan(ew * ew + eh * eh, args.eps);
    return iou - rho2 / diag2;
}

// L = 1 - GIoU(p, g) and dL/dp (routed through every max/min by its active operand, halved at ties; the
// clamps at 0 pass the gradient only where the difference is > 0, as torch's clamp(min=0)).
__device__ __forceinline__ float giou_loss_element(float4 p, float4 g, float eps, float4* grad) {
    const float area1 = (p.z - p.x) * (p.w - p.y);
    const float area2 = (g.z - g.x) * (g.w - g.y);
    const float dx = min_nan(p.z, g.z) - max_nan(p.x, g.x);
    const float dy = min_nan(p.w, g.w) - max_nan(p.y, g.y);
    const float w = clamp0(dx), h = clamp0(dy);
    const float overlap = w * h;
    const float union_raw = area1 + area2 - overlap;
    const float union_area = max_nan(union_raw, eps);
    const float iou = overlap / union_area;
    const float edx = max_nan(p.z, g.z) - min_nan(p.x, g.x);
    const float edy = max_nan(p.w, g.w) - min_nan(p.y, g.y);
    const float ew = clamp0(edx), eh = clamp0(edy);
    const float enclose_raw = ew * eh;
    const float enclose = max_nan(enclose_raw, eps);
    const float giou = iou - (enclose - union_area) / enclose;
    if (grad != nullptr) {
        // With L = 1 - I/U + (C - U)/C: dL/dU = I/U² - 1/C, dL/dI = -1/U (direct), dL/dC = U/C².
        const float d_union = iou / union_area - 1.0f / enclose;
        float d_overlap = -1.0f / union_area;
        const float d_enclose = union_area / (enclose * enclose);
        const float d_union_raw = d_union * max_share(union_raw, eps);
        const float d_enclose_raw = d_enclose * max_share(enclose_raw, eps);
        const float d_edx = d_enclose_raw * eh * (edx > 0.0f ? 1.0f : 0.0f);
        const float d_edy = d_enclose_raw * ew * (edy > 0.0f ? 1.0f : 0.0f);
        d_overlap -= d_union_raw;
        const float d_dx = d_overlap * h * (dx > 0.0f ? 1.0f : 0.0f);
        const float d_dy = d_overlap * w * (dy > 0.0f ? 1.0f : 0.0f);
        const float pw = p.z - p.x, ph = p.w - p.y;
        float4 d;
        d.x = -d_edx * min_share(p.x, g.x) - d_union_raw * ph - d_dx * max_share(p.x, g.x);
        d.y = -d_edy * min_share(p.y, g.y) - d_union_raw * pw - d_dy * max_share(p.y, g.y);
        d.z = d_edx * max_share(p.z, g.z) + d_union_raw * ph + d_dx * min_share(p.z, g.z);
        d.w = d_edy * max_share(p.w, g.w) + d_union_raw * pw + d_dy * min_share(p.w, g.w);
        *grad = d;
    }
    return 1.0f - giou;
}

template <typename T>
__device__ void distance2bbox_impl(const T* __restrict__ points, const T* __restrict__ distances,
                                   BoxArgs args, T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, args.rows) {
        const float px = to_float(points[2 * i]), py = to_float(points[2 * i + 1]);
        const float4 d = load_box(distances, i);
        float x1 = px - d.x, y1 = py - d.y, x2 = px + d.z, y2 = py + d.w;
        if (args.has_bound) {
            x1 = clamp_to(x1, args.bound_x);
            y1 = clamp_to(y1, args.bound_y);
            x2 = clamp_to(x2, args.bound_x);
            y2 = clamp_to(y2, args.bound_y);
        }
        out[4 * i] = from_float<T>(x1);
        out[4 * i + 1] = from_float<T>(y1);
        out[4 * i + 2] = from_float<T>(x2);
        out[4 * i + 3] = from_float<T>(y2);
    }
}

// 1 where clamp(v, 0, hi) passes the gradient (strictly inside, as torch's clamp), else 0.
__device__ __forceinline__ float inside(float v, float hi) { return (v > 0.0f && v < hi) ? 1.0f : 0.0f; }

template <typename T>
__device__ void distance2bbox_backward_impl(const T* __restrict__ points, const T* __restrict__ distances,
                                            const T* __restrict__ grad_out, BoxArgs args,
                                            T* __restrict__ grad) {
    DETKD_GRID_STRIDE(i, args.rows) {
        const float4 g = load_box(grad_out, i);
        float4 pass = make_float4(1.0f, 1.0f, 1.0f, 1.0f);
        if (args.has_bound) {
            const float px = to_float(points[2 * i]), py = to_float(points[2 * i + 1]);
            const float4 d = load_box(distances, i);
            pass = make_float4(inside(px - d.x, args.bound_x), inside(py - d.y, args.bound_y),
                               inside(px + d.z, args.bound_x), inside(py + d.w, args.bound_y));
        }
        grad[4 * i] = from_float<T>(-g.x * pass.x);
        grad[4 * i + 1] = from_float<T>(-g.y * pass.y);
        grad[4 * i + 2] = from_float<T>(g.z * pass.z);
        grad[4 * i + 3] = from_float<T>(g.w * pass.w);
    }
}

template <typename T>
__device__ void bbox2distance_impl(const T* __restrict__ points, const T* __restrict__ boxes, BoxArgs args,
                                   T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, args.rows) {
        const float px = to_float(points[2 * i]), py = to_float(points[2 * i + 1]);
        const float4 b = load_box(boxes, i);
        float l = px - b.x, t = py - b.y, r = b.z - px, bottom = b.w - py;
        if (args.has_bound) {
            l = clamp_to(l, args.bound_y);
            t = clamp_to(t, args.bound_y);
            r = clamp_to(r, args.bound_y);
            bottom = clamp_to(bottom, args.bound_y);
        }
        out[4 * i] = from_float<T>(l);
        out[4 * i + 1] = from_float<T>(t);
        out[4 * i + 2] = from_float<T>(r);
        out[4 * i + 3] = from_float<T>(bottom);
    }
}

template <typename T>
__device__ void overlaps_aligned_impl(const T* __restrict__ a, const T* __restrict__ b, BoxArgs args,
                                      T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, args.rows) { out[i] = from_float<T>(overlap_value(load_box(a, i), load_box(b, i), args)); }
}

// Pairwise matrix out[r, c] = overlap(a[r], b[c]), [rows, cols] row-major. A 32 x 8 block owns a 32 x 32
// output tile: it stages the tile's 32 boxes of a and 32 boxes of b in shared memory (one coalesced scalar
// load per thread), then each thread writes one column of four rows, so a warp writes 32 consecutive
// outputs of a row. Both tile loops depend only on blockIdx, so every thread of a block runs the same
// iterations and reaches every __syncthreads.
#define TILE 32
#define BLOCK_ROWS 8

template <typename T>
__device__ void box_overlaps_impl(const T* __restrict__ a, const T* __restrict__ b, BoxArgs args,
                                  T* __restrict__ out) {
    __shared__ float4 tile_a[TILE];
    __shared__ float4 tile_b[TILE];
    const int tid = threadIdx.y * TILE + threadIdx.x;
    for (int64_t row0 = (int64_t)blockIdx.y * TILE; row0 < args.rows; row0 += (int64_t)gridDim.y * TILE) {
        for (int64_t col0 = (int64_t)blockIdx.x * TILE; col0 < args.cols; col0 += (int64_t)gridDim.x * TILE) {
            __syncthreads();  // the previous tile has been read by every thread
            if (tid < 4 * TILE) {
                const int64_t row = row0 + tid / 4;
                reinterpret_cast<float*>(tile_a)[tid] = row < args.rows ? to_float(a[4 * row0 + tid]) : 0.0f;
            } else {
                const int k = tid - 4 * TILE;
                const int64_t col = col0 + k / 4;
                reinterpret_cast<float*>(tile_b)[k] = col < args.cols ? to_float(b[4 * col0 + k]) : 0.0f;
            }
            __syncthreads();
            const int64_t col = col0 + threadIdx.x;
            if (col < args.cols) {
                const float4 box_b = tile_b[threadIdx.x];
                for (int r = threadIdx.y; r < TILE; r += BLOCK_ROWS) {
                    const int64_t row = row0 + r;
                    if (row < args.rows) out[row * args.cols + col] = from_float<T>(overlap_value(tile_a[r], box_b, args));
                }
            }
        }
    }
}

template <typename T>
__device__ void giou_loss_impl(const T* __restrict__ pred, const T* __restrict__ target,
                               const T* __restrict__ weight, const T* __restrict__ grad_out, BoxArgs args,
                               T* __restrict__ loss_out, float* __restrict__ partials, T* __restrict__ grad) {
    float local = 0.0f;
    DETKD_GRID_STRIDE(i, args.rows) {
        const float w = weight != nullptr ? to_float(weight[i]) : 1.0f;
        float4 d;
        const float loss = giou_loss_element(load_box(pred, i), load_box(target, i), args.eps,
                                             args.grad_mode != GRAD_NONE ? &d : nullptr);
        const float weighted = (loss * w) * args.loss_coef;
        if (args.loss_mode == LOSS_ELEMENTS) loss_out[i] = from_float<T>(weighted);
        local += weighted;
        if (args.grad_mode != GRAD_NONE) {
            float upstream = args.grad_coef;
            if (args.grad_mode == GRAD_ELEMENTS) upstream *= to_float(grad_out[i]);
            if (args.grad_mode == GRAD_DEVICE_SCALAR) upstream *= to_float(grad_out[0]);
            const float factor = w * upstream;
            grad[4 * i] = from_float<T>(d.x * factor);
            grad[4 * i + 1] = from_float<T>(d.y * factor);
            grad[4 * i + 2] = from_float<T>(d.z * factor);
            grad[4 * i + 3] = from_float<T>(d.w * factor);
        }
    }
    if (args.loss_mode == LOSS_REDUCE) {
        const float block_sum = block_reduce_sum(local);
        if (threadIdx.x == 0) partials[blockIdx.x] = block_sum;
    }
}

#define DETKD_BOXES_INSTANCES(T, SUFFIX)                                                                     \
    extern "C" __global__ void distance2bbox_##SUFFIX(const T* points, const T* distances, BoxArgs args,    \
                                                      T* out) {                                             \
        distance2bbox_impl<T>(points, distances, args, out);                                                 \
    }                                                                                                        \
    extern "C" __global__ void distance2bbox_backward_##SUFFIX(const T* points, const T* distances,         \
                                                               const T* grad_out, BoxArgs args, T* grad) {  \
        distance2bbox_backward_impl<T>(points, distances, grad_out, args, grad);                             \
    }                                                                                                        \
    extern "C" __global__ void bbox2distance_##SUFFIX(const T* points, const T* boxes, BoxArgs args,        \
                                                      T* out) {                                             \
        bbox2distance_impl<T>(points, boxes, args, out);                                                     \
    }                                                                                                        \
    extern "C" __global__ void overlaps_aligned_##SUFFIX(const T* a, const T* b, BoxArgs args, T* out) {    \
        overlaps_aligned_impl<T>(a, b, args, out);                                                           \
    }                                                                                                        \
    extern "C" __global__ void box_overlaps_##SUFFIX(const T* a, const T* b, BoxArgs args, T* out) {        \
        box_overlaps_impl<T>(a, b, args, out);                                                               \
    }                                                                                                        \
    extern "C" __global__ void giou_loss_##SUFFIX(const T* pred, const T* target, const T* weight,          \
                                                  const T* grad_out, BoxArgs args, T* loss_out,              \
                                                  float* partials, T* grad) {                                \
        giou_loss_impl<T>(pred, target, weight, grad_out, args, loss_out, partials, grad);                   \
    }

DETKD_BOXES_INSTANCES(float, f32)
DETKD_BOXES_INSTANCES(__half, f16)
DETKD_BOXES_INSTANCES(__nv_bfloat16, bf16)
