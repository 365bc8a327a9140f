"""The order of training clips: a pure function of (seed, step).

Epoch e visits the clips in the permutation default_rng([seed, e]) and cuts
it into global batches (the incomplete last batch is dropped). Every step
consumes one global batch, so step s reads batch s % B of epoch s // B
(B = batches per epoch): resuming at a step resumes the data exactly, and
every process computes the same global batch and keeps its own slice.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class StepBatchSampler:
    """Yields this process's clip indices for every step from `start_step` on (endless).

    Args:
        num_clips: size of the data set.
        batch_size: global batch (all processes).
        rank, world_size: this process's slice [rank * b, (rank + 1) * b), b = batch_size / world_size.
    """

    def __init__(self, num_clips: int, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0,
                 world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"batch_size: expected a multiple of the {world_size} processes, got {batch_size}")
        if num_clips < batch_size:
            raise ValueError(f"num_clips: the data set has {num_clips} clips, fewer than one batch of {batch_size}")
        self.num_clips, self.batch_size, self.seed = num_clips, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.batches_per_epoch = num_clips // batch_size

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) read at `step`."""
        return divmod(step, self.batches_per_epoch)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, batch = self.position(self.start_step)
        local = self.batch_size // self.world_size
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_clips)
            for b in range(batch, self.batches_per_epoch):
                lo = b * self.batch_size + self.rank * local
                yield order[lo:lo + local].tolist()
            epoch, batch = epoch + 1, 0
