"""BLT local encoder: bytes -> byte states and one vector per patch.

    ids (B, T) -> hash n-gram embedding -> transformer blocks (causal, sliding window,
    document-aware) -> byte states (B, T, D_enc)
    byte states -> cross-attention pooling -> patch vectors (B, P, D_latent)

Pooling: each patch gets k query vectors, initialised by max-pooling the byte states of the
patch and projecting D_enc -> k*D_enc; the queries of patch j attend only to the bytes of
patch j (CrossAttention with `segment=`: a patch's bytes are contiguous, so the scores are
k per byte, with no (P*k x T) mask). The k outputs are concatenated and projected to the latent
width (or passed as they are when k*D_enc is the latent width and `latent_projection` is
'when_widths_differ', as in the released models). A patch vector therefore depends on its own
bytes (and, through the causal byte blocks, on bytes before them), never on a later byte. Rows
are padded to P patches; a padding patch has no bytes, so its (unused) vector is its queries'
projection, finite.

`cross_layers` 'last': the queries cross-attend once, to the stack's output. 'every_layer' (the
paper's form): the queries are made from the first layer's states and cross-attend after every
layer to that layer's states (the last one's after the final norm, if any), each layer with its
own weights, accumulating.

Byte attention spans min(window, context) bytes, so a window longer than the training context
(scoring) gives every byte the span it had in training. `pool_patch` pools one patch per row
(incremental generation) from the same per-layer states, the same arithmetic as `pool_patches`.
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


class LocalEncoder(nn.Module):
    def __init__(self, cfg: TransformerConfig, latent_dim: int, k: int, ngram_sizes: list[int],
                 n_hash_functions: int, hash_buckets: int, context: int, *, vocab: str = "bytes",
                 hash_order: str = "newest_first", cross_residual: str = "single", cross_layers: str = "last",
                 latent_projection: str = "always"):
        super().__init__()
        self.cfg, self.k = cfg, k
        self.byte_span = cfg.span_within(context)  # keys a byte sees, itself included
        self.every_layer = cross_layers == "every_layer"
        self.embed = HashNgramEmbedding(cfg.dim, ngram_sizes, n_hash_functions, hash_buckets, vocab, hash_order)
        self.stack = TransformerStack(cfg)
        self.query_proj = nn.Linear(cfg.dim, k * cfg.dim, bias=False)

        def cross():
            return CrossAttention(cfg.dim, cfg.n_heads, cfg.kv_heads, cfg.norm_eps, cross_residual)

        self.pool = nn.ModuleList(cross() for _ in range(cfg.n_layers)) if self.every_layer else cross()
        same = k * cfg.dim == latent_dim and latent_projection == "when_widths_differ"
        self.to_latent = None if same else nn.Linear(k * cfg.dim, latent_dim, bias=False)

    @torch.no_grad()
    def init_weights(self):
        std = self.cfg.init_std
        self.embed.init_weights()
        self.stack.init_weights()
        init_linear(self.query_proj, std)
        for pool in self.pool if self.every_layer else [self.pool]:
            pool.init_weights(std, std / math.sqrt(2))
        if self.to_latent is not None:
            init_linear(self.to_latent, (self.k * self.cfg.dim) ** -0.5)

    @property
    def pool_layers(self) -> int:
        """How many sets of byte states a patch is pooled from (one per cross-attention)."""
        return self.cfg.n_layers if self.every_layer else 1

    def byte_states(self, ids: torch.Tensor, positions=None, cache=None) -> tuple[torch.Tensor, list]:
        """ids (B, T) -> (byte states (B, T, D), the states pooling reads: one (B, T, D) per
        cross-attention). The training mask, or the given cache's."""
        B, T = ids.shape
        if positions is None:
            positions = torch.arange(T, device=ids.device).expand(B, T)
        mask = None if cache is not None else sequence_mask(ids, self.byte_span, BOS_ID)
        layers = []
        keep = (lambda i, h: layers.append(h) or h) if self.every_layer else None
        h = self.stack(self.embed(ids), positions, mask, cache, after_layer=keep)
        return h, (layers[:-1] + [h]) if self.every_layer else [h]

    def _queries(self, pooled: torch.Tensor) -> torch.Tensor:
        """Max-pooled states (..., P, D) -> k queries per patch (..., P*k, D)"""
        *lead, P, D = pooled.shape
        return self.query_proj(pooled).view(*lead, P * self.k, D)

    def _pool(self, queries: torch.Tensor, states: list, byte_patch: torch.Tensor) -> torch.Tensor:
        """k queries per patch (B, P*k, D) cross-attend to their patch's bytes in each set of
        states (B, T, D), byte_patch (B, T) -> patch vectors (B, P, D_latent)"""
        pools = self.pool if self.every_layer else [self.pool]
        B, Pk, D = queries.shape
        queries = queries.view(B, Pk // self.k, self.k, D)  # (B, P, k, D)
        for pool, h in zip(pools, states):
            queries = pool(queries, h, segment=byte_patch)
        out = queries.flatten(-2)  # (B, P, k*D)
        return out if self.to_latent is None else self.to_latent(out)

    def pool_patches(self, states: list, byte_patch, P: int) -> torch.Tensor:
        """Per-layer byte states [(B, T, D)], byte_patch (B, T) -> patch vectors (B, P, D_latent)"""
        first = states[0]
        B, T, D = first.shape
        # max-pool each patch's byte states; padding patches keep zeros
        index = byte_patch[..., None].expand(B, T, D)
        pooled = first.new_zeros(B, P, D).scatter_reduce(1, index, first, reduce="amax", include_self=False)
        return self._pool(self._queries(pooled), states, byte_patch)

    def pool_patch(self, states: list, valid: torch.Tensor) -> torch.Tensor:
        """One patch per row: its per-layer byte states [(n, L, D)], valid (n, L) -> (n, D_latent)"""
        pooled = states[0].masked_fill(~valid[..., None], float("-inf")).amax(dim=1)  # (n, D)
        return self._pool(self._queries(pooled[:, None]), states, (~valid).long())[:, 0]  # invalid: dropped

    def forward(self, ids, byte_patch, P: int):
        """ids (B, T), byte_patch (B, T) patch index of each byte, P = padded patch count
        -> (byte states (B, T, D_enc), patches (B, P, D_latent))"""
        h, states = self.byte_states(ids)  # (B, T, D)
        return h, self.pool_patches(states, byte_patch, P)
