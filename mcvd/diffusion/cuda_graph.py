"""Replay a whole denoising loop as one CUDA graph.

A 100-step block of a small video model launches thousands of short kernels;
captured once, the loop replays with one launch and no Python in between.
The graph reads its inputs from, and writes its output to, fixed ("static")
buffers, so each call copies the new inputs in, replays, and hands back the
output buffer (valid until the next call).
"""
from __future__ import annotations

from collections.abc import Callable

import torch


class CUDAGraphRunner:
    """`fn(*tensors) -> tensor` captured in a CUDA graph for fixed shapes.

    Args:
        fn: a function of tensors (None allowed, passed through) that never
            syncs the host (no .item(), no data-dependent shapes).
        example_args: inputs of the shapes, dtypes and device every later call
            will use; CUDA tensors.
        generator: a non-default CUDA generator that `fn` draws from; it is
            registered with the graph, so every replay draws fresh numbers.
        warmup: eager runs on a side stream before capture (lazy
            initialisation, autotuning); they advance `generator`.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], *example_args, generator: torch.Generator | None = None,
                 warmup: int = 1):
        tensors = [a for a in example_args if a is not None]
        if not tensors or any(a.device.type != "cuda" for a in tensors):
            devices = sorted({str(a.device) for a in tensors}) or ["no tensors"]
            raise ValueError(f"cuda_graph: needs CUDA tensors, got {', '.join(devices)}")
        device = tensors[0].device
        self._static = [None if a is None else a.clone() for a in example_args]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*self._static)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        if generator is not None:
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            self._out = fn(*self._static)

    def __call__(self, *args) -> torch.Tensor:
        """Copy `args` into the static inputs, replay, return the static output."""
        if len(args) != len(self._static):
            raise ValueError(f"args: expected {len(self._static)} inputs (as captured), got {len(args)}")
        for i, (buf, a) in enumerate(zip(self._static, args)):
            if (buf is None) != (a is None):
                raise ValueError(f"args[{i}]: expected {'None' if buf is None else 'a tensor'} as captured")
            if a is not None:
                if a.shape != buf.shape or a.dtype != buf.dtype or a.device != buf.device:
                    raise ValueError(f"args[{i}]: expected shape {list(buf.shape)}, {buf.dtype} on {buf.device} "
                                     f"(as captured), got {list(a.shape)}, {a.dtype} on {a.device}")
                buf.copy_(a)
        self.graph.replay()
        return self._out
