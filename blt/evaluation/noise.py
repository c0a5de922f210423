"""Noised text (the BLT paper's robustness kinds) and how robustness is scored.

NOISE. `noise(data, kind, p, seed) -> bytes` corrupts raw bytes, the same way for every seed
on every machine (numpy's PCG64 generator). p is a per-character probability:
    random_case  each ASCII letter has its case flipped with probability p. At p = 0.5 every
                 letter ends up upper or lower case at random, the paper's RandomCase.
    uppercase    each ASCII letter is upper-cased with probability p (default 1: all of them).
    drop         each character is removed with probability p (the paper drops 10%).
    repeat       each character is, with probability p, written 2 to 4 times in all (uniformly);
                 the paper repeats 20% of the characters up to four times.
    swap         scanning left to right, a character is, with probability p, swapped with the
                 next one; the pair is then skipped, so no character moves twice.
Characters are UTF-8 sequences: a character begins at every byte that is not a continuation
byte (0x80-0xBF), so a multi-byte character is dropped, repeated or moved whole and never
split. Bytes that are not valid UTF-8 still form units by the same rule. Case is changed for
ASCII letters only (one byte each), so the output is valid UTF-8 whenever the input is.

SCORING, bits per byte on CLEAN targets given a noised context. Each document is cut into
consecutive pieces of `prefix + continuation` bytes (`scoring_pairs`); the cut between the two
parts is moved back to the nearest space that begins a word (" word": where BPE pre-tokenizers
start a token too, so no token straddles the cut), found in the prefix's second half, else to
the nearest character start; the continuation is the `continuation` bytes after the cut (its
end moved back to a character start), the next pair begins where it ends, and a document's
tail too short for a whole pair is left out. Every pair is scored as a document of its own,
[BOS prefix continuation], and only the continuation's bytes count:
    clean bpb   = nats on the continuations after their clean prefixes / (ln 2 x their bytes)
    noised bpb  = the same with each prefix noised (seed derived from (seed, pair index)),
                  continuations untouched
    increase    = noised bpb - clean bpb
Both figures score the very same bytes, so the increase is a fair difference, and noise that
changes the prefix's length (drop, repeat) cannot misalign what is scored. `robustness` runs
several kinds over one set of pairs, with any per-byte scorer, and shares the clean pass
between them.
"""
from __future__ import annotations

import math

import numpy as np

from blt.errors import UserError

NOISE_KINDS = ("random_case", "uppercase", "drop", "repeat", "swap")
DEFAULT_P = {"random_case": 0.5, "uppercase": 1.0, "drop": 0.1, "repeat": 0.2, "swap": 0.1}
PREFIX_BYTES = 192  # noised context of a scoring pair
CONTINUATION_BYTES = 64  # clean, scored part of a scoring pair
MAX_REPEATS = 4  # a repeated character appears 2..MAX_REPEATS times
WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")


def check_noise(kind: str, p: float | None = None) -> float:
    """The probability to use for `kind` (its default when p is None); UserError if invalid."""
    if kind not in NOISE_KINDS:
        raise UserError(f"noise kind must be one of {', '.join(NOISE_KINDS)}, got '{kind}'")
    p = DEFAULT_P[kind] if p is None else float(p)
    if not 0.0 <= p <= 1.0:
        raise UserError(f"the noise probability must be between 0 and 1, got {p}")
    return p


def char_starts(data: np.ndarray) -> np.ndarray:
    """Offsets where UTF-8 characters begin (always 0 for non-empty data). (C,) int64"""
    is_start = (data & 0xC0) != 0x80
    if len(data):
        is_start[0] = True
    return np.flatnonzero(is_start)


def gather_chars(data: np.ndarray, starts: np.ndarray, which: np.ndarray) -> np.ndarray:
    """The bytes of characters `which` (indices into starts, any order, repeats allowed)."""
    ends = np.append(starts[1:], len(data))
    lengths = (ends - starts)[which]
    first = starts[which]
    out_at = np.cumsum(lengths) - lengths  # where each character lands in the output
    idx = np.repeat(first - out_at, lengths) + np.arange(int(lengths.sum()))
    return data[idx]


def _swap_order(n_chars: int, chosen: np.ndarray) -> np.ndarray:
    order = np.arange(n_chars)
    free_from = 0  # characters before this one were already swapped
    for i in np.flatnonzero(chosen[:-1]):
        if i >= free_from:
            order[i], order[i + 1] = order[i + 1], order[i]
            free_from = i + 2
    return order


def noise(data: bytes, kind: str, p: float | None = None, seed: int = 0) -> bytes:
    """`data` corrupted by one noise kind (see the module docstring); deterministic in seed."""
    p = check_noise(kind, p)
    arr = np.frombuffer(bytes(data), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    if kind in ("random_case", "uppercase"):
        lower = (arr >= ord("a")) & (arr <= ord("z"))
        letter = lower | ((arr >= ord("A")) & (arr <= ord("Z")))
        hit = rng.random(len(arr)) < p
        target = letter if kind == "random_case" else lower
        return (arr ^ np.where(target & hit, 0x20, 0).astype(np.uint8)).tobytes()  # bit 5 is ASCII case
    starts = char_starts(arr)
    n = len(starts)
    hit = rng.random(n) < p
    if kind == "drop":
        which = np.flatnonzero(~hit)
    elif kind == "repeat":
        counts = np.where(hit, rng.integers(2, MAX_REPEATS + 1, size=n), 1)
        which = np.repeat(np.arange(n), counts)
    else:  # swap
        which = _swap_order(n, hit)
    return gather_chars(arr, starts, which).tobytes()


# ---- scoring ---------------------------------------------------------------------------------


def _char_boundary(doc: np.ndarray, at: int, low: int) -> int:
    """The largest character start <= at (and > low), so no character is cut in two."""
    while at > low + 1 and at < len(doc) and (doc[at] & 0xC0) == 0x80:
        at -= 1
    return at


def _word_boundary(doc: np.ndarray, at: int, low: int) -> int:
    """The largest c <= at in the second half of (low, at] where a space begins a word, else
    the character boundary."""
    for c in range(min(at, len(doc) - 2), low + (at - low) // 2, -1):
        if doc[c] == 0x20 and doc[c + 1] not in WHITESPACE:
            return c
    return _char_boundary(doc, at, low)


def scoring_pairs(
    docs: list,
    prefix: int = PREFIX_BYTES,
    continuation: int = CONTINUATION_BYTES,
    max_pairs: int | None = None,
) -> list[tuple[bytes, bytes]]:
    """(prefix, continuation) pairs cut from the documents, in order (see the module docstring)."""
    if prefix < 1 or continuation < 1:
        raise UserError(f"scoring pairs need positive lengths, got prefix {prefix} and continuation {continuation}")
    pairs = []
    for doc in docs:
        doc = np.asarray(doc, dtype=np.uint8)
        at = 0
        while at + prefix + continuation <= len(doc):
            if max_pairs is not None and len(pairs) >= max_pairs:
                return pairs
            cut = _word_boundary(doc, at + prefix, at)
            end = _char_boundary(doc, cut + continuation, cut)
            pairs.append((doc[at:cut].tobytes(), doc[cut:end].tobytes()))
            at = end
    return pairs


def pair_seed(seed: int, index: int) -> int:
    """Independent noise for every pair, reproducible from (seed, pair index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def continuation_nats(scores, pairs: list[tuple[bytes, bytes]]) -> float:
    """Total nats a per-byte scorer (blt.evaluation.bpb.ByteScores) spends on the
    continuations, each scored after its own prefix."""
    docs = [np.frombuffer(a + b, dtype=np.uint8) for a, b in pairs]
    per_doc = scores(docs)
    total = 0.0
    for nats, (_, b) in zip(per_doc, pairs):
        total += float(np.sum(nats[len(nats) - len(b):], dtype=np.float64))  # the continuation's bytes only
    return total


def noised_pairs(pairs: list[tuple[bytes, bytes]], kind: str, p: float | None, seed: int) -> list[tuple[bytes, bytes]]:
    return [(noise(a, kind, p, pair_seed(seed, i)), b) for i, (a, b) in enumerate(pairs)]


def robustness(scores, pairs: list[tuple[bytes, bytes]], kinds: dict[str, float | None], seed: int = 0) -> dict:
    """{'clean_bpb', 'pairs', 'bytes', 'kinds': {kind: {'p', 'bpb', 'increase'}}} on these pairs.

    kinds maps each noise kind to its probability (None = its default)."""
    if not pairs:
        raise UserError("no scoring pairs: the evaluation text is shorter than one prefix + continuation")
    n_bytes = sum(len(b) for _, b in pairs)
    scale = 1.0 / (math.log(2) * n_bytes)
    clean = continuation_nats(scores, pairs) * scale
    out = {"clean_bpb": clean, "pairs": len(pairs), "bytes": n_bytes, "kinds": {}}
    for kind, p in kinds.items():
        p = check_noise(kind, p)
        bpb = continuation_nats(scores, noised_pairs(pairs, kind, p, seed)) * scale
        out["kinds"][kind] = {"p": p, "bpb": bpb, "increase": bpb - clean}
    return out
