/* What every kernel of the library shares: bfloat16 rounding, the quantization of activations to int8
   blocks that the block-quantized matmuls (amx_qmatmul.c) and the decode step (decode.c) multiply, and the
   split of outputs between threads.

   Activations are quantized per row, per block of 32, to int8 (x ~ dx * qx, dx = max|x| / 127), as
   llama.cpp's Q8 activations; each output is then a sum over blocks of exact integer dot products with one
   float step per block (amx_qmatmul.c). A row's quantization reads its own inputs only, so its bits do not
   depend on who shares its forward.
*/

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

static inline uint16_t f32_to_bf16(float f) {     /* round to nearest even, as torch does */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu))
        return (uint16_t)((bits >> 16) | 0x40);    /* NaN stays NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
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

/* The first of `parts` equal chunks' outputs that chunk `part` starts at (part = parts: N). */
static int64_t chunk_start(int64_t N, int parts, int part) {
    return N * part / parts;
}
