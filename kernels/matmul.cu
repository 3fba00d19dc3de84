// Batched GEMM: C = alpha * op(A) * op(B) + beta * C, row-major, op = optional transpose.
//
// A classic shared-memory tiling: a 64x64 tile of C per 256-thread block, each thread a 4x4 micro-tile, K in
// steps of 16. Tiles are loaded along each operand's contiguous dimension (so both transposes coalesce) and
// converted to f32 on load; out-of-range elements load as 0. No atomics: every C element is summed by one
// thread in ascending k, so results are deterministic.
#include "common.cuh"

using namespace detkd;

#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define MICRO 4

struct MatmulArgs {
    long long stride_a;  // elements between consecutive batch matrices (0: shared by the batch)
    long long stride_b;
    long long stride_c;
    int m, n, k;
    int trans_a, trans_b;
    float alpha, beta;
};

template <typename T>
__device__ void matmul_impl(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ c,
                            const MatmulArgs args) {
    // +4 padding: the inner loop reads rows of these tiles; padding keeps the column loads off one bank.
    __shared__ float a_tile[TILE_K][TILE_M + 4];
    __shared__ float b_tile[TILE_K][TILE_N + 4];

    const int64_t batch = blockIdx.z;
    a += batch * args.stride_a;
    b += batch * args.stride_b;
    c += batch * args.stride_c;
    const int row0 = blockIdx.y * TILE_M, col0 = blockIdx.x * TILE_N;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // 16 x 16 threads
    const int m = args.m, n = args.n, k = args.k;

    float acc[MICRO][MICRO];
#pragma unroll
    for (int r = 0; r < MICRO; ++r)
#pragma unroll
        for (int q = 0; q < MICRO; ++q) acc[r][q] = 0.0f;

    for (int k0 = 0; k0 < k; k0 += TILE_K) {
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
            if (gm < m && gk < k) v = to_float(args.trans_a ? a[(int64_t)gk * m + gm] : a[(int64_t)gm * k + gk]);
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
            if (gn < n && gk < k) v = to_float(args.trans_b ? b[(int64_t)gn * k + gk] : b[(int64_t)gk * n + gn]);
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
            T* dst = c + (int64_t)gm * n + gn;
            float v = args.alpha * acc[r][q];
            if (args.beta != 0.0f) v += args.beta * to_float(*dst);  // beta == 0 never reads C
            *dst = from_float<T>(v);
        }
    }
}

#define DETKD_MATMUL_INSTANCES(T, SUFFIX)                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                           \
        matmul_##SUFFIX(const T* a, const T* b, T* c, MatmulArgs args) {                        \
        matmul_impl<T>(a, b, c, args);                                                          \
    }

DETKD_MATMUL_INSTANCES(float, f32)
DETKD_MATMUL_INSTANCES(__half, f16)
DETKD_MATMUL_INSTANCES(__nv_bfloat16, bf16)
