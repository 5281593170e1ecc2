/*
 * matmul.c -- builds the small-batch GEMM of matmul_impl.h for float and double.
 * FASTRNN_CLONES (run-time CPU dispatch): see fastrnn_dispatch.h.
 */
#include <string.h>

#include "fastrnn_matmul.h"
#include "fastrnn_dispatch.h"


#define T float
#define SFX f32
#define VW 16
#include "matmul_impl.h"
#undef T
#undef SFX
#undef VW

#define T double
#define SFX f64
#define VW 8
#include "matmul_impl.h"
#undef T
#undef SFX
#undef VW
