"""Choosing the next id from a row of logits.

    ids = sample_next(logits, temperature=0.8, top_k=50, top_p=0.95, generator=g)  # (B, V) -> (B,)

temperature 0 means greedy (argmax). Otherwise logits are divided by the temperature, cut to
the top_k most likely ids and/or to the smallest set whose probability reaches top_p
(nucleus), and one id is drawn per row with the given torch.Generator, so a seed reproduces a
sample exactly. BOS, PAD and BOE are never produced: they are not text, and the only special
id a model may emit is EOS (end of document, which ends generation).
"""
from __future__ import annotations

import math

import torch

from blt.errors import UserError
from blt.vocab import EOS_ID


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not 0 <= temperature < math.inf:  # also rejects NaN
        raise UserError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top-p must be in (0, 1], got {top_p}")


def sample_next(
    logits: torch.Tensor,  # (B, V)
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One id per row. (B,) int64"""
    logits = logits.float().clone()
    eos = logits[:, EOS_ID].clone()
    logits[:, 256:] = float("-inf")  # every special id (BOS, PAD, BOE) but EOS
    logits[:, EOS_ID] = eos
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop an id when the ids ranked above it already reach top_p; the first always stays.
        before = probs.cumsum(dim=-1) - probs
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
