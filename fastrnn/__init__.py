"""fastrnn: recurrent networks (RNN, LSTM, GRU) on NumPy arrays at compiled speed.

Models mirror torch.nn.RNN / LSTM / GRU: the same constructor arguments, parameter names,
shapes and gate order, and the same numbers.
"""

import os as _os

# fastrnn's worker threads come from OpenMP (libgomp). By default they spin for a while
# after each parallel region, and that spinning competes for the cores with the BLAS threads
# of the whole-sequence products that follow: measured on 2 cores, an RNN training step at
# (T, B, I, H) = (100, 16, 128, 128) took 8.0 ms with 2 threads spinning against 2.25 ms
# with them passive. Set before the OpenMP runtime loads; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._io import load, save  # noqa: E402
from ._models import GRU, LSTM, RNN, Gradients, RecurrentModel  # noqa: E402
from ._stream import Stream  # noqa: E402
from ._threads import get_num_threads, set_num_threads  # noqa: E402
from ._torch import from_torch, to_torch  # noqa: E402

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Gradients",
    "RecurrentModel",
    "Stream",
    "from_torch",
    "get_num_threads",
    "load",
    "save",
    "set_num_threads",
    "to_torch",
]
__version__ = "0.1.0"
