// Conv2d around the GEMM: im2col (patches to columns), col2im as a gather (each input pixel sums its own
// column entries in a fixed order, no atomics), and the chunk plumbing (widening copies, weight replication,
// bias + rounding into the output, deterministic bias-gradient and batch sums). The products themselves run
// on kernels/matmul.cu. See src/ops/conv2d/mod.rs for the layout and formulas.
//
// Every kernel indexes with 64-bit integers. Column buffers and gradients are f32; the caller's tensors may
// be f32/f16/bf16 and are converted on load / rounded once on store.
#include "common.cuh"

using namespace detkd;

// Mirrors `ConvArgs` in src/ops/conv2d/cuda.rs: two 8-byte fields, then fourteen 4-byte fields (72 bytes).
struct ConvArgs {
    long long b0;  // first image of the chunk in the caller's batch
    long long nb;  // images in the chunk
    int cin, h, w;
    int kh, kw;
    int oh, ow;
    int stride_h, stride_w;
    int pad_h, pad_w;
    int dil_h, dil_w;
    int cout;
};

// col[b, (ci·KH + i)·KW + j, y·OW + x] = input[b0 + b, ci, y·sh − ph + i·dh, x·sw − pw + j·dw], 0 outside.
template <typename T>
__device__ void im2col_impl(const T* __restrict__ input, ConvArgs a, float* __restrict__ col) {
    const long long plane = (long long)a.oh * a.ow;
    const long long rows = (long long)a.cin * a.kh * a.kw;
    DETKD_GRID_STRIDE(i, a.nb * rows * plane) {
        const long long l = i % plane;
        const long long r = (i / plane) % rows;
        const long long b = i / (plane * rows);
        const int j = (int)(r % a.kw);
        const int ki = (int)((r / a.kw) % a.kh);
        const long long ci = r / ((long long)a.kw * a.kh);
        const long long y = (l / a.ow) * a.stride_h - a.pad_h + (long long)ki * a.dil_h;
        const long long x = (l % a.ow) * a.stride_w - a.pad_w + (long long)j * a.dil_w;
        float v = 0.0f;
        if (y >= 0 && y < a.h && x >= 0 && x < a.w) {
            v = to_float(input[(((a.b0 + b) * a.cin + ci) * a.h + y) * a.w + x]);
        }
        col[i] = v;
    }
}

// input_grad[b0 + b, ci, y, x] = Σ_{i, j ascending} dcol[b, (ci·KH + i)·KW + j, oy·OW + ox] over the taps
// with oy·sh − ph + i·dh = y and ox·sw − pw + j·dw = x (0 ≤ oy < OH, 0 ≤ ox < OW): the transpose of im2col,
// gathered per input pixel so that every sum has one fixed order.
template <typename T>
__device__ void col2im_impl(const float* __restrict__ dcol, ConvArgs a, T* __restrict__ input_grad) {
    const long long plane = (long long)a.h * a.w;
    const long long out_plane = (long long)a.oh * a.ow;
    const long long rows = (long long)a.cin * a.kh * a.kw;
    DETKD_GRID_STRIDE(e, a.nb * a.cin * plane) {
        const long long x = e % a.w;
        const long long y = (e / a.w) % a.h;
        const long long ci = (e / plane) % a.cin;
        const long long b = e / (plane * a.cin);
        const float* col = dcol + (b * rows + ci * a.kh * a.kw) * out_plane;
        float sum = 0.0f;
        for (int i = 0; i < a.kh; ++i) {
            const long long ty = y + a.pad_h - (long long)i * a.dil_h;
            if (ty < 0) break;  // ty only decreases with i
            if (ty % a.stride_h != 0) continue;
            const long long oy = ty / a.stride_h;
            if (oy >= a.oh) continue;
            for (int j = 0; j < a.kw; ++j) {
                const long long tx = x + a.pad_w - (long long)j * a.dil_w;
                if (tx < 0) break;
                if (tx % a.stride_w != 0) continue;
                const long long ox = tx / a.stride_w;
                if (ox >= a.ow) continue;
                sum += col[((long long)i * a.kw + j) * out_plane + oy * a.ow + ox];
            }
        }
        input_grad[(a.b0 * a.cin) * plane + e] = from_float<T>(sum);
    }
}

// out[i] = src[offset + i] as f32, for i < n: one chunk of images of an NCHW tensor, widened.
template <typename T>
__device__ void gather_chunk_impl(const T* __restrict__ src, long long offset, long long n, float* __restrict__ out) {
    DETKD_GRID_STRIDE(i, n) { out[i] = to_float(src[offset + i]); }
}

// out[b, p] = weight[p] as f32 for b < copies, p < per: the weight once per image of the chunk, so the chunk's
// products are one batched GEMM.
template <typename T>
__device__ void replicate_impl(const T* __restrict__ weight, long long per, long long copies, float* __restrict__ out) {
    DETKD_GRID_STRIDE(i, per * copies) { out[i] = to_float(weight[i % per]); }
}

// out[b0 + b, c, l] = y[b, c, l] + bias[c] (bias may be null), rounded once to T; y is [nb, channels, plane].
template <typename T>
__device__ void write_chunk_impl(const float* __restrict__ y, const T* __restrict__ bias, long long b0, long long nb,
                                 long long channels, long long plane, T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, nb * channels * plane) {
        float v = y[i];
        if (bias != nullptr) v += to_float(bias[(i / plane) % channels]);
        out[b0 * channels * plane + i] = from_float<T>(v);
    }
}

#define DETKD_IM2COL_INSTANCES(T, SUFFIX)                                                                  \
    extern "C" __global__ void im2col_##SUFFIX(const T* input, ConvArgs a, float* col) {                   \
        im2col_impl<T>(input, a, col);                                                                     \
    }                                                                                                      \
    extern "C" __global__ void col2im_##SUFFIX(const float* dcol, ConvArgs a, T* input_grad) {             \
        col2im_impl<T>(dcol, a, input_grad);                                                               \
    }                                                                                                      \
    extern "C" __global__ void conv_gather_chunk_##SUFFIX(const T* src, long long offset, long long n,     \
                                                          float* out) {                                    \
        gather_chunk_impl<T>(src, offset, n, out);                                                         \
    }                                                                                                      \
    extern "C" __global__ void conv_replicate_##SUFFIX(const T* weight, long long per, long long copies,   \
                                                       float* out) {                                       \
        replicate_impl<T>(weight, per, copies, out);                                                       \
    }                                                                                                      \
    extern "C" __global__ void conv_write_chunk_##SUFFIX(const float* y, const T* bias, long long b0,      \
                                                         long long nb, long long channels, long long plane, \
                                                         T* out) {                                         \
        write_chunk_impl<T>(y, bias, b0, nb, channels, plane, out);                                        \
    }

DETKD_IM2COL_INSTANCES(float, f32)
DETKD_IM2COL_INSTANCES(__half, f16)
DETKD_IM2COL_INSTANCES(__nv_bfloat16, bf16)

// acc[c] (+)= Σ_{b < nb, l < plane} dy[b, c, l] for an f32 dy [nb, channels, plane]: one block per channel
// (grid-stride over channels), images in order, block_reduce_sum over each block's fixed thread layout, so
// the sum is reproducible. `first` overwrites acc instead of adding (the first chunk).
extern "C" __global__ void __launch_bounds__(256)
    conv_bias_grad_f32(const float* __restrict__ dy, long long nb, long long channels, long long plane, int first,
                       float* __restrict__ acc) {
    for (long long c = blockIdx.x; c < channels; c += gridDim.x) {
        float s = 0.0f;
        for (long long b = 0; b < nb; ++b) {
            const float* row = dy + (b * channels + c) * plane;
            for (long long l = threadIdx.x; l < plane; l += blockDim.x) s += row[l];
        }
        s = block_reduce_sum(s);
        if (threadIdx.x == 0) acc[c] = first ? s : acc[c] + s;
    }
}

// acc[p] (+)= parts[0, p] + parts[1, p] + … + parts[nb − 1, p], added in that order one after the other: the
// weight gradient of a chunk (one part per image) folded into the running total.
extern "C" __global__ void conv_sum_batches_f32(const float* __restrict__ parts, long long nb, long long per,
                                                int first, float* __restrict__ acc) {
    DETKD_GRID_STRIDE(p, per) {
        float s = first ? 0.0f : acc[p];
        for (long long b = 0; b < nb; ++b) s += parts[b * per + p];
        acc[p] = s;
    }
}
