"""Hand-written CPU kernels, compiled on first use where a C compiler exists (build.py);
each caller keeps its PyTorch path where they are not available."""
