"""Llama-style transformer blocks, shared by every model in the project.

Pre-norm RMSNorm, rotary position embeddings (RoPE, half-split rotation), no biases,
SwiGLU feed-forward, optional grouped-query attention, attention through
`scaled_dot_product_attention` with a boolean mask (see `masks.py`) or the causal fast path.

Contract of `TransformerStack.forward(h, positions, mask, cache, before_layer, after_layer)`:
- h: (B, T, D) input states, positions: (B, T) absolute positions (RoPE uses them);
- mask: (B, 1, T, S) bool, a masks.BlockedWindowMask (sliding windows much shorter than T),
  or None for plain causal attention over the T positions;
- cache: a `KVCache` already `begin()`-ed for these positions (its mask is then used);
- before_layer(i, h) / after_layer(i, h) -> h: what a caller does around block i (a BLT decoder
  cross-attends before every block, an encoder pools after every block).
The final RMSNorm is optional (`final_norm`: the released BLTs' encoder and latent have none).
`memory` turns the feed-forwards of a few equally spaced blocks into Memory+ layers (memory.py),
which read one value table the stack owns.
Models are built first and initialised by `init_weights()` afterwards, so they can be built
on the meta device and sharded (FSDP2) before any memory is touched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from blt.config import InvalidValue, must
from blt.models.kv_cache import KVCache
from blt.models.masks import BlockedWindowMask
from blt.models.memory import MemoryConfig, MemoryFeedForward, init_values, memory_blocks


@dataclass
class TransformerConfig:
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (no grouping)
    ffn_dim: int | None = None  # None = 8/3 * dim rounded up to a multiple of 32 (SwiGLU)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    window: int | None = None  # sliding-window span: keys a query sees, itself included; None = all
    init_std: float = 0.02
    final_norm: bool | None = None  # an RMSNorm after the last block; None = yes (or a BLT preset's choice)
    memory: MemoryConfig | None = None  # Memory+ feed-forwards in some blocks (models/memory.py)

    def validate(self):
        for name in ("dim", "n_heads"):
            must(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        must(self.n_layers >= 0, "n_layers", "at least 0", self.n_layers)
        for name in ("n_kv_heads", "ffn_dim", "window"):
            value = getattr(self, name)
            must(value is None or value >= 1, name, "at least 1 or null", value)
        for name in ("norm_eps", "rope_theta", "init_std"):
            must(0 < getattr(self, name) < math.inf, name, "a positive finite number", getattr(self, name))
        must(self.dim % self.n_heads == 0, "n_heads", f"a divisor of dim ({self.dim})", self.n_heads)
        if self.head_dim % 2:
            raise InvalidValue("n_heads", f"gives an odd head dimension ({self.dim} / {self.n_heads}); RoPE needs "
                                          f"an even one")
        must(self.n_heads % self.kv_heads == 0, "n_kv_heads", f"a divisor of n_heads ({self.n_heads})", self.kv_heads)
        if self.memory is not None:
            try:
                self.memory.validate()
            except InvalidValue as e:
                raise InvalidValue(f"memory.{e.field}", e.problem) from None
            must(self.memory.layers <= self.n_layers, "memory.layers", f"at most n_layers ({self.n_layers})",
                 self.memory.layers)

    def attention_mask_bytes(self, batch: int, positions: int) -> int:
        """Bytes of the boolean self-attention mask of a training window of `positions` (blocks
        of 2 x window keys per query under a short sliding window, else all of them:
        masks.window_mask), the largest tensor whose size grows with the square of the context."""
        keys = 2 * self.window if self.window is not None and 2 * self.window <= positions else positions
        return batch * positions * keys

    def span_within(self, context: int) -> int:
        """Keys a query sees, itself included, in a model trained on `context` positions: the
        sliding window, capped by the context (the span scoring and generation slide with)."""
        return min(self.window or context, context)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_dim:
            return self.ffn_dim
        return 32 * math.ceil(8 * self.dim / 3 / 32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def init_weights(self):
        nn.init.ones_(self.weight)

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Rotary(nn.Module):
    """cos/sin tables computed from positions on the fly (cheap, and any position works)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)

    def init_buffers(self):
        """Fill the non-persistent buffer (checkpoints do not hold it)."""
        exps = torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=self.inv_freq.device)
        self.inv_freq.copy_((1.0 / self.theta ** (exps / self.head_dim)).float())

    def init_weights(self):
        self.init_buffers()

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.clamp(min=0).float()[..., None] * self.inv_freq  # (B, T, D/2)
        return angles.cos()[:, None], angles.sin()[:, None]  # (B, 1, T, D/2) each


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]) by the position's angle. x: (B, H, T, D)"""
    a, b = x.float().chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int):
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.layer = layer
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, rope, mask=None, cache: KVCache | None = None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.wk(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.wv(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, Hkv, L, D)
        gqa = self.kv_heads != self.n_heads
        if isinstance(mask, BlockedWindowMask):
            y = mask.attend(q, k, v, gqa)
        elif mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int, memory: bool = False):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.has_memory = memory
        self.ffn = MemoryFeedForward(cfg.dim, cfg.hidden_dim, cfg.memory) if memory else FeedForward(cfg.dim, cfg.hidden_dim)

    def forward(self, h, rope, mask=None, cache=None, values=None):
        """values: the stack's memory values, read by a memory block's feed-forward."""
        h = h + self.attn(self.attn_norm(h), rope, mask, cache)
        x = self.ffn_norm(h)
        return h + (self.ffn(x, values) if self.has_memory else self.ffn(x))


def init_linear(linear: nn.Linear, std: float):
    nn.init.trunc_normal_(linear.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)


class TransformerStack(nn.Module):
    """n_layers blocks and (optionally) a final norm; states in, states out."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)
        memory = memory_blocks(cfg.n_layers, cfg.memory)
        self.layers = nn.ModuleList(Block(cfg, i, i in memory) for i in range(cfg.n_layers))
        self.norm = None if cfg.final_norm is False else RMSNorm(cfg.dim, cfg.norm_eps)
        # one value table for every memory block (Memory+ shares it)
        self.memory_values = nn.Embedding(cfg.memory.slots, cfg.hidden_dim) if memory else None
        self.checkpointing = False  # recompute each block's activations in the backward pass

    @torch.no_grad()
    def init_weights(self):
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * max(1, self.cfg.n_layers))  # residual writes scaled by depth
        self.rotary.init_weights()
        if self.norm is not None:
            self.norm.init_weights()
        for block in self.layers:
            block.attn_norm.init_weights()
            block.ffn_norm.init_weights()
            for lin in (block.attn.wq, block.attn.wk, block.attn.wv, block.ffn.w1):
                init_linear(lin, std)
            if block.has_memory:
                block.ffn.memory.init_weights(std)
            else:
                init_linear(block.ffn.w3, std)
            init_linear(block.attn.wo, out_std)
            init_linear(block.ffn.w2, out_std)
        if self.memory_values is not None:
            init_values(self.memory_values)

    def new_cache(self, batch: int, context: int, max_step: int, dtype=torch.float32, device=None) -> KVCache:
        """A cache whose queries see min(window, context) keys; steps add <= max_step positions."""
        c = self.cfg
        window = min(c.window or context, context)
        return KVCache(c.n_layers, batch, c.kv_heads, c.head_dim, window, max_step, dtype, device)

    def forward(self, h, positions, mask=None, cache: KVCache | None = None, before_layer=None, after_layer=None):
        rope = self.rotary(positions)
        if cache is not None:
            mask = cache.begin(positions)
        values = None if self.memory_values is None else self.memory_values.weight
        for i, block in enumerate(self.layers):
            if before_layer is not None:
                h = before_layer(i, h)
            if self.checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, rope, mask, cache, values, use_reentrant=False)
            else:
                h = block(h, rope, mask, cache, values)
            if after_layer is not None:
                h = after_layer(i, h)
        return h if self.norm is None else self.norm(h)
