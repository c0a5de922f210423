"""Cross-attention between bytes and patches, used by both BLT local models.

Pre-norm on both sides, no biases, no rotary embeddings (queries and keys live on different
axes, bytes vs patches, so relative positions mean nothing here), a residual connection on the
queries: x + o(attn) ('single'), or 2x + o(attn) ('double', the released BLTs' form: their
module adds x and its caller adds x again). Keys and values may have fewer heads than the
queries (grouped-query attention, as the part's own self-attention). Any number of leading batch
dimensions is accepted: the encoder passes (B, P*k, D) queries over (B, T, D) bytes with a mask;
the decoder passes (B, T, 1, D) byte queries over the (B, T, k, D) key/value slots gathered for
each byte, needing no mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blt.models.transformer import RMSNorm, init_linear

RESIDUALS = ("single", "double")


class CrossAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, norm_eps: float = 1e-5,
                 residual: str = "single"):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.skip = 2.0 if residual == "double" else 1.0
        self.q_norm = RMSNorm(dim, norm_eps)
        self.kv_norm = RMSNorm(dim, norm_eps)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    @torch.no_grad()
    def init_weights(self, std: float, out_std: float):
        self.q_norm.init_weights()
        self.kv_norm.init_weights()
        for lin in (self.wq, self.wk, self.wv):
            init_linear(lin, std)
        init_linear(self.wo, out_std)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """(..., L, n*Dh) -> (..., n, L, Dh)"""
        return x.unflatten(-1, (n, self.head_dim)).transpose(-2, -3)

    def keys_values(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sources (..., S, D) -> keys, values (..., Hkv, S, Dh): computed once, attended many times."""
        src = self.kv_norm(kv)
        return self._heads(self.wk(src), self.n_kv_heads), self._heads(self.wv(src), self.n_kv_heads)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None):
        """x (..., L, D) queries over projected keys/values (..., Hkv, S, Dh) -> (..., L, D)"""
        q = self._heads(self.wq(self.q_norm(x)), self.n_heads)  # (..., H, L, Dh)
        if self.n_kv_heads != self.n_heads:  # (SDPA's enable_gqa wants 4-D inputs; the decoder has 5)
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=-3)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=-3)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (..., H, L, Dh)
        out = self.wo(y.transpose(-2, -3).flatten(-2))
        return x + out if self.skip == 1.0 else self.skip * x + out

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., L, D) queries, kv (..., S, D) sources, mask (..., 1, L, S) bool -> (..., L, D)"""
        return self.attend(x, *self.keys_values(kv), mask)
