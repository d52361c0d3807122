// y = x @ W.T for a 4-bit grouped weight, on the CPU: the product behind deepseek_ocr's int4 linears.
//
// Weight layout (quantization.py writes it):
//   packed  uint8  (N, K/2)        per group of G inputs, byte j holds input j in its low nibble
//                                  and input j + G/2 in its high nibble
//   scales  bf16   (N, K/G, 2)     per group (scale, zero):  w = (q - 8) * scale + zero,  q in 0..15
//
// Decoding multiplies one activation row by every weight, so the product is bound by how fast
// the packed weight streams in. PyTorch's own int4 kernel converts each weight to float before
// its multiply-add and is compute-bound at batch 1; here the activation row is quantized once
// per call to int8 (per group, symmetric), so that a group's 64 products are one VNNI
// instruction (vpdpbusd: unsigned 4-bit weight x signed 8-bit activation, summed into int32).
// Centring q on 8 halves the weights the activations' rounding error is multiplied by (on six
// decoder shapes the product's error against the dequantized float one measured 0.6-0.7%,
// against 0.7-2.3% with q in 0..15 and the group's min as zero), and the zero term uses the
// exact float sum of the activations:
//   sum_i w_i x_i = scale * sx * (sum_i q_i xq_i - 8 sum_i xq_i) + zero * sum_i x_i
//
// Entry points: int4_linear (any rows), int4_linear_many (several one-row products in one
// parallel region), and whole decoding steps of one token: int4_qkv_rotary and
// int4_attend_project (an attention layer) and int4_moe_step (a MoE layer).
//
// Built at first use with the machine's C compiler (-march=native); without AVX-512 VNNI, or
// for groups of 32, the portable loops below compute the same integer sums (the whole-step
// entry points then return -1 and the caller uses torch).
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define HAVE_VNNI512 1
#else
#define HAVE_VNNI512 0
#endif

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) {  // round to nearest even, as torch does
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);  // quiet NaN
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static inline void store(void *out, int out_bf16, int64_t index, float value) {
    if (out_bf16)
        ((uint16_t *)out)[index] = float_to_bf16(value);
    else
        ((float *)out)[index] = value;
}

// The activation rows, quantized per group: xq = round(x / sx), sx = max|x| / 127.
typedef struct {
    int8_t *xq;      // (rows, K)
    float *sx;       // (rows, K/G)
    float *xsum;     // (rows, K/G)  exact sum of x over the group, for the zero term
    float *centre;   // (rows, K/G)  8 * sx * sum of xq over the group, for q's offset of 8
} Activations;

static void quantize_group(const float *v, int64_t G, int8_t *xq, float *sx, float *xsum, float *centre) {
    float amax = 0.f, sum = 0.f;
    for (int64_t i = 0; i < G; i++) amax = fmaxf(amax, fabsf(v[i])), sum += v[i];
    const float inverse = amax > 0.f ? 127.f / amax : 0.f;
    int32_t qsum = 0;
    for (int64_t i = 0; i < G; i++) xq[i] = (int8_t)lrintf(v[i] * inverse), qsum += xq[i];
    *sx = amax / 127.f, *xsum = sum, *centre = 8.f * *sx * (float)qsum;
}

#if HAVE_VNNI512
// The same as quantize_group for G = 64, in vector registers (the per-call cost that matters
// at batch 1: a scalar loop over the 6,848 inputs of the dense MLP's down_proj took ~20 us).
static void quantize_group64(const float *v, int8_t *xq, float *sx, float *xsum, float *centre) {
    __m512 part[4], amax = _mm512_setzero_ps(), sum = _mm512_setzero_ps();
    for (int k = 0; k < 4; k++) {
        part[k] = _mm512_loadu_ps(v + 16 * k);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(part[k]));
        sum = _mm512_add_ps(sum, part[k]);
    }
    const float top = _mm512_reduce_max_ps(amax), inverse = top > 0.f ? 127.f / top : 0.f;
    __m512i qsum = _mm512_setzero_si512();
    for (int k = 0; k < 4; k++) {
        const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(part[k], _mm512_set1_ps(inverse)));  // nearest even
        _mm_storeu_si128((__m128i *)(xq + 16 * k), _mm512_cvtepi32_epi8(q));
        qsum = _mm512_add_epi32(qsum, q);
    }
    *sx = top / 127.f, *xsum = _mm512_reduce_add_ps(sum), *centre = 8.f * *sx * (float)_mm512_reduce_add_epi32(qsum);
}
#endif

#if HAVE_VNNI512
// The VNNI path reads two groups at once (see DEFINE_BLOCK): within each pair of groups (g, h)
// the activations are stored as g[0:32] h[0:32] g[32:64] h[32:64], matching the low and high
// nibbles of the pair's 64 packed bytes. A last unpaired group keeps its natural order.
static void pair_groups(int8_t *xq, int64_t groups) {
    for (int64_t g = 0; g + 1 < groups; g += 2) {
        int8_t swap[32];
        memcpy(swap, xq + g * 64 + 32, 32);
        memcpy(xq + g * 64 + 32, xq + g * 64 + 64, 32);
        memcpy(xq + g * 64 + 64, swap, 32);
    }
}
#endif

static void quantize_activations(const void *x, int x_bf16, int64_t M, int64_t K, int64_t G, int portable,
                                 Activations *a) {
    const int64_t groups = K / G;
    float v[64];
    (void)portable;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t g = 0; g < groups; g++) {
            const int64_t base = m * K + g * G, i = m * groups + g;
            for (int64_t k = 0; k < G; k++)
                v[k] = x_bf16 ? bf16_to_float(((const uint16_t *)x)[base + k]) : ((const float *)x)[base + k];
#if HAVE_VNNI512
            if (G == 64 && !portable) {
                quantize_group64(v, a->xq + base, a->sx + i, a->xsum + i, a->centre + i);
                continue;
            }
#endif
            quantize_group(v, G, a->xq + base, a->sx + i, a->xsum + i, a->centre + i);
        }
#if HAVE_VNNI512
        if (G == 64 && !portable) pair_groups(a->xq + m * K, groups);
#endif
    }
}

// One output row n for M activation rows; any even group size up to 64.
static void row_portable(int64_t n, int64_t M, int64_t K, int64_t G, const uint8_t *packed,
                         const uint16_t *scales, const Activations *a, void *out, int out_bf16, int64_t N) {
    const int64_t groups = K / G, half = G / 2;
    const uint8_t *w = packed + n * (K / 2);
    const uint16_t *sz = scales + n * groups * 2;
    for (int64_t m = 0; m < M; m++) {
        float acc = 0.f;
        for (int64_t g = 0; g < groups; g++) {
            const uint8_t *wg = w + g * half;
            const int8_t *xg = a->xq + m * K + g * G;
            int32_t dot = 0;
            for (int64_t j = 0; j < half; j++) dot += (wg[j] & 15) * xg[j] + (wg[j] >> 4) * xg[j + half];
            const float scale = bf16_to_float(sz[2 * g]), zero = bf16_to_float(sz[2 * g + 1]);
            const int64_t i = m * groups + g;
            acc += scale * (a->sx[i] * (float)dot - a->centre[i]) + zero * a->xsum[i];
        }
        store(out, out_bf16, m * N + n, acc);
    }
}

#if HAVE_VNNI512
// Group size 64: a group of a row is 32 packed bytes -> 64 uint8 weights in one register. The
// bytes are broadcast to both halves and the upper half shifted by 4, so the low nibbles
// (inputs 0..31) land in the lower half and the high nibbles (inputs 32..63) in the upper.
static inline __m512i unpack64(const uint8_t *w) {
    const __m512i bytes = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)w));
    const __m512i shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    return _mm512_and_si512(_mm512_srlv_epi64(bytes, shifts), _mm512_set1_epi8(15));
}

// Scales and zeros of up to 16 consecutive groups of a row, as float32 vectors: each 32-bit
// lane of the (scale, zero) bf16 pairs holds the scale in its low half and the zero in its high.
static inline void load_scales(const uint16_t *sz, int count, __m512 *scale, __m512 *zero) {
    const __m512i pairs = _mm512_maskz_loadu_epi32((__mmask16)((1u << count) - 1u), sz);
    *scale = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
    *zero = _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32((int)0xffff0000u)));
}

// Streaming from memory, the hardware prefetcher alone left lm_head's product at ~15 GB/s;
// asking for the row this far ahead (into L2) brings it to ~23 GB/s, near a plain read's 24.
// Farther (16-64 rows) or into L1 measured no better.
#define PREFETCH_ROWS 8

// Output rows n..n+ROWS-1 for activation rows m0..m0+ACTS-1 (ROWS * ACTS = 4 accumulators):
// the weights are unpacked once per row and the activations loaded once per act. Groups go in
// chunks of 16 so that scales, zeros and the zero term are 16-lane vector work, and in pairs:
// a pair's 64 packed bytes are one load, their low nibbles (inputs 0..31 of both groups) and
// high nibbles (32..63) two dot products into one register whose lanes 0-7 belong to the first
// group and 8-15 to the second, scaled by one multiply-add (per group: 4.5 instructions, not 8).
#define DEFINE_BLOCK(NAME, ROWS, ACTS)                                                                 \
    static void NAME(int64_t n, int64_t m0, int64_t K, const uint8_t *packed, const uint16_t *scales,  \
                     const Activations *a, float result[ROWS][ACTS]) {                                 \
        const int64_t groups = K / 64;                                                                 \
        const __m512i low4 = _mm512_set1_epi8(15);                                                     \
        __m512 acc[ROWS][ACTS], offset[ROWS][ACTS];                                                    \
        for (int r = 0; r < ROWS; r++)                                                                 \
            for (int s = 0; s < ACTS; s++) acc[r][s] = offset[r][s] = _mm512_setzero_ps();             \
        for (int64_t g0 = 0; g0 < groups; g0 += 16) {                                                  \
            const int count = groups - g0 < 16 ? (int)(groups - g0) : 16;                              \
            const __mmask16 valid = (__mmask16)((1u << count) - 1u);                                   \
            __m512 step[ROWS][ACTS];                                                                   \
            for (int r = 0; r < ROWS; r++) {                                                           \
                __m512 scale, zero;                                                                    \
                load_scales(scales + ((n + r) * groups + g0) * 2, count, &scale, &zero);               \
                for (int s = 0; s < ACTS; s++) {                                                       \
                    const int64_t i = (m0 + s) * groups + g0;                                          \
                    const __m512 sx = _mm512_maskz_loadu_ps(valid, a->sx + i);                         \
                    const __m512 xsum = _mm512_maskz_loadu_ps(valid, a->xsum + i);                     \
                    const __m512 centre = _mm512_maskz_loadu_ps(valid, a->centre + i);                 \
                    step[r][s] = _mm512_mul_ps(scale, sx);                                             \
                    offset[r][s] = _mm512_fmadd_ps(zero, xsum, offset[r][s]);                          \
                    offset[r][s] = _mm512_fnmadd_ps(scale, centre, offset[r][s]);                      \
                }                                                                                      \
            }                                                                                          \
            int j = 0;                                                                                 \
            for (; j + 1 < count; j += 2) {                                                            \
                /* lanes 0-7 take group j's step, lanes 8-15 group j+1's */                            \
                const __m512i pick = _mm512_inserti64x4(_mm512_set1_epi32(j), _mm256_set1_epi32(j + 1), 1); \
                __m512i x_low[ACTS], x_high[ACTS];                                                     \
                for (int s = 0; s < ACTS; s++) {                                                       \
                    const int8_t *xs = a->xq + (m0 + s) * K + (g0 + j) * 64;                           \
                    x_low[s] = _mm512_loadu_si512((const void *)xs);                                   \
                    x_high[s] = _mm512_loadu_si512((const void *)(xs + 64));                           \
                }                                                                                      \
                for (int r = 0; r < ROWS; r++) {                                                       \
                    const uint8_t *w_row = packed + (n + r) * (K / 2) + (g0 + j) * 32;                 \
                    _mm_prefetch((const char *)(w_row + PREFETCH_ROWS * (K / 2)), _MM_HINT_T1);        \
                    const __m512i bytes = _mm512_loadu_si512((const void *)w_row);                     \
                    const __m512i low = _mm512_and_si512(bytes, low4);                                 \
                    const __m512i high = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low4);          \
                    for (int s = 0; s < ACTS; s++) {                                                   \
                        __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), low, x_low[s]);      \
                        dot = _mm512_dpbusd_epi32(dot, high, x_high[s]);                               \
                        acc[r][s] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),                           \
                                                    _mm512_permutexvar_ps(pick, step[r][s]), acc[r][s]); \
                    }                                                                                  \
                }                                                                                      \
            }                                                                                          \
            if (j < count) { /* an odd last group, in natural order */                                 \
                const __m512i pick = _mm512_set1_epi32(j);                                             \
                for (int r = 0; r < ROWS; r++) {                                                       \
                    const __m512i w = unpack64(packed + (n + r) * (K / 2) + (g0 + j) * 32);            \
                    for (int s = 0; s < ACTS; s++) {                                                   \
                        const __m512i x = _mm512_loadu_si512((const void *)(a->xq + (m0 + s) * K + (g0 + j) * 64)); \
                        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);         \
                        acc[r][s] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),                           \
                                                    _mm512_permutexvar_ps(pick, step[r][s]), acc[r][s]); \
                    }                                                                                  \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        for (int r = 0; r < ROWS; r++)                                                                 \
            for (int s = 0; s < ACTS; s++)                                                             \
                result[r][s] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][s], offset[r][s]));           \
    }

DEFINE_BLOCK(block_4rows, 4, 1)  // decoding one sequence
DEFINE_BLOCK(block_4acts, 1, 4)  // several sequences, or the tail rows of one
#endif

static int allocate(Activations *a, int64_t M, int64_t K, int64_t G) {
    const int64_t groups = K / G, padded = (M + 3) / 4 * 4;  // rows, padded for the 4-row blocks
    a->xq = calloc((size_t)(padded * K), 1);
    a->sx = calloc((size_t)(padded * groups), sizeof(float));
    a->xsum = calloc((size_t)(padded * groups), sizeof(float));
    a->centre = calloc((size_t)(padded * groups), sizeof(float));
    return a->xq && a->sx && a->xsum && a->centre ? 0 : -1;
}

static void release(Activations *a) { free(a->xq), free(a->sx), free(a->xsum), free(a->centre); }

static int vnni_path(int64_t G, int portable) { return HAVE_VNNI512 && !portable && G == 64; }

#if HAVE_VNNI512
// Output rows 4b..4b+3 (fewer at the end) of a one-row product.
static void one_row_block(int64_t b, int64_t K, int64_t N, const uint8_t *packed, const uint16_t *scales,
                          const Activations *a, void *out, int out_bf16) {
    if (4 * b + 4 <= N) {
        float result[4][1];
        block_4rows(4 * b, 0, K, packed, scales, a, result);
        for (int r = 0; r < 4; r++) store(out, out_bf16, 4 * b + r, result[r][0]);
        return;
    }
    for (int64_t n = 4 * b; n < N; n++) {
        float result[1][4];
        block_4acts(n, 0, K, packed, scales, a, result);
        store(out, out_bf16, n, result[0][0]);
    }
}
#endif

// out (M, N) = x (M, K) @ W.T, x and out each bf16 or float32. `portable` forces the plain C
// loops (for tests). Returns 0, or -1 when K is not a multiple of G, G is odd or above 64, or
// scratch memory cannot be had.
int int4_linear(const void *x, int x_bf16, int64_t M, int64_t K, const uint8_t *packed,
                const uint16_t *scales, int64_t N, int64_t G, void *out, int out_bf16, int threads,
                int portable) {
    Activations a;
    if (M <= 0 || G <= 0 || G > 64 || G % 2 || K % G) return -1;
    if (allocate(&a, M, K, G)) return release(&a), -1;
    quantize_activations(x, x_bf16, M, K, G, portable, &a);
    if (vnni_path(G, portable) && M == 1) {
#if HAVE_VNNI512
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t b = 0; b < (N + 3) / 4; b++) one_row_block(b, K, N, packed, scales, &a, out, out_bf16);
#endif
    } else if (vnni_path(G, portable)) {
#if HAVE_VNNI512
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t n = 0; n < N; n++) {
            for (int64_t m0 = 0; m0 < M; m0 += 4) {
                float result[1][4];
                block_4acts(n, m0, K, packed, scales, &a, result);
                for (int64_t s = 0; s < 4 && m0 + s < M; s++) store(out, out_bf16, (m0 + s) * N + n, result[0][s]);
            }
        }
#endif
    } else {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t n = 0; n < N; n++) row_portable(n, M, K, G, packed, scales, &a, out, out_bf16, N);
    }
    release(&a);
    return 0;
}

#if HAVE_VNNI512
// One row through one weight, its activations quantized already.
typedef struct {
    const Activations *a;
    int64_t K, N;
    const uint8_t *packed;
    const uint16_t *scales;
    void *out;
} Product;

// Every output row of several one-row products, in one parallel region.
static int run_products(const Product *products, int count, int out_bf16, int threads) {
    int64_t *first_block = malloc(sizeof(int64_t) * (size_t)(count + 1));
    if (!first_block) return -1;
    first_block[0] = 0;
    for (int p = 0; p < count; p++) first_block[p + 1] = first_block[p] + (products[p].N + 3) / 4;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < first_block[count]; b++) {
        int p = 0;
        while (b >= first_block[p + 1]) p++;
        const Product *t = products + p;
        one_row_block(b - first_block[p], t->K, t->N, t->packed, t->scales, t->a, t->out, out_bf16);
    }
    free(first_block);
    return 0;
}

// RMSNorm of one row into float32, rounded as the torch module rounds in x's dtype:
// weight * dtype(x * rsqrt(mean(x^2) + eps)), the inner product in float32. Without a weight,
// x as float32.
static void rms_norm(const void *x, int bf16, int64_t H, const void *weight, float eps, float *out) {
    float sum = 0.f;
    for (int64_t i = 0; i < H; i++) {
        out[i] = bf16 ? bf16_to_float(((const uint16_t *)x)[i]) : ((const float *)x)[i];
        sum += out[i] * out[i];
    }
    if (!weight) return;
    const float inverse = 1.f / sqrtf(sum / (float)H + eps);
    for (int64_t i = 0; i < H; i++) {
        if (bf16)
            out[i] = bf16_to_float(float_to_bf16(bf16_to_float(((const uint16_t *)weight)[i]) *
                                                 bf16_to_float(float_to_bf16(out[i] * inverse))));
        else
            out[i] = ((const float *)weight)[i] * (out[i] * inverse);
    }
}

// e^x for float32 lanes: 2^n * 2^f with n = round(x log2 e), |f| <= 1/2, 2^f by its degree-7
// Taylor polynomial (relative error < 1e-8, below float32's rounding).
static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.693147181f));  // 2^(t-n) = e^f
    static const float taylor[] = {1.f / 5040, 1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 1.f / 2, 1.f, 1.f};
    __m512 p = _mm512_set1_ps(taylor[0]);
    for (int k = 1; k < 8; k++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(taylor[k]));
    return _mm512_scalef_ps(p, n);
}
#endif

#if HAVE_VNNI512
// A weighted sum of int4 SwiGLU MLPs for one quantized row x:
//   out (H,) float32 = sum_e weight_e * down_e(silu(gate_e(x)) * up_e(x))
// Two parallel regions (all gate and up rows, then all down rows); the hidden activations
// stay float32 until they are quantized for the down products. `table` holds, per MLP, seven
// int64: the addresses of the gate, up and down packed weights and scales (in that order,
// pairs), and its intermediate width.
static int swiglu_mix_quantized(const Activations *input, int64_t H, const int64_t *table, const float *weights,
                                int count, float *out, int threads) {
    int64_t width = 0;
    for (int e = 0; e < count; e++) width += table[7 * e + 6];
    Activations *hidden = calloc((size_t)count, sizeof(Activations));
    Product *products = calloc((size_t)(2 * count), sizeof(Product));
    float *gate_up = malloc(sizeof(float) * (size_t)(2 * width)), *down = malloc(sizeof(float) * (size_t)(count * H));
    int status = hidden && products && gate_up && down ? 0 : -1;
    if (!status) {
        for (int64_t e = 0, offset = 0; e < count; offset += table[7 * e + 6], e++) {
            const int64_t *t = table + 7 * e;
            products[e] = (Product){input, H, t[6], (const uint8_t *)t[0], (const uint16_t *)t[1], gate_up + offset};
            products[count + e] =
                (Product){input, H, t[6], (const uint8_t *)t[2], (const uint16_t *)t[3], gate_up + width + offset};
        }
        status = run_products(products, 2 * count, 0, threads);
    }
    if (!status) {
        for (int64_t i = 0; i < width; i += 16) {  // silu(gate) * up, into the gate half
            const __m512 g = _mm512_loadu_ps(gate_up + i), u = _mm512_loadu_ps(gate_up + width + i);
            const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), exp512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
            _mm512_storeu_ps(gate_up + i, _mm512_mul_ps(silu, u));
        }
        for (int64_t e = 0, offset = 0; e < count && !status; offset += table[7 * e + 6], e++) {
            const int64_t *t = table + 7 * e;
            status = allocate(&hidden[e], 1, t[6], 64);
            if (status) break;
            quantize_activations(gate_up + offset, 0, 1, t[6], 64, 0, &hidden[e]);
            products[e] = (Product){&hidden[e], t[6], H, (const uint8_t *)t[4], (const uint16_t *)t[5], down + e * H};
        }
    }
    if (!status) status = run_products(products, count, 0, threads);
    if (!status) {
        for (int64_t h = 0; h < H; h++) out[h] = 0.f;
        for (int e = 0; e < count; e++)
            for (int64_t h = 0; h < H; h++) out[h] += weights[e] * down[e * H + h];
    }
    for (int e = 0; hidden && e < count; e++) release(&hidden[e]);
    free(hidden), free(products), free(gate_up), free(down);
    return status;
}
#endif

// Several one-row products in one parallel region. A decoding step's expert projections are
// 0.6 MB each: one call apiece, two threads spend much of each call starting and stopping
// their streams from memory. `table` holds, per product, six int64: the address of x (1, K),
// K, the addresses of packed and scales, N, and the address of out (1, N). Products that
// follow one another with the same x share its quantization. Returns 0 or -1 as int4_linear.
int int4_linear_many(const int64_t *table, int count, int64_t G, int x_bf16, int out_bf16, int threads) {
    if (count <= 0 || G <= 0 || G > 64 || G % 2) return -1;
    for (int p = 0; p < count; p++)
        if (table[6 * p + 1] % G) return -1;
    if (!vnni_path(G, 0)) {
        for (int p = 0; p < count; p++) {
            const int64_t *t = table + 6 * p;
            if (int4_linear((const void *)t[0], x_bf16, 1, t[1], (const uint8_t *)t[2], (const uint16_t *)t[3], t[4],
                            G, (void *)t[5], out_bf16, threads, 0))
                return -1;
        }
        return 0;
    }
#if HAVE_VNNI512
    Activations *a = calloc((size_t)count, sizeof(Activations));
    Product *products = calloc((size_t)count, sizeof(Product));
    int status = a && products ? 0 : -1;
    for (int p = 0; p < count && !status; p++) {
        const int64_t *t = table + 6 * p;
        products[p] = (Product){&a[p], t[1], t[4], (const uint8_t *)t[2], (const uint16_t *)t[3], (void *)t[5]};
        if (p > 0 && t[0] == t[-6] && t[1] == t[-5]) {
            products[p].a = products[p - 1].a;
            continue;
        }
        status = allocate(&a[p], 1, t[1], G);
        if (!status) quantize_activations((const void *)t[0], x_bf16, 1, t[1], G, 0, &a[p]);
    }
    if (!status) status = run_products(products, count, out_bf16, threads);
    for (int p = 0; a && p < count; p++) release(&a[p]);  // shared ones were never allocated
    free(a), free(products);
    return status;
#else
    return -1;
#endif
}

// A mixture-of-experts layer's whole decoding step for one token: its input RMSNorm (weight
// in x's dtype), the router (float32 (experts, H) weight, softmax, greedy top-k, optionally
// renormalised, times `scaling`), the chosen experts and the shared experts (weight 1):
//   out (H,) float32 = sum_chosen w_e expert_e(n) + shared(n),   n = norm(x)
// The routed experts' weights are stacked: `stacks` holds the addresses of gate, up and down
// packed weights and scales, each (experts, ...) contiguous, with intermediate width I;
// `shared` the six addresses of the shared experts' (intermediate width shared_I), or NULL.
// Returns -1 off the VNNI path, for widths not multiples of 64, more than 64 experts, top_k
// above 16, or without memory (the caller then computes the layer with torch).
int int4_moe_step(const void *x, int x_bf16, int64_t H, const void *norm_weight, float eps, const float *router,
                  int64_t experts, int64_t top_k, int normalize, float scaling, const int64_t *stacks, int64_t I,
                  const int64_t *shared, int64_t shared_I, float *out, int threads) {
    if (!vnni_path(64, 0) || H % 64 || I % 64 || shared_I % 64 || experts > 64 || top_k > 16 || top_k > experts)
        return -1;
#if HAVE_VNNI512
    float normed[H], probability[64], chosen_weight[17];
    int64_t table[7 * 17];
    rms_norm(x, x_bf16, H, norm_weight, eps, normed);
    float top = -INFINITY, total = 0.f;
    for (int64_t e = 0; e < experts; e++) {
        __m512 dot = _mm512_setzero_ps();
        for (int64_t h = 0; h < H; h += 16)
            dot = _mm512_fmadd_ps(_mm512_loadu_ps(router + e * H + h), _mm512_loadu_ps(normed + h), dot);
        probability[e] = _mm512_reduce_add_ps(dot);
        top = fmaxf(top, probability[e]);
    }
    for (int64_t e = 0; e < experts; e++) total += probability[e] = expf(probability[e] - top);
    float chosen_total = 0.f;
    for (int64_t k = 0; k < top_k; k++) {  // greedy top-k, the first of equal scores first
        int64_t best = -1;
        for (int64_t e = 0; e < experts; e++)
            if (probability[e] >= 0.f && (best < 0 || probability[e] > probability[best])) best = e;
        chosen_weight[k] = probability[best] / total;
        chosen_total += chosen_weight[k];
        probability[best] = -1.f;
        const int64_t gate_up_bytes = I * H / 2, gate_up_scales = I * (H / 64) * 2;
        const int64_t down_bytes = H * I / 2, down_scales = H * (I / 64) * 2;
        const int64_t offsets[6] = {gate_up_bytes, gate_up_scales * 2, gate_up_bytes, gate_up_scales * 2, down_bytes, down_scales * 2};
        for (int j = 0; j < 6; j++) table[7 * k + j] = stacks[j] + best * offsets[j];  // byte offsets
        table[7 * k + 6] = I;
    }
    for (int64_t k = 0; k < top_k; k++)
        chosen_weight[k] = (normalize ? chosen_weight[k] / (chosen_total + 1e-20f) : chosen_weight[k]) * scaling;
    int count = (int)top_k;
    if (shared) {
        for (int j = 0; j < 6; j++) table[7 * count + j] = shared[j];
        table[7 * count + 6] = shared_I;
        chosen_weight[count++] = 1.f;
    }
    Activations input = {0};
    int status = allocate(&input, 1, H, 64);
    if (!status) {
        quantize_activations(normed, 0, 1, H, 64, 0, &input);
        status = swiglu_mix_quantized(&input, H, table, chosen_weight, count, out, threads);
    }
    release(&input);
    return status;
#else
    (void)x, (void)x_bf16, (void)norm_weight, (void)eps, (void)router, (void)normalize, (void)scaling, (void)stacks;
    (void)shared, (void)out, (void)threads;
    return -1;
#endif
}

#if HAVE_VNNI512
static inline __m512 load16(const void *base, int64_t offset, int bf16) {
    if (bf16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + offset))), 16));
    return _mm512_loadu_ps((const float *)base + offset);
}
#endif

// A decoding step's attention input side for one token: q, k, v = x @ Wq/Wk/Wv.T (one
// parallel region), then rotary embedding on q and k per head (half-split "rotate half"):
//   out[i] = x[i] cos[i] - x[i + d/2] sin[i],   out[i + d/2] = x[i + d/2] cos[i + d/2] + x[i] sin[i + d/2]
// in float32, rounded once into q, k, v (x's dtype, each (width,)). `weights` holds the
// addresses of the q, k and v packed weights and scales (six int64); cos and sin are
// (head_dim,) in x's dtype. x is first RMSNorm-ed with norm_weight (x's dtype) and eps, as
// the layer's input norm, unless norm_weight is NULL. Groups of 64 on the VNNI path only;
// returns -1 otherwise.
int int4_qkv_rotary(const void *x, int x_bf16, int64_t H, const void *norm_weight, float eps, const int64_t *weights,
                    int64_t width, int64_t head_dim, const void *cos, const void *sin, void *q, void *k, void *v,
                    int threads) {
    if (!vnni_path(64, 0) || H % 64 || width % head_dim || head_dim % 2) return -1;
#if HAVE_VNNI512
    Activations input = {0};
    float *qkv = malloc(sizeof(float) * (size_t)(3 * width + H)), *normed = qkv + 3 * width;
    int status = qkv ? allocate(&input, 1, H, 64) : -1;
    if (!status) {
        rms_norm(x, x_bf16, H, norm_weight, eps, normed);
        quantize_activations(normed, 0, 1, H, 64, 0, &input);
        Product products[3];
        for (int p = 0; p < 3; p++)
            products[p] = (Product){&input, H, width, (const uint8_t *)weights[2 * p], (const uint16_t *)weights[2 * p + 1],
                                    qkv + p * width};
        status = run_products(products, 3, 0, threads);
    }
    if (!status) {
        const int64_t half = head_dim / 2;
        float c[head_dim], s[head_dim];
        for (int64_t i = 0; i < head_dim; i++) {
            c[i] = x_bf16 ? bf16_to_float(((const uint16_t *)cos)[i]) : ((const float *)cos)[i];
            s[i] = x_bf16 ? bf16_to_float(((const uint16_t *)sin)[i]) : ((const float *)sin)[i];
        }
        void *outs[3] = {q, k, v};
        for (int p = 0; p < 3; p++) {
            const float *in = qkv + p * width;
            for (int64_t base = 0; base < width; base += head_dim) {
                for (int64_t i = 0; i < half; i++) {
                    const float first = in[base + i], second = in[base + half + i];
                    const float rotated_first = p < 2 ? first * c[i] - second * s[i] : first;
                    const float rotated_second = p < 2 ? second * c[half + i] + first * s[half + i] : second;
                    store(outs[p], x_bf16, base + i, rotated_first);
                    store(outs[p], x_bf16, base + half + i, rotated_second);
                }
            }
        }
    }
    release(&input);
    free(qkv);
    return status;
#else
    (void)x, (void)x_bf16, (void)norm_weight, (void)eps, (void)weights, (void)cos, (void)sin, (void)q, (void)k, (void)v;
    (void)threads;
    return -1;
#endif
}

// A decoding step's attention output side for one token: softmax(q K^T * scaling) V per head
// over the `length` cached positions (float32), then the output projection: out (N,) =
// attended @ Wo.T in q's dtype. q is (heads * head_dim,); keys and values are strided
// (head, token) views of the cache with contiguous rows of head_dim, in q's dtype.
// Returns -1 off the VNNI path, for a head_dim not a multiple of 16, or without memory.
int int4_attend_project(const void *q, const void *keys, const void *values, int bf16, int64_t heads,
                        int64_t head_dim, int64_t length, int64_t key_head_stride, int64_t key_token_stride,
                        int64_t value_head_stride, int64_t value_token_stride, float scaling,
                        const uint8_t *o_packed, const uint16_t *o_scales, int64_t N, void *out, int threads) {
    const int64_t width = heads * head_dim;
    if (!vnni_path(64, 0) || head_dim % 16 || width % 64 || length <= 0) return -1;
#if HAVE_VNNI512
    float *attended = malloc(sizeof(float) * (size_t)width), *scores = malloc(sizeof(float) * (size_t)(heads * length));
    Activations hidden = {0};
    int status = attended && scores ? allocate(&hidden, 1, width, 64) : -1;
    if (!status) {
        const int64_t chunks = head_dim / 16;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t h = 0; h < heads; h++) {
            __m512 query[chunks], result[chunks];
            for (int64_t c = 0; c < chunks; c++) {
                query[c] = _mm512_mul_ps(load16(q, h * head_dim + 16 * c, bf16), _mm512_set1_ps(scaling));
                result[c] = _mm512_setzero_ps();
            }
            float *score = scores + h * length, top = -INFINITY, total = 0.f;
            for (int64_t t = 0; t < length; t++) {
                __m512 dot = _mm512_setzero_ps();
                for (int64_t c = 0; c < chunks; c++)
                    dot = _mm512_fmadd_ps(query[c], load16(keys, h * key_head_stride + t * key_token_stride + 16 * c, bf16), dot);
                score[t] = _mm512_reduce_add_ps(dot);
                top = fmaxf(top, score[t]);
            }
            for (int64_t t = 0; t < length; t += 16) {
                const __mmask16 valid = length - t >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (length - t)) - 1u);
                const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(valid, score + t), _mm512_set1_ps(top)));
                _mm512_mask_storeu_ps(score + t, valid, e);
                total += _mm512_mask_reduce_add_ps(valid, e);
            }
            for (int64_t t = 0; t < length; t++) {
                const __m512 weight = _mm512_set1_ps(score[t]);
                for (int64_t c = 0; c < chunks; c++)
                    result[c] = _mm512_fmadd_ps(weight, load16(values, h * value_head_stride + t * value_token_stride + 16 * c, bf16), result[c]);
            }
            for (int64_t c = 0; c < chunks; c++)
                _mm512_storeu_ps(attended + h * head_dim + 16 * c, _mm512_div_ps(result[c], _mm512_set1_ps(total)));
        }
        quantize_activations(attended, 0, 1, width, 64, 0, &hidden);
        const Product product = {&hidden, width, N, o_packed, o_scales, out};
        status = run_products(&product, 1, bf16, threads);
    }
    release(&hidden);
    free(attended), free(scores);
    return status;
#else
    (void)q, (void)keys, (void)values, (void)bf16, (void)key_head_stride, (void)key_token_stride;
    (void)value_head_stride, (void)value_token_stride, (void)scaling, (void)o_packed, (void)o_scales, (void)N;
    (void)out, (void)threads;
    return -1;
#endif
}

// 1 where this build has the AVX-512 VNNI path (the fast one), 0 where only the portable loops.
int int4_has_vnni(void) { return HAVE_VNNI512; }

// The weight back as bf16 (N, K): for prefill-sized batches, where a bf16 matmul wins.
void int4_dequantize(const uint8_t *packed, const uint16_t *scales, int64_t N, int64_t K, int64_t G,
                     uint16_t *weight, int threads) {
    const int64_t groups = K / G, half = G / 2;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t g = 0; g < groups; g++) {
            const uint8_t *w = packed + n * (K / 2) + g * half;
            const float scale = bf16_to_float(scales[(n * groups + g) * 2]);
            const float zero = bf16_to_float(scales[(n * groups + g) * 2 + 1]);
            uint16_t *row = weight + n * K + g * G;
            for (int64_t j = 0; j < half; j++) {
                row[j] = float_to_bf16((float)((w[j] & 15) - 8) * scale + zero);
                row[j + half] = float_to_bf16((float)((w[j] >> 4) - 8) * scale + zero);
            }
        }
    }
}
