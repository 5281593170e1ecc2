"""A stream keeps its weights packed between calls: it must still follow parameter changes."""

import numpy as np
import pytest
from helpers import CELLS, make_model

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


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch", [1, 3])
def test_stream_packs_its_weights_even_when_the_first_chunk_is_empty(cell, batch):
    """An empty first chunk runs no step; the next call must still see packed weights and
    folded biases (it once read the never-written pack buffers)."""
    rng = np.random.default_rng(9)
    model = make_model(cell, 4, 6, dtype=np.float64, seed=3)
    x = rng.standard_normal((5, batch, 4))
    stream = model.stream(batch)
    assert stream(x[:0]).shape == (0, batch, 6)
    got = stream(x)
    want, _ = make_model(cell, 4, 6, dtype=np.float64, seed=3)(x)
    assert np.array_equal(got, want)
