/*
 * matmul.c -- builds the small-batch GEMM of matmul_impl.h for float and double.
 * FASTRNN_CLONES (run-time CPU dispatch): see fastrnn_dispatch.h.
 */
#include <stdint.h>
#include <string.h>

#include "fastrnn_matmul.h"
#include "fastrnn_dispatch.h"


#define T float
#define TI int32_t
#define SFX f32
#define VW 16
#include "matmul_impl.h"
#undef T
#undef TI
#undef SFX
#undef VW

#define T double
#define TI int64_t
#define SFX f64
#define VW 8
#include "matmul_impl.h"
#undef T
#undef TI
#undef SFX
#undef VW
