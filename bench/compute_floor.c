/*
 * compute_floor.c -- the machine's multiply-add floor under each case of bench/compare.py's
 * grid: the register-only FMA rate (one thread, and two threads at once), the rate of
 * fastrnn's own product tile (fastrnn_small_gemm_f32, every product of a step at batch > 1
 * and of a whole sequence) with its operands in cache where they fit, that of its weight
 * gradients' transposed product (fastrnn_gemm_tn2_f32) at two training shapes, what every
 * grid case's multiply-adds alone would take at each, and the time of the pointwise gate math
 * (csrc/cells.c) that every case does besides them, at that code's own rate in cache. A speed
 * target whose time is below the FMA-rate floor is out of reach on this machine whatever the
 * code; the notes on the speed issue compare the targets with these floors (batch-1 steps are
 * bound by streaming W_hh instead: bench/stream_floor.c).
 *
 * Multiply-adds counted: inference T*B*G*H*(I+H) (input projection and recurrent product);
 * a training step three times that (forward; dX with dh; dW_ih with dW_hh), as
 * bench/_bench_common.gemm_flops counts them (there in flops, twice these).
 *
 * Build and run from the project root (-O3 -fno-trapping-math as setup.py builds the kernels):
 *   gcc -O3 -fno-trapping-math -std=gnu11 -pthread -Icsrc -o /tmp/compute_floor \
 *       bench/compute_floor.c csrc/matmul.c csrc/cells.c -lm && /tmp/compute_floor
 * Every rate is the best of 7 rounds (or of the rounds given as the one argument: the tests
 * run 1); run it on a quiet machine.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "fastrnn_cells.h"
#include "fastrnn_matmul.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define CHAINS 12 /* independent FMA chains: more than latency x FMA ports on any x86-64 core */
static int rounds = 7;

/* The empty asm that keeps every accumulator in a vector register through each iteration
   (the register constraint is the architecture's: "v" on x86, "w" on AArch64) */
#if defined(__x86_64__) || defined(__i386__)
#define IN_REGISTERS(...) __asm__ volatile("" : __VA_ARGS__)
#define VREG "+v"
#elif defined(__aarch64__)
#define IN_REGISTERS(...) __asm__ volatile("" : __VA_ARGS__)
#define VREG "+w"
#else
#define IN_REGISTERS(...) /* the sum below still keeps the loop */
#define VREG
#endif

/* Multiply-adds per second of CHAINS independent vector FMA chains, in registers (named
   variables: GCC keeps an array of vectors on the stack). */
#define FMA_LOOP(NAME, LANES, ...)                                                            \
    __VA_ARGS__ static double NAME(long iterations)                                          \
    {                                                                                        \
        typedef float vec __attribute__((vector_size(LANES * sizeof(float))));              \
        vec a, b;                                                                            \
        for (int l = 0; l < LANES; ++l)                                                      \
            a[l] = 0.999f, b[l] = 1e-3f;                                                     \
        vec c0 = a, c1 = a, c2 = a, c3 = a, c4 = a, c5 = a, c6 = a, c7 = a, c8 = a, c9 = a,  \
            c10 = a, c11 = a;                                                                \
        double t0 = now();                                                                   \
        for (long i = 0; i < iterations; ++i) {                                              \
            c0 = c0 * a + b, c1 = c1 * a + b, c2 = c2 * a + b, c3 = c3 * a + b;              \
            c4 = c4 * a + b, c5 = c5 * a + b, c6 = c6 * a + b, c7 = c7 * a + b;              \
            c8 = c8 * a + b, c9 = c9 * a + b, c10 = c10 * a + b, c11 = c11 * a + b;          \
            IN_REGISTERS(VREG(c0), VREG(c1), VREG(c2), VREG(c3), VREG(c4), VREG(c5),         \
                         VREG(c6), VREG(c7), VREG(c8), VREG(c9), VREG(c10), VREG(c11));      \
        }                                                                                    \
        double t = now() - t0;                                                               \
        volatile float sink = (c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11)[0]; \
        (void)sink;                                                                          \
        return (double)iterations * CHAINS * LANES / t;                                      \
    }

FMA_LOOP(fma_rate_plain, 4) /* the compiler's own target: 4 lanes, FMA where it has one */
#if defined(__x86_64__) || defined(__i386__)
FMA_LOOP(fma_rate_avx512, 16, __attribute__((target("arch=x86-64-v4"))))
FMA_LOOP(fma_rate_avx2, 8, __attribute__((target("arch=x86-64-v3"))))
#endif

/* The widest loop this CPU runs (as fastrnn's kernels dispatch: fastrnn_dispatch.h) */
static double fma_rate(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return fma_rate_avx512(20000000);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return fma_rate_avx2(40000000);
#endif
    return fma_rate_plain(80000000);
}

typedef struct {
    double best; /* multiply-adds per second */
} FmaShare;

static void *run_fma(void *arg)
{
    FmaShare *s = arg;
    s->best = 0;
    for (int round = 0; round < rounds; ++round) {
        double r = fma_rate();
        s->best = r > s->best ? r : s->best;
    }
    return NULL;
}

/* fastrnn_small_gemm_f32's multiply-adds per second at (n x K) @ (K x N), accumulating into
   C as a step's product does, the operands in cache where they fit a core's L2 (the packed
   (512 x 2048) weights, 4 MiB, come from L3, as an LSTM's W_hh^T does at H = 512). */
static double tile_rate(ptrdiff_t n, ptrdiff_t K, ptrdiff_t N)
{
    size_t elems = (size_t)fastrnn_packed_size_f32(K, N);
    float *w = malloc((size_t)K * N * sizeof(float));
    float *packed = aligned_alloc(64, (elems * sizeof(float) + 63) / 64 * 64);
    float *a = aligned_alloc(64, ((size_t)n * K * sizeof(float) + 63) / 64 * 64);
    float *c = aligned_alloc(64, ((size_t)n * N * sizeof(float) + 63) / 64 * 64);
    for (ptrdiff_t e = 0; e < K * N; ++e)
        w[e] = 1e-3f * (float)((int)(e % 7) - 3);
    for (ptrdiff_t e = 0; e < n * K; ++e)
        a[e] = 0.01f * (float)(e % 13);
    for (ptrdiff_t e = 0; e < n * N; ++e)
        c[e] = 0.0f;
    fastrnn_pack_f32(K, N, 1, w, K, packed); /* w is (N, K): W^T packed, as for W_hh^T */
    long calls = (long)(2e9 / ((double)n * K * N)) + 1;
    double best = 0;
    for (int round = 0; round < rounds; ++round) {
        double t0 = now();
        for (long i = 0; i < calls; ++i)
            fastrnn_small_gemm_f32(n, N, K, a, K, packed, K * FASTRNN_PANEL_F32, 1, c, N,
                                   (int)(i & 1));
        double r = (double)calls * n * K * N / (now() - t0);
        best = r > best ? r : best;
    }
    free(w);
    free(packed);
    free(a);
    free(c);
    return best;
}

/* fastrnn_gemm_tn2_f32's multiply-adds per second: C1 = A^T B1 and C2 = A^T B2 with A
   (K x M), B1 and B2 (K x N), the weight gradients dW_ih = dG^T X and dW_hh = dG^T H of a
   training step at I = H (M = G*H gate columns, K = T*B rows), with the bias gradients'
   column sums; repeated, so whatever fits a core's L2 stays there. */
static double tn_rate(ptrdiff_t M, ptrdiff_t K, ptrdiff_t N)
{
    float *a = malloc((size_t)K * M * sizeof(float));
    float *b = malloc((size_t)2 * K * N * sizeof(float));
    float *c = malloc((size_t)2 * M * N * sizeof(float));
    float *sums = malloc((size_t)M * sizeof(float));
    /* 64-byte aligned, as the library's is (_layer._aligned_empty): from malloc's 16-byte
       boundary every vector load of the packed panel straddled two lines, 10% slower */
    float *buf = aligned_alloc(
        64, ((size_t)fastrnn_gemm_tn_buffer_f32(M) * sizeof(float) + 63) / 64 * 64);
    for (ptrdiff_t e = 0; e < K * M; ++e)
        a[e] = 1e-3f * (float)((int)(e % 7) - 3);
    for (ptrdiff_t e = 0; e < 2 * K * N; ++e)
        b[e] = 0.01f * (float)(e % 13);
    const ptrdiff_t panels = 2 * ((N + FASTRNN_PANEL_F32 - 1) / FASTRNN_PANEL_F32);
    long calls = (long)(2e9 / (2.0 * M * K * N)) + 1;
    double best = 0;
    for (int round = 0; round < rounds; ++round) {
        double t0 = now();
        for (long i = 0; i < calls; ++i)
            fastrnn_gemm_tn2_f32(M, K, a, M, N, b, N, c, N, N, b + K * N, N, c + M * N, N, 0,
                                 panels, sums, 0, M, buf);
        double r = (double)calls * 2 * M * K * N / (now() - t0);
        best = r > best ? r : best;
    }
    free(a);
    free(b);
    free(c);
    free(sums);
    free(buf);
    return best;
}

/* Gate math: seconds per hidden unit of one batch row and step, through fastrnn's pointwise
   kernels over GATE_ROWS rows of H = GATE_H (the gate buffers, 64 KiB for an LSTM, stay in
   cache), as inference runs it (forward, no saved activations) and as a training step does
   (forward saving them, then backward). The values are mild (|a| < 6), as trained gates'
   are; the kernels' time does not depend on them (no branches). */
#define GATE_ROWS 16
#define GATE_H 256

typedef struct {
    double inference, training;
} GateCost;

enum { RNN, LSTM, GRU };

/* One call of the cell's forward (act NULL: inference) or backward over every row. */
static void gate_pass(int cell, int backward, float *const *buf, float *act)
{
    const ptrdiff_t n = GATE_ROWS, H = GATE_H;
    if (cell == RNN && !backward)
        fastrnn_rnn_gates_fwd_f32(n, H, 0, H, 0, buf[0], buf[1]);
    else if (cell == RNN)
        fastrnn_rnn_gates_bwd_f32(n, H, 0, H, 0, buf[1], buf[2], buf[3]);
    else if (cell == LSTM && !backward)
        fastrnn_lstm_gates_fwd_f32(n, H, 0, H, buf[0], buf[1], act, buf[2], buf[3]);
    else if (cell == LSTM) /* (buf[4] is dc: in and out, as the time loop carries it) */
        fastrnn_lstm_gates_bwd_f32(n, H, 0, H, buf[5], buf[1], buf[2], buf[3], buf[4], buf[0]);
    else if (!backward)
        fastrnn_gru_gates_fwd_f32(n, H, 0, H, buf[0], buf[6], buf[1], act, buf[2]);
    else
        fastrnn_gru_gates_bwd_f32(n, H, 0, H, buf[5], buf[1], buf[3], buf[0], buf[4], buf[2]);
}

/* Seconds a call of gate_pass takes: the best of `rounds` rounds of ~20 ms of calls. */
static double gate_pass_time(int cell, int backward, float *const *buf, float *act)
{
    double best = 1e30;
    for (int round = 0; round < rounds; ++round) {
        long calls = 0;
        double t0 = now(), t;
        do {
            gate_pass(cell, backward, buf, act);
            ++calls;
        } while ((t = now() - t0) < 0.02);
        best = t / calls < best ? t / calls : best;
    }
    return best;
}

static GateCost gate_cost(int cell)
{
    unsigned csr = fastrnn_denormals_flush(); /* as the library's time loops run */
    /* 7 buffers of 4H a row (the widest: LSTM and GRU gates, saved activations) */
    const size_t elems = (size_t)GATE_ROWS * 4 * GATE_H;
    float *buf[7];
    for (int i = 0; i < 7; ++i) {
        buf[i] = aligned_alloc(64, elems * sizeof(float));
        for (size_t e = 0; e < elems; ++e)
            buf[i][e] = 0.37f * (float)((int)((e * 7919 + (size_t)i) % 23) - 11);
    }
    float *act = buf[5];
    gate_pass(cell, 0, buf, act); /* saved activations of these values, for backward */
    const double units = (double)GATE_ROWS * GATE_H;
    GateCost cost;
    cost.inference = gate_pass_time(cell, 0, buf, NULL) / units;
    cost.training = (gate_pass_time(cell, 0, buf, act) + gate_pass_time(cell, 1, buf, act)) /
                    units;
    for (int i = 0; i < 7; ++i)
        free(buf[i]);
    fastrnn_denormals_restore(csr);
    return cost;
}

int main(int argc, char **argv)
{
    if (argc > 1 && (rounds = atoi(argv[1])) < 1) {
        fprintf(stderr, "usage: %s [rounds >= 1]\n", argv[0]);
        return 2;
    }
    FmaShare one, two[2];
    run_fma(&one);
    pthread_t other;
    pthread_create(&other, NULL, run_fma, &two[1]);
    run_fma(&two[0]);
    pthread_join(other, NULL);
    double peak1 = one.best, peak2 = two[0].best + two[1].best;
    printf("register-only FMA rate: 1 thread %.1f G multiply-adds/s; 2 threads at once "
           "%.1f + %.1f = %.1f\n",
           peak1 * 1e-9, two[0].best * 1e-9, two[1].best * 1e-9, peak2 * 1e-9);

    static const ptrdiff_t tiles[][3] = {
        {6, 128, 512}, {16, 128, 512}, {64, 256, 1024}, {64, 512, 2048}, {192, 256, 1024},
    };
    double tile_best = 0;
    printf("fastrnn_small_gemm_f32, repeated (n x K @ K x N, accumulating):\n");
    for (size_t i = 0; i < sizeof tiles / sizeof tiles[0]; ++i) {
        double r = tile_rate(tiles[i][0], tiles[i][1], tiles[i][2]);
        tile_best = r > tile_best ? r : tile_best;
        printf("  (%3td x %3td) @ (%3td x %4td): %.1f G multiply-adds/s, %.0f%% of the FMA "
               "rate\n",
               tiles[i][0], tiles[i][1], tiles[i][1], tiles[i][2], r * 1e-9, 100 * r / peak1);
    }

    /* (printed "at ... G": the grid's floors below use the tile rates above only) */
    static const ptrdiff_t tns[][3] = {{1024, 100, 256}, {512, 1600, 128}};
    printf("fastrnn_gemm_tn2_f32, repeated (weight gradients: (M x K) @ (K x N), twice):\n");
    for (size_t i = 0; i < sizeof tns / sizeof tns[0]; ++i) {
        double r = tn_rate(tns[i][0], tns[i][1], tns[i][2]);
        printf("  (%4td x %4td) @ (%4td x %3td) twice: at %.1f G multiply-adds/s, %.0f%% of the "
               "FMA rate\n",
               tns[i][0], tns[i][1], tns[i][1], tns[i][2], r * 1e-9, 100 * r / peak1);
    }

    static const struct { int T, B, I, H; } grid[] = {
        {100, 1, 64, 64},   {100, 1, 256, 256}, {100, 16, 128, 128}, {100, 64, 256, 256},
        {50, 64, 512, 512}, {200, 32, 128, 256}, {1000, 1, 32, 32},
    };
    static const struct { const char *name; int G, id; } cells[] = {
        {"rnn", 1, RNN}, {"lstm", 4, LSTM}, {"gru", 3, GRU}};
    GateCost gates[sizeof cells / sizeof cells[0]];
    printf("gate math (csrc/cells.c, %d rows x H = %d in cache), ns a hidden unit of a row and "
           "step:\n",
           GATE_ROWS, GATE_H);
    for (size_t c = 0; c < sizeof cells / sizeof cells[0]; ++c) {
        gates[c] = gate_cost(cells[c].id);
        printf("  %-4s inference %.3f, training step %.3f\n", cells[c].name,
               gates[c].inference * 1e9, gates[c].training * 1e9);
    }
    printf("\nmultiply-adds alone, ms: at the FMA rate (1 thread / 2 threads) and at the best "
           "tile rate above (1 thread)\n");
    printf("%-5s %-16s %10s %19s %19s\n", "cell", "T,B,I,H", "M mul-add", "inference",
           "training step");
    for (size_t c = 0; c < sizeof cells / sizeof cells[0]; ++c)
        for (size_t g = 0; g < sizeof grid / sizeof grid[0]; ++g) {
            double macs = (double)grid[g].T * grid[g].B * cells[c].G * grid[g].H *
                          (grid[g].I + grid[g].H);
            char shape[32];
            snprintf(shape, sizeof shape, "%d,%d,%d,%d", grid[g].T, grid[g].B, grid[g].I,
                     grid[g].H);
            printf("%-5s %-16s %10.1f   %5.2f/%5.2f (%5.2f)   %5.2f/%5.2f (%5.2f)\n",
                   cells[c].name, shape, macs * 1e-6, macs / peak1 * 1e3, macs / peak2 * 1e3,
                   macs / tile_best * 1e3, 3 * macs / peak1 * 1e3, 3 * macs / peak2 * 1e3,
                   3 * macs / tile_best * 1e3);
        }
    /* what each case does besides its products, on one thread (the grid's pointwise work
       also splits across threads, by rows or units) */
    printf("\ngate math alone, ms on one thread at the rates above (T*B*H units a pass)\n");
    printf("%-5s %-16s %10s %10s %14s\n", "cell", "T,B,I,H", "M units", "inference",
           "training step");
    for (size_t c = 0; c < sizeof cells / sizeof cells[0]; ++c)
        for (size_t g = 0; g < sizeof grid / sizeof grid[0]; ++g) {
            double units = (double)grid[g].T * grid[g].B * grid[g].H;
            char shape[32];
            snprintf(shape, sizeof shape, "%d,%d,%d,%d", grid[g].T, grid[g].B, grid[g].I,
                     grid[g].H);
            printf("%-5s %-16s %10.3f %10.3f %14.3f\n", cells[c].name, shape, units * 1e-6,
                   units * gates[c].inference * 1e3, units * gates[c].training * 1e3);
        }
    return 0;
}
