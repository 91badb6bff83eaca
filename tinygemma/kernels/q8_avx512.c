// int8 matrix products for the fast CPU path (AVX-512 VNNI), called through ctypes.
//
// VPDPBUSD multiplies unsigned by signed bytes, so one operand carries an offset of 128:
// - Layers (tg_matmul_rows): weights one scale per row, stored as uint8 = int8 + 128; activations int8 with
//   one scale per BLOCK values (as llama.cpp quantizes activations per block; its Q8_K has 256). The
//   offset adds 128 * sum(x) to each dot product; that sum depends on the activation row only and is
//   removed once per output (xc). A block's chunks of 64 accumulate in int32, then convert to float once.
// - Output projection (tg_matmul_q8_0): the Q8_0 embedding table (int8, one scale per 32 values) against
//   activations quantized per 32 values and stored as uint8 = int8 + 128; the offset's contribution,
//   128 * sum(w), is removed by starting each block's accumulator at -128 * sum(w). A 64-byte chunk holds
//   two blocks (lanes 0-7, 8-15), scaled by a 16-float vector of 8 copies of each block's scale.
//
// Weights are packed in tiles of 4 rows whose 64-byte chunks interleave (row 0 chunk 0, row 1 chunk 0, ...,
// row 3 chunk 0, row 0 chunk 1, ...): one sequential stream, which the hardware prefetcher follows (4
// separate row streams reach only ~60% of the memory bandwidth). Q8_0 scales are packed the same way.
// y (M, N) float32 = x @ W.T.

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define CHUNK 64
#define TILE_N 4
#ifndef BLOCK
#define BLOCK 64     // activation values per scale in the layers' products: -DBLOCK from kernels/__init__.py
#endif
#define CPB (BLOCK / CHUNK)

static inline float rms_factor(const float *row, int64_t K, float eps) {
    __m512 ss = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        __mmask16 m = K - k >= 16 ? 0xFFFF : (__mmask16)((1u << (K - k)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, row + k);
        ss = _mm512_fmadd_ps(v, v, ss);
    }
    return 1.0f / sqrtf(_mm512_reduce_add_ps(ss) / (float)K + eps);
}

// One row of K values (K % 64 == 0) -> uint8 (int8 + 128) per block of 32 + lane scales.
static void quantize_row(const float *row, int64_t K, uint8_t *xq, float *xs) {
    for (int64_t c = 0; c < K / CHUNK; c++) {
        for (int half = 0; half < 2; half++) {
            int64_t k0 = c * CHUNK + half * 32;
            __m512 v0 = _mm512_loadu_ps(row + k0), v1 = _mm512_loadu_ps(row + k0 + 16);
            float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            float d = amax / 127.0f;
            __m512 inv = _mm512_set1_ps(d > 0 ? 1.0f / d : 0.0f);
            __m512i off = _mm512_set1_epi32(128);
            __m512i q0 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v0, inv), _MM_FROUND_TO_NEAREST_INT));
            __m512i q1 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v1, inv), _MM_FROUND_TO_NEAREST_INT));
            _mm_storeu_si128((__m128i *)(xq + k0), _mm512_cvtepi32_epi8(_mm512_add_epi32(q0, off)));
            _mm_storeu_si128((__m128i *)(xq + k0 + 16), _mm512_cvtepi32_epi8(_mm512_add_epi32(q1, off)));
            _mm256_storeu_ps(xs + c * 16 + half * 8, _mm256_set1_ps(d));
        }
    }
}

// For the Q8_0 product: x (M, K) float32 -> xq (M, K) uint8 and xs (M, K / 64, 16) lane scales. K % 64 == 0.
void tg_quantize(const float *x, int64_t M, int64_t K, uint8_t *xq, float *xs) {
#pragma omp parallel for schedule(static) if (M >= 16)
    for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, xq + m * K, xs + m * (K / CHUNK) * 16);
}

// exp(x) for |x| <= 88: 2^n * p(r), r = x - n ln2, p the degree-6 Taylor polynomial (|error| < 2e-7 relative).
static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// gelu (tanh approximation, as Gemma's gelu_pytorch_tanh) of g, times u.
static inline __m512 gelu_mul(__m512 g, __m512 u) {
    __m512 inner = _mm512_mul_ps(_mm512_set1_ps(0.7978845608f),
                                 _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), g), _mm512_mul_ps(g, g), g));
    // tanh(a) = 1 - 2 / (exp(2a) + 1)
    __m512 e = exp512(_mm512_add_ps(inner, inner));
    __m512 t = _mm512_sub_ps(_mm512_set1_ps(1.0f), _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), g), _mm512_add_ps(t, _mm512_set1_ps(1.0f))), u);
}

// RMSNorm of M rows of K values: out = x / rms(x) * gain; with add != 0, out += that instead (the residual
// update of Gemma's post-norms). out may be x.
void tg_rmsnorm(const float *x, int64_t M, int64_t K, const float *gain, float eps, int add, float *out) {
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * K;
        float *o = out + m * K;
        __m512 f = _mm512_set1_ps(rms_factor(row, K, eps));
        for (int64_t k = 0; k < K; k += 16) {
            __mmask16 mk = K - k >= 16 ? 0xFFFF : (__mmask16)((1u << (K - k)) - 1);
            __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, row + k), f),
                                     _mm512_maskz_loadu_ps(mk, gain + k));
            if (add) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, o + k));
            _mm512_mask_storeu_ps(o + k, mk, v);
        }
    }
}

// One query head against S keys (stride ss floats, D contiguous) at positions kp (-1: empty slot):
// softmax(q.k * scale) . v into o (D). A key is visible when 0 <= kp <= p and, with window > 0, p - kp < window;
// with no visible key the output is zero.
static void attend_head(const float *qr, const float *kb, const float *vb, const int64_t *kp, int64_t S,
                        int64_t ss, int64_t D, int64_t p, int64_t window, float scale, float *o) {
    float best = -INFINITY, total = 0.0f;
    float scores[S > 0 ? S : 1];
    for (int64_t s = 0; s < S; s++) {
        int visible = kp[s] >= 0 && kp[s] <= p && (window <= 0 || p - kp[s] < window);
        if (!visible) { scores[s] = -INFINITY; continue; }
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16) {
            __mmask16 mk = D - d >= 16 ? 0xFFFF : (__mmask16)((1u << (D - d)) - 1);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, qr + d), _mm512_maskz_loadu_ps(mk, kb + s * ss + d), acc);
        }
        scores[s] = _mm512_reduce_add_ps(acc) * scale;
        if (scores[s] > best) best = scores[s];
    }
    for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
    if (best == -INFINITY) return;
    for (int64_t s = 0; s < S; s++) {
        if (scores[s] == -INFINITY) continue;
        float w = expf(scores[s] - best);
        total += w;
        for (int64_t d = 0; d < D; d += 16) {
            __mmask16 mk = D - d >= 16 ? 0xFFFF : (__mmask16)((1u << (D - d)) - 1);
            __m512 acc = _mm512_maskz_loadu_ps(mk, o + d);
            _mm512_mask_storeu_ps(o + d, mk, _mm512_fmadd_ps(_mm512_set1_ps(w), _mm512_maskz_loadu_ps(mk, vb + s * ss + d), acc));
        }
    }
    for (int64_t d = 0; d < D; d++) o[d] /= total;
}

#include "attention.c"

// Layers: one row of K values (K % BLOCK == 0) -> int8 per BLOCK values (xs: scales), xc = 128 * sum over
// blocks of scale * sum(q): the uint8 weight offset's contribution, removed after the dot products.
static void quantize_row_s8(const float *row, int64_t K, float norm, const float *gain, int8_t *xq, float *xs,
                            float *xc) {
    float comp = 0.0f;
    for (int64_t b = 0; b < K / BLOCK; b++) {
        __m512 v[BLOCK / 16];
        __m512 amax = _mm512_setzero_ps();
        for (int u = 0; u < BLOCK / 16; u++) {
            int64_t k = b * BLOCK + u * 16;
            v[u] = _mm512_mul_ps(_mm512_loadu_ps(row + k), _mm512_set1_ps(norm));
            if (gain) v[u] = _mm512_mul_ps(v[u], _mm512_loadu_ps(gain + k));
            amax = _mm512_max_ps(amax, _mm512_abs_ps(v[u]));
        }
        float d = _mm512_reduce_max_ps(amax) / 127.0f;
        __m512 inv = _mm512_set1_ps(d > 0 ? 1.0f / d : 0.0f);
        __m512i sum = _mm512_setzero_si512();
        for (int u = 0; u < BLOCK / 16; u++) {
            __m512i q = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v[u], inv), _MM_FROUND_TO_NEAREST_INT));
            sum = _mm512_add_epi32(sum, q);
            _mm_storeu_si128((__m128i *)(xq + b * BLOCK + u * 16), _mm512_cvtepi32_epi8(q));
        }
        xs[b] = d;
        comp += d * (float)_mm512_reduce_add_epi32(sum);
    }
    *xc = 128.0f * comp;
}

// x (M, K) float32 -> xq int8 (M, K), xs (M, K / BLOCK), xc (M); RMS-normalized with `gain` first if not NULL.
void tg_quantize_rows(const float *x, int64_t M, int64_t K, const float *gain, float eps, int8_t *xq, float *xs,
                      float *xc) {
#pragma omp parallel for schedule(static) if (M >= 16)
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * K;
        quantize_row_s8(row, K, gain ? rms_factor(row, K, eps) : 1.0f, gain, xq + m * K, xs + m * (K / BLOCK), xc + m);
    }
}

// gu (M, 2I): gate in the first I columns, up in the last I. Quantizes gelu(gate) * up like
// tg_quantize_rows (I % BLOCK == 0); tmp: M * I floats of scratch.
void tg_quantize_geglu(const float *gu, int64_t M, int64_t I, float *tmp, int8_t *xq, float *xs, float *xc) {
#pragma omp parallel for schedule(static) if (M >= 16)
    for (int64_t m = 0; m < M; m++) {
        const float *g = gu + m * 2 * I, *u = g + I;
        float *t = tmp + m * I;
        for (int64_t k = 0; k < I; k += 16)
            _mm512_storeu_ps(t + k, gelu_mul(_mm512_loadu_ps(g + k), _mm512_loadu_ps(u + k)));
        quantize_row_s8(t, I, 1.0f, 0, xq + m * I, xs + m * (I / BLOCK), xc + m);
    }
}

// Arguments of one matrix product, shared by the tile functions.
typedef struct {
    const void *xq;         // activations: int8 (layers) or uint8 (Q8_0)
    const float *xs, *xc;   // their scales (and, for layers, offset corrections)
    int64_t K, ldy;
    float *y;
} Product;

// The sums of the 16 lanes of a0..a3, as one vector [sum a0, sum a1, sum a2, sum a3].
static inline __m128 hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    const __m512d p0 = _mm512_castps_pd(t0), p1 = _mm512_castps_pd(t1);
    const __m512 u = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p0, p1)),
                                   _mm512_castpd_ps(_mm512_unpackhi_pd(p0, p1)));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(u), _mm512_extractf32x8_ps(u, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// Store the first `rows` of 4 consecutive outputs.
static inline void store4(float *y, __m128 v, int rows) {
    if (rows == TILE_N) _mm_storeu_ps(y, v);
    else _mm_mask_storeu_ps(y, (__mmask8)((1u << rows) - 1), v);
}

// Layers: a tile of 4 rows of W (uint8, packed) with one scale each (sp) against rows m0..m0+MB of x.
#define DEFINE_ROWS_TILE(MB)                                                                            \
static inline void rows_tile_##MB(const Product *p, const uint8_t *wp, const float *sp, int64_t m0,       \
                                  float *y, int rows) {                                                   \
    const int8_t *xq = (const int8_t *)p->xq;                                                             \
    const int64_t K = p->K, blocks = K / BLOCK;                                                           \
    __m512 acc[TILE_N][MB];                                                                               \
    for (int i = 0; i < TILE_N; i++)                                                                      \
        for (int j = 0; j < MB; j++) acc[i][j] = _mm512_setzero_ps();                                     \
    for (int64_t b = 0; b < blocks; b++) {                                                                \
        __m512i wv[CPB][TILE_N];                                                                          \
        for (int u = 0; u < CPB; u++)                                                                     \
            for (int i = 0; i < TILE_N; i++)                                                              \
                wv[u][i] = _mm512_loadu_si512(wp + ((b * CPB + u) * TILE_N + i) * CHUNK);                 \
        for (int j = 0; j < MB; j++) {                                                                    \
            __m512i a[CPB];                                                                               \
            for (int u = 0; u < CPB; u++) a[u] = _mm512_loadu_si512(xq + (m0 + j) * K + b * BLOCK + u * CHUNK); \
            const __m512 s = _mm512_set1_ps(p->xs[(m0 + j) * blocks + b]);                                \
            for (int i = 0; i < TILE_N; i++) {                                                            \
                __m512i d = _mm512_setzero_si512();                                                       \
                for (int u = 0; u < CPB; u++) d = _mm512_dpbusd_epi32(d, wv[u][i], a[u]);                 \
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[i][j]);                        \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    const __m128 scale = _mm_loadu_ps(sp);                                                                \
    for (int j = 0; j < MB; j++) {                                                                        \
        const __m128 sums = hsum4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]);                            \
        store4(y + (m0 + j) * p->ldy, _mm_mul_ps(scale, _mm_sub_ps(sums, _mm_set1_ps(p->xc[m0 + j]))), rows); \
    }                                                                                                     \
}

// Scale vector of one Q8_0 chunk: lanes 0-7 = s[0], 8-15 = s[1].
static inline __m512 pair_scales(const float *s) {
    return _mm512_insertf32x8(_mm512_set1_ps(s[0]), _mm256_set1_ps(s[1]), 1);
}

// Output projection: a tile of 4 rows of the Q8_0 table (int8, packed) against rows m0..m0+MB of x.
// neg, wsc: the tile's per-chunk offset corrections and scale vectors (q8_0_prepare), shared by all rows.
#define DEFINE_Q8_0_TILE(MB)                                                                            \
static inline void q8_0_tile_##MB(const Product *p, const int8_t *wp, const __m512i *neg, const __m512 *wsc, \
                                  int64_t m0, float *y, int rows) {                                       \
    const uint8_t *xq = (const uint8_t *)p->xq;                                                           \
    const int64_t K = p->K, chunks = K / CHUNK;                                                           \
    __m512 acc[TILE_N][MB];                                                                               \
    for (int i = 0; i < TILE_N; i++)                                                                      \
        for (int j = 0; j < MB; j++) acc[i][j] = _mm512_setzero_ps();                                     \
    for (int64_t c = 0; c < chunks; c++) {                                                                \
        __m512i wv[TILE_N];                                                                               \
        for (int i = 0; i < TILE_N; i++) wv[i] = _mm512_loadu_si512(wp + (c * TILE_N + i) * CHUNK);      \
        for (int j = 0; j < MB; j++) {                                                                    \
            const __m512i a = _mm512_loadu_si512(xq + (m0 + j) * K + c * CHUNK);                          \
            const __m512 s = _mm512_loadu_ps(p->xs + ((m0 + j) * chunks + c) * 16);                       \
            for (int i = 0; i < TILE_N; i++) {                                                            \
                __m512 d = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(neg[c * TILE_N + i], a, wv[i]));        \
                acc[i][j] = _mm512_fmadd_ps(d, _mm512_mul_ps(s, wsc[c * TILE_N + i]), acc[i][j]);         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    for (int j = 0; j < MB; j++)                                                                          \
        store4(y + (m0 + j) * p->ldy, hsum4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]), rows);           \
}

// A Q8_0 weight tile's per-chunk terms, computed once for all rows of x: -128 * sum(w) per 4 bytes (the
// activations' +128 offset) and the scale vectors.
static inline void q8_0_prepare(const int8_t *wp, const float *sp, int64_t chunks, __m512i *neg, __m512 *wsc) {
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    for (int64_t t = 0; t < chunks * TILE_N; t++) {
        const __m512i w = _mm512_loadu_si512(wp + t * CHUNK);
        neg[t] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, w));
        wsc[t] = pair_scales(sp + t * 2);
    }
}

DEFINE_ROWS_TILE(4) DEFINE_ROWS_TILE(3) DEFINE_ROWS_TILE(2) DEFINE_ROWS_TILE(1)
DEFINE_Q8_0_TILE(4) DEFINE_Q8_0_TILE(3) DEFINE_Q8_0_TILE(2) DEFINE_Q8_0_TILE(1)

// All rows of x against one weight tile, 4 at a time. q8_0: which of the two products.
static inline void tile_column(const Product *p, int q8_0, const void *wp, const float *sp, int64_t m0,
                               int64_t rows, float *y, int n) {
    int64_t m = m0;
    if (q8_0) {
        const int64_t chunks = p->K / CHUNK;
        __m512i neg[chunks * TILE_N];
        __m512 wsc[chunks * TILE_N];
        q8_0_prepare(wp, sp, chunks, neg, wsc);
        for (; m + 4 <= m0 + rows; m += 4) q8_0_tile_4(p, wp, neg, wsc, m, y, n);
        switch (m0 + rows - m) {
        case 3: q8_0_tile_3(p, wp, neg, wsc, m, y, n); break;
        case 2: q8_0_tile_2(p, wp, neg, wsc, m, y, n); break;
        case 1: q8_0_tile_1(p, wp, neg, wsc, m, y, n); break;
        }
    } else {
        for (; m + 4 <= m0 + rows; m += 4) rows_tile_4(p, wp, sp, m, y, n);
        switch (m0 + rows - m) {
        case 3: rows_tile_3(p, wp, sp, m, y, n); break;
        case 2: rows_tile_2(p, wp, sp, m, y, n); break;
        case 1: rows_tile_1(p, wp, sp, m, y, n); break;
        }
    }
}

#include "matmul.c"
#include "decode.c"
