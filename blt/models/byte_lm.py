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
from blt.models.masks import attention_mask, document_ids
from blt.models.transformer import TransformerConfig, TransformerStack, init_linear
from blt.vocab import BOS_ID, PAD_ID, VOCAB_SIZE


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

    def training_mask(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Causal + window + per-document mask for a training window; None when plain causal."""
        B, T = ids.shape
        window = self.cfg.window if self.cfg.window is not None and self.cfg.window < T else None
        several_docs = bool((ids[:, 1:] == BOS_ID).any())
        if window is None and not several_docs:
            return None
        pos = torch.arange(T, device=ids.device).expand(B, T)
        docs = document_ids(ids, BOS_ID) if several_docs else None
        return attention_mask(pos, pos, window, docs, docs)

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

    @torch.no_grad()
    def score_documents(self, docs, batch_size: int = 16, chunk: int | None = None) -> list:
        """Nats spent on every byte of each document, given BOS and all earlier bytes.

        Long documents are cut into chunks of `chunk` scored positions; each chunk is run with
        the W-1 positions before it as context, under a sliding window of W = min(window,
        context) keys, so every byte sees min(its index, W-1) earlier positions: the most the
        model ever saw in training. docs: list of uint8 arrays -> list of float32 arrays.
        """
        import numpy as np

        W = min(self.cfg.window or self.cfg.context, self.cfg.context)
        chunk = chunk or 4 * self.cfg.context
        device = self.head.weight.device
        jobs = []  # (doc index, seq start, score start, score end)
        seqs = []
        for d, doc in enumerate(docs):
            seq = np.concatenate([[BOS_ID], np.asarray(doc, dtype=np.int64)])
            seqs.append(seq)
            n = len(doc)
            for c in range(0, n, chunk):
                jobs.append((d, max(0, c - W + 1), c, min(c + chunk, n)))
        out = [np.zeros(len(doc), dtype=np.float32) for doc in docs]
        for b in range(0, len(jobs), batch_size):
            group = jobs[b : b + batch_size]
            L = max(e - s for _, s, _, e in group)
            ids = torch.full((len(group), L), PAD_ID, dtype=torch.long)
            tgt = torch.full((len(group), L), PAD_ID, dtype=torch.long)
            pos = torch.full((len(group), L), -1, dtype=torch.long)
            for r, (d, s, _, e) in enumerate(group):
                ids[r, : e - s] = torch.from_numpy(seqs[d][s:e])
                tgt[r, : e - s] = torch.from_numpy(seqs[d][s + 1 : e + 1])
                pos[r, : e - s] = torch.arange(e - s)
            ids, tgt, pos = ids.to(device), tgt.to(device), pos.to(device)
            logits = self(ids, positions=pos, mask=attention_mask(pos, pos, W))
            nats = F.cross_entropy(logits.transpose(1, 2), tgt, reduction="none").cpu()  # (B, L)
            for r, (d, s, c, e) in enumerate(group):
                out[d][c:e] = nats[r, c - s : e - s].numpy()
        return out
