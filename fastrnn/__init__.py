"""fastrnn: recurrent networks (RNN, LSTM, GRU) on NumPy arrays at compiled speed.

Models mirror torch.nn.RNN / LSTM / GRU: the same constructor arguments, parameter names,
shapes and gate order, and the same numbers.
"""

from ._io import load, save
from ._models import GRU, LSTM, RNN, Gradients, RecurrentModel
from ._stream import Stream
from ._threads import get_num_threads, set_num_threads
from ._torch import from_torch, to_torch

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
