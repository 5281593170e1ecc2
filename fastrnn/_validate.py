"""The only code that inspects user input.

Everything below this module receives C-contiguous arrays of the model's float dtype with
checked shapes, and lengths as int64 within range. Errors name the argument and every shape
involved.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# BLAS takes 32-bit sizes: every matrix the kernels hand it must fit.
_BLAS_MAX = 2**31 - 1


def dtype_arg(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def probability(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _from_torch(value):
    """A torch tensor as a NumPy array, without importing torch (bfloat16 via float32)."""
    t = value.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()
    return t.numpy()


def float_array(name: str, value, dtype: np.dtype) -> np.ndarray:
    """Any real array-like (NumPy, lists, CPU torch tensors) as an array of `dtype`."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = _from_torch(value)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}") from exc
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"{name} must hold real numbers (float or int), got dtype {arr.dtype} "
            f"with shape {arr.shape}"
        )
    return np.ascontiguousarray(arr, dtype=dtype)


def sequence(x, input_size: int, batch_first: bool, dtype: np.dtype):
    """x as a time-major (T, B, I) contiguous array; also whether it had a batch axis."""
    arr = float_array("x", x, dtype)
    if arr.ndim == 2:  # unbatched (T, I), as PyTorch allows
        arr = arr[:, None, :]
        batched = False
    elif arr.ndim == 3:
        batched = True
        if batch_first:
            arr = np.ascontiguousarray(arr.transpose(1, 0, 2))
    else:
        layout = "(B, T, input_size)" if batch_first else "(T, B, input_size)"
        raise ValueError(
            f"x must have shape {layout} or (T, input_size), got {arr.ndim}-D shape {arr.shape}"
        )
    if arr.shape[2] != input_size:
        raise ValueError(
            f"x has {arr.shape[2]} features (shape {np.shape(x)}), "
            f"but the model's input_size is {input_size}"
        )
    return arr, batched


def state(name: str, value, shape: tuple, batched: bool, dtype: np.dtype) -> np.ndarray:
    """An initial state (or its gradient) of exactly `shape` (L*D, B, H); 2-D if unbatched."""
    arr = float_array(name, value, dtype)
    want = shape if batched else (shape[0], shape[2])
    if arr.shape != want:
        raise ValueError(
            f"{name} must have shape {want} (num_layers * num_directions, batch, hidden)"
            f"{'' if batched else ' for unbatched x'}, got {arr.shape}"
        )
    return arr if batched else np.ascontiguousarray(arr[:, None, :])


def lengths(value, batch: int, steps: int) -> np.ndarray | None:
    """Per-row sequence lengths as int64 (B,), each in [0, T]; None stays None."""
    if value is None:
        return None
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = _from_torch(value)
    arr = np.asarray(value)
    whole = arr.dtype.kind in "iu" or (
        arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr) & (arr == np.round(arr))))
    )
    if not whole:
        raise TypeError(
            f"lengths must be whole numbers, got dtype {arr.dtype} with shape {arr.shape}"
        )
    if arr.shape != (batch,):
        raise ValueError(
            f"lengths must have shape ({batch},) (one per batch row), got {arr.shape}"
        )
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if batch and (arr.min() < 0 or arr.max() > steps):
        raise ValueError(
            f"lengths must lie in [0, {steps}] (the sequence has T={steps} steps), "
            f"got values from {arr.min()} to {arr.max()}"
        )
    return arr


def gradient(name: str, value, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A gradient argument of exactly `shape`."""
    arr = float_array(name, value, dtype)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def blas_sizes(steps: int, batch: int, widths: tuple) -> None:
    """Refuse problems whose matrices would overflow BLAS's 32-bit sizes."""
    rows = steps * batch
    for w in widths:
        if rows * w > _BLAS_MAX or rows > _BLAS_MAX:
            raise ValueError(
                f"a sequence of T={steps}, batch={batch} with {w} features per row exceeds "
                f"the 2**31 - 1 elements BLAS can address; split the batch or the sequence"
            )


def parameter(name: str, value, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A weight for load_state_dict: a fresh contiguous copy of exactly `shape`."""
    arr = float_array(name, value, dtype)
    if arr.shape != shape:
        raise ValueError(f"state_dict entry {name!r} must have shape {shape}, got {arr.shape}")
    return np.array(arr, dtype=dtype, copy=True, order="C")
