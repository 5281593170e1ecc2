"""Saving and loading models: one NumPy ``.npz`` file, no pickle.

File format (version 1)
-----------------------
An uncompressed NumPy ``.npz`` archive (a zip of ``.npy`` files, as ``np.savez`` writes) with:

- one array per parameter, under its ``state_dict()`` name (``weight_ih_l0``,
  ``bias_hh_l1_reverse``, ...), in the model's dtype and PyTorch's shape;
- one entry ``__fastrnn__``: a 1-D ``uint8`` array holding the UTF-8 bytes of a JSON object::

      {"format": "fastrnn", "version": 1, "class": "LSTM",
       "config": {"input_size": 8, "hidden_size": 16, ...},
       "dtype": "float32",
       "parameters": {"weight_ih_l0": [64, 8], ...}}

  ``class`` is ``"RNN"``, ``"LSTM"`` or ``"GRU"``; ``config`` is the model's ``_config()``
  (every constructor argument except ``dtype`` and ``seed``); ``parameters`` maps every
  parameter array's name to its shape. Every array has dtype ``dtype``.

Nothing in the file is pickled and ``load`` reads it with ``allow_pickle=False``, so the
file can come from an untrusted source. Any NumPy can read it:
``json.loads(np.load(path)["__fastrnn__"].tobytes())``.

``save`` writes atomically: into a temporary file ``.<name>.<random>.tmp`` in the target's
directory, flushed and fsync'ed, then renamed onto the target. If saving fails the temporary
file is removed and a previous file at the target is left as it was (a process killed
mid-save may leave the temporary file behind, never a half-written target). The path is
used exactly as given: no ``.npz`` suffix is appended.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from ._models import GRU, LSTM, RNN, RecurrentModel

FORMAT = "fastrnn"
VERSION = 1
METADATA_KEY = "__fastrnn__"
MODEL_CLASSES = {cls.__name__: cls for cls in (RNN, LSTM, GRU)}
_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def _write_npz(file, arrays: dict) -> None:
    """Write `arrays` as an uncompressed .npz into an open binary file (tests patch this)."""
    np.savez(file, allow_pickle=False, **arrays)


def _umask() -> int:
    """The process umask, to give the saved file the mode a plain open() would."""
    try:  # Linux: read it without changing it
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(model, path) -> None:
    """Save `model` (fastrnn RNN, LSTM or GRU) to `path` (str or os.PathLike), atomically.

    The file holds the constructor arguments, the dtype and every parameter exactly; see
    the module docstring for the format. The path is used as given (no suffix is added).
    """
    cls_name = type(model).__name__
    if not isinstance(model, RecurrentModel) or MODEL_CLASSES.get(cls_name) is not type(model):
        raise TypeError(
            f"save expects a fastrnn RNN, LSTM or GRU, got {type(model).__module__}."
            f"{type(model).__qualname__}"
        )
    path = os.fspath(path)
    arrays = model.state_dict()
    if METADATA_KEY in arrays:  # cannot happen with PyTorch's names; guard the format
        raise ValueError(f"a parameter is named {METADATA_KEY!r}, which the format reserves")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "class": cls_name,
        "config": model._config(),
        "dtype": model.dtype.name,
        "parameters": {name: list(value.shape) for name, value in arrays.items()},
    }
    # Everything that can fail on the model's side fails here, before the disk is touched.
    text = json.dumps(meta, allow_nan=False)
    arrays[METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    tmp = tempfile.NamedTemporaryFile(
        mode="w+b", prefix=f".{base}.", suffix=".tmp", dir=directory, delete=False
    )
    try:
        with tmp:
            _write_npz(tmp, arrays)
            tmp.flush()
            os.fsync(tmp.fileno())
        # NamedTemporaryFile creates 0600; give the file the mode open() would have.
        os.chmod(tmp.name, 0o666 & ~_umask())
        os.replace(tmp.name, path)
    except BaseException:
        try:
            os.unlink(tmp.name)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _bad(path: str, problem: str) -> ValueError:
    return ValueError(f"cannot load fastrnn model from {path!r}: {problem}")


def _read_metadata(npz, path: str) -> dict:
    if METADATA_KEY not in npz.files:
        raise _bad(
            path,
            f"no {METADATA_KEY!r} metadata entry (not a file written by fastrnn.save); "
            f"it holds {sorted(npz.files)}",
        )
    try:
        raw = npz[METADATA_KEY]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _bad(path, f"the {METADATA_KEY!r} entry cannot be read ({exc})") from exc
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _bad(
            path,
            f"the {METADATA_KEY!r} entry must be a 1-D uint8 array of UTF-8 JSON, "
            f"got dtype {raw.dtype} with shape {raw.shape}",
        )
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _bad(path, f"the {METADATA_KEY!r} metadata is not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise _bad(path, f"the metadata must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise _bad(path, f"unknown format {meta.get('format')!r} (expected {FORMAT!r})")
    version = meta.get("version")
    if type(version) is not int or version != VERSION:
        newer = " (written by a newer fastrnn?)" if type(version) is int and version > 1 else ""
        raise _bad(
            path, f"unsupported format version {version!r}{newer}; this fastrnn reads {VERSION}"
        )
    for key, kind in (("class", str), ("config", dict), ("dtype", str), ("parameters", dict)):
        if not isinstance(meta.get(key), kind):
            raise _bad(
                path,
                f"metadata field {key!r} must be a JSON {kind.__name__}, got {meta.get(key)!r}",
            )
    if meta["class"] not in MODEL_CLASSES:
        raise _bad(
            path, f"unknown model class {meta['class']!r} (expected one of {list(MODEL_CLASSES)})"
        )
    if meta["dtype"] not in _DTYPES:
        raise _bad(path, f"unsupported dtype {meta['dtype']!r} (expected float32 or float64)")
    return meta


def _build(meta: dict, path: str):
    """The model the metadata describes, with its freshly initialised parameters."""
    cls = MODEL_CLASSES[meta["class"]]
    try:
        return cls(**meta["config"], dtype=_DTYPES[meta["dtype"]])
    except (TypeError, ValueError) as exc:
        raise _bad(
            path, f"{meta['class']} rejects the saved config {meta['config']!r}: {exc}"
        ) from exc


def _check_names(have, want, what: str, path: str) -> None:
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise _bad(path, f"{what}: missing {missing}, unexpected {extra}")


def _array_header(npz, name: str, path: str):
    """(dtype, shape) from a member's .npy header, or None if it is not a v1/v2 .npy member."""
    fmt = np.lib.format
    try:
        with npz.zip.open(name + ".npy") as member:
            version = fmt.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(member)
            else:
                return None  # np.load reads (and checks) it below
    except KeyError:
        return None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _bad(path, f"parameter {name!r} cannot be read ({exc})") from exc
    return dtype, shape


def _check_array(name, dtype, shape, want_dtype, want_shape, path) -> None:
    # Byte order does not matter: load_state_dict converts exactly to the native order.
    if dtype.newbyteorder("=") != want_dtype or list(shape) != want_shape:
        raise _bad(
            path,
            f"parameter {name!r} has dtype {dtype} and shape {list(shape)}, "
            f"but the metadata says {want_dtype.name} and {want_shape}",
        )


def load(path):
    """Load a model written by `save`: same class, configuration, dtype and exact parameters.

    Raises FileNotFoundError if `path` does not exist and ValueError, naming the file and
    the problem, if it is not a valid fastrnn model file.
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        try:
            npz = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise _bad(path, f"not an .npz (zip) archive, or a damaged one ({exc})") from exc
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise _bad(path, "it holds a single .npy array, not an .npz archive")
        with npz:
            meta = _read_metadata(npz, path)
            model = _build(meta, path)
            dtype = _DTYPES[meta["dtype"]]
            shapes = meta["parameters"]
            expected = {name: value.shape for name, value in model.state_dict().items()}
            mismatch = f"the metadata's parameters do not match {model!r}"
            _check_names(shapes, expected, mismatch, path)
            for name, want in expected.items():
                if shapes[name] != list(want):
                    raise _bad(
                        path,
                        f"the metadata gives parameter {name!r} shape {shapes[name]}, "
                        f"but {model!r} has shape {list(want)}",
                    )
            stored = [name for name in npz.files if name != METADATA_KEY]
            _check_names(stored, shapes, "the parameter arrays do not match the metadata", path)
            params = {}
            for name in expected:
                # The header first: a damaged or hostile header must not size an allocation.
                header = _array_header(npz, name, path)
                if header is not None:
                    _check_array(name, *header, dtype, shapes[name], path)
                try:
                    value = npz[name]
                except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                    raise _bad(path, f"parameter {name!r} cannot be read ({exc})") from exc
                _check_array(name, value.dtype, value.shape, dtype, shapes[name], path)
                params[name] = value
    model.load_state_dict(params)
    return model
