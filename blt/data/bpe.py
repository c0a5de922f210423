"""The one byte-level BPE learner (for the BPE-token baseline and for causal-BPE patching).

Learning uses the `tokenizers` library, offline and deterministic, on a fixed sample of a
split (`sample_split`: `sample_bytes` taken as 16 evenly spaced blocks, the whole split when it
is smaller). Bytes are never decoded as text:
- a document is cut into pieces by a GPT-2-like rule on bytes (`PIECE_RULE`: an optional space
  then letters, digits or punctuation; whitespace runs);
- each byte becomes one printable, non-whitespace character (`BYTE_CHARS`, the usual byte-level
  alphabet: printable Latin-1 characters stand for themselves, the other bytes for 256 + n);
- the pieces are handed to the BPE model separated by U+3000 (whitespace to the
  pre-tokenizer, beyond Latin-1, so no byte maps to it), so no token spans two pieces.
Long documents are cut into slices of about a megabyte, each ending before its last piece
(which the next slice starts with), so a document is cut the same whole or sliced; only a single
piece longer than a slice is cut. The 256 single bytes are always in the vocabulary.
"""
from __future__ import annotations

import re

import numpy as np

PIECE_RULE = re.compile(r" ?[A-Za-z\x80-\xff]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9\x80-\xff]+|\s+(?!\S)|\s+")
SEPARATOR = "\u3000"
SLICE_CHARS = 1 << 20  # bytes of a document cut into pieces at once


def _byte_alphabet() -> list[str]:
    """256 printable, non-whitespace characters, one per byte value."""
    keep = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


BYTE_CHARS = _byte_alphabet()
CHAR_BYTES = {c: b for b, c in enumerate(BYTE_CHARS)}
_TO_CHARS = dict(enumerate(BYTE_CHARS))  # str.translate table: latin-1 character -> byte character


def as_bytes(data) -> bytes:
    return data if isinstance(data, bytes) else bytes(np.asarray(data, dtype=np.uint8))


def sample_split(data, sample_bytes: int, blocks: int = 16) -> bytes:
    """A deterministic sample: `blocks` evenly spaced blocks, or all of data if it is smaller."""
    n = len(data)
    if n <= sample_bytes:
        return as_bytes(data)
    size = sample_bytes // blocks
    starts = np.linspace(0, n - size, blocks).astype(np.int64)
    return b"".join(as_bytes(data[s : s + size]) for s in starts)


def piece_texts(data) -> list[str]:
    """One document as strings of pieces in byte characters, separated by SEPARATOR."""
    text = as_bytes(data).decode("latin-1")  # one character per byte, for the regex only
    out, at = [], 0
    while at < len(text):
        end = at + SLICE_CHARS
        pieces = PIECE_RULE.findall(text, at, end)
        # the last piece may go on past `end`: it starts the next slice, unless it is all there is
        if end < len(text) and len(pieces) > 1:
            pieces.pop()
        at += sum(len(p) for p in pieces)
        out.append(SEPARATOR.join(pieces).translate(_TO_CHARS))
    return out


def learn_bpe(data, vocab_size: int, sample_bytes: int = 10_000_000, special_tokens: tuple[str, ...] = ()):
    """A `tokenizers.Tokenizer` (BPE) of at most vocab_size ids learned from a sample of data:
    the special tokens first, then the 256 single bytes, then the merges in the order learned."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(bytes(data), dtype=np.uint8)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=BYTE_CHARS, special_tokens=list(special_tokens), show_progress=False
    )
    tok.train_from_iterator(piece_texts(sample_split(data, sample_bytes)), trainer=trainer)
    return tok


def token_strings(tok) -> list[str]:
    """The tokenizer's tokens (byte characters) in id order."""
    return [s for s, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]


def chars_to_bytes(s: str) -> bytes:
    return bytes(CHAR_BYTES[c] for c in s)
