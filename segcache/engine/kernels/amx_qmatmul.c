/* Block-quantized matmuls on weights in slabs: y (M, N) = x (M, K) @ W (N, K)^T, W in blocks of 32 inputs, on
   AMX integer tiles where the CPU has AMX-INT8, else on AVX512-VNNI alone (`amx` 0). The activations are
   quantized per row and block of 32 to int8 (quantize.c, x ~ dx * qx), and each block's integer dot products
   are summed whole before any float:

       Q4  y = sum_b  (dx_b dw_b) * sum_j q_j qx_j  +  m_b * (dx_b sum_j qx_j)        q in 0..15
       Q8  y = sum_b  (dx_b dw_b) * sum_j q_j qx_j                                    q in -127..127

   For each (row, output) the float arithmetic is this one sequence: per block b in order, one multiply of
   dw_b by dx_b, one multiply-add of the block's integer sum (Q4: and a second multiply-add of m_b), into a
   float32 that starts at 0. The integer sums are exact. So a row's bits depend on its own inputs only: not
   on M, its place among the rows, the thread count nor the split of the outputs (batched decode).

   Two ways to the same integer sums (they give the same bits):
   - no tiles: a 64-byte row of a block's weight tile holds 4 inputs of its 16 outputs, so 8 VNNI products
     with the row's activations broadcast 4 at a time give the 16 sums; with AMX up to AQ_VNNI_ROWS rows,
     without it every row count (aq_rows_vnni);
   - with AMX from AQ_VNNI_ROWS + 1 rows, one tile product per block for 16 rows x 16 outputs x 32 inputs,
     then the scaling per row.
   Measured against the kernels this file replaced (weights in GGUF's own row layout): on a Xeon with AMX
   (2 threads, a 3,072 x 576 projection) 16 rows 0.22 ms against 0.53 ms, one row 0.046 ms against 0.080 ms; the
   49,152 x 576 Q8 output layer at 16 rows 4.5 ms against 13.1 ms. On a Zen 4 EPYC without AMX (VNNI alone), a
   layer's four projections and the output layer: 16 rows 9.9 ms against 19.3 ms for 30 layers, one row 4.25 ms
   against 5.22 ms (docs/weights.md).

   Weights, packed once at load (engine/native.py `pack_q4`, `pack_q8`), per group of 16 outputs (N padded with zero
   outputs to a multiple of 16) and per block of 32 inputs, one record ("slab"):
     Q4  codes[256]  the B tile (8 rows of 64 bytes; row r holds, for each output n, the codes of inputs
                     4r..4r+3) in nibbles: byte j holds tile byte j in its low nibble, tile byte j + 256
                     in its high one
         d[16], m[16] float16                                                           320 bytes
     Q8  codes[512]  the B tile, int8
         d[16] float16                                                                  544 bytes
   Slabs of a group follow one another in block order, so a group's weights are one stream.
*/

#define AQ_OUT 16
#define AQ_IN 32
#define AQ_ROWS 16                     /* rows per tile product */
#define AQ_Q4_SLAB 320
#define AQ_Q8_SLAB 544

#define AQ_PREFETCH 4096               /* bytes ahead of a one-row product's weight stream (it reads from memory) */
#define AQ_VNNI_ROWS 8                 /* up to this many rows, the tile-free path is the faster */

static inline int64_t aq_slab_bytes(int q8) {
    return q8 ? AQ_Q8_SLAB : AQ_Q4_SLAB;
}

/* Tiles: 0, 1 int32 sums (rows x 16); 2, 5 activations (rows x 32 bytes); 3, 4 weights (8 x 64 bytes).
   Blocks alternate between (0, 2, 3) and (1, 5, 4), so one block's product overlaps the other's scaling. */
static void aq_configure(int rows) {
    TileConfig config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int tile = 0; tile < 6; tile++) {
        int is_a = tile == 2 || tile == 5, is_b = tile == 3 || tile == 4;
        config.rows[tile] = is_b ? 8 : rows;
        config.colsb[tile] = is_a ? AQ_IN : 64;
    }
    _tile_loadconfig(&config);
}

/* A row's activations for the tile kernels: q (K int8), and per block dx, xs = dx * sum of q and (`qs` not
   NULL) the sum of q itself. */
static void aq_quantize_row(const void *x, int is_bf16, int64_t at, int64_t K, int8_t *q, float *dx, float *xs,
                            int32_t *qs) {
    for (int64_t b = 0; b < K / AQ_IN; b++) {
        int total;
        quantize_block(x, is_bf16, at + b * AQ_IN, q + b * AQ_IN, &dx[b], &total);
        xs[b] = dx[b] * (float)total;
        if (qs)
            qs[b] = total;
    }
}

static inline void aq_unpack_q4(const uint8_t *codes, uint8_t *tile) {
    const __m512i low = _mm512_set1_epi8(0x0f);
    for (int i = 0; i < 4; i++) {
        __m512i v = _mm512_loadu_si512((const void *)(codes + 64 * i));
        _mm512_store_si512((void *)(tile + 64 * i), _mm512_and_si512(v, low));
        _mm512_store_si512((void *)(tile + 256 + 64 * i), _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
    }
}

/* A block's float16 scales: d, and m for Q4 (zero for Q8). */
static inline void aq_block_scales(int q8, const uint8_t *slab, __m512 *d, __m512 *m) {
    *d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(slab + (q8 ? 512 : 256))));
    *m = q8 ? _mm512_setzero_ps() : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(slab + 288)));
}

/* The float arithmetic of one row and block for 16 outputs, the only place it is written: every path
   accumulates through it, so they give the same bits. */
static inline __m512 aq_step(int q8, __m512 acc, __m512i sums, __m512 d, __m512 m, float dx, float xs) {
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(d, _mm512_set1_ps(dx)), acc);
    return q8 ? acc : _mm512_fmadd_ps(m, _mm512_set1_ps(xs), acc);
}

/* One block's sums (rows x 16 int32 at `sums`) scaled into acc (rows x 16 float32). */
static inline void aq_scale(int q8, const int32_t *sums, const uint8_t *slab, const float *dx, const float *xs,
                            int64_t blocks, int64_t b, int rows, float *acc) {
    __m512 d, m;
    aq_block_scales(q8, slab, &d, &m);
    for (int r = 0; r < rows; r++)
        _mm512_store_ps(acc + 16 * r, aq_step(q8, _mm512_load_ps(acc + 16 * r),
                                               _mm512_load_si512((const void *)(sums + 16 * r)), d, m,
                                               dx[r * blocks + b], xs[r * blocks + b]));
}

/* Rows of 16 float32 accumulators (outputs 16g..) into y (rows of stride N), the outputs past N left out. */
static void aq_store(const float *acc, int rows, int64_t g, int64_t N, void *y, int out_bf16) {
    const int64_t n = g * AQ_OUT, width = N - n < AQ_OUT ? N - n : AQ_OUT;
    const __mmask16 keep = (__mmask16)((1u << width) - 1);
    for (int r = 0; r < rows; r++) {
        __m512 v = _mm512_load_ps(acc + 16 * r);
        if (out_bf16)
            _mm256_mask_storeu_epi16((uint16_t *)y + r * N + n, keep, round_bf16(v));
        else
            _mm512_mask_storeu_ps((float *)y + r * N + n, keep, v);
    }
}

typedef struct {                       /* a thread's scratch: weight tiles, sums, accumulators */
    uint8_t tile[2][512];
    int32_t sums[2][AQ_ROWS * 16];
    float acc[AQ_ROWS * 16];
} __attribute__((aligned(64))) AqScratch;

/* Block BLOCK_'s product into sums tile C, from activation tile A and weight tile B (tile numbers are
   immediates, so each use is its own copy). */
#define AQ_BLOCK(C, A, B, BLOCK_)                                                                           \
    do {                                                                                                    \
        const uint8_t *slab_ = slabs + (BLOCK_) * slab;                                                     \
        if (q8) {                                                                                           \
            _tile_loadd(B, slab_, 64);                                                                      \
        } else {                                                                                            \
            aq_unpack_q4(slab_, s->tile[C]);                                                                \
            _tile_loadd(B, s->tile[C], 64);                                                                 \
        }                                                                                                   \
        _tile_loadd(A, q + (BLOCK_) * AQ_IN, K);                                                            \
        _tile_zero(C);                                                                                      \
        if (q8)                                                                                             \
            _tile_dpbssd(C, A, B);                                                                          \
        else                                                                                                \
            _tile_dpbsud(C, A, B);                                                                          \
        _tile_stored(C, s->sums[C], 64);                                                                    \
    } while (0)

/* Outputs 16g..16g+15 of `rows` (<= 16) rows: activations q (rows x K, row stride K), dx and xs (rows x
   blocks); y rows of stride N, the last group's outputs past N not written. Tiles configured for `rows`. */
static void aq_group(int q8, const int8_t *q, const float *dx, const float *xs, int rows, int64_t K,
                     const uint8_t *slabs, int64_t g, int64_t N, void *y, int out_bf16, AqScratch *s) {
    const int64_t blocks = K / AQ_IN, slab = aq_slab_bytes(q8);
    memset(s->acc, 0, sizeof s->acc);
    int64_t b = 0;
    for (; b + 1 < blocks; b += 2) {
        AQ_BLOCK(0, 2, 3, b);
        AQ_BLOCK(1, 5, 4, b + 1);
        aq_scale(q8, s->sums[0], slabs + b * slab, dx, xs, blocks, b, rows, s->acc);
        aq_scale(q8, s->sums[1], slabs + (b + 1) * slab, dx, xs, blocks, b + 1, rows, s->acc);
    }
    if (b < blocks) {
        AQ_BLOCK(0, 2, 3, b);
        aq_scale(q8, s->sums[0], slabs + b * slab, dx, xs, blocks, b, rows, s->acc);
    }
    aq_store(s->acc, rows, g, N, y, out_bf16);
}

/* aq_scale for a whole tile of 16 rows, the accumulators in registers across the blocks. */
static inline __attribute__((always_inline)) void aq_scale16(int q8, const int32_t *sums, const uint8_t *slab,
                                                             const float *dx, const float *xs, int64_t blocks,
                                                             int64_t b, __m512 acc[16]) {
    __m512 d, m;
    aq_block_scales(q8, slab, &d, &m);
    #pragma GCC unroll 16
    for (int r = 0; r < 16; r++)
        acc[r] = aq_step(q8, acc[r], _mm512_load_si512((const void *)(sums + 16 * r)), d, m, dx[r * blocks + b],
                         xs[r * blocks + b]);
}

static void aq_group16(int q8, const int8_t *q, const float *dx, const float *xs, int64_t K, const uint8_t *slabs,
                       int64_t g, int64_t N, void *y, int out_bf16, AqScratch *s) {
    const int64_t blocks = K / AQ_IN, slab = aq_slab_bytes(q8);
    __m512 acc[16];
    #pragma GCC unroll 16
    for (int r = 0; r < 16; r++)
        acc[r] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < blocks; b += 2) {
        AQ_BLOCK(0, 2, 3, b);
        AQ_BLOCK(1, 5, 4, b + 1);
        aq_scale16(q8, s->sums[0], slabs + b * slab, dx, xs, blocks, b, acc);
        aq_scale16(q8, s->sums[1], slabs + (b + 1) * slab, dx, xs, blocks, b + 1, acc);
    }
    if (b < blocks) {
        AQ_BLOCK(0, 2, 3, b);
        aq_scale16(q8, s->sums[0], slabs + b * slab, dx, xs, blocks, b, acc);
    }
    #pragma GCC unroll 16
    for (int r = 0; r < 16; r++)
        _mm512_store_ps(s->acc + 16 * r, acc[r]);
    aq_store(s->acc, AQ_ROWS, g, N, y, out_bf16);
}

/* A slab's 8 weight-tile rows as VNNI's unsigned operand: Q4 nibbles unpacked, Q8 codes + 128. */
static inline __attribute__((always_inline)) void aq_weight_rows(int q8, const uint8_t *codes, __m512i w[8]) {
    const __m512i low = _mm512_set1_epi8(0x0f), flip = _mm512_set1_epi8((char)0x80);
    #pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        if (q8) {
            w[i] = _mm512_xor_si512(_mm512_loadu_si512((const void *)(codes + 64 * i)), flip);
            w[i + 4] = _mm512_xor_si512(_mm512_loadu_si512((const void *)(codes + 256 + 64 * i)), flip);
        } else {
            __m512i v = _mm512_loadu_si512((const void *)(codes + 64 * i));
            w[i] = _mm512_and_si512(v, low);
            w[i + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
    }
}

/* The same outputs for a few rows without tiles, with the same bits: each 64-byte row of a B tile holds 4
   inputs of 16 outputs, so one VNNI product of it with the row's 4 activations broadcast adds those inputs
   to 16 outputs' sums at once, and 8 of them give the block's 16 integer sums (Q8: its codes + 128 as
   unsigned bytes, less 128 * the activations' sum, exactly). The scaling is aq_step's. */
static inline __m512i aq_block_sums(int q8, const __m512i w[8], const int8_t *q) {
    __m512i sums = _mm512_setzero_si512();
    for (int r = 0; r < 8; r++) {
        int32_t four;
        memcpy(&four, q + 4 * r, 4);
        sums = _mm512_dpbusd_epi32(sums, w[r], _mm512_set1_epi32(four));
    }
    if (q8) {
        int total = 0;
        for (int j = 0; j < AQ_IN; j++)
            total += q[j];
        sums = _mm512_sub_epi32(sums, _mm512_set1_epi32(128 * total));
    }
    return sums;
}

static void aq_group_vnni(int q8, const int8_t *q, const float *dx, const float *xs, int rows, int64_t K,
                          const uint8_t *slabs, int64_t g, int64_t N, void *y, int out_bf16, AqScratch *s) {
    const int64_t blocks = K / AQ_IN, slab = aq_slab_bytes(q8);
    memset(s->acc, 0, (size_t)rows * 16 * sizeof(float));
    __m512 one = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *codes = slabs + b * slab;
        for (int64_t line = 0; line < slab; line += 64)      /* one stream per thread: fetch ahead of it */
            _mm_prefetch((const char *)codes + AQ_PREFETCH + line, _MM_HINT_T0);
        __m512i w[8];
        aq_weight_rows(q8, codes, w);
        if (rows == 1) {                                       /* the accumulator in a register */
            __m512 d, m;
            aq_block_scales(q8, codes, &d, &m);
            one = aq_step(q8, one, aq_block_sums(q8, w, q + b * AQ_IN), d, m, dx[b], xs[b]);
            continue;
        }
        for (int r = 0; r < rows; r++)
            _mm512_store_si512((void *)(s->sums[0] + 16 * r), aq_block_sums(q8, w, q + r * K + b * AQ_IN));
        aq_scale(q8, s->sums[0], codes, dx, xs, blocks, b, rows, s->acc);
    }
    if (rows == 1)
        _mm512_store_ps(s->acc, one);
    aq_store(s->acc, rows, g, N, y, out_bf16);
}

/* CPUs without AMX (AVX512-VNNI alone) run every row count this way: R (<= AQ_VNNI_TILE) rows of a group with
   their accumulators in registers, each block's weights unpacked once for the R rows, and the same integer
   sums (Q8: started at -128 * the activations' sum, `qs`) and aq_step's scaling as every other path. */
#define AQ_VNNI_TILE 8

static inline __attribute__((always_inline)) void
aq_vnni_tile(const int R, int q8, const int8_t *q, const float *dx, const float *xs, const int32_t *qs, int64_t K,
             const uint8_t *slabs, int64_t g, int64_t N, void *y, int out_bf16, float *spill) {
    const int64_t blocks = K / AQ_IN, slab = aq_slab_bytes(q8);
    __m512 acc[AQ_VNNI_TILE];
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *codes = slabs + b * slab;
        for (int64_t line = 0; line < slab; line += 64)
            _mm_prefetch((const char *)codes + AQ_PREFETCH + line, _MM_HINT_T0);
        __m512i w[8];
        aq_weight_rows(q8, codes, w);
        __m512 d, m;
        aq_block_scales(q8, codes, &d, &m);
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const int8_t *a = q + r * K + b * AQ_IN;
            __m512i sums = q8 ? _mm512_set1_epi32(-128 * qs[r * blocks + b]) : _mm512_setzero_si512();
            #pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                int32_t four;
                memcpy(&four, a + 4 * i, 4);
                sums = _mm512_dpbusd_epi32(sums, w[i], _mm512_set1_epi32(four));
            }
            acc[r] = aq_step(q8, acc[r], sums, d, m, dx[r * blocks + b], xs[r * blocks + b]);
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        _mm512_store_ps(spill + 16 * r, acc[r]);
    aq_store(spill, R, g, N, y, out_bf16);
}

/* Groups g0..g1 for M rows on VNNI alone: group by group (its weights stay in cache), AQ_VNNI_TILE rows at a
   time. */
static void aq_rows_vnni(int q8, const int8_t *q, const float *dx, const float *xs, const int32_t *qs, int64_t M,
                         int64_t K, const uint8_t *packed, int64_t g0, int64_t g1, int64_t N, void *y, int out_bf16,
                         AqScratch *s) {
    const int64_t blocks = K / AQ_IN, group_bytes = blocks * aq_slab_bytes(q8);
    for (int64_t g = g0; g < g1; g++) {
        const uint8_t *slabs = packed + g * group_bytes;
        for (int64_t m0 = 0; m0 < M; m0 += AQ_VNNI_TILE) {
            const int rows = M - m0 < AQ_VNNI_TILE ? (int)(M - m0) : AQ_VNNI_TILE;
            const int8_t *qc = q + m0 * K;
            const float *dxc = dx + m0 * blocks, *xsc = xs + m0 * blocks;
            const int32_t *qsc = qs + m0 * blocks;
            void *yc = (char *)y + (out_bf16 ? 2 : 4) * m0 * N;
            switch (rows) {
#define AQ_TILE_CASE(R_) case R_: aq_vnni_tile(R_, q8, qc, dxc, xsc, qsc, K, slabs, g, N, yc, out_bf16, s->acc); break;
                AQ_TILE_CASE(1) AQ_TILE_CASE(2) AQ_TILE_CASE(3) AQ_TILE_CASE(4)
                AQ_TILE_CASE(5) AQ_TILE_CASE(6) AQ_TILE_CASE(7) AQ_TILE_CASE(8)
#undef AQ_TILE_CASE
            }
        }
    }
}

/* Groups g0..g1 of outputs for M rows of prepared activations, in chunks of 16 rows; configures the tiles
   (the caller reconfigures its own after). `amx` 0: aq_rows_vnni (no tile instruction runs). */
static void aq_rows(int amx, int q8, const int8_t *q, const float *dx, const float *xs, const int32_t *qs,
                    int64_t M, int64_t K, const uint8_t *packed, int64_t g0, int64_t g1, int64_t N, void *y,
                    int out_bf16, AqScratch *s) {
    if (!amx) {
        aq_rows_vnni(q8, q, dx, xs, qs, M, K, packed, g0, g1, N, y, out_bf16, s);
        return;
    }
    const int64_t blocks = K / AQ_IN, group_bytes = blocks * aq_slab_bytes(q8);
    for (int64_t m0 = 0; m0 < M; m0 += AQ_ROWS) {
        const int rows = M - m0 < AQ_ROWS ? (int)(M - m0) : AQ_ROWS;
        const int8_t *qc = q + m0 * K;
        const float *dxc = dx + m0 * blocks, *xsc = xs + m0 * blocks;
        void *yc = (char *)y + (out_bf16 ? 2 : 4) * m0 * N;
        if (rows > AQ_VNNI_ROWS)
            aq_configure(rows);
        for (int64_t g = g0; g < g1; g++) {
            const uint8_t *slabs = packed + g * group_bytes;
            if (rows <= AQ_VNNI_ROWS)
                aq_group_vnni(q8, qc, dxc, xsc, rows, K, slabs, g, N, yc, out_bf16, s);
            else if (rows == AQ_ROWS)
                aq_group16(q8, qc, dxc, xsc, K, slabs, g, N, yc, out_bf16, s);
            else
                aq_group(q8, qc, dxc, xsc, rows, K, slabs, g, N, yc, out_bf16, s);
        }
    }
}

/* y = x W^T for M rows of x, row m read from x's row rows[m] (rows NULL: row m), into y (M, N). */
static int aq_matmul(int amx, int q8, const void *x, const int64_t *rows, int is_bf16, int64_t M, int64_t K,
                     const uint8_t *packed, int64_t N, void *y, int threads) {
    if (M <= 0 || K % (q8 ? AQ_IN : 64) || N <= 0)
        return -1;
    const int64_t blocks = K / AQ_IN, groups = (N + AQ_OUT - 1) / AQ_OUT;
    int8_t *q = aligned_alloc(64, (size_t)(M * K + 64));
    float *dx = malloc((size_t)(M * blocks) * sizeof(float)), *xs = malloc((size_t)(M * blocks) * sizeof(float));
    int32_t *qs = malloc((size_t)(M * blocks) * sizeof(int32_t));
    if (!q || !dx || !xs || !qs) {
        free(q); free(dx); free(xs); free(qs);
        return -1;
    }
    for (int64_t m = 0; m < M; m++)
        aq_quantize_row(x, is_bf16, (rows ? rows[m] : m) * K, K, q + m * K, dx + m * blocks, xs + m * blocks,
                        qs + m * blocks);
    threads = threads < 1 ? 1 : threads;
    int ok = 1;
    #pragma omp parallel num_threads(threads) if (threads > 1) reduction(&& : ok)
    {
        AqScratch *s = aligned_alloc(64, sizeof(AqScratch));
        if (s) {
            int parts = omp_get_num_threads(), part = omp_get_thread_num();
            aq_rows(amx, q8, q, dx, xs, qs, M, K, packed, chunk_start(groups, parts, part),
                    chunk_start(groups, parts, part + 1), N, y, is_bf16, s);
            if (amx)
                _tile_release();
        }
        ok = s != NULL;
        free(s);
    }
    free(q); free(dx); free(xs); free(qs);
    return ok ? 0 : -1;
}

/* x (M, K) bfloat16 or float32, contiguous; packed as above for N outputs; y (M, N) in x's dtype; `amx` 1: tile
   products from AQ_VNNI_ROWS + 1 rows (the tile state must be granted), 0: VNNI alone. Returns 0, or -1 if K is
   not a multiple of 32 (64 for Q4) or memory ran out. */
int segcache_slab_q_matmul(int q8, const void *x, int is_bf16, int64_t M, int64_t K, const uint8_t *packed,
                           int64_t N, void *y, int threads, int amx) {
    return aq_matmul(amx, q8, x, NULL, is_bf16, M, K, packed, N, y, threads);
}

/* The same for the M rows of x (.., K) that `rows` names, each product written to the same row of y (.., N):
   a span's short blocks gathered into one call without copying them out and back (engine/llama.py `_Span`).
   The caller keeps the indices within both. */
int segcache_slab_q_matmul_rows(int q8, const void *x, const int64_t *rows, int is_bf16, int64_t M, int64_t K,
                                const uint8_t *packed, int64_t N, void *y, int threads, int amx) {
    size_t size = is_bf16 ? 2 : 4;
    if (!rows || M <= 0)
        return -1;
    char *products = aligned_alloc(64, ((size_t)(M * N) * size + 63) / 64 * 64);
    if (!products)
        return -1;
    int status = aq_matmul(amx, q8, x, rows, is_bf16, M, K, packed, N, products, threads);
    if (status == 0)
        for (int64_t m = 0; m < M; m++)
            memcpy((char *)y + (size_t)rows[m] * N * size, products + (size_t)m * N * size, (size_t)N * size);
    free(products);
    return status;
}
