"""BPE tokens for the token-level baseline: the tokenizer, cached token splits, training windows.

Tokenizer. A byte-level BPE learned by `blt.data.bpe.learn_bpe` (offline, deterministic, on a
fixed sample of the training split, never decoding text: see that module for the piece rule and
the byte alphabet). Every byte string, invalid UTF-8 included, encodes, and decodes back exactly.
Ids: 0 = BOS, 1 = EOS, 2 = PAD (named with a character no byte maps to, so no text can spell
them), then the 256 single bytes, then the merges. It is saved as a `tokenizers` JSON file (a
run keeps it as tokenizer.json); the BPE merges live there, the piece rule and byte alphabet in
`blt.data.bpe`.

Token splits. A split is tokenized once into a flat memory map [BOS t_1..t_n EOS] per document
(uint16, uint32 past 65536 tokens), with a JSON file naming the tokenizer and the bytes it came
from; a stale cache is rebuilt. `TokenWindowSampler` draws (B, T+1) windows from it as a pure
function of (seed, step, micro) and a ShardPlan, as `blt.data.stream.WindowSampler` does for bytes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from blt.data.bpe import BYTE_CHARS, chars_to_bytes, learn_bpe, piece_texts, token_strings
from blt.data.corpus import ByteSplit
from blt.data.stream import ShardedStarts, ShardPlan
from blt.errors import UserError
from blt.files import atomic_write_text, make_directory, open_output, read_json, read_text

BOS, EOS, PAD = 0, 1, 2
SPECIAL_TOKENS = ("\u27e8bos\u27e9", "\u27e8eos\u27e9", "\u27e8pad\u27e9")  # ⟨bos⟩ ⟨eos⟩ ⟨pad⟩
MIN_VOCAB = len(SPECIAL_TOKENS) + 256


class BPETokenizer:
    """A trained byte-level BPE: bytes <-> token ids (see the module docstring)."""

    def __init__(self, tok, source: str = "<memory>"):
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()
        vocab = tok.get_vocab()
        for i, name in enumerate(SPECIAL_TOKENS):
            if vocab.get(name) != i:
                raise UserError(f"{source} is not a tokenizer written by blt (no {name} at id {i})")
        missing = [b for b, c in enumerate(BYTE_CHARS) if c not in vocab]
        if missing or sorted(vocab.values()) != list(range(self.vocab_size)):
            raise UserError(f"{source} is not a byte-level BPE tokenizer written by blt")
        pieces = token_strings(tok)
        self.token_bytes = [b""] * len(SPECIAL_TOKENS)  # what each id stands for; specials: nothing
        self.token_bytes += [chars_to_bytes(p) for p in pieces[len(SPECIAL_TOKENS) :]]
        self.json = tok.to_str()
        self.sha256 = hashlib.sha256(self.json.encode()).hexdigest()

    def token_lengths(self) -> np.ndarray:
        """Bytes each id stands for (0 for BOS/EOS/PAD). (V,) int64"""
        return np.array([len(t) for t in self.token_bytes], dtype=np.int64)

    def iter_encode(self, docs, batch_chars: int = 1 << 22):
        """Yield each document's token ids (int64, no BOS/EOS), in order; documents are encoded
        in batches of about batch_chars bytes (`tokenizers` spreads a batch over its threads)."""
        parts: dict[int, list[np.ndarray]] = {}
        texts, owners = [], []

        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets, 2-3x faster
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)

        def encode_pending():
            for d, enc in zip(owners, encode(texts, add_special_tokens=False)):
                parts[d].append(np.asarray(enc.ids, dtype=np.int64))
            texts.clear()
            owners.clear()

        def finished(before: int | None):
            while parts and (before is None or next(iter(parts)) < before):
                chunks = parts.pop(next(iter(parts)))
                yield np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)

        size = 0
        for d, doc in enumerate(docs):
            parts[d] = []
            for text in piece_texts(doc):
                texts.append(text)
                owners.append(d)
                size += len(text)
                if size >= batch_chars:
                    encode_pending()
                    size = 0
                    yield from finished(before=d)
        encode_pending()
        yield from finished(before=None)

    def encode_batch(self, docs) -> list[np.ndarray]:
        return list(self.iter_encode(docs))

    def encode(self, data) -> np.ndarray:
        """bytes (or a uint8 array) -> token ids, int64, without BOS/EOS."""
        return self.encode_batch([data])[0]

    def decode(self, ids) -> bytes:
        """Token ids -> bytes; BOS/EOS/PAD stand for nothing."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return b"".join(self.token_bytes[int(i)] for i in ids)

    def bytes_per_token(self, docs) -> float:
        """Mean bytes per token over documents (BOS and EOS not counted): the compression."""
        n_bytes = n_tokens = 0
        for doc, ids in zip(docs, self.iter_encode(docs)):
            n_bytes += len(doc)
            n_tokens += len(ids)
        return n_bytes / max(n_tokens, 1)

    def save(self, path) -> Path:
        """Write the `tokenizers` JSON atomically."""
        return atomic_write_text(path, self.json)


def load_tokenizer(path) -> BPETokenizer:
    """Read a tokenizer written by `BPETokenizer.save`."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise UserError(f"BPE tokenizer not found: {path}")
    text = read_text(path)
    try:
        tok = Tokenizer.from_str(text)
    except Exception:  # the library raises plain Exceptions for any malformed JSON
        raise UserError(f"{path} is not a tokenizer file") from None
    return BPETokenizer(tok, str(path))


def train_tokenizer(data, vocab_size: int, sample_bytes: int = 10_000_000) -> BPETokenizer:
    """Learn a byte-level BPE of at most vocab_size ids (specials and single bytes included)."""
    if vocab_size < MIN_VOCAB:
        raise UserError(f"a byte-level BPE vocabulary needs at least {MIN_VOCAB} tokens, got {vocab_size}")
    return BPETokenizer(learn_bpe(data, vocab_size, sample_bytes, SPECIAL_TOKENS))


# ---- token splits ------------------------------------------------------------------------------


def cached_tokens(tokenizer: BPETokenizer, split: ByteSplit, prefix, source: dict) -> np.ndarray:
    """The split as [BOS t.. EOS] per non-empty document, a memory map at <prefix>.bin.

    Made once; remade when its JSON (<prefix>.json) names another tokenizer or `source` (what
    the bytes are, e.g. the corpus fingerprint and split). Written atomically.
    """
    prefix = Path(prefix)
    bin_path, meta_path = prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".json")
    want = {"tokenizer": tokenizer.sha256, "source": source, "bytes": split.n_bytes}
    if meta_path.is_file():
        meta = read_json(meta_path)
        if all(meta.get(k) == v for k, v in want.items()) and bin_path.is_file():
            return np.memmap(bin_path, dtype=meta["dtype"], mode="r")
    make_directory(prefix.parent)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    n_tokens = n_docs = 0
    with open_output(bin_path) as f:
        for ids in tokenizer.iter_encode(split.documents()):
            if len(ids) == 0:
                continue
            f.write(np.concatenate([[BOS], ids, [EOS]]).astype(dtype).tobytes())
            n_tokens += len(ids) + 2
            n_docs += 1
    meta = {**want, "dtype": np.dtype(dtype).name, "tokens": n_tokens, "documents": n_docs}
    atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    return np.memmap(bin_path, dtype=dtype, mode="r") if n_tokens else np.zeros(0, dtype=dtype)


class TokenWindowSampler:
    """Draws (B, T+1) token windows from a token split; {'ids': w[:, :-1], 'targets': w[:, 1:]}."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, plan: ShardPlan = ShardPlan()):
        self.tokens = tokens
        self.seq_len, self.batch_size = seq_len, batch_size
        self.starts = ShardedStarts(len(tokens), seq_len, batch_size, seed, plan, "tokens")  # as WindowSampler's

    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        index = self.starts(step, micro)[:, None] + np.arange(self.seq_len + 1)[None, :]  # (B, T+1)
        w = torch.from_numpy(np.asarray(self.tokens[index], dtype=np.int64))
        return {"ids": w[:, :-1].contiguous(), "targets": w[:, 1:].contiguous()}
