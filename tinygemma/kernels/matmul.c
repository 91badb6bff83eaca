// The threaded matrix-product driver and its entry points, shared by the SIMD builds (q8_avx512.c, q8_simd.c):
// included after the build's Product type and tile_column (all rows of x against one tile of 4 weight rows).

#ifndef TG
#define TG(name) tg_##name
#endif

// Rows of x go in blocks of ROWS_PER_PASS, so a block's activations stay in L2 while the threads share W.
#define ROWS_PER_PASS 64
static void matmul(const Product *p, int q8_0, int64_t M, const void *w, const float *ws, int64_t N) {
    const int64_t tiles = (N + TILE_N - 1) / TILE_N;
    const int64_t scales_per_tile = q8_0 ? TILE_N * p->K / 32 : TILE_N;
    for (int64_t m0 = 0; m0 < M; m0 += ROWS_PER_PASS) {
        const int64_t rows = M - m0 < ROWS_PER_PASS ? M - m0 : ROWS_PER_PASS;
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < tiles; t++) {
            const int n = N - t * TILE_N < TILE_N ? (int)(N - t * TILE_N) : TILE_N;
            tile_column(p, q8_0, (const int8_t *)w + t * TILE_N * p->K, ws + t * scales_per_tile, m0, rows,
                        p->y + t * TILE_N, n);
        }
    }
}

// y (M, N), row stride ldy = x @ W.T for a layer: x from quantize_rows, W uint8 packed (N rounded up to 4
// rows), ws one scale per (padded) row.
void TG(matmul_rows)(const int8_t *xq, const float *xs, const float *xc, int64_t M, int64_t K, const uint8_t *w,
                     const float *ws, int64_t N, float *y, int64_t ldy) {
    Product p = {xq, xs, xc, K, ldy, y};
    matmul(&p, 0, M, w, ws, N);
}

// y (M, N), row stride ldy = x @ W.T for the Q8_0 table: x from quantize, W int8 packed, ws its packed
// block scales.
void TG(matmul_q8_0)(const uint8_t *xq, const float *xs, int64_t M, int64_t K, const int8_t *w, const float *ws,
                     int64_t N, float *y, int64_t ldy) {
    Product p = {xq, xs, 0, K, ldy, y};
    matmul(&p, 1, M, w, ws, N);
}
