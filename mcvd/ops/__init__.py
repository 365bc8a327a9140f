"""Fused ops of mcvd, each with a pure-PyTorch reference `<op>_ref`.

Every op takes `backend=None|"reference"|"cpu"|"cuda"|"triton"`; see
mcvd.ops._backend for the dispatch table.
"""
from mcvd import _C  # noqa: F401  (registers the torch.ops.mcvd schemas and kernels)

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
