"""A transformer language model over BPE tokens: the token baseline of the paper's comparisons.

    bytes -> BPETokenizer -> ids (B, T) -> embedding (B, T, D) -> TransformerStack -> head -> (B, T, V)

The blocks, their initialisation and the training-window rules are those of the byte-level
model (`ByteLM`): only the vocabulary differs (`blt.data.tokens`: 0 = BOS, 1 = EOS, 2 = PAD,
then single bytes and merges), so a comparison measures tokenization, not architecture.
Training windows hold several documents ([BOS tokens EOS]...), attention is masked per
document, and BOS/PAD targets are not scored. `context` and `window` count tokens.

Everything is reported per BYTE of text, so the model compares with byte models and BLT:
- `loss` returns {'targets': scored tokens, 'bytes': bytes those targets stand for} (EOS
  stands for none), so bits per byte = loss * targets / (ln 2 * bytes);
- scoring (blt.evaluation.scorer) tokenizes each document from BOS and puts each token's nats
  on the LAST byte the token covers, zeros on its other bytes: a document's sum is its total
  token NLL (EOS not scored), which is what bpb needs; the per-byte spread has no meaning.

The model holds its tokenizer (it is part of what the model is). Build, then `init_weights()`:
the table of bytes per token is a non-persistent buffer filled there, so building on the meta
device works.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blt.data.tokens import BOS, MIN_VOCAB, PAD, BPETokenizer
from blt.config import must
from blt.errors import UserError
from blt.models.masks import sequence_mask
from blt.models.transformer import TransformerConfig, TransformerStack, init_linear


@dataclass
class TokenLMConfig(TransformerConfig):
    context: int = 128  # training window length, in tokens
    vocab_size: int = 4096  # rows of the embedding and head; the tokenizer learns at most this many ids
    sample_bytes: int = 10_000_000  # training-split bytes the tokenizer is learned from (at most)

    def validate(self):
        super().validate()
        must(self.context >= 2, "context", "at least 2", self.context)
        must(self.vocab_size >= MIN_VOCAB, "vocab_size", f"at least {MIN_VOCAB}", self.vocab_size)
        must(self.sample_bytes >= 1, "sample_bytes", "at least 1", self.sample_bytes)

    @property
    def span(self) -> int:
        """Tokens a prediction may see, itself included: the sliding window within the context."""
        return self.span_within(self.context)


class TokenLM(nn.Module):
    def __init__(self, cfg: TokenLMConfig, tokenizer: BPETokenizer):
        super().__init__()
        if tokenizer.vocab_size > cfg.vocab_size:
            raise UserError(f"the tokenizer has {tokenizer.vocab_size} ids, more than bpe.vocab_size {cfg.vocab_size}")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.stack = TransformerStack(cfg)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.register_buffer("token_lengths", torch.empty(cfg.vocab_size, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def init_weights(self):
        nn.init.normal_(self.embed.weight, std=1.0)
        self.stack.init_weights()
        init_linear(self.head, self.cfg.dim**-0.5)
        self.init_buffers()

    @torch.no_grad()
    def init_buffers(self):
        """Fill the table of bytes per token (a non-persistent buffer: the tokenizer holds it)."""
        lengths = torch.zeros(self.cfg.vocab_size, dtype=torch.long)  # ids the tokenizer lacks: 0
        lengths[: self.tokenizer.vocab_size] = torch.from_numpy(self.tokenizer.token_lengths())
        self.token_lengths.copy_(lengths)

    def forward(self, ids, positions=None, mask="auto") -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V). mask='auto': causal, window, per document (BOS)."""
        B, T = ids.shape
        if positions is None:
            positions = torch.arange(T, device=ids.device).expand(B, T)
        if mask == "auto":
            mask = sequence_mask(ids, self.cfg.window, BOS)
        h = self.stack(self.embed(ids), positions, mask)  # (B, T, D)
        return self.head(h).float()  # (B, T, V)

    @staticmethod
    def scored(targets: torch.Tensor) -> torch.Tensor:
        """Targets the loss averages over (BOS, which only follows EOS, and PAD are not scored)."""
        return (targets != BOS) & (targets != PAD)

    @classmethod
    def count_targets(cls, targets: torch.Tensor) -> int:
        return int(cls.scored(targets).sum())

    def loss(self, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy (nats per scored token); stats {'targets': tokens, 'bytes': their bytes}."""
        logits = self(ids)
        scored = self.scored(targets)
        t = targets.masked_fill(~scored, -100)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), t.view(-1), ignore_index=-100)
        n_bytes = self.token_lengths[targets].sum()  # BOS, EOS and PAD stand for 0 bytes
        return loss, {"targets": int(scored.sum()), "bytes": int(n_bytes)}
