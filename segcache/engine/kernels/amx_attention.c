/* Causal grouped-query attention of a prefill forward on AMX tiles, head_dim 64, bfloat16 in and out.

       q    (T, heads * 64)   rows of the fused projection's output (row stride q_stride elements)
       K, V (kv_heads, capacity, 64)   one layer's KV buffer; positions 0 .. start + T - 1 are filled
       out  (T, heads * 64)   what the output projection reads
       query t (position start + t) of head h attends keys 0 .. start + t of KV head h / (heads / kv_heads)

   Why our own: the library's fused CPU kernel gives a row bits that depend on how many queries and keys
   its call has, so a prefill forward had to run attention one 128-token block at a time. Here a query's
   result depends on its own q and its keys only: it walks the keys in blocks of 64 from position 0, in
   order, with an online softmax in float32 (exact per row: rows never mix in a tile product, and the
   sums over a row run in a fixed lane order). So a forward may attend any number of queries in one call,
   and a cached run still computes every query as an uncached run does.

   Per 16 queries x block of 64 keys:
       S = Q K^T / 8                  a tile per 16 keys, summed over dims 0..31 then 32..63
       keys past a query's position are masked; m = max(m, max S); a = exp(m_old - m)
       P = exp(S - m), l = l a + sum P; acc = acc a + P V      (P rounded to bfloat16 for the tile product)
   then out = acc / l. K and V are first copied into tile order per call (keys past the end are zeros):
       Kt[kv][kb][dt][nt][r][c][p] = K[kv][64 kb + 16 nt + c][32 dt + 2 r + p]
       Vt[kv][kb][half][dt][r][c][p] = V[kv][64 kb + 32 half + 2 r + p][16 dt + c]
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

/* 16 queries (rows t0 .. t0 + 15, those below T) of head h. */
static void attend_tile(const uint16_t *q, int64_t q_stride, const uint16_t *kt, const uint16_t *vt, int64_t h,
                        int64_t heads, int64_t start, int64_t T, int64_t t0, uint16_t *out) {
    uint16_t qs[16 * ATT_DIM] __attribute__((aligned(64)));
    uint16_t ps[2 * 16 * 32] __attribute__((aligned(64)));      /* P as two tiles: keys 0..31, 32..63 */
    float s[16 * KEY_BLOCK] __attribute__((aligned(64)));
    float pv[16 * ATT_DIM] __attribute__((aligned(64)));
    float acc[16 * ATT_DIM] __attribute__((aligned(64)));
    float lsum[16 * 16] __attribute__((aligned(64)));           /* per row, 16 lanes of the softmax sum */
    float m[16] __attribute__((aligned(64))), peak[16] __attribute__((aligned(64)));
    float alpha[16] __attribute__((aligned(64)));
    int rows = T - t0 < 16 ? (int)(T - t0) : 16;
    memset(qs, 0, sizeof qs);
    for (int r = 0; r < rows; r++)
        memcpy(qs + r * ATT_DIM, q + (t0 + r) * q_stride + h * ATT_DIM, ATT_DIM * 2);
    memset(acc, 0, sizeof acc);
    memset(lsum, 0, sizeof lsum);
    for (int r = 0; r < 16; r++)
        m[r] = -INFINITY;
    int64_t last = start + t0 + rows - 1;          /* the highest position of the tile's queries */
    const __m512 scale = _mm512_set1_ps(0.125f);   /* 1 / sqrt(64): a power of two, exact */
    const __m512 minus_inf = _mm512_set1_ps(-INFINITY);
    for (int64_t kb = 0; kb * KEY_BLOCK <= last; kb++) {
        const uint16_t *k = kt + kb * BLOCK_ELEMENTS, *v = vt + kb * BLOCK_ELEMENTS;
        /* S = Q K^T: columns 16 nt .. 16 nt + 15 are keys 16 nt .. 16 nt + 15 */
        tile_products(qs, qs + 32, ATT_DIM * 2, k, s);
        /* the new running max of each row that sees a key of this block; the others keep theirs */
        for (int r = 0; r < 16; r++) {
            int64_t seen = start + t0 + r - kb * KEY_BLOCK + 1;   /* keys of this block the row sees */
            peak[r] = m[r];
            if (r >= rows || seen <= 0)
                continue;
            __m512 top = minus_inf;
            for (int i = 0; i < 4; i++)
                top = _mm512_max_ps(top, _mm512_mask_mov_ps(minus_inf, seen_mask(seen, 16 * i),
                                                            _mm512_mul_ps(_mm512_load_ps(s + r * KEY_BLOCK + 16 * i), scale)));
            peak[r] = fmaxf(m[r], _mm512_reduce_max_ps(top));
        }
        _mm512_store_ps(alpha, exp16(_mm512_sub_ps(_mm512_load_ps(m), _mm512_load_ps(peak))));
        for (int r = 0; r < 16; r++) {
            int64_t seen = start + t0 + r - kb * KEY_BLOCK + 1;
            if (r >= rows || seen <= 0) {
                alpha[r] = 1.0f;
                memset(ps + r * 32, 0, 64);
                memset(ps + 512 + r * 32, 0, 64);
                continue;
            }
            m[r] = peak[r];
            __m512 top = _mm512_set1_ps(peak[r]), total = _mm512_setzero_ps();
            for (int i = 0; i < 4; i++) {
                __m512 e = _mm512_maskz_mov_ps(seen_mask(seen, 16 * i), exp16(_mm512_sub_ps(
                    _mm512_mul_ps(_mm512_load_ps(s + r * KEY_BLOCK + 16 * i), scale), top)));
                total = _mm512_add_ps(total, e);
                store_bf16x16(ps + (i / 2) * 512 + r * 32 + (i % 2) * 16, e);
            }
            _mm512_store_ps(lsum + r * 16, _mm512_fmadd_ps(_mm512_load_ps(lsum + r * 16), _mm512_set1_ps(alpha[r]),
                                                           total));
        }
        /* P V: columns 16 dt .. 16 dt + 15 are dims 16 dt .. 16 dt + 15, summed over keys 0..31 then 32..63 */
        tile_products(ps, ps + 512, 64, v, pv);
        for (int r = 0; r < rows; r++) {
            if (start + t0 + r < kb * KEY_BLOCK)
                continue;                          /* the row sees no key of this block */
            __m512 a = _mm512_set1_ps(alpha[r]);
            for (int d = 0; d < ATT_DIM; d += 16)
                _mm512_store_ps(acc + r * ATT_DIM + d, _mm512_fmadd_ps(_mm512_load_ps(acc + r * ATT_DIM + d), a,
                                                                       _mm512_load_ps(pv + r * ATT_DIM + d)));
        }
    }
    for (int r = 0; r < rows; r++) {
        __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(_mm512_load_ps(lsum + r * 16)));
        for (int d = 0; d < ATT_DIM; d += 16)
            store_bf16x16(out + (t0 + r) * heads * ATT_DIM + h * ATT_DIM + d,
                          _mm512_mul_ps(_mm512_load_ps(acc + r * ATT_DIM + d), inverse));
    }
}

/* Returns 0, or -1 for a shape it does not take (head_dim not 64, heads not a multiple of kv_heads) or when
   memory ran out. */
int segcache_amx_attention(const uint16_t *q, int64_t q_stride, const uint16_t *keys, const uint16_t *values,
                           int64_t capacity, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t start,
                           int64_t T, uint16_t *out, int threads) {
    if (head_dim != ATT_DIM || T <= 0 || kv_heads <= 0 || heads % kv_heads || start + T > capacity)
        return -1;
    int64_t num_keys = start + T, blocks = (num_keys + KEY_BLOCK - 1) / KEY_BLOCK, group = heads / kv_heads;
    int64_t tiles = (T + 15) / 16;
    uint16_t *kt = aligned_alloc(64, (size_t)(kv_heads * blocks * BLOCK_ELEMENTS) * 2);
    uint16_t *vt = aligned_alloc(64, (size_t)(kv_heads * blocks * BLOCK_ELEMENTS) * 2);
    if (!kt || !vt) {
        free(kt);
        free(vt);
        return -1;
    }
    threads = threads < 1 ? 1 : threads;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < kv_heads * blocks; item++)
            pack_kv(keys, values, capacity, num_keys, item / blocks, item % blocks,
                    kt + item * BLOCK_ELEMENTS, vt + item * BLOCK_ELEMENTS);
        configure_tiles();
        /* later query tiles see more keys: hand them out from the last, in turns */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < heads * tiles; item++) {
            int64_t tile = tiles - 1 - item / heads, h = item % heads, kv = h / group;
            attend_tile(q, q_stride, kt + kv * blocks * BLOCK_ELEMENTS, vt + kv * blocks * BLOCK_ELEMENTS, h, heads, start, T,
                        tile * 16, out);
        }
        _tile_release();
    }
    free(kt);
    free(vt);
    return 0;
}
