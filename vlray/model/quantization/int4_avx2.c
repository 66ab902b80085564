/* int4 weights x int8 dynamic activations on AVX2 (W4A8): the decode GEMV that PyTorch's int4 CPU kernel leaves
 * compute-bound on AVX2-only CPUs (see int4_avx2_linear.py for why and what it measured).
 *
 * Weights: per output row, groups of 64 input channels, asymmetric: w = q * scale + min, q in 0..15. Each group's
 * 64 codes take 32 bytes, as two halves of 32 codes; in a half, byte j holds code j (low nibble) and code j + 16
 * (high nibble), so one 16-byte load unpacks into 32 codes in order with an AND and a shift. scale and min are
 * fp16, one each per row and group.
 * Activations: each row's groups of 64 are quantised to int8 (symmetric, scale = max|x| / 127), stored in the
 * order the unpacked codes come in (activations 0-15, 32-47, 16-31, 48-63: one 32-byte load of a group's codes,
 * masked, gives codes 0-15 and 32-47; shifted, 16-31 and 48-63); per group the kernel keeps xs (the scale) and
 * xsum = xs * sum(xq). Then for a row n and a group:
 *     sum_i w_i x_i ~= scale * xs * sum_i q_i xq_i + min * xsum
 * sum_i q_i xq_i is exact in int32: _mm256_maddubs_epi16 multiplies unsigned codes by signed activations into
 * int16 pairs (at most 2 * 15 * 127, no saturation), _mm256_madd_epi16 widens them to int32.
 * Every output element is computed by one thread in a fixed order: the results do not depend on the batch or on
 * the number of threads, which the engine's equivalence with one-request-at-a-time `generate` relies on.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define GROUP 64
#define ROWS_PER_TILE 4   /* activation rows sharing one unpacked weight group */
#define COLS_PER_BLOCK 64 /* output columns one thread takes at a time */
#define MAX_GROUPS 1024   /* in_features up to 65536 */

static inline float hsum(__m256 v) {
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    return _mm_cvtss_f32(sum);
}

/* halves[i] fp16 -> floats[i], eight at a time. */
static inline void halves_to_floats(const uint16_t *halves, float *floats, int64_t count) {
    int64_t i = 0;
    for (; i + 8 <= count; i += 8)
        _mm256_storeu_ps(floats + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(halves + i))));
    for (; i < count; i++) floats[i] = _cvtsh_ss(halves[i]);
}

/* x [m, k] fp32 -> xq [m, k] int8 (in the kernel's order), xs [m, k / 64] and xsum [m, k / 64]. */
void vlray_quantize_activations(const float *x, int64_t m, int64_t k, int8_t *xq, float *xs, float *xsum,
                                int threads) {
    static const int order[4] = {0, 32, 16, 48}; /* where each run of 16 activations goes */
    const int64_t groups = k / GROUP;
#pragma omp parallel for schedule(static) num_threads(threads) if (m * k > 65536)
    for (int64_t row = 0; row < m; row++) {
        for (int64_t g = 0; g < groups; g++) {
            const float *src = x + row * k + g * GROUP;
            float peak = 0.0f;
            for (int i = 0; i < GROUP; i++) peak = fmaxf(peak, fabsf(src[i]));
            const float scale = peak / 127.0f;
            const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
            int8_t *dst = xq + row * k + g * GROUP;
            int32_t total = 0;
            for (int run = 0; run < 4; run++) {
                for (int i = 0; i < 16; i++) {
                    const int32_t q = (int32_t)nearbyintf(src[order[run] + i] * inverse);
                    dst[run * 16 + i] = (int8_t)q;
                    total += q;
                }
            }
            xs[row * groups + g] = scale;
            xsum[row * groups + g] = scale * (float)total;
        }
    }
}

/* out [m, n] fp32 = activations [m, k] x weights [n, k]^T. codes [n, k / 2], scales and mins [n, k / 64] fp16.
 * `threads`: the caller's torch.get_num_threads() (OpenMP's per-thread setting is not the engine thread's). */
void vlray_int4_gemm(const uint8_t *codes, const uint16_t *scales, const uint16_t *mins, const int8_t *xq,
                     const float *xs, const float *xsum, float *out, int64_t m, int64_t n, int64_t k, int threads) {
    const int64_t groups = k / GROUP;
    if (groups > MAX_GROUPS) return; /* the caller checks in_features */
    /* Blocks of output columns (weight rows) per thread; inside one, each tile of activation rows meets every
     * column of the block, so at prefill sizes both stay in cache instead of the activations streaming once per
     * column. At decode (m <= 8) it is one pass over the weights. */
    const int64_t blocks = (n + COLS_PER_BLOCK - 1) / COLS_PER_BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t block = 0; block < blocks; block++) {
        const __m256i ones = _mm256_set1_epi16(1);
        const __m256i mask = _mm256_set1_epi8(0x0F);
        float weight_scales[MAX_GROUPS], weight_mins[MAX_GROUPS], combined[ROWS_PER_TILE][MAX_GROUPS];
        for (int64_t first = 0; first < m; first += ROWS_PER_TILE) {
            const int tile = (int)(m - first < ROWS_PER_TILE ? m - first : ROWS_PER_TILE);
            for (int64_t col = block * COLS_PER_BLOCK; col < n && col < (block + 1) * COLS_PER_BLOCK; col++) {
                const uint8_t *row_codes = codes + col * (k / 2);
                halves_to_floats(scales + col * groups, weight_scales, groups);
                halves_to_floats(mins + col * groups, weight_mins, groups);
                float offset[ROWS_PER_TILE];
                __m256 acc[ROWS_PER_TILE];
                for (int r = 0; r < tile; r++) {
                    const float *row_xs = xs + (first + r) * groups, *row_sums = xsum + (first + r) * groups;
                    __m256 low_terms = _mm256_setzero_ps();
                    int64_t g = 0;
                    for (; g + 8 <= groups; g += 8) {
                        _mm256_storeu_ps(combined[r] + g, _mm256_mul_ps(_mm256_loadu_ps(weight_scales + g),
                                                                        _mm256_loadu_ps(row_xs + g)));
                        low_terms = _mm256_fmadd_ps(_mm256_loadu_ps(weight_mins + g), _mm256_loadu_ps(row_sums + g),
                                                    low_terms);
                    }
                    offset[r] = hsum(low_terms);
                    for (; g < groups; g++) {
                        combined[r][g] = weight_scales[g] * row_xs[g];
                        offset[r] += weight_mins[g] * row_sums[g];
                    }
                    acc[r] = _mm256_setzero_ps();
                }
                for (int64_t g = 0; g < groups; g++) {
                    const __m256i packed = _mm256_loadu_si256((const __m256i *)(row_codes + g * 32));
                    const __m256i first_codes = _mm256_and_si256(packed, mask);                       /* 0-15, 32-47 */
                    const __m256i second_codes = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask); /* 16-31, 48-63 */
                    for (int r = 0; r < tile; r++) {
                        const int8_t *act = xq + (first + r) * k + g * GROUP;
                        const __m256i pairs = _mm256_add_epi16(
                            _mm256_maddubs_epi16(first_codes, _mm256_loadu_si256((const __m256i *)act)),
                            _mm256_maddubs_epi16(second_codes, _mm256_loadu_si256((const __m256i *)(act + 32))));
                        const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                        acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&combined[r][g]), dot, acc[r]);
                    }
                }
                for (int r = 0; r < tile; r++) out[(first + r) * n + col] = hsum(acc[r]) + offset[r];
            }
        }
    }
}

/* One call per linear layer (ctypes calls cost microseconds each, and a decode step makes ~200 of them): the
 * activations quantised into `scratch` (vlray_int4_scratch_bytes of it, from the caller's allocator), then the
 * GEMM. */
int64_t vlray_int4_scratch_bytes(int64_t m, int64_t k) {
    return (int64_t)sizeof(float) * 2 * m * (k / GROUP) + m * k;
}

void vlray_int4_linear(const uint8_t *codes, const uint16_t *scales, const uint16_t *mins, const float *x,
                       float *out, void *scratch, int64_t m, int64_t n, int64_t k, int threads) {
    const int64_t groups = k / GROUP;
    float *xs = scratch; /* xs, xsum, then xq */
    float *xsum = xs + m * groups;
    int8_t *xq = (int8_t *)(xsum + m * groups);
    vlray_quantize_activations(x, m, k, xq, xs, xsum, threads);
    vlray_int4_gemm(codes, scales, mins, xq, xs, xsum, out, m, n, k, threads);
}
