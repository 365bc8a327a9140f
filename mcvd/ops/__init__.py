"""Fused ops of mcvd, each with a pure-PyTorch reference `<op>_ref`.

Every op takes `backend=None|"reference"|"cpu"|"cuda"|"triton"`; see
mcvd.ops._backend for the dispatch table.
"""
import torch

from mcvd import _C  # noqa: F401  (registers the torch.ops.mcvd schemas and kernels)


def _check_build() -> None:
    """Fail at import on an extension built from older sources whose forward
    ops have no C++ autograd kernel: their outputs would silently get no
    gradients (the Python registration they relied on is gone)."""
    has_kernel = getattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", None)
    for op in ("mcvd::spatin_norm_fwd", "mcvd::attention_fwd"):
        if has_kernel is not None and not has_kernel(op, "Autograd"):
            raise ImportError(f"mcvd._C has no autograd kernel for {op}: it was built from older sources; "
                              "rebuild it: pip install --no-build-isolation --no-deps -e .")


_check_build()

from ._backend import available_backends
from .attention import attention, attention_ref
from .reverse_step import reverse_step, reverse_step_ref
from .spatin_norm import spatin_norm, spatin_norm_ref

__all__ = [
    "available_backends",
    "attention",
    "attention_ref",
    "reverse_step",
    "reverse_step_ref",
    "spatin_norm",
    "spatin_norm_ref",
]
