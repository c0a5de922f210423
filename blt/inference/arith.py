"""Lossless coding under a model's probabilities: integer frequency tables and a range coder.

At every step a model gives a probability to each of V symbols. Both the compressor and the
decompressor turn those floats into the same integer table with `quantize`, and a range coder
narrows an interval by the coded symbol's share of that table, so a symbol of probability p
costs about -log2(p) bits. Blocks are coded side by side, one coder per block:

    freqs = quantize(probs)                                  # (B, V) float -> (B, V) int64
    for enc, symbol, row in zip(encoders, symbols, freqs):   # one symbol per block per step
        enc.encode(symbol, row)
    coded = [enc.finish() for enc in encoders]               # B byte strings

    symbols = [dec.decode(row) for dec, row in zip(decoders, freqs)]

Quantization. Each row is scaled to 2**total_bits minus one unit per allowed symbol (so that a
symbol the model deems impossible stays codable) and floored; the units the floors leave over
(fewer than one per allowed symbol) go to the row's most probable symbol. That costs at most
V / 2**total_bits of the mass (under 3e-5 bits per symbol for V = 256 at 24 bits), and unlike
handing them to the largest fractional parts it needs no sort: a sort of every row was the
coder's most expensive step. Float64 arithmetic (each operation correctly rounded, the row sum
in a fixed order) then integers: the same floats give the same table on every machine.

The coder keeps the interval [low, low + range) as Python integers in a 64-bit window over the
code value, a fraction 0.b1 b2 b3 ... written in bytes. Coding a symbol whose table entries are
start (sum of the frequencies before it), freq and total does, with r = range // total:

    low += r * start;  range = r * freq

The decoder repeats this integer arithmetic exactly, so the two agree bit for bit; the floor in r
only wastes range - r * total < total of the interval, at most 2**-24 of it since range stays
>= 2**56 and total <= 2**32 (under 1e-7 bits per symbol). When range drops below 2**56, the top
byte of low is final except for a carry and goes out. A carry (low passing 2**64) adds one to the
bytes already out, in place: the interval always lies inside [0, 1), so it stops before the
first byte. `finish` writes the one byte that, followed by zeros, falls in the final interval,
and drops trailing zero bytes: the decoder reads zeros past the end of its data. The output is
at most one byte over the information content: 8 * len(coded) <= sum(-log2(freq / total)) + 8,
plus the floor's waste above. Since reading past the end is valid, a decoder cannot tell where
its stream ends: the caller counts symbols (the container stores the original length).
"""
from __future__ import annotations

import numpy as np

# 2**24 matches float32's 24-bit significand: a finer table would mostly encode the model's
# rounding noise, a coarser one costs bits (the floor of one unit per symbol takes V / 2**bits of
# the mass: 0.4% for V = 259 at 16 bits, 0.0015% at 24). The coder accepts totals up to 2**32.
DEFAULT_TOTAL_BITS = 24
MAX_TOTAL_BITS = 32

_WINDOW = 1 << 64  # low and range live in [0, 2**64]
_BOTTOM = 1 << 56  # range is kept >= this, so r = range // total >= 2**24
_SHIFT = 56  # low >> _SHIFT is the byte that goes out on renormalization
_LOW_BITS = _BOTTOM - 1


def quantize(probs, total_bits: int = DEFAULT_TOTAL_BITS, allowed=None) -> np.ndarray:
    """Probabilities -> integer frequencies. (B, V) or (V,) float -> same shape, int64.

    Each row sums to exactly 2**total_bits and every allowed symbol gets at least 1. `allowed`
    (bool, broadcastable to probs) marks the symbols that can occur; the others get 0 and cannot
    be coded. Rows are scaled by their own sum (they need not sum to exactly 1); a row with no
    mass on its allowed symbols gives them equal shares. Within a row a larger probability never
    gets a smaller frequency. probs may be a numpy array or a torch tensor (any float dtype, any
    device).
    """
    if not 1 <= total_bits <= MAX_TOTAL_BITS:
        raise ValueError(f"total_bits must be in 1..{MAX_TOTAL_BITS}, got {total_bits}")
    if hasattr(probs, "detach"):  # a torch tensor, without importing torch here
        probs = probs.detach().cpu().double().numpy()
    p = np.array(probs, dtype=np.float64)  # a copy: masked entries are zeroed below
    one_row = p.ndim == 1
    p = np.atleast_2d(p)  # (B, V)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"probs must have shape (V,) or (B, V) with V >= 1, got {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probabilities must be finite and >= 0")
    n_symbols = p.shape[1]
    total = 1 << total_bits
    # Bounds the float error of a row's scaled sum below one unit (argument at `short`).
    if n_symbols * total > 1 << 52:
        raise ValueError(f"{n_symbols} symbols at 2**{total_bits} exceed float64 exactness")
    ok = np.ones(p.shape, dtype=bool)
    if allowed is not None:
        ok = np.broadcast_to(np.asarray(allowed, dtype=bool), p.shape)
    n_ok = ok.sum(axis=1)  # (B,)
    if (n_ok == 0).any():
        raise ValueError("a row allows no symbol")
    if (n_ok > total).any():
        raise ValueError(f"{n_ok.max()} symbols cannot each get a unit of 2**{total_bits}")

    p[~ok] = 0.0
    # A sequential accumulate adds in a fixed order, so the sum is the same bits everywhere
    # (np.sum's pairwise blocking depends on memory layout and build).
    mass = np.add.accumulate(p, axis=1)[:, -1].copy()  # (B,)
    empty = mass == 0
    p[empty] = ok[empty]
    mass[empty] = n_ok[empty]
    budget = total - n_ok  # (B,) units left after one per allowed symbol
    scaled = p * (budget / mass)[:, None]  # (B, V), row sums budget up to < 1 unit of float error
    freqs = np.floor(scaled).astype(np.int64) + ok  # (B, V)
    # 0 <= short <= n_ok: sum(floor) <= sum(scaled) < budget + 1, and each allowed floor loses < 1.
    short = total - freqs.sum(axis=1)  # (B,)
    # The leftover units go to the most probable allowed symbol (the first, on a tie), which
    # keeps a larger probability from getting a smaller frequency.
    top = np.where(ok, p, -1.0).argmax(axis=1)  # (B,)
    freqs[np.arange(len(freqs)), top] += short
    return freqs[0] if one_row else freqs


def _interval(symbol: int, freqs: np.ndarray) -> tuple[int, int, int]:
    """(start, freq, total) of symbol in a table. freqs: (V,) non-negative ints."""
    cum = freqs.cumsum()  # (V,) cum[s] = freqs[0] + ... + freqs[s]
    if not 0 <= symbol < len(cum):
        raise ValueError(f"symbol {symbol} is outside a table of {len(cum)} symbols")
    freq = int(freqs[symbol])
    if freq <= 0:
        raise ValueError(f"symbol {symbol} has frequency {freq}: it cannot be coded")
    return int(cum[symbol]) - freq, freq, _check_total(int(cum[-1]))


def _check_total(total: int) -> int:
    if not 0 < total <= 1 << MAX_TOTAL_BITS:
        raise ValueError(f"a table must sum to 1..2**{MAX_TOTAL_BITS}, got {total}")
    return total


class Encoder:
    """Codes a sequence of symbols into bytes: `encode` each symbol, then `finish` once."""

    def __init__(self) -> None:
        self._low = 0
        self._range = _WINDOW
        self._out = bytearray()

    def encode(self, symbol: int, freqs: np.ndarray) -> None:
        """Append symbol, coded with the table freqs: (V,) int64, e.g. one row of quantize."""
        start, freq, total = _interval(symbol, freqs)
        r = self._range // total
        self._low += r * start
        self._range = r * freq
        if self._low >= _WINDOW:
            self._low -= _WINDOW
            self._carry()
        while self._range < _BOTTOM:
            self._out.append(self._low >> _SHIFT)
            self._low = (self._low & _LOW_BITS) << 8
            self._range <<= 8

    def finish(self) -> bytes:
        """The coded stream (empty for no symbols). The encoder is spent afterwards."""
        # range >= 2**56, so low rounded up to a multiple of 2**56 lies in [low, low + range):
        # one more byte identifies the interval.
        last = -(-self._low >> _SHIFT)  # 0..256; 256 means a carry and a zero byte
        if last == 256:
            self._carry()
            last = 0
        self._out.append(last)
        return bytes(self._out).rstrip(b"\0")

    def _carry(self) -> None:
        i = len(self._out) - 1
        while self._out[i] == 0xFF:
            self._out[i] = 0
            i -= 1
        self._out[i] += 1


class Decoder:
    """Reads back the symbols of one coded stream, given the same tables in the same order."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 8
        self._range = _WINDOW
        # code = value - low: where the coded value sits in the current interval, 0 <= code < range
        self._code = int.from_bytes(self._data[:8].ljust(8, b"\0"), "big")

    def decode(self, freqs: np.ndarray) -> int:
        """The next symbol, under the table freqs: (V,) int64, the one the encoder was given."""
        cum = freqs.cumsum()  # (V,)
        total = _check_total(int(cum[-1]))
        r = self._range // total
        target = self._code // r
        if target >= total:  # the encoder never leaves the value in the floor's waste
            raise ValueError("corrupt stream: the coded value lies outside the table")
        symbol = int(cum.searchsorted(target, side="right"))  # the first s with cum[s] > target
        freq = int(freqs[symbol])
        self._code -= r * (int(cum[symbol]) - freq)
        self._range = r * freq
        while self._range < _BOTTOM:
            pos = self._pos
            self._pos = pos + 1
            self._code = (self._code << 8) | (self._data[pos] if pos < len(self._data) else 0)
            self._range <<= 8
        return symbol
