"""fastrnn.save / fastrnn.load: exact round trips, atomic writes, and every bad-file error."""

import io
import json
import os
import re
import shutil
import stat
import zipfile

import numpy as np
import pytest

import fastrnn
from fastrnn import _io

CELLS = {
    "rnn_tanh": lambda **kw: fastrnn.RNN(**kw),
    "rnn_relu": lambda **kw: fastrnn.RNN(nonlinearity="relu", **kw),
    "lstm": lambda **kw: fastrnn.LSTM(**kw),
    "lstm_proj": lambda **kw: fastrnn.LSTM(proj_size=2, **kw),
    "gru": lambda **kw: fastrnn.GRU(**kw),
    "gru_reset_before": lambda **kw: fastrnn.GRU(reset_after=False, **kw),
}
CONFIGS = {
    "plain": {},
    "stacked_bidirectional": {"num_layers": 2, "bidirectional": True},
    "no_bias_batch_first_dropout": {
        "num_layers": 2,
        "bias": False,
        "batch_first": True,
        "dropout": 0.25,
    },
}


def bits(a):
    """The exact bytes of an array, with its dtype and shape."""
    return a.dtype.str, a.shape, a.tobytes()


def make(cell="lstm", dtype=np.float32, **kw):
    return CELLS[cell](input_size=3, hidden_size=5, dtype=dtype, seed=7, **kw)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", CELLS)
def test_round_trip_is_exact(tmp_path, cell, dtype, config):
    model = make(cell, dtype, **CONFIGS[config])
    path = tmp_path / "model.npz"
    fastrnn.save(model, path)
    loaded = fastrnn.load(path)

    assert type(loaded) is type(model)
    assert loaded._config() == model._config()
    assert loaded.dtype == model.dtype
    want, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert bits(got[name]) == bits(want[name]), name

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 3) if not model.batch_first else (2, 4, 3))
    y, state = model(x)
    y2, state2 = loaded(x)
    assert bits(y2) == bits(y)
    lstm = isinstance(state, tuple)
    states, states2 = (state, state2) if lstm else ((state,), (state2,))
    for s, s2 in zip(states, states2, strict=True):
        assert bits(s2) == bits(s)


def test_file_layout_is_plain_npz_with_json_metadata(tmp_path):
    model = make("gru", np.float64, num_layers=2)
    path = tmp_path / "m.npz"
    fastrnn.save(model, path)
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(npz["__fastrnn__"].tobytes().decode("utf-8"))
        assert npz["__fastrnn__"].dtype == np.uint8
        assert set(npz.files) == {"__fastrnn__", *model.state_dict()}
    assert meta == {
        "format": "fastrnn",
        "version": 1,
        "class": "GRU",
        "config": model._config(),
        "dtype": "float64",
        "parameters": {k: list(v.shape) for k, v in model.state_dict().items()},
    }


def test_path_is_used_as_given_str_or_pathlike(tmp_path):
    model = make()
    for path in (tmp_path / "weights.bin", str(tmp_path / "noext")):
        fastrnn.save(model, path)
        assert os.path.isfile(path)
        assert bits(fastrnn.load(path).state_dict()["weight_hh_l0"]) == bits(
            model.state_dict()["weight_hh_l0"]
        )
    assert sorted(os.listdir(tmp_path)) == ["noext", "weights.bin"]


def test_save_overwrites_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "m.npz"
    fastrnn.save(make("lstm", np.float32), path)
    fastrnn.save(make("lstm", np.float64), path)
    assert fastrnn.load(path).dtype == np.float64
    assert os.listdir(tmp_path) == ["m.npz"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_file_gets_the_mode_open_would_give(tmp_path):
    path = tmp_path / "m.npz"
    fastrnn.save(make(), path)
    (tmp_path / "plain").write_bytes(b"")
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)


@pytest.mark.parametrize("target", ["writer", "np.savez"])
def test_crash_mid_save_keeps_previous_file(tmp_path, monkeypatch, target):
    path = tmp_path / "m.npz"
    fastrnn.save(make("rnn_tanh"), path)
    before = path.read_bytes()

    def crash(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip")  # some bytes reach the temporary file
        raise OSError("No space left on device")

    if target == "writer":
        monkeypatch.setattr(_io, "_write_npz", crash)
    else:
        monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="No space left"):
        fastrnn.save(make("lstm", np.float64), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]
    assert type(fastrnn.load(path)) is fastrnn.RNN


def test_failed_rename_removes_temporary_file(tmp_path):
    target = tmp_path / "a_directory"
    target.mkdir()
    with pytest.raises(OSError):
        fastrnn.save(make(), target)
    assert os.listdir(tmp_path) == ["a_directory"]


def test_save_rejects_non_models(tmp_path):
    with pytest.raises(
        TypeError, match="save expects a fastrnn RNN, LSTM or GRU, got builtins.dict"
    ):
        fastrnn.save({}, tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


# -- bad files ------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    """A valid file, its metadata and its arrays, for crafting damaged copies."""
    path = tmp_path / "good.npz"
    fastrnn.save(make("lstm", np.float32), path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "__fastrnn__"}
        meta = json.loads(npz["__fastrnn__"].tobytes())
    return path, meta, arrays


def write(path, meta, arrays, raw_meta=None):
    if raw_meta is None and meta is not None:
        raw_meta = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    extra = {} if raw_meta is None else {"__fastrnn__": raw_meta}
    with open(path, "wb") as f:
        np.savez(f, **arrays, **extra)
    return path


def bad(path, problem):
    """pytest.raises(ValueError) whose message names the file and matches `problem`."""
    return pytest.raises(ValueError, match=re.escape(repr(str(path))) + ".*" + problem)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastrnn.load(tmp_path / "nope.npz")


@pytest.mark.parametrize(
    "content",
    [b"", b"x", b"this is not a zip archive\n" * 10, b"\x80\x04\x95 pickle-ish"],
    ids=["empty", "one_byte", "text", "pickle_magic"],
)
def test_garbage_bytes(tmp_path, content):
    path = tmp_path / "junk.npz"
    path.write_bytes(content)
    with bad(path, r"not an \.npz \(zip\) archive"):
        fastrnn.load(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_file(tmp_path, saved, fraction):
    good = saved[0].read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(good[: int(len(good) * fraction)])
    with bad(path, r"not an \.npz \(zip\) archive, or a damaged one"):
        fastrnn.load(path)


def test_damaged_member(tmp_path, saved):
    path = tmp_path / "flipped.npz"
    shutil.copy(saved[0], path)
    data = bytearray(path.read_bytes())
    at = data.index(b"weight_hh_l0.npy") + 200  # inside that member's data
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with bad(path, r"parameter 'weight_hh_l0' cannot be read .*CRC"):
        fastrnn.load(path)


def test_single_npy_file(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.ones(3))
    with bad(path, r"single \.npy array, not an \.npz archive"):
        fastrnn.load(path)


def test_npz_without_metadata(tmp_path, saved):
    path = write(tmp_path / "plain.npz", None, saved[2])
    with bad(path, r"no '__fastrnn__' metadata entry \(not a file written by fastrnn\.save\)"):
        fastrnn.load(path)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (np.frombuffer(b"{not json", np.uint8), "not valid UTF-8 JSON"),
        (np.frombuffer(b"\xff\xfe", np.uint8), "not valid UTF-8 JSON"),
        (np.frombuffer(b"[1, 2]", np.uint8), "must be a JSON object, got list"),
        (np.array('{"format": "fastrnn"}'), r"1-D uint8 array of UTF-8 JSON, got dtype <U"),
        (np.array([{"format": "fastrnn"}], dtype=object), "entry cannot be read .*pickle"),
    ],
    ids=["bad_json", "bad_utf8", "not_object", "str_array", "pickled_object"],
)
def test_bad_metadata(tmp_path, saved, raw, problem):
    path = write(tmp_path / "m.npz", None, saved[2], raw_meta=raw)
    with bad(path, problem):
        fastrnn.load(path)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"format": "keras"}, r"unknown format 'keras' \(expected 'fastrnn'\)"),
        ({"version": 2}, r"unsupported format version 2 \(written by a newer fastrnn\?\)"),
        ({"version": "1"}, r"unsupported format version '1'; this fastrnn reads 1"),
        ({"version": True}, r"unsupported format version True"),
        ({"class": "Transformer"}, r"unknown model class 'Transformer'"),
        ({"class": "RecurrentModel"}, r"unknown model class 'RecurrentModel'"),
        ({"dtype": "float16"}, r"unsupported dtype 'float16'"),
        ({"config": [3, 5]}, r"metadata field 'config' must be a JSON dict"),
        ({"parameters": None}, r"metadata field 'parameters' must be a JSON dict"),
    ],
    ids=lambda v: "-".join(map(str, v)) if isinstance(v, dict) else None,
)
def test_bad_metadata_fields(tmp_path, saved, change, problem):
    _, meta, arrays = saved
    path = write(tmp_path / "m.npz", {**meta, **change}, arrays)
    with bad(path, problem):
        fastrnn.load(path)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"hidden_size": 0}, r"LSTM rejects the saved config .*hidden_size must be >= 1"),
        ({"dropout": 1.5}, r"LSTM rejects the saved config .*dropout must be in \[0, 1\]"),
        ({"units": 3}, r"LSTM rejects the saved config .*unexpected keyword argument 'units'"),
        ({"dtype": "float64"}, r"LSTM rejects the saved config .*multiple values.*'dtype'"),
    ],
    ids=["hidden_size", "dropout", "unknown_key", "dtype_in_config"],
)
def test_config_the_constructor_rejects(tmp_path, saved, change, problem):
    _, meta, arrays = saved
    meta = {**meta, "config": {**meta["config"], **change}}
    path = write(tmp_path / "m.npz", meta, arrays)
    with bad(path, problem):
        fastrnn.load(path)


def test_missing_array(tmp_path, saved):
    _, meta, arrays = saved
    del arrays["bias_hh_l0"]
    path = write(tmp_path / "m.npz", meta, arrays)
    with bad(path, r"arrays do not match the metadata: missing \['bias_hh_l0'\], unexpected \[\]"):
        fastrnn.load(path)


def test_extra_array(tmp_path, saved):
    _, meta, arrays = saved
    arrays["weight_hr_l0"] = np.ones((5, 5), np.float32)
    path = write(tmp_path / "m.npz", meta, arrays)
    with bad(path, r"missing \[\], unexpected \['weight_hr_l0'\]"):
        fastrnn.load(path)


def test_array_shape_differs_from_metadata(tmp_path, saved):
    _, meta, arrays = saved
    arrays["weight_hh_l0"] = arrays["weight_hh_l0"][:, :4].copy()
    path = write(tmp_path / "m.npz", meta, arrays)
    with bad(
        path,
        r"parameter 'weight_hh_l0' has dtype float32 and shape \[20, 4\], "
        r"but the metadata says float32 and \[20, 5\]",
    ):
        fastrnn.load(path)


def test_array_dtype_differs_from_metadata(tmp_path, saved):
    _, meta, arrays = saved
    arrays["bias_ih_l0"] = arrays["bias_ih_l0"].astype(np.float64)
    path = write(tmp_path / "m.npz", meta, arrays)
    with bad(path, r"parameter 'bias_ih_l0' has dtype float64 and shape \[20\], but the metadata"):
        fastrnn.load(path)


def test_metadata_shapes_differ_from_the_model(tmp_path, saved):
    _, meta, arrays = saved
    meta["parameters"]["weight_ih_l0"] = [20, 4]
    arrays["weight_ih_l0"] = arrays["weight_ih_l0"][:, :2].copy()
    path = write(tmp_path / "m.npz", meta, arrays)
    with bad(path, r"metadata gives parameter 'weight_ih_l0' shape \[20, 4\], but LSTM\("):
        fastrnn.load(path)


def test_metadata_parameter_names_differ_from_the_model(tmp_path, saved):
    _, meta, arrays = saved
    meta["config"]["bias"] = False  # the arrays still hold biases
    path = write(tmp_path / "m.npz", meta, arrays)
    with bad(path, r"metadata's parameters do not match LSTM\(.*unexpected \['bias_hh_l0'"):
        fastrnn.load(path)


def test_big_endian_arrays_load_exactly(tmp_path, saved):
    _, meta, arrays = saved
    swapped = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in arrays.items()}
    path = write(tmp_path / "m.npz", meta, swapped)
    loaded = fastrnn.load(path).state_dict()
    for name, value in arrays.items():
        assert bits(loaded[name]) == bits(value)


def test_hostile_array_header_is_rejected_before_reading(tmp_path, saved):
    """A header claiming a huge shape fails on the shape, without sizing an allocation."""
    _, meta, arrays = saved
    path = tmp_path / "hostile.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for name, value in arrays.items():
            with zf.open(name + ".npy", "w") as member:
                if name == "weight_hh_l0":
                    header = {"descr": "<f4", "fortran_order": False, "shape": (2**40,)}
                    np.lib.format.write_array_header_1_0(member, header)
                    member.write(b"\0" * 16)
                else:
                    np.lib.format.write_array(member, value)
        zf.writestr(
            "__fastrnn__.npy", _npy_bytes(np.frombuffer(json.dumps(meta).encode(), np.uint8))
        )
    with bad(path, r"'weight_hh_l0' has dtype float32 and shape \[1099511627776\]"):
        fastrnn.load(path)


def _npy_bytes(value):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, value)
    return buf.getvalue()
