"""Boolean attention masks, True = may attend.

One rule covers every self-attention in the project: a query at position q may attend to a
key at position k when k <= q (causal), q - k < window (sliding window; None = unbounded),
both belong to the same document, and the key is real (position >= 0; padding uses -1).
Masks are (B, 1, Tq, Tk) so they broadcast over heads in scaled_dot_product_attention.
"""
from __future__ import annotations

import torch


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
