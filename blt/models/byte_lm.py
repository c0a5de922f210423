"""A byte-level transformer language model (the baseline, and BLT's entropy model).

    ids (B, T) -> embedding (B, T, D) -> TransformerStack -> linear head -> logits (B, T, V)

The vocabulary is the 256 byte values plus BOS/EOS/PAD (`blt.vocab`), and BOE for the released
models' patchers (`vocab: released`). Training windows may
hold several documents ([BOS bytes EOS]...): attention is then masked per document, so no
prediction ever sees another document. Targets that are BOS or PAD are not scored (BOS only
follows EOS, across a document boundary). `context` is the window length the model was
trained on; scoring (blt.evaluation.scorer) and generation (blt.inference) slide with a span of
min(window, context) keys, never showing it more than it saw in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from blt.config import must
from blt.models.masks import sequence_mask
from blt.models.transformer import TransformerConfig, TransformerStack, init_linear
from blt.vocab import BOS_ID, PAD_ID, VOCAB_SIZES, is_byte


@dataclass
class ByteLMConfig(TransformerConfig):
    context: int = 256  # training window length, in bytes
    vocab: Literal["bytes", "released"] = "bytes"  # 259 ids, or the released models' 260 (blt.vocab)

    def validate(self):
        super().validate()
        must(self.context >= 2, "context", "at least 2", self.context)

    @property
    def span(self) -> int:
        """Positions a prediction may see, itself included: the sliding window within the context."""
        return self.span_within(self.context)


def masked_targets(targets: torch.Tensor) -> torch.Tensor:
    """Targets with unscored positions (BOS, PAD) set to -100 for cross_entropy."""
    return targets.masked_fill((targets == BOS_ID) | (targets == PAD_ID), -100)


class ByteLM(nn.Module):
    def __init__(self, cfg: ByteLMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(VOCAB_SIZES[cfg.vocab], cfg.dim)
        self.stack = TransformerStack(cfg)
        self.head = nn.Linear(cfg.dim, VOCAB_SIZES[cfg.vocab], bias=False)

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

    @staticmethod
    def count_targets(targets: torch.Tensor) -> int:
        """Targets the loss averages over (BOS and PAD are not scored)."""
        return int((masked_targets(targets) != -100).sum())

    def loss(self, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy (nats) over scored targets (bytes and EOS), and stats {'targets':
        their count, 'bytes': the real bytes among them}."""
        logits = self(ids)
        t = masked_targets(targets)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), t.view(-1), ignore_index=-100)
        return loss, {"targets": self.count_targets(targets), "bytes": int(is_byte(targets).sum())}
