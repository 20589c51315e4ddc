"""The runtime: what running a model needs (numpy + the C++ kernels, nothing else)."""
