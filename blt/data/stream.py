"""Training batches: random windows over a split's documents, each as BOS bytes... EOS.

The split's bytes stay in their uint8 memory map. Documents are laid out virtually as
[BOS, b_1..b_n, EOS] back to back; a window is a slice of that virtual stream, gathered
with one vectorised index, so nothing is ever copied into Python lists.

Batches are a pure function of (seed, step, global micro-batch index) and the ShardPlan:
resuming at step s draws exactly the batches an uninterrupted run would have drawn. A step's
global batch is world x grad_accum micro-batches; the stream is cut into contiguous shards and
each micro-batch draws from one of them (`ShardPlan`). By default there is one shard per rank,
so a rank reads only its part of the bytes (and of the entropy file, which is aligned with
them): at scale, each node touches 1/world of the corpus. With a fixed number of shards
(`data.shards`) the global batch no longer depends on how it is split into ranks and
micro-steps. One process with one shard draws from the whole stream.
"""
from __future__ import annotations

from dataclasses import dataclass

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
        where = "the split" if world == 1 else f"shard {rank} of {world} of the split"
        raise UserError(f"{where} holds {hi - lo} {unit}, fewer than one window of {seq_len + 1}")
    return lo, hi


def draw_starts(shard: tuple[int, int], seq_len: int, batch_size: int, key: list[int]) -> np.ndarray:
    """Window starts in a shard, a pure function of key. (batch_size,)"""
    rng = np.random.default_rng(key)
    return rng.integers(shard[0], shard[1] - seq_len, size=batch_size)


@dataclass(frozen=True)
class ShardPlan:
    """Which shard of the stream each micro-batch of this process draws from.

    Micro-batch `micro` of rank `rank` is number g = rank * grad_accum + micro of the step's
    world * grad_accum; it draws from shard g * n_shards // (world * grad_accum), keyed on
    (seed, step, g). With shards = 0 (one per rank) every rank reads its own shard only; with a
    fixed `shards`, 2 ranks x 1 micro-step and 1 process x 2 micro-steps draw the same windows."""

    rank: int = 0
    world: int = 1
    grad_accum: int = 1
    shards: int = 0  # 0: one per rank

    def __post_init__(self):
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} outside a world of {self.world}")
        if self.n_shards > self.world * self.grad_accum:
            raise UserError(f"data.shards={self.shards} is more than the {self.world * self.grad_accum} micro-batches "
                            f"of a step (world {self.world} x grad_accum {self.grad_accum}): some shards would "
                            "never be read")

    @property
    def n_shards(self) -> int:
        return self.shards or self.world

    def slot(self, micro: int) -> int:
        return self.rank * self.grad_accum + micro

    def shard_of(self, micro: int) -> int:
        return self.slot(micro) * self.n_shards // (self.world * self.grad_accum)

    def key(self, seed: int, step: int, micro: int) -> list[int]:
        # the 0 keeps a one-process run's draws what they were before shard plans existed
        return [seed, 0, step, self.slot(micro)]


class ShardedStarts:
    """Window starts over a stream of `length` positions under a ShardPlan."""

    def __init__(self, length: int, seq_len: int, batch_size: int, seed: int, plan: ShardPlan,
                 unit: str = "positions"):
        self.seq_len, self.batch_size, self.seed, self.plan = seq_len, batch_size, seed, plan
        shards = sorted({plan.shard_of(m) for m in range(plan.grad_accum)})  # the ones this process reads
        self.bounds = {i: rank_shard(length, seq_len, i, plan.n_shards, unit) for i in shards}

    def __call__(self, step: int, micro: int = 0) -> np.ndarray:
        if micro >= self.plan.grad_accum:
            raise ValueError(f"micro-step {micro} of a plan with grad_accum {self.plan.grad_accum}")
        shard = self.bounds[self.plan.shard_of(micro)]
        return draw_starts(shard, self.seq_len, self.batch_size, self.plan.key(self.seed, step, micro))


class WindowSampler:
    """Draws (B, T+1) id windows from this process's shards; x = w[:, :-1], y = w[:, 1:]."""

    def __init__(self, split: ByteSplit, seq_len: int, batch_size: int, seed: int, plan: ShardPlan = ShardPlan()):
        self.stream = VirtualStream(split)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.starts = ShardedStarts(self.stream.length, seq_len, batch_size, seed, plan)

    def window_positions(self, step: int, micro: int = 0) -> np.ndarray:
        """Virtual positions of the batch's windows. (B, T+1)"""
        return self.starts(step, micro)[:, None] + np.arange(self.seq_len + 1)[None, :]

    def batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(self.stream.ids(self.window_positions(step, micro)))  # (B, T+1)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

