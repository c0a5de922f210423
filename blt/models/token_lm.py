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
- `score_documents` tokenizes each document from BOS and puts each token's nats on the LAST
  byte the token covers, zeros on its other bytes: a document's sum is its total token NLL
  (EOS not scored), which is what bpb needs; the per-byte spread itself has no meaning.
Long documents are scored in chunks, each run with the W - 1 tokens before it as context under
a sliding window of W = min(window, context), so every token is predicted from min(index, W-1)
earlier tokens (BOS counting as index 0): the most the model ever saw in training.

The model holds its tokenizer (it is part of what the model is). Build, then `init_weights()`:
the table of bytes per token is a non-persistent buffer filled there, so building on the meta
device works.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blt.data.tokens import BOS, MIN_VOCAB, PAD, BPETokenizer
from blt.errors import UserError
from blt.models.masks import sequence_mask, window_mask
from blt.models.transformer import TransformerConfig, TransformerStack, init_linear


@dataclass
class TokenLMConfig(TransformerConfig):
    context: int = 128  # training window length, in tokens
    vocab_size: int = 4096  # rows of the embedding and head; the tokenizer learns at most this many ids
    sample_bytes: int = 10_000_000  # training-split bytes the tokenizer is learned from (at most)

    def validate(self):
        super().validate()
        if self.context < 2:
            raise UserError("bpe.context must be at least 2")
        if self.vocab_size < MIN_VOCAB:
            raise UserError(f"bpe.vocab_size must be at least {MIN_VOCAB}, got {self.vocab_size}")
        if self.sample_bytes < 1:
            raise UserError("bpe.sample_bytes must be at least 1")

    @property
    def span(self) -> int:
        """Tokens a prediction may see, itself included: the sliding window within the context."""
        return min(self.window or self.context, self.context)


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

    def loss(self, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy (nats per scored token); stats {'targets': tokens, 'bytes': their bytes}."""
        logits = self(ids)
        scored = (targets != BOS) & (targets != PAD)  # a BOS target only follows EOS
        t = targets.masked_fill(~scored, -100)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), t.view(-1), ignore_index=-100)
        n_bytes = self.token_lengths[targets].sum()  # BOS, EOS and PAD stand for 0 bytes
        return loss, {"targets": int(scored.sum()), "bytes": int(n_bytes)}

    def generate(self, prompts, *args, **kwargs):
        """The token baseline is for scoring only: `blt generate` reports that in one line."""
        raise UserError("generation is not implemented for BPE-token runs (model_kind: bpe); use blt eval or blt score")

    @torch.no_grad()
    def score_documents(self, docs, batch_size: int = 16, chunk: int | None = None) -> list[np.ndarray]:
        """Nats per byte of each document (uint8 arrays): each token's nats on its last byte."""
        seqs = self.tokenizer.encode_batch(docs)
        lengths = self.token_lengths.cpu().numpy()
        out = []
        for doc, ids, nats in zip(docs, seqs, self.token_nats(seqs, batch_size, chunk)):
            per_byte = np.zeros(len(doc), dtype=np.float32)
            per_byte[np.cumsum(lengths[ids]) - 1] = nats
            out.append(per_byte)
        return out

    @torch.no_grad()
    def token_nats(self, seqs, batch_size: int = 16, chunk: int | None = None) -> list[np.ndarray]:
        """-log p(token | BOS, earlier tokens within the window) for every token of each sequence.

        seqs: token id arrays without BOS/EOS -> float32 arrays of the same lengths. A job
        scores tokens [first, end) of one sequence from inputs [start, end) of BOS + sequence,
        start = first - (W - 1) (or 0); rows of a batch have their own positions and mask
        (padding is -1), so a sequence's values do not depend on its batch.
        """
        W = self.cfg.span
        chunk = chunk or 4 * self.cfg.context
        device = self.head.weight.device
        out = [np.zeros(len(s), dtype=np.float32) for s in seqs]
        seqs = [torch.as_tensor(np.asarray(s, dtype=np.int64)) for s in seqs]
        jobs = [
            (d, max(0, first - W + 1), first, min(first + chunk, len(s)))
            for d, s in enumerate(seqs)
            for first in range(0, len(s), chunk)
        ]
        for at in range(0, len(jobs), batch_size):
            group = jobs[at : at + batch_size]
            L = max(end - start for _, start, _, end in group)
            ids = torch.full((len(group), L), PAD, dtype=torch.long)
            targets = torch.full((len(group), L), PAD, dtype=torch.long)
            positions = torch.full((len(group), L), -1, dtype=torch.long)
            for r, (d, start, _, end) in enumerate(group):
                seq = seqs[d]
                # input i is BOS + seq at index i, i.e. seq[i - 1]; the target there is seq[i]
                inputs = seq[max(start - 1, 0) : end - 1]
                if start == 0:
                    inputs = torch.cat([torch.tensor([BOS]), inputs])
                ids[r, : end - start] = inputs
                targets[r, : end - start] = seq[start:end]
                positions[r, : end - start] = torch.arange(end - start)
            ids, targets, positions = ids.to(device), targets.to(device), positions.to(device)
            logits = self(ids, positions=positions, mask=window_mask(positions, W))  # (B, L, V)
            nats = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").cpu()  # (B, L)
            for r, (d, start, first, end) in enumerate(group):
                out[d][first:end] = nats[r, first - start : end - start].numpy()
        return out
