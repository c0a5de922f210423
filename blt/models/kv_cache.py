"""A preallocated ring-buffer KV cache for every layer of one transformer stack.

Each slot remembers the absolute position of the key it holds (-1 = empty), so the attention
mask for cached decoding is the same rule as in training (`masks.attention_mask`) and rows of
a batch may sit at different positions (left-padded ragged prompts). Each query sees at most
`window` keys (itself included). Writing T new entries overwrites the oldest slots, so the cache
holds `window + max_step - 1` slots and a step may add at most `max_step` positions: callers
split long prefills into chunks of that size. A full-causal model decodes with window = its
context, i.e. attention slides once a sequence outgrows the context.
"""
from __future__ import annotations

import torch

from blt.models.masks import attention_mask


class KVCache:
    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        head_dim: int,
        window: int,
        max_step: int,
        dtype=torch.float32,
        device=None,
    ):
        length = window + max_step - 1
        shape = (n_layers, batch, n_kv_heads, length, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.key_pos = torch.full((batch, length), -1, dtype=torch.long, device=device)  # (B, L)
        self.length = length
        self.window, self.max_step = window, max_step
        self.cursor = 0  # ring slot for the next write, shared by all rows
        self.filled = 0  # slots written so far (the ring fills 0, 1, ... before it wraps)
        self.slots: torch.Tensor | None = None  # slots being written by the current step

    def begin(self, positions: torch.Tensor) -> torch.Tensor:
        """Claim slots for a step's new positions (B, T); return the step's mask (B,1,T,L)."""
        t = positions.shape[1]
        if t > self.max_step:
            raise ValueError(f"a step of {t} positions exceeds this cache's max_step {self.max_step}")
        self.slots = (self.cursor + torch.arange(t, device=positions.device)) % self.length
        self.cursor = (self.cursor + t) % self.length
        self.filled = min(self.filled + t, self.length)
        self.key_pos[:, self.slots] = positions
        # until the ring wraps, only its first `filled` slots hold keys: attend to those alone
        return attention_mask(positions, self.key_pos[:, : self.filled], self.window)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values (B, H, T, D) for `layer`; return the filled slots (B, H, S, D)."""
        self.k[layer][:, :, self.slots] = k
        self.v[layer][:, :, self.slots] = v
        return self.k[layer][:, :, : self.filled], self.v[layer][:, :, : self.filled]
