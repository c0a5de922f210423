"""Bits per byte over every byte of a split.

bpb = (sum of nats over scored bytes) / (ln 2 * number of scored bytes): summed first, then
divided, never an average of batch means. Each document is scored as BOS followed by its
bytes; every byte is scored, EOS is not. Scores come from a per-byte scorer
(`blt.evaluation.scorer`: the same windows and left context for every model kind).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from blt.data.corpus import ByteSplit
from blt.evaluation.scorer import document_signals
from blt.patching.calibration import calibration_rows
from blt.patching.patchers import mean_patch_size

# docs (uint8 arrays) -> nats per byte of each (float32 arrays)
ByteScores = Callable[[list], list]


def split_documents(split: ByteSplit, max_bytes: int | None = None) -> list[np.ndarray]:
    """The split's documents, cut after the first max_bytes bytes (None = all)."""
    docs, total = [], 0
    for doc in split.documents():
        if max_bytes is not None and total + len(doc) > max_bytes:
            doc = doc[: max_bytes - total]
        if len(doc):
            docs.append(np.asarray(doc))
            total += len(doc)
        if max_bytes is not None and total >= max_bytes:
            break
    return docs


def bits_per_byte(nats: float, n_bytes: int) -> float:
    return nats / (math.log(2) * max(n_bytes, 1))


def evaluate_docs(scores: ByteScores, docs: list) -> dict:
    """{'bpb', 'bytes', 'nats'} of a scorer over documents."""
    per_doc = scores(docs)
    nats = float(sum(float(np.sum(x, dtype=np.float64)) for x in per_doc))
    n = int(sum(len(x) for x in per_doc))
    return {"bpb": bits_per_byte(nats, n), "bytes": n, "nats": nats}


def evaluate_split(scores: ByteScores, split: ByteSplit, max_bytes: int | None = None) -> dict:
    """{'bpb', 'bytes', 'nats'} of a scorer over (the first max_bytes of) a split."""
    return evaluate_docs(scores, split_documents(split, max_bytes))


def patch_statistics(model, docs: list[np.ndarray]) -> dict:
    """How a BLT's own patcher cuts these documents: {'mean_patch_size', 'bytes'}.

    Each document is patched whole, from its BOS, with the patcher's signal from the model's
    entropy model (as in training), so the figure is the patcher's, not an artefact of eval
    windows. Mean patch size = real bytes / patches holding them.
    """
    patcher = model.patcher
    if patcher.needs_entropy:
        ents = document_signals(model.entropy_model, docs, patcher.signal)
    else:
        ents = [np.zeros(len(d), dtype=np.float32) for d in docs]
    ids, ent = calibration_rows(docs, ents)  # (1, N) each
    real = ids < 256
    return {"mean_patch_size": mean_patch_size(patcher.starts(ids, ent), real), "bytes": int(real.sum())}
