/*
 * step_impl.h -- the fused steps of fastrnn_step.h, written once; step.c includes it per
 * float type with T, SFX, VW, SIGMOID, TANH and FASTRNN_CLONES defined. Equation numbers
 * refer to fastrnn_cells.h.
 */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(base) CAT(base, SFX)
#define VEC CAT(step_vec, SFX)

typedef T VEC __attribute__((vector_size(VW * sizeof(T)), aligned(sizeof(T))));

enum { CAT(STEP_LSTM, SFX), CAT(STEP_GRU, SFX) };
#define IS_LSTM(cell) ((cell) == CAT(STEP_LSTM, SFX))

/* v[l] := src[l] for the first `width` lanes, 0 past them */
static inline __attribute__((always_inline)) void NAME(load_lanes)(VEC *v, const T *src,
                                                                   ptrdiff_t width)
{
    if (width == VW) {
        memcpy(v, src, sizeof(VEC));
    } else {
        T lanes[VW] = {0};
        for (ptrdiff_t l = 0; l < width; ++l)
            lanes[l] = src[l];
        memcpy(v, lanes, sizeof(VEC));
    }
}

/* dst[l] := v[l] for the first `width` lanes */
static inline __attribute__((always_inline)) void NAME(store_lanes)(T *dst, VEC v, ptrdiff_t width)
{
    if (width == VW) {
        memcpy(dst, &v, sizeof(VEC));
    } else {
        T lanes[VW];
        memcpy(lanes, &v, sizeof(VEC));
        for (ptrdiff_t l = 0; l < width; ++l)
            dst[l] = lanes[l];
    }
}

/* The gate math of one batch row's units u..u+width-1, from acc[g] = the recurrent product
   of gate g for those units (lanes). Rows: pre (G*H), hp, c_prev, c, h (H), act (4H).
   The lane loops have a constant trip count, so they compile to whole-vector math. */
static inline __attribute__((always_inline)) void NAME(units)(
    const int cell, ptrdiff_t H, ptrdiff_t u, ptrdiff_t width, const VEC *acc,
    const T *restrict pre, const T *restrict b_hh, const T *restrict hp,
    const T *restrict c_prev, T *restrict act, T *restrict c, T *restrict h)
{
    T a[4][VW], x[3][VW], cp[VW], out[4][VW], cn[VW], hn[VW];
    const int G = IS_LSTM(cell) ? 4 : 3;
    for (int g = 0; g < G; ++g) {
        /* the same sums as fastrnn_small_gemm with beta = 1: product, then + old */
        VEC old, xv;
        NAME(load_lanes)(&old, IS_LSTM(cell) ? pre + g * H + u : b_hh + g * H + u, width);
        VEC sum = acc[g] + old;
        memcpy(a[g], &sum, sizeof(VEC));
        if (!IS_LSTM(cell)) {
            NAME(load_lanes)(&xv, pre + g * H + u, width);
            memcpy(x[g], &xv, sizeof(VEC));
        }
    }
    VEC prev;
    NAME(load_lanes)(&prev, IS_LSTM(cell) ? c_prev + u : hp + u, width);
    memcpy(cp, &prev, sizeof(VEC));
    if (IS_LSTM(cell)) {
        for (int l = 0; l < VW; ++l) {
            T i = SIGMOID(a[0][l]), f = SIGMOID(a[1][l]);        /* (L1) */
            T g = TANH(a[2][l]), o = SIGMOID(a[3][l]);
            T cj = f * cp[l] + i * g;                             /* (L2) */
            out[0][l] = i, out[1][l] = f, out[2][l] = g, out[3][l] = o;
            cn[l] = cj;
            hn[l] = o * TANH(cj);                                 /* (L3) */
        }
    } else {
        for (int l = 0; l < VW; ++l) {
            T r = SIGMOID(x[0][l] + a[0][l]);                     /* (A1) */
            T z = SIGMOID(x[1][l] + a[1][l]);
            T nj = TANH(x[2][l] + r * a[2][l]);                   /* (A2) */
            out[0][l] = r, out[1][l] = z, out[2][l] = nj, out[3][l] = a[2][l];
            hn[l] = ((T)1 - z) * nj + z * cp[l];                  /* (A3) */
        }
    }
    VEC v;
    if (IS_LSTM(cell)) {
        memcpy(&v, cn, sizeof(VEC));
        NAME(store_lanes)(c + u, v, width);
    }
    memcpy(&v, hn, sizeof(VEC));
    NAME(store_lanes)(h + u, v, width);
    if (act)
        for (int g = 0; g < 4; ++g) {
            memcpy(&v, out[g], sizeof(VEC));
            NAME(store_lanes)(act + g * H + u, v, width);
        }
}

/* R batch rows x Q panels (VW units each, all G gates): R * Q * G accumulators in
   registers. Row r of h_prev is at hp + r * K; panel p at panel + p * ps, row stride G*VW. */
static inline __attribute__((always_inline)) void NAME(tile)(
    const int cell, const int R, const int Q, ptrdiff_t H, ptrdiff_t K, ptrdiff_t u,
    ptrdiff_t j1, const T *restrict hp, const T *restrict panel, ptrdiff_t ps,
    const T *restrict b_hh, const T *restrict pre, const T *restrict c_prev,
    T *restrict act, T *restrict c, T *restrict h)
{
    const int G = IS_LSTM(cell) ? 4 : 3;
    VEC acc[6][16];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < Q * G; ++v)
            acc[r][v] = (VEC){0};
    for (ptrdiff_t k = 0; k < K; ++k) {
        VEC w[16];
        for (int p = 0; p < Q; ++p)
            for (int g = 0; g < G; ++g)
                memcpy(&w[p * G + g], panel + p * ps + k * G * VW + g * VW, sizeof(VEC));
        for (int r = 0; r < R; ++r) {
            const T xk = hp[r * K + k]; /* broadcast by the vector product */
            for (int v = 0; v < Q * G; ++v)
                acc[r][v] += xk * w[v];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int p = 0; p < Q; ++p) {
            ptrdiff_t uu = u + p * VW, width = j1 - uu < VW ? j1 - uu : VW;
            NAME(units)(cell, H, uu, width, &acc[r][p * G], pre + r * G * H, b_hh,
                        hp + r * K, c_prev ? c_prev + r * H : NULL,
                        act ? act + r * 4 * H : NULL, c ? c + r * H : NULL, h + r * H);
        }
}

#define STEP_TILE(R, Q)                                                                       \
    NAME(tile)(cell, R, Q, H, K, u, j1, hp + r0 * K, panel, ps, b_hh, pre + r0 * G * H,       \
               c_prev ? c_prev + r0 * H : NULL, act ? act + r0 * 4 * H : NULL,                \
               c ? c + r0 * H : NULL, h + r0 * H)

static inline __attribute__((always_inline)) void NAME(step)(
    const int cell, ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t K,
    const T *hp, const T *packed, const T *b_hh, const T *pre, const T *c_prev, T *act, T *c,
    T *h)
{
    const int G = IS_LSTM(cell) ? 4 : 3;
    const ptrdiff_t ps = K * G * VW; /* one panel: VW units of every gate */
    /* Panel by panel, every row passes over it while it is in cache; one row takes two
       panels at a time, 2 * G independent FMA chains (one panel's G would wait on the FMA
       latency). */
    for (ptrdiff_t u = j0; u < j1;) {
        const T *panel = packed + u / VW * ps;
        ptrdiff_t r0 = 0;
        if (n == 1 && u + 3 * VW < j1) {
            STEP_TILE(1, 4);
            u += 4 * VW;
            continue;
        }
        if (n == 1 && u + VW < j1) {
            STEP_TILE(1, 2);
            u += 2 * VW;
            continue;
        }
        for (; r0 < n; r0 += 6) {
            switch (n - r0 >= 6 ? 6 : n - r0) {
            case 6: STEP_TILE(6, 1); break;
            case 5: STEP_TILE(5, 1); break;
            case 4: STEP_TILE(4, 1); break;
            case 3: STEP_TILE(3, 1); break;
            case 2: STEP_TILE(2, 1); break;
            default: STEP_TILE(1, 1); break;
            }
        }
        u += VW;
    }
}

#undef STEP_TILE

FASTRNN_CLONES
void NAME(fastrnn_lstm_step)(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t K,
                             const T *h_prev, const T *packed, const T *pre, const T *c_prev,
                             T *act, T *c, T *h)
{
    NAME(step)(CAT(STEP_LSTM, SFX), n, H, j0, j1, K, h_prev, packed, NULL, pre, c_prev, act, c,
               h);
}

FASTRNN_CLONES
void NAME(fastrnn_gru_step)(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1,
                            const T *h_prev, const T *packed, const T *b_hh, const T *pre,
                            T *act, T *h)
{
    NAME(step)(CAT(STEP_GRU, SFX), n, H, j0, j1, H, h_prev, packed, b_hh, pre, NULL, act, NULL,
               h);
}

#undef IS_LSTM
#undef VEC
#undef NAME
#undef CAT
#undef CAT_
