/*
 * fastrnn_dispatch.h -- run-time CPU dispatch for the kernels.
 *
 * FASTRNN_CLONES: GCC's target_clones compiles a kernel for AVX-512 (x86-64-v4), AVX2+FMA
 * (x86-64-v3) and the x86-64 baseline, and picks one at load time, so wheels run on any
 * x86-64 CPU without -march=native. Elsewhere (other compilers, other architectures) it is
 * empty and the compiler's own target applies.
 */
#ifndef FASTRNN_DISPATCH_H
#define FASTRNN_DISPATCH_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTRNN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTRNN_CLONES
#endif

#endif /* FASTRNN_DISPATCH_H */
