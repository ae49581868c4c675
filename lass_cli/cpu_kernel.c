/* A prior step's float32 product, y = x W + b, for a few dozen rows on x86-64 with AVX-512.
 *
 * Why: at 40 rows a full-size step reads 576 MB of weights a prior from memory, and MKL's packed
 * product then costs its compute plus the transfer (397 us against 251 hot for 1024 x 1024 on two
 * Xeon cores). This one reads the weight in panels of 32 columns and has each thread prefetch its
 * next panel while it multiplies the current one, so the transfer hides behind the compute.
 * lass_cli/cpu_kernel.py packs the weights, compiles this file and falls back to torch without it.
 *
 * Layout: W (K x N) as panels [ceil(N / 32)][K][32], zero past column N; the bias N floats or NULL.
 * Every output is its bias, then one chain of fused multiply-adds over k in order.
 * Threads: OpenMP, linked against the runtime torch already runs, so both share one pool. */
#include <immintrin.h>
#include <omp.h>

#define PANEL 32    /* columns of a panel: two vectors of 16 floats */
#define TILE_ROWS 10 /* rows a tile: 20 accumulators, 2 weight vectors and a broadcast in registers */
#define LINE 64     /* bytes a cache line */

int lass_kernel_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

#define AVX512 __attribute__((target("avx512f,fma")))

/* rows x 32 outputs from K steps over one panel; meanwhile `lines` lines from `fetch` into the L2. */
static inline __attribute__((always_inline)) AVX512 void tile(
    int rows, const float *x, long ldx, int K, const float *panel, const float *bias, float *y, long ldy,
    __mmask16 low, __mmask16 high, const char *fetch, long lines) {
    __m512 acc[TILE_ROWS][2];
    __m512 bias_low = bias ? _mm512_maskz_loadu_ps(low, bias) : _mm512_setzero_ps();
    __m512 bias_high = bias ? _mm512_maskz_loadu_ps(high, bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int r = 0; r < TILE_ROWS; r++)
        if (r < rows) {
            acc[r][0] = bias_low;
            acc[r][1] = bias_high;
        }
    long due = 0; /* the prefetches spread evenly over the K steps */
    for (int k = 0; k < K; k++) {
        __m512 w_low = _mm512_loadu_ps(panel + (long)k * PANEL);
        __m512 w_high = _mm512_loadu_ps(panel + (long)k * PANEL + 16);
#pragma GCC unroll 16
        for (int r = 0; r < TILE_ROWS; r++)
            if (r < rows) {
                __m512 a = _mm512_set1_ps(x[r * ldx + k]);
                acc[r][0] = _mm512_fmadd_ps(a, w_low, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(a, w_high, acc[r][1]);
            }
        for (due += lines; due >= K; due -= K, fetch += LINE) _mm_prefetch(fetch, _MM_HINT_T1);
    }
#pragma GCC unroll 16
    for (int r = 0; r < TILE_ROWS; r++)
        if (r < rows) {
            _mm512_mask_storeu_ps(y + r * ldy, low, acc[r][0]);
            _mm512_mask_storeu_ps(y + r * ldy + 16, high, acc[r][1]);
        }
}

/* Panels [first, last) of the product, each thread's run of panels in order. */
static AVX512 void panels(const float *x, long ldx, int M, int K, const float *w, int N, const float *bias,
                          float *y, long ldy, int first, int last) {
    const long panel_size = (long)K * PANEL, tiles = (M + TILE_ROWS - 1) / TILE_ROWS;
    const long lines = panel_size * (long)sizeof(float) / LINE, lines_a_tile = (lines + tiles - 1) / tiles;
    for (int p = first; p < last; p++) {
        const float *panel = w + p * panel_size;
        const char *next = (const char *)(panel + panel_size);
        int columns = N - p * PANEL < PANEL ? N - p * PANEL : PANEL;
        __mmask16 low = columns >= 16 ? 0xFFFF : (__mmask16)((1u << columns) - 1);
        __mmask16 high = columns <= 16 ? 0 : columns == PANEL ? 0xFFFF : (__mmask16)((1u << (columns - 16)) - 1);
        for (long t = 0; t < tiles; t++) {
            int row = (int)t * TILE_ROWS, rows = M - row < TILE_ROWS ? M - row : TILE_ROWS;
            long start = t * lines_a_tile, count = p + 1 < last ? lines_a_tile : 0;
            if (start + count > lines) count = lines > start ? lines - start : 0;
            const float *xt = x + row * ldx;
            float *yt = y + row * ldy + p * PANEL;
            const char *fetch = next + start * LINE;
            switch (rows) { /* one unrolled tile per row count */
#define TILE(n)                                                                               \
    case n:                                                                                   \
        tile(n, xt, ldx, K, panel, bias ? bias + p * PANEL : 0, yt, ldy, low, high, fetch, count); \
        break;
                TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6) TILE(7) TILE(8) TILE(9) TILE(10)
#undef TILE
            }
        }
    }
}

/* y (M x N, row stride ldy) = x (M x K, row stride ldx) W + bias on `threads` threads. */
void lass_panel_product(const float *x, long ldx, int M, int K, const float *w, int N, const float *bias,
                        float *y, long ldy, int threads) {
    const int count = (N + PANEL - 1) / PANEL;
    if (M <= 0 || K <= 0 || count <= 0) return; /* nothing to multiply (the caller handles that) */
    if (threads > count) threads = count;
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        panels(x, ldx, M, K, w, N, bias, y, ldy, (int)((long)count * t / n), (int)((long)count * (t + 1) / n));
    }
}
