"""A byte-level transformer language model (the baseline, and BLT's entropy model).

    ids (B, T) -> embedding (B, T, D) -> TransformerStack -> linear head -> logits (B, T, V)

The vocabulary is the 256 byte values plus BOS/EOS/PAD (`blt.vocab`). Training windows may
hold several documents ([BOS bytes EOS]...): attention is then masked per document, so no
prediction ever sees another document. Targets that are BOS or PAD are not scored (BOS only
follows EOS, across a document boundary). `context` is the window length the model was
trained on; evaluation and generation never show it more than that many positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blt.errors import UserError
from blt.models.masks import sequence_mask, window_mask
from blt.models.transformer import TransformerConfig, TransformerStack, init_linear
from blt.vocab import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE


@dataclass
class ByteLMConfig(TransformerConfig):
    context: int = 256  # training window length, in bytes

    def validate(self):
        super().validate()
        if self.context < 2:
            raise UserError("model.context must be at least 2")


def masked_targets(targets: torch.Tensor) -> torch.Tensor:
    """Targets with unscored positions (BOS, PAD) set to -100 for cross_entropy."""
    return targets.masked_fill((targets == BOS_ID) | (targets == PAD_ID), -100)


class ByteLM(nn.Module):
    def __init__(self, cfg: ByteLMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.dim)
        self.stack = TransformerStack(cfg)
        self.head = nn.Linear(cfg.dim, VOCAB_SIZE, bias=False)

    @torch.no_grad()
    def init_weights(self):
        nn.init.normal_(self.embed.weight, std=1.0)
        self.stack.init_weights()
        init_linear(self.head, self.cfg.dim**-0.5)

    def training_mask(self, ids: torch.Tensor):
        """Causal + window + per-document mask for a training window; None when plain causal."""
        return sequence_mask(ids, self.cfg.window, BOS_ID)

    def forward(self, ids, positions=None, mask="auto", cache=None) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V). mask='auto' builds the training mask."""
        B, T = ids.shape
        if positions is None:
            positions = torch.arange(T, device=ids.device).expand(B, T)
        if mask == "auto":
            mask = None if cache is not None else self.training_mask(ids)
        h = self.embed(ids)  # (B, T, D)
        h = self.stack(h, positions, mask, cache)
        return self.head(h).float()  # (B, T, V)

    def loss(self, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy (nats) over scored targets, and stats {'targets': count}."""
        logits = self(ids)
        t = masked_targets(targets)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), t.view(-1), ignore_index=-100)
        return loss, {"targets": int((t != -100).sum())}

    def generate(
        self, prompts, max_new_bytes=256, temperature=1.0, top_k=None, top_p=None, seed=0, stop=None, on_bytes=None
    ):
        """Continue each prompt (bytes) with the KV cache; see `blt.generate.generate_bytes`."""
        from blt.generate import generate_bytes

        return generate_bytes(self, prompts, max_new_bytes, temperature, top_k, top_p, seed, stop, on_bytes)

    @torch.no_grad()
    def score_documents(self, docs, batch_size: int = 16, chunk: int | None = None) -> list:
        """Nats spent on every byte of each document, given BOS and all earlier bytes.

        docs: list of uint8 arrays -> list of float32 arrays (windowing: see `iter_per_byte`).
        """
        return self.per_byte(docs, "nats", batch_size, chunk)

    def per_byte(self, docs, what="nats", batch_size=16, chunk=None, eos=False) -> list:
        """`iter_per_byte` collected into one float32 array per document (len + 1 with eos)."""
        import numpy as np

        out = [np.zeros(len(doc) + int(eos), dtype=np.float32) for doc in docs]
        for d, c, values in self.iter_per_byte(docs, what, batch_size, chunk, eos):
            out[d][c : c + len(values)] = values
        return out

    @torch.no_grad()
    def iter_per_byte(self, docs, what="nats", batch_size=16, chunk=None, eos=False):
        """Yield (doc index, first byte, float32 values) for every byte of each document.

        what='nats': -log p(byte | BOS, earlier bytes); what='entropy': the entropy (nats) of the
        distribution that predicts the byte. eos=True adds one position per document: the EOS
        after its last byte (index len(doc)). Long documents are cut into chunks of `chunk`
        positions; each chunk is run with the W-1 positions before it as context, under a
        sliding window of W = min(window, context) keys, so every byte sees min(its index, W-1)
        earlier positions: the most the model ever saw in training. Every row of a batch has its
        own positions and mask (padding is -1), so a document's values do not depend on what
        else is in the batch. Documents are read slice by slice (memory maps stay on disk).
        """
        import numpy as np

        if what not in ("nats", "entropy"):
            raise ValueError(f"what must be 'nats' or 'entropy', got {what!r}")
        W = min(self.cfg.window or self.cfg.context, self.cfg.context)
        chunk = chunk or 4 * self.cfg.context
        device = self.head.weight.device
        # seq = [BOS] + doc; a job runs seq[s:e] and keeps the values for doc bytes c..e-1
        jobs = [
            (d, max(0, c - W + 1), c, min(c + chunk, len(doc) + int(eos)))
            for d, doc in enumerate(docs)
            for c in range(0, len(doc) + int(eos), chunk)
        ]
        for b in range(0, len(jobs), batch_size):
            group = jobs[b : b + batch_size]
            L = max(e - s for _, s, _, e in group)
            ids = torch.full((len(group), L), PAD_ID, dtype=torch.long)
            tgt = torch.full((len(group), L), PAD_ID, dtype=torch.long)
            pos = torch.full((len(group), L), -1, dtype=torch.long)
            for r, (d, s, _, e) in enumerate(group):
                doc = docs[d]
                inputs = np.asarray(doc[max(s - 1, 0) : e - 1], dtype=np.int64)
                if s == 0:
                    inputs = np.concatenate([[BOS_ID], inputs])
                ids[r, : e - s] = torch.from_numpy(inputs)
                targets = np.asarray(doc[s:e], dtype=np.int64)
                if e > len(doc):  # the EOS position (eos=True)
                    targets = np.concatenate([targets, [EOS_ID]])
                tgt[r, : e - s] = torch.from_numpy(targets)
                pos[r, : e - s] = torch.arange(e - s)
            ids, tgt, pos = ids.to(device), tgt.to(device), pos.to(device)
            logits = self(ids, positions=pos, mask=window_mask(pos, W))  # (B, L, V)
            if what == "nats":
                values = F.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")  # (B, L)
            else:
                logp = F.log_softmax(logits, dim=-1)
                values = -(logp.exp() * logp).sum(-1)  # (B, L)
            values = values.float().cpu()
            for r, (d, s, c, e) in enumerate(group):
                yield d, c, values[r, c - s : e - s].numpy()
