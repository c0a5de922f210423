"""Causal-BPE patching's vocabulary: learned, saved, loaded, and walked as a trie.

The vocabulary is the token byte strings of a byte-level BPE learned on the training split by
`blt.data.bpe.learn_bpe` (the same learner as the BPE-token baseline's tokenizer): the 256
single bytes, then the merges in the order learned. It is saved as JSON (hex strings).
`BPETrie` holds it for the causal rule in `patchers.BPEPatcher`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from blt.data.bpe import chars_to_bytes, learn_bpe, token_strings
from blt.errors import UserError
from blt.files import atomic_write_text, read_text


def train_bpe(data, vocab_size: int, sample_bytes: int = 10_000_000) -> list[bytes]:
    """Learn a BPE vocabulary of at most vocab_size tokens (256 single bytes first) from data."""
    if vocab_size < 256:
        raise UserError(f"a byte-level BPE vocabulary needs at least 256 tokens, got {vocab_size}")
    merged = [s for s in token_strings(learn_bpe(data, vocab_size, sample_bytes)) if len(s) > 1]
    tokens = [bytes([b]) for b in range(256)] + [chars_to_bytes(s) for s in merged]
    return tokens[:vocab_size]


def save_bpe_vocab(tokens: list[bytes], path) -> Path:
    """Write tokens as JSON (hex strings), atomically."""
    return atomic_write_text(path, json.dumps({"format": "blt-bpe-vocab", "tokens": [t.hex() for t in tokens]}))


def load_bpe_vocab(path) -> list[bytes]:
    """Read a vocabulary written by save_bpe_vocab."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"BPE vocabulary not found: {path}")
    text = read_text(path)
    try:
        meta = json.loads(text)
        tokens = [bytes.fromhex(t) for t in meta["tokens"]]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a BPE vocabulary written by blt") from None
    if meta.get("format") != "blt-bpe-vocab" or any(len(t) == 0 for t in tokens):
        raise UserError(f"{path} is not a BPE vocabulary written by blt")
    return tokens


class BPETrie:
    """Byte trie of a BPE vocabulary as a dense transition table (nodes x 256; -1 = no edge)."""

    def __init__(self, tokens: list[bytes]):
        edges: list[dict[int, int]] = [{}]
        for tok in tokens:
            node = 0
            for b in tok:
                nxt = edges[node].get(b)
                if nxt is None:
                    nxt = len(edges)
                    edges[node][b] = nxt
                    edges.append({})
                node = nxt
        self.next = np.full((len(edges), 256), -1, dtype=np.int32)  # (N, 256)
        for node, out in enumerate(edges):
            for b, nxt in out.items():
                self.next[node, b] = nxt
        self.has_child = (self.next >= 0).any(axis=1)  # (N,) the node's string is a proper prefix

    def is_proper_prefix(self, data: bytes) -> bool:
        node = 0
        for b in data:
            node = self.next[node, b]
            if node < 0:
                return False
        return bool(self.has_child[node])
