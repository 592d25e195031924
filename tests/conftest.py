"""Shared test settings."""

import torch

# The tests run tiny models, where a second thread costs more in synchronisation than it
# gains (measured: hundreds of times slower per tiny matmul on a busy 2-core machine).
torch.set_num_threads(1)
