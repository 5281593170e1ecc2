/*
 * stream_floor.c -- the machine's floor for a batch-1 recurrent step: how fast fastrnn's own
 * one-row product (fastrnn_matvec_ranges_f32, the kernel every batch-1 step runs) streams a
 * packed W_hh^T that stays in cache, one thread, and two threads at once on halves of it
 * (the hidden-unit split). At batch 1 a step reads its whole share of W_hh once for one
 * multiply-add per element, so this rate, not the FMA rate, bounds the recurrence; the notes
 * on the speed issue derive their per-shape floors from it.
 *
 * Build and run from the project root (-O3 -fno-trapping-math as setup.py builds the kernels):
 *   gcc -O3 -fno-trapping-math -std=gnu11 -pthread -Icsrc -o /tmp/stream_floor \
 *       bench/stream_floor.c csrc/matmul.c && /tmp/stream_floor
 * Prints, per gate-column count of an LSTM/GRU/RNN of hidden size H (K = H rows), the best of
 * 6 rounds of 20000 calls: microseconds a step and GB/s, for one thread on all columns and
 * for each of two threads on half of them, both running at once.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "fastrnn_matmul.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct {
    ptrdiff_t K, c0, c1; /* rows, and the column range this thread reads */
    const float *packed;
    double best;         /* seconds a call */
} Share;

static void *run_share(void *arg)
{
    Share *s = arg;
    float *h = malloc(s->K * sizeof(float));
    float *out = calloc((size_t)s->c1, sizeof(float));
    for (ptrdiff_t k = 0; k < s->K; ++k)
        h[k] = 0.01f * (float)(k % 17);
    const int calls = 20000;
    s->best = 1e9;
    for (int round = 0; round < 6; ++round) {
        double t0 = now();
        for (int i = 0; i < calls; ++i) {
            fastrnn_matvec_ranges_f32(1, &s->c0, &s->c1, s->K, h, s->packed,
                                      s->K * FASTRNN_PANEL_F32, 1, out);
            h[i % s->K] += out[s->c0 + i % (s->c1 - s->c0)] * 1e-9f; /* a data dependency */
        }
        double t = (now() - t0) / calls;
        s->best = t < s->best ? t : s->best;
    }
    free(h);
    free(out);
    return NULL;
}

int main(void)
{
    static const struct { const char *what; int G, H; } cases[] = {
        {"LSTM H=64", 4, 64},   {"GRU H=256", 3, 256}, {"LSTM H=128", 4, 128},
        {"RNN H=256", 1, 256},  {"LSTM H=256", 4, 256},
    };
    printf("%-11s %9s  %22s  %34s\n", "case", "W_hh KiB", "1 thread: us, GB/s",
           "2 threads (each half): us, GB/s");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        ptrdiff_t K = cases[i].H, N = (ptrdiff_t)cases[i].G * cases[i].H;
        size_t elems = (size_t)fastrnn_packed_size_f32(K, N);
        float *packed = aligned_alloc(64, (elems * sizeof(float) + 63) / 64 * 64);
        for (size_t e = 0; e < elems; ++e)
            packed[e] = 1e-3f * (float)((int)(e % 7) - 3);
        double kib = (double)K * N * sizeof(float) / 1024;

        Share one = {K, 0, N, packed, 0};
        run_share(&one);

        /* halves at a panel boundary, as the unit split cuts them */
        ptrdiff_t cut = (N / 2 + FASTRNN_PANEL_F32 - 1) / FASTRNN_PANEL_F32 * FASTRNN_PANEL_F32;
        Share half[2] = {{K, 0, cut, packed, 0}, {K, cut, N, packed, 0}};
        pthread_t other;
        pthread_create(&other, NULL, run_share, &half[1]);
        run_share(&half[0]);
        pthread_join(other, NULL);
        double worst = half[0].best > half[1].best ? half[0].best : half[1].best;

        printf("%-11s %9.0f  %9.2f us %6.1f GB/s  %9.2f us %6.1f GB/s (slower half)\n",
               cases[i].what, kib, one.best * 1e6, kib * 1024 / one.best / 1e9, worst * 1e6,
               kib / 2 * 1024 / worst / 1e9);
        free(packed);
    }
    return 0;
}
