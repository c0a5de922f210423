"""Fast byte generation for ByteLM with a KV cache.

    outs = generate_bytes(model, [b"def main(", b"import "], GenerationArgs(max_new_bytes=64, temperature=0))

Each prompt is encoded as BOS + its bytes. Prompts of a batch are left-padded with PAD at
position -1, which the attention rule never lets a real query see, so a row's result does not
depend on what else is in the batch. The prompts run through the model in chunks of at most
PREFILL_CHUNK positions, then one position per row per step; each step reuses the cached keys
and values of every earlier position, so a new byte costs one position's compute, not a
forward pass over the whole text.

A prompt longer than the model's training context is cut to its last `context` bytes, with a
`PromptTruncated` warning: the model never saw longer sequences in training. Generation may
run past the context: each query then sees the last `min(window, context)` keys of its layer
(the cache slides, as `ByteLM.score_documents` does), so cached logits equal a full forward
pass under that sliding window.

A row stops at EOS (not returned), at the first occurrence of a stop string (cut before it),
or after max_new_bytes bytes. `on_bytes(row, new_bytes)` streams each row's text as it is
produced (`rows.Row`).
"""
from __future__ import annotations

import warnings

import torch

from blt.inference.args import GenerationArgs
from blt.inference.rows import OnBytes, Row
from blt.inference.sampling import sample_next
from blt.vocab import EOS_ID, PAD_ID, encode

PREFILL_CHUNK = 256  # positions per prefill step: bounds the cache's extra slots and peak memory


class PromptTruncated(UserWarning):
    """A prompt was longer than the model's context and lost its beginning."""


def _prompt_ids(prompts: list[bytes], context: int) -> list[torch.Tensor]:
    seqs = []
    for i, p in enumerate(prompts):
        ids = encode(p)  # (n+1,) BOS first
        if len(ids) > context:
            which = f"prompt {i}" if len(prompts) > 1 else "the prompt"
            warnings.warn(
                PromptTruncated(
                    f"{which} has {len(p)} bytes, more than the model's context of {context}: "
                    f"using its last {context} bytes"
                )
            )
            ids = ids[-context:]
        seqs.append(ids)
    return seqs


@torch.inference_mode()
def generate_bytes(model, prompts: list[bytes], args: GenerationArgs = GenerationArgs(),
                   on_bytes: OnBytes | None = None) -> list[bytes]:
    """Continue every prompt; return the new bytes of each (prompt, EOS and stop string excluded)."""
    args.check()
    context = model.cfg.context
    seqs = _prompt_ids([bytes(p) for p in prompts], context)
    rows = [Row(i, args.stop, on_bytes) for i in range(len(prompts))]
    if not rows or args.max_new_bytes == 0:
        return [b"" for _ in rows]

    param = next(model.parameters())
    B, L = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((B, L), PAD_ID, dtype=torch.long)
    pos = torch.full((B, L), -1, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, L - len(s) :] = s
        pos[r, L - len(s) :] = torch.arange(len(s))
    ids, pos = ids.to(param.device), pos.to(param.device)

    step = min(L, PREFILL_CHUNK)
    cache = model.stack.new_cache(B, context=context, max_step=step, dtype=param.dtype, device=param.device)
    for c in range(0, L, step):
        logits = model(ids[:, c : c + step], positions=pos[:, c : c + step], cache=cache)  # (B, t, V)
    last = logits[:, -1]  # (B, V): left padding puts every row's newest position last
    next_pos = pos[:, -1] + 1  # (B,)
    generator = torch.Generator(device=param.device).manual_seed(args.seed)

    for n in range(args.max_new_bytes):
        new = sample_next(last, args.temperature, args.top_k, args.top_p, generator)  # (B,)
        for row, t in zip(rows, new.tolist()):
            if row.done:
                continue
            if t == EOS_ID:
                row.finish()
            else:
                row.add(t)
        if all(row.done for row in rows) or n == args.max_new_bytes - 1:
            break
        # Finished rows ride along as padding: position -1 is never seen by anyone.
        done = torch.tensor([row.done for row in rows], device=param.device)
        feed = torch.where(done, PAD_ID, new)[:, None]  # (B, 1)
        feed_pos = torch.where(done, -1, next_pos)[:, None]  # (B, 1)
        last = model(feed, positions=feed_pos, cache=cache)[:, -1]
        next_pos = next_pos + 1

    for row in rows:
        row.finish()
    return [bytes(row.text) for row in rows]
