// A standalone check of the CPU kernel's products (and SAM's float32 attention and bias + GELU)
// against plain reference loops, for builds
// that Python cannot load here (cross-compiled for AArch64 and run under qemu-user by
// tests/model/test_kernel_variants.py). Compiled together with model/cpu/kernels/*.c; exits 0 when every
// product is within its bound, else prints the first failure and exits 1.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { FORMAT_INT4 = 1, FORMAT_BF16C = 2 };

int kernel_linear(const void *x, int x_bf16, int64_t M, const int64_t *w, void *out, int out_bf16, int threads,
                  int portable);
int64_t bf16c_plan(const uint16_t *weight, int64_t N, int64_t K, uint8_t *tables, int32_t *exception_rows, int threads);
void bf16c_encode(const uint16_t *weight, int64_t N, int64_t K, const uint8_t *tables, const int32_t *exception_rows,
                  uint8_t *codes, uint16_t *exceptions, int threads);
void bf16c_decode(const int64_t *w, uint16_t *weight, int threads);
int kernel_variant(void);
int sam_attention_f32(const float *qkv, int64_t batch, int64_t height, int64_t width, int64_t heads,
                      int64_t head_dim, int64_t window, const float *rel_h, const float *rel_w, const float *bias,
                      float scale, float *out, int threads);
void bias_gelu_f32(float *x, const float *bias, int64_t rows, int64_t columns, int threads);

static uint64_t state = 88172645463325252ull;
static double uniform(void) {  // xorshift64: the same numbers on every machine
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return (double)(state >> 11) / 9007199254740992.0;
}
static float normal(void) { return (float)(sqrt(-2.0 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform())); }

static uint16_t to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}
static float from_bf16(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static int failures = 0;
static void check(const char *what, double got, double want, double bound) {
    if (!(fabs(got - want) <= bound) && failures++ < 5)
        fprintf(stderr, "%s: got %.9g, want %.9g (bound %.3g)\n", what, got, want, bound);
}

// Exponent-coded bfloat16: decoded bit for bit; products exact up to float32 summation.
static void check_coded(int64_t N, int64_t K, int64_t M, int portable) {
    uint16_t *weight = malloc(2 * N * K), *decoded = malloc(2 * N * K);
    for (int64_t i = 0; i < N * K; i++) weight[i] = to_bf16(0.02f * normal());
    for (int64_t k = 0; k < K; k += 7) weight[k] = to_bf16(ldexpf(1.f, -(int)(k % 100)));  // exceptions in row 0
    uint8_t *tables = malloc(16 * N), *codes = calloc(N, 96 * ((K + 63) / 64));
    int32_t *rows = malloc(4 * (N + 1));
    const int64_t count = bf16c_plan(weight, N, K, tables, rows, 1);
    uint16_t *exceptions = malloc(4 * (count + 1));
    bf16c_encode(weight, N, K, tables, rows, codes, exceptions, 1);
    const int64_t descriptor[8] = {FORMAT_BF16C, N, K, 0, (int64_t)codes, (int64_t)tables, (int64_t)rows, (int64_t)exceptions};
    bf16c_decode(descriptor, decoded, 1);
    if (memcmp(weight, decoded, 2 * N * K)) check("bf16c decode", 1, 0, 0);
    float *x = malloc(4 * M * K), *out = malloc(4 * M * N);
    for (int64_t i = 0; i < M * K; i++) x[i] = normal();
    if (kernel_linear(x, 0, M, descriptor, out, 0, 2, portable)) check("bf16c refused", 1, 0, 0);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double want = 0, scale = 0;
            for (int64_t k = 0; k < K; k++) {
                const double product = (double)from_bf16(weight[n * K + k]) * x[m * K + k];
                want += product, scale += fabs(product);
            }
            check(portable ? "bf16c portable" : "bf16c", out[m * N + n], want, 1e-6 * scale + 1e-30);
        }
    free(weight), free(decoded), free(tables), free(codes), free(rows), free(exceptions), free(x), free(out);
}

// int4 in groups of G: activations are quantized to int8 per group, so within 2% (relative norm).
static void check_int4(int64_t N, int64_t K, int64_t G, int64_t M, int portable) {
    uint8_t *packed = malloc(N * K / 2);
    uint16_t *scales = malloc(4 * N * (K / G));
    for (int64_t i = 0; i < N * K / 2; i++) packed[i] = (uint8_t)(uniform() * 256);
    for (int64_t i = 0; i < N * (K / G); i++) scales[2 * i] = to_bf16(0.01f), scales[2 * i + 1] = to_bf16(0.005f * normal());
    const int64_t descriptor[8] = {FORMAT_INT4, N, K, G, (int64_t)packed, (int64_t)scales, 0, 0};
    float *x = malloc(4 * M * K), *out = malloc(4 * M * N);
    for (int64_t i = 0; i < M * K; i++) x[i] = normal();
    if (kernel_linear(x, 0, M, descriptor, out, 0, 2, portable)) check("int4 refused", 1, 0, 0);
    double error = 0, norm = 0;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double want = 0;
            for (int64_t k = 0; k < K; k++) {
                const int64_t g = k / G, j = k % G, half = G / 2;
                const uint8_t byte = packed[n * K / 2 + g * half + j % half];
                const int q = j < half ? byte & 15 : byte >> 4;
                want += ((q - 8) * from_bf16(scales[2 * (n * (K / G) + g)]) + from_bf16(scales[2 * (n * (K / G) + g) + 1])) *
                        (double)x[m * K + k];
            }
            error += (out[m * N + n] - want) * (out[m * N + n] - want), norm += want * want;
        }
    check(portable ? "int4 portable (relative error)" : "int4 (relative error)", sqrt(error / norm), 0, 0.02);
    free(packed), free(scales), free(x), free(out);
}

// SAM's float32 attention over a (B, H, W) map: globally (window 0) or in windows over the map
// padded with positions whose projections are the bias, against the definition in double.
static void check_sam_attention(int64_t B, int64_t H, int64_t W, int64_t heads, int64_t window) {
    const int64_t D = 64, width = heads * D, rh = window ? window : H, rw = window ? window : W;
    const int64_t across = (W + rw - 1) / rw, down = (H + rh - 1) / rh;
    float *qkv = malloc(4 * B * H * W * 3 * width), *out = malloc(4 * B * H * W * width), *bias = malloc(4 * 3 * width);
    float *rel_h = malloc(4 * rh * rh * D), *rel_w = malloc(4 * rw * rw * D);
    for (int64_t i = 0; i < B * H * W * 3 * width; i++) qkv[i] = 0.5f * normal();
    for (int64_t i = 0; i < 3 * width; i++) bias[i] = normal();
    for (int64_t i = 0; i < rh * rh * D; i++) rel_h[i] = 0.3f * normal();
    for (int64_t i = 0; i < rw * rw * D; i++) rel_w[i] = 0.3f * normal();
    if (sam_attention_f32(qkv, B, H, W, heads, D, window, rel_h, rel_w, bias, 0.125f, out, 2)) check("attention refused", 1, 0, 0);
    double *scores = malloc(8 * rh * rw);
    for (int64_t b = 0; b < B; b++)
        for (int64_t region = 0; region < across * down; region++)
            for (int64_t head = 0; head < heads; head++)
                for (int64_t t = 0; t < rh * rw; t++) {  // query t of the region
                    const int64_t y = region / across * rh + t / rw, x = region % across * rw + t % rw;
                    if (y >= H || x >= W) continue;  // a padded query: not computed
                    const float *q = qkv + ((b * H + y) * W + x) * 3 * width + head * D;
                    double top = -1e300, total = 0;
                    for (int64_t j = 0; j < rh * rw; j++) {
                        const int64_t ky = region / across * rh + j / rw, kx = region % across * rw + j % rw;
                        const float *k = (ky < H && kx < W ? qkv + ((b * H + ky) * W + kx) * 3 * width : bias) + width + head * D;
                        double s = 0, th = 0, tw = 0;
                        for (int64_t c = 0; c < D; c++) {
                            s += (double)q[c] * k[c];
                            th += (double)q[c] * rel_h[((t / rw) * rh + j / rw) * D + c];
                            tw += (double)q[c] * rel_w[((t % rw) * rw + j % rw) * D + c];
                        }
                        scores[j] = 0.125 * s + th + tw;
                        if (scores[j] > top) top = scores[j];
                    }
                    for (int64_t j = 0; j < rh * rw; j++) total += scores[j] = exp(scores[j] - top);
                    for (int64_t c = 0; c < D; c++) {
                        double want = 0;
                        for (int64_t j = 0; j < rh * rw; j++) {
                            const int64_t ky = region / across * rh + j / rw, kx = region % across * rw + j % rw;
                            const float *v = (ky < H && kx < W ? qkv + ((b * H + ky) * W + kx) * 3 * width : bias) + 2 * width + head * D;
                            want += scores[j] * v[c];
                        }
                        check(window ? "SAM attention (windows)" : "SAM attention", out[((b * H + y) * W + x) * width + head * D + c],
                              want / total, 2e-5);
                    }
                }
    free(qkv), free(out), free(bias), free(rel_h), free(rel_w), free(scores);
}

// x = gelu(x + bias), the erf GELU, to float32's precision.
static void check_bias_gelu(int64_t rows, int64_t columns) {
    float *x = malloc(4 * rows * columns), *bias = malloc(4 * columns);
    double *want = malloc(8 * rows * columns);
    for (int64_t c = 0; c < columns; c++) bias[c] = normal();
    for (int64_t i = 0; i < rows * columns; i++) {
        x[i] = 4.f * normal();
        const double v = (double)x[i] + bias[i % columns];
        want[i] = 0.5 * v * (1 + erf(v / sqrt(2.0)));
    }
    bias_gelu_f32(x, bias, rows, columns, 2);
    for (int64_t i = 0; i < rows * columns; i++) check("bias + GELU", x[i], want[i], 1e-6 * (1 + fabs(want[i])));
    free(x), free(bias), free(want);
}

int main(void) {
    check_sam_attention(2, 9, 9, 2, 4);   // 3 x 3 windows of 4 over a map padded to 12: padded keys, cut queries
    check_sam_attention(1, 5, 7, 1, 0);   // 35 keys: vector and scalar tails
    check_sam_attention(1, 12, 12, 2, 0);
    check_bias_gelu(3, 37);
    for (int portable = 0; portable < 2; portable++) {
        for (int64_t M = 1; M <= 5; M += 2) {
            check_coded(37, 1280, M, portable);
            check_coded(9, 100, M, portable);
            check_int4(37, 1280, 64, M, portable);
            check_int4(12, 96, 32, M, portable);
        }
    }
    printf("variant %d: %s\n", kernel_variant(), failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
