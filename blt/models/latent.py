"""BLT latent (global) transformer: one step per patch, where most of the compute goes.

    patch vectors (B, P, D_latent) -> TransformerStack -> latent outputs (B, P, D_latent)

Causal over patches, positions = patch index, document-aware: a patch belongs to the document
of its first byte (a BOS always starts a patch, so a patch never holds bytes of two documents).
Rows hold different numbers of patches; the padding patches (index >= n_patches) are never
attended to. A patch sees at most `span` patches (itself included), and only patches that
START fewer than `byte_span` (the BLT's byte context) bytes before its own start: a training
window never holds more, so the rule binds only on longer inputs (scoring, generation), where
it gives the latent the left context it had in training, as sliding windows do for the byte
levels.
"""
from __future__ import annotations

import torch
from torch import nn

from blt.models.masks import attention_mask, window_mask
from blt.models.transformer import TransformerConfig, TransformerStack


def patch_documents(byte_docs: torch.Tensor, byte_patch: torch.Tensor, P: int) -> torch.Tensor:
    """Document index of each patch (that of its bytes); padding patches get -1. (B, P)"""
    B = byte_docs.shape[0]
    empty = torch.full((B, P), -1, dtype=byte_docs.dtype, device=byte_docs.device)
    return empty.scatter_reduce(1, byte_patch, byte_docs, reduce="amin", include_self=False)


def patch_start_positions(byte_patch: torch.Tensor, P: int) -> torch.Tensor:
    """Position of the first byte of each patch; padding patches get 0. (B, P)"""
    B, T = byte_patch.shape
    positions = torch.arange(T, device=byte_patch.device).expand(B, T)
    empty = torch.zeros(B, P, dtype=torch.long, device=byte_patch.device)
    return empty.scatter_reduce(1, byte_patch, positions, reduce="amin", include_self=False)


def byte_span_mask(mask: torch.Tensor, pos: torch.Tensor, starts: torch.Tensor, byte_span: int) -> torch.Tensor:
    """A dense (B, 1, P, P) mask restricted to keys starting fewer than byte_span bytes before
    the query's start; padding queries (pos -1) keep seeing every key, so SDPA stays finite."""
    near = (starts[:, :, None] - starts[:, None, :]) < byte_span  # (B, P, P)
    return mask & (near | (pos < 0)[:, :, None])[:, None]


class LatentTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, span: int, byte_span: int):
        super().__init__()
        self.cfg = cfg
        self.span = min(cfg.window or span, span)  # patches a query sees, itself included
        self.byte_span = byte_span
        self.stack = TransformerStack(cfg)

    @torch.no_grad()
    def init_weights(self):
        self.stack.init_weights()

    def mask(self, pos: torch.Tensor, patch_docs: torch.Tensor | None = None, starts: torch.Tensor | None = None):
        """The attention mask over patch positions (B, P) (-1 = padding); `starts` (B, P) only
        when the input is long enough for the byte-span rule to bind."""
        P = pos.shape[1]
        window = self.span if self.span < P else None
        if starts is None:
            return window_mask(pos, window, patch_docs)  # dense (B, 1, P, P), or blocked for short windows
        return byte_span_mask(attention_mask(pos, pos, window, patch_docs, patch_docs), pos, starts, self.byte_span)

    def forward(self, patches: torch.Tensor, patch_docs: torch.Tensor, n_patches: torch.Tensor,
                starts: torch.Tensor | None = None) -> torch.Tensor:
        """patches (B, P, D), patch_docs (B, P), n_patches (B,), starts (B, P) or None -> (B, P, D)"""
        B, P, _ = patches.shape
        index = torch.arange(P, device=patches.device).expand(B, P)
        pos = torch.where(index < n_patches[:, None], index, -1)  # -1 marks padding
        return self.stack(patches, pos, self.mask(pos, patch_docs, starts))
