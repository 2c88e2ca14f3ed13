/* One decode step of a Llama-family model on block-quantized weights: B sequences, every layer, one call.

   Why one call: with the projections on the block kernels, a step's arithmetic is a few milliseconds,
   and the ~80 small tensor ops per layer around them (norms, rotary, KV writes, per-sequence attention)
   cost as much again in dispatch. Here they are loops over a few hundred floats, inside one OpenMP
   region whose threads split each projection's outputs and attention's (sequence, KV head, piece of 512
   positions) items, or on AMX its (KV head, piece) items over all sequences (attend_piece_amx); each
   sequence's cached prefix is read from the tree's blocks (page tables).

   Per layer, for each sequence b (the residual stream x stays float32 across the layers):
       h = rmsnorm(x) ; qkv = h W_qkv ; rotate q, k at position p_b ; cache_b[layer] k|v at p_b
       a = softmax(q k_{0..p_b} / sqrt(D)) v_{0..p_b}        (per head, grouped-query)
       x += a W_o ; h = rmsnorm(x) ; x += (silu(h W_gate) * h W_up) W_down
   then logits = rmsnorm(x) W_head.

   Every row's arithmetic is the same whatever B, the row's place and the thread count (rows never mix;
   each attention piece is one thread's fixed loop over fixed positions, and the pieces merge in position
   order), so a row decoded in a batch gets the bits it gets alone. One translation unit with the block kernels, whose static functions it reuses.
*/

#include "quantize.c"

#include <omp.h>

#include "amx.c"

#include "amx_qmatmul.c"

typedef struct {
    int64_t num_layers, hidden, heads, kv_heads, head_dim, inter, vocab, max_positions;
    float eps;
    int head_q8;                    /* output layer: 1 = Q8 blocks, 0 = Q4 */
    int layers_q8;                  /* layer projections: 1 = Q8 blocks (int8), 0 = Q4 (int4) */
    int kv_bf16;                    /* KV buffers and logits: 1 = bfloat16, 0 = float32 */
    int block_attention;            /* attention on packed key blocks (attend_piece_amx; bfloat16 KV, head size 64):
                                       1 with AMX tile products, 2 with AVX512-BF16 vector products; 0: attend_piece */
    int slabs;                      /* the projections, in amx_qmatmul.c's slabs (codes only): 1 with tile products,
                                       2 on VNNI alone (no AMX) */
    const int64_t *input_norm;      /* per layer: address of (hidden,) float32 weights */
    const int64_t *post_norm;
    const int64_t *qkv_codes, *o_codes, *gate_up_codes, *down_codes;   /* per layer: addresses of slabs */
    const float *final_norm;
    const uint8_t *head_codes;
    const float *cos_table, *sin_table;   /* (max_positions, head_dim); sin's first half negated */
} Model;

#define AT(array, index, type) ((const type *)(uintptr_t)(array)[index])

static inline __m512 load16_kv(const void *base, int64_t at, int bf16) {
    if (bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + at))), 16));
    return _mm512_loadu_ps((const float *)base + at);
}

/* exp on 16 lanes: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], p the degree-6 Taylor polynomial
   (relative error < 2e-7); lanes below -87 give 0. */
static inline __m512 exp16(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* silu(g) = g / (1 + e^-g) on 16 lanes. */
static inline __m512 silu16(__m512 g) {
    return _mm512_mul_ps(g, _mm512_div_ps(_mm512_set1_ps(1.0f),
                                          _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g)))));
}

/* h = x / sqrt(mean(x^2) + eps) * w for one row, in a fixed order. */
static void rms_norm_row(const float *x, const float *w, float *h, int64_t n, float eps) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    float inverse = 1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)n + eps);
    __m512 scale = _mm512_set1_ps(inverse);
    for (int64_t i = 0; i < n; i += 16)
        _mm512_storeu_ps(h + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), scale), _mm512_loadu_ps(w + i)));
}

/* Rotate one head's vector in place: v * cos + (v2, v1) * signed_sin. */
static void rotate(float *v, const float *cos, const float *sin, int64_t d) {
    int64_t half = d / 2;
    float out[256];
    for (int64_t i = 0; i < d; i++) {
        float swapped = i < half ? v[i + half] : v[i - half];
        float a = v[i] * cos[i], b = swapped * sin[i];
        out[i] = a + b;
    }
    memcpy(v, out, (size_t)d * sizeof(float));
}

/* Where a sequence's keys and values are: pages in position order, each a (L, 2, H_kv, capacity, D)
   tensor that holds position `origin` at index 0 and is read for positions from..to-1. A cached prefix
   is read from the tree's own blocks, which the sequences that share it share (they stay in the CPU's
   caches while each sequence of a batch reads them), the rest from the sequence's buffer. The values are
   the same either way (a buffer holds copies of the blocks), and so are the bits. */
typedef struct { int64_t base, origin, from, to, capacity; } Page;

/* Where a page's rows of KV head g start (kv: 0 keys, 1 values; row j is at + j * D), and the positions
   from..to-1 of it that fall in lo..hi-1. */
static inline int64_t page_rows(const Model *m, const Page *page, int64_t layer, int kv, int64_t g, int64_t lo,
                                int64_t hi, int64_t *from, int64_t *to) {
    *from = page->from > lo ? page->from : lo;
    *to = page->to < hi ? page->to : hi;
    return ((layer * 2 + kv) * m->kv_heads + g) * page->capacity * m->head_dim - page->origin * m->head_dim;
}

/* Grouped-query attention of one sequence's query heads of KV head g, in pieces of PIECE positions at
   fixed offsets from position 0, so that a long context's work splits between threads whatever their
   number and each piece's arithmetic depends on its positions only (never on the batch or the threads).
   A piece computes, per query head r of the group, its largest score, the sum of exp(score - largest)
   and the exp-weighted sum of the values; `merge` joins the pieces in position order. Each key and value
   row is read and widened to float32 once for all the group's query heads. */
#define MAX_GROUP 8
#define PIECE 512
static void attend_piece(const Model *m, const float *q, const Page *pages, int64_t num_pages, int64_t layer,
                         int64_t g, int64_t lo, int64_t hi, float *part, float *scores) {
    const int64_t D = m->head_dim, group = m->heads / m->kv_heads, n = hi - lo, chunks = D / 16;
    const float scale = 1.0f / sqrtf((float)D);
    const float *qg = q + g * group * D;
    for (int64_t p = 0; p < num_pages; p++) {
        const void *cache = (const void *)(uintptr_t)pages[p].base;
        int64_t from, to;
        const int64_t keys = page_rows(m, &pages[p], layer, 0, g, lo, hi, &from, &to);
        for (int64_t j = from; j < to; j++) {
            __m512 k[8];
            for (int64_t c = 0; c < chunks; c++)
                k[c] = load16_kv(cache, keys + j * D + c * 16, m->kv_bf16);
            for (int64_t r = 0; r < group; r++) {
                __m512 acc = _mm512_setzero_ps();
                for (int64_t c = 0; c < chunks; c++)
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(qg + r * D + c * 16), k[c], acc);
                scores[r * PIECE + j - lo] = _mm512_reduce_add_ps(acc) * scale;
            }
        }
    }
    for (int64_t r = 0; r < group; r++) {          /* part[r] = (largest, sum of exps, D weighted values) */
        float *s = scores + r * PIECE, *head = part + r * (D + 2);
        __m512 top = _mm512_set1_ps(-INFINITY);
        for (int64_t j = 0; j < n; j += 16) {
            __mmask16 live = n - j >= 16 ? 0xffff : (__mmask16)((1u << (n - j)) - 1);
            top = _mm512_mask_max_ps(top, live, top, _mm512_maskz_loadu_ps(live, s + j));
        }
        head[0] = _mm512_reduce_max_ps(top);
        __m512 peak = _mm512_set1_ps(head[0]), total = _mm512_setzero_ps();
        for (int64_t j = 0; j < n; j += 16) {
            __mmask16 live = n - j >= 16 ? 0xffff : (__mmask16)((1u << (n - j)) - 1);
            __m512 e = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, s + j), peak)));
            _mm512_mask_storeu_ps(s + j, live, e);
            total = _mm512_add_ps(total, e);
        }
        head[1] = _mm512_reduce_add_ps(total);
    }
    __m512 acc[MAX_GROUP][8];
    for (int64_t r = 0; r < group; r++)
        for (int64_t c = 0; c < chunks; c++)
            acc[r][c] = _mm512_setzero_ps();
    for (int64_t p = 0; p < num_pages; p++) {
        const void *cache = (const void *)(uintptr_t)pages[p].base;
        int64_t from, to;
        const int64_t values = page_rows(m, &pages[p], layer, 1, g, lo, hi, &from, &to);
        for (int64_t j = from; j < to; j++) {
            __m512 v[8];
            for (int64_t c = 0; c < chunks; c++)
                v[c] = load16_kv(cache, values + j * D + c * 16, m->kv_bf16);
            for (int64_t r = 0; r < group; r++) {
                __m512 w = _mm512_set1_ps(scores[r * PIECE + j - lo]);
                for (int64_t c = 0; c < chunks; c++)
                    acc[r][c] = _mm512_fmadd_ps(w, v[c], acc[r][c]);
            }
        }
    }
    for (int64_t r = 0; r < group; r++)
        for (int64_t c = 0; c < chunks; c++)
            _mm512_storeu_ps(part + r * (D + 2) + 2 + c * 16, acc[r][c]);
}

/* The pieces of one (sequence, KV head), in position order, into its query heads' outputs. */
static void merge(const Model *m, const float *parts, int64_t pieces, int64_t g, float *out) {
    const int64_t D = m->head_dim, group = m->heads / m->kv_heads, stride = group * (D + 2);
    for (int64_t r = 0; r < group; r++) {
        float top = -INFINITY;
        for (int64_t p = 0; p < pieces; p++)
            top = parts[p * stride + r * (D + 2)] > top ? parts[p * stride + r * (D + 2)] : top;
        float total = 0.0f;
        float *o = out + (g * group + r) * D;
        for (int64_t i = 0; i < D; i++)
            o[i] = 0.0f;
        for (int64_t p = 0; p < pieces; p++) {
            const float *head = parts + p * stride + r * (D + 2);
            float weight = _mm512_cvtss_f32(exp16(_mm512_set1_ps(head[0] - top)));
            total += head[1] * weight;
            for (int64_t i = 0; i < D; i++)
                o[i] += head[2 + i] * weight;
        }
        const float inverse = 1.0f / total;
        for (int64_t i = 0; i < D; i++)
            o[i] *= inverse;
    }
}

static void store_kv(void *cache, int64_t at, const float *v, int64_t n, int bf16) {
    for (int64_t i = 0; i < n; i++) {
        if (bf16)
            ((uint16_t *)cache)[at + i] = f32_to_bf16(v[i]);
        else
            ((float *)cache)[at + i] = v[i];
    }
}

#include "amx_attention.c"

/* Decode attention on AMX tiles, where the CPU has them (bfloat16 KV, head size 64), or else on AVX512-BF16
   vectors (vec_products: the same packed blocks and products, other bits): one (KV head g, piece)
   of every sequence of the step that reaches the piece, in one work item. A query row's arithmetic: its
   piece's keys in blocks of 64 at fixed positions, S = q K^T and P V as tile products (a query per tile
   row, K and V packed by amx_attention.c `pack_kv`), an online float32 softmax; the piece's (largest, sum, values) go to `merge` as
   attend_piece's do. A block that lies inside one page (the tree block it was copied from, or the buffer)
   is packed into tile order straight from it; a block that straddles pages is first copied row by row.
   Sequences that read a block from the same page (agents that share a prefix) share its packing and its
   tile products, so a shared prefix is packed once per step and its keys are multiplied with up to 16
   query rows at once. Rows never mix in a tile product, and every other step is the row's own vector
   code, so a row gets the same bits in any batch, in any row of a tile, as alone. */
typedef struct {
    float lsum[16];                 /* 16 lanes of the softmax sum, added up at the end of the piece */
    float acc[ATT_DIM];
    float m;                        /* the largest score so far */
} __attribute__((aligned(64))) RowState;

typedef struct {                    /* one thread's scratch, for a step of B sequences */
    RowState *rows;                 /* B * group */
    uint16_t *q;                    /* B * group rows of 64 bfloat16 */
    uint16_t *keys, *values;        /* a straddling block's 64 rows, copied */
    uint16_t *kt, *vt;              /* the block in tile order */
    const Page **source;            /* per sequence: the page its current block lies in, or NULL */
    const uint16_t **packed;        /* per sequence: its current block already in tile order, or NULL */
    char *done;
} AmxScratch;

/* tile_products on AVX512-BF16 vectors, for CPUs without AMX: rows 0..rows-1 of out (16 x 64 float32) = A B,
   A's two tiles at a0 and a1 (row stride a_stride bytes), B's eight tiles at b as tile_products reads them.
   Row i, column 16 j + c: the words of A's row (a pair of bfloat16 each) broadcast against B's rows, summed in
   a fixed order (a0's words 0..15, then a1's), four rows at a time sharing B's loads; a row's bits never
   depend on the rows beside it. `ahead` (or NULL): the B that the next call reads, fetched toward L2 line for
   line as this B is read, so that a sequence's own blocks (read once a step, from memory) stream in while
   the one before them computes; without it each block's lines wait for memory in turn. */
static inline void vec_products(const uint16_t *a0, const uint16_t *a1, int a_stride, const uint16_t *b, float *out,
                                int rows, const uint16_t *ahead) {
    for (int i = 0; i < rows; i += 4) {
        __m512 acc[4][4];
        const int32_t *row[2][4];
        for (int k = 0; k < 4; k++) {
            int at = i + k < rows ? i + k : rows - 1;            /* past the last row: the last again, not stored */
            row[0][k] = (const int32_t *)((const char *)a0 + (int64_t)at * a_stride);
            row[1][k] = (const int32_t *)((const char *)a1 + (int64_t)at * a_stride);
            for (int j = 0; j < 4; j++)
                acc[k][j] = _mm512_setzero_ps();
        }
        for (int half = 0; half < 2; half++)
            for (int r = 0; r < 16; r++) {
                __m512bh w[4];
                for (int j = 0; j < 4; j++)
                    w[j] = (__m512bh)_mm512_load_si512((const void *)(b + (half * 4 + j) * 512 + r * 32));
                if (ahead && i == 0)
                    for (int j = 0; j < 4; j++)
                        _mm_prefetch((const char *)(ahead + (half * 4 + j) * 512 + r * 32), _MM_HINT_T1);
                for (int k = 0; k < 4; k++) {
                    __m512bh x = (__m512bh)_mm512_set1_epi32(row[half][k][r]);
                    for (int j = 0; j < 4; j++)
                        acc[k][j] = _mm512_dpbf16_ps(acc[k][j], w[j], x);
                }
            }
        for (int k = 0; k < 4 && i + k < rows; k++)
            for (int j = 0; j < 4; j++)
                _mm512_store_ps(out + (i + k) * 64 + j * 16, acc[k][j]);
    }
}

/* tile_products (`amx`, all 16 rows) or vec_products (`rows` rows, fetching `ahead`). */
static inline void products(int amx, const uint16_t *a0, const uint16_t *a1, int a_stride, const uint16_t *b,
                            float *out, int rows, const uint16_t *ahead) {
    if (amx)
        tile_products(a0, a1, a_stride, b, out);
    else
        vec_products(a0, a1, a_stride, b, out, rows, ahead);
}

/* One block of 64 keys (kt, vt in tile order) for up to 16 query rows: row r's q (64 bfloat16) at q[r], its
   state st[r], the block's first seen[r] keys the ones it sees (1..64). `amx`: the products on tiles, else on
   vectors (vec_products), which fetch the next call's block `ahead` (its K tiles, then its V tiles; or NULL). */
static void decode_block(uint16_t *const *q, RowState *const *st, const int *seen, int rows, const uint16_t *kt,
                         const uint16_t *vt, int amx, const uint16_t *ahead) {
    uint16_t qs[16 * ATT_DIM] __attribute__((aligned(64)));
    uint16_t ps[2 * 16 * 32] __attribute__((aligned(64)));      /* P as two tiles: keys 0..31, 32..63 */
    float s[16 * KEY_BLOCK] __attribute__((aligned(64)));
    float pv[16 * ATT_DIM] __attribute__((aligned(64)));
    float alpha[16];
    if (amx) {                                    /* the tiles read all 16 rows; vec_products only `rows` */
        memset(qs, 0, sizeof qs);
        memset(ps, 0, sizeof ps);
    }
    for (int r = 0; r < rows; r++)
        memcpy(qs + r * ATT_DIM, q[r], ATT_DIM * 2);
    products(amx, qs, qs + 32, ATT_DIM * 2, kt, s, rows, ahead);
    const __m512 scale = _mm512_set1_ps(0.125f), minus_inf = _mm512_set1_ps(-INFINITY);
    for (int r = 0; r < rows; r++) {
        __m512 top = minus_inf;
        for (int i = 0; i < 4; i++)
            top = _mm512_max_ps(top, _mm512_mask_mov_ps(minus_inf, seen_mask(seen[r], 16 * i),
                                                        _mm512_mul_ps(_mm512_load_ps(s + r * KEY_BLOCK + 16 * i), scale)));
        const float peak = fmaxf(st[r]->m, _mm512_reduce_max_ps(top));
        alpha[r] = _mm512_cvtss_f32(exp16(_mm512_set1_ps(st[r]->m - peak)));
        st[r]->m = peak;
        __m512 big = _mm512_set1_ps(peak), total = _mm512_setzero_ps();
        for (int i = 0; i < 4; i++) {
            __m512 e = _mm512_maskz_mov_ps(seen_mask(seen[r], 16 * i), exp16(_mm512_sub_ps(
                _mm512_mul_ps(_mm512_load_ps(s + r * KEY_BLOCK + 16 * i), scale), big)));
            total = _mm512_add_ps(total, e);
            store_bf16x16(ps + (i / 2) * 512 + r * 32 + (i % 2) * 16, e);
        }
        _mm512_store_ps(st[r]->lsum, _mm512_fmadd_ps(_mm512_load_ps(st[r]->lsum), _mm512_set1_ps(alpha[r]), total));
    }
    products(amx, ps, ps + 512, 64, vt, pv, rows, ahead ? ahead + BLOCK_ELEMENTS : NULL);
    for (int r = 0; r < rows; r++) {
        __m512 a = _mm512_set1_ps(alpha[r]);
        for (int d = 0; d < ATT_DIM; d += 16)
            _mm512_store_ps(st[r]->acc + d, _mm512_fmadd_ps(_mm512_load_ps(st[r]->acc + d), a,
                                                            _mm512_load_ps(pv + r * ATT_DIM + d)));
    }
}

/* The page of a sequence's table (num_pages entries, its buffer last) that holds positions lo..lo+63, or NULL. */
static const Page *page_of_block(const Page *pages, int64_t num_pages, int64_t lo) {
    for (int64_t p = 0; p < num_pages; p++)
        if (pages[p].from <= lo && lo + KEY_BLOCK <= pages[p].to)
            return &pages[p];
    return NULL;
}

/* Where KV head g's rows (kv 0: keys, 1: values) of layer `layer` hold position `position` in a page. */
static inline const uint16_t *page_row(const Model *m, const Page *page, int64_t layer, int kv, int64_t g,
                                       int64_t position) {
    return (const uint16_t *)(uintptr_t)page->base
           + (((layer * 2 + kv) * m->kv_heads + g) * page->capacity + position - page->origin) * ATT_DIM;
}

/* The page of `pages` that holds position p, or NULL. */
static const Page *page_holding(const Page *pages, int64_t num_pages, int64_t p) {
    for (int64_t i = 0; i < num_pages; i++)
        if (pages[i].from <= p && p < pages[i].to)
            return &pages[i];
    return NULL;
}

/* Rows lo..lo+live-1 of KV head g of layer `layer`, each from the page that holds it, copied into keys and
   values (64 bfloat16 per row): a block that straddles pages, ready for pack_kv. */
static void copy_block_rows(const Model *m, const Page *pages, int64_t num_pages, int64_t layer, int64_t g,
                            int64_t lo, int64_t live, uint16_t *keys, uint16_t *values) {
    for (int64_t j = 0; j < live; j++) {
        const Page *holder = page_holding(pages, num_pages, lo + j);
        memcpy(keys + j * ATT_DIM, page_row(m, holder, layer, 0, g, lo + j), ATT_DIM * 2);
        memcpy(values + j * ATT_DIM, page_row(m, holder, layer, 1, g, lo + j), ATT_DIM * 2);
    }
}

/* Key block lo..lo+63 of a sequence for every layer and KV head in tile order, as decode_block reads it: for
   layer l and KV head g, K's tiles (pack_kv's kt) then V's at (l * kv_heads + g) * 2 * BLOCK_ELEMENTS. */
static inline const uint16_t *packed_tiles(const Model *m, int64_t block, int64_t layer, int64_t g) {
    return (const uint16_t *)(uintptr_t)block + (layer * m->kv_heads + g) * 2 * BLOCK_ELEMENTS;
}

/* Packs key block lo..lo+63 of a sequence into `out` (packed_tiles' layout), read through `num_pages` page rows
   (address, origin, from, to, capacity: (layers, 2, kv_heads, capacity, 64) tensors) that cover it, on
   `threads`. A sequence whose matched blocks are packed once reads them so in every decode step
   (segcache_decode_step's `packs`), instead of packing them again in each. Returns 0, or -1 when the pages
   do not cover the block. */
int segcache_pack_block(const int64_t *pages, int64_t num_pages, int64_t layers, int64_t kv_heads, int64_t lo,
                        uint16_t *out, int threads) {
    Model m = {0};
    m.kv_heads = kv_heads;
    m.head_dim = ATT_DIM;
    const Page *table = (const Page *)pages;               /* a Page is these five int64 */
    for (int64_t p = 0; p < num_pages; p++)
        if (table[p].origin > table[p].from || table[p].to - table[p].origin > table[p].capacity)
            return -1;
    for (int64_t j = 0; j < KEY_BLOCK; j++)
        if (!page_holding(table, num_pages, lo + j))
            return -1;
    threads = threads < 1 ? 1 : threads;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        uint16_t keys[KEY_BLOCK * ATT_DIM] __attribute__((aligned(64)));
        uint16_t values[KEY_BLOCK * ATT_DIM] __attribute__((aligned(64)));
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < layers * kv_heads; item++) {
            int64_t layer = item / kv_heads, g = item % kv_heads;
            copy_block_rows(&m, table, num_pages, layer, g, lo, KEY_BLOCK, keys, values);
            uint16_t *kt = (uint16_t *)packed_tiles(&m, (int64_t)(uintptr_t)out, layer, g);
            pack_kv(keys, values, 0, KEY_BLOCK, 0, 0, kt, kt + BLOCK_ELEMENTS);
        }
    }
    return 0;
}

/* The packed block that attend_piece_amx reads after sequence b's block at lo (`packed`, or NULL), if it is
   packed: a later sequence's other block at lo, else the first one at lo + 64 before `end`; or NULL. */
static const uint16_t *block_after(const Model *m, const AmxScratch *w, const int64_t *positions, int64_t B,
                                   int64_t b, int64_t lo, int64_t end, const uint16_t *packed, const int64_t *packs,
                                   const int64_t *pack_first, int64_t layer, int64_t g) {
    for (int64_t c = b + 1; c < B; c++)
        if (!w->done[c] && w->packed[c] && w->packed[c] != packed)
            return w->packed[c];
    const int64_t k = lo / KEY_BLOCK + 1;
    for (int64_t c = 0; packs && lo + KEY_BLOCK < end && c < B; c++)
        if (positions[c] >= lo + KEY_BLOCK && k < pack_first[c + 1] - pack_first[c] && packs[pack_first[c] + k])
            return packed_tiles(m, packs[pack_first[c] + k], layer, g);
    return NULL;
}

static void attend_piece_amx(const Model *m, const float *qkv, int64_t qkv_n, const Page *table,
                             const int64_t *first, const int64_t *positions, int64_t B, int64_t layer, int64_t g,
                             int64_t piece, const int64_t *item_start, const int64_t *packs,
                             const int64_t *pack_first, float *partials, AmxScratch *w) {
    const int64_t group = m->heads / m->kv_heads, D = ATT_DIM;
    int64_t end = piece * PIECE;                   /* the piece's blocks run from piece * PIECE to `end` */
    for (int64_t b = 0; b < B; b++) {
        if (positions[b] < piece * PIECE)
            continue;
        int64_t reach = positions[b] + 1 < (piece + 1) * PIECE ? positions[b] + 1 : (piece + 1) * PIECE;
        end = reach > end ? reach : end;
        for (int64_t r = 0; r < group; r++) {
            const float *q = qkv + b * qkv_n + (g * group + r) * D;
            for (int64_t d = 0; d < D; d += 16)
                _mm256_storeu_si256((__m256i *)(w->q + (b * group + r) * D + d), round_bf16(_mm512_loadu_ps(q + d)));
            RowState *st = &w->rows[b * group + r];
            memset(st, 0, sizeof *st);
            st->m = -INFINITY;
        }
    }
    for (int64_t lo = piece * PIECE; lo < end; lo += KEY_BLOCK) {
        for (int64_t b = 0; b < B; b++) {
            w->done[b] = positions[b] < lo;        /* sequences that do not reach the block take no part */
            w->source[b] = w->done[b] ? NULL : page_of_block(table + first[b], first[b + 1] - first[b], lo);
            int64_t k = lo / KEY_BLOCK;
            w->packed[b] = !w->done[b] && packs && k < pack_first[b + 1] - pack_first[b] && packs[pack_first[b] + k]
                           ? packed_tiles(m, packs[pack_first[b] + k], layer, g) : NULL;
        }
        for (int64_t b = 0; b < B; b++) {
            if (w->done[b])
                continue;
            const Page *page = w->source[b];
            const uint16_t *packed = w->packed[b], *kt = w->kt, *vt = w->vt;
            const uint16_t *ahead = block_after(m, w, positions, B, b, lo, end, packed, packs, pack_first, layer, g);
            if (packed) {                          /* packed once for every step (segcache_pack_block) */
                kt = packed;
                vt = packed + BLOCK_ELEMENTS;
            } else if (page) {
                pack_kv(page_row(m, page, layer, 0, g, lo), page_row(m, page, layer, 1, g, lo), 0, KEY_BLOCK, 0, 0,
                        w->kt, w->vt);
            } else {                               /* the block straddles pages or ends at the position */
                int64_t live = positions[b] + 1 - lo < KEY_BLOCK ? positions[b] + 1 - lo : KEY_BLOCK;
                copy_block_rows(m, table + first[b], first[b + 1] - first[b], layer, g, lo, live, w->keys, w->values);
                pack_kv(w->keys, w->values, 0, live, 0, 0, w->kt, w->vt);
            }
            /* this sequence's rows, and those of every later sequence that reads the same packed block, or the
               block from the same page */
            uint16_t *q[16];
            RowState *st[16];
            int seen[16], rows = 0;
            for (int64_t c = b; c < B; c++) {
                if (w->done[c] || (c != b && (packed ? w->packed[c] != packed
                                              : w->packed[c] || !page || !w->source[c]
                                                || w->source[c]->base != page->base
                                                || w->source[c]->origin != page->origin
                                                || w->source[c]->capacity != page->capacity)))
                    continue;
                w->done[c] = 1;
                for (int64_t r = 0; r < group; r++) {
                    q[rows] = w->q + (c * group + r) * D;
                    st[rows] = &w->rows[c * group + r];
                    seen[rows] = positions[c] + 1 - lo < KEY_BLOCK ? (int)(positions[c] + 1 - lo) : KEY_BLOCK;
                    if (++rows == 16) {
                        decode_block(q, st, seen, rows, kt, vt, m->block_attention == 1, ahead);
                        rows = 0;
                    }
                }
            }
            if (rows)
                decode_block(q, st, seen, rows, kt, vt, m->block_attention == 1, ahead);
        }
    }
    for (int64_t b = 0; b < B; b++) {
        if (positions[b] < piece * PIECE)
            continue;
        const int64_t pieces = (item_start[b + 1] - item_start[b]) / m->kv_heads;
        float *part = partials + (item_start[b] + g * pieces + piece) * group * (D + 2);
        for (int64_t r = 0; r < group; r++) {
            const RowState *st = &w->rows[b * group + r];
            part[r * (D + 2)] = st->m;
            part[r * (D + 2) + 1] = _mm512_reduce_add_ps(_mm512_load_ps(st->lsum));
            memcpy(part + r * (D + 2) + 2, st->acc, D * sizeof(float));
        }
    }
}

/* A step's quantized activations: int8 rows with per-block dx, xs and sums, for the widest input of the
   model; each thread's slab scratch; `tiles`: the products on AMX tiles (Model.slabs 1). */
typedef struct { float *dx; int8_t *qa; float *xs; int32_t *qs; AqScratch *aq; int tiles; } Acts;

/* Row b of the activations (K inputs from `src`). */
static void prepare_row(const float *src, int64_t b, int64_t K, const Acts *a) {
    aq_quantize_row(src, 0, 0, K, a->qa + b * K, a->dx + b * (K / 32), a->xs + b * (K / 32), a->qs + b * (K / 32));
}

/* Thread `part` of `parts`'s share of the outputs of y (B, N) = the prepared rows times the weights (Q8 slabs
   where `q8`, else Q4). */
static void project(int q8, const Acts *a, int64_t B, int64_t K, const uint8_t *codes, int part, int parts, void *y,
                    int out_bf16, int64_t N) {
    const int64_t groups = (N + AQ_OUT - 1) / AQ_OUT;
    aq_rows(a->tiles, q8, a->qa, a->dx, a->xs, a->qs, B, K, codes, chunk_start(groups, parts, part),
            chunk_start(groups, parts, part + 1), N, y, out_bf16, a->aq + part);
}

/* x (B, hidden) float32: the step's input embeddings, overwritten. caches: B addresses of (L, 2, H_kv,
   capacity, D) buffers; positions: where each sequence's token goes. pages: for each sequence, page_counts[b]
   pages (5 int64 each: address, origin, from, to, capacity) that cover its positions 0..from of the next
   page, in order, ahead of its own buffer, which covers the rest; NULL: every sequence reads its buffer
   alone. packs: NULL, or for each sequence pack_counts[b] addresses (0: none) of its key blocks 0, 1, ..
   packed by segcache_pack_block from its pages and buffer, which the block attention reads instead of packing
   those blocks (they must lie before the sequence's position). logits (B, vocab) in the KV dtype. Returns 0, or
   -1 for shapes the kernels do not take, pages that do not tile a sequence's positions, packs past its
   position, or when memory ran out. */
int segcache_decode_step(const Model *m, float *x, int64_t B, const int64_t *caches, const int64_t *capacities,
                         const int64_t *positions, const int64_t *pages, const int64_t *page_counts,
                         const int64_t *packs, const int64_t *pack_counts, void *logits, int threads) {
    const int64_t C = m->hidden, I = m->inter, D = m->head_dim, H = m->heads, Hkv = m->kv_heads;
    const int64_t qkv_n = (H + 2 * Hkv) * D;
    if (C % 64 || I % 64 || D % 16 || D > 128 || (H * D) % 64 || H % Hkv || H / Hkv > MAX_GROUP || B <= 0
        || (m->block_attention && (!m->kv_bf16 || D != ATT_DIM)) || (m->slabs != 1 && m->slabs != 2))
        return -1;
    for (int64_t b = 0; b < B; b++)
        if (positions[b] >= capacities[b] || positions[b] >= m->max_positions || positions[b] < 0)
            return -1;
    /* Each sequence's page table: its pages, then its own buffer from where they end. */
    int64_t total_pages = B;
    for (int64_t b = 0; pages && b < B; b++)
        total_pages += page_counts[b];
    Page *table = malloc((size_t)total_pages * sizeof(Page));
    int64_t *first = malloc((size_t)(B + 1) * sizeof(int64_t));
    if (!table || !first) {
        free(table); free(first);
        return -1;
    }
    int64_t at = 0, given = 0, tiled = 1, pack_first[B + 1];
    pack_first[0] = 0;
    for (int64_t b = 0; b < B; b++) {
        first[b] = at;
        int64_t covered = 0;
        for (int64_t p = 0; pages && p < page_counts[b]; p++, given++) {
            const int64_t *e = pages + 5 * given;
            Page page = {e[0], e[1], e[2], e[3], e[4]};
            tiled &= page.from == covered && page.to > page.from && page.to <= positions[b]
                     && page.origin <= page.from && page.to - page.origin <= page.capacity;
            covered = page.to;
            table[at++] = page;
        }
        table[at++] = (Page){caches[b], 0, covered, positions[b] + 1, capacities[b]};
        pack_first[b + 1] = pack_first[b] + (packs ? pack_counts[b] : 0);
        tiled &= !packs || (pack_counts[b] >= 0 && pack_counts[b] * KEY_BLOCK <= positions[b]);
    }
    first[B] = at;
    if (!tiled) {
        free(table); free(first);
        return -1;
    }
    threads = threads < 1 ? 1 : threads;
    const int64_t group = H / Hkv;
    /* Attention work items: (sequence, KV head, piece of PIECE positions); item_start[b] is sequence b's first. */
    int64_t *item_start = malloc((size_t)(B + 1) * sizeof(int64_t));
    int64_t items = 0;
    for (int64_t b = 0; item_start && b < B; b++) {
        item_start[b] = items;
        items += Hkv * ((positions[b] + PIECE) / PIECE);
    }
    if (item_start)
        item_start[B] = items;
    float *partials = malloc((size_t)(items > 0 ? items : 1) * group * (D + 2) * sizeof(float));
    float *h = aligned_alloc(64, (size_t)(B * C) * sizeof(float));
    float *qkv = aligned_alloc(64, (size_t)(B * qkv_n) * sizeof(float));
    float *attn = aligned_alloc(64, (size_t)(B * H * D) * sizeof(float));
    float *gu = aligned_alloc(64, (size_t)(B * 2 * I) * sizeof(float));
    float *tmp = aligned_alloc(64, (size_t)(B * C) * sizeof(float));
    int64_t widest = (I > H * D ? I : H * D) > C ? (I > H * D ? I : H * D) : C;
    Acts acts = {malloc((size_t)(B * widest / 32) * sizeof(float)), aligned_alloc(64, (size_t)(B * widest + 64)),
                 malloc((size_t)(B * widest / 32) * sizeof(float)), malloc((size_t)(B * widest / 32) * sizeof(int32_t)),
                 aligned_alloc(64, (size_t)threads * sizeof(AqScratch)), m->slabs == 1};
    float *scores = malloc((size_t)(threads * group * PIECE) * sizeof(float));
    int64_t most_pieces = 0;                      /* the AMX attention's items: (KV head, piece) */
    for (int64_t b = 0; b < B; b++)
        most_pieces = (positions[b] + PIECE) / PIECE > most_pieces ? (positions[b] + PIECE) / PIECE : most_pieces;
    AmxScratch *amx = m->block_attention ? calloc((size_t)threads, sizeof(AmxScratch)) : NULL;
    int amx_ok = !m->block_attention || amx != NULL;
    for (int t = 0; amx && t < threads; t++) {
        amx[t] = (AmxScratch){aligned_alloc(64, (size_t)(B * group) * sizeof(RowState)),
                              aligned_alloc(64, (size_t)(B * group * ATT_DIM) * 2),
                              aligned_alloc(64, KEY_BLOCK * ATT_DIM * 2), aligned_alloc(64, KEY_BLOCK * ATT_DIM * 2),
                              aligned_alloc(64, BLOCK_ELEMENTS * 2), aligned_alloc(64, BLOCK_ELEMENTS * 2),
                              malloc((size_t)B * sizeof(Page *)), malloc((size_t)B * sizeof(uint16_t *)),
                              malloc((size_t)B)};
        amx_ok &= amx[t].rows && amx[t].q && amx[t].keys && amx[t].values && amx[t].kt && amx[t].vt && amx[t].source
                  && amx[t].packed && amx[t].done;
    }
    int ok = h && qkv && attn && gu && tmp && acts.dx && acts.qa && acts.xs && acts.qs && acts.aq && scores
             && item_start && partials && amx_ok;
    const int q8 = m->layers_q8;
    if (ok) {
        #pragma omp parallel num_threads(threads)
        {
            const int parts = omp_get_num_threads(), me = omp_get_thread_num();
            float *my_scores = scores + me * group * PIECE;
            if (m->block_attention == 1)
                configure_tiles();
            for (int64_t l = 0; l < m->num_layers; l++) {
                #pragma omp for schedule(static)
                for (int64_t b = 0; b < B; b++) {
                    rms_norm_row(x + b * C, AT(m->input_norm, l, float), h + b * C, C, m->eps);
                    prepare_row(h + b * C, b, C, &acts);
                }
                project(q8, &acts, B, C, AT(m->qkv_codes, l, uint8_t), me, parts, qkv, 0, qkv_n);
                #pragma omp barrier
                #pragma omp for schedule(static)
                for (int64_t b = 0; b < B; b++) {
                    const float *cos = m->cos_table + positions[b] * D, *sin = m->sin_table + positions[b] * D;
                    float *row = qkv + b * qkv_n;
                    for (int64_t head = 0; head < H + Hkv; head++)
                        rotate(row + head * D, cos, sin, D);
                    void *cache = (void *)(uintptr_t)caches[b];
                    for (int64_t g = 0; g < Hkv; g++) {
                        int64_t slot = positions[b] * D;
                        store_kv(cache, ((l * 2 + 0) * Hkv + g) * capacities[b] * D + slot, row + (H + g) * D, D, m->kv_bf16);
                        store_kv(cache, ((l * 2 + 1) * Hkv + g) * capacities[b] * D + slot, row + (H + Hkv + g) * D, D,
                                 m->kv_bf16);
                    }
                }
                if (m->block_attention) {
                    if (m->slabs == 1 && m->block_attention == 1)
                        configure_tiles();             /* the projections' tile shapes are not attention's */
                    #pragma omp for schedule(dynamic, 1)
                    for (int64_t item = 0; item < Hkv * most_pieces; item++)
                        attend_piece_amx(m, qkv, qkv_n, table, first, positions, B, l, item / most_pieces,
                                         item % most_pieces, item_start, packs, pack_first, partials, &amx[me]);
                } else {
                    #pragma omp for schedule(static)
                    for (int64_t item = 0; item < items; item++) {
                        int64_t b = 0;
                        while (item >= item_start[b + 1])
                            b++;
                        const int64_t pieces = (item_start[b + 1] - item_start[b]) / Hkv, local = item - item_start[b];
                        const int64_t g = local / pieces, piece = local % pieces;
                        const int64_t lo = piece * PIECE, hi = lo + PIECE < positions[b] + 1 ? lo + PIECE : positions[b] + 1;
                        attend_piece(m, qkv + b * qkv_n, table + first[b], first[b + 1] - first[b], l, g, lo, hi,
                                     partials + item * group * (D + 2), my_scores);
                    }
                }
                #pragma omp for schedule(static)
                for (int64_t pair = 0; pair < B * Hkv; pair++) {
                    const int64_t b = pair / Hkv, g = pair % Hkv, pieces = (item_start[b + 1] - item_start[b]) / Hkv;
                    merge(m, partials + (item_start[b] + g * pieces) * group * (D + 2), pieces, g, attn + b * H * D);
                }
                #pragma omp for schedule(static)
                for (int64_t b = 0; b < B; b++)
                    prepare_row(attn + b * H * D, b, H * D, &acts);
                project(q8, &acts, B, H * D, AT(m->o_codes, l, uint8_t), me, parts, tmp, 0, C);
                #pragma omp barrier
                #pragma omp for schedule(static)
                for (int64_t b = 0; b < B; b++) {
                    for (int64_t i = 0; i < C; i++)
                        x[b * C + i] += tmp[b * C + i];
                    rms_norm_row(x + b * C, AT(m->post_norm, l, float), h + b * C, C, m->eps);
                    prepare_row(h + b * C, b, C, &acts);
                }
                project(q8, &acts, B, C, AT(m->gate_up_codes, l, uint8_t), me, parts, gu, 0, 2 * I);
                #pragma omp barrier
                #pragma omp for schedule(static)
                for (int64_t b = 0; b < B; b++) {
                    float *gate = gu + b * 2 * I, *up = gate + I;
                    for (int64_t i = 0; i < I; i += 16) {
                        _mm512_storeu_ps(gate + i, _mm512_mul_ps(silu16(_mm512_loadu_ps(gate + i)), _mm512_loadu_ps(up + i)));
                    }
                    prepare_row(gate, b, I, &acts);
                }
                project(q8, &acts, B, I, AT(m->down_codes, l, uint8_t), me, parts, tmp, 0, C);
                #pragma omp barrier
                #pragma omp for schedule(static)
                for (int64_t b = 0; b < B; b++)
                    for (int64_t i = 0; i < C; i++)
                        x[b * C + i] += tmp[b * C + i];
            }
            #pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) {
                rms_norm_row(x + b * C, m->final_norm, h + b * C, C, m->eps);
                prepare_row(h + b * C, b, C, &acts);
            }
            project(m->head_q8, &acts, B, C, m->head_codes, me, parts, logits, m->kv_bf16, m->vocab);
            if (m->block_attention == 1 || m->slabs == 1)
                _tile_release();
        }
    }
    free(h); free(qkv); free(attn); free(gu); free(tmp); free(acts.dx); free(acts.qa);
    free(acts.xs); free(acts.qs); free(acts.aq); free(scores);
    free(table); free(first); free(item_start); free(partials);
    for (int t = 0; amx && t < threads; t++) {
        free(amx[t].rows); free(amx[t].q); free(amx[t].keys); free(amx[t].values); free(amx[t].kt); free(amx[t].vt);
        free(amx[t].source); free(amx[t].packed); free(amx[t].done);
    }
    free(amx);
    return ok ? 0 : -1;
}

#include "rowwise.c"
