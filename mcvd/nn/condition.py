"""What the MCVD network computes from the condition frames alone, cached.

A sampler calls the network at every step of a block with the same condition
frames, so everything that depends only on them is the same at every step:

- SPATIN: every norm layer's gamma and beta maps (Spatin's three 3x3
  convolutions at the layer's resolution) - most of a SPATIN network's FLOPs;
- concat: the condition frames' half of the first convolution. With
  conv_in's weight split along its input channels, W = [W_x | W_c],

      conv(cat[x, cond], W) + b = conv(x, W_x) + b + conv(cond, W_c),

  exact up to the order of the float sums (see `MCVD.condition`);
- cond_emb: the mask embedding rows.

`MCVD.condition(cond, cond_mask)` builds a `ConditionCache` once;
`MCVD.forward(x_t, t, cache=cache)` reads it at every step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .blocks import SpatinMaps


def weights_version(params: list[torch.Tensor]) -> tuple[int, ...]:
    """The version counters of `params` (bumped by every in-place update: an
    optimizer step, load_state_dict, an EMA copy); -1 for inference tensors,
    which keep none."""
    return tuple(-1 if p.is_inference() else p._version for p in params)


@dataclass(frozen=True, eq=False)
class ConditionCache:
    """The condition frames' contribution to one MCVD network, for one batch.

    Valid for the network that built it (while its weights are unchanged)
    and for x_t of the same batch size, dtype and device; `MCVD.forward`
    checks all of that and raises otherwise. The weights are followed by
    their version counters, which every in-place update bumps except one
    made through `param.data` (`p.data.copy_(...)`, which autograd does not
    see): after such an update, build the cache again.

    Attributes:
        batch, dtype, device: of the condition frames it was built from.
        spatin: SPATIN networks: per SPATIN norm layer, (gamma, beta)
            [B, C, H, W] contiguous; None for concat.
        conv_in_cond: concat networks with condition frames: conv(cond, W_c)
            [B, ngf, H, W], the condition channels' part of conv_in without
            its bias; None for SPATIN.
        mask_embed: cond_emb networks: the mask embedding rows [B, ngf // 2]
            (selected by the past column of cond_mask); else None.
        model: the network that built it.
        weights: `weights_version` of the weights it was computed from.
    """

    batch: int
    dtype: torch.dtype
    device: torch.device
    spatin: SpatinMaps | None = None
    conv_in_cond: torch.Tensor | None = None
    mask_embed: torch.Tensor | None = None
    model: nn.Module | None = field(default=None, repr=False)
    weights: tuple[int, ...] = field(default=(), repr=False)
