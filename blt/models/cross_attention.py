"""Cross-attention between bytes and patches, used by both BLT local models.

Pre-norm on both sides, no biases, no rotary embeddings (queries and keys live on different
axes, bytes vs patches, so relative positions mean nothing here), a residual connection on the
queries: x + o(attn) ('single'), or 2x + o(attn) ('double', the released BLTs' form: their
module adds x and its caller adds x again). Keys and values may have fewer heads than the
queries (grouped-query attention, as the part's own self-attention).

Two uses (`forward`, so that module hooks such as FLOP counters see each call), both without a
(queries x all keys) score matrix:
- `gather=`: the decoder. (B, T, 1, D) byte queries over the k slots of one patch each: the
  slots (B, P, k, D) are projected to keys and values once per patch and gathered per byte
  (incremental generation uses the same two steps, `keys_values` then `attend`); no mask.
- `segment=`: the encoder's pooling. Sources (bytes) come in contiguous segments (patches);
  the L queries of segment j attend only to the sources of segment j. Scores are computed per
  source for its own segment's queries (O(T*L), not O(S*L*T) under a dense mask), the softmax
  runs over each segment with scatter reductions, and the weighted values are summed into
  their segment. Both products are matmuls, so FLOP counters see them.
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

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x (..., L, D) queries over projected keys/values (..., Hkv, S, Dh), every query over
        every key -> (..., L, D)"""
        q = self._heads(self.wq(self.q_norm(x)), self.n_heads)  # (..., H, L, Dh)
        if self.n_kv_heads != self.n_heads:  # (SDPA's enable_gqa wants 4-D inputs; the decoder has 5)
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=-3)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=-3)
        y = F.scaled_dot_product_attention(q, k, v)  # (..., H, L, Dh)
        return self._residual(x, self.wo(y.transpose(-2, -3).flatten(-2)))

    def _residual(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return x + out if self.skip == 1.0 else self.skip * x + out

    def attend_segments(self, x: torch.Tensor, kv: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        """x (B, S, L, D) L queries per segment, kv (B, T, D) sources, segment (B, T) the segment
        of each source (an index >= S drops it) -> (B, S, L, D). A segment without sources gets
        no attention output (only its residual)."""
        B, S, L, D = x.shape
        T, H, Dh = kv.shape[1], self.n_heads, self.head_dim
        q = self._heads(self.wq(self.q_norm(x)), H)  # (B, S, H, L, Dh)
        k, v = self.keys_values(kv)  # (B, Hkv, T, Dh)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, T, Hkv, Dh)
        if self.n_kv_heads != H:
            k = k.repeat_interleave(H // self.n_kv_heads, dim=2)  # (B, T, H, Dh)
            v = v.repeat_interleave(H // self.n_kv_heads, dim=2)
        seg = segment.clamp(max=S)  # S: a spare segment that collects what is dropped
        rows = torch.arange(B, device=x.device)[:, None]
        q = torch.cat([q, q.new_zeros(B, 1, H, L, Dh)], dim=1)[rows, seg]  # (B, T, H, L, Dh): its segment's
        scores = (q @ k[..., None]).squeeze(-1) * Dh**-0.5  # (B, T, H, L)
        index = seg[:, :, None, None].expand(B, T, H, L)
        top = scores.new_full((B, S + 1, H, L), float("-inf"))
        top = top.scatter_reduce(1, index, scores.detach(), reduce="amax")  # softmax is shift-invariant
        e = (scores - top.gather(1, index)).exp()  # (B, T, H, L)
        total = e.new_zeros(B, S + 1, H, L).scatter_add(1, index, e)
        weights = e / total.gather(1, index)
        weighted = weights[..., None] @ v[:, :, :, None, :]  # (B, T, H, L, Dh)
        y = weighted.new_zeros(B, S + 1, H, L, Dh).scatter_add(1, index[..., None].expand_as(weighted), weighted)
        return self._residual(x, self.wo(y[:, :S].transpose(2, 3).flatten(-2)))  # (B, S, L, D)

    def forward(self, x: torch.Tensor, sources: torch.Tensor, *, gather: torch.Tensor | None = None,
                segment: torch.Tensor | None = None) -> torch.Tensor:
        """gather (B, T): x (B, T, L, D) queries, row t over the slots sources[:, gather[t]] of
        sources (B, P, S, D); segment (B, T): see attend_segments. -> x's shape"""
        if segment is not None:
            return self.attend_segments(x, sources, segment)
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        k, v = (y[rows, gather] for y in self.keys_values(sources))  # (B, T, Hkv, S, Dh) each
        return self.attend(x, k, v)
