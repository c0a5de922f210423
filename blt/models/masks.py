"""Boolean attention masks, True = may attend.

One rule covers every self-attention in the project: a query at position q may attend to a
key at position k when k <= q (causal), q - k < window (sliding window; None = unbounded),
both belong to the same document, and the key is real (position >= 0; padding uses -1).
Masks are (B, 1, Tq, Tk) so they broadcast over heads in scaled_dot_product_attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_mask(
    q_pos: torch.Tensor,  # (B, Tq) int
    k_pos: torch.Tensor,  # (B, Tk) int, -1 = empty slot
    window: int | None = None,
    q_doc: torch.Tensor | None = None,  # (B, Tq)
    k_doc: torch.Tensor | None = None,  # (B, Tk)
) -> torch.Tensor:
    q = q_pos[:, :, None]  # (B, Tq, 1)
    k = k_pos[:, None, :]  # (B, 1, Tk)
    allowed = (k >= 0) & (k <= q)
    if window is not None:
        allowed &= (q - k) < window
    if q_doc is not None:
        allowed &= q_doc[:, :, None] == k_doc[:, None, :]
    # A padding query (position -1) sees nothing; let it see every slot so SDPA stays finite.
    allowed |= (q < 0)
    return allowed[:, None]  # (B, 1, Tq, Tk)


def document_ids(ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Document index of each position: increments at every BOS. (B, T)"""
    return torch.cumsum((ids == bos_id).long(), dim=1)


class BlockedWindowMask:
    """Sliding-window attention computed block by block, for windows much shorter than T.

    Queries are cut into blocks of `window` positions; a query block attends only to its own
    block and the one before it (2 * window keys instead of T), which holds every key the
    window allows. Inside those blocks the usual rule applies (`attention_mask`), so the
    result equals dense attention under the full mask. Built once per forward and shared by
    every layer of a stack. positions, docs: (B, T); positions are 0..T-1 for real
    positions (-1 for padding).
    """

    def __init__(self, positions: torch.Tensor, window: int, docs: torch.Tensor | None = None):
        B, T = positions.shape
        self.T, self.W = T, window
        self.nb = -(-T // window)  # blocks
        pad = self.nb * window - T
        pos = F.pad(positions, (0, pad), value=-1).view(B, self.nb, window)  # (B, nb, W)
        prev = F.pad(pos, (0, 0, 1, 0), value=-1)[:, :-1]  # (B, nb, W) the block before
        keys = torch.cat([prev, pos], dim=2)  # (B, nb, 2W)
        q, k = pos[..., :, None], keys[..., None, :]  # (B, nb, W, 1), (B, nb, 1, 2W)
        allowed = (k >= 0) & (k <= q) & ((q - k) < window)
        if docs is not None:
            d = F.pad(docs, (0, pad), value=-1).view(B, self.nb, window)
            dk = torch.cat([F.pad(d, (0, 0, 1, 0), value=-1)[:, :-1], d], dim=2)
            allowed &= d[..., :, None] == dk[..., None, :]
        allowed |= q < 0  # padding queries see everything, staying finite
        self.mask = allowed.view(B * self.nb, 1, window, 2 * window)

    def _blocks(self, x: torch.Tensor, with_prev: bool) -> torch.Tensor:
        """(B, H, T, D) -> (B*nb, H, W or 2W, D)"""
        B, H, T, D = x.shape
        x = F.pad(x, (0, 0, 0, self.nb * self.W - T)).view(B, H, self.nb, self.W, D)
        if with_prev:
            x = torch.cat([F.pad(x, (0, 0, 0, 0, 1, 0))[:, :, :-1], x], dim=3)  # (B, H, nb, 2W, D)
        return x.transpose(1, 2).reshape(B * self.nb, H, x.shape[3], D)

    def attend(self, q, k, v, enable_gqa: bool = False) -> torch.Tensor:
        """q (B, H, T, D), k/v (B, Hkv, T, D) -> (B, H, T, D)"""
        B, H, T, D = q.shape
        y = F.scaled_dot_product_attention(
            self._blocks(q, False), self._blocks(k, True), self._blocks(v, True),
            attn_mask=self.mask, enable_gqa=enable_gqa,
        )  # (B*nb, H, W, D)
        return y.view(B, self.nb, H, self.W, D).transpose(1, 2).reshape(B, H, self.nb * self.W, D)[:, :, :T]


def window_mask(positions: torch.Tensor, window: int | None, docs: torch.Tensor | None = None):
    """The cheapest exact form of the causal (+window, +document) mask over positions (B, T):
    blocked when the window is under half of T, else a dense (B, 1, T, T) bool mask."""
    T = positions.shape[1]
    if window is not None and 2 * window <= T:
        return BlockedWindowMask(positions, window, docs)
    return attention_mask(positions, positions, window, docs, docs)


def sequence_mask(ids: torch.Tensor, window: int | None, bos_id: int):
    """The mask of a training window of ids (B, T): causal, sliding `window`, per document
    (a BOS starts one). None when that is plain causal attention (SDPA's fast path)."""
    B, T = ids.shape
    window = window if window is not None and window < T else None
    several_docs = bool((ids[:, 1:] == bos_id).any())
    if window is None and not several_docs:
        return None
    pos = torch.arange(T, device=ids.device).expand(B, T)
    return window_mask(pos, window, document_ids(ids, bos_id) if several_docs else None)
