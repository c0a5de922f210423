"""Quantized tables and the range coder: exact sums, determinism, round trips, size near ideal."""
import numpy as np
import pytest
import torch

from blt.inference.arith import DEFAULT_TOTAL_BITS, Decoder, Encoder, quantize

V = 259  # the byte vocabulary: 256 bytes and 3 special ids


def random_probs(rng, n_rows: int, n_symbols: int = V, sharpness: float = 3.0) -> np.ndarray:
    """Softmax of random logits: a mix of confident and flat rows, like a model's. (n, V)"""
    logits = rng.normal(size=(n_rows, n_symbols)) * rng.uniform(0, sharpness, size=(n_rows, 1))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def draw(rng, freqs: np.ndarray) -> np.ndarray:
    """One symbol per row, drawn with probability freq / total. (n, V) -> (n,)"""
    cum = np.cumsum(freqs, axis=1)
    u = rng.integers(0, cum[:, -1])[:, None]  # (n, 1)
    return (cum > u).argmax(axis=1)


def round_trip(symbols, tables) -> bytes:
    enc = Encoder()
    for s, row in zip(symbols, tables):
        enc.encode(int(s), row)
    data = enc.finish()
    dec = Decoder(data)
    assert [dec.decode(row) for row in tables[: len(symbols)]] == list(symbols)
    return data


def ideal_bits(symbols, tables) -> float:
    rows = np.arange(len(symbols))
    return float(-np.log2(tables[rows, symbols] / tables.sum(axis=1)).sum())


@pytest.fixture(scope="module")
def long_stream():
    rng = np.random.default_rng(1)
    tables = quantize(random_probs(rng, 20000), total_bits=16)
    return draw(rng, tables), tables


# --- quantize ---


@pytest.mark.parametrize("bits", [9, 16, DEFAULT_TOTAL_BITS, 32])
def test_rows_sum_exactly_and_every_symbol_is_codable(bits):
    p = random_probs(np.random.default_rng(0), 50)
    p[:, 7] = 0.0  # a symbol the model never emits still gets a unit
    f = quantize(p, total_bits=bits)
    assert f.dtype == np.int64 and f.shape == p.shape
    assert (f.sum(axis=1) == 2**bits).all()
    assert f.min() >= 1


def test_allowed_mask():
    rng = np.random.default_rng(0)
    p = random_probs(rng, 20)
    allowed = rng.random(V) < 0.5
    f = quantize(p, total_bits=16, allowed=allowed)
    assert (f[:, ~allowed] == 0).all() and (f[:, allowed] >= 1).all()
    assert (f.sum(axis=1) == 2**16).all()
    # All of a row's mass on disallowed symbols: the allowed ones share the table equally (the
    # first of them takes the units left over).
    flat = quantize(np.where(allowed, 0.0, 1.0), total_bits=16, allowed=allowed)
    share = flat[allowed][1:]
    assert (share == share[0]).all() and flat[allowed][0] - share[0] < allowed.sum() and flat.sum() == 2**16
    with pytest.raises(ValueError, match="cannot be coded"):
        Encoder().encode(int(np.flatnonzero(~allowed)[0]), f[0])
    with pytest.raises(ValueError, match="allows no symbol"):
        quantize(p, allowed=np.zeros(V, dtype=bool))


def test_deterministic_and_dtype_independent():
    p = random_probs(np.random.default_rng(0), 30).astype(np.float32)
    f = quantize(p)
    assert np.array_equal(f, quantize(p.copy()))
    assert np.array_equal(f, quantize(p.astype(np.float64)))  # float32 -> float64 is exact
    assert np.array_equal(f, quantize(torch.from_numpy(p)))
    assert np.array_equal(f, quantize(np.asfortranarray(p)))  # memory layout does not matter
    assert np.array_equal(f[3], quantize(p[3]))  # a row alone gives the same row


def test_larger_probability_never_gets_smaller_frequency():
    rng = np.random.default_rng(0)
    ties = np.round(random_probs(rng, 20), 3)  # many exact ties
    # Near-ties: the upper half one float step above the lower half, often lost in the scaling.
    x = rng.uniform(1.9, 2.0, size=(40, 1)) / 512
    near = np.where(np.arange(V) < V // 2, x, np.nextafter(x, 1.0))
    for bits, rows in ((12, ties), (10, near), (DEFAULT_TOTAL_BITS, ties)):
        for row, f in zip(rows, quantize(rows, total_bits=bits)):
            larger = row[:, None] > row[None, :]  # (V, V)
            assert not (larger & (f[:, None] < f[None, :])).any()
            # every symbol but the most probable one is its scaled share floored, plus its unit
            budget = 2**bits - V
            rest = np.arange(V) != row.argmax()
            assert np.array_equal(f[rest], np.floor(row * budget / row.sum())[rest].astype(np.int64) + 1)


def test_one_hot_uniform_and_tiny_rows():
    total = 2**16
    hot = np.zeros(V)
    hot[42] = 1.0
    f = quantize(hot, total_bits=16)
    assert f[42] == total - (V - 1) and (np.delete(f, 42) == 1).all()

    f = quantize(np.full(V, 1.0 / V), total_bits=16)
    share, rest = divmod(total, V)
    assert f[0] == share + rest and (f[1:] == share).all()  # the leftover goes to the first of the ties

    for dtype in (np.float32, np.float64):
        tiny = np.full(V, 1e-30, dtype=dtype)
        tiny[:2] = 0.5
        f = quantize(tiny, total_bits=16)
        assert (f[2:] == 1).all() and f[0] + f[1] == total - (V - 2) and 0 <= f[0] - f[1] <= V


def test_bad_input_is_rejected():
    p = np.full(V, 1.0 / V)
    for bad in (np.nan, -0.1, np.inf):
        q = p.copy()
        q[5] = bad
        with pytest.raises(ValueError, match="finite"):
            quantize(q)
    with pytest.raises(ValueError, match="cannot each get a unit"):
        quantize(p, total_bits=8)  # 259 symbols > 256 units
    with pytest.raises(ValueError, match="total_bits"):
        quantize(p, total_bits=33)


# --- the coder ---


@pytest.mark.parametrize("n", [0, 1, 2, 1000])
def test_round_trip_with_a_new_table_every_step(n):
    rng = np.random.default_rng(n)
    tables = quantize(random_probs(rng, n), total_bits=16) if n else np.zeros((0, V), np.int64)
    data = round_trip(draw(rng, tables) if n else [], tables)
    if n == 0:
        assert data == b""


def test_long_stream_is_within_one_byte_of_ideal(long_stream):
    symbols, tables = long_stream
    data = round_trip(symbols, tables)
    # The bound from arith's docstring: one byte for the final interval, plus the floor's waste,
    # under 2**-40 of the interval per symbol at 2**16 (a generous 1e-6 bits a symbol here).
    assert 8 * len(data) <= ideal_bits(symbols, tables) + 8 + 1e-6 * len(symbols)
    assert 8 * len(data) >= ideal_bits(symbols, tables) - 64  # and it is no accident


def test_rarest_symbol_repeated():
    f = np.full(V, 1, dtype=np.int64)
    f[0] = 2**16 - (V - 1)  # symbol 1 has 1 unit of 2**16: 16 bits each, two bytes out per symbol
    data = round_trip([1] * 5000, np.broadcast_to(f, (5000, V)))
    assert 2 * 5000 - 1 <= len(data) <= 2 * 5000 + 1


def test_skewed_tables():
    rng = np.random.default_rng(0)
    f = np.full(V, 1, dtype=np.int64)
    f[200] = 2**24 - (V - 1)
    tables = np.broadcast_to(f, (3000, V))
    symbols = np.full(3000, 200)
    data = round_trip(symbols, tables)
    assert len(data) <= 1  # 3000 * 2.2e-5 bits
    symbols[rng.choice(3000, 10, replace=False)] = rng.integers(0, 200, 10)  # a few surprises
    data = round_trip(symbols, tables)
    assert 8 * len(data) <= ideal_bits(symbols, tables) + 8


def test_streams_interleaved_row_by_row():
    """Blocks coded side by side, one symbol per block per step; the last block is shorter."""
    rng = np.random.default_rng(0)
    lengths = [400, 400, 400, 123, 0]
    steps = max(lengths)
    tables = quantize(random_probs(rng, steps * len(lengths)), total_bits=16)
    tables = tables.reshape(steps, len(lengths), V)  # (steps, B, V)
    symbols = np.stack([draw(rng, tables[t]) for t in range(steps)])  # (steps, B)
    encoders = [Encoder() for _ in lengths]
    for t in range(steps):
        for b, enc in enumerate(encoders):
            if t < lengths[b]:
                enc.encode(int(symbols[t, b]), tables[t, b])
    decoders = [Decoder(enc.finish()) for enc in encoders]
    out = [[] for _ in lengths]
    for t in range(steps):
        for b, dec in enumerate(decoders):
            if t < lengths[b]:
                out[b].append(dec.decode(tables[t, b]))
    for b, n in enumerate(lengths):
        assert out[b] == symbols[:n, b].tolist()


def test_carry_out_of_the_last_byte():
    """A final interval straddling a byte boundary: finish rounds up into the byte already out."""
    # 2**32 * start = 2**56 - 2**48 + 2**32: a zero byte goes out, low is left just above
    # 2**64 - 2**56 with range 2**56, so the one-byte value is 2**64 and carries into that zero.
    f = np.array([2**24 - 2**16 + 1, 2**16, 2**32 - 2**24 - 1])
    assert round_trip([1], f[None]) == b"\x01"


def test_decoding_with_other_tables_goes_wrong(long_stream):
    """The round trips above could fail: the decoder really depends on the tables."""
    symbols, tables = long_stream
    n = 200
    enc = Encoder()
    for s, row in zip(symbols[:n], tables[:n]):
        enc.encode(int(s), row)
    dec = Decoder(enc.finish())
    other = tables[n : 2 * n]
    got = [dec.decode(row) for row in other]
    assert sum(g != s for g, s in zip(got, symbols[:n])) > n // 2


def test_reading_past_the_end_and_corrupt_streams():
    f = np.array([0, 3, 1, 0], dtype=np.int64)
    dec = Decoder(b"")  # past the end the value reads as zeros: the first codable symbol
    assert [dec.decode(f) for _ in range(5)] == [1] * 5
    with pytest.raises(ValueError, match="outside the table"):
        Decoder(b"\xff" * 8).decode(np.array([1, 1, 1]))  # the value falls in the floor's waste
    with pytest.raises(ValueError, match="outside a table"):
        Encoder().encode(4, f)
    with pytest.raises(ValueError, match="must sum"):
        Encoder().encode(0, np.array([2**32, 1]))
