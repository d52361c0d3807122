// float32 vectors of the widest kind this build has, for the decoding steps' small vector work
// (norm-side sums, the router's dot products, softmax, SiLU, attention over the cache): one
// source for every variant (AVX-512: 16 lanes, AVX2 + FMA: 8, NEON: 4, portable: 1).
//
// The build's variant is the compiler's target (cpu/library.py passes the flags):
//   HAVE_AVX512  AVX-512 F + BW            HAVE_AVX2  AVX2 + FMA + F16C
//   HAVE_NEON    AArch64 Advanced SIMD     none       plain C (KERNEL_PORTABLE, or any other CPU)
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(KERNEL_PORTABLE) && defined(__AVX512F__) && defined(__AVX512BW__)
#define HAVE_AVX512 1
#else
#define HAVE_AVX512 0
#endif
#if !defined(KERNEL_PORTABLE) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define HAVE_AVX2 1
#else
#define HAVE_AVX2 0
#endif
#if !defined(KERNEL_PORTABLE) && defined(__aarch64__) && defined(__ARM_NEON)
#define HAVE_NEON 1
#else
#define HAVE_NEON 0
#endif
#if HAVE_AVX512 || HAVE_AVX2
#include <immintrin.h>
#endif
#if HAVE_NEON
#include <arm_neon.h>
#endif

#if HAVE_AVX2
static inline float sum_m256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

// e^x = 2^n * e^f with n = round(x log2 e), |f| <= ln(2)/2, e^f by its degree-7 Taylor polynomial
// (relative error < 1e-8, below float32's rounding). x is clamped so that 2^n stays a normal float.
#define EXP_LOW (-87.3f)
#define EXP_HIGH 88.3f
static const float exp_taylor[8] = {1.f / 5040, 1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 1.f / 2, 1.f, 1.f};

static inline float exp_one(float x) {
    x = fminf(fmaxf(x, EXP_LOW), EXP_HIGH);
    const float t = x * 1.44269504f, n = nearbyintf(t), f = (t - n) * 0.693147181f;
    float p = exp_taylor[0];
    for (int k = 1; k < 8; k++) p = fmaf(p, f, exp_taylor[k]);
    return ldexpf(p, (int)n);
}

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

#if HAVE_AVX512
#define VL 16
typedef __m512 vf;
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vf_set1(float x) { return _mm512_set1_ps(x); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf vf_abs(vf a) { return _mm512_abs_ps(a); }
// Lanes where x is negative from a, the others from b.
static inline vf vf_where_negative(vf x, vf a, vf b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, vf_set1(0.f), _CMP_LT_OQ), b, a);
}
static inline float vf_hmax(vf v) { return _mm512_reduce_max_ps(v); }
static inline float vf_sum(vf v) { return _mm512_reduce_add_ps(v); }
static inline vf vf_load_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline vf vf_exp(vf x) {
    x = _mm512_min_ps(_mm512_max_ps(x, vf_set1(EXP_LOW)), vf_set1(EXP_HIGH));
    const vf t = vf_mul(x, vf_set1(1.44269504f));
    const vf n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vf f = vf_mul(vf_sub(t, n), vf_set1(0.693147181f));
    vf p = vf_set1(exp_taylor[0]);
    for (int k = 1; k < 8; k++) p = vf_fma(p, f, vf_set1(exp_taylor[k]));
    return _mm512_scalef_ps(p, n);
}
#elif HAVE_AVX2
#define VL 8
typedef __m256 vf;
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vf_set1(float x) { return _mm256_set1_ps(x); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf vf_abs(vf a) { return _mm256_andnot_ps(vf_set1(-0.f), a); }
static inline vf vf_where_negative(vf x, vf a, vf b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, vf_set1(0.f), _CMP_LT_OQ)); }
static inline float vf_hmax(vf v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
static inline float vf_sum(vf v) { return sum_m256(v); }
static inline vf vf_load_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline vf vf_exp(vf x) {
    x = _mm256_min_ps(_mm256_max_ps(x, vf_set1(EXP_LOW)), vf_set1(EXP_HIGH));
    const vf t = vf_mul(x, vf_set1(1.44269504f));
    const vf n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vf f = vf_mul(vf_sub(t, n), vf_set1(0.693147181f));
    vf p = vf_set1(exp_taylor[0]);
    for (int k = 1; k < 8; k++) p = vf_fma(p, f, vf_set1(exp_taylor[k]));
    const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return vf_mul(p, _mm256_castsi256_ps(scale));
}
#elif HAVE_NEON
#define VL 4
typedef float32x4_t vf;
static inline vf vf_load(const float *p) { return vld1q_f32(p); }
static inline void vf_store(float *p, vf v) { vst1q_f32(p, v); }
static inline vf vf_set1(float x) { return vdupq_n_f32(x); }
static inline vf vf_fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
static inline vf vf_add(vf a, vf b) { return vaddq_f32(a, b); }
static inline vf vf_sub(vf a, vf b) { return vsubq_f32(a, b); }
static inline vf vf_mul(vf a, vf b) { return vmulq_f32(a, b); }
static inline vf vf_div(vf a, vf b) { return vdivq_f32(a, b); }
static inline vf vf_max(vf a, vf b) { return vmaxq_f32(a, b); }
static inline vf vf_abs(vf a) { return vabsq_f32(a); }
static inline vf vf_where_negative(vf x, vf a, vf b) { return vbslq_f32(vcltq_f32(x, vf_set1(0.f)), a, b); }
static inline float vf_hmax(vf v) { return vmaxvq_f32(v); }
static inline float vf_sum(vf v) { return vaddvq_f32(v); }
static inline vf vf_load_bf16(const uint16_t *p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
static inline vf vf_exp(vf x) {
    x = vminq_f32(vmaxq_f32(x, vf_set1(EXP_LOW)), vf_set1(EXP_HIGH));
    const vf t = vf_mul(x, vf_set1(1.44269504f));
    const vf n = vrndnq_f32(t);
    const vf f = vf_mul(vf_sub(t, n), vf_set1(0.693147181f));
    vf p = vf_set1(exp_taylor[0]);
    for (int k = 1; k < 8; k++) p = vf_fma(p, f, vf_set1(exp_taylor[k]));
    const int32x4_t scale = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vf_mul(p, vreinterpretq_f32_s32(scale));
}
#else
#define VL 1
typedef float vf;
static inline vf vf_load(const float *p) { return *p; }
static inline void vf_store(float *p, vf v) { *p = v; }
static inline vf vf_set1(float x) { return x; }
static inline vf vf_fma(vf a, vf b, vf c) { return fmaf(a, b, c); }
static inline vf vf_add(vf a, vf b) { return a + b; }
static inline vf vf_sub(vf a, vf b) { return a - b; }
static inline vf vf_mul(vf a, vf b) { return a * b; }
static inline vf vf_div(vf a, vf b) { return a / b; }
static inline vf vf_max(vf a, vf b) { return fmaxf(a, b); }
static inline vf vf_abs(vf a) { return fabsf(a); }
static inline vf vf_where_negative(vf x, vf a, vf b) { return x < 0.f ? a : b; }
static inline float vf_hmax(vf v) { return v; }
static inline float vf_sum(vf v) { return v; }
static inline vf vf_load_bf16(const uint16_t *p) { return bf16_to_float(*p); }
static inline vf vf_exp(vf x) { return exp_one(x); }
#endif

// VL float32 values at base[offset...], stored as bfloat16 or float32.
static inline vf vf_load_any(const void *base, int64_t offset, int bf16) {
    return bf16 ? vf_load_bf16((const uint16_t *)base + offset) : vf_load((const float *)base + offset);
}

// sum_i a[i] * b[i] over n floats: VL lanes, then the tail.
static inline float dot_floats(const float *a, const float *b, int64_t n) {
    vf acc = vf_set1(0.f);
    int64_t i = 0;
    for (; i + VL <= n; i += VL) acc = vf_fma(vf_load(a + i), vf_load(b + i), acc);
    float sum = vf_sum(acc);
    for (; i < n; i++) sum = fmaf(a[i], b[i], sum);
    return sum;
}
