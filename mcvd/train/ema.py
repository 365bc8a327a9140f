"""Exponential moving average of the weights (the reference code's EMAHelper):
after every optimizer step, shadow = rate * shadow + (1 - rate) * weights.

Trainable parameters are averaged; buffers (constant kernels, statistics) are
copied, so `state_dict()` is a complete state dict of the network.
"""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, rate: float):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate: expected a float in [0, 1), got {rate}")
        self.rate = rate
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._averaged = [k for k, p in model.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        # lerp(s, p, 1 - rate) = rate * s + (1 - rate) * p, all tensors in one fused call.
        torch._foreach_lerp_([self.shadow[k] for k in self._averaged], [params[k].detach() for k in self._averaged],
                             1.0 - self.rate)
        for k, b in model.named_buffers():
            if k in self.shadow:
                self.shadow[k].copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"state: EMA keys do not match the model (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        for k, v in state.items():
            self.shadow[k].copy_(v)
