"""Memory+ layers (Berges et al., "Memory Layers at Scale", 2024): parameters without FLOPs.

A product-key memory (Lample et al., 2019) of N = keys^2 slots, read by a SwiGLU-gated feed-forward
in place of its up-projection:

    ffn(x)  = W2 (silu(W1 x) * mem(x))                      (a plain SwiGLU has W3 x for mem(x))
    mem(x)  = sum over heads h, top-k slots i of softmax(s_h)_i * V[i]

For each head h: a query q = Wq_h x, RMS-normalised, is split into two halves that score against
two sets of `keys` half-keys (normalised too) each; the top-k of each half give k x k candidate
slots (i, j) scored s1_i + s2_j, of which the top k are read. Scoring costs 2 * keys * d_k per head
instead of 2 * N * d_k, and reading k rows of V costs k * d_v: the memory's N x d_v values are
parameters almost no FLOP touches. The value table V is ONE table shared by every memory layer of
a stack (the stack owns it and hands it to the layers), as in Memory+. Memory layers sit in
`layers` equally spaced blocks (`memory_blocks`). Position-wise: causal by construction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blt.config import must


@dataclass
class MemoryConfig:
    layers: int = 1  # blocks whose feed-forward reads the memory, equally spaced
    keys: int = 128  # half-keys per set: the memory holds keys^2 slots
    heads: int = 4
    topk: int = 16  # slots read per head
    key_dim: int = 64  # query / key width per head (two halves of key_dim / 2)

    def validate(self):
        for name in ("layers", "keys", "heads", "topk"):
            must(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        must(self.key_dim >= 2 and self.key_dim % 2 == 0, "key_dim", "even and at least 2", self.key_dim)
        must(self.topk <= self.keys, "topk", f"at most keys ({self.keys})", self.topk)

    @property
    def slots(self) -> int:
        return self.keys * self.keys


def memory_blocks(n_layers: int, memory: MemoryConfig | None) -> list[int]:
    """The block indices that hold a memory: `layers` of them (at most n_layers), equally spaced."""
    if memory is None:
        return []
    return [(i + 1) * n_layers // (memory.layers + 1) for i in range(memory.layers)]


class ProductKeyMemory(nn.Module):
    """x (..., D) and the shared values (N, Dv) -> mem(x) (..., Dv)."""

    def __init__(self, dim: int, cfg: MemoryConfig):
        super().__init__()
        self.cfg = cfg
        half = cfg.key_dim // 2
        self.query = nn.Linear(dim, cfg.heads * cfg.key_dim, bias=False)
        self.half_keys = nn.Parameter(torch.empty(2, cfg.heads, cfg.keys, half))  # (2, H, keys, dk/2)

    @torch.no_grad()
    def init_weights(self, std: float):
        nn.init.trunc_normal_(self.query.weight, std=std, a=-3 * std, b=3 * std)
        nn.init.normal_(self.half_keys, std=1.0)

    def slots_and_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The slots each head reads and their weights: (..., H, topk) each."""
        c = self.cfg
        q = self.query(x).unflatten(-1, (c.heads, c.key_dim))  # (..., H, dk)
        q = F.rms_norm(q, (c.key_dim,)).unflatten(-1, (2, c.key_dim // 2))  # (..., H, 2, dk/2)
        keys = F.rms_norm(self.half_keys, (c.key_dim // 2,))  # (2, H, keys, dk/2)
        s1 = torch.einsum("...hd,hkd->...hk", q[..., 0, :], keys[0])  # (..., H, keys)
        s2 = torch.einsum("...hd,hkd->...hk", q[..., 1, :], keys[1])
        v1, i1 = s1.topk(c.topk, dim=-1)  # (..., H, topk)
        v2, i2 = s2.topk(c.topk, dim=-1)
        scores = (v1[..., :, None] + v2[..., None, :]).flatten(-2)  # (..., H, topk^2)
        best, at = scores.topk(c.topk, dim=-1)  # (..., H, topk)
        slots = i1.gather(-1, at // c.topk) * c.keys + i2.gather(-1, at % c.topk)
        return slots, best.softmax(dim=-1)

    def forward(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        slots, weights = self.slots_and_weights(x)
        read = F.embedding(slots, values)  # (..., H, topk, Dv)
        return torch.einsum("...hk,...hkd->...d", weights.to(read.dtype), read)  # summed over heads


class MemoryFeedForward(nn.Module):
    """SwiGLU whose up-projection is a product-key memory: w2(silu(w1 x) * mem(x))."""

    def __init__(self, dim: int, hidden: int, cfg: MemoryConfig):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.memory = ProductKeyMemory(dim, cfg)

    def forward(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.memory(x, values))


def init_values(values: nn.Embedding):
    """Rows of about unit norm: a read mixes top-k rows convexly and sums the heads' reads."""
    nn.init.normal_(values.weight, std=1.0 / math.sqrt(values.weight.shape[1]))
