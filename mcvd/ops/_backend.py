"""Backend dispatch: the one table of which implementation serves each op.

Backends: "reference" (pure PyTorch, `<op>_ref`), "cpu" (C++ kernels in
mcvd._C), "cuda" (CUDA kernels in mcvd._C), "triton" (kernels/ via
torch.library.triton_op, loaded by mcvd.ops._triton). `backend=None` takes
`MCVD_BACKEND` if set, else the fastest compiled backend for the tensors'
device (AUTO below, as measured by benchmarks/), and logs the choice once per
op, device and dtype.
"""
from __future__ import annotations

import importlib.util
import logging
import os

import torch

log = logging.getLogger("mcvd.ops")

BACKENDS = ("reference", "cpu", "cuda", "triton")
ENV = "MCVD_BACKEND"  # the default backend of every op call that passes backend=None

# Auto choice on a CUDA device, fastest first, as measured on an H100
# (benchmarks/results/h100.md: device time and host time per call). Keyed by
# op, or by (op, dtype) where a dtype needs another order. CUDA first: its
# device time is within a few microseconds of Triton's for spatin_norm,
# reverse_step and bf16 attention at the network's shapes, and a Triton call
# costs 2-12x the host time. float32 attention takes the einsum reference
# (cuBLAS): the fused float32 kernels keep IEEE float32 products off the tensor
# cores and take 1.4-8x its device time at every measured shape; the reference
# holds the N x N logits in memory, as the reference code's attention does.
# dropout takes PyTorch's own on a GPU: there it is one fused Philox kernel
# already, which inductor fuses with its neighbours. The op pays on the CPU,
# where PyTorch draws the mask one element at a time (mcvd/ops/dropout.py);
# its CUDA and Triton kernels (the same mask) run when asked for by name and
# are not measured yet.
# A backend missing from this install is passed over.
AUTO_CUDA: dict[str | tuple[str, torch.dtype], tuple[str, ...]] = {
    "spatin_norm": ("cuda", "triton"),
    "attention": ("cuda", "triton"),
    "reverse_step": ("cuda", "triton"),
    "dropout": ("reference",),
    ("attention", torch.float32): ("reference",),
}


def _compiled_backends() -> tuple[str, ...]:
    from mcvd import _C

    return tuple(_C.build_info()["backends"])


# Read once at import: torch.compile cannot trace into the C extension call.
COMPILED = _compiled_backends()


TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends this install can run on `device` (every device if None).

    "triton" needs the triton package and a CUDA device, or TRITON_INTERPRET=1
    (then it runs, slowly, on CPU tensors; it applies to the kernels defined
    after it is set, i.e. when mcvd.ops._triton first imports a kernels/<op>.py
    module).
    """
    dev = None if device is None else torch.device(device).type
    out = ["reference"]
    if "cpu" in COMPILED and dev in (None, "cpu"):
        out.append("cpu")
    cuda_ok = torch.cuda.is_available()
    if "cuda" in COMPILED and cuda_ok and dev in (None, "cuda"):
        out.append("cuda")
    if TRITON_IMPORTABLE:
        interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        if (dev in (None, "cuda") and cuda_ok) or (dev in (None, "cpu") and interpreted):
            out.append("triton")
    return out


# (op, device type, dtype, requested backend) -> the backend that runs it.
# Resolved once per key in eager mode: every op call passes here, so its cost
# is per-call overhead.
_resolved: dict[tuple[str, str, torch.dtype | None, str | None], str] = {}


def resolve(op: str, device: torch.device, backend: str | None, dtype: torch.dtype | None = None) -> str:
    """The backend that runs `op` on `device` for `dtype` inputs: explicit,
    MCVD_BACKEND, or auto."""
    # Errors name where an explicit backend came from: the argument or the variable.
    source = {}
    if backend is None:
        backend = os.environ.get(ENV) or None
        source = {"arg": ENV} if backend is not None else {}
    if torch.compiler.is_compiling():
        # At trace time: no cache read or write, which dynamo would guard on
        # (a recompile at the next call), and no logging, which breaks graphs.
        return _choose(op, device.type, backend, dtype, **source)
    key = (op, device.type, dtype, backend)
    name = _resolved.get(key)
    if name is None:
        name = _choose(op, device.type, backend, dtype, **source)
        _resolved[key] = name
        if backend is None:
            where = device.type if dtype is None else f"{device.type} {str(dtype).removeprefix('torch.')}"
            log.info("mcvd.ops.%s on %s: auto backend %r (available: %s)", op, where, name,
                     available_backends(device))
    return name


def check_env_backend(device: torch.device | str) -> str | None:
    """MCVD_BACKEND checked for ops on `device`, as an op call would check it:
    None when unset or empty, else the backend it names. Raises ValueError for a
    name that is no backend and RuntimeError for one not available on the device,
    naming the variable; commands call it before they start working."""
    backend = os.environ.get(ENV) or None
    if backend is not None:
        _choose("the ops", torch.device(device).type, backend, arg=ENV)
    return backend


def _choose(op: str, dev: str, backend: str | None, dtype: torch.dtype | None = None, arg: str = "backend") -> str:
    """`arg`: where an explicit `backend` came from, for the errors (the argument, or MCVD_BACKEND)."""
    avail = available_backends(dev)
    if backend is not None:
        if backend not in BACKENDS:
            if arg == ENV:
                raise ValueError(f"{ENV}: {backend!r} is not a backend: expected one of {BACKENDS} or the "
                                 f"variable unset")
            raise ValueError(f"{arg}: expected one of {BACKENDS} or None, got {backend!r}")
        if backend not in avail:
            raise RuntimeError(
                f"{arg}: {backend!r} is not available for {op} on {dev} tensors; available here: {avail}"
            )
        return backend
    if dev == "cuda":
        order = AUTO_CUDA.get((op, dtype)) or AUTO_CUDA[op]
        return next((b for b in order if b in avail), "reference")
    return "cpu" if dev == "cpu" and "cpu" in avail else "reference"
