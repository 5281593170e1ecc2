"""Accuracy of the kernels' own activations, fastrnn._kernels.sigmoid and tanh.

float32 uses the polynomial approximations of csrc/fastrnn_math.h, documented as relative
error below 3e-7; float64 uses the C library. The truth is float64 NumPy on the same inputs.
"""

import numpy as np
import pytest

from fastrnn import _kernels

F32_REL_BOUND = 3e-7  # documented in csrc/fastrnn_math.h and csrc/fastrnn_cells.h
F64_REL_BOUND = 1e-15
SIGMOID_FLOOR = 1e-30  # below this the float32 sigmoid's relative error is not promised


def true_sigmoid(x):
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def kernel(fn, x):
    x = np.ascontiguousarray(x)
    out = np.full_like(x, 12345.0)  # never a plausible result
    getattr(_kernels, fn)(x, out)
    return out


def dense_sweep():
    """2 million points spread over [-30, 30], as float32."""
    return np.linspace(-30.0, 30.0, 2_000_001).astype(np.float32)


def every_float32_between(lo, hi):
    """Every float32 in [lo, hi] for 0 <= lo < hi (their bit patterns are consecutive)."""
    a, b = np.array([lo, hi], np.float32).view(np.uint32)
    return np.arange(a, b + 1, dtype=np.uint32).view(np.float32)


def full_range_sample(n=2_000_000, seed=0):
    """Random finite float32 bit patterns: every exponent, both signs, denormals."""
    bits = np.random.default_rng(seed).integers(0, 2**32, size=n, dtype=np.uint64)
    x = bits.astype(np.uint32).view(np.float32)
    return x[np.isfinite(x)]


# Windows around the branches and clamps of fastrnn_math.h: every float32 in them, both signs
# (a few hundred thousand points each).
BRANCH_WINDOWS = {
    "tanh-first-k-switch": (0.170, 0.177),  # |2x| = ln2/2: the reduction's k leaves 0
    "sigmoid-first-k-switch": (0.342, 0.351),  # |x| = ln2/2
    "tanh-clamp-9": (8.95, 9.05),
    "tanh-0.4": (0.395, 0.405),  # an earlier version's branch point
    "tanh-20": (19.9, 20.1),
    "exp-2x": (43.0, 44.5),
    "exp-clamp-87-88": (86.5, 88.5),
}
POINT_SETS = ["sweep-30-30", "full-range", *BRANCH_WINDOWS]


def points(name):
    if name == "sweep-30-30":
        return dense_sweep()
    if name == "full-range":
        return full_range_sample()
    x = every_float32_between(*BRANCH_WINDOWS[name])
    return np.concatenate([x, -x])


def max_rel_error(got, true, where):
    got64 = got.astype(np.float64)
    rel = np.abs(got64[where] - true[where]) / np.abs(true[where])
    return (rel.max() if rel.size else 0.0), rel


def assert_rel_bound(name, x, got, true, where, bound):
    worst, rel = max_rel_error(got, true, where)
    if worst >= bound:
        k = np.argmax(rel)
        xs = x[where][k]
        raise AssertionError(
            f"{name}: max relative error {worst:.3e} >= {bound:.1e} at x = {xs!r} "
            f"(got {got[where][k]!r}, true {true[where][k]!r})"
        )


@pytest.mark.parametrize("point_set", POINT_SETS)
def test_float32_sigmoid_relative_error(point_set):
    x = points(point_set)
    got = kernel("sigmoid", x)
    true = true_sigmoid(x)
    assert_rel_bound("sigmoid", x, got, true, true > SIGMOID_FLOOR, F32_REL_BOUND)
    # below the floor it still must not blow up: in [0, 1e-30]
    small = true <= SIGMOID_FLOOR
    assert np.all((got[small] >= 0) & (got[small] <= SIGMOID_FLOOR))


@pytest.mark.parametrize("point_set", POINT_SETS)
def test_float32_tanh_relative_error(point_set):
    x = points(point_set)
    got = kernel("tanh", x)
    true = np.tanh(x.astype(np.float64))
    assert_rel_bound("tanh", x, got, true, true != 0, F32_REL_BOUND)
    assert np.all(got[true == 0] == 0)  # tanh(0) is exactly 0
    assert np.all(np.abs(got) <= 1)


TINY = [1e-45, 1e-40, 1.1754944e-38, 1e-30, 1e-20, 1e-10]  # denormals, smallest normal, ...


@pytest.mark.parametrize("fn", ["sigmoid", "tanh"])
def test_float32_special_values(fn):
    tiny = np.array(TINY + [-t for t in TINY], np.float32)
    x = np.concatenate([[0.0, -0.0], tiny]).astype(np.float32)
    got = kernel(fn, x)
    if fn == "sigmoid":
        np.testing.assert_array_equal(got, np.float32(0.5))  # sigmoid(tiny) rounds to 1/2
    else:
        assert got[0] == 0 and got[1] == 0  # exactly zero for +-0
        np.testing.assert_array_equal(got[2:], x[2:])  # tanh(t) == t at these magnitudes
        assert np.all(np.signbit(got[2:]) == np.signbit(x[2:]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("fn", ["sigmoid", "tanh"])
def test_nan_gives_nan(fn, dtype):
    x = np.array([np.nan, -np.nan, 1.0, np.nan], dtype)
    got = kernel(fn, x)
    assert np.all(np.isnan(got[[0, 1, 3]]))
    assert np.isfinite(got[2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_tanh_infinities(dtype):
    got = kernel("tanh", np.array([np.inf, -np.inf], dtype))
    np.testing.assert_array_equal(got, [1.0, -1.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_sigmoid_plus_infinity_is_one(dtype):
    got = kernel("sigmoid", np.array([np.inf, 1e30, np.finfo(dtype).max], dtype))
    np.testing.assert_array_equal(got, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_sigmoid_minus_infinity_is_zero(dtype):
    """The limit, exactly: sigmoid(-inf) = 0 (as np and torch.sigmoid give)."""
    got = kernel("sigmoid", np.array([-np.inf, -np.finfo(dtype).max], dtype))
    np.testing.assert_array_equal(got, [0.0, 0.0])


def test_float64_matches_numpy():
    x = np.concatenate([np.linspace(-30.0, 30.0, 200_001), np.linspace(-700.0, 700.0, 20_001)])
    t = kernel("tanh", x)
    true_t = np.tanh(x)
    nz = true_t != 0
    np.testing.assert_allclose(t[nz], true_t[nz], rtol=F64_REL_BOUND, atol=0)
    assert np.all(t[~nz] == 0)
    s = kernel("sigmoid", x)
    true_s = true_sigmoid(x)
    pos = true_s > 0
    np.testing.assert_allclose(s[pos], true_s[pos], rtol=F64_REL_BOUND, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("fn", ["sigmoid", "tanh"])
def test_empty_input(fn, dtype):
    empty = np.empty(0, dtype)
    getattr(_kernels, fn)(empty, np.empty(0, dtype))  # nothing to do, and no crash
