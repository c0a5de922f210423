"""Training batches: random windows over a split's documents, each as BOS bytes... EOS.

The split's bytes stay in their uint8 memory map. Documents are laid out virtually as
[BOS, b_1..b_n, EOS] back to back; a window is a slice of that virtual stream, gathered
with one vectorised index, so nothing is ever copied into Python lists.

Batches are a pure function of (seed, rank, world, step, micro): resuming at step s draws
exactly the batches an uninterrupted run would have drawn. Each rank of a torchrun job of
`world` ranks draws its windows only from ITS SHARD, the rank-th contiguous 1/world of the
stream (`rank_shard`), so a rank reads only its part of the bytes (and of the entropy file,
which is aligned with them): at scale, each node touches 1/world of the corpus. One process
(world 1) draws from the whole stream, as before sharding existed.
"""
from __future__ import annotations

import numpy as np
import torch

from blt.data.corpus import ByteSplit
from blt.errors import UserError
from blt.vocab import BOS_ID, EOS_ID


class VirtualStream:
    """Maps virtual positions of [BOS doc EOS]* to byte offsets or special ids."""

    def __init__(self, split: ByteSplit):
        self.split = split
        lens = np.diff(split.docs)
        keep = lens > 0
        self.doc_byte_start = split.docs[:-1][keep]  # (D,)
        self.doc_len = lens[keep]  # (D,)
        self.doc_vstart = np.concatenate([[0], np.cumsum(self.doc_len + 2)[:-1]]).astype(np.int64)
        self.length = int((self.doc_len + 2).sum())

    def locate(self, vpos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Virtual positions -> (byte offsets, special id or -1 for a real byte). Shapes kept."""
        doc = np.searchsorted(self.doc_vstart, vpos, side="right") - 1
        within = vpos - self.doc_vstart[doc]  # 0 = BOS, 1..n = bytes, n+1 = EOS
        special = np.full(vpos.shape, -1, dtype=np.int64)
        special[within == 0] = BOS_ID
        special[within == self.doc_len[doc] + 1] = EOS_ID
        offset = np.clip(self.doc_byte_start[doc] + within - 1, 0, max(self.split.n_bytes - 1, 0))
        return offset, special

    def ids(self, vpos: np.ndarray) -> np.ndarray:
        offset, special = self.locate(vpos)
        byte = np.asarray(self.split.data[offset.ravel()]).reshape(offset.shape).astype(np.int64)
        return np.where(special >= 0, special, byte)


def rank_shard(length: int, seq_len: int, rank: int, world: int, unit: str = "positions") -> tuple[int, int]:
    """[lo, hi): the rank-th contiguous 1/world of a stream of `length` positions, which must
    hold one window of seq_len + 1 positions (UserError otherwise)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    lo, hi = rank * length // world, (rank + 1) * length // world
    if hi - lo < seq_len + 1:
        where = "the split" if world == 1 else f"rank {rank}'s 1/{world} of the split"
        raise UserError(f"{where} holds {hi - lo} {unit}, fewer than one window of {seq_len + 1}")
    return lo, hi


def draw_starts(shard: tuple[int, int], seq_len: int, batch_size: int, key: list[int]) -> np.ndarray:
    """Window starts in a shard, a pure function of key (seed, rank, step, micro). (batch_size,)"""
    rng = np.random.default_rng(key)
    return rng.integers(shard[0], shard[1] - seq_len, size=batch_size)


class WindowSampler:
    """Draws (B, T+1) id windows from this rank's shard; x = w[:, :-1], y = w[:, 1:]."""

    def __init__(self, split: ByteSplit, seq_len: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.stream = VirtualStream(split)
        self.seq_len, self.batch_size, self.seed, self.rank = seq_len, batch_size, seed, rank
        self.shard = rank_shard(self.stream.length, seq_len, rank, world)

    def starts(self, step: int, micro: int = 0) -> np.ndarray:
        return draw_starts(self.shard, self.seq_len, self.batch_size, [self.seed, self.rank, step, micro])

    def window_positions(self, step: int, micro: int = 0) -> np.ndarray:
        """Virtual positions of the batch's windows. (B, T+1)"""
        return self.starts(step, micro)[:, None] + np.arange(self.seq_len + 1)[None, :]

    def batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(self.stream.ids(self.window_positions(step, micro)))  # (B, T+1)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

