"""Triton kernels of the mcvd ops, one module per op: the kernels, then their
torch.library.triton_op launchers; _dtypes holds the statistics dtype rule
(torch only).

A leaf: nothing here imports from mcvd (tests/ops/test_layers.py). mcvd/ops/<op>.py
imports its module on first use of backend="triton" (importing triton is
slow) and makes every Python registration of the op (mcvd.ops._triton).
"""
