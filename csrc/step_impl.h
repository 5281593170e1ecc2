/*
 * step_impl.h -- the fused batch-1 step of fastrnn_step.h, written once; step.c includes it
 * per float type with T, SFX, VW (lanes per vector), SIGMOID, TANH and FASTRNN_CLONES
 * defined. The packed layout (panels of PW = 4 vectors of columns, [panel][k][PW]) is
 * fastrnn_matmul.h's.
 */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(base) CAT(base, SFX)
#define VEC CAT(stepvec, SFX)
#define PW (4 * VW)

typedef T VEC __attribute__((vector_size(VW * sizeof(T)), aligned(sizeof(T))));

/* (L1) on one vector of columns of a gate, in place (the loop is one vector operation per
   function after vectorisation, the same code as the gates kernels' loops). always_inline:
   see fastrnn_math.h. */
static inline __attribute__((always_inline)) void NAME(activate)(T *v, int is_g)
{
    if (is_g) {
        for (int u = 0; u < VW; ++u)
            v[u] = TANH(v[u]);
    } else {
        for (int u = 0; u < VW; ++u)
            v[u] = SIGMOID(v[u]);
    }
}

/* acc[v] += sum over k = k0..k1-1 of h[k] * the panel's row k, vector v: the product's
   multiply-adds, in k order, on a panel of packed columns (row stride PW) */
static inline __attribute__((always_inline)) void NAME(panel_rows)(ptrdiff_t k0, ptrdiff_t k1,
                                                                   const T *restrict h,
                                                                   const T *restrict b,
                                                                   VEC *acc)
{
    for (ptrdiff_t k = k0; k < k1; ++k) {
        const T x = h[k];
        for (int v = 0; v < 4; ++v) {
            VEC w;
            memcpy(&w, b + k * PW + v * VW, sizeof(VEC));
            acc[v] += x * w;
        }
    }
}

FASTRNN_CLONES
void NAME(fastrnn_lstm_step_row)(ptrdiff_t H, ptrdiff_t K, const T *restrict h_prev,
                                 const T *restrict packed, ptrdiff_t panel_stride, int reverse,
                                 T *restrict pre, const T *restrict c_prev, T *restrict act,
                                 T *restrict c, T *restrict h)
{
    const ptrdiff_t panels = 4 * H / PW; /* whole: H is a multiple of VW */
    T *last = NULL;                      /* the previous panel's columns of pre */
    int last_g[4] = {0, 0, 0, 0};        /* which of its vectors are the g gate's */
    for (ptrdiff_t i = 0; i < panels; ++i) {
        const ptrdiff_t p = reverse ? panels - 1 - i : i;
        const T *b = packed + p * panel_stride;
        VEC acc[4] = {{0}, {0}, {0}, {0}};
        for (int q = 0; q < 4; ++q) {
            /* a quarter of the k loop, then one vector of the previous panel's activations,
               which the core runs while this loop's loads wait on L2 */
            NAME(panel_rows)(K * q / 4, K * (q + 1) / 4, h_prev, b, acc);
            if (last)
                NAME(activate)(last + q * VW, last_g[q]);
        }
        T *out = pre + p * PW;
        for (int v = 0; v < 4; ++v) { /* the sum over k, then + pre: fastrnn_small_gemm's */
            VEC old;
            memcpy(&old, out + v * VW, sizeof(VEC));
            VEC sum = acc[v] + old;
            memcpy(out + v * VW, &sum, sizeof(VEC));
            last_g[v] = (p * PW + v * VW) / H == 2;
        }
        last = out;
    }
    for (int v = 0; last && v < 4; ++v)
        NAME(activate)(last + v * VW, last_g[v]);
    /* (L2), (L3): fastrnn_lstm_gates_fwd's expressions */
    if (act)
        memcpy(act, pre, (size_t)(4 * H) * sizeof(T));
    for (ptrdiff_t j = 0; j < H; ++j) {
        T i = pre[j], f = pre[H + j], g = pre[2 * H + j], o = pre[3 * H + j];
        T cj = f * c_prev[j] + i * g; /* (L2) */
        c[j] = cj;
        h[j] = o * TANH(cj);          /* (L3) */
    }
}

/* (A1) on one vector of the r or z gate's columns, in place in x: fastrnn_gru_gates_fwd's
   expression */
static inline __attribute__((always_inline)) void NAME(gru_rz)(T *restrict x,
                                                                const T *restrict hh)
{
    for (int u = 0; u < VW; ++u)
        x[u] = SIGMOID(x[u] + hh[u]);
}

FASTRNN_CLONES
void NAME(fastrnn_gru_step_row)(ptrdiff_t H, ptrdiff_t K, const T *restrict h_prev,
                                const T *restrict packed, ptrdiff_t panel_stride, int reverse,
                                const T *restrict b_hh, T *restrict x, T *restrict hh,
                                T *restrict act, T *restrict h)
{
    const ptrdiff_t GH = 3 * H, panels = (GH + PW - 1) / PW; /* the last may be partial */
    ptrdiff_t last_col = 0; /* the previous panel's first column */
    int n_last = 0;         /* and how many of its vectors are r's or z's, to activate */
    for (ptrdiff_t i = 0; i < panels; ++i) {
        const ptrdiff_t p = reverse ? panels - 1 - i : i;
        const T *b = packed + p * panel_stride;
        VEC acc[4] = {{0}, {0}, {0}, {0}};
        for (int q = 0; q < 4; ++q) {
            /* a quarter of the k loop, then one vector of the previous panel's r and z */
            NAME(panel_rows)(K * q / 4, K * (q + 1) / 4, h_prev, b, acc);
            if (q < n_last)
                NAME(gru_rz)(x + last_col + q * VW, hh + last_col + q * VW);
        }
        const ptrdiff_t col0 = p * PW;
        const int valid = GH - col0 < PW ? (int)((GH - col0) / VW) : 4;
        for (int v = 0; v < valid; ++v) { /* hh = the sum over k + b_hh: the product's */
            VEC bias, sum;
            memcpy(&bias, b_hh + col0 + v * VW, sizeof(VEC));
            sum = acc[v] + bias;
            memcpy(hh + col0 + v * VW, &sum, sizeof(VEC));
        }
        /* the n gate's vectors wait for r (activated below, with h) */
        const ptrdiff_t rz = 2 * H - col0;
        last_col = col0;
        n_last = rz <= 0 ? 0 : rz < valid * VW ? (int)(rz / VW) : valid;
    }
    for (int v = 0; v < n_last; ++v)
        NAME(gru_rz)(x + last_col + v * VW, hh + last_col + v * VW);
    /* (A2), (A3): fastrnn_gru_gates_fwd's expressions */
    if (act) {
        for (ptrdiff_t j = 0; j < H; ++j) {
            T r = x[j], z = x[H + j];
            T nj = TANH(x[2 * H + j] + r * hh[2 * H + j]); /* (A2) */
            act[j] = r, act[H + j] = z, act[2 * H + j] = nj, act[3 * H + j] = hh[2 * H + j];
            h[j] = ((T)1 - z) * nj + z * h_prev[j];       /* (A3) */
        }
    } else {
        for (ptrdiff_t j = 0; j < H; ++j) {
            T r = x[j], z = x[H + j];
            T nj = TANH(x[2 * H + j] + r * hh[2 * H + j]); /* (A2) */
            h[j] = ((T)1 - z) * nj + z * h_prev[j];       /* (A3) */
        }
    }
}

#undef PW
#undef VEC
#undef NAME
#undef CAT
#undef CAT_
