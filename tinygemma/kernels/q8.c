// int8 x int8 matrix products for the fast CPU path (AVX-512 VNNI), called through ctypes.
//
// Activations are quantized per block of 32 values (scale = absmax / 127, as llama.cpp's Q8_0) and stored
// offset by 128 as uint8, so VPDPBUSD (uint8 x int8) multiplies them with int8 weights; the offset's
// contribution, 128 * sum(w), is subtracted by starting each block's accumulator at -128 * sum(w).
// A 64-byte chunk holds two blocks: lanes 0-7 of the int32 accumulator belong to the first, 8-15 to the
// second, so each chunk's sums are scaled by a 16-float vector (8 copies of each block's scale).
//
// Weights: int8, packed in tiles of 4 rows whose 64-byte chunks interleave (row 0 chunk 0, row 1 chunk 0,
// ..., row 3 chunk 0, row 0 chunk 1, ...): one sequential stream, which the hardware prefetcher follows
// (4 separate row streams reach only ~60% of the memory bandwidth). Scales: one float per row (layers), or
// one per 32 values (Q8_0: the embedding table as output projection), packed the same way.
// y (M, N) float32 = x @ W.T.

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define CHUNK 64
#define TILE_N 4

static inline float rms_factor(const float *row, int64_t K, float eps) {
    __m512 ss = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        __mmask16 m = K - k >= 16 ? 0xFFFF : (__mmask16)((1u << (K - k)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, row + k);
        ss = _mm512_fmadd_ps(v, v, ss);
    }
    return 1.0f / sqrtf(_mm512_reduce_add_ps(ss) / (float)K + eps);
}

// One row of K values (K % 64 == 0) -> uint8 + lane scales, each value first multiplied by `norm` and by
// gain[k] when gain is not NULL.
static void quantize_row(const float *row, int64_t K, float norm, const float *gain, uint8_t *xq, float *xs) {
    for (int64_t c = 0; c < K / CHUNK; c++) {
        for (int half = 0; half < 2; half++) {
            int64_t k0 = c * CHUNK + half * 32;
            __m512 v0 = _mm512_mul_ps(_mm512_loadu_ps(row + k0), _mm512_set1_ps(norm));
            __m512 v1 = _mm512_mul_ps(_mm512_loadu_ps(row + k0 + 16), _mm512_set1_ps(norm));
            if (gain) {
                v0 = _mm512_mul_ps(v0, _mm512_loadu_ps(gain + k0));
                v1 = _mm512_mul_ps(v1, _mm512_loadu_ps(gain + k0 + 16));
            }
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

// x (M, K) float32 -> xq (M, K) uint8 and xs (M, K / 64, 16) float32 lane scales. K % 64 == 0.
// With `gain` (K floats) not NULL, rows are first RMS-normalized: x / rms(x) * gain.
void tg_quantize(const float *x, int64_t M, int64_t K, const float *gain, float eps, uint8_t *xq, float *xs) {
#pragma omp parallel for schedule(static) if (M >= 16)
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * K;
        quantize_row(row, K, gain ? rms_factor(row, K, eps) : 1.0f, gain, xq + m * K, xs + m * (K / CHUNK) * 16);
    }
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

// gu (M, 2I): gate in the first I columns, up in the last I. Quantizes gelu(gate) * up (I % 64 == 0);
// tmp: M * I floats of scratch.
void tg_quantize_geglu(const float *gu, int64_t M, int64_t I, float *tmp, uint8_t *xq, float *xs) {
#pragma omp parallel for schedule(static) if (M >= 16)
    for (int64_t m = 0; m < M; m++) {
        const float *g = gu + m * 2 * I, *u = g + I;
        float *t = tmp + m * I;
        for (int64_t k = 0; k < I; k += 16)
            _mm512_storeu_ps(t + k, gelu_mul(_mm512_loadu_ps(g + k), _mm512_loadu_ps(u + k)));
        quantize_row(t, I, 1.0f, 0, xq + m * I, xs + m * (I / CHUNK) * 16);
    }
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

// Attention of one query per sequence: q (B, H, D) contiguous; k, v (B, Hkv, S, D) with the given strides
// (elements; D contiguous); kpos (B, S) key positions (-1: empty slot), qpos (B). A key is visible when
// 0 <= kpos <= qpos and, with window > 0, qpos - kpos < window. out (B, H, D); rows with no visible key
// are zero. Query head h uses K/V head h / (H / Hkv).
void tg_attend(const float *q, int64_t B, int64_t H, int64_t Hkv, int64_t D, const float *k, const float *v,
               int64_t S, int64_t sb, int64_t sh, int64_t ss, const int64_t *kpos, int64_t kpos_stride,
               const int64_t *qpos, int64_t window, float scale, float *out) {
#pragma omp parallel for schedule(static) if (B * H * S >= 4096)
    for (int64_t bh = 0; bh < B * H; bh++) {
        const int64_t b = bh / H, h = bh % H, g = h / (H / Hkv), p = qpos[b];
        const float *qr = q + bh * D;
        const float *kb = k + b * sb + g * sh, *vb = v + b * sb + g * sh;
        const int64_t *kp = kpos + b * kpos_stride;
        float *o = out + bh * D;
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
        if (best == -INFINITY) continue;
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
}

// Scale vector of one Q8_0 chunk: lanes 0-7 = s[0], 8-15 = s[1].
static inline __m512 pair_scales(const float *s) {
    return _mm512_insertf32x8(_mm512_set1_ps(s[0]), _mm256_set1_ps(s[1]), 1);
}

// One tile: the 4 rows of W in `wp` (packed: chunk c of rows 0..3 at wp + (4c + i) * 64) against rows
// m0..m0+MB of x. Row scales: `sp` holds the tile's 4 row scales, or (Q8_0) per chunk and row 2 scales.
#define DEFINE_TILE(MB)                                                                                 \
static inline void tile_##MB(const uint8_t *xq, const float *xs, int64_t K, const int8_t *wp,           \
                             const float *sp, int per_block, int64_t m0, float *y, int64_t ldy, int rows) { \
    __m512 acc[TILE_N][MB];                                                                               \
    for (int i = 0; i < TILE_N; i++)                                                                      \
        for (int j = 0; j < MB; j++) acc[i][j] = _mm512_setzero_ps();                                     \
    const __m512i bias = _mm512_set1_epi8((char)0x80);                                                    \
    const int64_t chunks = K / CHUNK;                                                                     \
    for (int64_t c = 0; c < chunks; c++) {                                                                \
        __m512i wv[TILE_N], neg[TILE_N];                                                                  \
        __m512 wsc[TILE_N];                                                                               \
        for (int i = 0; i < TILE_N; i++) {                                                                \
            wv[i] = _mm512_loadu_si512(wp + (c * TILE_N + i) * CHUNK);                                    \
            neg[i] = _mm512_sub_epi32(_mm512_setzero_si512(),                                            \
                                      _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, wv[i]));         \
            if (per_block) wsc[i] = pair_scales(sp + (c * TILE_N + i) * 2);                              \
        }                                                                                                 \
        for (int j = 0; j < MB; j++) {                                                                    \
            const __m512i a = _mm512_loadu_si512(xq + (m0 + j) * K + c * CHUNK);                          \
            const __m512 s = _mm512_loadu_ps(xs + ((m0 + j) * chunks + c) * 16);                          \
            for (int i = 0; i < TILE_N; i++) {                                                            \
                __m512 d = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(neg[i], a, wv[i]));                    \
                acc[i][j] = _mm512_fmadd_ps(d, per_block ? _mm512_mul_ps(s, wsc[i]) : s, acc[i][j]);      \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    for (int i = 0; i < rows; i++)                                                                        \
        for (int j = 0; j < MB; j++) {                                                                    \
            float v = _mm512_reduce_add_ps(acc[i][j]);                                                    \
            y[(m0 + j) * ldy + i] = per_block ? v : v * sp[i];                                            \
        }                                                                                                 \
}

DEFINE_TILE(4) DEFINE_TILE(3) DEFINE_TILE(2) DEFINE_TILE(1)

// y (M, N) with row stride ldy = x @ W.T, W packed by tg_pack (N rounded up to a multiple of 4).
// per_block: ws holds Q8_0 scales packed by tg_pack_scales, else one scale per (padded) row.
// Rows of x go in blocks of ROWS_PER_PASS, so a block's activations stay in L2 while the threads share W.
#define ROWS_PER_PASS 64
void tg_matmul(const uint8_t *xq, const float *xs, int64_t M, int64_t K, const int8_t *w, const float *ws,
               int per_block, int64_t N, float *y, int64_t ldy) {
    const int64_t tiles = (N + TILE_N - 1) / TILE_N, chunks = K / CHUNK;
    const int64_t scales_per_tile = per_block ? TILE_N * K / 32 : TILE_N;
    for (int64_t m0 = 0; m0 < M; m0 += ROWS_PER_PASS) {
        const int64_t rows = M - m0 < ROWS_PER_PASS ? M - m0 : ROWS_PER_PASS;
        const uint8_t *bq = xq + m0 * K;
        const float *bs = xs + m0 * chunks * 16;
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < tiles; t++) {
            const int8_t *wp = w + t * TILE_N * K;
            const float *sp = ws + t * scales_per_tile;
            float *by = y + m0 * ldy + t * TILE_N;
            const int n = N - t * TILE_N < TILE_N ? (int)(N - t * TILE_N) : TILE_N;
            int64_t m = 0;
            for (; m + 4 <= rows; m += 4) tile_4(bq, bs, K, wp, sp, per_block, m, by, ldy, n);
            switch (rows - m) {
            case 3: tile_3(bq, bs, K, wp, sp, per_block, m, by, ldy, n); break;
            case 2: tile_2(bq, bs, K, wp, sp, per_block, m, by, ldy, n); break;
            case 1: tile_1(bq, bs, K, wp, sp, per_block, m, by, ldy, n); break;
            }
        }
    }
}
