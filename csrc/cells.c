/*
 * cells.c -- builds the step kernels of cells_impl.h for float and double.
 *
 * FASTRNN_CLONES: GCC's target_clones compiles each kernel for AVX-512, AVX2+FMA and the
 * x86-64 baseline and picks one at load time, so wheels run on any x86-64 CPU without
 * -march=native. Elsewhere (other compilers, other architectures) it is empty.
 */
#include "fastrnn_cells.h"
#include "fastrnn_math.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <xmmintrin.h>
#define FASTRNN_FTZ_DAZ 0x8040u /* MXCSR flush-to-zero | denormals-are-zero */

unsigned fastrnn_denormals_flush(void)
{
    unsigned previous = _mm_getcsr();
    _mm_setcsr(previous | FASTRNN_FTZ_DAZ);
    return previous;
}

void fastrnn_denormals_restore(unsigned previous) { _mm_setcsr(previous); }
#else
unsigned fastrnn_denormals_flush(void) { return 0u; }
void fastrnn_denormals_restore(unsigned previous) { (void)previous; }
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTRNN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTRNN_CLONES
#endif

#define T float
#define SFX f32
#define SIGMOID(x) fastrnn_sigmoidf(x)
#define TANH(x) fastrnn_tanhf(x)
#include "cells_impl.h"
#undef T
#undef SFX
#undef SIGMOID
#undef TANH

#define T double
#define SFX f64
#define SIGMOID(x) fastrnn_sigmoid(x)
#define TANH(x) tanh(x)
#include "cells_impl.h"
#undef T
#undef SFX
#undef SIGMOID
#undef TANH
