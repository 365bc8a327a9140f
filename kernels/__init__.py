"""Triton kernels of the mcvd ops, one module per op (imported on first use)."""
