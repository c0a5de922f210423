"""The reference BLT generation path: the whole model again for every new byte.

    outs = generate_slow(model, [b"To be, or "], max_new_bytes=64, temperature=0)

What the public implementations do: for each new byte, patch the whole prefix again
(`model.patch_starts`, entropies computed online over the prefix) and run the full forward
pass, keeping only the last position's logits. Rows needing a byte at the same position run
as one batch. Once a sequence outgrows cfg.context, each step sees only its last cfg.context
positions (the window starts mid-document and is patched as a window start). It shares the
generation loop (sampling, stops, streaming) with `blt.blt_generate.generate`, so with equal
logits both paths draw equal bytes: the slow path is the oracle of the fast one.
"""
from __future__ import annotations

from typing import Callable

import torch

from blt.blt_generate import run_rows


@torch.inference_mode()
def generate_slow(
    model,
    prompts: list[bytes],
    max_new_bytes: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop: list[bytes] | None = None,
    on_bytes: Callable[[int, bytes], None] | None = None,
) -> list[bytes]:
    """Same contract as `blt.blt_generate.generate`, at O(length) forward work per byte."""
    model._check_patching(need_entropy_model=True)
    device = next(model.parameters()).device
    C = model.cfg.context

    def make(lens: list[int], positions: int):
        def next_logits(p, ids, active, need):
            if not need:
                return None
            # the need rows know positions 0..p; p+1 is the PAD placeholder of the window
            window = ids[need, max(0, p + 1 - C) : p + 2].to(device)  # (n, T+1)
            starts = model.patch_starts(window)
            return model(window[:, :-1], starts)[:, -1]  # (n, V)

        return next_logits

    return run_rows(prompts, max_new_bytes, temperature, top_k, top_p, seed, stop, on_bytes, device, make)
