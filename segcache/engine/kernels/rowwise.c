/* Row-wise pieces of a bfloat16 prefill forward, each one pass in float32 with one rounding.

   silu_mul:  out (T, I) = silu(gate) * up,   gate|up (T, 2 I) the fused projection's output.
   The library's ops round silu(gate) to bfloat16 and then the product again, and take two passes; here
   silu(g) = g / (1 + e^-g) (decode.c `silu16`, as the fused decode step computes it) and the product
   stay in float32. Every element on its own: bits depend on nothing but its inputs.
*/

int segcache_silu_mul(const uint16_t *gate_up, int64_t rows, int64_t inter, uint16_t *out, int threads) {
    if (rows <= 0 || inter % 16)
        return -1;
    threads = threads < 1 ? 1 : threads;
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t t = 0; t < rows; t++) {
        const uint16_t *gate = gate_up + t * 2 * inter, *up = gate + inter;
        for (int64_t j = 0; j < inter; j += 16) {
            __m512 product = _mm512_mul_ps(silu16(load16_kv(gate, j, 1)), load16_kv(up, j, 1));
            _mm256_storeu_si256((__m256i *)(out + t * inter + j), round_bf16(product));
        }
    }
    return 0;
}

/* add_rms_norm:  x (T, C) += delta (bfloat16, rounded once), then
                  h (T, C) = x * w / sqrt(sum(x^2) + C eps)  =  x / sqrt(mean(x^2) + eps) * weight,
                  w (C,) float32 = weight * sqrt(C); delta may be NULL (the norm only).
   One pass per row; the sum of squares in a fixed lane order. */
int segcache_add_rms_norm(uint16_t *x, const uint16_t *delta, int64_t rows, int64_t C, const float *w, float eps,
                          uint16_t *h, int threads) {
    if (rows <= 0 || C % 16 || C > 8192)
        return -1;
    threads = threads < 1 ? 1 : threads;
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t t = 0; t < rows; t++) {
        float row[8192] __attribute__((aligned(64)));
        uint16_t *xr = x + t * C;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < C; i += 16) {
            __m512 v = load16_kv(xr, i, 1);
            if (delta) {
                v = _mm512_add_ps(v, load16_kv(delta + t * C, i, 1));
                __m256i rounded = round_bf16(v);
                _mm256_storeu_si256((__m256i *)(xr + i), rounded);
                v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(rounded), 16));
            }
            _mm512_store_ps(row + i, v);
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        __m512 scale = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(acc) + (float)C * eps));
        for (int64_t i = 0; i < C; i += 16)
            _mm256_storeu_si256((__m256i *)(h + t * C + i),
                                round_bf16(_mm512_mul_ps(_mm512_mul_ps(_mm512_load_ps(row + i), scale),
                                                         _mm512_loadu_ps(w + i))));
    }
    return 0;
}

/* rope_kv: rotary embedding of the q and k columns of qkv (T, (H + 2 H_kv) D) bfloat16 (row stride
   `stride`) at positions start..start + T - 1, q in place; the rotated k and the v written to one layer's
   KV buffer keys/values (H_kv, capacity, D). cos and sin (positions, D) bfloat16, sin's first half negated:
       x = (x1, x2) -> x * cos + (x2, x1) * sin          in float32, rounded once. */
int segcache_rope_kv(uint16_t *qkv, int64_t rows, int64_t stride, int64_t heads, int64_t kv_heads, int64_t D,
                     const uint16_t *cos, const uint16_t *sin, int64_t start, uint16_t *keys, uint16_t *values,
                     int64_t capacity, int threads) {
    if (rows <= 0 || D % 32 || D > 256 || start + rows > capacity)
        return -1;
    int64_t half = D / 2;
    threads = threads < 1 ? 1 : threads;
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t t = 0; t < rows; t++) {
        int64_t position = start + t;
        uint16_t *row = qkv + t * stride;
        const uint16_t *c = cos + position * D, *s = sin + position * D;
        for (int64_t head = 0; head < heads + kv_heads; head++) {
            uint16_t *v = row + head * D;
            uint16_t *to = head < heads ? v : keys + ((head - heads) * capacity + position) * D;
            __m512 out[16];
            for (int64_t i = 0; i < D; i += 16) {
                int64_t other = i < half ? i + half : i - half;
                out[i / 16] = _mm512_add_ps(_mm512_mul_ps(load16_kv(v, i, 1), load16_kv(c, i, 1)),
                                            _mm512_mul_ps(load16_kv(v, other, 1), load16_kv(s, i, 1)));
            }
            for (int64_t i = 0; i < D; i += 16)
                _mm256_storeu_si256((__m256i *)(to + i), round_bf16(out[i / 16]));
        }
        for (int64_t head = 0; head < kv_heads; head++)
            memcpy(values + (head * capacity + position) * D, row + (heads + kv_heads + head) * D, (size_t)D * 2);
    }
    return 0;
}
