/*
 * stream_floor.c -- the machine's floor for a batch-1 recurrent step: how fast fastrnn's own
 * one-row product (fastrnn_matvec_ranges_f32, which the threads of a batch-1 step split by
 * units run; one thread's LSTM and GRU steps run fastrnn_step.h, the same stream) streams a
 * packed W_hh^T that stays in cache, one thread, and two threads at once on halves of it;
 * and the hidden-unit split's whole step less its gate math (each thread's units of every
 * gate, the state written half by each core, fastrnn's barrier once a step); beside them, a
 * bare read of the same bytes (vector loads summed, no product, no dependency from one pass
 * to the next): the cache's own read rate, which the product can at best reach. At batch 1 a
 * step reads its whole share of W_hh once for one multiply-add per element, so this rate,
 * not the FMA rate, bounds the recurrence; the notes on the speed issue derive their
 * per-shape floors from it.
 *
 * Build and run from the project root (-O3 -fno-trapping-math as setup.py builds the kernels):
 *   gcc -O3 -fno-trapping-math -std=gnu11 -pthread -Icsrc -o /tmp/stream_floor \
 *       bench/stream_floor.c csrc/matmul.c csrc/threads.c && /tmp/stream_floor
 * Prints, per gate-column count of an LSTM/GRU/RNN of hidden size H (K = H rows), the best of
 * 6 rounds of 20000 calls: microseconds a step and GB/s, for one thread on all columns, for
 * each of two threads on half of them, both running at once, and for the 2-thread unit
 * split's step; then the bare read's microseconds and GB/s, one thread.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "fastrnn_matmul.h"
#include "fastrnn_threads.h"

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
                                      s->K * FASTRNN_PANEL_F32, 1, out, i & 1);
            h[i % s->K] += out[s->c0 + i % (s->c1 - s->c0)] * 1e-9f; /* a data dependency */
        }
        double t = (now() - t0) / calls;
        s->best = t < s->best ? t : s->best;
    }
    free(h);
    free(out);
    return NULL;
}

/* Seconds a bare read of elems floats takes (best of 6 rounds of 20000 passes): 64-byte
   vector loads added into four sums, as wide as the CPU's product reads W (AVX-512 on the
   project's machines; GCC's generic vectors elsewhere). */
typedef float v16f __attribute__((vector_size(64)));
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target("avx512f")))
#endif
static double bare_read(const float *p, size_t elems)
{
    const int calls = 20000;
    double best = 1e9;
    v16f keep = {0};
    for (int round = 0; round < 6; ++round) {
        double t0 = now();
        for (int i = 0; i < calls; ++i) {
            v16f s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
            for (size_t e = 0; e + 64 <= elems; e += 64) {
                s0 += *(const v16f *)(p + e);
                s1 += *(const v16f *)(p + e + 16);
                s2 += *(const v16f *)(p + e + 32);
                s3 += *(const v16f *)(p + e + 48);
            }
            keep += s0 + s1 + s2 + s3;
        }
        double t = (now() - t0) / calls;
        best = t < best ? t : best;
    }
    volatile float sink = keep[0];
    (void)sink;
    return best;
}

/* The unit split as a step runs it, less the gate math: thread t of 2 reads the whole state
   h (half of it written by the other core on the step before), multiplies it by its units'
   columns of every gate, writes its half of the next state from them, and meets the other
   at fastrnn_barrier_wait. */
typedef struct {
    int t, G;
    ptrdiff_t H;
    const float *packed;
    float *h[2];             /* the state, double-buffered as a step reads one, writes one */
    fastrnn_barrier *barrier;
    double best;
} SplitShare;

static void *run_split(void *arg)
{
    SplitShare *s = arg;
    const ptrdiff_t H = s->H, N = s->G * H, j0 = s->t * H / 2, j1 = (s->t + 1) * H / 2;
    ptrdiff_t c0[4], c1[4];
    for (int g = 0; g < s->G; ++g)
        c0[g] = g * H + j0, c1[g] = g * H + j1;
    float *out = calloc((size_t)N, sizeof(float));
    const int calls = 20000;
    s->best = 1e9;
    for (int round = 0; round < 6; ++round) {
        double t0 = now();
        for (int i = 0; i < calls; ++i) {
            const float *hp = s->h[i & 1];
            float *hn = s->h[(i + 1) & 1];
            fastrnn_matvec_ranges_f32(s->G, c0, c1, H, hp, s->packed, H * FASTRNN_PANEL_F32, 0,
                                      out, i & 1);
            for (ptrdiff_t j = j0; j < j1; ++j) /* its units of the next state */
                hn[j] = 0.5f * hp[j] + 1e-6f * out[j];
            fastrnn_barrier_wait(s->barrier, s->t, 2);
        }
        double t = (now() - t0) / calls;
        s->best = t < s->best ? t : s->best;
    }
    free(out);
    return NULL;
}

int main(void)
{
    static const struct { const char *what; int G, H; } cases[] = {
        {"LSTM H=64", 4, 64},   {"GRU H=256", 3, 256}, {"LSTM H=128", 4, 128},
        {"RNN H=256", 1, 256},  {"LSTM H=256", 4, 256},
    };
    printf("%-11s %9s  %22s  %24s  %s  %s\n", "case", "W_hh KiB", "1 thread: us, GB/s",
           "2 threads, halves at once", "unit split step (barrier, state across cores)",
           "bare read: us, GB/s");
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

        /* the unit split with its barrier and the state crossing cores each step */
        fastrnn_barrier barrier;
        fastrnn_barrier_init(&barrier);
        float *h = calloc(2 * (size_t)K, sizeof(float));
        for (ptrdiff_t k = 0; k < K; ++k)
            h[k] = 0.01f * (float)(k % 17);
        SplitShare split[2];
        for (int t = 0; t < 2; ++t)
            split[t] = (SplitShare){t, cases[i].G, K, packed, {h, h + K}, &barrier, 0};
        pthread_create(&other, NULL, run_split, &split[1]);
        run_split(&split[0]);
        pthread_join(other, NULL);
        double step = split[0].best > split[1].best ? split[0].best : split[1].best;
        free(h);

        double read = bare_read(packed, (size_t)(K * N));
        printf("%-11s %9.0f  %9.2f us %6.1f GB/s  %9.2f us %6.1f GB/s  %9.2f us %36.2f us "
               "%6.1f GB/s\n",
               cases[i].what, kib, one.best * 1e6, kib * 1024 / one.best / 1e9, worst * 1e6,
               kib / 2 * 1024 / worst / 1e9, step * 1e6, read * 1e6, kib * 1024 / read / 1e9);
        free(packed);
    }
    return 0;
}
