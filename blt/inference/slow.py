"""The reference BLT generation path: the whole model again for every new byte.

    outs = generate_slow(model, [b"To be, or "], GenerationArgs(max_new_bytes=64, temperature=0))

What the public implementations do: for each new byte, patch the whole prefix again
(`window_starts`, entropies computed online over the prefix) and run the full forward pass,
keeping only the last position's logits. Rows needing a byte at the same position run as one
batch. Once a sequence outgrows cfg.context, each step sees only its last cfg.context positions
(the window starts mid-document and is patched as a window start). It shares the generation
loop (sampling, stops, streaming) with `blt.inference.blt.generate_blt`, so with equal logits
both paths draw equal bytes: the slow path is the oracle of the fast one.
"""
from __future__ import annotations

import torch

from blt.inference.args import GenerationArgs
from blt.inference.rows import OnBytes, run_rows
from blt.patching.entropy import window_starts


@torch.inference_mode()
def generate_slow(model, prompts: list[bytes], args: GenerationArgs = GenerationArgs(),
                  on_bytes: OnBytes | None = None) -> list[bytes]:
    """Same contract as `generate_blt`, at O(length) forward work per byte."""
    model.check_patching()
    device = next(model.parameters()).device
    C = model.cfg.context

    def make(lens: list[int], positions: int):
        def next_logits(p, ids, active, need):
            if not need:
                return None
            # the need rows know positions 0..p; p+1 is the PAD placeholder of the window
            window = ids[need, max(0, p + 1 - C) : p + 2].to(device)  # (n, T+1)
            return model(window[:, :-1], window_starts(model, window))[:, -1]  # (n, V)

        return next_logits

    return run_rows(prompts, args, on_bytes, device, make)
