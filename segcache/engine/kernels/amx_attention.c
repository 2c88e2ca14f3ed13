/* Causal grouped-query attention of a prefill forward on AMX tiles, or on AVX512-BF16 vectors where the CPU
   has no AMX (block_scores_vec, block_values_vec), head_dim 64, bfloat16 in and out.

       q    (T, heads * 64)   rows of the fused projection's output (row stride q_stride elements)
       K, V (kv_heads, capacity, 64)   one layer's KV buffer, filled from position start (or 0) to start + T - 1;
                      the positions before are read from the tree blocks the sequence matched (pages), where
                      the decode step reads them too, so a request's buffer never holds copies of them
       out  (T, heads * 64)   what the output projection reads
       query t (position start + t) of head h attends keys 0 .. start + t of KV head h / (heads / kv_heads)

   Why our own: the library's fused CPU kernel gives a row bits that depend on how many queries and keys
   its call has, so a prefill forward had to run attention one 128-token block at a time. Here a query's
   result depends on its own q and its keys only: it walks the keys in blocks of 64 from position 0, in
   order, with an online softmax in float32 (exact per row: rows never mix in a tile product, and the
   sums over a row run in a fixed lane order). So a forward may attend any number of queries in one call,
   and a cached run still computes every query as an uncached run does.

   Per 16 queries x block of 64 keys (attend_lanes), one query per vector lane:
       S^T = K Q^T                    keys' rows straight from the buffer; a tile per 16 keys, summed over
                                      dims 0..31 then 32..63
       keys past a query's position are masked; m = max(m, max S); a = 2^((m_old - m) log2(e) / 8)
       P = 2^((S - m) log2(e) / 8), l = l a + sum P; acc = acc a + V^T P^T     (P rounded to bfloat16)
   then out = acc / l. Only V is copied per call, transposed into tile order (keys past the end are zeros),
   and the few K blocks that straddle two sources or pass the last key (key_block):
       Vt[kv][kb][half][dt][i][c] = V[kv][64 kb + 32 half + c][16 dt + i]
   With a query per lane the softmax needs no per-row loop and no reduction across a vector: measured here
   (512 queries of one layer at positions 0 and 1,536, on one and two threads, A/B interleaved call by
   call) 0.88-0.96x the time of a query per tile row. A call of very few queries costs more (all 16 lanes
   run): one query over 2,048 keys 0.64 ms against 0.45 ms, 16 queries 0.66 ms against 0.86 ms.

   The decode step (decode.c) keeps the row-per-query layout, K and V packed per block (pack_kv):
       Kt[dt][nt][r][c][p] = K[16 nt + c][32 dt + 2 r + p]
       Vt[half][dt][r][c][p] = V[32 half + 2 r + p][16 dt + c]
*/

#define ATT_DIM 64
#define KEY_BLOCK 64
#define BLOCK_ELEMENTS (8 * 512)          /* 8 tiles of 1 KB per key block, for K and for V */

/* 16 float32 lanes -> bfloat16, nearest even (round_bf16 of amx.c), stored. */
static inline void store_bf16x16(uint16_t *to, __m512 v) {
    _mm256_storeu_si256((__m256i *)to, round_bf16(v));
}

/* A 16 x 16 matrix of 32-bit words, one row per register, transposed in place. */
static inline void transpose_words(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {             /* words 0,1 of rows i, i + 1 interleaved, per 128 bits */
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {             /* then pairs of words of rows i..i + 3 */
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 16; i += 8)               /* then 128-bit lanes of rows i..i + 7 */
        for (int j = 0; j < 4; j++) {
            t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
            t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
        }
    for (int j = 0; j < 8; j++) {                 /* and of all 16 rows */
        r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
    }
}

static void pack_kv(const uint16_t *keys, const uint16_t *values, int64_t capacity, int64_t num_keys,
                    int64_t kv, int64_t kb, uint16_t *kt, uint16_t *vt) {
    const uint16_t *k = keys + kv * capacity * ATT_DIM, *v = values + kv * capacity * ATT_DIM;
    int64_t first = kb * KEY_BLOCK;
    /* K: tile (dt, nt) row r holds dims 32 dt + 2 r, + 1 (one 32-bit word) of keys 16 nt + 0..15: the 16 x 16
       words of the keys' half dt, transposed */
    for (int nt = 0; nt < 4; nt++)
        for (int dt = 0; dt < 2; dt++) {
            __m512i rows[16];
            for (int c = 0; c < 16; c++) {
                int64_t key = first + nt * 16 + c;
                rows[c] = key < num_keys ? _mm512_loadu_si512((const void *)(k + key * ATT_DIM + dt * 32))
                                         : _mm512_setzero_si512();
            }
            transpose_words(rows);
            for (int r = 0; r < 16; r++)
                _mm512_store_si512((void *)(kt + ((dt * 4 + nt) * 16 + r) * 32), rows[r]);
        }
    /* V: tile (half, dt) row r holds dims 16 dt + 0..15 of keys 32 half + 2 r and + 1, interleaved */
    const __m512i pairs = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                           39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    for (int half = 0; half < 2; half++)
        for (int r = 0; r < 16; r++) {
            int64_t key = first + half * 32 + 2 * r;
            __mmask16 even = key < num_keys ? 0xffff : 0, odd = key + 1 < num_keys ? 0xffff : 0;
            for (int dt = 0; dt < 4; dt++) {
                __m256i a = _mm256_maskz_loadu_epi16(even, even ? v + key * ATT_DIM + dt * 16 : v);
                __m256i b = _mm256_maskz_loadu_epi16(odd, odd ? v + (key + 1) * ATT_DIM + dt * 16 : v);
                _mm512_store_si512((void *)(vt + ((half * 4 + dt) * 16 + r) * 32),
                                   _mm512_permutex2var_epi16(_mm512_castsi256_si512(a), pairs,
                                                             _mm512_castsi256_si512(b)));
            }
        }
}

/* out (16, 64) float32 = A B, A the two tiles at a0 and a1 (16 x 32 bfloat16 each, row stride a_stride bytes),
   B at b: eight 1 KB tiles in the order [half][j], half the A tile it pairs with, j the output's 16
   columns 16 j .. 16 j + 15. Each output sums over A's first tile, then its second. */
static inline void tile_products(const uint16_t *a0, const uint16_t *a1, int a_stride, const uint16_t *b,
                                 float *out) {
    _tile_loadd(4, a0, a_stride);
    _tile_loadd(5, a1, a_stride);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
#define PRODUCT(j)                                  \
    _tile_loadd(6, b + (0 * 4 + j) * 512, 64);      \
    _tile_dpbf16ps(j, 4, 6);                        \
    _tile_loadd(6, b + (1 * 4 + j) * 512, 64);      \
    _tile_dpbf16ps(j, 5, 6);
    PRODUCT(0) PRODUCT(1) PRODUCT(2) PRODUCT(3)
#undef PRODUCT
    _tile_stored(0, out, 64 * 4);
    _tile_stored(1, out + 16, 64 * 4);
    _tile_stored(2, out + 32, 64 * 4);
    _tile_stored(3, out + 48, 64 * 4);
}

static inline __mmask16 seen_mask(int64_t seen, int lane0) {     /* lanes lane0.. below `seen` */
    int64_t n = seen - lane0;
    return n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}


/* 2^x on 16 lanes, the lanes outside `keep` zero: 2^n * p(f), n = round(x), f = x - n in [-1/2, 1/2] (exact),
   p of degree 5 with p(0) = 1, fitted to 2^f for the least relative error (< 2e-7 evaluated in float32, as the
   degree-6 Taylor polynomial; one multiply-add fewer). x below -126 is taken as -126: 2^-126 p(f) stays a
   normal number (~1e-38, which the tile products flush to zero), so no lane ever computes a subnormal. */
static inline __m512 exp2_16(__m512 x, __mmask16 keep) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(0.001326472731307149f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.009671512991189957f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.05550733581185341f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24022242426872253f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931470036506653f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(keep, p, n);
}

/* Lanes j of 16 queries (lane 0 at position `first`) that see key position `key`: j >= key - first. */
static inline __mmask16 causal_lanes(int64_t key, int64_t first) {
    int64_t d = key - first;
    return d <= 0 ? 0xffff : d >= 16 ? 0 : (__mmask16)(0xffffu << d);
}

/* Where a prefill's keys and values are: the tree blocks its sequence matched (pages, as the decode step
   reads them), then its buffer. Positions from..to-1; KV head g's row of position p at + (g * head_stride + p -
   origin) * 64 of keys and of values. */
typedef struct { const uint16_t *keys, *values; int64_t from, to, origin, head_stride; } KvRows;

/* The source of position p (sources in position order, the last reaching the last key). */
static inline const KvRows *rows_of(const KvRows *sources, int64_t num_sources, int64_t p) {
    int64_t i = 0;
    while (i + 1 < num_sources && p >= sources[i].to)
        i++;
    return &sources[i];
}

static inline const uint16_t *kv_row(const KvRows *source, int kv, int64_t g, int64_t p) {
    return (kv ? source->values : source->keys) + (g * source->head_stride + p - source->origin) * ATT_DIM;
}

/* V of key block kb of KV head g as the A operand of O^T = V^T P^T: tile (half, dt), row i = dim
   16 dt + i, column c = key 64 kb + 32 half + c (zero past num_keys). Per tile: the 16 key pairs' dims
   interleaved into 16 x 16 words (as pack_kv lays V out), then transposed. */
static void pack_values_t(const KvRows *sources, int64_t num_sources, int64_t g, int64_t num_keys, int64_t kb,
                          uint16_t *vt) {
    const __m512i pairs = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                           39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const uint16_t *row[KEY_BLOCK];
    for (int j = 0; j < KEY_BLOCK; j++) {
        int64_t key = kb * KEY_BLOCK + j;
        row[j] = key < num_keys ? kv_row(rows_of(sources, num_sources, key), 1, g, key) : NULL;
    }
    for (int half = 0; half < 2; half++)
        for (int dt = 0; dt < 4; dt++) {
            __m512i rows[16];
            for (int r = 0; r < 16; r++) {
                const uint16_t *even = row[half * 32 + 2 * r], *odd = row[half * 32 + 2 * r + 1];
                __m256i a = even ? _mm256_loadu_si256((const __m256i *)(even + dt * 16)) : _mm256_setzero_si256();
                __m256i b = odd ? _mm256_loadu_si256((const __m256i *)(odd + dt * 16)) : _mm256_setzero_si256();
                rows[r] = _mm512_permutex2var_epi16(_mm512_castsi256_si512(a), pairs, _mm512_castsi256_si512(b));
            }
            transpose_words(rows);
            for (int i = 0; i < 16; i++)
                _mm512_store_si512((void *)(vt + ((half * 4 + dt) * 16 + i) * 32), rows[i]);
        }
}

/* Key block kb of KV head g as S^T = K Q^T reads it (64 rows of 64 dims): straight from its source when the
   whole block lies in one, else (it straddles two, or passes the last key) copied into `staged` with zeros
   past num_keys, which is then returned. */
static const uint16_t *key_block(const KvRows *sources, int64_t num_sources, int64_t g, int64_t num_keys,
                                 int64_t kb, uint16_t *staged) {
    int64_t lo = kb * KEY_BLOCK;
    const KvRows *source = rows_of(sources, num_sources, lo);
    if (lo + KEY_BLOCK <= source->to)
        return kv_row(source, 0, g, lo);
    for (int j = 0; j < KEY_BLOCK; j++) {
        int64_t key = lo + j;
        if (key < num_keys)
            memcpy(staged + j * ATT_DIM, kv_row(rows_of(sources, num_sources, key), 0, g, key), ATT_DIM * 2);
        else
            memset(staged + j * ATT_DIM, 0, ATT_DIM * 2);
    }
    return staged;
}

/* Whether key block kb needs a staged copy (key_block). */
static inline int key_block_staged(const KvRows *sources, int64_t num_sources, int64_t kb) {
    int64_t lo = kb * KEY_BLOCK;
    return lo + KEY_BLOCK > rows_of(sources, num_sources, lo)->to;
}

/* S^T (64 keys x 16 queries, float32) of one key block: k its 64 rows of 64 dims, qt Q^T's two tiles. */
static inline void block_scores(const uint16_t *qt, const uint16_t *k, float *st) {
    _tile_loadd(4, qt, 64);
    _tile_loadd(5, qt + 512, 64);
    for (int nt = 0; nt < 4; nt++) {              /* keys 16 nt .. 16 nt + 15, summed over dims 0..31, 32..63 */
        _tile_zero(0);
        _tile_loadd(6, k + (nt * 16) * ATT_DIM, ATT_DIM * 2);
        _tile_dpbf16ps(0, 6, 4);
        _tile_loadd(7, k + (nt * 16) * ATT_DIM + 32, ATT_DIM * 2);
        _tile_dpbf16ps(0, 7, 5);
        _tile_stored(0, st + nt * 256, 64);
    }
}

/* O^T (64 dims x 16 queries, float32) of one key block: v its V^T tiles (pack_values_t), pt P^T's two tiles. */
static inline void block_values(const uint16_t *pt, const uint16_t *v, float *ot) {
    _tile_loadd(4, pt, 64);
    _tile_loadd(5, pt + 512, 64);
    for (int dt = 0; dt < 4; dt++) {              /* dims 16 dt .. 16 dt + 15, summed over keys 0..31, 32..63 */
        _tile_zero(0);
        _tile_loadd(6, v + (0 * 4 + dt) * 512, 64);
        _tile_dpbf16ps(0, 6, 4);
        _tile_loadd(7, v + (1 * 4 + dt) * 512, 64);
        _tile_dpbf16ps(0, 7, 5);
        _tile_stored(0, ot + dt * 256, 64);
    }
}

/* The same two products on AVX512-BF16 vectors, for CPUs without AMX (segcache_attention, amx 0). Q^T and P^T
   are laid out as above: row r of a tile holds pair r (dims 2r, 2r + 1; keys 2r, 2r + 1) of the 16 queries,
   one 32-bit word per query. A key's dim pair (or a key pair's value of a dim, from pack_values_pairs) is
   broadcast to all 16 lanes; each lane sums its pairs in a fixed order (dims 0..63; keys 0..63 of the block),
   so a query's bits never depend on the other lanes. */
static inline void block_scores_vec(const uint16_t *qt, const uint16_t *k, float *st) {
    for (int nt = 0; nt < 4; nt++) {              /* keys 16 nt .. 16 nt + 15, one accumulator each */
        const uint16_t *keys = k + nt * 16 * ATT_DIM;
        __m512 acc[16];
        for (int c = 0; c < 16; c++)
            acc[c] = _mm512_setzero_ps();
        for (int p = 0; p < ATT_DIM / 2; p++) {
            __m512bh qp = (__m512bh)_mm512_load_si512((const void *)(qt + p * 32));
            for (int c = 0; c < 16; c++)
                acc[c] = _mm512_dpbf16_ps(acc[c], qp,
                                          (__m512bh)_mm512_set1_epi32(*(const int32_t *)(keys + c * ATT_DIM + 2 * p)));
        }
        for (int c = 0; c < 16; c++)
            _mm512_store_ps(st + (nt * 16 + c) * 16, acc[c]);
    }
}

static inline void block_values_vec(const uint16_t *pt, const uint16_t *v, float *ot) {
    for (int dt = 0; dt < 4; dt++) {              /* dims 16 dt .. 16 dt + 15, one accumulator each */
        __m512 acc[16];
        for (int i = 0; i < 16; i++)
            acc[i] = _mm512_setzero_ps();
        for (int r = 0; r < KEY_BLOCK / 2; r++) {
            __m512bh pp = (__m512bh)_mm512_load_si512((const void *)(pt + r * 32));
            const int32_t *pair = (const int32_t *)(v + r * 2 * ATT_DIM + dt * 32);
            for (int i = 0; i < 16; i++)
                acc[i] = _mm512_dpbf16_ps(acc[i], pp, (__m512bh)_mm512_set1_epi32(pair[i]));
        }
        for (int i = 0; i < 16; i++)
            _mm512_store_ps(ot + (dt * 16 + i) * 16, acc[i]);
    }
}

/* A block's two products on tiles (`amx`) or on vectors. */
static inline void block_scores_on(int amx, const uint16_t *qt, const uint16_t *k, float *st) {
    if (amx)
        block_scores(qt, k, st);
    else
        block_scores_vec(qt, k, st);
}

static inline void block_values_on(int amx, const uint16_t *pt, const uint16_t *v, float *ot) {
    if (amx)
        block_values(pt, v, ot);
    else
        block_values_vec(pt, v, ot);
}

/* V of key block kb of KV head g for block_values_vec: key pair r's 64 dims, each a word (key 2r's value,
   key 2r + 1's), at v + r * 128 (zero past num_keys). */
static void pack_values_pairs(const KvRows *sources, int64_t num_sources, int64_t g, int64_t num_keys, int64_t kb,
                              uint16_t *v) {
    const __m512i pairs = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                           39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    for (int r = 0; r < KEY_BLOCK / 2; r++) {
        int64_t key = kb * KEY_BLOCK + 2 * r;
        const uint16_t *even = key < num_keys ? kv_row(rows_of(sources, num_sources, key), 1, g, key) : NULL;
        const uint16_t *odd = key + 1 < num_keys ? kv_row(rows_of(sources, num_sources, key + 1), 1, g, key + 1) : NULL;
        for (int dt = 0; dt < 4; dt++) {
            __m256i a = even ? _mm256_loadu_si256((const __m256i *)(even + dt * 16)) : _mm256_setzero_si256();
            __m256i b = odd ? _mm256_loadu_si256((const __m256i *)(odd + dt * 16)) : _mm256_setzero_si256();
            _mm512_store_si512((void *)(v + r * 2 * ATT_DIM + dt * 32),
                               _mm512_permutex2var_epi16(_mm512_castsi256_si512(a), pairs, _mm512_castsi256_si512(b)));
        }
    }
}

/* acc = acc * alpha + O^T on the lanes that saw the block (a dim per row, a query per lane). */
static inline void add_block(float *acc, const float *ot, __m512 alpha, __mmask16 seen) {
    for (int d = 0; d < ATT_DIM; d++)
        _mm512_store_ps(acc + d * 16, _mm512_mask_fmadd_ps(_mm512_load_ps(acc + d * 16), seen, alpha,
                                                           _mm512_load_ps(ot + d * 16)));
}

/* 16 queries (rows t0 .. t0 + 15, those below T) of head h, one query per lane: every vector below holds a
   key's (or a dim's) value for the 16 queries, so the softmax runs down the lanes, with no per-row loops
   and no reductions across a vector, and a query's lane never meets another's.

       S^T (64 keys x 16) = K Q^T      K straight from the buffer (rows of 16 keys x 32 dims), Q^T packed once
       per lane: m' = max(m, max S over the keys it sees), a = 2^((m - m') c), c = log2(e) / 8
       P^T = 2^(S c - m' c) on the keys it sees, l = l a + sum P (in key order, in four interleaved sums)
       O^T (64 dims x 16) = V^T P^T    P rounded to bfloat16; acc = acc a + O^T
   A lane that sees no key of a block keeps m, l and acc as they were, so how many blocks its tile walks
   never shows in its bits. `kblocks`: where each key block's 64 rows are (key_block). */
static void attend_lanes(const uint16_t *q, int64_t q_stride, const uint16_t *const *kblocks, const uint16_t *vt,
                         int64_t h, int64_t heads, int64_t start, int64_t T, int64_t t0, uint16_t *out, int amx) {
    uint16_t qt[2 * 512] __attribute__((aligned(64)));         /* Q^T: dims 0..31, 32..63 */
    uint16_t pt[2 * 512] __attribute__((aligned(64)));         /* P^T: keys 0..31, 32..63 */
    float st[2][KEY_BLOCK * 16] __attribute__((aligned(64)));   /* S^T, a key per row: this block's, the next's */
    float ot[2][ATT_DIM * 16] __attribute__((aligned(64)));     /* O^T, a dim per row: this block's, the last's */
    float acc[ATT_DIM * 16] __attribute__((aligned(64)));
    int rows = T - t0 < 16 ? (int)(T - t0) : 16;
    for (int dt = 0; dt < 2; dt++) {
        __m512i r[16];
        for (int c = 0; c < 16; c++)
            r[c] = c < rows ? _mm512_loadu_si512((const void *)(q + (t0 + c) * q_stride + h * ATT_DIM + dt * 32))
                            : _mm512_setzero_si512();
        transpose_words(r);
        for (int i = 0; i < 16; i++)
            _mm512_store_si512((void *)(qt + dt * 512 + i * 32), r[i]);
    }
    memset(acc, 0, sizeof acc);
    const __m512 c = _mm512_set1_ps(0.18033688011112042f);     /* log2(e) / sqrt(64) */
    const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                           23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    __m512 m = _mm512_set1_ps(-INFINITY), l = _mm512_setzero_ps();
    int64_t first = start + t0, last = first + rows - 1, blocks = last / KEY_BLOCK + 1;
    /* The tile unit works beside the vector units: block kb + 1's scores are issued before block kb's softmax,
       and block kb's O^T is added to acc after block kb + 1's softmax, so neither waits on the other. Every
       block's arithmetic, and the order of the additions into acc, are those of one block after another. */
    block_scores_on(amx, qt, kblocks[0], st[0]);
    __m512 alpha_last = _mm512_setzero_ps();
    __mmask16 seen_last = 0;
    for (int64_t kb = 0; kb < blocks; kb++) {
        const float *s = st[kb & 1];
        if (kb + 1 < blocks)
            block_scores_on(amx, qt, kblocks[kb + 1], st[(kb + 1) & 1]);
        int64_t key0 = kb * KEY_BLOCK;
        int whole = key0 + KEY_BLOCK - 1 <= first;               /* every lane sees every key */
        __mmask16 seen = causal_lanes(key0, first);
        /* four running maxima and four sums, in registers: as arrays indexed by j & 3 they went through the
           stack on every key, each add waiting on the last one's store (0.77x the time of a call without) */
        __m512 top0 = m, top1 = m, top2 = m, top3 = m;
#define LANES(i) (whole ? (__mmask16)0xffff : causal_lanes(key0 + j + (i), first))
        for (int j = 0; j < KEY_BLOCK; j += 4) {
            top0 = _mm512_mask_max_ps(top0, LANES(0), top0, _mm512_load_ps(s + j * 16));
            top1 = _mm512_mask_max_ps(top1, LANES(1), top1, _mm512_load_ps(s + (j + 1) * 16));
            top2 = _mm512_mask_max_ps(top2, LANES(2), top2, _mm512_load_ps(s + (j + 2) * 16));
            top3 = _mm512_mask_max_ps(top3, LANES(3), top3, _mm512_load_ps(s + (j + 3) * 16));
        }
        __m512 peak = _mm512_max_ps(_mm512_max_ps(top0, top1), _mm512_max_ps(top2, top3));
        __m512 alpha = exp2_16(_mm512_mul_ps(_mm512_sub_ps(m, peak), c), 0xffff);
        __m512 shift = _mm512_mul_ps(peak, c);
        __m512 sum0 = _mm512_setzero_ps(), sum1 = sum0, sum2 = sum0, sum3 = sum0;
        for (int j = 0; j < KEY_BLOCK; j += 4) {
            __m512 e0 = exp2_16(_mm512_fmsub_ps(_mm512_load_ps(s + j * 16), c, shift), LANES(0));
            __m512 e1 = exp2_16(_mm512_fmsub_ps(_mm512_load_ps(s + (j + 1) * 16), c, shift), LANES(1));
            __m512 e2 = exp2_16(_mm512_fmsub_ps(_mm512_load_ps(s + (j + 2) * 16), c, shift), LANES(2));
            __m512 e3 = exp2_16(_mm512_fmsub_ps(_mm512_load_ps(s + (j + 3) * 16), c, shift), LANES(3));
            sum0 = _mm512_add_ps(sum0, e0);
            sum1 = _mm512_add_ps(sum1, e1);
            sum2 = _mm512_add_ps(sum2, e2);
            sum3 = _mm512_add_ps(sum3, e3);
            /* keys j, j + 1 and j + 2, j + 3 as two rows of P^T's tile: their values interleaved per query */
            uint16_t *row = pt + (j / 32) * 512 + ((j % 32) / 2) * 32;
            _mm512_store_si512((void *)row, _mm512_permutexvar_epi16(pairs, (__m512i)_mm512_cvtne2ps_pbh(e1, e0)));
            _mm512_store_si512((void *)(row + 32),
                               _mm512_permutexvar_epi16(pairs, (__m512i)_mm512_cvtne2ps_pbh(e3, e2)));
        }
#undef LANES
        __m512 total = _mm512_add_ps(_mm512_add_ps(sum0, sum1), _mm512_add_ps(sum2, sum3));
        l = _mm512_mask_fmadd_ps(l, seen, alpha, total);
        m = _mm512_mask_mov_ps(m, seen, peak);
        if (kb > 0)                                              /* the last block's O^T, stored by now */
            add_block(acc, ot[(kb - 1) & 1], alpha_last, seen_last);
        block_values_on(amx, pt, vt + kb * BLOCK_ELEMENTS, ot[kb & 1]);
        alpha_last = alpha;
        seen_last = seen;
    }
    add_block(acc, ot[(blocks - 1) & 1], alpha_last, seen_last);
    __m512 inverse = _mm512_div_ps(_mm512_set1_ps(1.0f), l);
    for (int dt = 0; dt < 4; dt++) {                            /* dims 16 dt .. 16 dt + 15, a query per row */
        __m512i r[16];
        for (int i = 0; i < 16; i++)
            r[i] = _mm512_castps_si512(_mm512_mul_ps(_mm512_load_ps(acc + (dt * 16 + i) * 16), inverse));
        transpose_words(r);
        for (int j = 0; j < rows; j++)
            store_bf16x16(out + (t0 + j) * heads * ATT_DIM + h * ATT_DIM + dt * 16, _mm512_castsi512_ps(r[j]));
    }
}

/* keys, values (kv_heads, capacity, 64): one layer of the sequence's buffer. pages: NULL, or num_pages rows
   of 5 int64 (address, origin, from, to, capacity) as the decode step takes them (decode.c `Page`), tree
   blocks (L, 2, kv_heads, capacity, 64) read at `layer`, covering positions 0 .. the last one's `to` in order;
   the buffer holds the positions after them. The values are the same wherever they are read from, and so
   are the bits. Returns 0, or -1 for a shape it does not take (head_dim not 64, heads not a multiple of
   kv_heads), pages that do not tile positions 0 .. start - 1 from 0, or when memory ran out. `amx`: the
   products on AMX tiles (1), or on AVX512-BF16 vectors for CPUs without AMX (0; other bits than the tiles',
   the same independence of a query from the call). */
int segcache_attention(const uint16_t *q, int64_t q_stride, const uint16_t *keys, const uint16_t *values,
                       int64_t capacity, const int64_t *pages, int64_t num_pages, int64_t layer, int64_t heads,
                       int64_t kv_heads, int64_t head_dim, int64_t start, int64_t T, uint16_t *out, int threads,
                       int amx) {
    if (head_dim != ATT_DIM || T <= 0 || kv_heads <= 0 || heads % kv_heads || start + T > capacity
        || num_pages < 0 || (num_pages && !pages))
        return -1;
    int64_t num_keys = start + T, blocks = (num_keys + KEY_BLOCK - 1) / KEY_BLOCK;
    int64_t group = heads / kv_heads, tiles = (T + 15) / 16, num_sources = num_pages + 1;
    KvRows *sources = malloc((size_t)num_sources * sizeof(KvRows));
    if (!sources)
        return -1;
    int64_t covered = 0;
    for (int64_t p = 0; p < num_pages; p++) {
        const int64_t *e = pages + 5 * p;
        const uint16_t *base = (const uint16_t *)(uintptr_t)e[0];
        if (e[2] != covered || e[3] <= e[2] || e[3] > start || e[1] > e[2] || e[3] - e[1] > e[4]) {
            free(sources);
            return -1;
        }
        sources[p] = (KvRows){base + layer * 2 * kv_heads * e[4] * ATT_DIM,
                              base + (layer * 2 + 1) * kv_heads * e[4] * ATT_DIM, e[2], e[3], e[1], e[4]};
        covered = e[3];
    }
    sources[num_pages] = (KvRows){keys, values, covered, num_keys, 0, capacity};
    int64_t staged = 0;
    for (int64_t kb = 0; kb < blocks; kb++)
        staged += key_block_staged(sources, num_sources, kb);
    uint16_t *vt = aligned_alloc(64, (size_t)(kv_heads * blocks * BLOCK_ELEMENTS) * 2);
    uint16_t *copies = staged ? aligned_alloc(64, (size_t)(kv_heads * staged * KEY_BLOCK * ATT_DIM) * 2) : NULL;
    const uint16_t **kblocks = malloc((size_t)(kv_heads * blocks) * sizeof(uint16_t *));
    if (!vt || (staged && !copies) || !kblocks) {
        free(vt); free(copies); free(kblocks); free(sources);
        return -1;
    }
    for (int64_t g = 0, copy = 0; g < kv_heads; g++)
        for (int64_t kb = 0; kb < blocks; kb++) {
            uint16_t *to = key_block_staged(sources, num_sources, kb) ? copies + (copy++) * KEY_BLOCK * ATT_DIM : NULL;
            kblocks[g * blocks + kb] = key_block(sources, num_sources, g, num_keys, kb, to);
        }
    threads = threads < 1 ? 1 : threads;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < kv_heads * blocks; item++)
            (amx ? pack_values_t : pack_values_pairs)(sources, num_sources, item / blocks, num_keys, item % blocks,
                                                      vt + item * BLOCK_ELEMENTS);
        if (amx)
            configure_tiles();
        /* later query tiles see more keys: hand them out from the last, in turns */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < heads * tiles; item++) {
            int64_t tile = tiles - 1 - item / heads, h = item % heads, g = h / group;
            attend_lanes(q, q_stride, kblocks + g * blocks, vt + g * blocks * BLOCK_ELEMENTS, h, heads, start, T,
                         tile * 16, out, amx);
        }
        if (amx)
            _tile_release();
    }
    free(vt);
    free(copies);
    free(kblocks);
    free(sources);
    return 0;
}
