"""A stream keeps its weights packed between calls: it must still follow parameter changes."""

import numpy as np
import pytest

import fastrnn


@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU])
def test_stream_follows_load_state_dict_and_refresh(cls):
    rng = np.random.default_rng(7)
    model = cls(3, 5, num_layers=2, dtype=np.float64, seed=1)
    other = cls(3, 5, num_layers=2, dtype=np.float64, seed=2)
    x = rng.standard_normal((4, 2, 3))
    stream = model.stream(2)
    stream(x[:2])
    # new parameter arrays: seen at the next call without refresh()
    model.load_state_dict(other.state_dict())
    got = stream(x[2:])
    _, carried = cls(3, 5, num_layers=2, dtype=np.float64, seed=1)(x[:2])
    want, _ = other(x[2:], carried)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU])
def test_stream_refresh_after_in_place_update(cls):
    rng = np.random.default_rng(8)
    model = cls(3, 5, dtype=np.float64, seed=1)
    x = rng.standard_normal((3, 2, 3))
    stream = model.stream(2)
    stream.step(x[0])
    for p in model.parameters().values():
        p *= 0.5  # an optimiser's in-place step
    stream.refresh()
    got = stream(x[1:])
    _, h1 = cls(3, 5, dtype=np.float64, seed=1)(x[:1])
    want, _ = model(x[1:], h1)
    assert np.array_equal(got, want)
