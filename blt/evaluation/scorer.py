"""THE windowed scorer: per-position values of every model kind over documents of any length.

A document is scored as the sequence [BOS, x_1 .. x_n] (x: bytes, or BPE tokens): input position
i holds BOS (i = 0) or x_i and predicts x_{i+1}; with eos=True one more position predicts the
document's EOS. Predictions are made in JOBS: a job runs input positions [start, end) of one
sequence and keeps the values of [first, end), where first steps by `chunk` (4 x the model's
context) and start = first - (span - 1): every kept position has span - 1 earlier positions
before it in its job (or all of them, near the document start), and the model's attention
slides with that span, so every prediction sees min(index, span - 1) earlier positions at every
layer, the most the model saw in training. The same rule holds for every kind:
- byte LM: span = min(window, context) bytes (`ByteLMConfig.span`);
- BPE-token LM: span = min(window, context) tokens; each token's nats go on the LAST byte it
  covers (zeros on its other bytes), so a document's sum is its token NLL;
- BLT: span = context bytes: its byte levels slide with min(window, context) and its latent sees
  the patches starting within the last `context` bytes (models/latent.py). Patch starts of a
  job come from the job's own window, as training cuts them, with the patcher's signal
  computed over the whole document first (`document_signals`: the entropy model slides over
  the document like a byte LM).
Rows of a batch carry their own positions (-1 = padding) and masks, so a document's values never
depend on what else is in the batch, and documents are read slice by slice (memory maps stay on
disk). Values (`what`): 'nats' = -log p(target), 'entropy' = entropy (nats) of the predicting
distribution, 'nats_greedy' = two columns, nats and 1.0 where the target was the distribution's
argmax (what greedy decoding would have chosen; the harness's is_greedy), 'entropy_nats' = two
columns, the entropy and the nats (an entropy file stores both).
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from blt.data.tokens import BOS as TOKEN_BOS
from blt.data.tokens import EOS as TOKEN_EOS
from blt.data.tokens import PAD as TOKEN_PAD
from blt.models.masks import window_mask
from blt.patching.entropy import entropy, window_starts
from blt.vocab import BOS_ID, EOS_ID, PAD_ID

CHUNK_CONTEXTS = 4  # positions kept per job, in multiples of the model's context
# per-position value shape of each `what`
VALUE_SHAPES = {"nats": (), "entropy": (), "nats_greedy": (2,), "entropy_nats": (2,)}

# forward(ids (B, L), targets (B, L), positions (B, L), jobs) -> logits (B, L, V)
WindowForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list], torch.Tensor]


def plan_jobs(lengths: list[int], span: int, chunk: int) -> list[tuple[int, int, int, int]]:
    """(sequence, start, first, end) for every job over sequences of `lengths` predictions."""
    return [
        (d, max(0, first - span + 1), first, min(first + chunk, n))
        for d, n in enumerate(lengths)
        for first in range(0, n, chunk)
    ]


def iter_windows(
    seqs: list, forward: WindowForward, span: int, chunk: int, batch_size: int = 16, what: str | tuple = "nats",
    eos: bool = False, ids: tuple[int, int, int] = (BOS_ID, EOS_ID, PAD_ID), device=None,
    share: tuple[int, int] = (0, 1),
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (sequence index, first position, float32 values) for every prediction of every
    sequence (see the module docstring). seqs: int arrays without BOS/EOS; ids: the model's
    (BOS, EOS, PAD) ids; values: (n,), or (n, 2) for the two-column `what`s. share (i, n): only
    the i-th contiguous n-th of the jobs (one process of n computing its part; jobs are `chunk`
    predictions each, so the parts are about equal)."""
    if what not in VALUE_SHAPES:
        raise ValueError(f"what must be one of {', '.join(VALUE_SHAPES)}, got {what!r}")
    bos, eos_id, pad = ids
    jobs = plan_jobs([len(s) + int(eos) for s in seqs], span, chunk)
    part, parts = share
    jobs = jobs[part * len(jobs) // parts : (part + 1) * len(jobs) // parts]
    for at in range(0, len(jobs), batch_size):
        group = jobs[at : at + batch_size]
        L = max(e - s for _, s, _, e in group)
        inputs = torch.full((len(group), L), pad, dtype=torch.long)
        targets = torch.full((len(group), L), pad, dtype=torch.long)
        positions = torch.full((len(group), L), -1, dtype=torch.long)
        for r, (d, s, _, e) in enumerate(group):
            seq = seqs[d]
            # input i is BOS + seq at index i, i.e. seq[i - 1]; the target there is seq[i] (or EOS)
            x = np.asarray(seq[max(s - 1, 0) : e - 1], dtype=np.int64)
            if s == 0:
                x = np.concatenate([[bos], x])
            y = np.asarray(seq[s:e], dtype=np.int64)
            if e > len(seq):
                y = np.concatenate([y, [eos_id]])
            inputs[r, : e - s] = torch.from_numpy(x)
            targets[r, : e - s] = torch.from_numpy(y)
            positions[r, : e - s] = torch.arange(e - s)
        inputs, targets, positions = inputs.to(device), targets.to(device), positions.to(device)
        with torch.no_grad():
            logits = forward(inputs, targets, positions, group)  # (B, L, V)
            nats = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, L)
            if what == "nats":
                values = nats
            elif what == "entropy":
                values = entropy(logits)  # (B, L)
            elif what == "nats_greedy":
                values = torch.stack([nats, (logits.argmax(-1) == targets).float()], dim=-1)  # (B, L, 2)
            else:
                values = torch.stack([entropy(logits), nats], dim=-1)  # (B, L, 2)
        values = values.cpu()
        for r, (d, s, first, e) in enumerate(group):
            yield d, first, values[r, first - s : e - s].numpy()


def collect(docs: list, items: Iterator[tuple[int, int, np.ndarray]], extra: int = 0,
            what: str = "nats") -> list[np.ndarray]:
    """iter_windows' values gathered into one float32 array per document (len + extra, *shape)."""
    out = [np.zeros((len(doc) + extra, *VALUE_SHAPES[what]), dtype=np.float32) for doc in docs]
    for d, first, values in items:
        out[d][first : first + len(values)] = values
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _in_eval_mode(fn):
    """Run fn with the model in eval mode and no autograd, restoring its mode after."""

    def wrapped(model, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


def _lm_forward(model, span: int) -> WindowForward:
    def forward(ids, targets, positions, jobs):
        return model(ids, positions=positions, mask=window_mask(positions, span))

    return forward


def iter_byte_lm(model, docs: list, batch_size: int = 16, what: str = "nats", eos: bool = False,
                 chunk: int | None = None, share: tuple[int, int] = (0, 1)):
    """iter_windows for a ByteLM over byte documents (uint8 arrays)."""
    span = model.cfg.span
    chunk = chunk or CHUNK_CONTEXTS * model.cfg.context
    return iter_windows(docs, _lm_forward(model, span), span, chunk, batch_size, what, eos, device=_device(model),
                        share=share)


@_in_eval_mode
def byte_lm_scores(model, docs: list, batch_size: int = 16, what: str = "nats", eos: bool = False,
                   chunk: int | None = None) -> list:
    """Per-byte values of a ByteLM: float32 arrays of len(doc) (+1 with eos: the EOS last)."""
    return collect(docs, iter_byte_lm(model, docs, batch_size, what, eos, chunk), int(eos), what)


@_in_eval_mode
def token_lm_scores(model, docs: list, batch_size: int = 16, what: str = "nats", chunk: int | None = None) -> list:
    """Per-byte values of a TokenLM: each token's value on the last byte it covers. Its other
    bytes predict nothing: nats 0 and, with 'nats_greedy', greedy 1.0 (they break no tie)."""
    seqs = model.tokenizer.encode_batch(docs)
    span = model.cfg.span
    chunk = chunk or CHUNK_CONTEXTS * model.cfg.context
    items = iter_windows(seqs, _lm_forward(model, span), span, chunk, batch_size, what,
                         ids=(TOKEN_BOS, TOKEN_EOS, TOKEN_PAD), device=_device(model))
    token_values = collect(seqs, items, what=what)
    lengths = model.token_lengths.cpu().numpy()
    out = []
    for doc, ids, values in zip(docs, seqs, token_values):
        per_byte = np.zeros((len(doc), *VALUE_SHAPES[what]), dtype=np.float32)
        if what == "nats_greedy":
            per_byte[:, 1] = 1.0
        per_byte[np.cumsum(lengths[ids]) - 1] = values
        out.append(per_byte)
    return out


def document_signals(model, docs: list, signal: str, batch_size: int = 16) -> list:
    """An entropy model's signal (blt.patching.entropy) at every position of each document
    after its BOS: float32 arrays of len(doc) + 1, entry i < len(doc) at byte i, the last at the
    document's EOS (the form `calibration_rows` and the entropy file take).
    'entropy': the entropy predicting that position; 'surprisal': the surprisal of the byte
    before it (0 for the first byte)."""
    if signal == "entropy":
        return byte_lm_scores(model, docs, batch_size, "entropy", eos=True)
    if signal == "surprisal":
        return [np.concatenate([[0.0], nats]).astype(np.float32) for nats in byte_lm_scores(model, docs, batch_size)]
    raise ValueError(f"unknown signal {signal!r}")


@_in_eval_mode
def blt_scores(model, docs: list, batch_size: int = 16, what: str = "nats", chunk: int | None = None) -> list:
    """Per-byte values (nats by default) of a ByteLatentTransformer with its attached patcher."""
    model.check_patching()
    C = model.cfg.context
    chunk = chunk or CHUNK_CONTEXTS * C
    device = _device(model)
    seq_ents = None
    if model.patcher.needs_entropy:
        # entry q is the signal at sequence position q (0 at BOS): the alignment of patchers
        doc_ents = document_signals(model.entropy_model, docs, model.patcher.signal, batch_size)
        seq_ents = [np.concatenate([[0.0], e]).astype(np.float32) for e in doc_ents]

    def forward(ids, targets, positions, jobs):
        B, L = ids.shape
        lengths = (positions >= 0).sum(1)  # (B,)
        window = torch.cat([ids, torch.full_like(ids[:, :1], PAD_ID)], dim=1)  # (B, L+1)
        rows = torch.arange(B, device=ids.device)
        window[rows, lengths] = targets[rows, lengths - 1]  # each row's last target closes its window
        ent = None
        if seq_ents is not None:
            ent = torch.zeros(B, L + 1)
            for r, (d, s, _, e) in enumerate(jobs):
                ent[r, : e - s + 1] = torch.from_numpy(seq_ents[d][s : e + 1])
            ent = ent.to(ids.device)
        # padding sits after each row's window: every rule is causal, so it moves nothing real
        return model(ids, window_starts(model, window, ent))

    items = iter_windows(docs, forward, C, chunk, batch_size, what, device=device)
    return collect(docs, items, what=what)
