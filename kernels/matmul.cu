// Batched GEMM: C = alpha * op(A) * op(B) + beta * C, row-major, op = optional transpose.
//
// A classic shared-memory tiling: a 64x64 tile of C per 256-thread block, each thread a 4x4 micro-tile, K in
// steps of 16. Tiles are loaded along each operand's contiguous dimension (so both transposes coalesce) and
// converted to f32 on load; out-of-range elements load as 0.
//
// Split-K: when C has too few tiles to fill the GPU but K is long (GloRe's 128x64 products over K = 67 200),
// blockIdx.z also enumerates `splits` chunks of K; each block writes its f32 partial product to a scratch
// [batch, splits, M, N] and matmul_reduce_splits adds the chunks in ascending order. No atomics anywhere, so
// results are deterministic for a given launch shape.
#include "common.cuh"

using namespace detkd;

#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define MICRO 4

// Mirrors `MatmulArgs` in src/ops/matmul/cuda.rs (64 bytes).
struct MatmulArgs {
    long long stride_a;  // elements between consecutive batch matrices
    long long stride_b;
    long long stride_c;  // elements between consecutive output matrices (one per blockIdx.z)
    int m, n, k;
    int trans_a, trans_b;
    float alpha, beta;
    int k_chunk;  // K per split (a multiple of TILE_K), k when not split
    int splits;   // chunks of K per batch entry, 1 when not split
};

template <typename T, typename TOut>
__device__ void matmul_impl(const T* __restrict__ a, const T* __restrict__ b, TOut* __restrict__ c,
                            const MatmulArgs args) {
    // +4 padding: the inner loop reads rows of these tiles; padding keeps the column loads off one bank.
    __shared__ float a_tile[TILE_K][TILE_M + 4];
    __shared__ float b_tile[TILE_K][TILE_N + 4];

    const int64_t z = blockIdx.z;  // batch * splits + split
    const int64_t batch = z / args.splits;
    const int split = (int)(z % args.splits);
    a += batch * args.stride_a;
    b += batch * args.stride_b;
    c += z * args.stride_c;
    const int row0 = blockIdx.y * TILE_M, col0 = blockIdx.x * TILE_N;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // 16 x 16 threads
    const int m = args.m, n = args.n, k = args.k;

    float acc[MICRO][MICRO];
#pragma unroll
    for (int r = 0; r < MICRO; ++r)
#pragma unroll
        for (int q = 0; q < MICRO; ++q) acc[r][q] = 0.0f;

    const int k_begin = split * args.k_chunk;
    const int k_end = min(k, k_begin + args.k_chunk);
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        // op(A) tile: rows row0.., columns k0..; A is [m, k] or, transposed, [k, m].
        for (int i = threadIdx.x; i < TILE_M * TILE_K; i += blockDim.x) {
            int mm, kk;
            if (args.trans_a) {  // contiguous along m
                mm = i % TILE_M;
                kk = i / TILE_M;
            } else {  // contiguous along k
                kk = i % TILE_K;
                mm = i / TILE_K;
            }
            const int gm = row0 + mm, gk = k0 + kk;
            float v = 0.0f;
            if (gm < m && gk < k_end) v = to_float(args.trans_a ? a[(int64_t)gk * m + gm] : a[(int64_t)gm * k + gk]);
            a_tile[kk][mm] = v;
        }
        // op(B) tile: rows k0.., columns col0..; B is [k, n] or, transposed, [n, k].
        for (int i = threadIdx.x; i < TILE_K * TILE_N; i += blockDim.x) {
            int nn, kk;
            if (args.trans_b) {  // contiguous along k
                kk = i % TILE_K;
                nn = i / TILE_K;
            } else {  // contiguous along n
                nn = i % TILE_N;
                kk = i / TILE_N;
            }
            const int gn = col0 + nn, gk = k0 + kk;
            float v = 0.0f;
            if (gn < n && gk < k_end) v = to_float(args.trans_b ? b[(int64_t)gn * k + gk] : b[(int64_t)gk * n + gn]);
            b_tile[kk][nn] = v;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE_K; ++kk) {
            float a_frag[MICRO], b_frag[MICRO];
#pragma unroll
            for (int r = 0; r < MICRO; ++r) a_frag[r] = a_tile[kk][ty * MICRO + r];
#pragma unroll
            for (int q = 0; q < MICRO; ++q) b_frag[q] = b_tile[kk][tx * MICRO + q];
#pragma unroll
            for (int r = 0; r < MICRO; ++r)
#pragma unroll
                for (int q = 0; q < MICRO; ++q) acc[r][q] += a_frag[r] * b_frag[q];
        }
        __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < MICRO; ++r) {
        const int gm = row0 + ty * MICRO + r;
        if (gm >= m) continue;
#pragma unroll
        for (int q = 0; q < MICRO; ++q) {
            const int gn = col0 + tx * MICRO + q;
            if (gn >= n) continue;
            TOut* dst = c + (int64_t)gm * n + gn;
            float v = args.alpha * acc[r][q];
            if (args.beta != 0.0f) v += args.beta * to_float(*dst);  // beta == 0 never reads C
            *dst = from_float<TOut>(v);
        }
    }
}

// c[i] = alpha * sum_s partial[batch][s][e] + beta * c[i] for i = batch * mn + e, s ascending.
template <typename T>
__device__ void reduce_splits_impl(const float* __restrict__ partial, T* __restrict__ c, int64_t mn,
                                   int64_t total, int splits, float alpha, float beta) {
    DETKD_GRID_STRIDE(i, total) {
        const int64_t batch = i / mn, e = i % mn;
        const float* p = partial + batch * splits * mn + e;
        float sum = 0.0f;
        for (int s = 0; s < splits; ++s) sum += p[(int64_t)s * mn];
        float v = alpha * sum;
        if (beta != 0.0f) v += beta * to_float(c[i]);
        c[i] = from_float<T>(v);
    }
}

#define DETKD_MATMUL_INSTANCES(T, SUFFIX)                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                           \
        matmul_##SUFFIX(const T* a, const T* b, T* c, MatmulArgs args) {                        \
        matmul_impl<T, T>(a, b, c, args);                                                       \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(256)                                           \
        matmul_split_##SUFFIX(const T* a, const T* b, float* partial, MatmulArgs args) {        \
        matmul_impl<T, float>(a, b, partial, args);                                             \
    }                                                                                           \
    extern "C" __global__ void matmul_reduce_splits_##SUFFIX(const float* partial, T* c, int64_t mn, \
                                                             int64_t total, int splits,          \
                                                             float alpha, float beta) {          \
        reduce_splits_impl<T>(partial, c, mn, total, splits, alpha, beta);                      \
    }

DETKD_MATMUL_INSTANCES(float, f32)
DETKD_MATMUL_INSTANCES(__half, f16)
DETKD_MATMUL_INSTANCES(__nv_bfloat16, bf16)
