"""Byte embeddings enriched with hashed n-gram embeddings (the BLT local encoder's input).

    e(t) = E_byte[id_t] + sum over f < n_hash_functions, n in ngram_sizes of E_{f,n}[hash_f(n-gram ending at t) % buckets]

The n-gram ending at position t is ids[t-n+1 .. t]. Positions before the window, and positions of
an earlier document (document index increments at every BOS), are MISSING, so an n-gram never
reaches across a document boundary and a document's embeddings are the same wherever it sits in
a window. Hashes are polynomial in 64-bit wrap-around arithmetic (int64 torch ops) over the ids
in a NUMBERING, with one of two term orders:
    'newest_first' (the toolkit's):  h = sum_i x_{t-i} * P_f^i     missing ids hash as PAD
    'oldest_first' (the released BLTs'): h = sum_j x_{t-n+1+j} * P_f^j  missing ids hash as 0
The numbering is the model's ids ('bytes' vocabulary) or the released models' numbering of the
same ids ('released' vocabulary: byte b as b + 4, BOS 1, ...; blt.vocab), so a released
checkpoint's tables are looked up with the very bucket numbers it was trained with.
Position t uses ids <= t only (causal), and the computation is vectorised over positions: the
only Python loops run over n and f. `embed_newest` computes the embedding of one new position
from the last max(n) ids (incremental generation), the same sums term for term.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from blt.models.masks import document_ids
from blt.vocab import BOS_ID, PAD_ID, RELEASED_NUMBERING, VOCAB_SIZES

# Large primes for the polynomial hashes, one per hash function.
HASH_PRIMES = (1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899, 9576890767, 3628273133,
               2860486313, 5463458053, 3367900313)
HASH_ORDERS = ("newest_first", "oldest_first")
MISSING = -1  # a position before the window or in an earlier document


def _wrap_int64(x: int) -> int:
    """Python int -> the int64 value with the same low 64 bits."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def hash_powers(n_hash_functions: int, max_n: int) -> list[list[int]]:
    """P_f^i as int64 values (64-bit wrap-around) for every hash function f and i < max_n."""
    return [[_wrap_int64(pow(HASH_PRIMES[f], i, 1 << 64)) for i in range(max_n)] for f in range(n_hash_functions)]


def shifted_ids(ids: torch.Tensor, max_n: int) -> list[torch.Tensor]:
    """[ids shifted right by i for i in 0..max_n-1]: entry i holds id_{t-i}, MISSING where t-i
    falls before the window or in an earlier document. Each (B, T)."""
    docs = document_ids(ids, BOS_ID)  # (B, T)
    out = [ids]
    for i in range(1, max_n):
        prev = torch.full_like(ids, MISSING)
        prev[:, i:] = ids[:, :-i]
        same_doc = torch.zeros_like(ids, dtype=torch.bool)
        same_doc[:, i:] = docs[:, i:] == docs[:, :-i]
        out.append(torch.where(same_doc, prev, MISSING))
    return out


class NgramHasher:
    """Bucket numbers of every (hash function, n) pair, in table order (all n for f = 0, then f = 1...)."""

    def __init__(self, ngram_sizes: list[int], n_hash_functions: int, buckets: int, vocab: str = "bytes",
                 order: str = "newest_first"):
        self.sizes, self.n_fns, self.buckets, self.order = list(ngram_sizes), n_hash_functions, buckets, order
        self.max_n = max(self.sizes, default=1)
        self.numbering = RELEASED_NUMBERING if vocab == "released" else None
        pad = PAD_ID if self.numbering is None else int(RELEASED_NUMBERING[PAD_ID])
        self.missing = pad if order == "newest_first" else 0
        self._powers = hash_powers(n_hash_functions, self.max_n)  # [F][max_n]

    def buckets_of(self, newest_first: list[torch.Tensor]) -> torch.Tensor:
        """x_{t-i} for i < max_n (each (...,), MISSING allowed) -> buckets (..., F * len(sizes))"""
        x = [self._map(v) for v in newest_first]
        powers = self._powers
        columns = []
        for f in range(self.n_fns):
            for n in self.sizes:
                if self.order == "newest_first":
                    terms = [x[i] * powers[f][i] for i in range(n)]
                else:  # the oldest id of the n-gram, x_{t-n+1}, gets P^0
                    terms = [x[n - 1 - j] * powers[f][j] for j in range(n)]
                h = terms[0]
                for term in terms[1:]:
                    h = h + term
                columns.append(torch.remainder(h, self.buckets))
        return torch.stack(columns, dim=-1)

    def _map(self, ids: torch.Tensor) -> torch.Tensor:
        missing = ids == MISSING
        if self.numbering is not None:
            ids = self.numbering.to(ids.device)[ids.clamp(min=0)]
        return ids.masked_fill(missing, self.missing)


def ngram_hashes(ids: torch.Tensor, ngram_sizes: list[int], n_hash_functions: int, buckets: int,
                 vocab: str = "bytes", order: str = "newest_first") -> torch.Tensor:
    """Bucket of every (hash function, n) pair at every position. (B, T, n_fns * len(sizes))"""
    hasher = NgramHasher(ngram_sizes, n_hash_functions, buckets, vocab, order)
    return hasher.buckets_of(shifted_ids(ids, hasher.max_n))


class HashNgramEmbedding(nn.Module):
    """ids (B, T) -> byte embedding + hashed n-gram embeddings (B, T, dim)."""

    def __init__(self, dim: int, ngram_sizes: list[int], n_hash_functions: int, buckets: int,
                 vocab: str = "bytes", order: str = "newest_first"):
        super().__init__()
        self.ngram_sizes, self.n_hash_functions, self.buckets = list(ngram_sizes), n_hash_functions, buckets
        self.hasher = NgramHasher(ngram_sizes, n_hash_functions, buckets, vocab, order)
        self.byte_embed = nn.Embedding(VOCAB_SIZES[vocab], dim)
        # one table per (hash fn, n), in the column order of ngram_hashes
        self.tables = nn.ModuleList(
            nn.Embedding(buckets, dim) for _ in range(n_hash_functions * len(self.ngram_sizes))
        )

    @torch.no_grad()
    def init_weights(self):
        # all 1 + len(tables) terms are summed: scale each so the sum has unit variance
        std = 1.0 / math.sqrt(1 + len(self.tables))
        nn.init.normal_(self.byte_embed.weight, std=std)
        for table in self.tables:
            nn.init.normal_(table.weight, std=std)

    @property
    def max_n(self) -> int:
        return self.hasher.max_n

    def _add_tables(self, h: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        for c, table in enumerate(self.tables):  # tables may stay in their stored dtype (a released model's)
            h = h + table(buckets[..., c]).to(h.dtype)
        return h

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.byte_embed(ids)  # (B, T, D)
        if not self.tables:
            return h
        return self._add_tables(h, self.hasher.buckets_of(shifted_ids(ids, self.max_n)))  # buckets (B, T, K)

    def embed_newest(self, recent: torch.Tensor) -> torch.Tensor:
        """Embedding of the newest position from recent (B, max_n): the last max(n) ids, newest
        last, MISSING where the document has none. (B, dim)"""
        h = self.byte_embed(recent[:, -1])  # (B, D)
        if not self.tables:
            return h
        newest_first = [recent[:, -1 - i] for i in range(self.max_n)]
        return self._add_tables(h, self.hasher.buckets_of(newest_first))  # buckets (B, K)
