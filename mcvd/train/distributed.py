"""Data-parallel training over processes started by torchrun (one per GPU, any number of nodes).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT); without
them the run is a single process. NCCL joins CUDA processes, gloo CPU ones.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this code started the process group and ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an integer environment variable, got {value!r}") from None


def setup(device_type: str) -> DistEnv:
    """Join the process group described by torchrun's variables (if any)."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistEnv()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistEnv(rank, world, local_rank, owns_group=True)


def teardown(env: DistEnv, *, together: bool = False) -> None:
    """Leave the process group (if this process joined it). together: after a run that ended
    normally on every process, wait for all of them first (a barrier), so that none closes its
    connections while another still writes the checkpoint or reads the last gather (with gloo, a
    process whose peer had already gone could abort at exit); also after an error that every process
    meets at the same point (a divergence). Not after another error, where the others may never arrive."""
    if env.owns_group:
        if together:
            dist.barrier()
        dist.destroy_process_group()


def all_mean(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of a tensor over the processes (itself when single-process)."""
    if env.enabled:
        x = x.clone()
        dist.all_reduce(x)
        x /= env.world_size
    return x


def gather_objects(obj, env: DistEnv) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process."""
    if not env.enabled:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def broadcast_object(obj, env: DistEnv):
    """Rank 0's `obj` on every process."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
