// Portable scalar C versions of every kernel (the same API as q8_avx512.c and q8_simd.c): the reference the
// tests compare each instruction set's build against, and a forced path (TINYGEMMA_KERNELS=scalar) on any CPU.
// Plain loops, no intrinsics. Integer dot products are exact; the float arithmetic follows the same formulas
// as the SIMD builds, in another order (so the results agree to float rounding, not bit for bit).
//
// Formats (see kernels/__init__.py for the packing):
// - layers: weights uint8 = int8 + 128 in tiles of 4 rows whose 64-byte chunks interleave, one scale per row;
//   activations int8 with one scale per BLOCK values and xc = 128 * sum(scale * q), the offset's contribution.
// - output projection: Q8_0 table int8 in the same tiles, scales (tile, chunk, row, 2); activations
//   uint8 = int8 + 128 per 32 values, with 16 lane scales per 64-value chunk (lanes 0-7 block 0, 8-15 block 1).

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef TG
#define TG(name) tg_##name
#endif
#ifndef BLOCK
#define BLOCK 64
#endif
#define CHUNK 64
#define TILE_N 4

// Index of byte k of row r (0..3 within its tile) in a packed tile.
static inline int64_t tile_index(int r, int64_t k) {
    return (k / CHUNK * TILE_N + r) * CHUNK + k % CHUNK;
}

static float rms_factor(const float *row, int64_t K, float eps) {
    float ss = 0.0f;
    for (int64_t k = 0; k < K; k++) ss += row[k] * row[k];
    return 1.0f / sqrtf(ss / (float)K + eps);
}

static void quantize_row(const float *row, int64_t K, uint8_t *xq, float *xs) {
    for (int64_t b = 0; b < K / 32; b++) {
        float amax = 0.0f;
        for (int k = 0; k < 32; k++) amax = fmaxf(amax, fabsf(row[b * 32 + k]));
        const float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
        for (int k = 0; k < 32; k++) xq[b * 32 + k] = (uint8_t)((int)nearbyintf(row[b * 32 + k] * inv) + 128);
        for (int l = 0; l < 8; l++) xs[(b / 2) * 16 + (b % 2) * 8 + l] = d;
    }
}

void TG(quantize)(const float *x, int64_t M, int64_t K, uint8_t *xq, float *xs) {
    for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, xq + m * K, xs + m * (K / CHUNK) * 16);
}

static float gelu_tanh(float g) {
    return 0.5f * g * (1.0f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g)));
}

void TG(rmsnorm)(const float *x, int64_t M, int64_t K, const float *gain, float eps, int add, float *out) {
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * K;
        float *o = out + m * K;
        const float f = rms_factor(row, K, eps);
        for (int64_t k = 0; k < K; k++) o[k] = (add ? o[k] : 0.0f) + row[k] * f * gain[k];
    }
}

static void attend_head(const float *qr, const float *kb, const float *vb, const int64_t *kp, int64_t S,
                        int64_t ss, int64_t D, int64_t p, int64_t window, float scale, float *o) {
    float best = -INFINITY, total = 0.0f;
    float scores[S > 0 ? S : 1];
    for (int64_t s = 0; s < S; s++) {
        if (!(kp[s] >= 0 && kp[s] <= p && (window <= 0 || p - kp[s] < window))) { scores[s] = -INFINITY; continue; }
        float dot = 0.0f;
        for (int64_t d = 0; d < D; d++) dot += qr[d] * kb[s * ss + d];
        scores[s] = dot * scale;
        if (scores[s] > best) best = scores[s];
    }
    for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
    if (best == -INFINITY) return;
    for (int64_t s = 0; s < S; s++) {
        if (scores[s] == -INFINITY) continue;
        const float w = expf(scores[s] - best);
        total += w;
        for (int64_t d = 0; d < D; d++) o[d] += w * vb[s * ss + d];
    }
    for (int64_t d = 0; d < D; d++) o[d] /= total;
}

#include "attention.c"

static void quantize_row_s8(const float *row, int64_t K, float norm, const float *gain, int8_t *xq, float *xs,
                            float *xc) {
    float comp = 0.0f;
    for (int64_t b = 0; b < K / BLOCK; b++) {
        float v[BLOCK], amax = 0.0f;
        for (int k = 0; k < BLOCK; k++) {
            v[k] = row[b * BLOCK + k] * norm;
            if (gain) v[k] *= gain[b * BLOCK + k];
            amax = fmaxf(amax, fabsf(v[k]));
        }
        const float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int k = 0; k < BLOCK; k++) {
            const int q = (int)nearbyintf(v[k] * inv);
            xq[b * BLOCK + k] = (int8_t)q;
            sum += q;
        }
        xs[b] = d;
        comp += d * (float)sum;
    }
    *xc = 128.0f * comp;
}

void TG(quantize_rows)(const float *x, int64_t M, int64_t K, const float *gain, float eps, int8_t *xq, float *xs,
                       float *xc) {
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * K;
        quantize_row_s8(row, K, gain ? rms_factor(row, K, eps) : 1.0f, gain, xq + m * K, xs + m * (K / BLOCK),
                        xc + m);
    }
}

void TG(quantize_geglu)(const float *gu, int64_t M, int64_t I, float *tmp, int8_t *xq, float *xs, float *xc) {
    for (int64_t m = 0; m < M; m++) {
        const float *g = gu + m * 2 * I, *u = g + I;
        float *t = tmp + m * I;
        for (int64_t k = 0; k < I; k++) t[k] = gelu_tanh(g[k]) * u[k];
        quantize_row_s8(t, I, 1.0f, 0, xq + m * I, xs + m * (I / BLOCK), xc + m);
    }
}

// y (M, N), row stride ldy = x @ W.T for a layer. The signed products directly (no offset to remove).
void TG(matmul_rows)(const int8_t *xq, const float *xs, const float *xc, int64_t M, int64_t K, const uint8_t *w,
                     const float *ws, int64_t N, float *y, int64_t ldy) {
    (void)xc;
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *tile = w + n / TILE_N * TILE_N * K;
        for (int64_t m = 0; m < M; m++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < K / BLOCK; b++) {
                int32_t dot = 0;
                for (int64_t k = b * BLOCK; k < (b + 1) * BLOCK; k++)
                    dot += ((int32_t)tile[tile_index(n % TILE_N, k)] - 128) * xq[m * K + k];
                acc += (float)dot * xs[m * (K / BLOCK) + b];
            }
            y[m * ldy + n] = ws[n] * acc;
        }
    }
}

// y (M, N), row stride ldy = x @ W.T for the Q8_0 table.
void TG(matmul_q8_0)(const uint8_t *xq, const float *xs, int64_t M, int64_t K, const int8_t *w, const float *ws,
                     int64_t N, float *y, int64_t ldy) {
    for (int64_t n = 0; n < N; n++) {
        const int8_t *tile = w + n / TILE_N * TILE_N * K;
        const float *tile_scales = ws + n / TILE_N * TILE_N * (K / 32);
        for (int64_t m = 0; m < M; m++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < K / 32; b++) {
                int32_t dot = 0;
                for (int64_t k = b * 32; k < (b + 1) * 32; k++)
                    dot += tile[tile_index(n % TILE_N, k)] * ((int32_t)xq[m * K + k] - 128);
                const float wscale = tile_scales[((b / 2) * TILE_N + n % TILE_N) * 2 + b % 2];
                acc += (float)dot * (xs[(m * (K / CHUNK) + b / 2) * 16 + (b % 2) * 8] * wscale);
            }
            y[m * ldy + n] = acc;
        }
    }
}

#include "decode.c"
