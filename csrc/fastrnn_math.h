/*
 * fastrnn_math.h -- sigmoid and tanh that compilers vectorise, for float32.
 *
 * Why: scalar expf/tanhf calls cost about 65 ns per hidden unit per step in a prototype of
 * the LSTM and were its largest cost; these are branch-free arithmetic that GCC turns into
 * SIMD loops (SSE2 and, through target_clones in cells.c, AVX2/AVX-512) with IEEE semantics
 * (no -ffast-math).
 *
 * Both split z = k ln2 + r with k an integer (the 1.5*2^23 rounding trick) and
 * |r| <= ln2/2, build 2^k in the exponent bits and use Taylor polynomials to r^7 in r
 * (truncation < 1.5e-8 relative).
 * sigmoid(x) = 1 / (2^k e^r + 1) for -x = k ln2 + r: one rounding in the denominator; for
 *       x <= -88.4, 2^k overflows to +inf and the result is 0 (the true value is below
 *       4e-39), with no select.
 * tanh(x) = sign(x) (1 - e^-2|x|) / (1 + e^-2|x|) = -(2^k p + (2^k - 1)) / (2^k p + (2^k + 1))
 *       for -2|x| = k ln2 + r and p = e^r - 1 as r + r^2 (...), with |x| clamped to 9
 *       (tanh(9) is within 3.1e-8 of 1). The numerator, computed from p, keeps full
 *       relative accuracy at small |x|, where 1 - e^-2|x| would cancel, so no second branch
 *       is needed. tanh(+-0) = +-0, and tanh(t) = t for tiny t.
 * 16 lanes take about 18 cycles for either here; the previous tanh (exp, divide, and a
 * separate small-x polynomial, both branches computed) took 36. The polynomial work, not the
 * division, bounds them: with each division replaced by a multiply (wrong numbers, timed
 * only), the LSTM forward gate math (three sigmoids, two tanh) ran 21.4 instead of 24.0 ns
 * per 16 units of a row (2-core Xeon, in L1, one thread), so a reciprocal estimate with
 * Newton steps could save at most ~11% of it.
 * Against float64 over every third float32 of +-[1e-8, 10] (tanh) and +-[1e-8, 88]
 * (sigmoid): max relative error 1.67e-7 and 1.52e-7 (sigmoid where its value is above
 * 1e-30); tests/test_math.py checks the documented bound 3e-7 on a dense sweep, every float
 * near the clamps and k switches, and a sample of the whole range. NaN in gives NaN out.
 *
 * float64 uses the C library's exp and tanh.
 */
#ifndef FASTRNN_MATH_H
#define FASTRNN_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Inlined into each target_clones clone of the loops that use them: a function left out of
   line is compiled for the baseline target (no FMA, no vectors) and gives other numbers. */
#if defined(__GNUC__)
#define FASTRNN_MATH_INLINE static inline __attribute__((always_inline))
#else
#define FASTRNN_MATH_INLINE static inline
#endif

/* z = k ln2 + r (see above): returns r and sets *two_k = 2^k; needs -126 <= k <= 128
   (2^128 comes out as +inf), i.e. -87.3 <= z <= 88.7. */
FASTRNN_MATH_INLINE float fastrnn_reduce(float z, float *two_k)
{
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = z * 1.44269504088896341f + shifter;
    float k = t - shifter;
    int32_t ti;
    memcpy(&ti, &t, sizeof ti);
    int32_t bits = (ti - 0x4B400000 + 127) << 23; /* k sits in t's low mantissa bits */
    memcpy(two_k, &bits, sizeof *two_k);
    float r = z - k * 0.693145751953125f; /* ln2 split hi/lo: k*hi is exact */
    return r - k * 1.42860682030941723212e-6f;
}

/* (e^r - 1 - r) / r^2 = 1/2 + r/6 + ... + r^5/5040, the Taylor terms to r^7 */
FASTRNN_MATH_INLINE float fastrnn_exp_tail(float r)
{
    float q = 1.0f / 5040.0f;
    q = q * r + 1.0f / 720.0f;
    q = q * r + 1.0f / 120.0f;
    q = q * r + 1.0f / 24.0f;
    q = q * r + 1.0f / 6.0f;
    return q * r + 0.5f;
}

/* e^r - 1 = r + r^2 tail(r), with no cancellation near r = 0 (|r| <= ln2/2) */
FASTRNN_MATH_INLINE float fastrnn_expm1_small(float r)
{
    return r * r * fastrnn_exp_tail(r) + r;
}

/* e^r = (tail(r) r + 1) r + 1 (|r| <= ln2/2) */
FASTRNN_MATH_INLINE float fastrnn_exp_small(float r)
{
    return (fastrnn_exp_tail(r) * r + 1.0f) * r + 1.0f;
}

FASTRNN_MATH_INLINE float fastrnn_sigmoidf(float x)
{
    /* -x clamped to [-87, 88.7], by comparisons (not fminf/fmaxf) so NaN passes through.
       Past -x = 88.4, 2^k is +inf and so is the denominator: sigmoid(x) is 0 for
       x <= -88.4 (the true value is below 4e-39) without a select. */
    float z = -x;
    z = z > 88.7f ? 88.7f : z;
    z = z < -87.0f ? -87.0f : z;
    float two_k;
    float r = fastrnn_reduce(z, &two_k);
    return 1.0f / (two_k * fastrnn_exp_small(r) + 1.0f); /* e^-x = 2^k e^r */
}

FASTRNN_MATH_INLINE float fastrnn_tanhf(float x)
{
    float a = fabsf(x);
    a = a > 9.0f ? 9.0f : a;
    float two_k;
    float p = fastrnn_expm1_small(fastrnn_reduce(-2.0f * a, &two_k));
    float t = -(two_k * p + (two_k - 1.0f)) / (two_k * p + (two_k + 1.0f));
    return copysignf(t, x);
}

FASTRNN_MATH_INLINE double fastrnn_sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

#endif /* FASTRNN_MATH_H */
