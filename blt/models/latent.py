"""BLT latent (global) transformer: one step per patch, where most of the compute goes.

    patch vectors (B, P, D_latent) -> TransformerStack -> latent outputs (B, P, D_latent)

Causal over patches, positions = patch index, attention span of at most `span` patches,
document-aware: a patch belongs to the document of its first byte (a BOS always starts a
patch, so a patch never holds bytes of two documents). Rows hold different numbers of
patches; the padding patches (index >= n_patches) are never attended to.
"""
from __future__ import annotations

import torch
from torch import nn

from blt.models.masks import window_mask
from blt.models.transformer import TransformerConfig, TransformerStack


def patch_documents(byte_docs: torch.Tensor, byte_patch: torch.Tensor, P: int) -> torch.Tensor:
    """Document index of each patch (that of its bytes); padding patches get -1. (B, P)"""
    B = byte_docs.shape[0]
    empty = torch.full((B, P), -1, dtype=byte_docs.dtype, device=byte_docs.device)
    return empty.scatter_reduce(1, byte_patch, byte_docs, reduce="amin", include_self=False)


class LatentTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, span: int):
        super().__init__()
        self.cfg = cfg
        self.span = min(cfg.window or span, span)  # patches a query sees, itself included
        self.stack = TransformerStack(cfg)

    @torch.no_grad()
    def init_weights(self):
        self.stack.init_weights()

    def forward(self, patches: torch.Tensor, patch_docs: torch.Tensor, n_patches: torch.Tensor) -> torch.Tensor:
        """patches (B, P, D), patch_docs (B, P), n_patches (B,) -> (B, P, D)"""
        B, P, _ = patches.shape
        index = torch.arange(P, device=patches.device).expand(B, P)
        pos = torch.where(index < n_patches[:, None], index, -1)  # -1 marks padding
        window = self.span if self.span < P else None
        mask = window_mask(pos, window, patch_docs)  # dense (B, 1, P, P), or blocked for short windows
        return self.stack(patches, pos, mask)
