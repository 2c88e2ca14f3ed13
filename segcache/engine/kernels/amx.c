/* Dense bfloat16 matmul on AMX tiles: y (M, N) bfloat16 = x (M, K) bfloat16 @ W (N, K)^T (+ bias).

   Why our own: oneDNN's bits for a row depend on how many rows the call has, so a prefill forward had
   to run its linears one 128-token block at a time to give each block the bits it gets alone (a cached
   run starts at any block). Here every output is one fixed sequence of tile dot products over K, and
   rows never mix, so a row gets the same bits in a call of any size, at any place, on any thread count:
   a forward can run each linear over all its rows in one call.

   Weights, packed once at load (engine/native.py `AmxWeights`): tiles of 16 outputs x 32 inputs, the
   inputs in pairs as the dot-product instruction reads them (VNNI order):
       packed[n / 16][k / 32][(k % 32) / 2][n % 16][k % 2] = W[n][k]          (1 KB per tile)

   Per block of 32 rows x 32 outputs, four float32 accumulator tiles:
       for each tile of 32 inputs, in order:  C[i][j] += A_i B_j      (A_i: 16 rows, B_j: 16 outputs)
   then C + bias is rounded to bfloat16 (nearest even). Rows past M are read from a zeroed copy, so a
   partial block runs the same instructions on its real rows.

   Threads split the outputs in whole 32-output panels. Each thread walks its panels in groups of
   PANEL_GROUP (576 KB of weights at K = 576: they stay in L2) and, per group, every block of rows of a
   chunk of ROW_CHUNK rows (a block's 32 rows stay in L1 while the group's panels pass). Each output row
   of a block is written as whole 64-byte lines. Measured here, 512 rows on two threads: 1.6-2.0 TFLOP/s
   on a quiet machine (about 2.5 is the tiles' own peak on one core), against oneDNN's 1.2-2.0 in one call;
   and oneDNN in calls of 128 rows, as a prefill had to run it, was 1.5-2x slower than one call.
*/

#include <sys/syscall.h>
#include <unistd.h>

#define AMX_ROWS 16
#define AMX_INPUTS 32                 /* bfloat16 inputs per tile row: 64 bytes */
#define ROW_CHUNK 1024
#define PANEL_GROUP 16
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

/* Asks the kernel for the tile state (once per process); 0 when granted. */
int segcache_amx_init(void) {
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 0 : -1;
}

static void configure_tiles(void) {
    TileConfig config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int tile = 0; tile < 8; tile++) {
        config.rows[tile] = AMX_ROWS;
        config.colsb[tile] = 64;
    }
    _tile_loadconfig(&config);
}

/* 16 float32 lanes -> 16 bfloat16, rounded to nearest even. */
static inline __m256i round_bf16(__m512 v) {
    __m512i bits = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    bits = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16));
}

/* Two accumulator tiles side by side, c0 and c1 (rows, 16) float32, + bias (32,) -> rows of 32 bfloat16:
   one whole 64-byte line per row. Row r goes to y + at[r] * ldy, or y + r * ldy where `at` is NULL. */
static inline void store_amx_rows(const float *c0, const float *c1, int rows, const float *bias, uint16_t *y,
                                  const int64_t *at, int64_t ldy) {
    __m512 b0 = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    __m512 b1 = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
    for (int r = 0; r < rows; r++) {
        __m256i lo = round_bf16(_mm512_add_ps(_mm512_load_ps(c0 + r * 16), b0));
        __m256i hi = round_bf16(_mm512_add_ps(_mm512_load_ps(c1 + r * 16), b1));
        __m512i line = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        _mm512_storeu_si512((void *)(y + (at ? at[r] : r) * ldy), line);
    }
}

/* One block: up to 32 rows of x (row stride ldx elements) against the 32 outputs of panel `w`
   (two tile columns of K/32 tiles each), row r written as store_amx_rows writes it. A block of at most 16
   rows runs one row tile: a row's sums are the same tile products in the same order either way, so its
   bits are too. */
static void amx_block(const uint16_t *x, int64_t ldx, int rows, const uint16_t *w, int64_t ktiles,
                      const float *bias, uint16_t *y, const int64_t *at, int64_t ldy, float *scratch) {
    const uint16_t *w0 = w, *w1 = w + ktiles * 512;
    _tile_zero(0);
    _tile_zero(1);
    if (rows <= AMX_ROWS) {
        for (int64_t kt = 0; kt < ktiles; kt++) {
            _tile_loadd(4, x + kt * AMX_INPUTS, ldx * 2);
            _tile_loadd(6, w0 + kt * 512, 64);
            _tile_loadd(7, w1 + kt * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
        }
        _tile_stored(0, scratch, 64);
        _tile_stored(1, scratch + 256, 64);
        store_amx_rows(scratch, scratch + 256, rows, bias, y, at, ldy);
        return;
    }
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t kt = 0; kt < ktiles; kt++) {
        _tile_loadd(4, x + kt * AMX_INPUTS, ldx * 2);
        _tile_loadd(5, x + AMX_ROWS * ldx + kt * AMX_INPUTS, ldx * 2);
        _tile_loadd(6, w0 + kt * 512, 64);
        _tile_loadd(7, w1 + kt * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, scratch, 64);
    _tile_stored(1, scratch + 256, 64);
    _tile_stored(2, scratch + 512, 64);
    _tile_stored(3, scratch + 768, 64);
    int top = rows < AMX_ROWS ? rows : AMX_ROWS, bottom = rows - top;
    store_amx_rows(scratch, scratch + 256, top, bias, y, at, ldy);
    if (bottom > 0)
        store_amx_rows(scratch + 512, scratch + 768, bottom, bias, at ? y : y + AMX_ROWS * ldy,
                       at ? at + AMX_ROWS : NULL, ldy);
}

/* Whether rows first .. first + n - 1 of the call are one run of x's rows (rows: the call's row indices,
   NULL for 0 .. M - 1). */
static inline int one_run(const int64_t *rows, int64_t first, int64_t n) {
    if (!rows)
        return 1;
    for (int64_t j = 1; j < n; j++)
        if (rows[first + j] != rows[first] + j)
            return 0;
    return 1;
}

/* y = x @ W^T (+ bias) for M rows: row i of the call is x's and y's row rows[i] (rows NULL: row i). The rows
   of each block of 32 are read in place where they are one run of x's rows, else (and for the last, partial
   block) copied once into a zero-padded block: a row's tile products are the same either way. */
static int amx_matmul(const uint16_t *x, int64_t M, int64_t K, const uint16_t *packed, const float *bias,
                      int64_t N, uint16_t *y, const int64_t *rows, int threads) {
    if (M <= 0 || K % AMX_INPUTS || N % 32)
        return -1;
    int64_t ktiles = K / AMX_INPUTS, panels = N / 32, blocks = (M + 31) / 32, staged = 0;
    for (int64_t b = 0; b < blocks; b++) {
        int64_t n = M - b * 32 < 32 ? M - b * 32 : 32;
        staged += n < 32 || !one_run(rows, b * 32, n);
    }
    const uint16_t **sources = malloc((size_t)blocks * sizeof(uint16_t *));
    uint16_t *copies = staged ? aligned_alloc(64, (size_t)(staged * 32 * K) * 2) : NULL;
    if (!sources || (staged && !copies)) {
        free(sources);
        free(copies);
        return -1;
    }
    for (int64_t b = 0, copy = 0; b < blocks; b++) {
        int64_t first = b * 32, n = M - first < 32 ? M - first : 32;
        if (n == 32 && one_run(rows, first, n)) {
            sources[b] = x + (rows ? rows[first] : first) * K;
            continue;
        }
        uint16_t *to = copies + (copy++) * 32 * K;
        memset(to, 0, (size_t)(32 * K) * 2);
        for (int64_t j = 0; j < n; j++)
            memcpy(to + j * K, x + (rows ? rows[first + j] : first + j) * K, (size_t)K * 2);
        sources[b] = to;
    }
    threads = threads < 1 ? 1 : threads;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float scratch[1024] __attribute__((aligned(64)));
        int parts = omp_get_num_threads(), part = omp_get_thread_num();
        int64_t first = panels * part / parts, last = panels * (part + 1) / parts;
        configure_tiles();
        for (int64_t chunk = 0; chunk < M; chunk += ROW_CHUNK) {
            int64_t end = chunk + ROW_CHUNK < M ? chunk + ROW_CHUNK : M;
            for (int64_t group = first; group < last; group += PANEL_GROUP) {
                int64_t stop = group + PANEL_GROUP < last ? group + PANEL_GROUP : last;
                for (int64_t row = chunk; row < end; row += 32) {
                    int n = M - row < 32 ? (int)(M - row) : 32;
                    for (int64_t panel = group; panel < stop; panel++) {
                        const uint16_t *w = packed + panel * 2 * ktiles * 512;
                        const float *b = bias ? bias + panel * 32 : NULL;
                        uint16_t *out = rows ? y + panel * 32 : y + row * N + panel * 32;
                        amx_block(sources[row / 32], K, n, w, ktiles, b, out, rows ? rows + row : NULL, N,
                                  scratch);
                    }
                }
            }
        }
        _tile_release();
    }
    free(sources);
    free(copies);
    return 0;
}

/* x (M, K), packed W (N, K) as above, bias (N,) float32 or NULL, y (M, N); K and N multiples of 32.
   Returns 0, or -1 for a shape the kernel does not take or when memory ran out. */
int segcache_amx_matmul(const uint16_t *x, int64_t M, int64_t K, const uint16_t *packed, const float *bias,
                        int64_t N, uint16_t *y, int threads) {
    return amx_matmul(x, M, K, packed, bias, N, y, NULL, threads);
}

/* The same for the M rows of x (.., K) and y (.., N) that `rows` (M int64) names, in place: a span's blocks
   gathered into one call without copying them out and back (engine/llama.py `_Span`). The caller keeps the
   indices within both. */
int segcache_amx_matmul_rows(const uint16_t *x, const int64_t *rows, int64_t M, int64_t K, const uint16_t *packed,
                             const float *bias, int64_t N, uint16_t *y, int threads) {
    return rows ? amx_matmul(x, M, K, packed, bias, N, y, rows, threads) : -1;
}
