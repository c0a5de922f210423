"""Data-parallel training under torchrun, and a no-op single process otherwise.

torchrun exports RANK, WORLD_SIZE and LOCAL_RANK (plus MASTER_ADDR/PORT); a process group is
created only when WORLD_SIZE > 1: NCCL on CUDA, gloo on CPU. Every rank builds the same model
from the same seed and DistributedDataParallel broadcasts rank 0's weights anyway, so all
replicas start equal and stay equal (gradients are averaged before every optimizer step).

Models are built first and initialised after they are placed on their device
(`build_model` -> device -> `init_weights()`), the order FSDP2's `fully_shard` needs, so
sharding can replace DDP here without touching the models. `train.device` is picked by
blt.runs.loading.pick_device: 'auto' is this rank's GPU when CUDA is present, else the CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from blt.errors import UserError
from blt.runs.loading import pick_device


@dataclass
class DistEnv:
    rank: int
    local_rank: int
    world: int
    device: torch.device
    owns_group: bool  # True when we created the process group (and so must destroy it)

    def barrier(self) -> None:
        barrier()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name} must be an integer, got '{raw}'") from None


def env_rank() -> int:
    """This process's rank as torchrun exports it (0 for a single process), before any setup."""
    return _env_int("RANK", 0)


def init_distributed(requested_device: str = "auto", always: bool = False) -> DistEnv:
    """Read torchrun's environment; join the process group when there is more than one rank (or
    make a group of one when `always`: FSDP2 needs a group even for a single process)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = env_rank()
    local_rank = _env_int("LOCAL_RANK", 0)
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if (world > 1 or always) and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        store = dist.HashStore() if world == 1 else None  # a group of one needs no rendezvous
        dist.init_process_group(backend=backend, rank=rank, world_size=world, store=store)
        owns = True
    return DistEnv(rank, local_rank, world, device, owns)


def shutdown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of a list of numbers over ranks (float64, so counts stay exact)."""
    if not _active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value: float, device: torch.device) -> float:
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    return [v / world() for v in all_reduce_sum(values, device)]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is True on at least one (e.g. a signal reached one rank)."""
    return all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0


def wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """DistributedDataParallel around `module` when there is more than one rank."""
    if env.world <= 1:
        return module
    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
