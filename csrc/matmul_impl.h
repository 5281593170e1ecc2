/*
 * matmul_impl.h -- the small-batch GEMM of fastrnn_matmul.h, written once; matmul.c includes
 * it per float type with T, SFX, VW (lanes per vector) and FASTRNN_CLONES defined.
 */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(base) CAT(base, SFX)
#define VEC CAT(vec, SFX)

typedef T VEC __attribute__((vector_size(VW * sizeof(T)), aligned(sizeof(T))));

#define PW (4 * VW)

typedef TI CAT(ivec, SFX) __attribute__((vector_size(VW * sizeof(T))));

/* Shuffle indices of the transpose below, one row per scale d = VW/2, ..., 1 (constants,
   so that each shuffle is one two-source permute): lo[c] = c & d ? VW + c - d : c,
   hi[c] = c & d ? VW + c : c + d. */
#if VW == 16
#define TSTAGES 4
static const TI NAME(transpose_lo)[TSTAGES][VW] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
    {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
    {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
    {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}};
static const TI NAME(transpose_hi)[TSTAGES][VW] = {
    {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
    {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
    {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
    {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
#elif VW == 8
#define TSTAGES 3
static const TI NAME(transpose_lo)[TSTAGES][VW] = {
    {0, 1, 2, 3, 8, 9, 10, 11},
    {0, 1, 8, 9, 4, 5, 12, 13},
    {0, 8, 2, 10, 4, 12, 6, 14}};
static const TI NAME(transpose_hi)[TSTAGES][VW] = {
    {4, 5, 6, 7, 12, 13, 14, 15},
    {2, 3, 10, 11, 6, 7, 14, 15},
    {1, 9, 3, 11, 5, 13, 7, 15}};
#endif

/* r[0..VW-1] := its transpose, as VW x VW lanes: at each scale d the off-diagonal d x d
   blocks of every 2d x 2d block swap, two rows at a time (a two-source shuffle each). */
static inline __attribute__((always_inline)) void NAME(transpose)(VEC *r)
{
#pragma GCC unroll 4
    for (int stage = 0, d = VW / 2; stage < TSTAGES; ++stage, d /= 2) {
        CAT(ivec, SFX) lo, hi;
        memcpy(&lo, NAME(transpose_lo)[stage], sizeof(lo));
        memcpy(&hi, NAME(transpose_hi)[stage], sizeof(hi));
#pragma GCC unroll 16
        for (int i = 0; i < VW; ++i) {
            if (i & d)
                continue;
            VEC a = r[i], b = r[i + d];
            r[i] = __builtin_shuffle(a, b, lo);
            r[i + d] = __builtin_shuffle(a, b, hi);
        }
    }
}
#undef TSTAGES

/* dst[k * ldd + u] := w[u * ldw + k] for rows u < jn (<= VW) of W and k < K: a block of
   rows of W transposed, each k one contiguous run of jn elements. With copy not NULL, the
   same rows also as they are, into a pack of W itself: row u's columns k.. at
   copy + u * PW + k / PW * copy_stride + k % PW (copy_stride: that pack's panel stride), from
   the same loads. */
static inline __attribute__((always_inline)) void NAME(pack_rows_t)(
    ptrdiff_t K, ptrdiff_t jn, const T *w, ptrdiff_t ldw, T *dst, ptrdiff_t ldd, T *copy,
    ptrdiff_t copy_stride)
{
    ptrdiff_t k = 0;
    if (jn == VW) /* VW x VW blocks: load rows, transpose in registers, store */
        for (; k + VW <= K; k += VW) {
            VEC r[VW];
#pragma GCC unroll 16
            for (int u = 0; u < VW; ++u)
                memcpy(&r[u], w + u * ldw + k, sizeof(VEC));
            if (copy)
#pragma GCC unroll 16
                for (int u = 0; u < VW; ++u)
                    memcpy(copy + u * PW + k / PW * copy_stride + k % PW, &r[u], sizeof(VEC));
            NAME(transpose)(r);
#pragma GCC unroll 16
            for (int u = 0; u < VW; ++u)
                memcpy(dst + (k + u) * ldd, &r[u], sizeof(VEC));
        }
    for (; k < K; ++k)
        for (ptrdiff_t u = 0; u < jn; ++u) {
            dst[k * ldd + u] = w[u * ldw + k];
            if (copy)
                copy[u * PW + k / PW * copy_stride + k % PW] = w[u * ldw + k];
        }
}

/* The zeros of a packed (K, N) matrix: the columns of its last panel past N, and the slack
   after it. */
static inline __attribute__((always_inline)) void NAME(pack_padding)(ptrdiff_t K, ptrdiff_t N,
                                                                   T *packed)
{
    const ptrdiff_t Npad = (N + PW - 1) / PW * PW;
    for (ptrdiff_t j = N; j < Npad; ++j)
        for (ptrdiff_t k = 0; k < K; ++k)
            packed[j / PW * K * PW + k * PW + j % PW] = (T)0;
    for (ptrdiff_t u = 0; u < VW; ++u)
        packed[Npad * K + u] = (T)0;
}

FASTRNN_CLONES
void NAME(fastrnn_pack_cols)(ptrdiff_t K, ptrdiff_t N, ptrdiff_t c0, ptrdiff_t c1, int trans,
                             const T *w, ptrdiff_t ldw, T *packed)
{
    /* packed[j / PW][k][j % PW] = op(W)[k][j] for columns j in c0..c1-1 */
    if (trans) { /* blocks of VW rows of W: each k writes one contiguous vector */
        for (ptrdiff_t j0 = c0; j0 < c1; j0 += VW)
            NAME(pack_rows_t)(K, c1 - j0 < VW ? c1 - j0 : VW, w + j0 * ldw, ldw,
                              packed + j0 / PW * K * PW + j0 % PW, PW, NULL, 0);
    } else {
        for (ptrdiff_t k = 0; k < K; ++k)
            for (ptrdiff_t j0 = c0; j0 < c1; j0 = (j0 / PW + 1) * PW) {
                ptrdiff_t end = (j0 / PW + 1) * PW < c1 ? (j0 / PW + 1) * PW : c1;
                T *dst = packed + j0 / PW * K * PW + k * PW + j0 % PW;
                /* a whole panel row with a constant size, so that the copy is inlined (a
                   libc call for every 256 bytes: 37 against 33 us for 1 MiB). (Written past
                   the caches instead, with SSE's non-temporal stores, since backward reads
                   these packs only after the whole forward pass: LSTM (100, 1, 256, 256)
                   training took 1.040 of the time on one thread, 1.012 on two; dropped.) */
                if (end - j0 == PW)
                    memcpy(dst, w + k * ldw + j0, PW * sizeof(T));
                else
                    memcpy(dst, w + k * ldw + j0, (size_t)(end - j0) * sizeof(T));
            }
    }
    if (c1 == N)
        NAME(pack_padding)(K, N, packed);
}

FASTRNN_CLONES
void NAME(fastrnn_pack)(ptrdiff_t K, ptrdiff_t N, int trans, const T *w, ptrdiff_t ldw,
                        T *packed)
{
    NAME(fastrnn_pack_cols)(K, N, 0, N, trans, w, ldw, packed);
}

FASTRNN_CLONES
void NAME(fastrnn_pack_both)(ptrdiff_t K, ptrdiff_t N, const T *w, ptrdiff_t ldw, T *packed_t,
                             T *packed)
{
    /* W (N, K) read once, a block of VW rows at a time, for both packs: in training it
       comes from L3 (the step's other arrays have passed through L2 since the last one),
       and reading it once per pack read it twice. */
    for (ptrdiff_t j0 = 0; j0 < N; j0 += VW)
        NAME(pack_rows_t)(K, N - j0 < VW ? N - j0 : VW, w + j0 * ldw, ldw,
                          packed_t + j0 / PW * K * PW + j0 % PW, PW, packed + j0 * PW,
                          N * PW);
    NAME(pack_padding)(K, N, packed_t);
    NAME(pack_padding)(N, K, packed);
}

/* One tile: R rows (1..6) x C vectors (1..4) of C; R and C are constants after inlining, so
   the accumulators live in registers. Row r reads a[r][k * ks] (ks = 1: a row of A; ks = lda:
   a column, for A^T) and writes c[r] + col0; `width` is how many of the tile's columns
   exist. B is a packed panel, row stride PW. Each column's sum is then stored plus C
   (beta), plus bias[col] (a row added to every row of C, when bias is not NULL), or alone.
   The first pfn steps of k also ask for lines 2k and 2k + 1 after pf (see gemm_blocks); pfn = 0
   for none. */
static inline __attribute__((always_inline)) void NAME(tile)(
    const int R, const int C, ptrdiff_t K, const T *const *a, const ptrdiff_t ks,
    const T *restrict b, int beta, const T *bias, T *const *c, ptrdiff_t col0, ptrdiff_t width,
    const char *pf, ptrdiff_t pfn)
{
    VEC acc[6][4];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < C; ++v)
            acc[r][v] = (VEC){0};
    /* One step of k: every vector of the row of B times every row's element of A. */
#define TILE_STEP                                                                             \
    {                                                                                         \
        VEC w[4];                                                                             \
        if (k < pfn) { /* (GCC splits the loop here: the steps past pfn test nothing) */      \
            __builtin_prefetch(pf + 128 * k, 0, 2);                                           \
            __builtin_prefetch(pf + 128 * k + 64, 0, 2);                                      \
        }                                                                                     \
        /* Each vector of B loaded once into a register for all R rows. Left to itself, GCC   \
           folds the load into every row's FMA when the broadcasts have more uses (R < C): R  \
           loads of B a vector, and the 3-row tile ran at 45 instead of 55 G multiply-adds/s  \
           (2 rows: 43 -> 49). A volatile load cannot be repeated. One row uses each vector   \
           once: folding is right there. */                                                   \
        for (int v = 0; v < C; ++v) {                                                         \
            if (R > 1)                                                                        \
                w[v] = *(const volatile VEC *)(b + k * PW + v * VW);                          \
            else                                                                              \
                memcpy(&w[v], b + k * PW + v * VW, sizeof(VEC));                              \
        }                                                                                     \
        for (int r = 0; r < R; ++r) {                                                         \
            const T x = a[r][k * ks]; /* broadcast by the vector product */                   \
            for (int v = 0; v < C; ++v)                                                       \
                acc[r][v] += x * w[v];                                                        \
        }                                                                                     \
    }
    /* Four steps of k an iteration when more than one row reads A along its rows: the
       loop's own add, compare and branch no longer take issue slots beside the FMAs of
       every step. Alone (C, one thread, B in cache, G multiply-adds/s): 6 x 64 rows over
       K = 128 96-97 -> 100-102, (100 x 256) @ (256 x 1024) 90-94 -> 94-98. In the model
       (bench/ab.py, new / old, medians of 6 rounds): LSTM (100, 64, 256, 256) inference
       0.932 on 1 thread and 0.946 on 2; (100, 1, 256, 256) inference 0.936 (its input
       projection), training step 0.951 on 2 threads; (100, 16, 128, 128) training 0.953 /
       0.977; GRU (100, 64, 256, 256) training 0.969; (50, 64, 512, 512), whose products
       stream B from L3, 1.009. One row keeps the plain loop (alone 0.98), and so does the
       transposed product's packed A^T (ks = 6): unrolled, its weight gradients of
       (512 x 100) x (100 x 512) ran at 68-69 against 84-85 (by 2 instead of 4: (1024 x 100)
       x (100 x 256) twice 73-75 against 93, (512 x 1600) x (1600 x 128) twice 67.5 against
       85.5). (Unrolling only the full tiles,
       4-6 rows x 4 vectors, compiled faster but lost elsewhere: LSTM (100, 3, 256, 256)
       inference 1.038.) */
    if (R > 1 && ks == 1) {
#pragma GCC unroll 4
        for (ptrdiff_t k = 0; k < K; ++k)
            TILE_STEP
    } else {
        for (ptrdiff_t k = 0; k < K; ++k)
            TILE_STEP
    }
#undef TILE_STEP
    for (int r = 0; r < R; ++r) {
        T *crow = c[r] + col0;
        for (int v = 0; v < C; ++v) {
            ptrdiff_t col = (ptrdiff_t)v * VW;
            if (col + VW <= width) {
                VEC old = (VEC){0};
                if (beta)
                    memcpy(&old, crow + col, sizeof(VEC));
                else if (bias)
                    memcpy(&old, bias + col0 + col, sizeof(VEC));
                VEC sum = acc[r][v] + old;
                memcpy(crow + col, &sum, sizeof(VEC));
            } else { /* the last, partial vector of a row */
                T lanes[VW];
                memcpy(lanes, &acc[r][v], sizeof(VEC));
                for (ptrdiff_t u = 0; col + u < width; ++u)
                    crow[col + u] = lanes[u] + (beta   ? crow[col + u]
                                                : bias ? bias[col0 + col + u]
                                                       : (T)0);
            }
        }
    }
}

/* Every cache line of the row a (K elements) asked for at once, before a one-row product
   reads it an element at a time. When threads share a step by units, half the row was
   written by the other core on the step before: read in order, its lines missed one or two
   at a time (the loop reaches a line only after the FMAs of the last), where prefetched
   they cross together. (100, 1, 256, 256), 2 threads, one process, new / old, medians of 8
   rounds: LSTM inference 0.989, training step 0.984; GRU 0.982 / 0.993; RNN training 0.961. */
static inline __attribute__((always_inline)) void NAME(prefetch_row)(ptrdiff_t K, const T *a)
{
    for (ptrdiff_t k = 0; k < K; k += 64 / (ptrdiff_t)sizeof(T))
        __builtin_prefetch(a + k, 0, 3);
}

/* Rows of the next tile when `left` rows remain: 6 (24 accumulators), except that 7-9
   rows go as 4 + 3..5 rather than 6 + 1..3, whose thin last tile loads a vector of B for
   every one or two FMAs. (8 rows over a panel larger than L1 as one tile over each half of
   the panel, 8 x 2 vectors twice, so that each line of it comes from L2 once: alone, C, one
   thread, K x N = 256 x 1024, 69-82 -> 75-86 G multiply-adds/s; in the model slower, LSTM
   (100, 8, 256, 256) inference 1 thread 1.041, (100, 16, 256, 256) 2 threads 1.042.) */
static inline __attribute__((always_inline)) ptrdiff_t NAME(tile_rows)(ptrdiff_t left)
{
    return left <= 6 ? left : left <= 9 ? 4 : 6;
}

#define TILE_ARGS K, arow, KS, panel, beta, bias, crow, col0, width, pf, pfn
#define TILE_CASE(R)                                                                          \
    switch (cv) {                                                                             \
    case 4: NAME(tile)(R, 4, TILE_ARGS); break;                                               \
    case 3: NAME(tile)(R, 3, TILE_ARGS); break;                                               \
    case 2: NAME(tile)(R, 2, TILE_ARGS); break;                                               \
    default: NAME(tile)(R, 1, TILE_ARGS); break;                                              \
    }

/* A tile of R (1..6, run time) rows: R made a constant for the tile's registers */
#define TILE_ROWS                                                                             \
    switch (R) {                                                                              \
    case 6: TILE_CASE(6) break;                                                               \
    case 5: TILE_CASE(5) break;                                                               \
    case 4: TILE_CASE(4) break;                                                               \
    case 3: TILE_CASE(3) break;                                                               \
    case 2: TILE_CASE(2) break;                                                               \
    default: TILE_CASE(1) break;                                                              \
    }

#define KS 1 /* A read along its rows */
#define MB 192 /* rows of A per block: 192 x K x 4 bytes stays in L2 for K <= 1024 */
/* (Blocks of 768 KiB of A instead, 384 rows at K = 512, so that B larger than L2 comes from
   L3 half as often, measured level: LSTM (50, 64, 512, 512) inference, new / old, medians
   of 10 rounds, 0.999 on 1 thread, 0.995 on 2.) */

/* Bytes of packed B from which a product fetches each panel ahead (below): more than half
   of the 2 MiB L2 a core has on the project's Xeons, and more than all of it on many CPUs. */
#define PREFETCH_PANELS_FROM ((ptrdiff_t)1 << 20)

/* Rows are `blocks` blocks of `rows` rows: row i of block s is at a + s * a_block + i * lda
   (and likewise in C). A panel of B stays in cache while every row passes over it.
   Columns c0..c1-1 of C only: a tile then covers the part of a panel inside the range,
   from column col0 % PW of its rows (its last vector may read up to VW - 1 elements past
   the row, which the packed buffer's slack keeps inside it; they are never stored). */
static inline __attribute__((always_inline)) void NAME(gemm_blocks)(
    ptrdiff_t blocks, ptrdiff_t rows, ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t K, const T *a,
    ptrdiff_t a_block, ptrdiff_t lda, const T *packed, ptrdiff_t panel_stride, int beta,
    const T *bias, T *c, ptrdiff_t c_block, ptrdiff_t ldc, int reverse)
{
    const ptrdiff_t n = blocks * rows;
    const ptrdiff_t first = c0 / PW, last = c1 > c0 ? (c1 - 1) / PW : first - 1;
    /* A B larger than L2 comes from L3 a panel at a time, and the first tile of a panel
       waited for it: the prefetchers do not cross into the next panel. So when B is large,
       the tiles of each panel also fetch the next panel into L2, two lines a step of k, over
       as many tiles as that takes (2 tiles at 2K lines each: a panel row is 4 lines). (A line
       a step, over 4 tiles, ran the product (64 x 512) @ (512 x 2048), B 4 MiB from L3, at
       87.3 G multiply-adds/s against 90.0 with two (C, one thread, medians of 8 interleaved
       runs); the same lines spread over every tile of the panel ran at 81-86 against 88-91;
       four a step, 89-94 against 90-93 for two. In the model, two against one, new / old,
       medians of 5-8 rounds, one thread: LSTM (50, 64, 512, 512) inference 0.957 (frozen),
       training 0.994; GRU (50, 64, 512, 512) inference 0.967; LSTM (100, 64, 256, 256), B
       in L2, 0.998.)
       Fetching ahead at all (then a line a step) against not, one process, new / old,
       medians of 6-8 rounds (2-core Xeon, 2 MiB L2, 1
       thread): LSTM (50, 64, 512, 512) inference 0.933 (W_hh^T and W_ih^T 4 MiB each),
       2 threads 0.964, training 0.967; GRU (50, 64, 512, 512) 0.929. With B in L2 it
       costs instead: fetching ahead from 1 MiB on, LSTM (100, 64, 256, 256) inference ran
       1.027 (2 threads 1.062) and (200, 32, 128, 256) 1.098; hence the strict bound. Nor
       did threads that share a step by units gain from it at H = 512, where each reads
       half of every gate's panels, a call a gate (0.999-1.011 with the rule on the whole
       matrix), so the rule looks at the call's own columns. */
    const int fetch_ahead = (last - first + 1) * panel_stride * (ptrdiff_t)sizeof(T) >
                            PREFETCH_PANELS_FROM;
    /* Rows in blocks of MB: a block of A stays in L2 while every panel of B passes over
       it (panel-major order over all rows re-read A once per panel: the input projection
       of (T, B, I) = (100, 64, 256) ran at half the GEMM rate). */
    for (ptrdiff_t rb = 0; rb < n; rb += MB)
    for (ptrdiff_t i = 0; i <= last - first; ++i) {
        const ptrdiff_t p = reverse ? last - i : first + i;
        ptrdiff_t col0 = p * PW > c0 ? p * PW : c0;
        ptrdiff_t end = (p + 1) * PW < c1 ? (p + 1) * PW : c1;
        ptrdiff_t width = end - col0;
        int cv = (int)((width + VW - 1) / VW);
        const T *panel = packed + col0 / PW * panel_stride + col0 % PW;
        ptrdiff_t rend = rb + MB < n ? rb + MB : n;
        /* the panel visited next: its K rows, K * PW * sizeof(T) / 64 lines */
        const ptrdiff_t lines =
            fetch_ahead && i < last - first ? K * PW * (ptrdiff_t)sizeof(T) / 64 : 0;
        const char *next =
            lines ? (const char *)(packed + (reverse ? p - 1 : p + 1) * panel_stride) : NULL;
        ptrdiff_t fetched = 0;
        /* (Each tile loads its rows of C only after its k loop. Asking for the next tile's
           rows a tile ahead, when beta = 1 (a step's product onto the projection ring, which
           is larger than L2 at batch 64), measured no faster: LSTM (100, 64, 256, 256)
           inference, new / old 1.023 on 1 thread, 0.984 on 2: the core hides the misses.) */
        for (ptrdiff_t r0 = rb, R; r0 < rend; r0 += R) { /* 6 x 4 vectors: 24 accumulators */
            const T *arow[6];
            T *crow[6];
            const char *pf = next ? next + 64 * fetched : NULL;
            const ptrdiff_t pfn = (lines - fetched) / 2 < K ? (lines - fetched) / 2 : K;
            fetched += 2 * pfn;
            R = NAME(tile_rows)(rend - r0);
            for (int r = 0; r < R; ++r) {
                ptrdiff_t s = (r0 + r) / rows, i = (r0 + r) % rows;
                arow[r] = a + s * a_block + i * lda;
                crow[r] = c + s * c_block + i * ldc;
            }
            TILE_ROWS
        }
    }
}

/* Every product on packed weights: the entry points below call this one, compiled once a
   CPU clone. (gemm_blocks inlined into each of the three, every tile shape and clone
   thrice over, made matmul.c take GCC 13 minutes at -O3 -g; once, 4.6.) A row of A alone
   (`prefetch`) is asked for whole first (prefetch_row). Static: not part of
   fastrnn_matmul.h's interface. */
FASTRNN_CLONES
static void NAME(small_gemm_any)(ptrdiff_t blocks, ptrdiff_t rows, ptrdiff_t c0, ptrdiff_t c1,
                                 ptrdiff_t K, const T *a, ptrdiff_t a_block, ptrdiff_t lda,
                                 const T *packed, ptrdiff_t panel_stride, int beta,
                                 const T *bias, T *c, ptrdiff_t c_block, ptrdiff_t ldc,
                                 int reverse, int prefetch)
{
    if (prefetch)
        NAME(prefetch_row)(K, a);
    NAME(gemm_blocks)(blocks, rows, c0, c1, K, a, a_block, lda, packed, panel_stride, beta, bias,
                      c, c_block, ldc, reverse);
}

void NAME(fastrnn_small_gemm_cols)(ptrdiff_t n, ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t K,
                                   const T *a, ptrdiff_t lda, const T *packed,
                                   ptrdiff_t panel_stride, int beta, const T *bias, T *c,
                                   ptrdiff_t ldc, int reverse)
{
    /* n = 1: a step's row shared by units, as in fastrnn_matvec_ranges */
    NAME(small_gemm_any)(1, n, c0, c1, K, a, 0, lda, packed, panel_stride, beta, bias, c, 0,
                         ldc, reverse, n == 1);
}

/* Columns per pass of a column sum: 8 vectors of sums in registers over a block of rows. */
#define CS_VECTORS 8

/* out[c] += a[r][c] for rows r0..r1-1 in order and columns c0..c1-1 (row stride lda): each
   column continues its sum from out, whatever its lane or pass, so blocks of rows summed
   one after another give the numbers of one plain loop over all rows. */
static inline __attribute__((always_inline)) void NAME(add_row_block)(
    ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t c0, ptrdiff_t c1, const T *a, ptrdiff_t lda, T *out)
{
    ptrdiff_t c = c0;
    for (; c + CS_VECTORS * VW <= c1; c += CS_VECTORS * VW) {
        VEC acc[CS_VECTORS];
        memcpy(acc, out + c, sizeof(acc));
        for (ptrdiff_t r = r0; r < r1; ++r)
            for (int v = 0; v < CS_VECTORS; ++v) {
                VEC x;
                memcpy(&x, a + r * lda + c + v * VW, sizeof(VEC));
                acc[v] += x;
            }
        memcpy(out + c, acc, sizeof(acc));
    }
    for (; c + VW <= c1; c += VW) {
        VEC acc;
        memcpy(&acc, out + c, sizeof(VEC));
        for (ptrdiff_t r = r0; r < r1; ++r) {
            VEC x;
            memcpy(&x, a + r * lda + c, sizeof(VEC));
            acc += x;
        }
        memcpy(out + c, &acc, sizeof(VEC));
    }
    for (; c < c1; ++c)
        for (ptrdiff_t r = r0; r < r1; ++r)
            out[c] += a[r * lda + c];
}
#undef CS_VECTORS

/* Rows per block of fastrnn_column_sums: a block's rows come from memory in its first pass
   and from L1 in the others. */
#define CS_ROWS 16

FASTRNN_CLONES
void NAME(fastrnn_column_sums)(ptrdiff_t rows, ptrdiff_t cols, const T *a, ptrdiff_t lda,
                               T *out)
{
    /* The Cython loop this replaces ran at baseline SSE2 (2.4% of an LSTM training step's
       samples at (100, 16, 128, 128) on two threads). */
    memset(out, 0, (size_t)cols * sizeof(T));
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += CS_ROWS)
        NAME(add_row_block)(r0, r0 + CS_ROWS < rows ? r0 + CS_ROWS : rows, 0, cols, a, lda, out);
}
#undef CS_ROWS

#define MV 8 /* vectors of one matrix-vector pass: 8 independent FMA chains */

/* One row times M vectors of columns, each vector anywhere in the packed matrix: b[v] is
   its column block at row 0 (row stride PW), c[v] where it goes, lanes lo[v]..hi[v]-1 the
   columns it stores. The same operations per column as tile(): acc = sum over k in order,
   then + C or + 0 (lanes are independent: a column's numbers do not depend on its lane). */
static inline __attribute__((always_inline)) void NAME(matvec_group)(
    const int M, ptrdiff_t K, const T *a, const T *const *b, T *const *c,
    const ptrdiff_t *lo, const ptrdiff_t *hi, int beta)
{
    VEC acc[MV];
    for (int v = 0; v < M; ++v)
        acc[v] = (VEC){0};
    for (ptrdiff_t k = 0; k < K; ++k) {
        const T x = a[k];
        for (int v = 0; v < M; ++v) {
            VEC w;
            memcpy(&w, b[v] + k * PW, sizeof(VEC));
            acc[v] += x * w;
        }
    }
    for (int v = 0; v < M; ++v) {
        if (lo[v] == 0 && hi[v] == VW) {
            VEC old = (VEC){0};
            if (beta)
                memcpy(&old, c[v], sizeof(VEC));
            VEC sum = acc[v] + old;
            memcpy(c[v], &sum, sizeof(VEC));
        } else {
            T lanes[VW];
            memcpy(lanes, &acc[v], sizeof(VEC));
            for (ptrdiff_t u = lo[v]; u < hi[v]; ++u)
                c[v][u] = lanes[u] + (beta ? c[v][u] : (T)0);
        }
    }
}

/* The last group of a pass, m < MV vectors (M must be a constant for the registers).
   always_inline, like every helper here: a helper left out of line is compiled for the
   baseline target, not the caller's clone, and so without FMA (different numbers). */
static inline __attribute__((always_inline)) void NAME(matvec_rest)(
    int m, ptrdiff_t K, const T *a, const T *const *b, T *const *out, const ptrdiff_t *lo,
    const ptrdiff_t *hi, int beta)
{
    switch (m) {
    case 7: NAME(matvec_group)(7, K, a, b, out, lo, hi, beta); break;
    case 6: NAME(matvec_group)(6, K, a, b, out, lo, hi, beta); break;
    case 5: NAME(matvec_group)(5, K, a, b, out, lo, hi, beta); break;
    case 4: NAME(matvec_group)(4, K, a, b, out, lo, hi, beta); break;
    case 3: NAME(matvec_group)(3, K, a, b, out, lo, hi, beta); break;
    case 2: NAME(matvec_group)(2, K, a, b, out, lo, hi, beta); break;
    case 1: NAME(matvec_group)(1, K, a, b, out, lo, hi, beta); break;
    default: break;
    }
}

FASTRNN_CLONES
void NAME(fastrnn_matvec_ranges)(int ranges, const ptrdiff_t *c0, const ptrdiff_t *c1,
                                 ptrdiff_t K, const T *a, const T *packed,
                                 ptrdiff_t panel_stride, int beta, T *c, int reverse)
{
    /* Every vector of every range joins a group of MV: a few short ranges (one a gate, as
       when threads share a step by units) still keep MV chains in flight, where a tile per
       range would run 1-2 chains, bound by the FMA latency. The vectors are the aligned
       ones (column multiples of VW) that cover each range, storing only the range's lanes:
       a range that starts inside a vector (a gate of H = 500 starts at column 500) would
       otherwise load every vector across two cache lines, twice the traffic of a stream
       that is bound by it. */
    const T *b[MV];
    T *out[MV];
    ptrdiff_t lo[MV], hi[MV];
    int m = 0;
    NAME(prefetch_row)(K, a);
    for (int n = 0; n < ranges; ++n) {
        const int i = reverse ? ranges - 1 - n : n;
        if (c1[i] <= c0[i])
            continue;
        const ptrdiff_t first = c0[i] / VW, last = (c1[i] - 1) / VW;
        for (ptrdiff_t j = 0; j <= last - first; ++j) {
            const ptrdiff_t col = (reverse ? last - j : first + j) * VW; /* inside one panel */
            b[m] = packed + col / PW * panel_stride + col % PW;
            out[m] = c + col;
            lo[m] = c0[i] > col ? c0[i] - col : 0;
            hi[m] = c1[i] < col + VW ? c1[i] - col : VW;
            if (++m == MV) {
                NAME(matvec_group)(MV, K, a, b, out, lo, hi, beta);
                m = 0;
            }
        }
    }
    NAME(matvec_rest)(m, K, a, b, out, lo, hi, beta);
}

void NAME(fastrnn_small_gemm)(ptrdiff_t n, ptrdiff_t N, ptrdiff_t K, const T *a, ptrdiff_t lda,
                              const T *packed, ptrdiff_t panel_stride, int beta, T *c,
                              ptrdiff_t ldc, int reverse)
{
    NAME(small_gemm_any)(1, n, 0, N, K, a, 0, lda, packed, panel_stride, beta, NULL, c, 0, ldc,
                         reverse, 0);
}

#undef MV

void NAME(fastrnn_small_gemm_blocks)(ptrdiff_t blocks, ptrdiff_t rows, ptrdiff_t N, ptrdiff_t K,
                                     const T *a, ptrdiff_t a_block, ptrdiff_t lda,
                                     const T *packed, ptrdiff_t panel_stride, int beta,
                                     const T *bias, T *c, ptrdiff_t c_block, ptrdiff_t ldc)
{
    NAME(small_gemm_any)(blocks, rows, 0, N, K, a, a_block, lda, packed, panel_stride, beta,
                         bias, c, c_block, ldc, 0, 0);
}

#undef PREFETCH_PANELS_FROM
#undef MB
#undef KS
#define KS 6 /* A^T rows packed 6 at a time, interleaved: [m / 6][k][m % 6], one tile each */

/* The full tile of the transposed product, KS = 6 rows x 4 vectors: tile() with A^T's rows read
   from one packed micro-panel, ap[k * KS + r] for row r, through one pointer and
   unrolled by 2. Through tile() each row is a pointer of its own (GCC keeps six base
   registers, and moves an accumulator each step for want of a zmm register) and the loop
   may not be unrolled (68 against 84 G multiply-adds/s, see tile()). The same operations in
   the same order as tile(): the same numbers. Alone (C, one thread, 8 interleaved rounds,
   median of each run's mean rate, G multiply-adds/s, old -> new): dW of LSTM H = 256 at batch
   1, (1024 x 100) x (100 x 256) twice, 85.9 -> 89.6; H = 128 at batch 16, (512 x 1600) x
   (1600 x 128) twice, 90.4 -> 93.5. In the model (bench/ab.py, new / old, medians of 6-10
   rounds, training steps): LSTM (100, 16, 128, 128) 0.978 on 1 thread and 0.994 on 2,
   (100, 1, 256, 256) 0.997, (100, 64, 256, 256) 0.990; GRU (100, 64, 256, 256) 0.983. */
static inline __attribute__((always_inline)) void NAME(tile_tn)(ptrdiff_t K,
                                                                 const T *restrict ap,
                                                                 const T *restrict b, int beta,
                                                                 T *const *c, ptrdiff_t col0)
{
    VEC acc[KS][4];
    for (int r = 0; r < KS; ++r)
        for (int v = 0; v < 4; ++v)
            acc[r][v] = (VEC){0};
#pragma GCC unroll 2
    for (ptrdiff_t k = 0; k < K; ++k) {
        VEC w[4];
        for (int v = 0; v < 4; ++v) /* (volatile: see tile()) */
            w[v] = *(const volatile VEC *)(b + k * PW + v * VW);
        for (int r = 0; r < KS; ++r) {
            const T x = ap[k * KS + r];
            for (int v = 0; v < 4; ++v)
                acc[r][v] += x * w[v];
        }
    }
    for (int r = 0; r < KS; ++r)
        for (int v = 0; v < 4; ++v) {
            T *dst = c[r] + col0 + v * VW;
            VEC old = (VEC){0};
            if (beta)
                memcpy(&old, dst, sizeof(VEC));
            VEC sum = acc[r][v] + old;
            memcpy(dst, &sum, sizeof(VEC));
        }
}

/* K rows per pass of the transposed product: the packed chunk of A^T (M x KC) and of one
   panel of B (KC x PW, 32 KiB) stay in cache while every row of C passes over them. Reading
   A^T straight from A instead (a 4 KiB stride down its columns) ran at half the speed: the
   lines alias in L1. Measured alone (2-core Xeon, one thread, G multiply-adds/s; dW of
   LSTM H = 256 at batch 1 and 64): 4-row tiles and KC = 64 ran (1024, 256, 100) at 69,
   (1024, 256, 6400) at 67; 6-row tiles 75 / 70; and KC = 128 79 / 73 (C is read and
   written once a pass). */
#define KC FASTRNN_GEMM_TN_KC
#define KB 8 /* rows of A packed at a time (below) */

/* The transposed products C_q (M, N_q) := A^T B_q, q < n, of one A: columns c0[q]..c1[q]-1
   of each (c0[q] a multiple of the panel width), A^T packed once a K pass for all of them. */
static inline __attribute__((always_inline)) void NAME(gemm_tn_products)(
    int n, ptrdiff_t M, ptrdiff_t K, const T *a, ptrdiff_t lda, const T *const *bs,
    const ptrdiff_t *ldbs, T *const *cs, const ptrdiff_t *ldcs, const ptrdiff_t *c0s,
    const ptrdiff_t *c1s, T *sums, ptrdiff_t s0, ptrdiff_t s1, T *buf)
{
    if (sums && s1 > s0)
        memset(sums + s0, 0, (size_t)(s1 - s0) * sizeof(T));
    for (int q = 0; K == 0 && q < n; ++q)
        for (ptrdiff_t m = 0; c1s[q] > c0s[q] && m < M; ++m)
            memset(cs[q] + m * ldcs[q] + c0s[q], 0, (size_t)(c1s[q] - c0s[q]) * sizeof(T));
    const ptrdiff_t MK = (M + KS - 1) / KS * KS;
    const T *bias = NULL;      /* the tiles store sums alone or plus C */
    T *apack = buf;            /* (MK / KS) x KC x KS */
    T *bpack = buf + MK * KC;  /* KC x PW */
    for (ptrdiff_t k0 = 0; k0 < K; k0 += KC) {
        ptrdiff_t kn = K - k0 < KC ? K - k0 : KC;
        /* pack A[k0 : k0 + kn, :]^T a tile's rows (KS columns of A) at a time, KB rows of A
           at a time: each tile's block then gets one contiguous run of KB * KS elements,
           read from KB rows of A that stay in L1. Row by row (a KS-element piece into each
           of M / KS blocks 3 KiB apart) the packing was 16% of (1024, 256, 6400) and that
           product ran at 72-77 G multiply-adds/s; with KB = 8, 79-84 (4 and 6 rows measured
           no better than 8, 16 and 32 worse: A's rows alias in L1). */
        for (ptrdiff_t kb = 0; kb < kn; kb += KB) {
            const ptrdiff_t ke = kb + KB < kn ? kb + KB : kn;
            const T *src = a + k0 * lda;
            ptrdiff_t m = 0;
            for (; m + KS <= M; m += KS) {
                T *dst = apack + (m / KS) * KC * KS;
                for (ptrdiff_t k = kb; k < ke; ++k)
                    memcpy(dst + k * KS, src + k * lda + m, KS * sizeof(T));
            }
            for (; m < MK; ++m) /* the last block's rows past M are zero */
                for (ptrdiff_t k = kb; k < ke; ++k)
                    apack[(m / KS) * KC * KS + k * KS + m % KS] = m < M ? src[k * lda + m] : (T)0;
            /* A's column sums (bias gradients) from the rows just packed, still in L1: a
               second pass over A (the gate gradients, larger than L2 at batch 16 and up)
               ran at memory speed */
            if (sums)
                NAME(add_row_block)(kb, ke, s0, s1, src, lda, sums);
        }
        int beta = k0 > 0; /* K chunks add up in a fixed order: deterministic */
        for (int q = 0; q < n; ++q) {
            const T *b = bs[q];
            T *c = cs[q];
            const ptrdiff_t ldb = ldbs[q], ldc = ldcs[q];
            for (ptrdiff_t p0 = c0s[q]; p0 < c1s[q]; p0 += PW) {
                ptrdiff_t width = c1s[q] - p0 < PW ? c1s[q] - p0 : PW;
                int cv = (int)((width + VW - 1) / VW);
                ptrdiff_t col0 = p0; /* the tile's column offset in C */
                const T *panel = bpack;
                for (ptrdiff_t k = 0; k < kn; ++k) { /* pack B[k0 + k, p0 : p0 + width] */
                    const T *src = b + (k0 + k) * ldb + p0;
                    if (width == PW) {
                        memcpy(bpack + k * PW, src, PW * sizeof(T));
                        continue;
                    }
                    for (ptrdiff_t u = 0; u < PW; ++u)
                        bpack[k * PW + u] = u < width ? src[u] : (T)0;
                }
                for (ptrdiff_t m0 = 0; m0 < M; m0 += KS) {
                    const T *arow[KS] = {0}; /* (rows past R unused: GCC cannot tell) */
                    T *crow[KS] = {0};
                    int R = M - m0 >= KS ? KS : (int)(M - m0);
                    for (int r = 0; r < R; ++r) {
                        arow[r] = apack + (m0 / KS) * KC * KS + r;
                        crow[r] = c + (m0 + r) * ldc;
                    }
                    /* the next tile's rows of C, a tile ahead: C (M x N) is read and written
                       once per K chunk and is larger than L2 for the weight gradients (dW_ih
                       of an LSTM with I = H = 512 is 4 MiB), and a tile asks for its C only
                       after its K loop, too late for the core to reorder the misses under
                       the FMAs */
                    for (ptrdiff_t m = m0 + KS; m < m0 + 2 * KS && m < M; ++m)
                        for (ptrdiff_t u = 0; u < width; u += 64 / (ptrdiff_t)sizeof(T))
                            __builtin_prefetch(c + m * ldc + p0 + u, 1, 3);
                    ptrdiff_t K = kn;
                    const char *pf = NULL; /* (B's panel is packed here, in cache) */
                    const ptrdiff_t pfn = 0;
                    if (R == KS && width == PW)
                        NAME(tile_tn)(kn, arow[0], panel, beta, crow, col0);
                    else
                        TILE_ROWS
                }
            }
        }
    }
}

FASTRNN_CLONES
void NAME(fastrnn_gemm_tn2)(ptrdiff_t M, ptrdiff_t K, const T *a, ptrdiff_t lda, ptrdiff_t N1,
                            const T *b1, ptrdiff_t ldb1, T *c1, ptrdiff_t ldc1, ptrdiff_t N2,
                            const T *b2, ptrdiff_t ldb2, T *c2, ptrdiff_t ldc2, ptrdiff_t p0,
                            ptrdiff_t p1, T *sums, ptrdiff_t s0, ptrdiff_t s1, T *buf)
{
    const ptrdiff_t P1 = (N1 + PW - 1) / PW; /* C1's panels come first */
    const T *bs[2] = {b1, b2};
    T *cs[2] = {c1, c2};
    const ptrdiff_t ldbs[2] = {ldb1, ldb2}, ldcs[2] = {ldc1, ldc2};
    ptrdiff_t c0s[2], c1s[2];
    c0s[0] = p0 < P1 ? p0 * PW : N1;
    c1s[0] = p1 < P1 ? p1 * PW : N1;
    c0s[1] = p0 > P1 ? (p0 - P1) * PW : 0;
    c1s[1] = p1 > P1 ? (p1 - P1) * PW : 0;
    c1s[1] = c1s[1] < N2 ? c1s[1] : N2;
    NAME(gemm_tn_products)(2, M, K, a, lda, bs, ldbs, cs, ldcs, c0s, c1s, sums, s0, s1, buf);
}

#undef KB
#undef KC
#undef KS
#undef TILE_ROWS
#undef TILE_CASE
#undef TILE_ARGS
#undef PW
#undef VEC
#undef NAME
#undef CAT
#undef CAT_
