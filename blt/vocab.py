"""The one place that maps bytes to model ids.

Byte value b has id b (0..255); three special ids follow. Text is never decoded or
re-encoded: any byte string, valid UTF-8 or not, is valid input.

Two vocabularies (`vocab` in a model config) share these ids:
- 'bytes' (259 ids): the 256 bytes, BOS, EOS, PAD; the toolkit's own models;
- 'released' (260 ids): the same plus BOE (id 259), the released BLTs' vocabulary. Meta's models
  number it differently (BOE 0, BOS 1, EOS 2, PAD 3, byte b at b + 4: `RELEASED_NUMBERING`);
  their embedding and head rows are reordered into these ids when a checkpoint is read, so a
  loaded model speaks the toolkit's ids. BOE is never an input; it matters because the released
  models spread probability over it (their entropies count it) and because their n-gram hashes
  are computed over the released numbering (models/hash_ngram.py).
"""
from __future__ import annotations

import numpy as np
import torch

BOS_ID = 256  # beginning of a document: the context every prediction starts from
EOS_ID = 257  # end of a document: separates documents in training streams
PAD_ID = 258  # filler for ragged batches; never a target
BOE_ID = 259  # 'released' vocabulary only: the released models' id 0, never an input
VOCAB_SIZE = 259
SPECIAL_IDS = (BOS_ID, EOS_ID, PAD_ID)
VOCAB_SIZES = {"bytes": VOCAB_SIZE, "released": VOCAB_SIZE + 1}


def released_numbering() -> torch.Tensor:
    """The released models' number of each of our ids 0..259: b -> b + 4, BOS 1, EOS 2, PAD 3, BOE 0. (260,)"""
    numbers = torch.arange(VOCAB_SIZES["released"]) + 4
    numbers[[BOS_ID, EOS_ID, PAD_ID, BOE_ID]] = torch.tensor([1, 2, 3, 0])
    return numbers


RELEASED_NUMBERING = released_numbering()


def encode(data: bytes, bos: bool = True) -> torch.Tensor:
    """bytes -> int64 ids, optionally preceded by BOS. (T,) or (T+1,)"""
    ids = torch.from_numpy(np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int64))
    if bos:
        ids = torch.cat([torch.tensor([BOS_ID]), ids])
    return ids


def decode(ids) -> bytes:
    """ids -> bytes, dropping special ids."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return bytes(i for i in ids if 0 <= i < 256)


def is_byte(ids: torch.Tensor) -> torch.Tensor:
    """True where an id is a real byte (not BOS/EOS/PAD/BOE)."""
    return ids < 256
