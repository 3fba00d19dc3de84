// Element-wise glue: binary arithmetic with NumPy broadcasting, the reductions that undo broadcasting (with
// the binary gradients' products computed inside them), broadcast copies, unary functions and their
// gradients, scaling, in-place accumulation and fills. See src/ops/elementwise/mod.rs for the formulas;
// src/ops/elementwise/cpu.rs is the reference these mirror step for step.
//
// Broadcast operands are read through strides over a merged iteration space (size-1 dimensions dropped,
// composable neighbours merged on the host), so index arithmetic is one 32-bit division per merged
// dimension; the host guarantees every tensor here has fewer than 2^31 elements. Same-shape kernels use
// 64-bit grid-stride indices. Storage f32/f16/bf16, arithmetic f32. No atomics: every output element is
// written by one thread, and every sum is taken in an order fixed by the launch shape, which the host
// derives from the tensor shapes alone.
#include "common.cuh"

using namespace detkd;

#define DETKD_MAX_RANK 6

// Binary op codes (BinaryOp::code in mod.rs).
#define OP_ADD 0
#define OP_SUB 1
#define OP_MUL 2
#define OP_DIV 3

// Reduction terms (Term in mod.rs): g is the upstream gradient, a and b the operands (broadcast into g).
#define TERM_GRAD 0              // g
#define TERM_NEG_GRAD 1          // -g
#define TERM_GRAD_TIMES_B 2      // g*b
#define TERM_GRAD_TIMES_A 3      // g*a
#define TERM_GRAD_OVER_B 4       // g/b
#define TERM_QUOTIENT_GRAD_B 5   // -(g*a)/(b*b)

// Unary codes (UnaryOp::code / UnaryKernel in mod.rs).
#define UNARY_NEG 0
#define UNARY_RELU 1
#define UNARY_SIGMOID 2
#define UNARY_EXP 3
#define UNARY_LOG 4
#define UNARY_SQRT 5
#define UNARY_SQUARE 6
#define UNARY_ABS 7
#define UNARY_SCALE 8

// Mirrors `BroadcastArgs` in src/ops/elementwise/cuda.rs (22 ints, 88 bytes). Dimension rank-1 is the
// innermost; entries at and beyond `rank` are unused.
struct BroadcastArgs {
    int rank;
    int numel;  // output elements
    int op;     // OP_* (binary kernel only)
    int unused;
    int dims[DETKD_MAX_RANK];
    int strides[2][DETKD_MAX_RANK];  // operand a (or the broadcast source), operand b
};

// Mirrors `ReduceArgs` in src/ops/elementwise/cuda.rs (56 ints, 224 bytes). Output element o is a
// row-major position over the kept dimensions; its terms are the row-major positions k over the reduced
// dimensions. Operand slots: 0 = g, 1 = a, 2 = b.
struct ReduceArgs {
    int kept_rank;
    int reduced_rank;
    int outputs;     // output elements
    int per_output;  // terms per output element (> 0)
    int chunks;      // block kernel: chunks per output element (1: the block writes the output itself)
    int chunk;       // block kernel: terms per chunk
    int term;        // TERM_*
    float scale;     // multiplies every finished sum
    int kept_dims[DETKD_MAX_RANK];
    int reduced_dims[DETKD_MAX_RANK];
    int kept_strides[3][DETKD_MAX_RANK];
    int reduced_strides[3][DETKD_MAX_RANK];
};

// ---------------------------------------------------------------------------------------------------------
// Index arithmetic

__device__ __forceinline__ void broadcast_offsets(unsigned int i, const BroadcastArgs& a, unsigned int& oa,
                                                  unsigned int& ob) {
    oa = 0;
    ob = 0;
#pragma unroll
    for (int d = DETKD_MAX_RANK - 1; d >= 0; --d) {
        if (d < a.rank) {
            const unsigned int dim = (unsigned int)a.dims[d];
            const unsigned int c = i % dim;
            i /= dim;
            oa += c * (unsigned int)a.strides[0][d];
            ob += c * (unsigned int)a.strides[1][d];
        }
    }
}

template <bool KEPT>
__device__ __forceinline__ void reduce_offsets(unsigned int i, const ReduceArgs& a, unsigned int off[3]) {
    off[0] = off[1] = off[2] = 0;
    const int rank = KEPT ? a.kept_rank : a.reduced_rank;
#pragma unroll
    for (int d = DETKD_MAX_RANK - 1; d >= 0; --d) {
        if (d < rank) {
            const unsigned int dim = (unsigned int)(KEPT ? a.kept_dims[d] : a.reduced_dims[d]);
            const unsigned int c = i % dim;
            i /= dim;
#pragma unroll
            for (int s = 0; s < 3; ++s) {
                off[s] += c * (unsigned int)(KEPT ? a.kept_strides[s][d] : a.reduced_strides[s][d]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Binary arithmetic and broadcast copies

template <typename T>
__device__ void binary_impl(const T* __restrict__ a, const T* __restrict__ b, BroadcastArgs args,
                            T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, args.numel) {
        unsigned int oa, ob;
        broadcast_offsets((unsigned int)i, args, oa, ob);
        const float x = to_float(a[oa]), y = to_float(b[ob]);
        float r;
        switch (args.op) {
            case OP_ADD: r = x + y; break;
            case OP_SUB: r = x - y; break;
            case OP_MUL: r = x * y; break;
            default: r = x / y; break;
        }
        out[i] = from_float<T>(r);
    }
}

// out[i] = scale * g[broadcast(i)]; G is T, or f32 for the scalar gradient of an f32-accumulated reduction.
template <typename G, typename T>
__device__ void broadcast_impl(const G* __restrict__ g, BroadcastArgs args, float scale, T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, args.numel) {
        unsigned int og, unused;
        broadcast_offsets((unsigned int)i, args, og, unused);
        out[i] = from_float<T>(to_float(g[og]) * scale);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reductions

template <typename T>
__device__ __forceinline__ float term_value(const T* __restrict__ g, const T* __restrict__ a,
                                            const T* __restrict__ b, const unsigned int off[3], int term) {
    const float gv = to_float(g[off[0]]);
    switch (term) {
        case TERM_GRAD: return gv;
        case TERM_NEG_GRAD: return -gv;
        case TERM_GRAD_TIMES_B: return __fmul_rn(gv, to_float(b[off[2]]));
        case TERM_GRAD_TIMES_A: return __fmul_rn(gv, to_float(a[off[1]]));
        case TERM_GRAD_OVER_B: return gv / to_float(b[off[2]]);
        default: {
            const float av = to_float(a[off[1]]), bv = to_float(b[off[2]]);
            return -__fmul_rn(gv, av) / __fmul_rn(bv, bv);
        }
    }
}

// One thread per output element, adding its terms in index order: each innermost run of the reduced
// positions on its own, then the run sums in order — the CPU reference's order exactly. The explicit
// round-to-nearest adds keep the compiler from contracting a product into the sum.
template <typename T>
__device__ void reduce_thread_impl(const T* __restrict__ g, const T* __restrict__ a, const T* __restrict__ b,
                                   ReduceArgs r, T* __restrict__ out) {
    // The innermost reduced dimension, found with constant indices only (a dynamic index into the
    // by-value argument struct would copy it to local memory).
    int inner = 1;
    unsigned int step[3] = {0, 0, 0};
#pragma unroll
    for (int d = 0; d < DETKD_MAX_RANK; ++d) {
        if (d == r.reduced_rank - 1) {
            inner = r.reduced_dims[d];
#pragma unroll
            for (int s = 0; s < 3; ++s) step[s] = (unsigned int)r.reduced_strides[s][d];
        }
    }
    const int runs = r.per_output / inner;
    DETKD_GRID_STRIDE(o, r.outputs) {
        unsigned int base[3];
        reduce_offsets<true>((unsigned int)o, r, base);
        float total = 0.0f;
        for (int run = 0; run < runs; ++run) {
            unsigned int off[3];
            reduce_offsets<false>((unsigned int)(run * inner), r, off);
#pragma unroll
            for (int s = 0; s < 3; ++s) off[s] += base[s];
            float run_sum = 0.0f;
            for (int j = 0; j < inner; ++j) {
                run_sum = __fadd_rn(run_sum, term_value(g, a, b, off, r.term));
#pragma unroll
                for (int s = 0; s < 3; ++s) off[s] += step[s];
            }
            total = __fadd_rn(total, run_sum);
        }
        out[o] = from_float<T>(total * r.scale);
    }
}

// One 256-thread block per (output element, chunk of r.chunk terms): each thread strides over the chunk,
// then a fixed-shape tree reduction. With one chunk the block writes the output; otherwise the chunk sum
// goes to partials[o * chunks + c] for reduce_finish. The loop bound is uniform over the block, so every
// thread reaches block_reduce_sum.
template <typename T>
__device__ void reduce_block_impl(const T* __restrict__ g, const T* __restrict__ a, const T* __restrict__ b,
                                  ReduceArgs r, float* __restrict__ partials, T* __restrict__ out) {
    const long long blocks = (long long)r.outputs * r.chunks;
    for (long long blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
        const int o = (int)(blk / r.chunks), c = (int)(blk % r.chunks);
        unsigned int base[3];
        reduce_offsets<true>((unsigned int)o, r, base);
        const long long begin = (long long)c * r.chunk;
        const long long end = min(begin + r.chunk, (long long)r.per_output);
        float local = 0.0f;
        for (long long k = begin + threadIdx.x; k < end; k += blockDim.x) {
            unsigned int off[3];
            reduce_offsets<false>((unsigned int)k, r, off);
#pragma unroll
            for (int s = 0; s < 3; ++s) off[s] += base[s];
            local = __fadd_rn(local, term_value(g, a, b, off, r.term));
        }
        const float total = block_reduce_sum(local);
        if (threadIdx.x == 0) {
            if (r.chunks == 1) {
                out[o] = from_float<T>(total * r.scale);
            } else {
                partials[blk] = total;
            }
        }
    }
}

// out[o] = scale * (chunk sums of o, added in chunk order).
template <typename T>
__device__ void reduce_finish_impl(const float* __restrict__ partials, ReduceArgs r, T* __restrict__ out) {
    DETKD_GRID_STRIDE(o, r.outputs) {
        const float* p = partials + o * r.chunks;
        float total = 0.0f;
        for (int c = 0; c < r.chunks; ++c) total += p[c];
        out[o] = from_float<T>(total * r.scale);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Unary functions, gradients, scaling, accumulation, fills

__device__ __forceinline__ float unary_value(int op, float x, float param) {
    switch (op) {
        case UNARY_NEG: return -x;
        case UNARY_RELU: return (x > 0.0f || isnan(x)) ? x : 0.0f;
        case UNARY_SIGMOID: {
            if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
            const float e = expf(x);
            return e / (1.0f + e);
        }
        case UNARY_EXP: return expf(x);
        case UNARY_LOG: return logf(x);
        case UNARY_SQRT: return sqrtf(x);
        case UNARY_SQUARE: return x * x;
        case UNARY_ABS: return fabsf(x);
        default: return x * param;  // UNARY_SCALE
    }
}

// dL/dx from the saved value s (input or output, UnaryOp::saved) and the upstream gradient g.
__device__ __forceinline__ float unary_grad(int op, float s, float g) {
    switch (op) {
        case UNARY_NEG: return -g;
        case UNARY_RELU: return s > 0.0f ? g : (isnan(s) ? s : 0.0f);
        case UNARY_SIGMOID: return __fmul_rn(__fmul_rn(g, s), 1.0f - s);
        case UNARY_EXP: return g * s;
        case UNARY_LOG: return g / s;
        case UNARY_SQRT: return g / (s + s);
        case UNARY_SQUARE: return (s + s) * g;
        default:  // UNARY_ABS
            return s > 0.0f ? g : (s < 0.0f ? -g : (s == 0.0f ? 0.0f : s));
    }
}

template <typename T>
__device__ void unary_impl(const T* __restrict__ x, int64_t n, int op, float param, T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, n) { out[i] = from_float<T>(unary_value(op, to_float(x[i]), param)); }
}

// `saved` is null for UNARY_NEG, whose gradient reads nothing from the forward pass.
template <typename T>
__device__ void unary_backward_impl(const T* __restrict__ saved, const T* __restrict__ g, int64_t n, int op,
                                    T* __restrict__ out) {
    DETKD_GRID_STRIDE(i, n) {
        const float s = saved != nullptr ? to_float(saved[i]) : 0.0f;
        out[i] = from_float<T>(unary_grad(op, s, to_float(g[i])));
    }
}

// acc += alpha * x, rounded once; no fused multiply-add, so the f32 result equals the CPU reference's.
template <typename T>
__device__ void add_scaled_impl(T* __restrict__ acc, const T* __restrict__ x, int64_t n, float alpha) {
    DETKD_GRID_STRIDE(i, n) { acc[i] = from_float<T>(__fadd_rn(to_float(acc[i]), __fmul_rn(alpha, to_float(x[i])))); }
}

// `value` is already representable in T (rounded on the host), so the conversion is exact.
template <typename T>
__device__ void fill_impl(T* __restrict__ out, int64_t n, float value) {
    const T v = from_float<T>(value);
    DETKD_GRID_STRIDE(i, n) { out[i] = v; }
}

#define DETKD_ELEMENTWISE_INSTANCES(T, SUFFIX)                                                              \
    extern "C" __global__ void binary_##SUFFIX(const T* a, const T* b, BroadcastArgs args, T* out) {        \
        binary_impl<T>(a, b, args, out);                                                                  \
    }                                                                                                     \
    extern "C" __global__ void broadcast_##SUFFIX(const T* g, BroadcastArgs args, float scale, T* out) {    \
        broadcast_impl<T, T>(g, args, scale, out);                                                        \
    }                                                                                                     \
    extern "C" __global__ void reduce_thread_##SUFFIX(const T* g, const T* a, const T* b, ReduceArgs r,     \
                                                      T* out) {                                           \
        reduce_thread_impl<T>(g, a, b, r, out);                                                           \
    }                                                                                                     \
    extern "C" __global__ void reduce_block_##SUFFIX(const T* g, const T* a, const T* b, ReduceArgs r,      \
                                                     float* partials, T* out) {                           \
        reduce_block_impl<T>(g, a, b, r, partials, out);                                                  \
    }                                                                                                     \
    extern "C" __global__ void reduce_finish_##SUFFIX(const float* partials, ReduceArgs r, T* out) {        \
        reduce_finish_impl<T>(partials, r, out);                                                          \
    }                                                                                                     \
    extern "C" __global__ void unary_##SUFFIX(const T* x, int64_t n, int op, float param, T* out) {         \
        unary_impl<T>(x, n, op, param, out);                                                              \
    }                                                                                                     \
    extern "C" __global__ void unary_backward_##SUFFIX(const T* saved, const T* g, int64_t n, int op,       \
                                                       T* out) {                                          \
        unary_backward_impl<T>(saved, g, n, op, out);                                                     \
    }                                                                                                     \
    extern "C" __global__ void add_scaled_##SUFFIX(T* acc, const T* x, int64_t n, float alpha) {            \
        add_scaled_impl<T>(acc, x, n, alpha);                                                             \
    }                                                                                                     \
    extern "C" __global__ void fill_##SUFFIX(T* out, int64_t n, float value) { fill_impl<T>(out, n, value); }

DETKD_ELEMENTWISE_INSTANCES(float, f32)
DETKD_ELEMENTWISE_INSTANCES(__half, f16)
DETKD_ELEMENTWISE_INSTANCES(__nv_bfloat16, bf16)

// An f32 scalar gradient (sum_all / mean_all return f32 for half storage) broadcast into half storage.
extern "C" __global__ void broadcast_f32_to_f16(const float* g, BroadcastArgs args, float scale, __half* out) {
    broadcast_impl<float, __half>(g, args, scale, out);
}
extern "C" __global__ void broadcast_f32_to_bf16(const float* g, BroadcastArgs args, float scale,
                                                 __nv_bfloat16* out) {
    broadcast_impl<float, __nv_bfloat16>(g, args, scale, out);
}
