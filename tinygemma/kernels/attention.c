// Attention entry points shared by every build, around the build's own attend_head (one query head against
// its keys). Included by q8_avx512.c, q8_simd.c and q8_ref.c after attend_head.

#include <string.h>

#ifndef TG
#define TG(name) tg_##name
#endif

// Attention of one query per sequence for B sequences sharing one cache tensor: q (B, H, D) contiguous; k, v
// with element strides sb, sh, ss (batch, head, slot); kpos (B, S) with row stride kpos_stride; qpos (B,).
// Query head h uses K/V head h / (H / Hkv). window <= 0: no window. out (B, H, D).
void TG(attend)(const float *q, int64_t B, int64_t H, int64_t Hkv, int64_t D, const float *k, const float *v,
                int64_t S, int64_t sb, int64_t sh, int64_t ss, const int64_t *kpos, int64_t kpos_stride,
                const int64_t *qpos, int64_t window, float scale, float *out) {
#pragma omp parallel for schedule(static) if (B * H * S >= 4096)
    for (int64_t bh = 0; bh < B * H; bh++) {
        const int64_t b = bh / H, h = bh % H, g = h / (H / Hkv);
        attend_head(q + bh * D, k + b * sb + g * sh, v + b * sb + g * sh, kpos + b * kpos_stride, S, ss, D,
                    qpos[b], window, scale, out + bh * D);
    }
}

// The engine's decode step: B sequences, each with its own cache (one layer's K, V (Hkv, capacity, D) and
// positions (capacity,), contiguous, addresses in kc, vc, pc; head stride sh[b] = capacity * D). Row b's new
// key and value (knew, vnew: (B, Hkv, D)) go to slot[b] with position qpos[b], then its H query heads attend
// over its first S[b] slots. One call per layer instead of a cache write and a kernel call per row.
void TG(attend_rows)(const float *q, const float *knew, const float *vnew, const int64_t *qpos, int64_t B,
                     int64_t H, int64_t Hkv, int64_t D, const int64_t *kc, const int64_t *vc, const int64_t *pc,
                     const int64_t *slot, const int64_t *S, const int64_t *sh, int64_t window, float scale,
                     float *out) {
    int64_t work = 0;
    for (int64_t b = 0; b < B; b++) {
        float *kb = (float *)kc[b], *vb = (float *)vc[b];
        for (int64_t g = 0; g < Hkv; g++) {
            memcpy(kb + g * sh[b] + slot[b] * D, knew + (b * Hkv + g) * D, D * sizeof(float));
            memcpy(vb + g * sh[b] + slot[b] * D, vnew + (b * Hkv + g) * D, D * sizeof(float));
        }
        ((int64_t *)pc[b])[slot[b]] = qpos[b];
        work += H * S[b];
    }
#pragma omp parallel for schedule(dynamic, 4) if (work >= 4096)
    for (int64_t bh = 0; bh < B * H; bh++) {
        const int64_t b = bh / H, h = bh % H, g = h / (H / Hkv);
        attend_head(q + bh * D, (const float *)kc[b] + g * sh[b], (const float *)vc[b] + g * sh[b],
                    (const int64_t *)pc[b], S[b], D, D, qpos[b], window, scale, out + bh * D);
    }
}
