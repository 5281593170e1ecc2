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
        ptrdiff_t k = 0;
        for (int q = 0; q < 4; ++q) {
            /* a quarter of the k loop, then one vector of the previous panel's activations,
               which the core runs while this loop's loads wait on L2 */
            for (const ptrdiff_t k1 = K * (q + 1) / 4; k < k1; ++k) {
                const T x = h_prev[k];
                for (int v = 0; v < 4; ++v) {
                    VEC w;
                    memcpy(&w, b + k * PW + v * VW, sizeof(VEC));
                    acc[v] += x * w;
                }
            }
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

#undef PW
#undef VEC
#undef NAME
#undef CAT
#undef CAT_
