/*
 * step.c -- builds the fused batch-1 step of step_impl.h for float and double, with the
 * activations of cells.c. FASTRNN_CLONES (run-time CPU dispatch): see fastrnn_dispatch.h.
 */
#include <string.h>

#include "fastrnn_step.h"
#include "fastrnn_math.h"
#include "fastrnn_dispatch.h"


#define T float
#define SFX f32
#define VW 16
#define SIGMOID(x) fastrnn_sigmoidf(x)
#define TANH(x) fastrnn_tanhf(x)
#include "step_impl.h"
#undef T
#undef SFX
#undef VW
#undef SIGMOID
#undef TANH

#define T double
#define SFX f64
#define VW 8
#define SIGMOID(x) fastrnn_sigmoid(x)
#define TANH(x) tanh(x)
#include "step_impl.h"
#undef T
#undef SFX
#undef VW
#undef SIGMOID
#undef TANH
