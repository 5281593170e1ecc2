"""The spare scratch arrays kept between calls: reused, bounded, never shared by two calls."""

import threading

import numpy as np
from helpers import make_model, normal

from fastrnn import _layer


def test_released_array_is_reused_and_small_ones_are_not_kept(monkeypatch):
    monkeypatch.setattr(_layer, "_spare", {})
    big = _layer._scratch((512, 1024), np.float32)  # 2 MiB
    small = _layer._scratch((16, 16), np.float32)
    _layer._release(big, small)
    assert _layer._scratch((512, 1024), np.float32) is big
    assert _layer._scratch((16, 16), np.float32) is not small
    # taken: the next request for that shape gets a new array
    assert _layer._scratch((512, 1024), np.float32) is not big


def test_spare_arrays_stay_within_the_budget(monkeypatch):
    monkeypatch.setattr(_layer, "_spare", {})
    monkeypatch.setattr(_layer, "_SPARE_BYTES", 5 << 20)
    arrays = [np.empty((k + 1, 1 << 18), np.float32) for k in range(4)]  # 1, 2, 3, 4 MiB
    _layer._release(*arrays)
    kept = sum(a.nbytes for kept in _layer._spare.values() for a in kept)
    assert kept <= 5 << 20
    assert _layer._scratch((4, 1 << 18), np.float32) is arrays[3]  # the newest stays


def test_training_from_two_threads_with_shared_spares():
    """Two threads train at once (their scratch comes from the shared spares): every
    result equals the same step run alone."""
    rng = np.random.default_rng(51)
    model = make_model("lstm", 32, 128, dtype=np.float32, seed=51)
    xs = [normal(rng, (40, 48, 32), np.float32) for _ in range(2)]
    dys = [normal(rng, (40, 48, 128), np.float32) for _ in range(2)]

    def step(k):
        _, _, backward = model.forward_train(xs[k])
        g = backward(dys[k])
        return g.x, g.params["weight_hh_l0"]

    want = [step(k) for k in range(2)]
    got = [[None] * 5 for _ in range(2)]

    def run(k):
        for r in range(5):
            got[k][r] = step(k)

    workers = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers)
    for k in range(2):
        for r in range(5):
            for a, b in zip(got[k][r], want[k], strict=True):
                np.testing.assert_array_equal(a, b)
