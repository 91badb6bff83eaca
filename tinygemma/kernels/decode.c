// One decoder block's decode step (one new token per sequence) in a single call: the same kernel calls, in the
// same order, as the fast model's modules make one by one (NormQuantize, NativeInt8Linear, FrozenRMSNorm,
// RoPE, attend_rows, ...), so the results are bit for bit those of the unfused path, without ~30 PyTorch ops
// and Python calls per block. Included at the end of every kernel build (q8_avx512.c, q8_simd.c, q8_ref.c).

#include <stdlib.h>

#ifndef TG
#define TG(name) tg_##name
#endif

// Where the layer's tensors are (ptrs, addresses as int64) and its sizes (dims).
enum { P_IN_GAIN, P_QKV_W, P_QKV_S, P_QNORM, P_KNORM, P_O_W, P_O_S, P_POST_ATTN, P_PRE_FFN, P_GU_W, P_GU_S,
       P_DOWN_W, P_DOWN_S, P_POST_FFN, P_COS, P_SIN, P_COUNT };
enum { D_HIDDEN, D_HEADS, D_KV_HEADS, D_HEAD_DIM, D_FFN, D_WINDOW, D_COUNT };

// NEOX rotation of the two halves of each head (as model.apply_rope: x * cos + rotate(x) * sin, each product
// rounded before the sum, as PyTorch computes it).
__attribute__((optimize("fp-contract=off")))
static void rope_rows(float *x, int64_t heads, int64_t D, int64_t stride, const float *cos, const float *sin) {
    const int64_t half = D / 2;
    for (int64_t h = 0; h < heads; h++) {
        float *r = x + h * stride;
        for (int64_t d = 0; d < half; d++) {
            const float a = r[d], b = r[d + half];
            const float lo = a * cos[d], lo_rot = -b * sin[d];
            const float hi = b * cos[d + half], hi_rot = a * sin[d + half];
            r[d] = lo + lo_rot;
            r[d + half] = hi + hi_rot;
        }
    }
}

// x (B, hidden) float32, updated in place: the residual stream after the block. Caches as for attend_rows.
// cos, sin: (B, head_dim) for this layer's RoPE base. scal: eps, attention scale. Returns 0, or -1 when out
// of memory (x untouched then).
int TG(decode_layer)(float *x, int64_t B, const int64_t *ptrs, const int64_t *dims, const float *scal,
                     const int64_t *kc, const int64_t *vc, const int64_t *pc, const int64_t *slot, const int64_t *S,
                     const int64_t *sh, const int64_t *qpos) {
    const int64_t hidden = dims[D_HIDDEN], H = dims[D_HEADS], Hkv = dims[D_KV_HEADS], D = dims[D_HEAD_DIM];
    const int64_t I = dims[D_FFN], window = dims[D_WINDOW];
    const int64_t nq = H * D, nkv = Hkv * D, nqkv = nq + 2 * nkv, widest = nqkv > 2 * I ? nqkv : 2 * I;
    const float eps = scal[0], scale = scal[1];
#define PTR(i, type) ((type)(intptr_t)ptrs[i])
    const int64_t kmax = hidden > nq ? (hidden > I ? hidden : I) : (nq > I ? nq : I);
    int8_t *xq = malloc(B * kmax);
    float *xs = malloc(B * (kmax / BLOCK) * sizeof(float)), *xc = malloc(B * sizeof(float));
    float *y = malloc(B * widest * sizeof(float)), *q = malloc(B * nq * sizeof(float));
    float *k = malloc(B * nkv * sizeof(float)), *v = malloc(B * nkv * sizeof(float));
    float *att = malloc(B * nq * sizeof(float)), *h = malloc(B * hidden * sizeof(float));
    float *tmp = malloc(B * I * sizeof(float));
    int status = 0;
    if (!xq || !xs || !xc || !y || !q || !k || !v || !att || !h || !tmp) {
        status = -1;
        goto done;
    }
    // Attention: norm + quantize, q/k/v, q/k norms, RoPE, cache write + attention, output projection.
    TG(quantize_rows)(x, B, hidden, PTR(P_IN_GAIN, const float *), eps, xq, xs, xc);
    TG(matmul_rows)(xq, xs, xc, B, hidden, PTR(P_QKV_W, const uint8_t *), PTR(P_QKV_S, const float *), nqkv, y, nqkv);
    for (int64_t b = 0; b < B; b++) {
        const float *row = y + b * nqkv;
        TG(rmsnorm)(row, H, D, PTR(P_QNORM, const float *), eps, 0, q + b * nq);
        TG(rmsnorm)(row + nq, Hkv, D, PTR(P_KNORM, const float *), eps, 0, k + b * nkv);
        for (int64_t i = 0; i < nkv; i++) v[b * nkv + i] = row[nq + nkv + i];
        rope_rows(q + b * nq, H, D, D, PTR(P_COS, const float *) + b * D, PTR(P_SIN, const float *) + b * D);
        rope_rows(k + b * nkv, Hkv, D, D, PTR(P_COS, const float *) + b * D, PTR(P_SIN, const float *) + b * D);
    }
    TG(attend_rows)(q, k, v, qpos, B, H, Hkv, D, kc, vc, pc, slot, S, sh, window, scale, att);
    TG(quantize_rows)(att, B, nq, 0, 0.0f, xq, xs, xc);
    TG(matmul_rows)(xq, xs, xc, B, nq, PTR(P_O_W, const uint8_t *), PTR(P_O_S, const float *), hidden, h, hidden);
    TG(rmsnorm)(h, B, hidden, PTR(P_POST_ATTN, const float *), eps, 1, x);
    // MLP: norm + quantize, gate/up, GELU(gate) * up quantized, down projection, post-norm into the residual.
    TG(quantize_rows)(x, B, hidden, PTR(P_PRE_FFN, const float *), eps, xq, xs, xc);
    TG(matmul_rows)(xq, xs, xc, B, hidden, PTR(P_GU_W, const uint8_t *), PTR(P_GU_S, const float *), 2 * I, y, 2 * I);
    TG(quantize_geglu)(y, B, I, tmp, xq, xs, xc);
    TG(matmul_rows)(xq, xs, xc, B, I, PTR(P_DOWN_W, const uint8_t *), PTR(P_DOWN_S, const float *), hidden, h, hidden);
    TG(rmsnorm)(h, B, hidden, PTR(P_POST_FFN, const float *), eps, 1, x);
#undef PTR
done:
    free(xq); free(xs); free(xc); free(y); free(q); free(k); free(v); free(att); free(h); free(tmp);
    return status;
}
