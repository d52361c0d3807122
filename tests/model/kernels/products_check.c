// A standalone check of the CPU kernel's products against plain reference loops, for builds
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

int main(void) {
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
