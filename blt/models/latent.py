"""BLT latent (global) transformer: one step per patch, where most of the compute goes.

    patch vectors (B, P, D_latent) -> TransformerStack -> latent outputs (B, P, D_latent)

Causal over patches, positions = patch index, document-aware: a patch belongs to the document
of its first byte (a BOS always starts a patch, so a patch never holds bytes of two documents).
Rows hold different numbers of patches; the padding patches (index >= n_patches) are never
attended to, and their outputs are zeros (nothing reads them).

PACKING: a batch's rows are padded to its longest row's count P, which can be twice the mean
(windows of many short documents: each document forces patches). So the rows are packed whole,
first-fit decreasing (`pack_rows`), into as few latent rows of P patches as hold them, each row
keeping its own positions and its own document ids (made distinct per row), so the block-diagonal
causal document mask keeps packed rows apart exactly as separate rows are kept. The latent then
computes R <= B rows instead of B; when nothing packs (R = B) the rows run as they are. A patch sees at most `span` patches (itself included), and only patches that
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


def pack_rows(counts: list[int], capacity: int) -> tuple[list[int], list[int], int]:
    """First-fit decreasing: rows of counts[b] patches into as few rows of `capacity` as hold
    them whole -> (packed row of each row, its first slot there, number of packed rows)."""
    free: list[int] = []  # room left in each packed row
    row, first = [0] * len(counts), [0] * len(counts)
    for b in sorted(range(len(counts)), key=lambda b: -counts[b]):
        r = next((r for r, room in enumerate(free) if counts[b] <= room), len(free))
        if r == len(free):
            free.append(capacity)
        row[b], first[b] = r, capacity - free[r]
        free[r] -= counts[b]
    return row, first, len(free)


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
        B, P, D = patches.shape
        index = torch.arange(P, device=patches.device).expand(B, P)
        real = index < n_patches[:, None]  # (B, P)
        row, first, R = pack_rows(n_patches.tolist(), P)
        if R == B:
            pos = torch.where(real, index, -1)  # -1 marks padding
            return self.stack(patches, pos, self.mask(pos, patch_docs, starts)).masked_fill(~real[..., None], 0.0)
        # the slot of every real patch in the packed (R*P) rows
        offset = torch.tensor(row, device=patches.device) * P + torch.tensor(first, device=patches.device)
        slot = (offset[:, None] + index)[real]  # (N,)
        rows = torch.arange(B, device=patches.device)[:, None].expand(B, P)[real]  # (N,)

        def packed(values: torch.Tensor, fill) -> torch.Tensor:  # (B, P, ...) -> (R, P, ...)
            out = values.new_full((R * P, *values.shape[2:]), fill)
            return out.index_copy(0, slot, values[real]).view(R, P, *values.shape[2:])

        pos = packed(index, -1)
        # a row's document ids are < P + 1 (each document starts a patch): shifted, distinct per row
        docs = packed(patch_docs + torch.arange(B, device=patches.device)[:, None] * (P + 1), -1)
        near = packed(starts, 0) if starts is not None else None
        out = self.stack(packed(patches, 0.0), pos, self.mask(pos, docs, near)).view(R * P, D)
        return patches.new_zeros(B, P, D).index_put((rows, index[real]), out[slot])
