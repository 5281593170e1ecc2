/*
 * matmul.c -- builds the small-batch GEMM of matmul_impl.h for float and double.
 * See cells.c for FASTRNN_CLONES.
 */
#include <string.h>

#include "fastrnn_matmul.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTRNN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTRNN_CLONES
#endif

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
