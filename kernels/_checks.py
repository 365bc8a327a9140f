"""Where the Triton ops find their argument checks.

The checks are those of the C++ ops (csrc/op_checks.h), written in Python
once, in mcvd/ops/<op>.py. kernels/ imports nothing of mcvd, so mcvd.ops puts
them into the kernels module's `checks` when it loads it (mcvd.ops._triton);
until then a call refuses to run rather than launch a kernel on arguments
nobody has checked, which could read past a tensor of another size.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def run(checks: dict[str, Callable[..., None]], op: str, which: str, *args) -> None:
    """checks[which](*args) for the Triton op of mcvd.ops.<op>: which is "fwd"
    or "bwd". Eager calls only: under torch.compile the public function has
    checked the arguments before tracing reaches the op."""
    if torch.compiler.is_compiling():
        return
    check = checks.get(which)
    if check is None:
        raise RuntimeError(f"the Triton ops of mcvd.ops.{op} have no argument checks: load them with "
                           f"mcvd.ops.{op}.triton_kernels() (or call mcvd.ops.{op} with backend='triton')")
    check(*args)
