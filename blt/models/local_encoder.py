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

Byte attention spans min(window, context) bytes, so a window longer than the training context
(scoring) gives every byte the span it had in training. `pool_patch` pools one patch per row
(incremental generation), the same arithmetic as `pool_patches`.
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
                 n_hash_functions: int, hash_buckets: int, context: int):
        super().__init__()
        self.cfg, self.k = cfg, k
        self.byte_span = cfg.span_within(context)  # keys a byte sees, itself included
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

    def byte_states(self, ids: torch.Tensor, positions=None, cache=None) -> torch.Tensor:
        """ids (B, T) -> byte states (B, T, D): the training mask, or the given cache's."""
        B, T = ids.shape
        if positions is None:
            positions = torch.arange(T, device=ids.device).expand(B, T)
        mask = None if cache is not None else sequence_mask(ids, self.byte_span, BOS_ID)
        return self.stack(self.embed(ids), positions, mask, cache)

    def _to_latent(self, pooled: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Max-pooled states (..., P, D) -> k queries each over states (..., S, D) under mask
        (..., 1, P*k, S) -> patch vectors (..., P, D_latent)"""
        *lead, P, D = pooled.shape
        queries = self.query_proj(pooled).view(*lead, P * self.k, D)  # (..., P*k, D)
        out = self.pool(queries, states, mask)  # (..., P*k, D)
        return self.to_latent(out.view(*lead, P, self.k * D))

    def pool_patches(self, h, byte_patch, n_patches, P: int) -> torch.Tensor:
        """Byte states (B, T, D), byte_patch (B, T), n_patches (B,) -> patch vectors (B, P, D_latent)"""
        B, T, D = h.shape
        # max-pool each patch's byte states; padding patches keep zeros
        index = byte_patch[..., None].expand(B, T, D)
        pooled = h.new_zeros(B, P, D).scatter_reduce(1, index, h, reduce="amax", include_self=False)
        return self._to_latent(pooled, h, pool_mask(byte_patch, n_patches, P, self.k))

    def pool_patch(self, states: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """One patch per row: its byte states (n, L, D), valid (n, L) -> (n, D_latent)"""
        pooled = states.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)  # (n, D)
        return self._to_latent(pooled[:, None], states, valid[:, None, None, :])[:, 0]

    def forward(self, ids, byte_patch, n_patches, P: int):
        """ids (B, T), byte_patch (B, T) patch index of each byte, n_patches (B,) real patches
        per row, P = padded patch count -> (byte states (B, T, D_enc), patches (B, P, D_latent))"""
        h = self.byte_states(ids)  # (B, T, D)
        return h, self.pool_patches(h, byte_patch, n_patches, P)
