"""Byte embeddings enriched with hashed n-gram embeddings (the BLT local encoder's input).

    e(t) = E_byte[id_t] + sum over n in ngram_sizes, f < n_hash_functions of E_{n,f}[hash_f(n-gram ending at t)]

The n-gram ending at position t is ids[t-n+1 .. t]. Positions before the window, and
positions of an earlier document (document index increments at every BOS), are replaced by
PAD_ID, so an n-gram never reaches across a document boundary and a document's embeddings are
the same wherever it sits in a window. hash_f is a rolling polynomial hash
    h = sum_i id_{t-i} * P_f^i   (64-bit wrap-around arithmetic, done in int64 torch ops)
taken modulo the number of buckets. Position t uses ids <= t only (causal), and the whole
computation is vectorised over positions: the only Python loops run over n and f.
`embed_newest` computes the embedding of one new position from the last max(n) ids (incremental
generation), the same sums term for term.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from blt.models.masks import document_ids
from blt.vocab import BOS_ID, PAD_ID, VOCAB_SIZE

# Large primes for the polynomial hashes, one per hash function.
HASH_PRIMES = (1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899, 9576890767, 3628273133)


def _wrap_int64(x: int) -> int:
    """Python int -> the int64 value with the same low 64 bits."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def hash_powers(n_hash_functions: int, max_n: int, device=None) -> torch.Tensor:
    """P_f^i as int64 (64-bit wrap-around) for every hash function f and i < max_n. (F, max_n)"""
    return torch.tensor(
        [[_wrap_int64(pow(HASH_PRIMES[f], i, 1 << 64)) for i in range(max_n)] for f in range(n_hash_functions)],
        dtype=torch.long, device=device,
    ).view(n_hash_functions, max_n)


def shifted_ids(ids: torch.Tensor, max_n: int) -> list[torch.Tensor]:
    """[ids shifted right by i for i in 0..max_n-1]: entry i holds id_{t-i}, PAD where t-i
    falls before the window or in an earlier document. Each (B, T)."""
    docs = document_ids(ids, BOS_ID)  # (B, T)
    out = [ids]
    for i in range(1, max_n):
        prev = torch.full_like(ids, PAD_ID)
        prev[:, i:] = ids[:, :-i]
        same_doc = torch.zeros_like(ids, dtype=torch.bool)
        same_doc[:, i:] = docs[:, i:] == docs[:, :-i]
        out.append(torch.where(same_doc, prev, PAD_ID))
    return out


def ngram_hashes(ids: torch.Tensor, ngram_sizes: list[int], n_hash_functions: int, buckets: int) -> torch.Tensor:
    """Bucket of every (n, hash function) pair at every position. (B, T, len(sizes) * n_fns)"""
    max_n = max(ngram_sizes)
    shifted = shifted_ids(ids, max_n)
    powers = hash_powers(n_hash_functions, max_n).tolist()
    columns = []
    for f in range(n_hash_functions):
        h = torch.zeros_like(ids)
        by_n = {}
        for i in range(max_n):  # h accumulates id_{t-i} * P^i; after term i it hashes the (i+1)-gram
            h = h + shifted[i] * powers[f][i]
            by_n[i + 1] = h
        columns += [torch.remainder(by_n[n], buckets) for n in ngram_sizes]
    # column order: all n for hash fn 0, then all n for hash fn 1, ...
    return torch.stack(columns, dim=-1)


class HashNgramEmbedding(nn.Module):
    """ids (B, T) -> byte embedding + hashed n-gram embeddings (B, T, dim)."""

    def __init__(self, dim: int, ngram_sizes: list[int], n_hash_functions: int, buckets: int):
        super().__init__()
        self.ngram_sizes, self.n_hash_functions, self.buckets = list(ngram_sizes), n_hash_functions, buckets
        self.byte_embed = nn.Embedding(VOCAB_SIZE, dim)
        # one table per (hash fn, n), in the column order of ngram_hashes
        self.tables = nn.ModuleList(
            nn.Embedding(buckets, dim) for _ in range(n_hash_functions * len(self.ngram_sizes))
        )
        self._newest = None  # (hash powers, n-gram columns) for embed_newest, made on first use

    @torch.no_grad()
    def init_weights(self):
        # all 1 + len(tables) terms are summed: scale each so the sum has unit variance
        std = 1.0 / math.sqrt(1 + len(self.tables))
        nn.init.normal_(self.byte_embed.weight, std=std)
        for table in self.tables:
            nn.init.normal_(table.weight, std=std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.byte_embed(ids)  # (B, T, D)
        if not self.tables:
            return h
        buckets = ngram_hashes(ids, self.ngram_sizes, self.n_hash_functions, self.buckets)  # (B, T, K)
        for c, table in enumerate(self.tables):
            h = h + table(buckets[..., c])
        return h

    @property
    def max_n(self) -> int:
        return max(self.ngram_sizes)

    def embed_newest(self, recent: torch.Tensor) -> torch.Tensor:
        """Embedding of the newest position from recent (B, max_n): the last max(n) ids, newest
        last, PAD where the document has none. (B, dim)

        h_i = sum over j <= i of id_{t-j} * P^j is a cumsum over the ids newest first."""
        h = self.byte_embed(recent[:, -1])  # (B, D)
        if not self.tables:
            return h
        if self._newest is None or self._newest[0].device != recent.device:
            self._newest = (hash_powers(self.n_hash_functions, self.max_n, recent.device),  # (F, max_n)
                            torch.tensor([n - 1 for n in self.ngram_sizes], device=recent.device))
        powers, cols = self._newest
        hashes = (recent.flip(1)[:, None, :] * powers).cumsum(-1)  # (B, F, max_n)
        buckets = torch.remainder(hashes[:, :, cols], self.buckets).flatten(1)  # (B, F*S) in table order
        for c, table in enumerate(self.tables):
            h = h + table(buckets[:, c])
        return h
