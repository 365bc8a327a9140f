"""Loading the Triton backend: kernels/<op>.py, then the op's registrations on it.

kernels/<op>.py (mcvd.kernels.<op>) defines the op's Triton ops with
torch.library.triton_op and imports nothing from mcvd. It is imported on the
first call of its op with backend="triton", not with mcvd.ops: importing
triton takes seconds, and the reference and C++ backends never need it. Right
after the import, `load` hands the module to the op's `register` function in
mcvd/ops/<op>.py, which adds the Python registrations the Triton ops need
(autograd, the first-order guard of a backward op), once per process.
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from types import ModuleType

import torch

# op -> its kernels module, entered once its registrations are made.
_LOADED: dict[str, ModuleType] = {}
_LOCK = threading.Lock()


def load(op: str, register: Callable[[ModuleType], None]) -> ModuleType:
    """mcvd.kernels.<op>, imported and passed to `register` on the first call.

    `register` also fills the module's `checks`: kernels/ imports nothing
    of mcvd, so the argument checks of the C++ ops (csrc/op_checks.h, written
    once in mcvd.ops) reach its forward and backward ops from here. A direct
    call of torch.ops.mcvd.<op>_triton then refuses what the C++ op refuses,
    rather than reading past a tensor of another size (and before `register`,
    kernels/_checks.py refuses every call).

    torch.compile cannot trace import_module: a call inside a compiled
    function finds the module loaded by an earlier eager call, through a
    plain dict lookup."""
    module = _LOADED.get(op)
    if module is None:
        with _LOCK:  # two threads' first calls register once
            module = _LOADED.get(op)
            if module is None:
                module = importlib.import_module(f"mcvd.kernels.{op}")
                register(module)
                _LOADED[op] = module
    return module


def first_order_only(op: str) -> None:
    """Register the autograd of the Triton backward op `op` ("mcvd::...") as one
    that raises when a backward runs through it (a double backward): the ops'
    backward formulas are first-order. The message is that of the C++ backward
    ops (autogradNotImplementedFallback, csrc/autograd.cpp), so every backend
    fails alike; without it a triton_op would raise torch's "no autograd
    formula was registered", which reads like a bug of mcvd."""

    def backward(ctx, *grads):
        raise RuntimeError(f"derivative for {op} is not implemented: the mcvd ops support first-order "
                           "gradients only (no double backward)")

    torch.library.register_autograd(op, backward)
