"""BLT local encoder: bytes -> byte states and one vector per patch.

    ids (B, T) -> hash n-gram embedding -> transformer blocks (causal, sliding window,
    document-aware) -> byte states (B, T, D_enc)
    byte states -> cross-attention pooling -> patch vectors (B, P, D_latent)

Pooling: each patch gets k query vectors, initialised by max-pooling the byte states of the
patch and projecting D_enc -> k*D_enc; the queries of patch j attend only to the bytes of
patch j. The k outputs are concatenated and projected to the latent width. A patch vector
therefore depends on its own bytes (and, through the causal byte blocks, on bytes before
them), never on a later byte. Rows are padded to P patches; a padding patch's queries attend
to every byte of the row so its (unused) vector stays finite.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from blt.models.cross_attention import CrossAttention
from blt.models.hash_ngram import HashNgramEmbedding
from blt.models.masks import sequence_mask
from blt.models.transformer import TransformerConfig, TransformerStack, init_linear
from blt.vocab import BOS_ID


def pool_mask(byte_patch: torch.Tensor, n_patches: torch.Tensor, P: int, k: int) -> torch.Tensor:
    """Query slot s (of patch s // k) may see byte t when byte t lies in that patch. (B, 1, P*k, T)"""
    slot_patch = torch.arange(P * k, device=byte_patch.device) // k  # (P*k,)
    allowed = byte_patch[:, None, :] == slot_patch[None, :, None]  # (B, P*k, T)
    allowed |= (slot_patch[None, :] >= n_patches[:, None])[..., None]  # padding patches see all
    return allowed[:, None]


class LocalEncoder(nn.Module):
    def __init__(self, cfg: TransformerConfig, latent_dim: int, k: int, ngram_sizes: list[int],
                 n_hash_functions: int, hash_buckets: int):
        super().__init__()
        self.cfg, self.k = cfg, k
        self.embed = HashNgramEmbedding(cfg.dim, ngram_sizes, n_hash_functions, hash_buckets)
        self.stack = TransformerStack(cfg)
        self.query_proj = nn.Linear(cfg.dim, k * cfg.dim, bias=False)
        self.pool = CrossAttention(cfg.dim, cfg.n_heads, cfg.norm_eps)
        self.to_latent = nn.Linear(k * cfg.dim, latent_dim, bias=False)

    @torch.no_grad()
    def init_weights(self):
        std = self.cfg.init_std
        self.embed.init_weights()
        self.stack.init_weights()
        init_linear(self.query_proj, std)
        self.pool.init_weights(std, std / math.sqrt(2))
        init_linear(self.to_latent, (self.k * self.cfg.dim) ** -0.5)

    def forward(self, ids, byte_patch, n_patches, P: int):
        """ids (B, T), byte_patch (B, T) patch index of each byte, n_patches (B,) real patches
        per row, P = padded patch count -> (byte states (B, T, D_enc), patches (B, P, D_latent))"""
        B, T = ids.shape
        pos = torch.arange(T, device=ids.device).expand(B, T)
        h = self.embed(ids)  # (B, T, D)
        h = self.stack(h, pos, sequence_mask(ids, self.cfg.window, BOS_ID))  # (B, T, D)
        D = h.shape[-1]
        # max-pool each patch's byte states; padding patches keep zeros
        index = byte_patch[..., None].expand(B, T, D)
        pooled = h.new_zeros(B, P, D).scatter_reduce(1, index, h, reduce="amax", include_self=False)
        queries = self.query_proj(pooled).view(B, P * self.k, D)  # (B, P*k, D)
        out = self.pool(queries, h, pool_mask(byte_patch, n_patches, P, self.k))  # (B, P*k, D)
        return h, self.to_latent(out.view(B, P, self.k * D))  # (B, T, D), (B, P, D_latent)
