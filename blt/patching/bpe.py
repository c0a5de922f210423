"""A byte-level BPE vocabulary for BPE-delimited patching (and the BPE-token baseline).

Training uses the `tokenizers` library offline and deterministically on a fixed sample of a
split: `sample_bytes` taken as 16 evenly spaced blocks (the whole split when it is smaller).
Bytes are never decoded as text. The sample is cut into pieces by a GPT-2-like rule on bytes
(an optional space then letters, digits or punctuation; whitespace runs), each byte is mapped
to one printable, non-whitespace character (the usual byte-level alphabet: printable Latin-1
characters stand for themselves, the other bytes for 256 + n), and the pieces are handed to
the trainer separated by U+3000, which no byte maps to, so no token spans two pieces. The 256
single bytes are always in the vocabulary. Tokens map back to raw byte strings; the vocabulary
is saved as JSON (hex strings) in a run directory.

`BPETrie` holds the vocabulary for the causal rule in `patchers.BPEPatcher`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from blt.errors import UserError

VOCAB_FILE = "bpe_vocab.json"
_PIECE = re.compile(r" ?[A-Za-z\x80-\xff]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9\x80-\xff]+|\s+(?!\S)|\s+")
_SEPARATOR = "\u3000"


def _byte_alphabet() -> list[str]:
    """256 printable, non-whitespace characters, one per byte value."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE_CHARS = _byte_alphabet()
CHAR_BYTES = {c: b for b, c in enumerate(BYTE_CHARS)}
_TO_CHARS = {b: c for b, c in enumerate(BYTE_CHARS)}  # str.translate table over latin-1 text


def sample_split(data: np.ndarray, sample_bytes: int, blocks: int = 16) -> bytes:
    """A deterministic sample: `blocks` evenly spaced blocks, or all of data if it is smaller."""
    n = len(data)
    if n <= sample_bytes:
        return bytes(np.asarray(data))
    size = sample_bytes // blocks
    starts = np.linspace(0, n - size, blocks).astype(np.int64)
    return b"".join(bytes(np.asarray(data[s : s + size])) for s in starts)


def _training_text(sample: bytes, lines_of: int = 1 << 20):
    """The sample as byte-alphabet pieces, in strings of about `lines_of` characters."""
    text = sample.decode("latin-1")  # one character per byte, for the regex only
    for at in range(0, len(text), lines_of):
        pieces = _PIECE.findall(text[at : at + lines_of])
        yield _SEPARATOR.join(pieces).translate(_TO_CHARS)


def train_bpe(data, vocab_size: int, sample_bytes: int = 10_000_000) -> list[bytes]:
    """Learn a BPE vocabulary of at most vocab_size tokens (256 single bytes first) from data."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_size < 256:
        raise UserError(f"a byte-level BPE vocabulary needs at least 256 tokens, got {vocab_size}")
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(bytes(data), dtype=np.uint8)
    sample = sample_split(data, sample_bytes)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=BYTE_CHARS, show_progress=False, special_tokens=[]
    )
    tok.train_from_iterator(_training_text(sample), trainer=trainer)
    merged = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [bytes([b]) for b in range(256)]
    tokens += [bytes(CHAR_BYTES[c] for c in s) for s, _ in merged if len(s) > 1]
    return tokens[:vocab_size]


def save_bpe_vocab(tokens: list[bytes], path) -> Path:
    """Write tokens as JSON (hex strings), atomically; path may be a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / VOCAB_FILE
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"format": "blt-bpe-vocab", "tokens": [t.hex() for t in tokens]}))
    os.replace(tmp, path)
    return path


def load_bpe_vocab(path) -> list[bytes]:
    """Read a vocabulary written by save_bpe_vocab; path may be a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / VOCAB_FILE
    if not path.is_file():
        raise UserError(f"BPE vocabulary not found: {path}")
    try:
        meta = json.loads(path.read_text())
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
