"""The entropy model's per-position signals for patching: entropies and surprisals.

Alignment (see `patchers.py`): the signal at position q is computed from positions < q only.
- 'entropy': the entropy, in nats, of the distribution that PREDICTS position q;
- 'surprisal': the surprisal, in nats, of the byte at q-1 under the distribution that predicted
  it (-log p(ids[q-1] | ids[:q-1])), the information the byte carried.
Position 0 and BOS positions carry 0, and so does a surprisal at q = 1 or after a BOS (no
prediction made the first byte of a window; BOS is no byte): values patchers never read.

- `entropy(logits)`: the one entropy formula, -sum p log p (nats) per row of logits;
  `prediction_entropies(logits)`: (B, T, V) -> (B, T+1), shifted by one into the alignment.
- `position_signal(signal, logits, ids)`: (B, T, V) logits over inputs ids[:, :T] -> (B, T+1).
- `next_signal(signal, before, x, after)`: the same, one position at a time (generation).
- `online_signal(model, ids, signal)`: one forward over a (B, T+1) window of documents that each
  begin with BOS (generation, evaluation). Rows never see each other.
- `window_starts(model, ids)`: a BLT's patch starts of windows with its attached patcher, its
  signal computed online when it needs one.
Signals of whole corpora (batched, windowed, stored in the entropy file) are computed by
blt.evaluation.entropies with the windowed scorer; the file format is `entropy_file.py`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from blt.models.masks import document_ids, window_mask
from blt.vocab import BOS_ID

SIGNALS = ("entropy", "surprisal")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last dimension, in float32. (...)"""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def prediction_entropies(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits[:, q-1]) at q; 0 at q = 0. (B, T, V) -> (B, T+1)"""
    return F.pad(entropy(logits), (1, 0))


def surprisal(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[id] (nats), in float32. logits (..., V), ids (...) -> (...)"""
    return -F.log_softmax(logits.float(), dim=-1).gather(-1, ids[..., None]).squeeze(-1)


def _unread(ids: torch.Tensor) -> torch.Tensor:
    """Positions whose signal is 0: BOS, and for surprisals q <= 1 and after a BOS. (B, T+1)"""
    after_bos = F.pad(ids[:, :-1] == BOS_ID, (1, 0), value=True)
    return (ids == BOS_ID) | after_bos


def position_signal(signal: str, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The signal at every position of windows ids (B, T+1) from the entropy model's logits
    (B, T, V) over their inputs ids[:, :T] (logits[:, t] predicts ids[:, t+1]). (B, T+1)"""
    if signal == "entropy":
        return prediction_entropies(logits).masked_fill(ids == BOS_ID, 0.0)
    if signal == "surprisal":
        s = surprisal(logits[:, :-1], ids[:, 1:-1])  # (B, T-1): s[t] of the byte at t+1
        return F.pad(s, (2, 0)).masked_fill(_unread(ids), 0.0)
    raise ValueError(f"unknown signal {signal!r}")


def next_signal(signal: str, before: torch.Tensor | None, x: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """The signal at position p+1 once input p, x (B,), has been fed: `before` (B, V) is the
    entropy model's prediction of position p (None at p = 0), `after` (B, V) its prediction of
    p+1. (B,)"""
    if signal == "entropy":
        return entropy(after)
    if signal == "surprisal":
        if before is None:
            return torch.zeros(x.shape, device=after.device)
        return surprisal(before, x).masked_fill(x == BOS_ID, 0.0)
    raise ValueError(f"unknown signal {signal!r}")


@torch.no_grad()
def online_signal(model, ids: torch.Tensor, signal: str = "entropy") -> torch.Tensor:
    """The signal at every position of a (B, T+1) window whose documents begin with BOS. (B, T+1)

    The model sees ids[:, :-1] under its own rules: causal, one document per BOS, at most
    min(window, context) keys per query (the span it was trained with).
    """
    x = ids[:, :-1]  # (B, T)
    B, T = x.shape
    pos = torch.arange(T, device=ids.device).expand(B, T)
    docs = document_ids(x, BOS_ID)
    logits = model(x, positions=pos, mask=window_mask(pos, model.cfg.span, docs))  # (B, T, V)
    return position_signal(signal, logits, ids)


def online_entropies(model, ids: torch.Tensor) -> torch.Tensor:
    """online_signal's entropies. (B, T+1)"""
    return online_signal(model, ids, "entropy")


@torch.no_grad()
def window_starts(model, ids_window: torch.Tensor, entropies: torch.Tensor | None = None) -> torch.Tensor:
    """Patch starts (B, T+1) of windows ids (B, T+1) with a BLT's attached patcher; its signal
    (B, T+1) is computed online with the entropy model when the patcher needs one and none is
    given."""
    model.check_patching()
    if model.patcher.needs_entropy and entropies is None:
        entropies = online_signal(model.entropy_model, ids_window, model.patcher.signal)
    return model.patcher.starts(ids_window, entropies)
