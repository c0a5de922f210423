"""How a model is spread over ranks and made cheaper to train: DDP or FSDP2, activation
checkpointing, torch.compile.

- `train.parallel: ddp` (the default): every rank holds the whole model; DistributedDataParallel
  averages gradients (nothing to do for one rank).
- `train.parallel: fsdp`: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`), as torchtitan
  applies it: one unit per transformer block of every part (a BLT's encoder, latent and decoder,
  or a byte / token model's stack), one for the BLT's n-gram hash tables (they dominate a
  released model's memory), one for the frozen entropy model (sharded at rest; training never
  calls it, so it is never gathered), and the root for what is left. Parameters, gradients and
  optimizer state are sharded over the ranks; a unit's parameters are gathered for its forward
  and backward only. On a GPU the parameters compute in bf16 with fp32 gradient reductions and
  fp32 master weights (MixedPrecisionPolicy); on the CPU in fp32 unless `train.bf16` asks.
  One process (no torchrun) runs FSDP over a group of one (blt.train.distributed), so its
  checkpoints are the same sharded format and resume at any world size.
- `train.activation_checkpointing`: every block's activations are recomputed in the backward
  pass instead of kept (TransformerStack.checkpointing).
- `train.compile`: every block's forward goes through torch.compile (Inductor; on the CPU it
  needs the system C compiler), compiled on first use.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from blt.models.transformer import Block, TransformerStack


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, Block)]


def set_activation_checkpointing(model: nn.Module, on: bool = True) -> None:
    for stack in model.modules():
        if isinstance(stack, TransformerStack):
            stack.checkpointing = on


def compile_blocks(model: nn.Module) -> None:
    for block in transformer_blocks(model):
        block.forward = torch.compile(block.forward)


def shard(model: nn.Module, device: torch.device, bf16: bool) -> None:
    """Apply FSDP2 in place (see the module docstring)."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    low = device.type == "cuda" or bf16
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if low else None
    kw = {"mesh": mesh} if policy is None else {"mesh": mesh, "mp_policy": policy}
    for block in transformer_blocks(model):
        fully_shard(block, **kw)
    frozen = getattr(model, "entropy_model", None)
    if frozen is not None:
        fully_shard(frozen, mesh=mesh)
    encoder = getattr(model, "encoder", None)
    if encoder is not None:
        fully_shard(encoder.embed, **kw)
    fully_shard(model, **kw)
