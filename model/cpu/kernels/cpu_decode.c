// y = x @ W.T on the CPU for the weight formats of deepseek_ocr's kernel linears, and whole
// decoding steps of one token built on that product.
//
// Decoding multiplies one activation row by every weight, so it is bound by how fast the
// weights stream from memory. Both formats read fewer bytes than a bfloat16 weight:
//
//   int4   4-bit integers in groups of G inputs with a bf16 (scale, zero) per group: lossy,
//          a quarter of the bytes (int4.py quantizes)
//   bf16c  the bfloat16 weight itself with its exponents coded: lossless, three quarters of
//          the bytes (exponent_coding.py; bf16c_plan and bf16c_encode below)
//
// int4 layout:
//   packed  uint8  (N, K/2)        per group of G inputs, byte j holds input j in its low nibble
//                                  and input j + G/2 in its high nibble
//   scales  bf16   (N, K/G, 2)     per group (scale, zero):  w = (q - 8) * scale + zero,  q in 0..15
//
// PyTorch's own int4 kernel converts each weight to float before its multiply-add and is
// compute-bound at batch 1; here the activation row is quantized once per call to int8 (per
// group, symmetric), so that a group's 64 products are one VNNI instruction (vpdpbusd:
// unsigned 4-bit weight x signed 8-bit activation, summed into int32). Centring q on 8 halves
// the weights the activations' rounding error is multiplied by (on six decoder shapes the
// product's error against the dequantized float one measured 0.6-0.7%, against 0.7-2.3% with q
// in 0..15 and the group's min as zero), and the zero term uses the exact float sum of the
// activations:
//   sum_i w_i x_i = scale * sx * (sum_i q_i xq_i - 8 sum_i xq_i) + zero * sum_i x_i
//
// bf16c layout: a bfloat16's high byte is its sign and the top 7 bits of its exponent, and a
// row of weights uses few distinct high bytes (12-16 in a normal-distributed row of 1,280: the
// exponents span ~14 values, of either sign). Each weight keeps its low byte as it is; its high
// byte becomes a 4-bit index into the row's table of 16 high bytes. Where a row has more than
// 16 distinct high bytes, the table holds 0x00 and the 15 most frequent others; the remaining
// weights are coded as +0 and kept as exceptions (column, bf16 value), added back after the
// row's dot product.
//   codes           uint8 (N, 96 * ceil(K/64))   per 64 inputs: their 64 low bytes, then 32
//                                                bytes of high-byte indices, byte j holding
//                                                input j's in its low nibble and input j + 32's
//                                                in its high nibble; inputs past K are +0
//   tables          uint8 (N, 16)                per row, its high bytes in ascending order
//   exception_rows  int32 (N + 1)                row n's exceptions are [rows[n], rows[n + 1])
//   exceptions      uint16 (count, 2)            column, bf16 bits
// A chunk of 64 decodes in five vector instructions (the indices unpacked, a byte lookup, two
// byte interleaves) into 64 bf16 weights for two AVX512-BF16 dot products (vdpbf16ps: bf16 pairs
// multiplied exactly, summed in float32). The interleave leaves them in the order
// 0-7, 16-23, 32-39, 48-55 | 8-15, 24-31, 40-47, 56-63, so each call lays x out in that order
// once. Subnormal bf16 weights and inputs count as zero in vdpbf16ps.
//
// Rows are read several at a time from places far apart in the weight (8 streams per thread
// at batch 1, 4 for int4): a plain read with two threads measured ~23 GB/s here with one
// sequential stream per thread, ~32 GB/s with eight.
//
// Several activation rows (batched decoding) go through AMX's tile product where the CPU has
// it (see "bf16c on AMX"); the vector blocks otherwise.
//
// Entry points: kernel_linear (any rows), kernel_linear_many (several one-row products in one
// parallel region), and the two halves of a decoder layer for one token per sequence (up to
// 16 sequences), each in one call: kernel_attention_step (norm, q/k/v, rotary, the cache
// append, attention, o_proj, residual) and kernel_mlp_step (norm, router, the chosen and shared
// experts or a dense MLP, residual). Weights are passed as Weight descriptors (eight int64, see
// below).
//
// Built at first use with the machine's C compiler (-march=native). Without AVX-512 VNNI, or for
// groups of 32, int4 runs the portable loops below; without AVX512-BF16 there is no bf16c
// product (its tables still decode); the whole-step entry points then return -1 and the caller
// uses torch.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "vectors.h"

#if HAVE_AVX512 && defined(__AVX512VNNI__)
#define HAVE_VNNI512 1
#else
#define HAVE_VNNI512 0
#endif
#if HAVE_AVX512 && defined(__AVX512BF16__)
#define HAVE_BF16C 1
#else
#define HAVE_BF16C 0
#endif
#if HAVE_BF16C && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#include "amx.h"
#define HAVE_AMX 1
#else
#define HAVE_AMX 0
#endif
// int4 products of groups of 64 without VNNI: vpmaddubsw and vpmaddwd (the AVX2 route llama.cpp's
// Q4 kernels take), exact in int32 as VNNI's.
#define HAVE_INT4_AVX2 (HAVE_AVX2 && !HAVE_VNNI512)
// Where a vector path multiplies int4 groups of 64 and coded bfloat16 with float32 activations.
#define HAVE_INT4_VECTORS (HAVE_VNNI512 || HAVE_INT4_AVX2 || HAVE_NEON)
#define HAVE_WIDE_VECTORS (HAVE_AVX2 || HAVE_NEON)

enum { FORMAT_INT4 = 1, FORMAT_BF16C = 2 };

// A weight as Python describes it (eight int64).
typedef struct {
    int64_t format;                   // FORMAT_INT4 or FORMAT_BF16C
    int64_t N, K;                     // output and input features
    int64_t group;                    // int4: inputs per group (even, up to 64); bf16c: 0
    const uint8_t *data;              // int4: packed; bf16c: codes
    const void *side;                 // int4: scales; bf16c: tables
    const int32_t *exception_rows;    // bf16c
    const uint16_t *exceptions;       // bf16c
} Weight;

static inline uint16_t float_to_bf16(float f) {  // round to nearest even, as torch does
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);  // quiet NaN
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static inline float load_one(const void *x, int bf16, int64_t index) {
    return bf16 ? bf16_to_float(((const uint16_t *)x)[index]) : ((const float *)x)[index];
}

static inline void store(void *out, int out_bf16, int64_t index, float value) {
    if (out_bf16)
        ((uint16_t *)out)[index] = float_to_bf16(value);
    else
        ((float *)out)[index] = value;
}

static int64_t coded_chunks(int64_t K) { return (K + 63) / 64; }

// ---- int4 ---------------------------------------------------------------------------------

// Streaming from memory, the hardware prefetcher alone left lm_head's product at ~15 GB/s;
// asking for the row this far ahead (into L2) brings it to ~23 GB/s, near a plain read's 24.
// Farther (16-64 rows) or into L1 measured no better.
#define PREFETCH_ROWS 8


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
// The VNNI path reads two groups at once (see DEFINE_INT4_BLOCK): within each pair of groups
// (g, h) the activations are stored as g[0:32] h[0:32] g[32:64] h[32:64], matching the low and
// high nibbles of the pair's 64 packed bytes. A last unpaired group keeps its natural order.
static void pair_groups(int8_t *xq, int64_t groups) {
    for (int64_t g = 0; g + 1 < groups; g += 2) {
        int8_t swap[32];
        memcpy(swap, xq + g * 64 + 32, 32);
        memcpy(xq + g * 64 + 32, xq + g * 64 + 64, 32);
        memcpy(xq + g * 64 + 64, swap, 32);
    }
}
#elif HAVE_INT4_AVX2
static inline float max8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

static inline int32_t sum8_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1)));
}

// The same as quantize_group for G = 64, eight lanes at a time.
static void quantize_group64(const float *v, int8_t *xq, float *sx, float *xsum, float *centre) {
    __m256 part[8], amax = _mm256_setzero_ps(), sum = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.f);
    for (int k = 0; k < 8; k++) {
        part[k] = _mm256_loadu_ps(v + 8 * k);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, part[k]));
        sum = _mm256_add_ps(sum, part[k]);
    }
    const float top = max8(amax), inverse = top > 0.f ? 127.f / top : 0.f;
    __m256i q[8], qsum = _mm256_setzero_si256();
    for (int k = 0; k < 8; k++) {
        q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(part[k], _mm256_set1_ps(inverse)));  // nearest even
        qsum = _mm256_add_epi32(qsum, q[k]);
    }
    // Packing narrows within 128-bit lanes; the permute puts the 4-byte runs back in order.
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int k = 0; k < 8; k += 4) {
        const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[k], q[k + 1]), _mm256_packs_epi32(q[k + 2], q[k + 3]));
        _mm256_storeu_si256((__m256i *)(xq + 8 * k), _mm256_permutevar8x32_epi32(bytes, order));
    }
    float total[8];
    _mm256_storeu_ps(total, sum);
    *sx = top / 127.f, *centre = 8.f * *sx * (float)sum8_epi32(qsum);
    *xsum = ((total[0] + total[4]) + (total[1] + total[5])) + ((total[2] + total[6]) + (total[3] + total[7]));
}

#endif

// Whether int4 products of group size G take a vector path (VNNI, else AVX2) or the portable loops.
static int int4_vector_path(int64_t G, int portable) { return HAVE_INT4_VECTORS && !portable && G == 64; }

static int allocate_activations(Activations *a, int64_t M, int64_t K, int64_t G) {
    const int64_t groups = K / G, padded = (M + 3) / 4 * 4;  // rows, padded for the 4-row blocks
    a->xq = calloc((size_t)(padded * K), 1);
    a->sx = calloc((size_t)(padded * groups), sizeof(float));
    a->xsum = calloc((size_t)(padded * groups), sizeof(float));
    a->centre = calloc((size_t)(padded * groups), sizeof(float));
    return a->xq && a->sx && a->xsum && a->centre ? 0 : -1;
}

static void release_activations(Activations *a) { free(a->xq), free(a->sx), free(a->xsum), free(a->centre); }

static void quantize_activations(const void *x, int x_bf16, int64_t M, int64_t K, int64_t G, int portable,
                                 Activations *a) {
    const int64_t groups = K / G;
    float v[64];
    (void)portable;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t g = 0; g < groups; g++) {
            const int64_t base = m * K + g * G, i = m * groups + g;
            for (int64_t k = 0; k < G; k++) v[k] = load_one(x, x_bf16, base + k);
#if HAVE_VNNI512 || HAVE_INT4_AVX2
            if (int4_vector_path(G, portable)) {
                quantize_group64(v, a->xq + base, a->sx + i, a->xsum + i, a->centre + i);
                continue;
            }
#endif
            quantize_group(v, G, a->xq + base, a->sx + i, a->xsum + i, a->centre + i);
        }
#if HAVE_VNNI512
        if (int4_vector_path(G, portable)) pair_groups(a->xq + m * K, groups);
#endif
    }
}

#if HAVE_NEON
// One group of 64 of a row against one activation row, exactly (products of at most 15 x 127
// in int16, pairs summed into int32).
static inline int32_t int4_group_dot_neon(const uint8_t *w, const int8_t *x) {
    const uint8x16_t low4 = vdupq_n_u8(15);
    int32x4_t acc = vdupq_n_s32(0);
    for (int q = 0; q < 2; q++) {
        const uint8x16_t bytes = vld1q_u8(w + 16 * q);
        const int8x16_t low = vreinterpretq_s8_u8(vandq_u8(bytes, low4)), high = vreinterpretq_s8_u8(vshrq_n_u8(bytes, 4));
        const int8x16_t x_low = vld1q_s8(x + 16 * q), x_high = vld1q_s8(x + 32 + 16 * q);
        acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(low), vget_low_s8(x_low)));
        acc = vpadalq_s16(acc, vmull_high_s8(low, x_low));
        acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(high), vget_low_s8(x_high)));
        acc = vpadalq_s16(acc, vmull_high_s8(high, x_high));
    }
    return vaddvq_s32(acc);
}
#endif

// One output row n for M activation rows; any even group size up to 64. `neon`: groups of 64
// through NEON's products (the activations in natural order, as here).
static void int4_row(int64_t n, int64_t M, const Weight *w, const Activations *a, void *out, int out_bf16, int neon) {
    (void)neon;  // used on AArch64 only
    const int64_t K = w->K, G = w->group, groups = K / G, half = G / 2;
    const uint8_t *row = w->data + n * (K / 2);
    const uint16_t *sz = (const uint16_t *)w->side + n * groups * 2;
    for (int64_t m = 0; m < M; m++) {
        float acc = 0.f;
        for (int64_t g = 0; g < groups; g++) {
            const uint8_t *wg = row + g * half;
            const int8_t *xg = a->xq + m * K + g * G;
            int32_t dot = 0;
#if HAVE_NEON
            if (neon) {
                dot = int4_group_dot_neon(wg, xg);
            } else
#endif
                for (int64_t j = 0; j < half; j++) dot += (wg[j] & 15) * xg[j] + (wg[j] >> 4) * xg[j + half];
            const float scale = bf16_to_float(sz[2 * g]), zero = bf16_to_float(sz[2 * g + 1]);
            const int64_t i = m * groups + g;
            acc += scale * (a->sx[i] * (float)dot - a->centre[i]) + zero * a->xsum[i];
        }
        store(out, out_bf16, m * w->N + n, acc);
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

// Output rows rows[0..ROWS) for activation rows m0..m0+ACTS-1 (ROWS * ACTS = 4 accumulators):
// the weights are unpacked once per row and the activations loaded once per act. Groups go in
// chunks of 16 so that scales, zeros and the zero term are 16-lane vector work, and in pairs:
// a pair's 64 packed bytes are one load, their low nibbles (inputs 0..31 of both groups) and
// high nibbles (32..63) two dot products into one register whose lanes 0-7 belong to the first
// group and 8-15 to the second, scaled by one multiply-add (per group: 4.5 instructions, not 8).
#define DEFINE_INT4_BLOCK(NAME, ROWS, ACTS)                                                            \
    static void NAME(const Weight *w, const int64_t *rows, int64_t m0, const Activations *a,            \
                     float result[ROWS][ACTS]) {                                                       \
        const int64_t K = w->K, groups = K / 64;                                                       \
        const uint8_t *packed = w->data;                                                               \
        const uint16_t *scales = (const uint16_t *)w->side;                                            \
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
                load_scales(scales + (rows[r] * groups + g0) * 2, count, &scale, &zero);               \
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
                    const uint8_t *w_row = packed + rows[r] * (K / 2) + (g0 + j) * 32;                 \
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
                    const __m512i wq = unpack64(packed + rows[r] * (K / 2) + (g0 + j) * 32);           \
                    for (int s = 0; s < ACTS; s++) {                                                   \
                        const __m512i x = _mm512_loadu_si512((const void *)(a->xq + (m0 + s) * K + (g0 + j) * 64)); \
                        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, x);        \
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

DEFINE_INT4_BLOCK(int4_4rows, 4, 1)  // decoding one sequence
DEFINE_INT4_BLOCK(int4_4acts, 1, 4)  // several sequences, or the tail rows of one
#endif

#if HAVE_INT4_AVX2
// One group of 64 of a row against one activation row: eight int32 partial sums. Byte j of the
// group's 32 packed bytes holds input j (low nibble) and input j + 32 (high), so the activations
// are read in their natural order. vpmaddubsw's pair sums (at most 2 x 15 x 127) cannot saturate.
static inline __m256i int4_group_dot(const uint8_t *w, const int8_t *x) {
    const __m256i bytes = _mm256_loadu_si256((const __m256i *)w), low4 = _mm256_set1_epi8(15);
    const __m256i low = _mm256_and_si256(bytes, low4), high = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(low, _mm256_loadu_si256((const __m256i *)x)),
                                           _mm256_maddubs_epi16(high, _mm256_loadu_si256((const __m256i *)(x + 32))));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

// Eight vectors of int32 partial sums -> the vector of their eight totals.
static inline __m256i int4_totals(const __m256i d[8]) {
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(d[0], d[1]), _mm256_hadd_epi32(d[2], d[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(d[4], d[5]), _mm256_hadd_epi32(d[6], d[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

// As DEFINE_INT4_BLOCK, on AVX2: groups go in chunks of 8, whose exact integer dot products
// become one 8-lane vector scaled by one multiply-add.
#define DEFINE_INT4_BLOCK(NAME, ROWS, ACTS)                                                            \
    static void NAME(const Weight *w, const int64_t *rows, int64_t m0, const Activations *a,            \
                     float result[ROWS][ACTS]) {                                                       \
        const int64_t K = w->K, groups = K / 64;                                                       \
        const uint16_t *scales = (const uint16_t *)w->side;                                            \
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);                                \
        const __m256i top = _mm256_set1_epi32((int)0xffff0000u);                                       \
        __m256 acc[ROWS][ACTS];                                                                        \
        for (int r = 0; r < ROWS; r++)                                                                 \
            for (int s = 0; s < ACTS; s++) acc[r][s] = _mm256_setzero_ps();                            \
        for (int64_t g0 = 0; g0 < groups; g0 += 8) {                                                   \
            const int count = groups - g0 < 8 ? (int)(groups - g0) : 8;                                \
            const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lane);                  \
            for (int r = 0; r < ROWS; r++) {                                                           \
                const uint8_t *w_row = w->data + rows[r] * (K / 2) + g0 * 32;                          \
                _mm_prefetch((const char *)(w_row + PREFETCH_ROWS * (K / 2)), _MM_HINT_T1);            \
                _mm_prefetch((const char *)(w_row + PREFETCH_ROWS * (K / 2) + 128), _MM_HINT_T1);      \
                const __m256i pairs = _mm256_maskload_epi32((const int *)(scales + (rows[r] * groups + g0) * 2), valid); \
                const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));                \
                const __m256 zero = _mm256_castsi256_ps(_mm256_and_si256(pairs, top));                 \
                for (int s = 0; s < ACTS; s++) {                                                       \
                    const int64_t i = (m0 + s) * groups + g0;                                          \
                    const int8_t *xs = a->xq + (m0 + s) * K + g0 * 64;                                 \
                    __m256i dots[8];                                                                   \
                    for (int j = 0; j < 8; j++)                                                        \
                        dots[j] = j < count ? int4_group_dot(w_row + j * 32, xs + j * 64) : _mm256_setzero_si256(); \
                    const __m256 sx = _mm256_maskload_ps(a->sx + i, valid);                            \
                    const __m256 xsum = _mm256_maskload_ps(a->xsum + i, valid);                        \
                    const __m256 centre = _mm256_maskload_ps(a->centre + i, valid);                    \
                    const __m256 dot = _mm256_cvtepi32_ps(int4_totals(dots));                          \
                    acc[r][s] = _mm256_fmadd_ps(dot, _mm256_mul_ps(scale, sx), acc[r][s]);             \
                    acc[r][s] = _mm256_fmadd_ps(zero, xsum, acc[r][s]);                                \
                    acc[r][s] = _mm256_fnmadd_ps(scale, centre, acc[r][s]);                            \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        for (int r = 0; r < ROWS; r++)                                                                 \
            for (int s = 0; s < ACTS; s++) result[r][s] = sum_m256(acc[r][s]);                         \
    }

DEFINE_INT4_BLOCK(int4_4rows, 4, 1)  // decoding one sequence
DEFINE_INT4_BLOCK(int4_4acts, 1, 4)  // several sequences, or the tail rows of one
#endif

// ---- bf16c --------------------------------------------------------------------------------

// Where input i of a 64-input chunk sits in the decoded order (see the layout above).
static inline int64_t decoded_position(int64_t i) {
    const int64_t lane = i / 16, t = i % 16;
    return t < 8 ? 8 * lane + t : 32 + 8 * lane + (t - 8);
}

static inline float exception_sum(const Weight *w, int64_t n, const float *x) {
    float sum = 0.f;
    for (int32_t e = w->exception_rows[n]; e < w->exception_rows[n + 1]; e++)
        sum += bf16_to_float(w->exceptions[2 * e + 1]) * x[w->exceptions[2 * e]];
    return sum;
}

#if HAVE_AVX512
// A chunk's 64 low bytes and 64 high bytes (from the row's table, broadcast to every lane).
static inline void decode_bytes(const uint8_t *chunk, __m512i table, __m512i *low, __m512i *high) {
    const __m512i nibbles = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(chunk + 64)));
    const __m512i index = _mm512_and_si512(_mm512_srlv_epi64(nibbles, _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0)),
                                           _mm512_set1_epi8(15));
    *low = _mm512_loadu_si512((const void *)chunk);
    *high = _mm512_shuffle_epi8(table, index);
}
#endif

#if HAVE_BF16C
// 64 coded weights -> two vectors of 32 bf16 in the decoded order.
static inline void decode_chunk(const uint8_t *chunk, __m512i table, __m512i *first, __m512i *second) {
    __m512i low, high;
    decode_bytes(chunk, table, &low, &high);
    *first = _mm512_unpacklo_epi8(low, high);
    *second = _mm512_unpackhi_epi8(low, high);
}

// Output rows rows[0..ROWS) for the activation rows m0..m0+ACTS-1, exceptions not included.
#define DEFINE_CODED_BLOCK(NAME, ROWS, ACTS)                                                           \
    static void NAME(const Weight *w, const int64_t *rows, int64_t m0, const uint16_t *ordered,         \
                     float result[ROWS][ACTS]) {                                                       \
        const int64_t chunks = coded_chunks(w->K), stride = 96 * chunks, width = 64 * chunks;          \
        const uint8_t *tables = (const uint8_t *)w->side;                                              \
        const uint8_t *codes[ROWS];                                                                    \
        __m512i table[ROWS];                                                                           \
        __m512 acc[ROWS][ACTS];                                                                        \
        for (int r = 0; r < ROWS; r++) {                                                               \
            codes[r] = w->data + rows[r] * stride;                                                     \
            table[r] = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(tables + rows[r] * 16))); \
            for (int s = 0; s < ACTS; s++) acc[r][s] = _mm512_setzero_ps();                            \
        }                                                                                              \
        for (int64_t c = 0; c < chunks; c++) {                                                         \
            for (int r = 0; r < ROWS; r++) {                                                           \
                __m512i first, second;                                                                 \
                decode_chunk(codes[r] + 96 * c, table[r], &first, &second);                           \
                for (int s = 0; s < ACTS; s++) {                                                       \
                    const uint16_t *x = ordered + (m0 + s) * width + 64 * c;                           \
                    acc[r][s] = _mm512_dpbf16_ps(acc[r][s], (__m512bh)first, (__m512bh)_mm512_loadu_si512((const void *)x)); \
                    acc[r][s] = _mm512_dpbf16_ps(acc[r][s], (__m512bh)second, (__m512bh)_mm512_loadu_si512((const void *)(x + 32))); \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        for (int r = 0; r < ROWS; r++)                                                                 \
            for (int s = 0; s < ACTS; s++) result[r][s] = _mm512_reduce_add_ps(acc[r][s]);             \
    }

DEFINE_CODED_BLOCK(coded_8rows, 8, 1)  // decoding one sequence
DEFINE_CODED_BLOCK(coded_1row, 1, 1)
DEFINE_CODED_BLOCK(coded_4rows_4acts, 4, 4)  // several sequences
DEFINE_CODED_BLOCK(coded_1row_4acts, 1, 4)
#endif

// ---- bf16c with float32 activations ----------------------------------------------------------
//
// Without AVX512-BF16, or where the activations are float32 (a float32 model: its weights are
// the checkpoint's bfloat16 exactly), the weights are widened instead: a bfloat16 is the top half
// of the float32 of the same value, so a 32-bit lane holding a pair of bf16 gives its high one by
// masking off the low half and its low one by shifting it up, and each pair of products is two
// float32 multiply-adds, exact products summed in float32. Subnormals are kept (vdpbf16ps
// flushes them). The 64 weights of a chunk come out of decode_wide as eight vectors of 8 in the
// order widened_position gives, and the activations are laid out once per call in that order.
//
// AVX2's byte interleave works within 128-bit halves: the low bytes of inputs 0-31 with their
// high bytes give the words of inputs 0-7 and 16-23 (unpacklo), 8-15 and 24-31 (unpackhi).
static inline int64_t widened_position(int64_t i) {
    if (HAVE_NEON) return i;  // NEON's zip interleaves whole registers: the natural order
    const int64_t half = i / 32, lane = i % 32 / 16, t = i % 16;
    const int64_t words = 2 * half + (t >= 8), element = 8 * lane + t % 8;  // which vector of 16 words, where
    return (2 * words + element % 2) * 8 + element / 2;
}

#if HAVE_AVX2
static inline void decode_wide(const uint8_t *chunk, __m256i table, __m256 out[8]) {
    const __m256i low4 = _mm256_set1_epi8(15), nibbles = _mm256_loadu_si256((const __m256i *)(chunk + 64));
    const __m256i high_a = _mm256_shuffle_epi8(table, _mm256_and_si256(nibbles, low4));
    const __m256i high_b = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(nibbles, 4), low4));
    const __m256i low_a = _mm256_loadu_si256((const __m256i *)chunk);
    const __m256i low_b = _mm256_loadu_si256((const __m256i *)(chunk + 32));
    const __m256i words[4] = {_mm256_unpacklo_epi8(low_a, high_a), _mm256_unpackhi_epi8(low_a, high_a),
                              _mm256_unpacklo_epi8(low_b, high_b), _mm256_unpackhi_epi8(low_b, high_b)};
    const __m256i top = _mm256_set1_epi32((int)0xffff0000u);
    for (int v = 0; v < 4; v++) {
        out[2 * v] = _mm256_castsi256_ps(_mm256_slli_epi32(words[v], 16));
        out[2 * v + 1] = _mm256_castsi256_ps(_mm256_and_si256(words[v], top));
    }
}

// Output rows rows[0..ROWS) for the activation rows m0..m0+ACTS-1 (widened layout), exceptions
// not included. Each output keeps two sums (the chunk's even and odd vectors): a multiply-add
// waits for the one before it on the same sum, so four outputs alone would leave half of the
// FMA units idle.
// Each row's chunk this many bytes ahead is asked for (a chunk spans two lines): left to the
// hardware prefetcher, the codes' loads stalled the products, most with several sequences, whose
// arithmetic then waited on memory instead of overlapping it (docs/benchmarks.md has the figures).
#ifndef WIDE_AHEAD
#define WIDE_AHEAD 1536
#endif
#define DEFINE_WIDE_BLOCK(NAME, ROWS, ACTS)                                                            \
    static void NAME(const Weight *w, const int64_t *rows, int64_t m0, const float *widened,            \
                     float result[ROWS][ACTS]) {                                                       \
        enum { SUMS = ROWS * ACTS >= 8 ? 1 : 2 };                                                      \
        const int64_t chunks = coded_chunks(w->K), stride = 96 * chunks, width = 64 * chunks;          \
        const uint8_t *tables = (const uint8_t *)w->side;                                              \
        const uint8_t *codes[ROWS];                                                                    \
        __m256i table[ROWS];                                                                           \
        __m256 acc[ROWS][ACTS][2];                                                                     \
        for (int r = 0; r < ROWS; r++) {                                                               \
            codes[r] = w->data + rows[r] * stride;                                                     \
            table[r] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tables + rows[r] * 16))); \
            for (int s = 0; s < ACTS; s++)                                                             \
                for (int u = 0; u < SUMS; u++) acc[r][s][u] = _mm256_setzero_ps();                     \
        }                                                                                              \
        for (int64_t c = 0; c < chunks; c++) {                                                         \
            for (int r = 0; r < ROWS; r++) {                                                           \
                __m256 weights[8];                                                                     \
                _mm_prefetch((const char *)codes[r] + 96 * c + WIDE_AHEAD, _MM_HINT_T0);               \
                _mm_prefetch((const char *)codes[r] + 96 * c + WIDE_AHEAD + 64, _MM_HINT_T0);          \
                decode_wide(codes[r] + 96 * c, table[r], weights);                                     \
                for (int s = 0; s < ACTS; s++) {                                                       \
                    const float *x = widened + (m0 + s) * width + 64 * c;                              \
                    for (int v = 0; v < 8; v++)                                                        \
                        acc[r][s][v % SUMS] = _mm256_fmadd_ps(weights[v], _mm256_loadu_ps(x + 8 * v), acc[r][s][v % SUMS]); \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        for (int r = 0; r < ROWS; r++)                                                                 \
            for (int s = 0; s < ACTS; s++) result[r][s] = sum_m256(SUMS == 1 ? acc[r][s][0] : _mm256_add_ps(acc[r][s][0], acc[r][s][1])); \
    }

DEFINE_WIDE_BLOCK(wide_4rows, 4, 1)  // decoding one sequence
DEFINE_WIDE_BLOCK(wide_1row, 1, 1)
DEFINE_WIDE_BLOCK(wide_2rows_4acts, 2, 4)  // several sequences
DEFINE_WIDE_BLOCK(wide_1row_4acts, 1, 4)
#endif

#if HAVE_NEON
// 64 coded weights -> 16 vectors of 4 float32, in the natural order.
static inline void decode_wide_neon(const uint8_t *chunk, uint8x16_t table, float32x4_t out[16]) {
    for (int half = 0; half < 2; half++) {  // inputs 0-31 (low nibbles), then 32-63 (high nibbles)
        for (int q = 0; q < 2; q++) {       // 16 inputs
            const uint8x16_t nibbles = vld1q_u8(chunk + 64 + 16 * q);
            const uint8x16_t index = half ? vshrq_n_u8(nibbles, 4) : vandq_u8(nibbles, vdupq_n_u8(15));
            const uint8x16_t high = vqtbl1q_u8(table, index), low = vld1q_u8(chunk + 32 * half + 16 * q);
            const uint16x8_t first = vreinterpretq_u16_u8(vzip1q_u8(low, high));
            const uint16x8_t second = vreinterpretq_u16_u8(vzip2q_u8(low, high));
            float32x4_t *o = out + 8 * half + 4 * q;
            o[0] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(first), 16));
            o[1] = vreinterpretq_f32_u32(vshll_high_n_u16(first, 16));
            o[2] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(second), 16));
            o[3] = vreinterpretq_f32_u32(vshll_high_n_u16(second, 16));
        }
    }
}

// Output row n for up to 4 activation rows m0.. (widened layout), exceptions not included.
static void wide_row_neon(const Weight *w, int64_t n, int64_t m0, int64_t acts, const float *widened, float *result) {
    const int64_t chunks = coded_chunks(w->K), width = 64 * chunks;
    const uint8_t *codes = w->data + n * 96 * chunks;
    const uint8x16_t table = vld1q_u8((const uint8_t *)w->side + n * 16);
    float32x4_t acc[4] = {vdupq_n_f32(0.f), vdupq_n_f32(0.f), vdupq_n_f32(0.f), vdupq_n_f32(0.f)};
    for (int64_t c = 0; c < chunks; c++) {
        float32x4_t weights[16];
        decode_wide_neon(codes + 96 * c, table, weights);
        for (int64_t s = 0; s < acts; s++) {
            const float *x = widened + (m0 + s) * width + 64 * c;
            for (int v = 0; v < 16; v++) acc[s] = vfmaq_f32(acc[s], weights[v], vld1q_f32(x + 4 * v));
        }
    }
    for (int64_t s = 0; s < acts; s++) result[s] = vaddvq_f32(acc[s]);
}

#endif

// Row n of a coded weight times one activation row (natural order), exceptions not included:
// plain C, for builds without vectors. Sixteen partial sums, as the vector paths keep lanes: one
// running sum over thousands of inputs carries several times their rounding error.
static float coded_row_portable(const Weight *w, int64_t n, const float *x) {
    const uint8_t *codes = w->data + n * 96 * coded_chunks(w->K), *table = (const uint8_t *)w->side + n * 16;
    float partial[16] = {0.f};
    for (int64_t k = 0; k < w->K; k++) {
        const uint8_t *chunk = codes + 96 * (k / 64);
        const int64_t i = k % 64;
        const int index = i < 32 ? chunk[64 + i] & 15 : chunk[64 + i - 32] >> 4;
        partial[k % 16] = fmaf(bf16_to_float((uint16_t)(table[index] << 8 | chunk[i])), x[k], partial[k % 16]);
    }
    for (int width = 8; width > 0; width /= 2)
        for (int j = 0; j < width; j++) partial[j] += partial[j + width];
    return partial[0];
}

// ---- bf16c on AMX ---------------------------------------------------------------------------
//
// With several activation rows the blocks above are bound by their multiply-adds: two
// vdpbf16ps per 64 weights per row, so four rows cost ~1.6x one row's weight stream. AMX's
// tile product takes the weights as its first operand, 16 output rows of 32 decoded bf16 each,
// exactly as decode_chunk leaves them, and up to 16 activation rows as its second (pairs of
// inputs, in the same decoded order); one tdpbf16ps does 16 x 32 weights for every row at
// once. Measured in L2 on this machine, 4 rows took 3.3 ns per 64 weights against 9.2 ns; from
// memory, 4 rows through lm_head cost about what one row does (the weight stream). Results
// differ from the vector blocks only in float32 summation order.
#if HAVE_AMX
#define AMX_MIN_ROWS 2   // one row stays on coded_8rows: bandwidth-bound either way
#define AMX_MAX_ACTS 16  // activation rows per tile product (a tile row holds 16 float32 or bf16 pairs)
#define AMX_ROWS 16      // output rows per block (one tile's)
// Each row's chunk this many bytes ahead is asked for: sixteen rows at once are more streams
// than the hardware prefetcher follows. With it, lm_head's product for 4 rows took 10.6-13.4 ms
// against 14.2-15.0 without (one row: 9.6-13 ms); 768 and 1536 bytes measured no better.
#define AMX_AHEAD 384

static int amx_wanted = 1;

static int amx_ready(void) { return amx_permitted() && amx_wanted; }

// Tiles 0-1: float32 accumulators (16 output rows x acts) of the two halves of each chunk (two
// chains of tile products, summed at the end); 2-3: the halves' decoded weights (16 rows x 32
// bf16); 4-5: their activations (16 input pairs x acts).
static void configure_tiles(int64_t acts) {
    const uint16_t per_act = (uint16_t)(4 * acts);  // a float32 or a bf16 pair per activation row
    const uint16_t bytes_per_row[6] = {per_act, per_act, 64, 64, per_act, per_act};
    configure_16row_tiles(6, bytes_per_row);
}

// bf16 of the activation tiles per chunk (and block of AMX_MAX_ACTS rows): two halves of 16 x 16 pairs.
#define AMX_CHUNK_TILES (2 * 16 * AMX_MAX_ACTS * 2)

// Output rows rows[0..16) for one block of activation rows (as configured): result[row][act].
static void coded_16rows_amx(const Weight *w, const int64_t *rows, const uint16_t *tiles, int64_t acts, float *result) {
    const int64_t chunks = coded_chunks(w->K), stride = 96 * chunks;
    const uint8_t *tables = (const uint8_t *)w->side, *codes[AMX_ROWS];
    _Alignas(64) uint16_t decoded[2][AMX_ROWS][32];
    _Alignas(64) float halves[2][AMX_ROWS * AMX_MAX_ACTS];
    __m512i table[AMX_ROWS];
    for (int r = 0; r < AMX_ROWS; r++) {
        codes[r] = w->data + rows[r] * stride;
        table[r] = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(tables + rows[r] * 16)));
    }
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t c = 0; c < chunks; c++) {
        for (int r = 0; r < AMX_ROWS; r++) {
            __m512i first, second;
            _mm_prefetch((const char *)codes[r] + 96 * c + AMX_AHEAD, _MM_HINT_T0);
            _mm_prefetch((const char *)codes[r] + 96 * c + AMX_AHEAD + 64, _MM_HINT_T0);  // a chunk spans two lines
            decode_chunk(codes[r] + 96 * c, table[r], &first, &second);
            _mm512_store_si512(decoded[0][r], first);
            _mm512_store_si512(decoded[1][r], second);
        }
        const uint16_t *x = tiles + c * AMX_CHUNK_TILES;
        _tile_loadd(4, x, 4 * AMX_MAX_ACTS);
        _tile_loadd(5, x + 16 * AMX_MAX_ACTS * 2, 4 * AMX_MAX_ACTS);
        _tile_loadd(2, decoded[0], 64);
        _tile_loadd(3, decoded[1], 64);
        _tile_dpbf16ps(0, 2, 4);
        _tile_dpbf16ps(1, 3, 5);
    }
    _tile_stored(0, halves[0], 4 * acts);
    _tile_stored(1, halves[1], 4 * acts);
    for (int64_t i = 0; i < AMX_ROWS * acts; i++) result[i] = halves[0][i] + halves[1][i];
}

// The activations (M, 64 * chunks) in the decoded order as B tiles: per block of AMX_MAX_ACTS
// rows and per chunk, each half's 16 input pairs x the block's rows (zero past M).
static uint16_t *activation_tiles(const uint16_t *ordered, int64_t M, int64_t chunks) {
    const int64_t blocks = (M + AMX_MAX_ACTS - 1) / AMX_MAX_ACTS, width = 64 * chunks;
    uint16_t *tiles = calloc((size_t)(blocks * chunks * AMX_CHUNK_TILES), sizeof(uint16_t));
    if (!tiles) return NULL;
    for (int64_t m = 0; m < M; m++) {
        // Row m is column m % 16 of its block: input pair p (two bf16, in the decoded order) goes
        // to tile row p, whatever its chunk and half.
        uint16_t *column = tiles + m / AMX_MAX_ACTS * chunks * AMX_CHUNK_TILES + 2 * (m % AMX_MAX_ACTS);
        for (int64_t pair = 0; pair < width / 2; pair++)
            memcpy(column + pair * 2 * AMX_MAX_ACTS, ordered + m * width + 2 * pair, 2 * sizeof(uint16_t));
    }
    return tiles;
}
#endif


// ---- inputs and products ------------------------------------------------------------------

// Activation rows laid out for one weight format.
typedef struct {
    int64_t M, K;
    int64_t format, group;
    int portable;           // the plain C loops
    Activations q;          // int4: quantized
    float *natural;         // bf16c: (M, K) the activations as float32 (the exceptions, the portable loops)
    // bf16c, one of (else the portable loops):
    uint16_t *ordered;      // AVX512-BF16: (M rounded up to 4, 64 * chunks) bf16 in the decoded order, zero padded
    float *widened;         // AVX2: (M rounded up to 4, 64 * chunks) float32 in the widened order, zero padded
    uint16_t *tiles;        // bf16c on AMX (M >= AMX_MIN_ROWS): ordered as tiles (activation_tiles), else NULL
} Input;

static void discard(Input *in) {
    release_activations(&in->q);
    free(in->ordered), free(in->widened), free(in->natural), free(in->tiles);
}


// x (M, K), bf16 or float32, laid out for weight w. `bf16_model`: the model computes in bfloat16,
// so float32 activations are rounded to it first (as torch would hold them) and coded products
// take AVX512-BF16's dot product where there is one. Returns 0, or -1 without memory (in is then
// safe to discard).
static int prepare(Input *in, const void *x, int x_bf16, int64_t M, const Weight *w, int portable, int bf16_model) {
    memset(in, 0, sizeof *in);
    in->M = M, in->K = w->K, in->format = w->format, in->group = w->group, in->portable = portable;
    if (w->format == FORMAT_INT4) {
        if (allocate_activations(&in->q, M, w->K, w->group)) return -1;
        quantize_activations(x, x_bf16, M, w->K, w->group, portable, &in->q);
        return 0;
    }
    const int64_t K = w->K, width = 64 * coded_chunks(K), padded = (M + 3) / 4 * 4;
    const int round = x_bf16 || bf16_model;
    in->natural = malloc(sizeof(float) * (size_t)(M * K));
    if (!portable && round && HAVE_BF16C)
        in->ordered = calloc((size_t)(padded * width), sizeof(uint16_t));
    else if (!portable && HAVE_WIDE_VECTORS)
        in->widened = calloc((size_t)(padded * width), sizeof(float));
    if (!in->natural || (!portable && (HAVE_BF16C || HAVE_WIDE_VECTORS) && !in->ordered && !in->widened)) return -1;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t k = 0; k < K; k++) {
            const float value = x_bf16 ? bf16_to_float(((const uint16_t *)x)[m * K + k])
                                : round ? bf16_to_float(float_to_bf16(((const float *)x)[m * K + k]))
                                        : ((const float *)x)[m * K + k];
            in->natural[m * K + k] = value;
            if (in->ordered) in->ordered[m * width + k / 64 * 64 + decoded_position(k % 64)] = float_to_bf16(value);
            if (in->widened) in->widened[m * width + k / 64 * 64 + widened_position(k % 64)] = value;
        }
    }
#if HAVE_AMX
    if (in->ordered && M >= AMX_MIN_ROWS && amx_ready() && !(in->tiles = activation_tiles(in->ordered, M, coded_chunks(K)))) return -1;
#endif
    return 0;
}

// Whether x prepared for `in` serves weight w too.
static int serves(const Input *in, const Weight *w) {
    return in->format == w->format && in->K == w->K && in->group == w->group;
}

// One input through one weight.
typedef struct {
    const Weight *w;
    const Input *in;
    void *out;  // (M, N)
} Product;

static void int4_range(const Product *p, int64_t a, int64_t b, int out_bf16) {
    const Weight *w = p->w;
    const Input *in = p->in;
    const int64_t M = in->M;
    const int vectors = int4_vector_path(w->group, in->portable);
    if (!vectors || HAVE_NEON) {
        for (int64_t n = a; n < b; n++) int4_row(n, M, w, &in->q, p->out, out_bf16, vectors && HAVE_NEON);
        return;
    }
#if HAVE_VNNI512 || HAVE_INT4_AVX2
    const int64_t N = w->N;
    if (M == 1) {
        const int64_t per = (b - a) / 4;
        for (int64_t i = 0; i < per; i++) {
            const int64_t rows[4] = {a + i, a + per + i, a + 2 * per + i, a + 3 * per + i};
            float result[4][1];
            int4_4rows(w, rows, 0, &in->q, result);
            for (int r = 0; r < 4; r++) store(p->out, out_bf16, rows[r], result[r][0]);
        }
        a += 4 * per;
    }
    for (int64_t n = a; n < b; n++) {
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            float result[1][4];
            int4_4acts(w, &n, m0, &in->q, result);
            for (int64_t s = 0; s < 4 && m0 + s < M; s++) store(p->out, out_bf16, (m0 + s) * N + n, result[0][s]);
        }
    }
#endif
}


#if HAVE_AMX
// Output rows [a, a + 16 * per) of a product on AMX, per = (b - a) / 16; returns where it
// stopped. A block's 16 rows are `per` apart: sixteen rows next to one another, read a chunk
// at a time, streamed at ~13 GB/s here against ~18-23 GB/s for rows far apart.
static int64_t coded_amx_range(const Product *p, int64_t a, int64_t b, int out_bf16) {
    const Weight *w = p->w;
    const Input *in = p->in;
    const int64_t M = in->M, N = w->N, K = w->K, chunks = coded_chunks(K), per = (b - a) / AMX_ROWS;
    float result[AMX_ROWS * AMX_MAX_ACTS];
    for (int64_t m0 = 0; m0 < M && per; m0 += AMX_MAX_ACTS) {
        const int64_t acts = M - m0 < AMX_MAX_ACTS ? M - m0 : AMX_MAX_ACTS;
        const uint16_t *tiles = in->tiles + m0 / AMX_MAX_ACTS * chunks * AMX_CHUNK_TILES;
        configure_tiles(acts);
        for (int64_t i = 0; i < per; i++) {
            int64_t rows[AMX_ROWS];
            for (int r = 0; r < AMX_ROWS; r++) rows[r] = a + r * per + i;
            coded_16rows_amx(w, rows, tiles, acts, result);
            for (int r = 0; r < AMX_ROWS; r++)
                for (int64_t s = 0; s < acts; s++)
                    store(p->out, out_bf16, (m0 + s) * N + rows[r],
                          result[r * acts + s] + exception_sum(w, rows[r], in->natural + (m0 + s) * K));
        }
        _tile_release();
    }
    return a + AMX_ROWS * per;
}
#endif

#if HAVE_BF16C
static void coded_bf16_range(const Product *p, int64_t a, int64_t b, int out_bf16) {
    const Weight *w = p->w;
    const Input *in = p->in;
    const int64_t M = in->M, N = w->N, K = w->K;
#if HAVE_AMX
    if (in->tiles) a = coded_amx_range(p, a, b, out_bf16);  // the rest (under 16 rows) below
#endif
    if (M == 1) {
        const int64_t per = (b - a) / 8;
        for (int64_t i = 0; i < per; i++) {
            int64_t rows[8];
            float result[8][1];
            for (int r = 0; r < 8; r++) rows[r] = a + r * per + i;
            coded_8rows(w, rows, 0, in->ordered, result);
            for (int r = 0; r < 8; r++) store(p->out, out_bf16, rows[r], result[r][0] + exception_sum(w, rows[r], in->natural));
        }
        for (int64_t n = a + 8 * per; n < b; n++) {
            float result[1][1];
            coded_1row(w, &n, 0, in->ordered, result);
            store(p->out, out_bf16, n, result[0][0] + exception_sum(w, n, in->natural));
        }
        return;
    }
    const int64_t per = (b - a) / 4;
    for (int64_t i = 0; i < per; i++) {
        const int64_t rows[4] = {a + i, a + per + i, a + 2 * per + i, a + 3 * per + i};
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            float result[4][4];
            coded_4rows_4acts(w, rows, m0, in->ordered, result);
            for (int r = 0; r < 4; r++)
                for (int64_t s = 0; s < 4 && m0 + s < M; s++)
                    store(p->out, out_bf16, (m0 + s) * N + rows[r],
                          result[r][s] + exception_sum(w, rows[r], in->natural + (m0 + s) * K));
        }
    }
    for (int64_t n = a + 4 * per; n < b; n++) {
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            float result[1][4];
            coded_1row_4acts(w, &n, m0, in->ordered, result);
            for (int64_t s = 0; s < 4 && m0 + s < M; s++)
                store(p->out, out_bf16, (m0 + s) * N + n, result[0][s] + exception_sum(w, n, in->natural + (m0 + s) * K));
        }
    }
}
#endif

#if HAVE_AVX2
static void coded_wide_range(const Product *p, int64_t a, int64_t b, int out_bf16) {
    const Weight *w = p->w;
    const Input *in = p->in;
    const int64_t M = in->M, N = w->N, K = w->K;
    if (M == 1) {
        const int64_t per = (b - a) / 4;
        for (int64_t i = 0; i < per; i++) {
            const int64_t rows[4] = {a + i, a + per + i, a + 2 * per + i, a + 3 * per + i};
            float result[4][1];
            wide_4rows(w, rows, 0, in->widened, result);
            for (int r = 0; r < 4; r++) store(p->out, out_bf16, rows[r], result[r][0] + exception_sum(w, rows[r], in->natural));
        }
        for (int64_t n = a + 4 * per; n < b; n++) {
            float result[1][1];
            wide_1row(w, &n, 0, in->widened, result);
            store(p->out, out_bf16, n, result[0][0] + exception_sum(w, n, in->natural));
        }
        return;
    }
    const int64_t per = (b - a) / 2;
    for (int64_t i = 0; i < per; i++) {
        const int64_t rows[2] = {a + i, a + per + i};
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            float result[2][4];
            wide_2rows_4acts(w, rows, m0, in->widened, result);
            for (int r = 0; r < 2; r++)
                for (int64_t s = 0; s < 4 && m0 + s < M; s++)
                    store(p->out, out_bf16, (m0 + s) * N + rows[r],
                          result[r][s] + exception_sum(w, rows[r], in->natural + (m0 + s) * K));
        }
    }
    for (int64_t n = a + 2 * per; n < b; n++) {
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            float result[1][4];
            wide_1row_4acts(w, &n, m0, in->widened, result);
            for (int64_t s = 0; s < 4 && m0 + s < M; s++)
                store(p->out, out_bf16, (m0 + s) * N + n, result[0][s] + exception_sum(w, n, in->natural + (m0 + s) * K));
        }
    }
}
#elif HAVE_NEON
static void coded_wide_range(const Product *p, int64_t a, int64_t b, int out_bf16) {
    const Weight *w = p->w;
    const Input *in = p->in;
    for (int64_t n = a; n < b; n++)
        for (int64_t m0 = 0; m0 < in->M; m0 += 4) {
            const int64_t acts = in->M - m0 < 4 ? in->M - m0 : 4;
            float result[4];
            wide_row_neon(w, n, m0, acts, in->widened, result);
            for (int64_t s = 0; s < acts; s++)
                store(p->out, out_bf16, (m0 + s) * w->N + n, result[s] + exception_sum(w, n, in->natural + (m0 + s) * w->K));
        }
}
#endif

static void coded_range(const Product *p, int64_t a, int64_t b, int out_bf16) {
    const Weight *w = p->w;
    const Input *in = p->in;
#if HAVE_BF16C
    if (in->ordered) {
        coded_bf16_range(p, a, b, out_bf16);
        return;
    }
#endif
#if HAVE_WIDE_VECTORS
    if (in->widened) {
        coded_wide_range(p, a, b, out_bf16);
        return;
    }
#endif
    for (int64_t n = a; n < b; n++)
        for (int64_t m = 0; m < in->M; m++) {
            const float *x = in->natural + m * w->K;
            store(p->out, out_bf16, m * w->N + n, coded_row_portable(w, n, x) + exception_sum(w, n, x));
        }
}

// Output rows [a, b) of a product.
static void product_range(const Product *p, int64_t a, int64_t b, int out_bf16) {
    if (p->w->format == FORMAT_INT4)
        int4_range(p, a, b, out_bf16);
    else
        coded_range(p, a, b, out_bf16);
}

// Every output row of several products in one parallel region. Threads take equal shares of
// the work, counted per output row as its weight bytes read plus its multiply-adds: K * (4 + M).
static int64_t row_cost(const Product *p) { return p->w->K * (4 + p->in->M); }

static int64_t ceil_div(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

static int run_products(const Product *products, int count, int out_bf16, int threads) {
    int64_t total = 0;
    for (int p = 0; p < count; p++) total += products[p].w->N * row_cost(&products[p]);
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        const int64_t team = omp_get_num_threads(), id = omp_get_thread_num();
#else
        const int64_t team = 1, id = 0;
#endif
        const int64_t first = total / team * id, last = id == team - 1 ? total : total / team * (id + 1);
        int64_t base = 0;
        for (int p = 0; p < count; p++) {  // row r is this thread's if its cost starts in [first, last)
            const int64_t N = products[p].w->N, cost = row_cost(&products[p]);
            const int64_t a = ceil_div(first - base, cost), b = ceil_div(last - base, cost);
            if (a < N && a < b) product_range(&products[p], a, b < N ? b : N, out_bf16);
            base += N * cost;
        }
    }
    return 0;
}

// Whether the product can take this weight: int4 with an even group size up to 64 that
// divides K (portable loops for groups other than 64), bf16c up to 65,535 inputs.
static int weight_ok(const Weight *w) {
    if (w->N <= 0 || w->K <= 0) return 0;
    if (w->format == FORMAT_INT4) return w->group > 0 && w->group <= 64 && w->group % 2 == 0 && w->K % w->group == 0;
    return w->format == FORMAT_BF16C && w->K <= 65535;
}

// out (M, N) = x (M, K) @ W.T, x and out each bf16 or float32. `portable` makes both formats use the
// plain C loops (for tests). Returns 0, or -1 for a weight the product cannot take or without
// scratch memory.
int kernel_linear(const void *x, int x_bf16, int64_t M, const Weight *w, void *out, int out_bf16, int threads,
                  int portable) {
    if (M <= 0 || !weight_ok(w)) return -1;
    Input in;
    int status = prepare(&in, x, x_bf16, M, w, portable, x_bf16);
    if (!status) {
        const Product product = {w, &in, out};
        status = run_products(&product, 1, out_bf16, threads);
    }
    discard(&in);
    return status;
}

// Several one-row products in one parallel region. A decoding step's expert projections are
// 0.6-1.7 MB each: one call apiece, two threads spend much of each call starting and stopping
// their streams from memory. `table` holds, per product, three int64: the addresses of x (1, K),
// of its Weight and of out (1, N). Products that follow one another with the same x and a
// weight of the same format and width share its layout. Returns 0 or -1 as kernel_linear.
int kernel_linear_many(const int64_t *table, int count, int x_bf16, int out_bf16, int threads) {
    if (count <= 0) return -1;
    for (int p = 0; p < count; p++)
        if (!weight_ok((const Weight *)table[3 * p + 1])) return -1;
    Input *inputs = calloc((size_t)count, sizeof(Input));
    Product *products = calloc((size_t)count, sizeof(Product));
    int status = inputs && products ? 0 : -1;
    for (int p = 0; p < count && !status; p++) {
        const int64_t *t = table + 3 * p;
        const Weight *w = (const Weight *)t[1];
        products[p] = (Product){w, &inputs[p], (void *)t[2]};
        if (p > 0 && t[0] == t[-3] && serves(products[p - 1].in, w)) {
            products[p].in = products[p - 1].in;
            continue;
        }
        status = prepare(&inputs[p], (const void *)t[0], x_bf16, 1, w, 0, x_bf16);
    }
    if (!status) status = run_products(products, count, out_bf16, threads);
    for (int p = 0; inputs && p < count; p++) discard(&inputs[p]);  // shared ones were never prepared
    free(inputs), free(products);
    return status;
}

// ---- whole decoding steps -----------------------------------------------------------------

// Whether a whole decoding step can take this weight: any the product takes.
static int fused_ok(const Weight *w) { return weight_ok(w); }

// RMSNorm of one row into float32, rounded as the torch module rounds in x's dtype:
// weight * dtype(x * rsqrt(mean(x^2) + eps)), the inner product in float32. Without a weight,
// x as float32.
static void rms_norm(const void *x, int bf16, int64_t H, const void *weight, float eps, float *out) {
    float sum = 0.f;
    for (int64_t i = 0; i < H; i++) {
        out[i] = load_one(x, bf16, i);
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

// Rows of the MLP block's input going through one SwiGLU MLP (an expert), with their weights.
typedef struct {
    const Weight *gate, *up, *down;
    int64_t rows;
    int64_t row[16];
    float weight[16];
} Application;

// mixed (M, H) float32 += for each application, its rows' weight * down(silu(gate(x)) * up(x)),
// x = normed (M, H) float32. Two parallel regions (every gate and up product, then every down
// product); the hidden activations stay float32 until they are laid out for the down products.
// Applications over all M rows in order share one layout of x.
static int apply_mlps(const float *normed, int64_t M, int64_t H, const Application *apps, int count, float *mixed,
                      int bf16, int threads) {
    int64_t width = 0, gathered = 0;
    for (int a = 0; a < count; a++) width += apps[a].rows * apps[a].gate->N, gathered += apps[a].rows * H;
    Input *inputs = calloc((size_t)count, sizeof(Input)), *hidden = calloc((size_t)count, sizeof(Input));
    const Input **input_of = calloc((size_t)count, sizeof(Input *));
    Product *products = calloc((size_t)(2 * count), sizeof(Product));
    float *rows = malloc(sizeof(float) * (size_t)gathered), *gate_up = malloc(sizeof(float) * (size_t)(2 * width));
    int64_t down_size = 0;
    for (int a = 0; a < count; a++) down_size += apps[a].rows * H;
    float *down = malloc(sizeof(float) * (size_t)down_size);
    int status = inputs && hidden && input_of && products && rows && gate_up && down ? 0 : -1;
    const Input *all_rows = NULL;  // the layout of x for applications over all M rows in order
    for (int64_t a = 0, gathered_at = 0; a < count && !status; gathered_at += apps[a].rows * H, a++) {
        int in_order = apps[a].rows == M;
        for (int64_t r = 0; r < apps[a].rows && in_order; r++) in_order = apps[a].row[r] == r;
        if (in_order && all_rows && serves(all_rows, apps[a].gate)) {
            input_of[a] = all_rows;
            continue;
        }
        const float *x = normed;
        if (!in_order) {
            for (int64_t r = 0; r < apps[a].rows; r++)
                memcpy(rows + gathered_at + r * H, normed + apps[a].row[r] * H, sizeof(float) * (size_t)H);
            x = rows + gathered_at;
        }
        status = prepare(&inputs[a], x, 0, apps[a].rows, apps[a].gate, 0, bf16);
        input_of[a] = &inputs[a];
        if (in_order && !all_rows) all_rows = &inputs[a];
    }
    if (!status) {
        for (int64_t a = 0, offset = 0; a < count; offset += apps[a].rows * apps[a].gate->N, a++) {
            products[a] = (Product){apps[a].gate, input_of[a], gate_up + offset};
            products[count + a] = (Product){apps[a].up, input_of[a], gate_up + width + offset};
        }
        status = run_products(products, 2 * count, 0, threads);
    }
    if (!status) {
        int64_t i = 0;  // silu(gate) * up, into the gate half
        for (; i + VL <= width; i += VL) {
            const vf g = vf_load(gate_up + i), u = vf_load(gate_up + width + i);
            vf_store(gate_up + i, vf_mul(vf_div(g, vf_add(vf_set1(1.f), vf_exp(vf_sub(vf_set1(0.f), g)))), u));
        }
        for (; i < width; i++) gate_up[i] = gate_up[i] / (1.f + exp_one(-gate_up[i])) * gate_up[width + i];
        for (int64_t a = 0, offset = 0, out = 0; a < count && !status; a++) {
            status = prepare(&hidden[a], gate_up + offset, 0, apps[a].rows, apps[a].down, 0, bf16);
            products[a] = (Product){apps[a].down, &hidden[a], down + out};
            offset += apps[a].rows * apps[a].gate->N, out += apps[a].rows * H;
        }
    }
    if (!status) status = run_products(products, count, 0, threads);
    if (!status) {
        for (int64_t a = 0, out = 0; a < count; out += apps[a].rows * H, a++)
            for (int64_t r = 0; r < apps[a].rows; r++)
                for (int64_t h = 0; h < H; h++) mixed[apps[a].row[r] * H + h] += apps[a].weight[r] * down[out + r * H + h];
    }
    for (int a = 0; a < count; a++) {
        if (inputs) discard(&inputs[a]);
        if (hidden) discard(&hidden[a]);
    }
    free(inputs), free(hidden), free(input_of), free(products), free(rows), free(gate_up), free(down);
    return status;
}

// hidden += dtype(delta), in the hidden's dtype as torch's residual add of a block's output.
static void add_residual(void *hidden, int bf16, const float *delta, int64_t H) {
    for (int64_t i = 0; i < H; i++) {
        const float rounded = bf16 ? bf16_to_float(float_to_bf16(delta[i])) : delta[i];
        store(hidden, bf16, i, load_one(hidden, bf16, i) + rounded);
    }
}

// Whether three weights are a SwiGLU MLP on H inputs whose gate and up read x as `first` does.
static int mlp_ok(const Weight *const *mlp, int64_t H, const Weight *first) {
    return fused_ok(mlp[0]) && fused_ok(mlp[1]) && fused_ok(mlp[2]) && mlp[0]->K == H && mlp[1]->K == H &&
           mlp[0]->N == mlp[1]->N && mlp[2]->K == mlp[0]->N && mlp[2]->N == H && mlp[0]->format == first->format &&
           mlp[1]->format == first->format && mlp[0]->group == first->group && mlp[1]->group == first->group;
}

// The MLP half of a decoder layer for M <= 16 tokens (one per sequence), in place on their
// hidden states (M, H) in `bf16`'s dtype:
//   hidden += dtype(sum_chosen w_e expert_e(n) + shared(n)),   n = norm(hidden)   per row
// with the post-attention RMSNorm (weight in the hidden's dtype), the router (float32
// (experts, H) weight, softmax, greedy top-k, optionally renormalised, times `scaling`), the
// chosen experts and the shared experts (weight 1). Each expert reads its weights once for all
// the rows routed to it. `routed` holds each expert's gate, up and down Weight (experts x 3),
// `shared` the shared experts' three or NULL. A dense layer is experts = 0 with its MLP as
// `shared`. Returns -1 where a weight cannot take the vector path, for more than 64 experts,
// top_k above 16 or more than 16 rows, or without memory (the caller then computes the block
// with torch; the hidden states are untouched).
int kernel_mlp_step(void *hidden, int bf16, int64_t M, int64_t H, const void *norm_weight, float eps,
                    const float *router, int64_t experts, int64_t top_k, int normalize, float scaling,
                    const Weight *routed, const Weight *shared, int threads) {
    if (M <= 0 || M > 16 || experts > 64 || top_k > 16 || top_k > experts || (experts > 0 && top_k <= 0) ||
        (experts == 0 && !shared))
        return -1;
    const Weight *first = experts ? &routed[0] : &shared[0];
    for (int64_t e = 0; e < experts; e++) {
        const Weight *mlp[3] = {&routed[3 * e], &routed[3 * e + 1], &routed[3 * e + 2]};
        if (!mlp_ok(mlp, H, first)) return -1;
    }
    if (shared) {
        const Weight *mlp[3] = {&shared[0], &shared[1], &shared[2]};
        if (!mlp_ok(mlp, H, first)) return -1;
    }
    const size_t element = bf16 ? 2 : 4;
    float *normed = malloc(sizeof(float) * (size_t)(2 * M * H)), *mixed = normed ? normed + M * H : NULL;
    Application *apps = calloc((size_t)(experts + 1), sizeof(Application));
    int64_t *app_of = malloc(sizeof(int64_t) * (size_t)(experts + 1));
    int status = normed && apps && app_of ? 0 : -1;
    int count = 0;
    for (int64_t e = 0; e < experts; e++) app_of[e] = -1;
    for (int64_t m = 0; m < M && !status; m++) {
        float *n = normed + m * H, probability[64], chosen[16], chosen_total = 0.f, top = -INFINITY, total = 0.f;
        int64_t chosen_id[16];
        rms_norm((const char *)hidden + element * (size_t)(m * H), bf16, H, norm_weight, eps, n);
        for (int64_t e = 0; e < experts; e++) {
            probability[e] = dot_floats(router + e * H, n, H);
            top = fmaxf(top, probability[e]);
        }
        for (int64_t e = 0; e < experts; e++) total += probability[e] = expf(probability[e] - top);
        for (int64_t k = 0; k < top_k; k++) {  // greedy top-k, the first of equal scores first
            int64_t best = -1;
            for (int64_t e = 0; e < experts; e++)
                if (probability[e] >= 0.f && (best < 0 || probability[e] > probability[best])) best = e;
            chosen[k] = probability[best] / total, chosen_id[k] = best;
            chosen_total += chosen[k];
            probability[best] = -1.f;
        }
        for (int64_t k = 0; k < top_k; k++) {
            const int64_t e = chosen_id[k];
            if (app_of[e] < 0) {
                app_of[e] = count++;
                apps[app_of[e]] = (Application){&routed[3 * e], &routed[3 * e + 1], &routed[3 * e + 2], 0, {0}, {0}};
            }
            Application *app = &apps[app_of[e]];
            app->row[app->rows] = m;
            app->weight[app->rows++] = (normalize ? chosen[k] / (chosen_total + 1e-20f) : chosen[k]) * scaling;
        }
    }
    if (!status && shared) {
        Application *app = &apps[count++];
        *app = (Application){&shared[0], &shared[1], &shared[2], M, {0}, {0}};
        for (int64_t m = 0; m < M; m++) app->row[m] = m, app->weight[m] = 1.f;
    }
    if (!status) {
        memset(mixed, 0, sizeof(float) * (size_t)(M * H));
        status = apply_mlps(normed, M, H, apps, count, mixed, bf16, threads);
    }
    for (int64_t m = 0; m < M && !status; m++) add_residual((char *)hidden + element * (size_t)(m * H), bf16, mixed + m * H, H);
    free(normed), free(apps), free(app_of);
    return status;
}

// softmax(q K^T) V per row and head over `length` cached positions (q scaled already), float32
// out (M, heads * head_dim). The caches are (M, heads, capacity, head_dim) in `bf16`'s dtype.
// Keys scored at once: their dot products are independent chains of multiply-adds, so that
// one key's does not wait on the last (a single chain left the step's attention latency-bound).
#define ATTEND_KEYS 4

static void attend(const float *q, const void *keys, const void *values, int bf16, int64_t M, int64_t heads,
                   int64_t head_dim, int64_t capacity, int64_t length, float *scores, float *attended, int threads) {
    const int64_t chunks = head_dim / VL;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t task = 0; task < M * heads; task++) {  // task = row * heads + head
        const float *query = q + task * head_dim;
        const int64_t base = task * capacity * head_dim;
        float *score = scores + task * length, top = -INFINITY, total = 0.f;
        int64_t t = 0;
        for (; t + ATTEND_KEYS <= length; t += ATTEND_KEYS) {
            vf dot[ATTEND_KEYS];
            for (int u = 0; u < ATTEND_KEYS; u++) dot[u] = vf_set1(0.f);
            for (int64_t c = 0; c < chunks; c++) {
                const vf part = vf_load(query + VL * c);
                for (int u = 0; u < ATTEND_KEYS; u++)
                    dot[u] = vf_fma(part, vf_load_any(keys, base + (t + u) * head_dim + VL * c, bf16), dot[u]);
            }
            for (int u = 0; u < ATTEND_KEYS; u++) top = fmaxf(top, score[t + u] = vf_sum(dot[u]));
        }
        for (; t < length; t++) {
            vf dot = vf_set1(0.f);
            for (int64_t c = 0; c < chunks; c++) dot = vf_fma(vf_load(query + VL * c), vf_load_any(keys, base + t * head_dim + VL * c, bf16), dot);
            top = fmaxf(top, score[t] = vf_sum(dot));
        }
        for (t = 0; t + VL <= length; t += VL) {
            const vf e = vf_exp(vf_sub(vf_load(score + t), vf_set1(top)));
            vf_store(score + t, e);
            total += vf_sum(e);
        }
        for (; t < length; t++) total += score[t] = exp_one(score[t] - top);
        float *out = attended + task * head_dim;
        vf result[chunks];
        for (int64_t c = 0; c < chunks; c++) result[c] = vf_set1(0.f);
        for (t = 0; t < length; t++) {
            const vf weight = vf_set1(score[t]);
            for (int64_t c = 0; c < chunks; c++)
                result[c] = vf_fma(weight, vf_load_any(values, base + t * head_dim + VL * c, bf16), result[c]);
        }
        for (int64_t c = 0; c < chunks; c++) vf_store(out + VL * c, vf_div(result[c], vf_set1(total)));
    }
}

// q, k, v (M, width) float32 in place: rotary on q and k with each row's cos and sin
// (M, head_dim), all rounded to the dtype as torch rounds them, q times `scaling`; k and v
// written to the caches at position `length`.
static void rotate_and_cache(float *qkv, int64_t M, int64_t width, int64_t head_dim, const void *cos, const void *sin,
                             int bf16, float scaling, void *key_cache, void *value_cache, int64_t capacity,
                             int64_t length) {
    const int64_t heads = width / head_dim, half = head_dim / 2, element = bf16 ? 2 : 4;
    for (int64_t m = 0; m < M; m++) {
        float c[head_dim], s[head_dim];
        for (int64_t i = 0; i < head_dim; i++) c[i] = load_one(cos, bf16, m * head_dim + i), s[i] = load_one(sin, bf16, m * head_dim + i);
        for (int p = 0; p < 3; p++) {
            for (int64_t h = 0; h < heads; h++) {
                float *head = qkv + (p * M + m) * width + h * head_dim;
                for (int64_t i = 0; i < half && p < 2; i++) {
                    const float first = head[i], second = head[half + i];
                    head[i] = first * c[i] - second * s[i];
                    head[half + i] = second * c[half + i] + first * s[half + i];
                }
                for (int64_t i = 0; i < head_dim; i++) {
                    const float value = bf16 ? bf16_to_float(float_to_bf16(head[i])) : head[i];
                    head[i] = p == 0 ? value * scaling : value;
                    if (p == 0) continue;
                    char *cache = (char *)(p == 1 ? key_cache : value_cache);
                    store(cache + element * (((m * heads + h) * capacity + length) * head_dim), bf16, i, value);
                }
            }
        }
    }
}

// The attention half of a decoder layer for M <= 16 sequences of one token each (no padding),
// in place on their hidden states (M, H) in `bf16`'s dtype:
//   n = norm(hidden);  q, k, v = n @ Wq/Wk/Wv.T;  rotary on q and k;  k, v appended to the cache
//   hidden += dtype(softmax(q K^T * scaling) V @ Wo.T)   over the length + 1 cached positions
// `weights` holds q, k, v and o; norm_weight (hidden's dtype) may be NULL for no norm. Rotary is
// half-split ("rotate half") with each row's cos and sin (M, head_dim) in the hidden's dtype:
//   out[i] = x[i] cos[i] - x[i + d/2] sin[i],   out[i + d/2] = x[i + d/2] cos[i + d/2] + x[i] sin[i + d/2]
// q, k and v are rounded to the hidden's dtype as torch rounds them; the scores, softmax and
// weighted sum run in float32. The caches are (M, heads, capacity, head_dim) buffers in the
// hidden's dtype holding `length` positions, with room for one more. Returns -1 off the vector
// paths, for a head_dim not a multiple of 16, more than 16 rows, or without memory (nothing is
// written then).
int kernel_attention_step(void *hidden, int bf16, int64_t M, int64_t H, const void *norm_weight, float eps,
                          const Weight *weights, int64_t head_dim, const void *cos, const void *sin, float scaling,
                          void *key_cache, void *value_cache, int64_t capacity, int64_t length, int threads) {
    const Weight *wq = &weights[0], *wo = &weights[3];
    const int64_t width = wq->N, heads = head_dim > 0 ? width / head_dim : 0;
    const size_t element = bf16 ? 2 : 4;
    if (M <= 0 || M > 16 || head_dim <= 0 || head_dim % 16 || width % head_dim || length < 0 || length >= capacity)
        return -1;
    for (int p = 0; p < 3; p++)
        if (!fused_ok(&weights[p]) || weights[p].K != H || weights[p].N != width || weights[p].format != wq->format ||
            weights[p].group != wq->group)
            return -1;
    if (!fused_ok(wo) || wo->K != width || wo->N != H) return -1;
    float *scratch = malloc(sizeof(float) * (size_t)(M * (4 * width + 2 * H + heads * (length + 1))));
    if (!scratch) return -1;
    float *qkv = scratch, *attended = qkv + 3 * M * width, *normed = attended + M * width, *projected = normed + M * H;
    float *scores = projected + M * H;
    Input input;
    memset(&input, 0, sizeof input);
    for (int64_t m = 0; m < M; m++) rms_norm((const char *)hidden + element * (size_t)(m * H), bf16, H, norm_weight, eps, normed + m * H);
    int status = prepare(&input, normed, 0, M, wq, 0, bf16);
    if (!status) {
        Product products[3];
        for (int p = 0; p < 3; p++) products[p] = (Product){&weights[p], &input, qkv + p * M * width};
        status = run_products(products, 3, 0, threads);
    }
    discard(&input);
    if (!status) {
        rotate_and_cache(qkv, M, width, head_dim, cos, sin, bf16, scaling, key_cache, value_cache, capacity, length);
        attend(qkv, key_cache, value_cache, bf16, M, heads, head_dim, capacity, length + 1, scores, attended, threads);
        status = prepare(&input, attended, 0, M, wo, 0, bf16);
    }
    if (!status) {
        const Product product = {wo, &input, projected};
        status = run_products(&product, 1, 0, threads);
    }
    discard(&input);
    for (int64_t m = 0; m < M && !status; m++) add_residual((char *)hidden + element * (size_t)(m * H), bf16, projected + m * H, H);
    free(scratch);
    return status;
}

// ---- weights back as bf16, and bf16c coding -----------------------------------------------

// The int4 weight as bf16 (N, K): for prefill-sized batches, where a bf16 matmul wins.
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

// The bf16c weight back as the bf16 (N, K) it codes, bit for bit: for prefill-sized batches.
void bf16c_decode(const Weight *w, uint16_t *weight, int threads) {
    const int64_t N = w->N, K = w->K, chunks = coded_chunks(K), stride = 96 * chunks;
    const uint8_t *tables = (const uint8_t *)w->side;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *codes = w->data + n * stride, *table = tables + n * 16;
        uint16_t *row = weight + n * K;
        int64_t c = 0;
#if HAVE_AVX512
        const __m512i lookup = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)table));
        for (; 64 * (c + 1) <= K; c++) {
            __m512i low, high;
            decode_bytes(codes + 96 * c, lookup, &low, &high);
            for (int part = 0; part < 2; part++) {  // inputs 0-31, then 32-63, in natural order
                const __m512i lo = _mm512_cvtepu8_epi16(part ? _mm512_extracti64x4_epi64(low, 1) : _mm512_castsi512_si256(low));
                const __m512i hi = _mm512_cvtepu8_epi16(part ? _mm512_extracti64x4_epi64(high, 1) : _mm512_castsi512_si256(high));
                _mm512_storeu_si512((void *)(row + 64 * c + 32 * part), _mm512_or_si512(lo, _mm512_slli_epi16(hi, 8)));
            }
        }
#elif HAVE_AVX2
        const __m256i lookup = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)table)), low4 = _mm256_set1_epi8(15);
        for (; 64 * (c + 1) <= K; c++) {
            const uint8_t *chunk = codes + 96 * c;
            const __m256i nibbles = _mm256_loadu_si256((const __m256i *)(chunk + 64));
            const __m256i high[2] = {_mm256_shuffle_epi8(lookup, _mm256_and_si256(nibbles, low4)),
                                     _mm256_shuffle_epi8(lookup, _mm256_and_si256(_mm256_srli_epi16(nibbles, 4), low4))};
            for (int part = 0; part < 2; part++) {  // inputs 0-31, then 32-63; the interleave works per 128-bit half
                const __m256i low = _mm256_loadu_si256((const __m256i *)(chunk + 32 * part));
                const __m256i first = _mm256_unpacklo_epi8(low, high[part]), second = _mm256_unpackhi_epi8(low, high[part]);
                _mm256_storeu_si256((__m256i *)(row + 64 * c + 32 * part), _mm256_permute2x128_si256(first, second, 0x20));
                _mm256_storeu_si256((__m256i *)(row + 64 * c + 32 * part + 16), _mm256_permute2x128_si256(first, second, 0x31));
            }
        }
#endif
        for (int64_t k = 64 * c; k < K; k++) {
            const uint8_t *chunk = codes + 96 * (k / 64);
            const int64_t i = k % 64;
            const int index = i < 32 ? chunk[64 + i] & 15 : chunk[64 + i - 32] >> 4;
            row[k] = (uint16_t)(table[index] << 8 | chunk[i]);
        }
        for (int32_t e = w->exception_rows[n]; e < w->exception_rows[n + 1]; e++)
            row[w->exceptions[2 * e]] = w->exceptions[2 * e + 1];
    }
}

// First pass of coding a bf16 (N, K) weight: each row's table (N, 16), and exception_rows
// (N + 1) as offsets. Returns the number of exceptions, or -1 when K is too wide for 16-bit columns.
int64_t bf16c_plan(const uint16_t *weight, int64_t N, int64_t K, uint8_t *tables, int32_t *exception_rows,
                   int threads) {
    if (K <= 0 || K > 65535) return -1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        int64_t count[256] = {0};
        const uint16_t *row = weight + n * K;
        for (int64_t k = 0; k < K; k++) count[row[k] >> 8]++;
        int distinct = 0;
        for (int h = 0; h < 256; h++) distinct += count[h] > 0;
        uint8_t keep[256] = {0};
        int64_t outside = 0;
        if (distinct <= 16) {
            for (int h = 0; h < 256; h++) keep[h] = count[h] > 0;
        } else {  // 0x00 (what exceptions are coded as, with a low byte of 0) and the 15 most frequent others
            keep[0] = 1;
            for (int chosen = 0; chosen < 15; chosen++) {
                int best = -1;
                for (int h = 255; h > 0; h--)  // larger high bytes first among equal counts
                    if (!keep[h] && count[h] > 0 && (best < 0 || count[h] > count[best])) best = h;
                keep[best] = 1;
            }
            for (int h = 1; h < 256; h++) outside += keep[h] ? 0 : count[h];
        }
        uint8_t *table = tables + n * 16;
        int index = 0;
        for (int h = 0; h < 256; h++)  // ascending: index 0 is the smallest (0x00 where there are exceptions)
            if (keep[h]) table[index++] = (uint8_t)h;
        for (; index < 16; index++) table[index] = table[0];
        exception_rows[n + 1] = (int32_t)outside;
    }
    int64_t total = 0;
    exception_rows[0] = 0;
    for (int64_t n = 0; n < N; n++) {
        total += exception_rows[n + 1];
        if (total > INT32_MAX) return -1;
        exception_rows[n + 1] = (int32_t)total;
    }
    return total;
}

// Second pass: codes (N, 96 * ceil(K/64)) and exceptions (count, 2) from the plan's tables and offsets.
void bf16c_encode(const uint16_t *weight, int64_t N, int64_t K, const uint8_t *tables,
                  const int32_t *exception_rows, uint8_t *codes, uint16_t *exceptions, int threads) {
    const int64_t chunks = coded_chunks(K), stride = 96 * chunks;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *table = tables + n * 16;
        int index_of[256];
        for (int h = 0; h < 256; h++) index_of[h] = -1;
        for (int i = 15; i >= 0; i--) index_of[table[i]] = i;
        const uint16_t *row = weight + n * K;
        uint8_t *out = codes + n * stride;
        memset(out, 0, (size_t)stride);
        int32_t next = exception_rows[n];
        for (int64_t k = 0; k < K; k++) {
            int index = index_of[row[k] >> 8];
            uint8_t low = (uint8_t)row[k];
            if (index < 0) {  // coded as +0 (0x00 is index 0), added back from the list
                exceptions[2 * next] = (uint16_t)k, exceptions[2 * next + 1] = row[k];
                next++;
                index = 0, low = 0;
            }
            uint8_t *chunk = out + 96 * (k / 64);
            const int64_t i = k % 64;
            chunk[i] = low;
            chunk[64 + i % 32] |= (uint8_t)(i < 32 ? index : index << 4);
        }
    }
}

// Bit 0: int4 products of groups of 64 on vectors (VNNI, AVX2 or NEON; else the portable loops).
// Bit 1: bf16c products on vectors (AVX512-BF16, AVX2 or NEON; else the portable loops). Bit 2: bf16c
// products of several rows on AMX. Bit 3: bf16c products of a bfloat16 model on AVX512-BF16.
// Bit 4: int4 on AVX-512 VNNI (else AVX2 or NEON where bit 0 is set).
int kernel_features(void) {
#if HAVE_AMX
    const int amx = amx_ready();
#else
    const int amx = 0;
#endif
    return HAVE_INT4_VECTORS | (HAVE_BF16C || HAVE_WIDE_VECTORS) << 1 | amx << 2 | HAVE_BF16C << 3 | HAVE_VNNI512 << 4;
}

// The instruction sets this build was compiled for: 0 plain C, 1 NEON, 2 AVX2, 3 AVX-512 (with
// VNNI and BF16 where bits 0 and 3 of kernel_features say so), 4 AMX.
int kernel_variant(void) {
    return HAVE_AMX ? 4 : HAVE_AVX512 ? 3 : HAVE_AVX2 ? 2 : HAVE_NEON ? 1 : 0;
}

// Whether bf16c products of several rows may use AMX (where there is AMX; on by default).
void kernel_use_amx(int on) {
#if HAVE_AMX
    amx_wanted = on;
#else
    (void)on;
#endif
}
