/*
 * cells.c -- builds the step kernels of cells_impl.h for float and double, and the
 * denormal switch. FASTRNN_CLONES (run-time CPU dispatch): see fastrnn_dispatch.h.
 */
#include "fastrnn_cells.h"
#include "fastrnn_math.h"
#include "fastrnn_dispatch.h"

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
