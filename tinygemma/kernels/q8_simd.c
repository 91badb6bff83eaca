// The kernels of q8_avx512.c for the other SIMD instruction sets, chosen at build time (kernels/__init__.py):
//   -DTG_AVX2     x86-64 AVX2 + FMA: signed products by VPMADDUBSW with the sign trick (as llama.cpp's AVX2 path)
//   -DTG_AVXVNNI  x86-64 AVX2 + AVX-VNNI: VPDPBUSD on 256-bit vectors (Alder Lake and later, Zen 5)
//   -DTG_NEON     ARM64 with the dot-product extension: SDOT; with -DTG_I8MM also USDOT (uint8 x int8)
// Same API, same packed weight layout and same activation formats as the AVX-512 build (see q8_ref.c, the
// scalar reference). The float parts are written once with GCC/clang vector extensions; only the int8 dot
// products are instruction-set specific. Integer dot products are exact on every build; a VNNI-style build
// (unsigned weights, the +128 offset removed once per output with xc) and a signed one agree to float rounding.

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
#define CPB (BLOCK / CHUNK)

#if defined(TG_AVX2) || defined(TG_AVXVNNI)
#include <immintrin.h>
#define LANES 8
#elif defined(TG_NEON)
#include <arm_neon.h>
#define LANES 4
#else
#error "q8_simd.c: define TG_AVX2, TG_AVXVNNI or TG_NEON"
#endif

typedef float vf __attribute__((vector_size(LANES * 4)));
typedef int32_t vi __attribute__((vector_size(LANES * 4)));

// ------------------------------------------------------------------------------------ int8 dot products
// rows_prep / rows_dot: a 64-byte chunk of a layer's weights (uint8 = int8 + 128) against int8 activations,
// into LANES int32 lanes. ROWS_OFFSET: 1 if the products include the +128 offset (removed later with xc).
// q8_0_prep / q8_0_x / q8_0_block: a 32-byte Q8_0 block (int8 weights) against activations stored as
// uint8 = int8 + 128: the signed dot product in LANES int32 lanes.

#if defined(TG_AVX2) || defined(TG_AVXVNNI)
static inline __m256i ld(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
#define BIAS _mm256_set1_epi8((char)0x80)
#endif

#if defined(TG_AVX2)
#define ROWS_OFFSET 0
#define MB_MAX 2
// Signed bytes times signed bytes: |w| (unsigned) times x with w's sign, pairs summed in int16 (at most
// 2 * 128 * 127: no saturation), then pairs of those in int32. A tile's weights are expanded once for all rows
// of x (rows_expand: per 32 bytes, |w| then w), so the inner loop only loads them: fewer registers, no spills.
#define ROWS_EXPAND 2
static inline vi sdot(vi acc, __m256i abs, __m256i sgn, __m256i x) {
    const __m256i pairs = _mm256_maddubs_epi16(abs, _mm256_sign_epi8(x, sgn));
    return (vi)_mm256_add_epi32((__m256i)acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
static void rows_expand(const uint8_t *w, int64_t bytes, uint8_t *out) {
    for (int64_t o = 0; o < bytes; o += 32) {
        const __m256i s = _mm256_xor_si256(ld(w + o), BIAS);
        _mm256_storeu_si256((__m256i *)(out + 2 * o), _mm256_abs_epi8(s));
        _mm256_storeu_si256((__m256i *)(out + 2 * o + 32), s);
    }
}
typedef const uint8_t *RowsW;
static inline RowsW rows_prep(const uint8_t *w) { return w; }
static inline vi rows_dot(vi acc, const RowsW *w, const int8_t *x) {
    acc = sdot(acc, ld(*w), ld(*w + 32), ld(x));
    return sdot(acc, ld(*w + 64), ld(*w + 96), ld(x + 32));
}
// One row of x (decode): expanding would cost more than it saves; the weights are converted in registers.
typedef struct { __m256i abs[2], sgn[2]; } RowsW1;
static inline RowsW1 rows_prep1(const uint8_t *w) {
    RowsW1 r;
    for (int u = 0; u < 2; u++) {
        r.sgn[u] = _mm256_xor_si256(ld(w + 32 * u), BIAS);
        r.abs[u] = _mm256_abs_epi8(r.sgn[u]);
    }
    return r;
}
static inline vi rows_dot1(vi acc, const RowsW1 *w, const int8_t *x) {
    acc = sdot(acc, w->abs[0], w->sgn[0], ld(x));
    return sdot(acc, w->abs[1], w->sgn[1], ld(x + 32));
}
typedef struct { __m256i abs, sgn; } QW;
typedef __m256i QX;
static inline QW q8_0_prep(const int8_t *w) {
    const __m256i s = ld(w);
    return (QW){_mm256_abs_epi8(s), s};
}
static inline QX q8_0_x(const uint8_t *x) { return _mm256_xor_si256(ld(x), BIAS); }
static inline vi q8_0_block(const QW *w, QX x) { return sdot((vi){0}, w->abs, w->sgn, x); }

#elif defined(TG_AVXVNNI)
#define ROWS_OFFSET 1
#define MB_MAX 3
typedef struct { __m256i w[2]; } RowsW;
static inline RowsW rows_prep(const uint8_t *w) { return (RowsW){{ld(w), ld(w + 32)}}; }
static inline vi rows_dot(vi acc, const RowsW *w, const int8_t *x) {
    __m256i a = _mm256_dpbusd_avx_epi32((__m256i)acc, w->w[0], ld(x));
    return (vi)_mm256_dpbusd_avx_epi32(a, w->w[1], ld(x + 32));
}
// (x + 128) . w - 128 * sum(w): the offset's share starts the accumulator.
typedef struct { __m256i w, neg; } QW;
typedef __m256i QX;
static inline QW q8_0_prep(const int8_t *w) {
    const __m256i v = ld(w);
    return (QW){v, _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), BIAS, v))};
}
static inline QX q8_0_x(const uint8_t *x) { return ld(x); }
static inline vi q8_0_block(const QW *w, QX x) { return (vi)_mm256_dpbusd_avx_epi32(w->neg, x, w->w); }

#elif defined(TG_NEON)
#define MB_MAX 4
#if defined(TG_I8MM)
#define ROWS_OFFSET 1
typedef struct { uint8x16_t w[4]; } RowsW;
static inline RowsW rows_prep(const uint8_t *w) {
    return (RowsW){{vld1q_u8(w), vld1q_u8(w + 16), vld1q_u8(w + 32), vld1q_u8(w + 48)}};
}
static inline vi rows_dot(vi acc, const RowsW *w, const int8_t *x) {
    int32x4_t a = (int32x4_t)acc;
    for (int u = 0; u < 4; u++) a = vusdotq_s32(a, w->w[u], vld1q_s8(x + 16 * u));
    return (vi)a;
}
#else
#define ROWS_OFFSET 0
typedef struct { int8x16_t w[4]; } RowsW;
static inline RowsW rows_prep(const uint8_t *w) {
    RowsW r;
    for (int u = 0; u < 4; u++) r.w[u] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(w + 16 * u), vdupq_n_u8(0x80)));
    return r;
}
static inline vi rows_dot(vi acc, const RowsW *w, const int8_t *x) {
    int32x4_t a = (int32x4_t)acc;
    for (int u = 0; u < 4; u++) a = vdotq_s32(a, w->w[u], vld1q_s8(x + 16 * u));
    return (vi)a;
}
#endif
typedef struct { int8x16_t w[2]; } QW;
typedef struct { int8x16_t x[2]; } QX;
static inline QW q8_0_prep(const int8_t *w) { return (QW){{vld1q_s8(w), vld1q_s8(w + 16)}}; }
static inline QX q8_0_x(const uint8_t *x) {
    return (QX){{vreinterpretq_s8_u8(veorq_u8(vld1q_u8(x), vdupq_n_u8(0x80))),
                 vreinterpretq_s8_u8(veorq_u8(vld1q_u8(x + 16), vdupq_n_u8(0x80)))}};
}
static inline vi q8_0_block(const QW *w, QX x) {
    return (vi)vdotq_s32(vdotq_s32(vdupq_n_s32(0), w->w[0], x.x[0]), w->w[1], x.x[1]);
}
#endif

#ifndef ROWS_EXPAND
#define ROWS_EXPAND 1     // weights used as packed
#endif

// ------------------------------------------------------------------------------------ float vector helpers

static inline vf loadf(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void storef(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf splat(float s) { return (vf){0} + s; }
static inline float hsum(vf v) {
    float s = 0.0f;
    for (int l = 0; l < LANES; l++) s += v[l];
    return s;
}
static inline vf vabs(vf v) { return (vf)((vi)v & 0x7fffffff); }
static inline vf vmax(vf a, vf b) {
    const vi m = a > b;
    return (vf)(((vi)a & m) | ((vi)b & ~m));
}
static inline float hmax(vf v) {
    float s = v[0];
    for (int l = 1; l < LANES; l++) s = v[l] > s ? v[l] : s;
    return s;
}
// Round to the nearest integer, ties to even (as the default rounding mode), for |v| < 2^22.
static inline vi round_even(vf v) {
    const vf magic = splat(12582912.0f);     // 1.5 * 2^23
    return __builtin_convertvector((v + magic) - magic, vi);
}

static float rms_factor(const float *row, int64_t K, float eps) {
    vf acc = {0};
    int64_t k = 0;
    for (; k + LANES <= K; k += LANES) {
        const vf v = loadf(row + k);
        acc += v * v;
    }
    float ss = hsum(acc);
    for (; k < K; k++) ss += row[k] * row[k];
    return 1.0f / sqrtf(ss / (float)K + eps);
}

// exp(x) for |x| <= 88 as in q8_avx512.c: 2^n * p(r), r = x - n ln2, p the degree-6 Taylor polynomial.
static inline vf vexp(vf x) {
    x = vmax(x, splat(-88.0f));
    x = -vmax(-x, splat(-88.0f));
    const vi n = round_even(x * 1.44269504f);
    const vf nf = __builtin_convertvector(n, vf);
    vf r = x - nf * 0.693145752f;
    r = r - nf * 1.42860677e-6f;
    vf p = splat(1.0f / 720);
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * (vf)((n + 127) << 23);
}

static inline vf gelu_mul(vf g, vf u) {
    const vf inner = 0.7978845608f * (0.044715f * g * (g * g) + g);
    const vf e = vexp(inner + inner);
    const vf t = 1.0f - 2.0f / (e + 1.0f);       // tanh(a) = 1 - 2 / (exp(2a) + 1)
    return 0.5f * g * (t + 1.0f) * u;
}

// ------------------------------------------------------------------------------------ elementwise kernels

static void quantize_row(const float *row, int64_t K, uint8_t *xq, float *xs) {
    for (int64_t b = 0; b < K / 32; b++) {
        vf v[32 / LANES], amax = {0};
        for (int u = 0; u < 32 / LANES; u++) {
            v[u] = loadf(row + b * 32 + u * LANES);
            amax = vmax(amax, vabs(v[u]));
        }
        const float d = hmax(amax) / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
        for (int u = 0; u < 32 / LANES; u++) {
            const vi q = round_even(v[u] * inv) + 128;
            for (int l = 0; l < LANES; l++) xq[b * 32 + u * LANES + l] = (uint8_t)q[l];
        }
        for (int l = 0; l < 8; l++) xs[(b / 2) * 16 + (b % 2) * 8 + l] = d;
    }
}

void TG(quantize)(const float *x, int64_t M, int64_t K, uint8_t *xq, float *xs) {
#pragma omp parallel for schedule(static) if (M >= 16)
    for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, xq + m * K, xs + m * (K / CHUNK) * 16);
}

void TG(rmsnorm)(const float *x, int64_t M, int64_t K, const float *gain, float eps, int add, float *out) {
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * K;
        float *o = out + m * K;
        const float f = rms_factor(row, K, eps);
        int64_t k = 0;
        for (; k + LANES <= K; k += LANES) {
            vf v = loadf(row + k) * f * loadf(gain + k);
            if (add) v += loadf(o + k);
            storef(o + k, v);
        }
        for (; k < K; k++) o[k] = (add ? o[k] : 0.0f) + row[k] * f * gain[k];
    }
}

static void attend_head(const float *qr, const float *kb, const float *vb, const int64_t *kp, int64_t S,
                        int64_t ss, int64_t D, int64_t p, int64_t window, float scale, float *o) {
    float best = -INFINITY, total = 0.0f;
    float scores[S > 0 ? S : 1];
    for (int64_t s = 0; s < S; s++) {
        if (!(kp[s] >= 0 && kp[s] <= p && (window <= 0 || p - kp[s] < window))) { scores[s] = -INFINITY; continue; }
        const float *kr = kb + s * ss;
        vf acc = {0};
        int64_t d = 0;
        for (; d + LANES <= D; d += LANES) acc += loadf(qr + d) * loadf(kr + d);
        float dot = hsum(acc);
        for (; d < D; d++) dot += qr[d] * kr[d];
        scores[s] = dot * scale;
        if (scores[s] > best) best = scores[s];
    }
    for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
    if (best == -INFINITY) return;
    for (int64_t s = 0; s < S; s++) {
        if (scores[s] == -INFINITY) continue;
        const float w = expf(scores[s] - best);
        const float *vr = vb + s * ss;
        total += w;
        int64_t d = 0;
        for (; d + LANES <= D; d += LANES) storef(o + d, loadf(o + d) + w * loadf(vr + d));
        for (; d < D; d++) o[d] += w * vr[d];
    }
    for (int64_t d = 0; d < D; d++) o[d] /= total;
}

#include "attention.c"

static void quantize_row_s8(const float *row, int64_t K, float norm, const float *gain, int8_t *xq, float *xs,
                            float *xc) {
    float comp = 0.0f;
    for (int64_t b = 0; b < K / BLOCK; b++) {
        vf v[BLOCK / LANES], amax = {0};
        for (int u = 0; u < BLOCK / LANES; u++) {
            const int64_t k = b * BLOCK + u * LANES;
            v[u] = loadf(row + k) * norm;
            if (gain) v[u] = v[u] * loadf(gain + k);
            amax = vmax(amax, vabs(v[u]));
        }
        const float d = hmax(amax) / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
        vi sum = {0};
        for (int u = 0; u < BLOCK / LANES; u++) {
            const vi q = round_even(v[u] * inv);
            sum += q;
            for (int l = 0; l < LANES; l++) xq[b * BLOCK + u * LANES + l] = (int8_t)q[l];
        }
        int32_t total = 0;
        for (int l = 0; l < LANES; l++) total += sum[l];
        xs[b] = d;
        comp += d * (float)total;
    }
    *xc = 128.0f * comp;
}

void TG(quantize_rows)(const float *x, int64_t M, int64_t K, const float *gain, float eps, int8_t *xq, float *xs,
                       float *xc) {
#pragma omp parallel for schedule(static) if (M >= 16)
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * K;
        quantize_row_s8(row, K, gain ? rms_factor(row, K, eps) : 1.0f, gain, xq + m * K, xs + m * (K / BLOCK),
                        xc + m);
    }
}

void TG(quantize_geglu)(const float *gu, int64_t M, int64_t I, float *tmp, int8_t *xq, float *xs, float *xc) {
#pragma omp parallel for schedule(static) if (M >= 16)
    for (int64_t m = 0; m < M; m++) {
        const float *g = gu + m * 2 * I, *u = g + I;
        float *t = tmp + m * I;
        for (int64_t k = 0; k < I; k += LANES) storef(t + k, gelu_mul(loadf(g + k), loadf(u + k)));
        quantize_row_s8(t, I, 1.0f, 0, xq + m * I, xs + m * (I / BLOCK), xc + m);
    }
}

// ------------------------------------------------------------------------------------ matrix products

typedef struct {
    const void *xq;         // activations: int8 (layers) or uint8 (Q8_0)
    const float *xs, *xc;   // their scales (and, for layers, offset corrections)
    int64_t K, ldy;
    float *y;
} Product;

// Layers: a tile of 4 rows of W with one scale each (sp) against rows m0..m0+MB of x.
#define DEFINE_ROWS_TILE(MB, NAME, W, PREP, DOT, EXPAND)                                                                            \
static inline void NAME(const Product *p, const uint8_t *wp, const float *sp, int64_t m0,       \
                                  float *y, int rows) {                                                   \
    const int8_t *xq = (const int8_t *)p->xq;                                                             \
    const int64_t K = p->K, blocks = K / BLOCK;                                                           \
    vf acc[TILE_N][MB];                                                                                   \
    for (int i = 0; i < TILE_N; i++)                                                                      \
        for (int j = 0; j < MB; j++) acc[i][j] = (vf){0};                                                 \
    for (int64_t b = 0; b < blocks; b++) {                                                                \
        for (int i = 0; i < TILE_N; i++) {                                                                \
            vi d[MB];                                                                                     \
            for (int j = 0; j < MB; j++) d[j] = (vi){0};                                                  \
            for (int u = 0; u < CPB; u++) {                                                               \
                const W w = PREP(wp + ((b * CPB + u) * TILE_N + i) * CHUNK * EXPAND);                  \
                for (int j = 0; j < MB; j++) d[j] = DOT(d[j], &w, xq + (m0 + j) * K + b * BLOCK + u * CHUNK); \
            }                                                                                             \
            for (int j = 0; j < MB; j++)                                                                  \
                acc[i][j] += __builtin_convertvector(d[j], vf) * p->xs[(m0 + j) * blocks + b];            \
        }                                                                                                 \
    }                                                                                                     \
    for (int j = 0; j < MB; j++)                                                                          \
        for (int i = 0; i < rows; i++) {                                                                  \
            float s = hsum(acc[i][j]);                                                                    \
            if (ROWS_OFFSET) s -= p->xc[m0 + j];                                                          \
            y[(m0 + j) * p->ldy + i] = sp[i] * s;                                                         \
        }                                                                                                 \
}

// Output projection: a tile of 4 rows of the Q8_0 table against rows m0..m0+MB of x, block by block.
#define DEFINE_Q8_0_TILE(MB)                                                                            \
static inline void q8_0_tile_##MB(const Product *p, const int8_t *wp, const float *sp, int64_t m0,        \
                                  float *y, int rows) {                                                   \
    const uint8_t *xq = (const uint8_t *)p->xq;                                                           \
    const int64_t K = p->K, chunks = K / CHUNK;                                                           \
    vf acc[TILE_N][MB];                                                                                   \
    for (int i = 0; i < TILE_N; i++)                                                                      \
        for (int j = 0; j < MB; j++) acc[i][j] = (vf){0};                                                 \
    for (int64_t c = 0; c < chunks; c++)                                                                  \
        for (int h = 0; h < 2; h++) {                                                                     \
            QX x[MB];                                                                                     \
            float xs[MB];                                                                                 \
            for (int j = 0; j < MB; j++) {                                                                \
                x[j] = q8_0_x(xq + (m0 + j) * K + c * CHUNK + 32 * h);                                     \
                xs[j] = p->xs[((m0 + j) * chunks + c) * 16 + 8 * h];                                       \
            }                                                                                             \
            for (int i = 0; i < TILE_N; i++) {                                                            \
                const QW w = q8_0_prep(wp + (c * TILE_N + i) * CHUNK + 32 * h);                           \
                const float ws = sp[(c * TILE_N + i) * 2 + h];                                            \
                for (int j = 0; j < MB; j++)                                                              \
                    acc[i][j] += __builtin_convertvector(q8_0_block(&w, x[j]), vf) * (xs[j] * ws);       \
            }                                                                                             \
        }                                                                                                 \
    for (int j = 0; j < MB; j++)                                                                          \
        for (int i = 0; i < rows; i++) y[(m0 + j) * p->ldy + i] = hsum(acc[i][j]);                        \
}

#define ROWS_TILE(MB) DEFINE_ROWS_TILE(MB, rows_tile_##MB, RowsW, rows_prep, rows_dot, ROWS_EXPAND)
ROWS_TILE(4) ROWS_TILE(3) ROWS_TILE(2) ROWS_TILE(1)
#if ROWS_EXPAND > 1
DEFINE_ROWS_TILE(1, rows_tile_direct, RowsW1, rows_prep1, rows_dot1, 1)
#endif
DEFINE_Q8_0_TILE(4) DEFINE_Q8_0_TILE(3) DEFINE_Q8_0_TILE(2) DEFINE_Q8_0_TILE(1)

// All rows of x against one weight tile, MB_MAX at a time.
static inline void tile_column(const Product *p, int q8_0, const void *wp, const float *sp, int64_t m0,
                               int64_t rows, float *y, int n) {
    int64_t m = m0;
    const int64_t end = m0 + rows;
    if (q8_0) {
        for (; m + MB_MAX <= end; m += MB_MAX) {
            if (MB_MAX == 4) q8_0_tile_4(p, wp, sp, m, y, n);
            else if (MB_MAX == 3) q8_0_tile_3(p, wp, sp, m, y, n);
            else q8_0_tile_2(p, wp, sp, m, y, n);
        }
        switch (end - m) {
        case 3: q8_0_tile_3(p, wp, sp, m, y, n); break;
        case 2: q8_0_tile_2(p, wp, sp, m, y, n); break;
        case 1: q8_0_tile_1(p, wp, sp, m, y, n); break;
        }
    } else {
#if ROWS_EXPAND > 1
        if (rows == 1) {
            rows_tile_direct(p, wp, sp, m, y, n);
            return;
        }
        uint8_t expanded[ROWS_EXPAND * TILE_N * p->K];
        rows_expand(wp, TILE_N * p->K, expanded);
        wp = expanded;
#endif
        for (; m + MB_MAX <= end; m += MB_MAX) {
            if (MB_MAX == 4) rows_tile_4(p, wp, sp, m, y, n);
            else if (MB_MAX == 3) rows_tile_3(p, wp, sp, m, y, n);
            else rows_tile_2(p, wp, sp, m, y, n);
        }
        switch (end - m) {
        case 3: rows_tile_3(p, wp, sp, m, y, n); break;
        case 2: rows_tile_2(p, wp, sp, m, y, n); break;
        case 1: rows_tile_1(p, wp, sp, m, y, n); break;
        }
    }
}

#include "matmul.c"
#include "decode.c"
