"""Fused ops of mcvd, each with a pure-PyTorch reference `<op>_ref`.

Every op takes `backend=None|"reference"|"cpu"|"cuda"|"triton"`; see
mcvd.ops._backend for the dispatch table.

Layers. mcvd/ops/<op>.py holds the op's public function, its reference, its
argument checks and every Python registration of its torch ops. kernels/<op>.py
(mcvd.kernels.<op>) holds only the Triton kernels and their triton_op
launchers and imports nothing from mcvd; mcvd/ops/<op>.py imports it on first
use of backend="triton" and registers its ops then (mcvd.ops._triton). The
statistics dtype (float64 for float64 inputs, else float32) has one home,
mcvd.kernels._dtypes.stat_dtype, a torch-only module that both layers import.

Autograd, per op and backend (torch ops: forward / backward):

| op           | backend   | torch ops (forward / backward)             | autograd registered by                 |
|--------------|-----------|--------------------------------------------|----------------------------------------|
| spatin_norm  | cpu, cuda | mcvd::spatin_norm_fwd / _bwd               | C++: SpatinNorm, csrc/autograd.cpp     |
| attention    | cpu, cuda | mcvd::attention_fwd / _bwd                 | C++: Attention, csrc/autograd.cpp      |
| spatin_norm  | triton    | mcvd::spatin_norm_fwd_triton / _bwd_triton | register_autograd, ops/spatin_norm.py  |
| attention    | triton    | mcvd::attention_fwd_triton / _bwd_triton   | register_autograd, ops/attention.py    |
| reverse_step | cpu, cuda | mcvd::reverse_step                         | register_autograd, ops/reverse_step.py |
| reverse_step | triton    | mcvd::reverse_step_triton                  | register_autograd, ops/reverse_step.py |
| dropout      | cpu, cuda | mcvd::dropout (its own backward)           | register_autograd, ops/dropout.py      |
| dropout      | triton    | mcvd::dropout_triton (its own backward)    | register_autograd, ops/dropout.py      |
| every op     | reference | none                                       | PyTorch, through `<op>_ref`            |

Why:
- C++/CUDA spatin_norm and attention: registered in C++ at the Autograd key,
  because torch.library.register_autograd puts a round trip from the
  dispatcher into Python on every call: 212-247 -> 104 us (spatin_norm) and
  174-197 -> 113 us (attention) per forward + backward at small shapes on the
  CPU, more than the kernels take there (benchmarks/results/cpu.md).
- Triton spatin_norm and attention: a triton_op is a Python op, so its autograd
  is a Python registration, made when the kernels load. It saves the same
  tensors as the C++ Function and calls the backward op of the same schema.
- reverse_step, every backend: its backward is a few elementwise PyTorch ops,
  one formula for the C++ and the Triton op, registered when mcvd.ops loads
  (the C++ op) or when kernels/reverse_step.py does (the Triton op). The
  Python autograd kernel runs on every call, with grad or not (27 against
  11 us per call at 2x3x8x8 under no_grad on one CPU thread), which a
  sampling step, one network call each, does not notice.
- dropout, every backend: linear in x with the mask recomputed from the
  seed, so its backward is the op itself on the gradient (and a double
  backward runs through it again, exactly). Its reference backend is
  PyTorch's dropout, not a second Philox: what the kernels must match is the
  mask rule of csrc/philox.h, which tests/ops/test_dropout.py checks against
  an independent Philox and its published known answers.
- First-order guards: the spatin_norm and attention backward formulas are
  first-order, so a backward through a backward op (a double backward) raises
  "derivative for mcvd::<op>_bwd... is not implemented": on the C++ backward
  ops through autogradNotImplementedFallback (csrc/autograd.cpp), on the
  Triton ones through _triton.first_order_only, registered beside their
  autograd. reverse_step needs none: its backward is made of differentiable
  PyTorch ops, so a double backward through it is exact.
- Fake implementations (torch.compile): register_fake in mcvd/ops/<op>.py for
  the C++ ops; a triton_op is its own fake (its launcher runs on fake tensors).
  Every kernel returns contiguous tensors whatever its inputs' strides (the
  C++ ones read them through .contiguous()), and so do the fakes
  (tests/ops/test_op_layouts.py: permuted, channels_last, expanded inputs),
  with one exception: the C++ and CUDA spatin_norm return y (forward) and
  the gradients of x, gamma and beta (backward) channels_last for a
  channels_last x (`spatin_norm_output_format`), which the CPU kernels read
  in place: a network in channels_last, inductor's
  layout around its oneDNN convolutions, then runs its norms without a
  transposing copy on either side (mcvd.optimize on the CPU).
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
from .dropout import dropout, dropout_ref
from .reverse_step import reverse_step, reverse_step_ref
from .spatin_norm import output_format as spatin_norm_output_format, spatin_norm, spatin_norm_ref

__all__ = [
    "available_backends",
    "attention",
    "attention_ref",
    "dropout",
    "dropout_ref",
    "reverse_step",
    "reverse_step_ref",
    "spatin_norm",
    "spatin_norm_output_format",
    "spatin_norm_ref",
]
