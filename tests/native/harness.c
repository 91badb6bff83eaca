// C test harness for one SIMD build of the kernels (q8_simd.c, exported as tg_*) against the portable scalar
// build (q8_ref.c, compiled with -D'TG(n)=ref_##n'), without Python: it runs where the kernels run, including
// an ARM64 build under qemu-user on an x86-64 machine (tests/test_native_harness.py builds and runs it).
// Integer results must be equal; float results within float rounding. Prints one line per failed check and
// "N passed, M failed" at the end; the exit status is non-zero if any check failed.

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 64

#define DECLARE(P)                                                                                      \
void P##quantize(const float *, int64_t, int64_t, uint8_t *, float *);                                  \
void P##quantize_rows(const float *, int64_t, int64_t, const float *, float, int8_t *, float *, float *); \
void P##quantize_geglu(const float *, int64_t, int64_t, float *, int8_t *, float *, float *);           \
void P##rmsnorm(const float *, int64_t, int64_t, const float *, float, int, float *);                   \
void P##attend(const float *, int64_t, int64_t, int64_t, int64_t, const float *, const float *, int64_t, \
               int64_t, int64_t, int64_t, const int64_t *, int64_t, const int64_t *, int64_t, float, float *); \
void P##attend_rows(const float *, const float *, const float *, const int64_t *, int64_t, int64_t, int64_t, \
                    int64_t, const int64_t *, const int64_t *, const int64_t *, const int64_t *, const int64_t *, \
                    const int64_t *, int64_t, float, float *);                                          \
void P##matmul_rows(const int8_t *, const float *, const float *, int64_t, int64_t, const uint8_t *,     \
                    const float *, int64_t, float *, int64_t);                                          \
void P##matmul_q8_0(const uint8_t *, const float *, int64_t, int64_t, const int8_t *, const float *,     \
                    int64_t, float *, int64_t);
DECLARE(tg_)
DECLARE(ref_)

static int passed, failed;

static void check(int ok, const char *what) {
    if (ok) passed++;
    else { failed++; printf("FAILED: %s\n", what); }
}

static uint64_t state = 88172645463325252ull;
static double uniform(void) {          // xorshift64: the same numbers on every machine
    state ^= state << 13; state ^= state >> 7; state ^= state << 17;
    return (double)(state >> 11) / 9007199254740992.0;
}
static float normal(void) { return (float)(sqrt(-2 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform())); }
static int irand(int lo, int hi) { return lo + (int)(uniform() * (hi - lo + 1)); }

static void *alloc(size_t n) { void *p = calloc(n ? n : 1, 1); if (!p) abort(); return p; }

// Pack W (N, K) row-major into the kernels' tiles: uint8 (+128) for layers, int8 for Q8_0.
static int64_t padded(int64_t n) { return (n + 3) / 4 * 4; }
static int64_t tile_index(int64_t K, int64_t n, int64_t k) {
    return n / 4 * 4 * K + ((k / 64) * 4 + n % 4) * 64 + k % 64;
}
static void pack(const int8_t *w, int64_t N, int64_t K, int offset, uint8_t *out) {
    memset(out, offset ? 128 : 0, padded(N) * K);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) out[tile_index(K, n, k)] = (uint8_t)(w[n * K + k] + (offset ? 128 : 0));
}
static void pack_q8_0_scales(const float *s, int64_t N, int64_t K, float *out) {    // s (N, K/32)
    memset(out, 0, padded(N) * (K / 32) * sizeof(float));
    for (int64_t n = 0; n < N; n++)
        for (int64_t b = 0; b < K / 32; b++) out[n / 4 * 4 * (K / 32) + ((b / 2) * 4 + n % 4) * 2 + b % 2] = s[n * (K / 32) + b];
}

static float max_abs(const float *a, int64_t n) {
    float m = 0;
    for (int64_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i]));
    return m;
}
static int close_to(const float *a, const float *b, int64_t n, float tol) {
    for (int64_t i = 0; i < n; i++)
        if (!(fabsf(a[i] - b[i]) <= tol)) return 0;
    return 1;
}

static void test_quantizers(void) {
    const int64_t M = 7, K = 640, I = 2048;
    float *x = alloc(M * K * 4), *gain = alloc(K * 4), *gu = alloc(M * 2 * I * 4), *tmp = alloc(M * I * 4);
    for (int64_t i = 0; i < M * K; i++) x[i] = normal() * powf(10.0f, -2.0f + 4.0f * (i % K) / K);
    for (int64_t k = 0; k < K; k++) gain[k] = 0.5f + (float)uniform();
    for (int64_t i = 0; i < M * 2 * I; i++) gu[i] = 3 * normal();
    uint8_t *u1 = alloc(M * K), *u2 = alloc(M * K);
    float *s1 = alloc(M * K / 64 * 16 * 4), *s2 = alloc(M * K / 64 * 16 * 4);
    tg_quantize(x, M, K, u1, s1);
    ref_quantize(x, M, K, u2, s2);
    check(!memcmp(u1, u2, M * K) && !memcmp(s1, s2, M * K / 64 * 16 * 4), "quantize: equal to the scalar build");
    int8_t *q1 = alloc(M * I), *q2 = alloc(M * I);
    float *c1 = alloc(M * 4), *c2 = alloc(M * 4);
    tg_quantize_rows(x, M, K, 0, 0, q1, s1, c1);
    ref_quantize_rows(x, M, K, 0, 0, q2, s2, c2);
    check(!memcmp(q1, q2, M * K) && !memcmp(s1, s2, M * K / BLOCK * 4), "quantize_rows: equal to the scalar build");
    int ok = 1;
    for (int m = 0; m < M; m++) ok &= fabsf(c1[m] - c2[m]) <= 1e-5f * fabsf(c2[m]) + 1e-3f;
    check(ok, "quantize_rows: offset corrections");
    tg_quantize_rows(x, M, K, gain, 1e-6f, q1, s1, c1);
    ref_quantize_rows(x, M, K, gain, 1e-6f, q2, s2, c2);
    ok = 1;
    for (int64_t i = 0; i < M * K; i++) ok &= abs(q1[i] - q2[i]) <= 1;
    for (int64_t i = 0; i < M * K / BLOCK; i++) ok &= fabsf(s1[i] - s2[i]) <= 1e-5f * s2[i];
    check(ok, "quantize_rows with RMS norm: within one step of the scalar build");
    tg_quantize_geglu(gu, M, I, tmp, q1, s1, c1);
    ref_quantize_geglu(gu, M, I, tmp, q2, s2, c2);
    ok = 1;
    for (int64_t i = 0; i < M * I; i++) ok &= abs(q1[i] - q2[i]) <= 1;
    for (int64_t i = 0; i < M * I / BLOCK; i++) ok &= fabsf(s1[i] - s2[i]) <= 1e-5f * s2[i];
    check(ok, "quantize_geglu: within one step of the scalar build");
    free(x); free(gain); free(gu); free(tmp); free(u1); free(u2); free(s1); free(s2); free(q1); free(q2);
    free(c1); free(c2);
}

// Power-of-two scales and K = 128 keep every float step exact: the builds must agree bit for bit with each
// other and with the exact integer result.
static void test_exact_products(int64_t M, int64_t N) {
    const int64_t K = 128;
    int8_t *w = alloc(N * K), *x = alloc(M * K);
    for (int64_t i = 0; i < N * K; i++) w[i] = (int8_t)irand(-127, 127);
    for (int64_t i = 0; i < M * K; i++) x[i] = (int8_t)irand(-127, 127);
    for (int64_t k = 0; k < K; k++) { w[k] = 127; x[k] = -127; w[(N - 1) * K + k] = -127; }
    float *ws = alloc(padded(N) * 4), *xs = alloc(M * K / BLOCK * 4), *xc = alloc(M * 4);
    for (int64_t n = 0; n < N; n++) ws[n] = irand(0, 1) ? 1.0f : 0.5f;
    for (int64_t i = 0; i < M * K / BLOCK; i++) xs[i] = irand(0, 1) ? 1.0f : 0.5f;
    double *exact = alloc(M * N * 8);
    for (int64_t m = 0; m < M; m++) {
        double comp = 0;
        for (int64_t b = 0; b < K / BLOCK; b++) {
            int64_t sum = 0;
            for (int64_t k = b * BLOCK; k < (b + 1) * BLOCK; k++) sum += x[m * K + k];
            comp += xs[m * K / BLOCK + b] * (double)sum;
        }
        xc[m] = (float)(128 * comp);
        for (int64_t n = 0; n < N; n++) {
            double acc = 0;
            for (int64_t b = 0; b < K / BLOCK; b++) {
                int64_t dot = 0;
                for (int64_t k = b * BLOCK; k < (b + 1) * BLOCK; k++) dot += (int64_t)w[n * K + k] * x[m * K + k];
                acc += xs[m * K / BLOCK + b] * (double)dot;
            }
            exact[m * N + n] = ws[n] * acc;
        }
    }
    uint8_t *wp = alloc(padded(N) * K);
    float *y1 = alloc(M * N * 4), *y2 = alloc(M * N * 4);
    pack(w, N, K, 1, wp);
    tg_matmul_rows(x, xs, xc, M, K, wp, ws, N, y1, N);
    ref_matmul_rows(x, xs, xc, M, K, wp, ws, N, y2, N);
    int ok = !memcmp(y1, y2, M * N * 4);
    for (int64_t i = 0; i < M * N; i++) ok &= (double)y1[i] == exact[i];
    char what[120];
    snprintf(what, sizeof what, "matmul_rows M=%lld N=%lld: exact integer result", (long long)M, (long long)N);
    check(ok, what);
    // Q8_0: weights with one scale per 32, activations uint8 (+128) with lane scales.
    float *wsq = alloc(N * K / 32 * 4), *wsp = alloc(padded(N) * K / 32 * 4), *lanes = alloc(M * K / 64 * 16 * 4);
    uint8_t *xu = alloc(M * K);
    float *xb = alloc(M * K / 32 * 4);
    for (int64_t i = 0; i < N * K / 32; i++) wsq[i] = irand(0, 1) ? 1.0f : 0.5f;
    for (int64_t i = 0; i < M * K / 32; i++) xb[i] = irand(0, 1) ? 1.0f : 0.5f;
    for (int64_t m = 0; m < M; m++)
        for (int64_t c = 0; c < K / 64; c++)
            for (int l = 0; l < 16; l++) lanes[(m * K / 64 + c) * 16 + l] = xb[m * K / 32 + 2 * c + l / 8];
    for (int64_t i = 0; i < M * K; i++) xu[i] = (uint8_t)(x[i] + 128);
    pack(w, N, K, 0, wp);
    pack_q8_0_scales(wsq, N, K, wsp);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = 0;
            for (int64_t b = 0; b < K / 32; b++) {
                int64_t dot = 0;
                for (int64_t k = b * 32; k < (b + 1) * 32; k++) dot += (int64_t)w[n * K + k] * x[m * K + k];
                acc += (double)dot * xb[m * K / 32 + b] * wsq[n * K / 32 + b];
            }
            exact[m * N + n] = acc;
        }
    tg_matmul_q8_0(xu, lanes, M, K, (int8_t *)wp, wsp, N, y1, N);
    ref_matmul_q8_0(xu, lanes, M, K, (int8_t *)wp, wsp, N, y2, N);
    ok = !memcmp(y1, y2, M * N * 4);
    for (int64_t i = 0; i < M * N; i++) ok &= (double)y1[i] == exact[i];
    snprintf(what, sizeof what, "matmul_q8_0 M=%lld N=%lld: exact integer result", (long long)M, (long long)N);
    check(ok, what);
    free(w); free(x); free(ws); free(xs); free(xc); free(exact); free(wp); free(y1); free(y2); free(wsq);
    free(wsp); free(lanes); free(xu); free(xb);
}

// Real quantized activations: close to the scalar build, and each row's result independent of the batch.
static void test_products_and_batches(void) {
    const int64_t M = 9, K = 640, N = 301;
    float *x = alloc(M * K * 4), *wf = alloc(N * K * 4);
    for (int64_t i = 0; i < M * K; i++) x[i] = normal();
    for (int64_t i = 0; i < N * K; i++) wf[i] = normal();
    int8_t *w = alloc(N * K), *xq = alloc(M * K);
    float *ws = alloc(padded(N) * 4), *xs = alloc(M * K / BLOCK * 4), *xc = alloc(M * 4);
    for (int64_t n = 0; n < N; n++) {
        ws[n] = max_abs(wf + n * K, K) / 127;
        for (int64_t k = 0; k < K; k++) w[n * K + k] = (int8_t)lrintf(wf[n * K + k] / ws[n]);
    }
    ref_quantize_rows(x, M, K, 0, 0, xq, xs, xc);
    uint8_t *wp = alloc(padded(N) * K);
    pack(w, N, K, 1, wp);
    float *y1 = alloc(M * N * 4), *y2 = alloc(M * N * 4), *one = alloc(N * 4);
    tg_matmul_rows(xq, xs, xc, M, K, wp, ws, N, y1, N);
    ref_matmul_rows(xq, xs, xc, M, K, wp, ws, N, y2, N);
    check(close_to(y1, y2, M * N, 1e-5f * max_abs(y2, M * N)), "matmul_rows: close to the scalar build");
    int same = 1;
    for (int64_t m = 0; m < M; m++) {
        tg_matmul_rows(xq + m * K, xs + m * K / BLOCK, xc + m, 1, K, wp, ws, N, one, N);
        same &= !memcmp(one, y1 + m * N, N * 4);
    }
    check(same, "matmul_rows: a row alone equals the row in a batch, bit for bit");
    uint8_t *xu = alloc(M * K);
    float *lanes = alloc(M * K / 64 * 16 * 4), *wsq = alloc(N * K / 32 * 4), *wsp = alloc(padded(N) * K / 32 * 4);
    for (int64_t n = 0; n < N; n++)
        for (int64_t b = 0; b < K / 32; b++) {
            float s = max_abs(wf + n * K + b * 32, 32) / 127;
            wsq[n * K / 32 + b] = s;
            for (int64_t k = b * 32; k < (b + 1) * 32; k++) w[n * K + k] = (int8_t)lrintf(s > 0 ? wf[n * K + k] / s : 0);
        }
    pack(w, N, K, 0, wp);
    pack_q8_0_scales(wsq, N, K, wsp);
    ref_quantize(x, M, K, xu, lanes);
    tg_matmul_q8_0(xu, lanes, M, K, (int8_t *)wp, wsp, N, y1, N);
    ref_matmul_q8_0(xu, lanes, M, K, (int8_t *)wp, wsp, N, y2, N);
    check(close_to(y1, y2, M * N, 1e-5f * max_abs(y2, M * N)), "matmul_q8_0: close to the scalar build");
    same = 1;
    for (int64_t m = 0; m < M; m++) {
        tg_matmul_q8_0(xu + m * K, lanes + m * K / 64 * 16, 1, K, (int8_t *)wp, wsp, N, one, N);
        same &= !memcmp(one, y1 + m * N, N * 4);
    }
    check(same, "matmul_q8_0: a row alone equals the row in a batch, bit for bit");
    free(x); free(wf); free(w); free(xq); free(ws); free(xs); free(xc); free(wp); free(y1); free(y2); free(one);
    free(xu); free(lanes); free(wsq); free(wsp);
}

static void test_float_kernels(void) {
    const int64_t M = 4, K = 644;     // not a multiple of the vector width: the tails too
    float *x = alloc(M * K * 4), *gain = alloc(K * 4), *o1 = alloc(M * K * 4), *o2 = alloc(M * K * 4);
    for (int64_t i = 0; i < M * K; i++) x[i] = 5 * normal();
    for (int64_t k = 0; k < K; k++) gain[k] = (float)uniform();
    tg_rmsnorm(x, M, K, gain, 1e-6f, 0, o1);
    ref_rmsnorm(x, M, K, gain, 1e-6f, 0, o2);
    check(close_to(o1, o2, M * K, 1e-5f), "rmsnorm: close to the scalar build");
    for (int64_t i = 0; i < M * K; i++) o1[i] = o2[i] = (float)i / K;
    tg_rmsnorm(x, M, K, gain, 1e-6f, 1, o1);
    ref_rmsnorm(x, M, K, gain, 1e-6f, 1, o2);
    check(close_to(o1, o2, M * K, 1e-4f), "rmsnorm with the residual add: close to the scalar build");
    // Attention: 2 sequences, 4 query heads on 1 key/value head, head size 256, a window of 16.
    const int64_t B = 2, H = 4, Hkv = 1, S = 40, D = 256;
    float *q = alloc(B * H * D * 4), *k = alloc(B * Hkv * S * D * 4), *v = alloc(B * Hkv * S * D * 4);
    float *a1 = alloc(B * H * D * 4), *a2 = alloc(B * H * D * 4);
    int64_t *kpos = alloc(B * S * 8), qpos[2] = {S - 1, 20};
    for (int64_t i = 0; i < B * H * D; i++) q[i] = normal();
    for (int64_t i = 0; i < B * Hkv * S * D; i++) { k[i] = normal(); v[i] = normal(); }
    for (int64_t i = 0; i < B * S; i++) kpos[i] = i % S;
    tg_attend(q, B, H, Hkv, D, k, v, S, Hkv * S * D, S * D, D, kpos, S, qpos, 16, 0.0625f, a1);
    ref_attend(q, B, H, Hkv, D, k, v, S, Hkv * S * D, S * D, D, kpos, S, qpos, 16, 0.0625f, a2);
    check(close_to(a1, a2, B * H * D, 1e-5f), "attend: close to the scalar build");
    // attend_rows: each row's new key/value written into its own cache, then attention over it.
    float *kc1 = alloc(B * S * D * 4), *vc1 = alloc(B * S * D * 4), *kc2 = alloc(B * S * D * 4), *vc2 = alloc(B * S * D * 4);
    int64_t *pc1 = alloc(B * S * 8), *pc2 = alloc(B * S * 8);
    memcpy(kc1, k, B * S * D * 4); memcpy(vc1, v, B * S * D * 4); memcpy(kc2, k, B * S * D * 4);
    memcpy(vc2, v, B * S * D * 4); memcpy(pc1, kpos, B * S * 8); memcpy(pc2, kpos, B * S * 8);
    int64_t tab1[3][2], tab2[3][2], slot[2] = {S - 1, 5}, len[2] = {S, 30}, sh[2] = {S * D, S * D}, rq[2] = {S - 1, 29};
    for (int b = 0; b < 2; b++) {
        tab1[0][b] = (int64_t)(kc1 + b * S * D); tab1[1][b] = (int64_t)(vc1 + b * S * D); tab1[2][b] = (int64_t)(pc1 + b * S);
        tab2[0][b] = (int64_t)(kc2 + b * S * D); tab2[1][b] = (int64_t)(vc2 + b * S * D); tab2[2][b] = (int64_t)(pc2 + b * S);
    }
    tg_attend_rows(q, k, v, rq, B, H, Hkv, D, tab1[0], tab1[1], tab1[2], slot, len, sh, 0, 0.0625f, a1);
    ref_attend_rows(q, k, v, rq, B, H, Hkv, D, tab2[0], tab2[1], tab2[2], slot, len, sh, 0, 0.0625f, a2);
    check(close_to(a1, a2, B * H * D, 1e-5f) && !memcmp(kc1, kc2, B * S * D * 4) && !memcmp(vc1, vc2, B * S * D * 4)
          && !memcmp(pc1, pc2, B * S * 8), "attend_rows: same caches, output close to the scalar build");
    free(x); free(gain); free(o1); free(o2); free(q); free(k); free(v); free(a1); free(a2); free(kpos);
    free(kc1); free(vc1); free(kc2); free(vc2); free(pc1); free(pc2);
}

int main(void) {
    test_quantizers();
    for (int64_t m = 1; m <= 9; m += 4)
        for (int64_t n = 4; n <= 67; n += 21) test_exact_products(m, n);
    test_products_and_batches();
    test_float_kernels();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
