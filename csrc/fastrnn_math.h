/*
 * fastrnn_math.h -- sigmoid and tanh that compilers vectorise, for float32.
 *
 * Why: scalar expf/tanhf calls cost about 65 ns per hidden unit per step in a prototype of
 * the LSTM and were its largest cost; these are branch-free arithmetic that GCC turns into
 * SIMD loops (SSE2 and, through target_clones in cells.c, AVX2/AVX-512) with IEEE semantics
 * (no -ffast-math).
 *
 * exp:  x = k ln2 + r, |r| <= ln2/2, k by the 1.5*2^23 rounding trick; e^r by a degree-7
 *       Taylor polynomial (truncation < 4e-9); 2^k built in the exponent bits.
 *       Above 87 the result is +inf and below -87 it is 0, so it is never denormal
 *       (sigmoid(x) is then 0 for x < -87, where the true value is below 1.7e-38).
 * sigmoid(x) = 1 / (1 + e^-x).
 * tanh: odd Taylor polynomial to x^13 for |x| < 0.4 (truncation < 2e-9 relative), else
 *       sign(x) (1 - 2 / (e^2|x| + 1)).
 * Measured over a dense sweep of [-30, 30] against float64 (tests/test_math.py): relative
 * error < 3e-7 for both. NaN in gives NaN out.
 *
 * float64 uses the C library's exp and tanh.
 */
#ifndef FASTRNN_MATH_H
#define FASTRNN_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float fastrnn_expf(float x_in)
{
    /* Comparisons, not fminf/fmaxf, so NaN passes through. */
    float x = x_in > 87.0f ? 87.0f : x_in;
    x = x < -87.0f ? -87.0f : x;
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = x * 1.44269504088896341f + shifter;
    float k = t - shifter;
    int32_t ti;
    memcpy(&ti, &t, sizeof ti);
    int32_t ki = ti - 0x4B400000; /* the integer k held in t's low mantissa bits */
    float r = x - k * 0.693145751953125f; /* ln2 split hi/lo: k*hi is exact */
    r = r - k * 1.42860682030941723212e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = (ki + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float e = p * scale;
    e = x_in > 87.0f ? INFINITY : e;
    return x_in < -87.0f ? 0.0f : e;
}

static inline float fastrnn_sigmoidf(float x)
{
    return 1.0f / (1.0f + fastrnn_expf(-x));
}

static inline float fastrnn_tanhf(float x)
{
    float ax = fabsf(x);
    /* large branch: 1 - 2/(e^{2|x|}+1); clamp keeps e finite (tanh(20) == 1 in float) */
    float a2 = ax > 20.0f ? 40.0f : 2.0f * ax;
    float big = 1.0f - 2.0f / (fastrnn_expf(a2) + 1.0f);
    big = copysignf(big, x);
    /* small branch: x - x^3/3 + 2x^5/15 - 17x^7/315 + 62x^9/2835 - 1382x^11/155925
       + 21844x^13/6081075 */
    float x2 = x * x;
    float q = 21844.0f / 6081075.0f;
    q = q * x2 - 1382.0f / 155925.0f;
    q = q * x2 + 62.0f / 2835.0f;
    q = q * x2 - 17.0f / 315.0f;
    q = q * x2 + 2.0f / 15.0f;
    q = q * x2 - 1.0f / 3.0f;
    float small = copysignf(x + x * x2 * q, x); /* keeps tanh(-0) == -0 */
    return ax < 0.4f ? small : big;
}

static inline double fastrnn_sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

#endif /* FASTRNN_MATH_H */
