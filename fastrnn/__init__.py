"""fastrnn: recurrent networks (RNN, LSTM, GRU) on NumPy arrays at compiled speed.

Models mirror torch.nn.RNN / LSTM / GRU: the same constructor arguments, parameter names,
shapes and gate order, and the same numbers.
"""

from ._models import GRU, LSTM, RNN, Gradients, RecurrentModel

__all__ = ["GRU", "LSTM", "RNN", "Gradients", "RecurrentModel"]
__version__ = "0.1.0"
