"""The per-row bookkeeping every generation path shares: output, stop strings, streaming.

`Row` collects one row's new bytes, cuts a stop string and streams through `on_bytes(row,
new_bytes)`, holding back bytes that might begin a stop string until it is clear they do not.
`run_rows` is the position-by-position loop of the BLT paths (incremental and slow): rows
advance in lockstep, the rows whose prompt is used up sample together with one generator, so
two paths that produce equal logits draw equal bytes. Buffers indexed by position grow with the
positions reached (`grow_columns`), never sized for max_new_bytes up front.
"""
from __future__ import annotations

from typing import Callable

import torch

from blt.inference.args import GenerationArgs
from blt.inference.sampling import sample_next
from blt.vocab import EOS_ID, PAD_ID, encode

OnBytes = Callable[[int, bytes], None]
FIRST_COLUMNS = 4096  # positions a per-position buffer holds before it first grows


def grow_columns(t: torch.Tensor, n: int, limit: int, fill) -> torch.Tensor:
    """t (B, L) with at least n columns (doubling, at most `limit`), the new ones set to fill."""
    if t.shape[1] >= n:
        return t
    size = min(limit, max(n, 2 * t.shape[1]))
    return torch.cat([t, t.new_full((t.shape[0], size - t.shape[1]), fill)], dim=1)


class Row:
    """One row's output: stop-string detection and held-back streaming."""

    def __init__(self, index: int, stops: tuple[bytes, ...], on_bytes: OnBytes | None):
        self.index, self.stops, self.on_bytes = index, stops, on_bytes
        self.text = bytearray()
        self.sent = 0  # bytes already given to on_bytes
        self.done = False

    def add(self, byte: int) -> None:
        self.text.append(byte)
        for s in self.stops:
            if self.text.endswith(s):
                del self.text[len(self.text) - len(s) :]
                self.finish()
                return
        # Hold back the longest tail that could still grow into a stop string.
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        self._send(len(self.text) - hold)

    def finish(self) -> None:
        self.done = True
        self._send(len(self.text))

    def _send(self, upto: int) -> None:
        if self.on_bytes is not None and upto > self.sent:
            self.on_bytes(self.index, bytes(self.text[self.sent : upto]))
        self.sent = max(self.sent, upto)


# next_logits(p, ids (B, N+1) cpu, active (B,) bools, need (n,) row indices) -> logits (n, V) | None
NextLogits = Callable[[int, torch.Tensor, list, list], torch.Tensor | None]


def run_rows(prompts: list[bytes], args: GenerationArgs, on_bytes: OnBytes | None, device,
             make_next_logits: Callable[[list, int], NextLogits]) -> list[bytes]:
    """Generate with a position-by-position model; return each row's new bytes.

    make_next_logits(lens, positions), lens the rows' BOS + prompt lengths, builds next_logits,
    called at every input position p (also when `need`, the rows sampling at p, is empty) for the
    logits of position p+1."""
    args.check()
    rows = [Row(i, args.stop, on_bytes) for i in range(len(prompts))]
    if not rows or args.max_new_bytes == 0:
        return [b"" for _ in rows]
    seqs = [encode(bytes(p)) for p in prompts]  # BOS + bytes
    lens = [len(s) for s in seqs]
    N = max(lens) + args.max_new_bytes - 1  # input positions: the last new byte is never fed back
    ids = torch.full((len(rows), min(N, max(lens) + FIRST_COLUMNS) + 1), PAD_ID, dtype=torch.long)  # grows
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = s
    next_logits = make_next_logits(lens, N)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    made = [0] * len(rows)
    for p in range(N):
        ids = grow_columns(ids, p + 2, N + 1, PAD_ID)  # position p+1: the PAD placeholder, then the sample
        active = [not row.done for row in rows]
        need = [r for r in range(len(rows)) if active[r] and p + 1 >= lens[r]]
        logits = next_logits(p, ids, active, need)
        if need:
            new = sample_next(logits, args.temperature, args.top_k, args.top_p, generator).tolist()
            for r, t in zip(need, new):
                ids[r, p + 1] = t
                if t == EOS_ID:
                    rows[r].finish()
                    continue
                rows[r].add(t)
                made[r] += 1
                if made[r] == args.max_new_bytes:
                    rows[r].finish()
        if all(row.done for row in rows):
            break
    for row in rows:
        row.finish()
    return [bytes(row.text) for row in rows]
