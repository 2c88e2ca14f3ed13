/* Block-quantized matmuls for decode: y (M, N) = x (M, K) @ W (N, K)^T with W in blocks of 32 inputs.

   Weights, packed once at load (engine/native.py):
     Q4  codes  (N, K/2)  uint8: per block of 32, 16 bytes, byte j = q[j] | q[j + 16] << 4   (GGUF's own layout)
         scales (N, K/64, 4) float16: per pair of blocks (d0, d1, m0, m1);  w = d * q + m,  q in 0..15
     Q8  codes  (N, K)    uint8: q + 128,  q in -127..127
         scales (N, K/32) float16: d;  w = d * q

   Activations are quantized per row, per block of 32, to int8 (x ~ dx * qx, dx = max|x| / 127), then
   each output is a sum over blocks of integer dot products (VNNI: 4 byte products per 32-bit lane):
     Q4  y = sum_b  dx_b * (dw_b * sum_j q_j qx_j  +  m_b * sum_j qx_j)
     Q8  y = sum_b  dx_b * dw_b * sum_j q_j qx_j       (the +128 of the codes is removed in integers)

   Every output y[m, n] is computed by the same sequence of operations whatever M, the row's place in
   the batch, the thread count or the split of N between threads: rows never mix and the lane order of
   the final sum is fixed. So a row's bits do not depend on who shares its forward (batched decode) nor
   on the forward's size.
*/

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define BLOCK 32
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 1024
#endif

static inline uint16_t f32_to_bf16(float f) {     /* round to nearest even, as torch does */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu))
        return (uint16_t)((bits >> 16) | 0x40);    /* NaN stays NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static inline float hsum8(__m256 v) {              /* a fixed order: (0+4, 1+5, 2+6, 3+7), then pairs */
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One block of a row: q (32 int8) and dx = max|x| / 127, as llama.cpp's Q8 activations; `sum` is the sum of
   q. Vectorized, with the arithmetic of one element at a time: an exact max, one multiply by 1 / dx and a
   round half to even per input, an exact integer sum. */
static void quantize_block(const void *x, int is_bf16, int64_t at, int8_t *q, float *dx, int *sum) {
    __m512 v[2];
    for (int half = 0; half < 2; half++) {
        if (is_bf16) {
            __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)x + at + 16 * half));
            v[half] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        } else {
            v[half] = _mm512_loadu_ps((const float *)x + at + 16 * half);
        }
    }
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
    float d = amax / 127.0f, inverse = d != 0.0f ? 1.0f / d : 0.0f;
    __m512i total = _mm512_setzero_si512();
    for (int half = 0; half < 2; half++) {
        __m512 scaled = _mm512_roundscale_ps(_mm512_mul_ps(v[half], _mm512_set1_ps(inverse)),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512i value = _mm512_cvtps_epi32(scaled);
        _mm_storeu_si128((__m128i *)(q + 16 * half), _mm512_cvtepi32_epi8(value));
        total = _mm512_add_epi32(total, value);
    }
    *dx = d;
    *sum = _mm512_reduce_add_epi32(total);
}

/* ---- Q4 -------------------------------------------------------------------------------------------

   A row's activations, per pair of blocks (64 inputs), 128 bytes:
     lo[32]  int8   block 0 inputs 0..15 | block 1 inputs 0..15       (meet the low nibbles)
     hi[32]  int8   block 0 inputs 16..31 | block 1 inputs 16..31    (meet the high nibbles)
     dx[8]   float  per 32-bit lane: the lane's block's dx           (lanes 0-3 block 0, 4-7 block 1)
     xs[8]   float  per lane: dx * the sum of the lane's 8 quantized inputs
*/
typedef struct { int8_t lo[32]; int8_t hi[32]; float dx[8]; float xs[8]; } Q4Act;

static void quantize_row_q4(const void *x, int is_bf16, int64_t at, int64_t K, Q4Act *out) {
    for (int64_t pair = 0; pair < K / 64; pair++) {
        Q4Act *a = &out[pair];
        for (int b = 0; b < 2; b++) {
            int8_t q[BLOCK];
            float dx;
            int total;
            quantize_block(x, is_bf16, at + pair * 64 + b * BLOCK, q, &dx, &total);
            memcpy(a->lo + 16 * b, q, 16);
            memcpy(a->hi + 16 * b, q + 16, 16);
            for (int lane = 0; lane < 4; lane++) {
                int lane_sum = 0;
                for (int j = 0; j < 4; j++)
                    lane_sum += q[4 * lane + j] + q[16 + 4 * lane + j];
                a->dx[4 * b + lane] = dx;
                a->xs[4 * b + lane] = dx * (float)lane_sum;
            }
        }
    }
}

static const int EXPAND_LO[8] = {0, 0, 0, 0, 1, 1, 1, 1};
static const int EXPAND_HI[8] = {2, 2, 2, 2, 3, 3, 3, 3};

static inline void store_out(void *y, int out_bf16, int64_t at, float value) {
    if (out_bf16)
        ((uint16_t *)y)[at] = f32_to_bf16(value);
    else
        ((float *)y)[at] = value;
}

/* The NT x R float32 accumulators of a tile (outputs n.., rows m0..): zeroed, and summed into y. */
static inline __attribute__((always_inline)) void zero_tile(const int NT, const int R, __m256 acc[4][4]) {
    #pragma GCC unroll 4
    for (int t = 0; t < NT; t++)
        #pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            acc[t][r] = _mm256_setzero_ps();
}

static inline __attribute__((always_inline)) void
store_tile(const int NT, const int R, __m256 acc[4][4], void *y, int out_bf16, int64_t n, int64_t m0, int64_t N) {
    #pragma GCC unroll 4
    for (int t = 0; t < NT; t++)
        #pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            store_out(y, out_bf16, (m0 + r) * N + n + t, hsum8(acc[t][r]));
}

/* NT outputs from n, R rows from m0; NT and R are constants at each call, so the loops unroll and the
   NT x R accumulators live in registers. Each weight pair is unpacked once for the R rows. */
static inline __attribute__((always_inline)) void
q4_tile(const int NT, const int R, const Q4Act *act, int64_t pairs, const uint8_t *codes, const uint16_t *scales,
        int64_t n, int64_t m0, void *y, int out_bf16, int64_t N) {
    const __m256i low_mask = _mm256_set1_epi8(0x0f);
    const __m256i expand_lo = _mm256_loadu_si256((const __m256i *)EXPAND_LO);
    const __m256i expand_hi = _mm256_loadu_si256((const __m256i *)EXPAND_HI);
    __m256 acc[4][4];
    zero_tile(NT, R, acc);
    /* The tile's codes are NT rows of `pairs` x 32 bytes, one after another; fetch the next tiles' while
       this one computes (a single thread's stream from memory is the bound at one row otherwise). */
    const char *ahead = (const char *)(codes + (n + NT) * pairs * 32) + PREFETCH_BYTES;
    const char *ahead_scales = (const char *)(scales + (n + NT) * pairs * 4) + PREFETCH_BYTES / 4;
    for (int64_t p = 0; p < pairs; p++) {
        #pragma GCC unroll 4
        for (int t = 0; t < NT; t++)
            _mm_prefetch(ahead + (p * NT + t) * 32, _MM_HINT_T0);
        if ((p & 3) == 0)
            _mm_prefetch(ahead_scales + p * NT * 8, _MM_HINT_T0);
        #pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            __m256i packed = _mm256_loadu_si256((const __m256i *)(codes + ((n + t) * pairs + p) * 32));
            __m256i lo = _mm256_and_si256(packed, low_mask);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_mask);
            __m256 dm = _mm256_castps128_ps256(
                _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(scales + ((n + t) * pairs + p) * 4))));  /* d0 d1 m0 m1 */
            __m256 dw = _mm256_permutevar8x32_ps(dm, expand_lo);
            __m256 mw = _mm256_permutevar8x32_ps(dm, expand_hi);
            #pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const Q4Act *a = &act[(m0 + r) * pairs + p];
                __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, _mm256_load_si256((const __m256i *)a->lo));
                dot = _mm256_dpbusd_epi32(dot, hi, _mm256_load_si256((const __m256i *)a->hi));
                __m256 scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_load_ps(a->dx));
                acc[t][r] = _mm256_fmadd_ps(scaled, dw, acc[t][r]);
                acc[t][r] = _mm256_fmadd_ps(_mm256_load_ps(a->xs), mw, acc[t][r]);
            }
        }
    }
    store_tile(NT, R, acc, y, out_bf16, n, m0, N);
}

/* Outputs n0..n1 of every row: 4 outputs x 1 row at a time for a single row (independent accumulators
   for the FMA latency), 2 outputs x 4 rows otherwise (each unpacked weight serves 4 rows). */
static void q4_rows(const Q4Act *act, int64_t M, int64_t pairs, const uint8_t *codes, const uint16_t *scales,
                    int64_t n0, int64_t n1, void *y, int out_bf16, int64_t N) {
    int64_t n = n0;
    for (; M == 1 && n + 4 <= n1; n += 4)
        q4_tile(4, 1, act, pairs, codes, scales, n, 0, y, out_bf16, N);
    for (; n + 2 <= n1; n += 2) {
        int64_t m0 = 0;
        for (; m0 + 4 <= M; m0 += 4)
            q4_tile(2, 4, act, pairs, codes, scales, n, m0, y, out_bf16, N);
        for (; m0 < M; m0++)
            q4_tile(2, 1, act, pairs, codes, scales, n, m0, y, out_bf16, N);
    }
    for (; n < n1; n++)
        for (int64_t m0 = 0; m0 < M; m0++)
            q4_tile(1, 1, act, pairs, codes, scales, n, m0, y, out_bf16, N);
}

/* ---- Q8 -------------------------------------------------------------------------------------------

   A row's activations, per block (32 inputs), 64 bytes:
     q[32]     int8   the inputs in order
     fix[8]    int32  per lane: -128 * the sum of the lane's 4 inputs (removes the codes' +128 exactly)
   and dx per block in a separate array.
*/
typedef struct { int8_t q[32]; int32_t fix[8]; } Q8Act;

static void quantize_row_q8(const void *x, int is_bf16, int64_t at, int64_t K, Q8Act *out, float *dx) {
    for (int64_t b = 0; b < K / BLOCK; b++) {
        int total;
        quantize_block(x, is_bf16, at + b * BLOCK, out[b].q, &dx[b], &total);
        for (int lane = 0; lane < 8; lane++) {
            int lane_sum = 0;
            for (int j = 0; j < 4; j++)
                lane_sum += out[b].q[4 * lane + j];
            out[b].fix[lane] = -128 * lane_sum;
        }
    }
}

static inline __attribute__((always_inline)) void
q8_tile(const int NT, const int R, const Q8Act *act, const float *dxs, int64_t blocks, const uint8_t *codes,
        const uint16_t *scales, int64_t n, int64_t m0, void *y, int out_bf16, int64_t N) {
    __m256 acc[4][4];
    zero_tile(NT, R, acc);
    for (int64_t b = 0; b < blocks; b++) {
        #pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(codes + ((n + t) * blocks + b) * 32));
            float dw = _cvtsh_ss(scales[(n + t) * blocks + b]);
            #pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const Q8Act *a = &act[(m0 + r) * blocks + b];
                __m256i dot = _mm256_dpbusd_epi32(_mm256_load_si256((const __m256i *)a->fix), q,
                                                  _mm256_load_si256((const __m256i *)a->q));
                __m256 scale = _mm256_set1_ps(dw * dxs[(m0 + r) * blocks + b]);
                acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[t][r]);
            }
        }
    }
    store_tile(NT, R, acc, y, out_bf16, n, m0, N);
}

static void q8_rows(const Q8Act *act, const float *dxs, int64_t M, int64_t blocks, const uint8_t *codes,
                    const uint16_t *scales, int64_t n0, int64_t n1, void *y, int out_bf16, int64_t N) {
    int64_t n = n0;
    for (; M == 1 && n + 4 <= n1; n += 4)
        q8_tile(4, 1, act, dxs, blocks, codes, scales, n, 0, y, out_bf16, N);
    for (; n + 2 <= n1; n += 2) {
        int64_t m0 = 0;
        for (; m0 + 4 <= M; m0 += 4)
            q8_tile(2, 4, act, dxs, blocks, codes, scales, n, m0, y, out_bf16, N);
        for (; m0 < M; m0++)
            q8_tile(2, 1, act, dxs, blocks, codes, scales, n, m0, y, out_bf16, N);
    }
    for (; n < n1; n++)
        for (int64_t m0 = 0; m0 < M; m0++)
            q8_tile(1, 1, act, dxs, blocks, codes, scales, n, m0, y, out_bf16, N);
}

/* ---- entry points ----------------------------------------------------------------------------------
   x (M, K) bfloat16 or float32, contiguous; y (M, N) in the same dtype. Outputs are split between
   `threads` OpenMP threads in chunks of whole outputs. Returns 0, or -1 if K is not a multiple of the
   kernel's unit (64 for Q4, 32 for Q8) or memory ran out. */

static int64_t chunk_start(int64_t N, int parts, int part) {
    return N * part / parts;
}

int segcache_q4_matmul(const void *x, int is_bf16, int64_t M, int64_t K, const uint8_t *codes,
                       const uint16_t *scales, int64_t N, void *y, int threads) {
    if (K % 64 || M <= 0)
        return -1;
    int64_t pairs = K / 64;
    Q4Act *act = aligned_alloc(64, (size_t)(M * pairs) * sizeof(Q4Act));
    if (!act)
        return -1;
    for (int64_t m = 0; m < M; m++)
        quantize_row_q4(x, is_bf16, m * K, K, act + m * pairs);
    threads = threads < 1 ? 1 : threads;
    #pragma omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)
    for (int part = 0; part < threads; part++)
        q4_rows(act, M, pairs, codes, scales, chunk_start(N, threads, part), chunk_start(N, threads, part + 1),
                y, is_bf16, N);
    free(act);
    return 0;
}

int segcache_q8_matmul(const void *x, int is_bf16, int64_t M, int64_t K, const uint8_t *codes,
                       const uint16_t *scales, int64_t N, void *y, int threads) {
    if (K % BLOCK || M <= 0)
        return -1;
    int64_t blocks = K / BLOCK;
    Q8Act *act = aligned_alloc(64, (size_t)(M * blocks) * sizeof(Q8Act));
    float *dx = malloc((size_t)(M * blocks) * sizeof(float));
    if (!act || !dx) {
        free(act);
        free(dx);
        return -1;
    }
    for (int64_t m = 0; m < M; m++)
        quantize_row_q8(x, is_bf16, m * K, K, act + m * blocks, dx + m * blocks);
    threads = threads < 1 ? 1 : threads;
    #pragma omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)
    for (int part = 0; part < threads; part++)
        q8_rows(act, dx, M, blocks, codes, scales, chunk_start(N, threads, part), chunk_start(N, threads, part + 1),
                y, is_bf16, N);
    free(act);
    free(dx);
    return 0;
}
