/*
 * cells_impl.h -- the pointwise step kernels, written once; cells.c includes this file once
 * per float type with T, SFX, SIGMOID, TANH and FASTRNN_CLONES defined. Equation numbers refer
 * to the notation block of fastrnn_cells.h.
 */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(base) CAT(base, SFX)

FASTRNN_CLONES
void NAME(fastrnn_rnn_gates_fwd)(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, int relu,
                                  const T *restrict pre__bh, T *restrict h__bh)
{
    for (ptrdiff_t b = 0; b < n; ++b) {
        const T *restrict a = pre__bh + b * H;
        T *restrict h = h__bh + b * H;
        if (relu) {
            for (ptrdiff_t j = j0; j < j1; ++j)
                h[j] = a[j] > (T)0 ? a[j] : (T)0; /* (R1) */
        } else {
            for (ptrdiff_t j = j0; j < j1; ++j)
                h[j] = TANH(a[j]); /* (R1) */
        }
    }
}

FASTRNN_CLONES
void NAME(fastrnn_rnn_gates_bwd)(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, int relu,
                                  const T *restrict h__bh, const T *restrict dh__bh,
                                  T *restrict dpre__bh)
{
    for (ptrdiff_t b = 0; b < n; ++b) {
        const T *restrict h = h__bh + b * H, *restrict dh = dh__bh + b * H;
        T *restrict d = dpre__bh + b * H;
        if (relu) {
            for (ptrdiff_t j = j0; j < j1; ++j)
                d[j] = h[j] > (T)0 ? dh[j] : (T)0;
        } else {
            for (ptrdiff_t j = j0; j < j1; ++j)
                d[j] = dh[j] * ((T)1 - h[j] * h[j]);
        }
    }
}

FASTRNN_CLONES
void NAME(fastrnn_lstm_gates_fwd)(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, const T *restrict pre__bg,
                                   const T *restrict c_prev__bh, T *restrict act__bg, T *restrict c__bh, T *restrict h__bh)
{
    for (ptrdiff_t b = 0; b < n; ++b) {
        const T *restrict a = pre__bg + b * 4 * H;
        const T *restrict cp = c_prev__bh + b * H;
        T *restrict c = c__bh + b * H, *restrict h = h__bh + b * H;
        if (act__bg) {
            T *restrict s = act__bg + b * 4 * H;
            for (ptrdiff_t j = j0; j < j1; ++j) {
                T i = SIGMOID(a[j]), f = SIGMOID(a[H + j]);          /* (L1) */
                T g = TANH(a[2 * H + j]), o = SIGMOID(a[3 * H + j]);
                T cj = f * cp[j] + i * g;                               /* (L2) */
                s[j] = i, s[H + j] = f, s[2 * H + j] = g, s[3 * H + j] = o;
                c[j] = cj;
                h[j] = o * TANH(cj);                                    /* (L3) */
            }
        } else {
            for (ptrdiff_t j = j0; j < j1; ++j) {
                T i = SIGMOID(a[j]), f = SIGMOID(a[H + j]);          /* (L1) */
                T g = TANH(a[2 * H + j]), o = SIGMOID(a[3 * H + j]);
                T cj = f * cp[j] + i * g;                               /* (L2) */
                c[j] = cj;
                h[j] = o * TANH(cj);                                    /* (L3) */
            }
        }
    }
}

FASTRNN_CLONES
void NAME(fastrnn_lstm_gates_bwd)(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, const T *restrict act__bg,
                                   const T *restrict c_prev__bh, const T *restrict c__bh, const T *restrict dh__bh,
                                   T *restrict dc__bh, T *restrict dpre__bg)
{
    for (ptrdiff_t b = 0; b < n; ++b) {
        const T *restrict s = act__bg + b * 4 * H;
        const T *restrict cp = c_prev__bh + b * H, *restrict c = c__bh + b * H, *restrict dh = dh__bh + b * H;
        T *restrict dc = dc__bh + b * H, *restrict d = dpre__bg + b * 4 * H;
        for (ptrdiff_t j = j0; j < j1; ++j) {
            T i = s[j], f = s[H + j], g = s[2 * H + j], o = s[3 * H + j];
            T tc = TANH(c[j]);
            T dcj = dc[j] + dh[j] * o * ((T)1 - tc * tc);  /* (L3) into c */
            d[j] = dcj * g * i * ((T)1 - i);               /* (L2), (L1) */
            d[H + j] = dcj * cp[j] * f * ((T)1 - f);
            d[2 * H + j] = dcj * i * ((T)1 - g * g);
            d[3 * H + j] = dh[j] * tc * o * ((T)1 - o);    /* (L3) into o */
            dc[j] = dcj * f;                               /* (L2) into c_prev */
        }
    }
}

FASTRNN_CLONES
void NAME(fastrnn_gru_gates_fwd)(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, const T *restrict x__bg, const T *restrict hh__bg,
                                  const T *restrict h_prev__bh, T *restrict act__bg, T *restrict h__bh)
{
    for (ptrdiff_t b = 0; b < n; ++b) {
        const T *restrict x = x__bg + b * 3 * H, *restrict hh = hh__bg + b * 3 * H;
        const T *restrict hp = h_prev__bh + b * H;
        T *restrict h = h__bh + b * H;
        if (act__bg) {
            T *restrict s = act__bg + b * 4 * H;
            for (ptrdiff_t j = j0; j < j1; ++j) {
                T r = SIGMOID(x[j] + hh[j]);                   /* (A1) */
                T z = SIGMOID(x[H + j] + hh[H + j]);
                T nj = TANH(x[2 * H + j] + r * hh[2 * H + j]); /* (A2) */
                s[j] = r, s[H + j] = z, s[2 * H + j] = nj, s[3 * H + j] = hh[2 * H + j];
                h[j] = ((T)1 - z) * nj + z * hp[j];           /* (A3) */
            }
        } else {
            for (ptrdiff_t j = j0; j < j1; ++j) {
                T r = SIGMOID(x[j] + hh[j]);                   /* (A1) */
                T z = SIGMOID(x[H + j] + hh[H + j]);
                T nj = TANH(x[2 * H + j] + r * hh[2 * H + j]); /* (A2) */
                h[j] = ((T)1 - z) * nj + z * hp[j];           /* (A3) */
            }
        }
    }
}

FASTRNN_CLONES
void NAME(fastrnn_gru_gates_bwd)(ptrdiff_t n, ptrdiff_t H, ptrdiff_t j0, ptrdiff_t j1, const T *restrict act__bg,
                                  const T *restrict h_prev__bh, const T *restrict dh__bh, T *restrict dx__bg,
                                  T *restrict dhn__bh, T *restrict dh_prev__bh)
{
    for (ptrdiff_t b = 0; b < n; ++b) {
        const T *restrict s = act__bg + b * 4 * H;
        const T *restrict hp = h_prev__bh + b * H, *restrict dh = dh__bh + b * H;
        T *restrict dx = dx__bg + b * 3 * H, *restrict dhn = dhn__bh + b * H;
        T *restrict dhp = dh_prev__bh + b * H;
        for (ptrdiff_t j = j0; j < j1; ++j) {
            T r = s[j], z = s[H + j], nj = s[2 * H + j], hn = s[3 * H + j];
            T dn = dh[j] * ((T)1 - z) * ((T)1 - nj * nj);  /* (A3), (A2) */
            T dz = dh[j] * (hp[j] - nj) * z * ((T)1 - z);   /* (A3), (A1) */
            T dr = dn * hn * r * ((T)1 - r);                /* (A2), (A1) */
            dx[j] = dr, dx[H + j] = dz, dx[2 * H + j] = dn;
            dhn[j] = dn * r; /* hh_r, hh_z get dr, dz as x_r, x_z do; hh_n gets dn * r */
            dhp[j] = dh[j] * z;                             /* (A3) direct path */
        }
    }
}

FASTRNN_CLONES
void NAME(fastrnn_grub_rz_fwd)(ptrdiff_t n, ptrdiff_t H, const T *restrict pre__bg,
                                const T *restrict h_prev__bh, T *restrict act__bg, T *restrict rh__bh)
{
    for (ptrdiff_t b = 0; b < n; ++b) {
        const T *restrict a = pre__bg + b * 3 * H, *restrict hp = h_prev__bh + b * H;
        T *restrict s = act__bg + b * 4 * H, *restrict rh = rh__bh + b * H;
        for (ptrdiff_t j = 0; j < H; ++j) {
            T r = SIGMOID(a[j]);                           /* (B1) */
            s[j] = r;
            s[H + j] = SIGMOID(a[H + j]);
            rh[j] = r * hp[j];
            s[3 * H + j] = rh[j];
        }
    }
}

FASTRNN_CLONES
void NAME(fastrnn_grub_n_fwd)(ptrdiff_t n, ptrdiff_t H, const T *restrict pre__bg,
                               const T *restrict h_prev__bh, T *restrict act__bg, T *restrict h__bh)
{
    for (ptrdiff_t b = 0; b < n; ++b) {
        const T *restrict a = pre__bg + b * 3 * H, *restrict hp = h_prev__bh + b * H;
        T *restrict s = act__bg + b * 4 * H, *restrict h = h__bh + b * H;
        for (ptrdiff_t j = 0; j < H; ++j) {
            T nj = TANH(a[2 * H + j]);                     /* (B2) */
            T z = s[H + j];
            s[2 * H + j] = nj;
            h[j] = ((T)1 - z) * nj + z * hp[j];           /* (B3) */
        }
    }
}

FASTRNN_CLONES
void NAME(fastrnn_grub_n_bwd)(ptrdiff_t n, ptrdiff_t H, const T *restrict act__bg,
                               const T *restrict h_prev__bh, const T *restrict dh__bh, T *restrict dpre__bg,
                               T *restrict dh_prev__bh)
{
    for (ptrdiff_t b = 0; b < n; ++b) {
        const T *restrict s = act__bg + b * 4 * H, *restrict hp = h_prev__bh + b * H, *restrict dh = dh__bh + b * H;
        T *restrict d = dpre__bg + b * 3 * H, *restrict dhp = dh_prev__bh + b * H;
        for (ptrdiff_t j = 0; j < H; ++j) {
            T z = s[H + j], nj = s[2 * H + j];
            d[2 * H + j] = dh[j] * ((T)1 - z) * ((T)1 - nj * nj); /* (B3), (B2) */
            d[H + j] = dh[j] * (hp[j] - nj) * z * ((T)1 - z);     /* (B3), (B1) */
            dhp[j] = dh[j] * z;                                   /* (B3) direct path */
        }
    }
}

FASTRNN_CLONES
void NAME(fastrnn_grub_rz_bwd)(ptrdiff_t n, ptrdiff_t H, const T *restrict act__bg,
                                const T *restrict h_prev__bh, const T *restrict drh__bh, T *restrict dpre__bg,
                                T *restrict dh_prev__bh)
{
    for (ptrdiff_t b = 0; b < n; ++b) {
        const T *restrict s = act__bg + b * 4 * H, *restrict hp = h_prev__bh + b * H, *restrict drh = drh__bh + b * H;
        T *restrict d = dpre__bg + b * 3 * H, *restrict dhp = dh_prev__bh + b * H;
        for (ptrdiff_t j = 0; j < H; ++j) {
            T r = s[j];
            d[j] = drh[j] * hp[j] * r * ((T)1 - r);        /* (B1) rh = r * h_prev */
            dhp[j] += drh[j] * r;
        }
    }
}

FASTRNN_CLONES
void NAME(fastrnn_sigmoid)(ptrdiff_t n, const T *restrict x, T *restrict y)
{
    for (ptrdiff_t k = 0; k < n; ++k)
        y[k] = SIGMOID(x[k]);
}

FASTRNN_CLONES
void NAME(fastrnn_tanh)(ptrdiff_t n, const T *restrict x, T *restrict y)
{
    for (ptrdiff_t k = 0; k < n; ++k)
        y[k] = TANH(x[k]);
}

#undef NAME
#undef CAT
#undef CAT_
