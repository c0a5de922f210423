"""Cross-attention between bytes and patches, used by both BLT local models.

Pre-norm on both sides, no biases, no rotary embeddings (queries and keys live on different
axes, bytes vs patches, so relative positions mean nothing here), a residual connection on the
queries. Any number of leading batch dimensions is accepted: the encoder passes
(B, P*k, D) queries over (B, T, D) bytes with a mask; the decoder passes (B, T, 1, D) byte
queries over the (B, T, k, D) key/value slots gathered for each byte, needing no mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blt.models.transformer import RMSNorm, init_linear


class CrossAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, norm_eps: float = 1e-5):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q_norm = RMSNorm(dim, norm_eps)
        self.kv_norm = RMSNorm(dim, norm_eps)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    @torch.no_grad()
    def init_weights(self, std: float, out_std: float):
        self.q_norm.init_weights()
        self.kv_norm.init_weights()
        for lin in (self.wq, self.wk, self.wv):
            init_linear(lin, std)
        init_linear(self.wo, out_std)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., L, D) -> (..., H, L, Dh)"""
        return x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(-2, -3)

    def keys_values(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sources (..., S, D) -> keys, values (..., H, S, Dh): computed once, attended many times."""
        src = self.kv_norm(kv)
        return self._heads(self.wk(src)), self._heads(self.wv(src))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None):
        """x (..., L, D) queries over projected keys/values (..., H, S, Dh) -> (..., L, D)"""
        q = self._heads(self.wq(self.q_norm(x)))  # (..., H, L, Dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (..., H, L, Dh)
        return x + self.wo(y.transpose(-2, -3).flatten(-2))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., L, D) queries, kv (..., S, D) sources, mask (..., 1, L, S) bool -> (..., L, D)"""
        return self.attend(x, *self.keys_values(kv), mask)
