"""Whether this CPU runs the network's convolutions fast in a reduced precision.

oneDNN has bfloat16 convolution kernels only where the CPU has AVX-512
(AVX512-BF16 or AMX for full speed) and float16 ones only with AVX512-FP16
or AMX-FP16; the check is the one ATen's convolution itself asks
(`torch.ops.mkldnn._is_mkldnn_bf16_supported`, ideep's). Elsewhere, on an AVX2-only CPU say, ATen sends every
bfloat16/float16 convolution to its im2col fallback (`_slow_conv2d`):
measured on a 2-core AMD EPYC with AVX2 only, the demo's `cpu` network at
batch 16 ran a forward in 1,024 ms under bfloat16 autocast against 47 ms
in float32, a training step in 1.46 s against 0.145 s, and
`mcvd.optimize(..., dtype=torch.bfloat16)` in 265 ms against 37.5 ms in
float32. Asking for such a precision there is allowed, with a warning.
"""
from __future__ import annotations

import warnings

import torch

_SUPPORTED = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}


def cpu_has_fast_convolutions(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs convolutions in `dtype` on this CPU (float32: always)."""
    check = _SUPPORTED.get(dtype)
    if check is None:
        return True
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def warn_if_slow_on_cpu(device: torch.device, dtype: torch.dtype, what: str) -> None:
    """Warn (UserWarning naming `what`, the setting that asked for it) when `dtype` on this
    `device` runs the convolutions on ATen's slow fallback."""
    if device.type != "cpu" or cpu_has_fast_convolutions(dtype):
        return
    name = str(dtype).removeprefix("torch.")
    warnings.warn(f"{what}: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no oneDNN {name} "
                  f"convolutions, so they run on ATen's slow fallback, about 7-22x slower than float32 "
                  f"(mcvd.nn.precision); float32 is the fast choice here", UserWarning, stacklevel=3)
