// SAM's attention with decomposed relative positions, bfloat16 on AMX tiles.
//
//   out[i] = sum_j softmax_j(scale * q_i . k_j + bias[i, j]) v_j,
//   bias[i, (ky, kx)] = bf16(rel_h[i, ky] + rel_w[i, kx])
//
// for every (batch, head), keys j = (ky, kx) over an h x w map. torch's route materialises the
// (queries, keys) bias in bfloat16 and hands it to its flash attention as a mask: at 1024 px that
// is 400 MB per global block written, then read back, and the mask cost its flash kernel ~27% per
// call. Here the bias is added to the scores from the two small tables while the scores are in
// cache, rounded to bfloat16 as torch's broadcast add rounds it.
//
// Work item: 32 query rows of one (batch, head), with that head's keys and values packed once
// per thread into AMX's B layout (2 x 512 KB at 4,096 keys, kept in L2 while the thread works
// through the head's queries):
//   scores   S (32, keys) float32 = two A tiles of queries x each 16-key B tile, two tiles deep
//            (head_dim 64 = 2 x 32), every B tile load shared by both 16-row halves
//   softmax  exact, over the whole row (no running rescale): scale, bias, max, exp, sum in
//            float32; P = exp(s - max) rounded to bfloat16, as torch's flash kernel rounds it
//            before its P @ V product
//   output   O (32, 64) = P (A tiles, 32 keys deep) x V (B tiles, 16 value columns) in two passes
//            of 32 columns, then O / sum -> bfloat16
// Results differ from torch's (flash attention with the materialised mask) in float32 summation
// order and in softmax's one pass against its blockwise rescaling: a few bfloat16 ulps.
//
// q, k and v are read in place from the qkv projection's (batch, tokens, 3, heads, head_dim)
// output; the result is written as (batch, tokens, heads, head_dim), the layout the output
// projection takes.

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if !defined(KERNEL_PORTABLE) && defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AMX_TILE__) && \
    defined(__linux__)
#include "amx.h"
#define HAVE_AMX_ATTENTION 1
#else
#define HAVE_AMX_ATTENTION 0
#endif

#define HEAD_DIM 64
#define QUERY_ROWS 32  // per work item: two 16-row A tiles
#define KEY_ALIGN 32   // keys are padded with zeros to whole 32-key P tiles
#define LOG2E 1.44269504088896341f

#if HAVE_AMX_ATTENTION

// All eight tiles 16 rows x 64 bytes: float32 16 x 16 results, bf16 16 x 32 A operands, and
// B operands of 16 bf16 pairs x 16 columns.
static void configure_tiles(void) {
    const uint16_t bytes_per_row[8] = {64, 64, 64, 64, 64, 64, 64, 64};
    configure_16row_tiles(8, bytes_per_row);
}

static inline __m512 bf16x16_to_float(__m256i bits) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

static inline __m512 round_to_bf16(__m512 x) { return bf16x16_to_float((__m256i)_mm512_cvtneps_pbh(x)); }

// 2^x for x <= 0 (scores minus their row's maximum, in base 2), to about 1e-7 relative: x = n + r
// with |r| <= 1/2, 2^r = exp(r ln2) by its Taylor series to the 6th power. The probabilities are
// then rounded to bfloat16 (2^-9 relative), so a closer exp would change nothing downstream.
static inline __m512 exp2_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));  // 2^-126, float32's smallest normal
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.5403530393381606e-4f);  // ln2^6 / 6!
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3333558146428443e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.6181291076284772e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.5504108664821580e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.24022650695910071f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.69314718055994531f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

typedef struct {
    const uint16_t *q, *k, *v;  // element (b, n, head, c) at b * batch_stride + n * token_stride + head * 64 + c
    int64_t batch_stride, token_stride;
    int64_t heads, tokens, padded;  // padded: tokens rounded up to KEY_ALIGN
    int64_t row;  // scores' and probabilities' row stride: padded + 32, so that a tile's 16 rows
                  // do not map to one L1 set at power-of-two key counts (measured neither faster
                  // nor slower than the plain stride here; kept against the aliasing)
    const uint16_t *rel_h, *rel_w;  // (batch, heads, tokens, h) and (batch, heads, tokens, w)
    int64_t h, w;
    float scale;
    uint16_t *out;  // (batch, tokens, heads, 64)
} Attention;

// Per-thread buffers: one head's packed keys and values, one work item's scores and probabilities.
typedef struct {
    uint16_t *keys;    // (padded / 16 key blocks, 2 depth halves) B tiles: [pair][key][2] of k[key][2 pair..]
    uint16_t *values;  // (padded / 32 key blocks, 4 column blocks) B tiles: [key pair][column][2] of v
    float *scores;     // (QUERY_ROWS, row)
    uint16_t *probabilities;  // (QUERY_ROWS, row), zero past the tokens
    float *rel_w;      // (w) one query's width terms
    int64_t packed_head;  // batch * heads + head the buffers hold, -1 for none
} Scratch;

static const uint16_t *token(const Attention *a, const uint16_t *base, int64_t batch, int64_t n, int64_t head) {
    return base + batch * a->batch_stride + n * a->token_stride + head * HEAD_DIM;
}

static void pack_head(const Attention *a, Scratch *s, int64_t batch, int64_t head) {
    memset(s->keys, 0, (size_t)a->padded * HEAD_DIM * sizeof(uint16_t));
    memset(s->values, 0, (size_t)a->padded * HEAD_DIM * sizeof(uint16_t));
    for (int64_t n = 0; n < a->tokens; n++) {
        const uint16_t *k = token(a, a->k, batch, n, head), *v = token(a, a->v, batch, n, head);
        uint16_t *key_tiles = s->keys + n / 16 * 2 * 512 + 2 * (n % 16);
        for (int c = 0; c < HEAD_DIM; c++)  // depth c: half c / 32, pair (c % 32) / 2, element c % 2
            key_tiles[c / 32 * 512 + (c % 32) / 2 * 32 + c % 2] = k[c];
        uint16_t *value_tiles = s->values + n / 32 * 4 * 512 + (n % 32) / 2 * 32 + n % 2;
        for (int c = 0; c < HEAD_DIM; c++)  // column c: block c / 16, column c % 16 of the tile row
            value_tiles[c / 16 * 512 + c % 16 * 2] = v[c];
    }
}

static void query_scores(const Attention *a, Scratch *s, int64_t batch, int64_t head, int64_t first, int64_t rows) {
    _Alignas(64) uint16_t queries[QUERY_ROWS][HEAD_DIM];
    memset(queries, 0, sizeof queries);
    for (int64_t r = 0; r < rows; r++) memcpy(queries[r], token(a, a->q, batch, first + r, head), sizeof queries[r]);
    _tile_loadd(2, queries[0], 2 * HEAD_DIM);
    _tile_loadd(3, queries[0] + 32, 2 * HEAD_DIM);
    _tile_loadd(4, queries[16], 2 * HEAD_DIM);
    _tile_loadd(5, queries[16] + 32, 2 * HEAD_DIM);
    const int64_t stride = 4 * a->row;
    for (int64_t block = 0; block < a->padded / 16; block++) {
        _tile_loadd(6, s->keys + block * 1024, 64);
        _tile_loadd(7, s->keys + block * 1024 + 512, 64);
        _tile_zero(0);
        _tile_zero(1);
        _tile_dpbf16ps(0, 2, 6);
        _tile_dpbf16ps(0, 3, 7);
        _tile_dpbf16ps(1, 4, 6);
        _tile_dpbf16ps(1, 5, 7);
        _tile_stored(0, s->scores + block * 16, stride);
        _tile_stored(1, s->scores + 16 * a->row + block * 16, stride);
    }
}

// Row r's scores -> its bfloat16 probabilities (unnormalised); returns their float32 sum.
static float softmax_row(const Attention *a, Scratch *s, int64_t batch, int64_t head, int64_t query, int64_t r) {
    const int64_t h = a->h, w = a->w, item = (batch * a->heads + head) * a->tokens + query;
    const uint16_t *rel_h = a->rel_h + item * h, *rel_w = a->rel_w + item * w;
    for (int64_t kx = 0; kx < w; kx++) {
        uint32_t bits = (uint32_t)rel_w[kx] << 16;
        memcpy(s->rel_w + kx, &bits, sizeof bits);
    }
    float *row = s->scores + r * a->row;
    // Scores in base 2 (times log2 e), so that the exponential needs no range reduction by ln 2.
    const __m512 scale = _mm512_set1_ps(a->scale * LOG2E), to_base2 = _mm512_set1_ps(LOG2E);
    __m512 highest = _mm512_set1_ps(-__builtin_inff());
    for (int64_t ky = 0; ky < h; ky++) {
        uint32_t bits = (uint32_t)rel_h[ky] << 16;
        float height;
        memcpy(&height, &bits, sizeof height);
        const __m512 term = _mm512_set1_ps(height);
        for (int64_t kx = 0; kx < w; kx += 16) {
            const __mmask16 m = (__mmask16)(w - kx >= 16 ? 0xffff : (1u << (w - kx)) - 1);
            float *at = row + ky * w + kx;
            const __m512 bias = round_to_bf16(_mm512_add_ps(term, _mm512_maskz_loadu_ps(m, s->rel_w + kx)));
            const __m512 score = _mm512_fmadd_ps(bias, to_base2, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, at), scale));
            _mm512_mask_storeu_ps(at, m, score);
            highest = _mm512_mask_max_ps(highest, m, highest, score);
        }
    }
    const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(highest));
    uint16_t *probabilities = s->probabilities + r * a->row;
    __m512 total = _mm512_setzero_ps();
    for (int64_t j = 0; j < a->tokens; j += 16) {
        const __mmask16 m = (__mmask16)(a->tokens - j >= 16 ? 0xffff : (1u << (a->tokens - j)) - 1);
        const __m512 p = _mm512_maskz_mov_ps(m, exp2_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), top)));
        total = _mm512_add_ps(total, p);
        _mm256_mask_storeu_epi16(probabilities + j, m, (__m256i)_mm512_cvtneps_pbh(p));
    }
    return _mm512_reduce_add_ps(total);
}

static void attend_rows(const Attention *a, Scratch *s, int64_t batch, int64_t head, int64_t first, int64_t rows) {
    query_scores(a, s, batch, head, first, rows);
    float sums[QUERY_ROWS];
    for (int64_t r = 0; r < QUERY_ROWS; r++) {
        if (r < rows) {
            sums[r] = softmax_row(a, s, batch, head, first + r, r);
            memset(s->probabilities + r * a->row + a->tokens, 0, (size_t)(a->padded - a->tokens) * 2);
        } else {
            memset(s->probabilities + r * a->row, 0, (size_t)a->padded * 2);
        }
    }
    _Alignas(64) float result[QUERY_ROWS][HEAD_DIM];
    const int64_t stride = 2 * a->row;
    for (int half = 0; half < 2; half++) {  // value columns [32 half, 32 half + 32)
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t block = 0; block < a->padded / 32; block++) {
            _tile_loadd(4, s->probabilities + block * 32, stride);
            _tile_loadd(5, s->probabilities + 16 * a->row + block * 32, stride);
            _tile_loadd(6, s->values + (block * 4 + 2 * half) * 512, 64);
            _tile_loadd(7, s->values + (block * 4 + 2 * half + 1) * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, &result[0][32 * half], 4 * HEAD_DIM);
        _tile_stored(1, &result[0][32 * half + 16], 4 * HEAD_DIM);
        _tile_stored(2, &result[16][32 * half], 4 * HEAD_DIM);
        _tile_stored(3, &result[16][32 * half + 16], 4 * HEAD_DIM);
    }
    for (int64_t r = 0; r < rows; r++) {
        uint16_t *out = a->out + ((batch * a->tokens + first + r) * a->heads + head) * HEAD_DIM;
        const __m512 inverse = _mm512_set1_ps(1.0f / sums[r]);
        for (int c = 0; c < HEAD_DIM; c += 16)
            _mm256_storeu_si256((__m256i *)(out + c),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_load_ps(&result[r][c]), inverse)));
    }
}

static int allocate(Scratch *s, const Attention *a) {
    const size_t packed = (size_t)a->padded * HEAD_DIM * sizeof(uint16_t), rows = (size_t)QUERY_ROWS * a->row;
    s->keys = aligned_alloc(64, packed);
    s->values = aligned_alloc(64, packed);
    s->scores = aligned_alloc(64, rows * sizeof(float));
    s->probabilities = aligned_alloc(64, rows * sizeof(uint16_t));
    s->rel_w = malloc((size_t)a->w * sizeof(float));
    s->packed_head = -1;
    return s->keys && s->values && s->scores && s->probabilities && s->rel_w;
}

static void release(Scratch *s) { free(s->keys), free(s->values), free(s->scores), free(s->probabilities), free(s->rel_w); }

#endif

// 1 where the kernel runs here (AVX512-BF16 and AMX, and the OS grants the tiles).
int sam_attention_available(void) {
#if HAVE_AMX_ATTENTION
    return amx_permitted();
#else
    return 0;
#endif
}

// Returns 0, or -1 (not available here, head_dim other than 64, tokens other than h * w, or no
// memory): the caller then uses torch.
int sam_attention(const uint16_t *qkv, int64_t batch, int64_t tokens, int64_t heads, int64_t head_dim,
                  const uint16_t *rel_h, const uint16_t *rel_w, int64_t h, int64_t w, float scale, uint16_t *out,
                  int threads) {
#if HAVE_AMX_ATTENTION
    if (!amx_permitted() || head_dim != HEAD_DIM || tokens != h * w || tokens < 1) return -1;
    const int64_t width = heads * HEAD_DIM;
    const Attention a = {
        .q = qkv, .k = qkv + width, .v = qkv + 2 * width,
        .batch_stride = tokens * 3 * width, .token_stride = 3 * width,
        .heads = heads, .tokens = tokens, .padded = (tokens + KEY_ALIGN - 1) / KEY_ALIGN * KEY_ALIGN,
        .row = (tokens + KEY_ALIGN - 1) / KEY_ALIGN * KEY_ALIGN + 32,
        .rel_h = rel_h, .rel_w = rel_w, .h = h, .w = w, .scale = scale, .out = out,
    };
    const int64_t blocks = (tokens + QUERY_ROWS - 1) / QUERY_ROWS, items = batch * heads * blocks;
    if (threads < 1) threads = 1;
    Scratch *scratch = calloc((size_t)threads, sizeof(Scratch));
    int ready = scratch != NULL;
    for (int t = 0; ready && t < threads; t++) ready = allocate(&scratch[t], &a);
    if (ready) {
#pragma omp parallel num_threads(threads)
        {
#ifdef _OPENMP
            Scratch *s = &scratch[omp_get_thread_num()];
#else
            Scratch *s = &scratch[0];
#endif
            configure_tiles();
#pragma omp for schedule(static)
            for (int64_t item = 0; item < items; item++) {
                const int64_t pair = item / blocks, block = item % blocks;  // pair: batch * heads + head
                if (pair != s->packed_head) pack_head(&a, s, pair / heads, pair % heads), s->packed_head = pair;
                const int64_t first = block * QUERY_ROWS;
                const int64_t rows = tokens - first < QUERY_ROWS ? tokens - first : QUERY_ROWS;
                attend_rows(&a, s, pair / heads, pair % heads, first, rows);
            }
            _tile_release();
        }
    }
    for (int t = 0; scratch && t < threads; t++) release(&scratch[t]);
    free(scratch);
    return ready ? 0 : -1;
#else
    (void)qkv, (void)batch, (void)tokens, (void)heads, (void)head_dim, (void)rel_h, (void)rel_w, (void)h, (void)w;
    (void)scale, (void)out, (void)threads;
    return -1;
#endif
}

// ---- float32, on the build's vectors (AVX-512, AVX2 + FMA, NEON; plain C in the portable build) ----
//
// The same attention for a float32 model, where torch's route is flash attention with the bias
// materialised as a float32 mask (64 MB per 64 query rows at 1024 px, written, then read). This
// one also takes the relative-position terms and the windows on itself, reading the qkv
// projection's (batch, H, W, 3 * width) map in place and writing the (batch, H, W, width) one:
//   regions  the whole map (global blocks), or window x window squares over the map padded to
//            whole windows (windowed blocks), as SAM's window_partition cuts them. A padded
//            position's key and value are the qkv projection's bias (SAM pads the normalised map
//            with zeros before projecting); its query is not computed (SAM drops its output).
//   terms    rel_h[i, ky] = q_i . Rh[y_i, ky] and rel_w[i, kx] = q_i . Rw[x_i, kx] per query, with
//            Rh, Rw the (size, size, 64) tables of get_rel_pos and (y_i, x_i) its place in the region
// Work item: F32_QUERY_ROWS real queries of one (batch, region, head), whose keys and values are
// packed once per thread:
//   scores   S (rows, keys) = Q K^T in register blocks of F32_ROWS queries x F32_KEYS keys,
//            keys packed transposed per block so that one key block serves every query block
//   softmax  exact, over the whole row: s * scale + (rel_h + rel_w) (the bias summed in float32
//            as torch sums it), max, exp, sum; P = exp(s - max) in place
//   output   O (rows, 64) = P V in register blocks of F32_ROWS rows x F32_KEYS value columns,
//            F32_KEY_SPAN keys at a time so that P's and V's slices stay in cache; then O / sum
// Results differ from torch's route in float32 summation order only.

#include "vectors.h"

#define F32_ROWS 6            // query rows of one register block (12 accumulators + 3 operands fit AVX2's 16 registers)
#define F32_KEYS (2 * VL)     // keys, or value columns, of one register block
#define F32_QUERY_ROWS 24     // query rows of one work item: 4 register blocks
#define F32_KEY_SPAN 256      // keys per pass of P V: a 24 x 256 slice of P and a 256 x 64 one of V

typedef struct {
    const float *qkv;   // (batch, height, width, 3, heads, 64)
    const float *bias;  // (3, heads, 64): a padded position's projections; NULL for zeros
    int64_t height, width, heads;
    int64_t rh, rw;                // a region's size: the window, or the map
    int64_t across, regions;       // regions per row of the padded map, and per image
    int64_t tokens, padded, row;   // keys per region (rh * rw), rounded up to F32_KEYS, the scores' row
                                   // stride (padded + 16: a register block's rows then do not share
                                   // one L1 set at power-of-two key counts)
    const float *rel_h, *rel_w;    // (rh, rh, 64) and (rw, rw, 64)
    float scale;
    float *out;  // (batch, height, width, heads, 64)
} AttentionF32;

typedef struct {
    float *keys;    // (padded / F32_KEYS, 64, F32_KEYS): each block of keys transposed
    float *values;  // (padded, 64), zero past the tokens
    float *scores;  // (F32_QUERY_ROWS, row): scores, then probabilities
    float *terms;   // (F32_QUERY_ROWS, rh + rw): each query's rel_h, then rel_w terms
    int64_t packed;  // the (batch, region, head) the buffers hold, -1 for none
} ScratchF32;

// Where token ``t`` of region ``region`` of image ``batch`` is in the map; NULL for a padded position.
static const float *region_token(const AttentionF32 *a, int64_t batch, int64_t region, int64_t t) {
    const int64_t y = region / a->across * a->rh + t / a->rw, x = region % a->across * a->rw + t % a->rw;
    if (y >= a->height || x >= a->width) return NULL;
    return a->qkv + ((batch * a->height + y) * a->width + x) * 3 * a->heads * HEAD_DIM;
}

static void pack_head_f32(const AttentionF32 *a, ScratchF32 *s, int64_t batch, int64_t region, int64_t head) {
    const int64_t width = a->heads * HEAD_DIM;
    memset(s->keys, 0, (size_t)a->padded * HEAD_DIM * sizeof(float));
    memset(s->values + a->tokens * HEAD_DIM, 0, (size_t)(a->padded - a->tokens) * HEAD_DIM * sizeof(float));
    for (int64_t n = 0; n < a->tokens; n++) {
        const float *at = region_token(a, batch, region, n);
        float *values = s->values + n * HEAD_DIM;
        if (at == NULL && a->bias == NULL) {
            memset(values, 0, HEAD_DIM * sizeof(float));
            continue;  // its key stays zero
        }
        const float *k = (at ? at : a->bias) + width + head * HEAD_DIM;
        float *block = s->keys + n / F32_KEYS * HEAD_DIM * F32_KEYS + n % F32_KEYS;
        for (int c = 0; c < HEAD_DIM; c++) block[c * F32_KEYS] = k[c];
        memcpy(values, k + width, HEAD_DIM * sizeof(float));
    }
}

static void query_scores_f32(const AttentionF32 *a, ScratchF32 *s, const float queries[F32_QUERY_ROWS][HEAD_DIM]) {
    for (int64_t block = 0; block < a->padded / F32_KEYS; block++) {
        const float *keys = s->keys + block * HEAD_DIM * F32_KEYS;
        for (int first = 0; first < F32_QUERY_ROWS; first += F32_ROWS) {
            vf acc[F32_ROWS][2];
            for (int i = 0; i < F32_ROWS; i++) acc[i][0] = acc[i][1] = vf_set1(0.f);
            for (int c = 0; c < HEAD_DIM; c++) {
                const vf k0 = vf_load(keys + c * F32_KEYS), k1 = vf_load(keys + c * F32_KEYS + VL);
#pragma GCC unroll 6
                for (int i = 0; i < F32_ROWS; i++) {
                    const vf q = vf_set1(queries[first + i][c]);
                    acc[i][0] = vf_fma(q, k0, acc[i][0]);
                    acc[i][1] = vf_fma(q, k1, acc[i][1]);
                }
            }
            for (int i = 0; i < F32_ROWS; i++) {
                float *at = s->scores + (first + i) * a->row + block * F32_KEYS;
                vf_store(at, acc[i][0]);
                vf_store(at + VL, acc[i][1]);
            }
        }
    }
}

// The relative-position terms of a query at (y, x) in its region: terms[ky] = q . Rh[y, ky],
// terms[rh + kx] = q . Rw[x, kx].
static inline float dot_head(const float *a, const float *b) {  // HEAD_DIM is a multiple of every VL
    vf acc = vf_set1(0.f);
    for (int c = 0; c < HEAD_DIM; c += VL) acc = vf_fma(vf_load(a + c), vf_load(b + c), acc);
    return vf_sum(acc);
}

static void relative_terms_f32(const AttentionF32 *a, const float *q, int64_t y, int64_t x, float *terms) {
    for (int64_t ky = 0; ky < a->rh; ky++) terms[ky] = dot_head(q, a->rel_h + (y * a->rh + ky) * HEAD_DIM);
    for (int64_t kx = 0; kx < a->rw; kx++) terms[a->rh + kx] = dot_head(q, a->rel_w + (x * a->rw + kx) * HEAD_DIM);
}

// A row of scores -> its probabilities exp(s - max), zero past the tokens; returns their sum.
static float softmax_row_f32(const AttentionF32 *a, float *row, const float *terms) {
    const int64_t h = a->rh, w = a->rw;
    const float *rel_h = terms, *rel_w = terms + h;
    const vf scale = vf_set1(a->scale);
    vf highest = vf_set1(-INFINITY);
    float top = -INFINITY;
    for (int64_t ky = 0; ky < h; ky++) {
        float *at = row + ky * w;
        const vf height = vf_set1(rel_h[ky]);
        int64_t kx = 0;
        for (; kx + VL <= w; kx += VL) {
            const vf score = vf_fma(vf_load(at + kx), scale, vf_add(height, vf_load(rel_w + kx)));
            vf_store(at + kx, score);
            highest = vf_max(highest, score);
        }
        for (; kx < w; kx++) {
            at[kx] = fmaf(at[kx], a->scale, rel_h[ky] + rel_w[kx]);
            top = fmaxf(top, at[kx]);
        }
    }
    top = fmaxf(top, vf_hmax(highest));
    const vf shift = vf_set1(top);
    vf total = vf_set1(0.f);
    int64_t j = 0;
    for (; j + VL <= a->tokens; j += VL) {
        const vf p = vf_exp(vf_sub(vf_load(row + j), shift));
        vf_store(row + j, p);
        total = vf_add(total, p);
    }
    float sum = vf_sum(total);
    for (; j < a->tokens; j++) sum += row[j] = exp_one(row[j] - top);
    for (; j < a->padded; j++) row[j] = 0.f;
    return sum;
}

// Real queries [first, first + rows) of a region (numbered row by row over its real part, ``across``
// of them a row), for one head.
static void attend_rows_f32(const AttentionF32 *a, ScratchF32 *s, int64_t batch, int64_t region, int64_t head,
                            int64_t first, int64_t rows, int64_t across) {
    const int64_t stride = a->rh + a->rw;
    _Alignas(64) float queries[F32_QUERY_ROWS][HEAD_DIM];
    memset(queries, 0, sizeof queries);
    float *outputs[F32_QUERY_ROWS];
    for (int64_t r = 0; r < rows; r++) {
        const int64_t y = (first + r) / across, x = (first + r) % across;
        const float *at = region_token(a, batch, region, y * a->rw + x);
        memcpy(queries[r], at + head * HEAD_DIM, sizeof queries[r]);
        outputs[r] = a->out + (at - a->qkv) / 3 + head * HEAD_DIM;
        relative_terms_f32(a, queries[r], y, x, s->terms + r * stride);
    }
    query_scores_f32(a, s, queries);
    float sums[F32_QUERY_ROWS];
    for (int64_t r = 0; r < F32_QUERY_ROWS; r++) {
        if (r < rows)
            sums[r] = softmax_row_f32(a, s->scores + r * a->row, s->terms + r * stride);
        else
            memset(s->scores + r * a->row, 0, (size_t)a->padded * sizeof(float));
    }
    _Alignas(64) float result[F32_QUERY_ROWS][HEAD_DIM];
    memset(result, 0, sizeof result);
    for (int64_t start = 0; start < a->padded; start += F32_KEY_SPAN) {
        const int64_t end = a->padded - start < F32_KEY_SPAN ? a->padded : start + F32_KEY_SPAN;
        for (int column = 0; column < HEAD_DIM; column += F32_KEYS) {
            for (int block = 0; block < F32_QUERY_ROWS; block += F32_ROWS) {
                vf acc[F32_ROWS][2];  // this span's sums, added to the result after it: shorter chains of additions
                for (int i = 0; i < F32_ROWS; i++) acc[i][0] = acc[i][1] = vf_set1(0.f);
                const float *p = s->scores + block * a->row;
                for (int64_t j = start; j < end; j++) {
                    const float *value = s->values + j * HEAD_DIM + column;
                    const vf v0 = vf_load(value), v1 = vf_load(value + VL);
#pragma GCC unroll 6
                    for (int i = 0; i < F32_ROWS; i++) {
                        const vf weight = vf_set1(p[i * a->row + j]);
                        acc[i][0] = vf_fma(weight, v0, acc[i][0]);
                        acc[i][1] = vf_fma(weight, v1, acc[i][1]);
                    }
                }
                for (int i = 0; i < F32_ROWS; i++) {
                    float *sums = &result[block + i][column];
                    vf_store(sums, vf_add(vf_load(sums), acc[i][0]));
                    vf_store(sums + VL, vf_add(vf_load(sums + VL), acc[i][1]));
                }
            }
        }
    }
    for (int64_t r = 0; r < rows; r++) {
        const vf inverse = vf_set1(1.0f / sums[r]);
        for (int c = 0; c < HEAD_DIM; c += VL) vf_store(outputs[r] + c, vf_mul(vf_load(&result[r][c]), inverse));
    }
}

static int allocate_f32(ScratchF32 *s, const AttentionF32 *a) {
    const size_t packed = (size_t)a->padded * HEAD_DIM * sizeof(float);
    s->keys = aligned_alloc(64, packed);
    s->values = aligned_alloc(64, packed);
    s->scores = aligned_alloc(64, (size_t)F32_QUERY_ROWS * a->row * sizeof(float));
    s->terms = malloc((size_t)F32_QUERY_ROWS * (a->rh + a->rw) * sizeof(float));
    s->packed = -1;
    return s->keys && s->values && s->scores && s->terms;
}

static void release_f32(ScratchF32 *s) { free(s->keys), free(s->values), free(s->scores), free(s->terms); }

// Which vectors the float32 attention runs on: 16 (AVX-512), 8 (AVX2), 4 (NEON) or 1 (plain C) lanes.
int sam_attention_f32_lanes(void) { return VL; }

// SAM's float32 attention of a (batch, height, width, 3, heads, head_dim) qkv map -> out (batch,
// height, width, heads, head_dim): globally (window 0), or within window x window squares, the map
// padded to whole windows with positions whose projections are ``bias`` (3, heads, head_dim; NULL:
// zeros). rel_h, rel_w: get_rel_pos's (size, size, head_dim) tables for the region's height and
// width. Scores are scaled by ``scale``. Returns 0, or -1 (head_dim other than 64, or no memory):
// the caller then uses torch.
int sam_attention_f32(const float *qkv, int64_t batch, int64_t height, int64_t width, int64_t heads,
                      int64_t head_dim, int64_t window, const float *rel_h, const float *rel_w, const float *bias,
                      float scale, float *out, int threads) {
    if (head_dim != HEAD_DIM || height < 1 || width < 1 || window < 0) return -1;
    const int64_t rh = window ? window : height, rw = window ? window : width;
    const int64_t across = (width + rw - 1) / rw, regions = across * ((height + rh - 1) / rh);
    const int64_t tokens = rh * rw, padded = (tokens + F32_KEYS - 1) / F32_KEYS * F32_KEYS;
    const AttentionF32 a = {
        .qkv = qkv, .bias = bias, .height = height, .width = width, .heads = heads,
        .rh = rh, .rw = rw, .across = across, .regions = regions,
        .tokens = tokens, .padded = padded, .row = padded + 16,
        .rel_h = rel_h, .rel_w = rel_w, .scale = scale, .out = out,
    };
    const int64_t blocks = (tokens + F32_QUERY_ROWS - 1) / F32_QUERY_ROWS, items = batch * regions * heads * blocks;
    if (threads < 1) threads = 1;
    ScratchF32 *scratch = calloc((size_t)threads, sizeof(ScratchF32));
    int ready = scratch != NULL;
    for (int t = 0; ready && t < threads; t++) ready = allocate_f32(&scratch[t], &a);
    if (ready) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t item = 0; item < items; item++) {
#ifdef _OPENMP
            ScratchF32 *s = &scratch[omp_get_thread_num()];
#else
            ScratchF32 *s = &scratch[0];
#endif
            const int64_t unit = item / blocks, first = item % blocks * F32_QUERY_ROWS;  // unit: (batch, region, head)
            const int64_t head = unit % heads, region = unit / heads % regions, image = unit / heads / regions;
            // The region's real part: a window at the map's bottom or right edge is cut by the padding.
            const int64_t top = region / across * rh, left = region % across * rw;
            const int64_t real_h = height - top < rh ? height - top : rh, real_w = width - left < rw ? width - left : rw;
            const int64_t real = real_h * real_w;
            if (first >= real) continue;
            if (unit != s->packed) pack_head_f32(&a, s, image, region, head), s->packed = unit;
            attend_rows_f32(&a, s, image, region, head, first,
                            real - first < F32_QUERY_ROWS ? real - first : F32_QUERY_ROWS, real_w);
        }
    }
    for (int t = 0; scratch && t < threads; t++) release_f32(&scratch[t]);
    free(scratch);
    return ready ? 0 : -1;
}

// ---- float32 bias + GELU, for SAM's MLP --------------------------------------------------------
//
// x = gelu(x + bias) in place over (rows, columns), gelu the exact (erf) one as F.gelu: one pass
// over the first linear's output instead of torch's two (addmm writes the broadcast bias into its
// output before the product, then F.gelu reads and writes it again).
//
// gelu(x) = x (1 - erfc(z) / 2) for x >= 0, and x erfc(-z) / 2 below, z = x / sqrt(2), with erfc
// by the Chebyshev fit of Numerical Recipes (erfc(a) = t exp(-a^2 + P(t)), t = 1 / (1 + a / 2),
// a >= 0; relative error < 1.2e-7 everywhere), so that both halves keep float32's relative precision.
static const float erfc_fit[10] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                                   -0.18628806f, 0.09678418f,  0.37409196f, 1.00002368f, -1.26551223f};

static inline vf gelu_vf(vf x) {
    const vf a = vf_mul(vf_abs(x), vf_set1(0.70710678118654752f));
    const vf t = vf_div(vf_set1(1.f), vf_fma(a, vf_set1(0.5f), vf_set1(1.f)));
    vf p = vf_set1(erfc_fit[0]);
    for (int k = 1; k < 10; k++) p = vf_fma(p, t, vf_set1(erfc_fit[k]));
    const vf half_erfc = vf_mul(vf_mul(vf_set1(0.5f), t), vf_exp(vf_sub(p, vf_mul(a, a))));
    const vf product = vf_mul(x, half_erfc);
    return vf_where_negative(x, product, vf_sub(x, product));
}

void bias_gelu_f32(float *x, const float *bias, int64_t rows, int64_t columns, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * columns;
        int64_t c = 0;
        for (; c + VL <= columns; c += VL) vf_store(row + c, gelu_vf(vf_add(vf_load(row + c), vf_load(bias + c))));
        if (c < columns) {  // the tail, through one vector's worth of scratch
            float tail[VL] = {0};
            for (int64_t i = c; i < columns; i++) tail[i - c] = row[i] + bias[i];
            vf_store(tail, gelu_vf(vf_load(tail)));
            memcpy(row + c, tail, (size_t)(columns - c) * sizeof(float));
        }
    }
}
