"""Next-byte entropies from an entropy model (an ordinary byte-level run), for patching.

Alignment (see `patchers.py`): entropies[q] is the entropy, in nats, of the entropy model's
distribution that PREDICTS position q, computed from positions < q only. Position 0 and BOS
positions carry 0 (never used: BOS and the byte after it always start a patch).

- `entropy(logits)`: the one entropy formula, -sum p log p (nats) per row of logits.
- `prediction_entropies(logits)`: (B, T, V) -> (B, T+1), shifting by one into that alignment.
- `online_entropies(model, ids)`: one forward over a (B, T+1) window of documents that each
  begin with BOS (generation, evaluation). Rows never see each other.
- `window_starts(model, ids)`: a BLT's patch starts of windows with its attached patcher,
  entropies computed online when it needs them.
Entropies of whole corpora (batched, windowed, stored as an entropy file) are computed by
blt.evaluation.entropies with the windowed scorer; the file format is `entropy_file.py`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from blt.models.masks import document_ids, window_mask
from blt.vocab import BOS_ID


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last dimension, in float32. (...)"""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def prediction_entropies(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits[:, q-1]) at q; 0 at q = 0. (B, T, V) -> (B, T+1)"""
    return F.pad(entropy(logits), (1, 0))


@torch.no_grad()
def online_entropies(model, ids: torch.Tensor) -> torch.Tensor:
    """Entropies for a (B, T+1) window whose documents begin with BOS. (B, T+1)

    The model sees ids[:, :-1] under its own rules: causal, one document per BOS, at most
    min(window, context) keys per query (the span it was trained with).
    """
    x = ids[:, :-1]  # (B, T)
    B, T = x.shape
    pos = torch.arange(T, device=ids.device).expand(B, T)
    docs = document_ids(x, BOS_ID)
    logits = model(x, positions=pos, mask=window_mask(pos, model.cfg.span, docs))  # (B, T, V)
    return prediction_entropies(logits).masked_fill(ids == BOS_ID, 0.0)


@torch.no_grad()
def window_starts(model, ids_window: torch.Tensor, entropies: torch.Tensor | None = None) -> torch.Tensor:
    """Patch starts (B, T+1) of windows ids (B, T+1) with a BLT's attached patcher; entropies
    (B, T+1) are computed online with its entropy model when the patcher needs them and none
    are given."""
    model.check_patching()
    if model.patcher.needs_entropy and entropies is None:
        entropies = online_entropies(model.entropy_model, ids_window)
    return model.patcher.starts(ids_window, entropies)
