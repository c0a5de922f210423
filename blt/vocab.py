"""The one place that maps bytes to model ids.

Byte value b has id b (0..255); three special ids follow. Text is never decoded or
re-encoded: any byte string, valid UTF-8 or not, is valid input.
"""
from __future__ import annotations

import numpy as np
import torch

BOS_ID = 256  # beginning of a document: the context every prediction starts from
EOS_ID = 257  # end of a document: separates documents in training streams
PAD_ID = 258  # filler for ragged batches; never a target
VOCAB_SIZE = 259
SPECIAL_IDS = (BOS_ID, EOS_ID, PAD_ID)


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
    """True where an id is a real byte (not BOS/EOS/PAD)."""
    return ids < 256
