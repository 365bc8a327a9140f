"""The `device` arguments of the package's functions, read one way."""
from __future__ import annotations

import torch


def parse_device(device: torch.device | str, name: str = "device", kinds: tuple[str, ...] = ("cpu", "cuda")
                 ) -> torch.device:
    """`device` as a torch.device with its index ("cuda" -> "cuda:0", the current one), as tensors report it.
    ValueError naming `name` for what is not a device of `kinds`, or a CUDA device where torch sees none
    (torch itself would raise an AssertionError about how it was compiled)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name}: expected a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err
    if parsed.type not in kinds:
        raise ValueError(f"{name}: expected a {' or '.join(k if k == 'meta' else k.upper() for k in kinds)} "
                         f"device, got {parsed}")
    if parsed.type != "cuda":
        return torch.device(parsed.type)  # "cpu:0" is the CPU, as tensors report it
    if not torch.cuda.is_available():
        raise ValueError(f"{name}: {parsed} requested but torch sees no CUDA device")
    if parsed.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if parsed.index >= torch.cuda.device_count():
        raise ValueError(f"{name}: {parsed} requested but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return parsed
