"""Training batches with patch starts: WindowSampler's windows, patched on the fly.

The windows are exactly WindowSampler's (same pure function of seed, step, micro and
ShardPlan, from the same shards of the split), so a patched run draws the same bytes as a byte-level run
with the same seed, and a rank reads only its shard's part of the entropy file. The patcher's
signal (entropies or surprisals, blt.patching.entropy) comes from the precomputed entropy file
(`entropy_file.SplitEntropies` of the same split and signal): a byte position gets the value
stored for that byte, an EOS position the stored EOS value, a BOS position 0 (it and the byte
after it are forced starts). The first positions of a window that begins mid-document keep the
values computed with the whole document before them, so values never depend on where a window
was cut (patches do only through the forced starts at positions 0 and 1 and what follows from
them: static counting, max length, the equal-information budget's restart).
"""
from __future__ import annotations

import numpy as np
import torch

from blt.data.corpus import ByteSplit
from blt.data.stream import ShardPlan, WindowSampler
from blt.patching.entropy_file import SplitEntropies
from blt.patching.patchers import Patcher
from blt.vocab import EOS_ID


class PatchedWindowSampler:
    """Draws {'ids': (B, T), 'targets': (B, T), 'starts': (B, T+1)} batches."""

    def __init__(
        self,
        split: ByteSplit,
        entropies: SplitEntropies | None,
        patcher: Patcher,
        seq_len: int,
        batch_size: int,
        seed: int,
        plan: ShardPlan = ShardPlan(),
    ):
        if entropies is not None and not isinstance(entropies, SplitEntropies):
            raise TypeError("entropies must be a SplitEntropies (EntropyFile.split(name, signal)), with its EOS values")
        if patcher.needs_entropy and entropies is None:
            raise ValueError(f"{type(patcher).__name__} needs the split's entropies (its {patcher.signal} values)")
        if entropies is not None and len(entropies.data) != split.n_bytes:
            raise ValueError(f"entropies hold {len(entropies.data)} values for a split of {split.n_bytes} bytes")
        self.windows = WindowSampler(split, seq_len, batch_size, seed, plan)
        self.stream = self.windows.stream
        if entropies is not None and len(entropies.eos) != len(self.stream.doc_len):
            raise ValueError(f"{len(entropies.eos)} EOS entropies for {len(self.stream.doc_len)} documents")
        self.entropies, self.patcher = entropies, patcher

    def window_entropies(self, vpos: np.ndarray) -> np.ndarray:
        """Entropies at virtual positions (any shape), float32."""
        offset, special = self.stream.locate(vpos)
        ent = np.asarray(self.entropies.data[offset.ravel()], dtype=np.float32).reshape(offset.shape)
        ent[special >= 0] = 0.0
        is_eos = special == EOS_ID
        if is_eos.any():
            doc = np.searchsorted(self.stream.doc_vstart, vpos[is_eos], side="right") - 1
            ent[is_eos] = self.entropies.eos[doc]
        return ent

    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        vpos = self.windows.window_positions(step, micro)  # (B, T+1)
        ids = torch.from_numpy(self.stream.ids(vpos))  # (B, T+1)
        ent = None
        if self.patcher.needs_entropy:
            ent = torch.from_numpy(self.window_entropies(vpos))  # (B, T+1)
        starts = self.patcher.starts(ids, ent)
        return {"ids": ids[:, :-1].contiguous(), "targets": ids[:, 1:].contiguous(), "starts": starts}
