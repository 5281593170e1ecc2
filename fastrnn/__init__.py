"""fastrnn: recurrent networks (RNN, LSTM, GRU) on NumPy arrays at compiled speed."""
