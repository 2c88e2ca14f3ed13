/* Row-wise pieces of a bfloat16 prefill forward, each one pass in float32 with one rounding.

   silu_mul:  out (T, I) = silu(gate) * up,   gate|up (T, 2 I) the fused projection's output.
   The library's ops round silu(gate) to bfloat16 and then the product again, and take two passes; here
   silu(g) = g / (1 + e^-g) and the product stay in float32. Every element on its own: bits depend on
   nothing but its inputs.
*/

int segcache_silu_mul(const uint16_t *gate_up, int64_t rows, int64_t inter, uint16_t *out, int threads) {
    if (rows <= 0 || inter % 16)
        return -1;
    threads = threads < 1 ? 1 : threads;
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t t = 0; t < rows; t++) {
        const uint16_t *gate = gate_up + t * 2 * inter, *up = gate + inter;
        for (int64_t j = 0; j < inter; j += 16) {
            __m512 g = load16_kv(gate, j, 1), u = load16_kv(up, j, 1);
            __m512 sig = _mm512_div_ps(_mm512_set1_ps(1.0f),
                                       _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
            _mm256_storeu_si256((__m256i *)(out + t * inter + j), round_bf16(_mm512_mul_ps(_mm512_mul_ps(g, sig), u)));
        }
    }
    return 0;
}
