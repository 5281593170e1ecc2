"""The extension list; all metadata lives in pyproject.toml."""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# FASTRNN_DEBUG=1 builds with Cython bounds checks on, for a full test run under checks.
debug = os.environ.get("FASTRNN_DEBUG", "") not in ("", "0")
directives = {"boundscheck": True, "wraparound": False} if debug else {}

extensions = [
    Extension(
        "fastrnn._kernels",
        sources=[
            "fastrnn/_kernels.pyx", "csrc/cells.c", "csrc/matmul.c", "csrc/step.c",
            "csrc/threads.c",
        ],  # fmt: skip
        include_dirs=["csrc", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=[
            "csrc/fastrnn_cells.h", "csrc/fastrnn_math.h", "csrc/cells_impl.h",
            "csrc/fastrnn_matmul.h", "csrc/matmul_impl.h", "csrc/fastrnn_threads.h",
            "csrc/fastrnn_dispatch.h", "csrc/fastrnn_step.h", "csrc/step_impl.h",
        ],  # fmt: skip
        # -fno-trapping-math lets GCC if-convert (and so vectorise) the activation selects;
        # values stay IEEE (no -ffast-math, no -march=native: wheels run on any x86-64).
        extra_compile_args=["-O3", "-fno-trapping-math", "-std=gnu11", "-pthread"],
        extra_link_args=["-pthread"],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, language_level=3))
