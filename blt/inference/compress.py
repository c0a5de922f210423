"""Lossless compression with a byte-level model: its next-byte distributions drive a range coder.

    blob = compress(feeds, data, fingerprint)            # feeds: e.g. byte_lm_feeds(model)
    data = decompress(feeds, blob, fingerprint)

A model of bytes gives every byte a probability from the bytes before it; coding each byte with
an arithmetic (range) coder under that distribution costs about -log2 p bits, so the file
shrinks to the model's bits per byte (plus a header of ~100 bytes and under 8 bits per block).

THE SAME COMPUTATION IN BOTH DIRECTIONS. The decompressor must see bit-identical probabilities,
or the coder reads garbage. So both directions run one function, `_code_blocks`: the input is
cut into blocks (blt.inference.container.block_spans), consecutive blocks form batches of
`batch_blocks`, and each batch runs its rows position by position through the model's
incremental path, from BOS: feed the ids at position p of every row, get the logits (B, V) of
position p+1, turn each row's into an integer table (`byte_tables`), and code (compressing) or
decode (decompressing) the row's byte there, which is what gets fed next. The compressor knows
every byte in advance but still steps one position at a time, exactly as the decompressor must:
never a parallel forward in one direction and steps in the other. A row whose block has ended
is fed PAD, inactive, in both directions. The batch grouping is stored in the container, since
a row's floats may depend on its batch's shape (matrix kernels pick blocking by size).

Feeds (`Feeds`: (batch, positions) -> feed(ids (B,), active (B,)) -> logits (B, V)) are the
incremental paths of the two byte-level model kinds, as generation uses them:
- `byte_lm_feeds(model)`: a ByteLM with a KV cache (blt.models.kv_cache), one position per call;
  past the model's context the attention slides over its last min(window, context) keys;
- `blt_feeds(model)`: IncrementalBLT.step (online patching, the latent steps when a patch closes).

Tables: only the 256 byte values can occur inside a block (BOS, EOS and PAD never do, and the
block length comes from the container), so the model's distribution restricted to the bytes is
renormalised and quantised (blt.inference.arith.quantize, one function for both directions).

DETERMINISM. Decoding reproduces the compressor's floats when the same model file runs the same
code on the same kind of machine: the same toolkit and torch versions, the same device type and
CPU instruction set. Both directions run torch on ONE intra-op thread, whatever the process was
started with: a matrix product's rounding depends on how many threads share it (measured: the
byte LM's output layer gave other logits with two threads than with one, and a file coded with
two threads failed to decode with one). Then neither the thread setting nor the process matters
(tests/test_compress.py); another CPU family, a GPU, or another torch version may round
differently, and a file then fails its checksum (one clear error, no output) rather than
decoding wrongly.
"""
from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from blt.errors import UserError
from blt.inference.arith import Decoder, Encoder, quantize
from blt.inference.blt import IncrementalBLT
from blt.inference.container import ContainerError, Header, block_spans, pack, unpack
from blt.vocab import BOS_ID, PAD_ID

DEFAULT_BLOCK_SIZE = 16384  # bytes per block: each restarts from BOS, a few bits; more blocks, wider batches
DEFAULT_BATCH_BLOCKS = 64  # blocks coded side by side
MAX_BLOCK_SIZE = 1 << 24  # a model state per block is held in memory; larger headers are damaged
MAX_BATCH_BLOCKS = 4096

# feed(ids (B,), active (B,) bool) -> logits (B, V) of the next position of every row
Feed = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (rows, input positions) -> a fresh Feed whose first call takes BOS
Feeds = Callable[[int, int], Feed]


def byte_lm_feeds(model) -> Feeds:
    """A ByteLM's KV-cached steps (the positions of every row advance together)."""
    param = next(model.parameters())

    def new(batch: int, positions: int) -> Feed:
        cache = model.stack.new_cache(batch, context=model.cfg.context, max_step=1, dtype=param.dtype,
                                      device=param.device)
        position = torch.zeros(batch, 1, dtype=torch.long, device=param.device)

        def feed(ids: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
            logits = model(ids.to(param.device)[:, None], positions=position, cache=cache)  # (B, 1, V)
            position.add_(1)
            return logits[:, -1]

        return feed

    return new


def blt_feeds(model) -> Feeds:
    """A ByteLatentTransformer's incremental steps (IncrementalBLT)."""
    model.check_patching()

    def new(batch: int, positions: int) -> Feed:
        return IncrementalBLT(model, batch, positions).step

    return new


def byte_tables(logits: torch.Tensor) -> np.ndarray:
    """Integer frequency tables of the next byte: the softmax over the 256 byte ids only,
    quantised. (n, V) logits -> (n, 256) int64, each row summing to 2**24."""
    scores = logits[:, :256].detach().double().cpu().numpy()  # (n, 256)
    return quantize(np.exp(scores - scores.max(axis=1, keepdims=True)))


# code(p, rows (n,), tables (n, 256)) -> the byte at position p of each of those rows (n,)
CodeStep = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


@contextlib.contextmanager
def one_thread():
    """torch on one intra-op thread inside the block, the caller's setting restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()
def _code_blocks(feeds: Feeds, lengths: list[int], code: CodeStep, bar) -> None:
    """Run one batch of blocks position by position (see the module docstring)."""
    B, N = len(lengths), max(lengths)
    feed = feeds(B, N)
    lens = np.asarray(lengths)
    ids = torch.full((B,), BOS_ID, dtype=torch.long)
    for p in range(N):
        active = lens > p  # rows with a byte at p: their input at p is BOS or a real byte
        logits = feed(ids, torch.from_numpy(active))  # (B, V): the prediction of byte p
        rows = np.flatnonzero(active)
        symbols = code(p, rows, byte_tables(logits[torch.from_numpy(rows)]))  # (n,)
        ids = torch.full((B,), PAD_ID, dtype=torch.long)
        ids[torch.from_numpy(rows)] = torch.from_numpy(symbols.astype(np.int64))
        bar.update(len(rows))


def _batches(n_bytes: int, block_size: int, batch_blocks: int) -> list[list[tuple[int, int]]]:
    spans = block_spans(n_bytes, block_size)
    return [spans[i : i + batch_blocks] for i in range(0, len(spans), batch_blocks)]


def _progress(total: int, desc: str, progress: bool):
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr,
                disable=not progress or not sys.stderr.isatty())


def check_layout(block_size: int, batch_blocks: int) -> None:
    if not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise UserError(f"block size must be in 1..{MAX_BLOCK_SIZE}, got {block_size}")
    if not 1 <= batch_blocks <= MAX_BATCH_BLOCKS:
        raise UserError(f"blocks per batch must be in 1..{MAX_BATCH_BLOCKS}, got {batch_blocks}")


def _encode_step(blocks: list[np.ndarray], encoders: list[Encoder]) -> CodeStep:
    def encode(p: int, rows: np.ndarray, tables: np.ndarray) -> np.ndarray:
        symbols = np.array([blocks[r][p] for r in rows], dtype=np.int64)
        for r, symbol, table in zip(rows, symbols, tables):
            encoders[r].encode(int(symbol), table)
        return symbols

    return encode


def _decode_step(blocks: list[np.ndarray], decoders: list[Decoder]) -> CodeStep:
    def decode(p: int, rows: np.ndarray, tables: np.ndarray) -> np.ndarray:
        try:
            symbols = np.array([decoders[r].decode(t) for r, t in zip(rows, tables)], dtype=np.int64)
        except ValueError:
            raise ContainerError("corrupted data: a coded block does not decode") from None
        for r, symbol in zip(rows, symbols):
            blocks[r][p] = symbol
        return symbols

    return decode


def compress(feeds: Feeds, data: bytes, fingerprint: bytes, block_size: int = DEFAULT_BLOCK_SIZE,
             batch_blocks: int = DEFAULT_BATCH_BLOCKS, progress: bool = True) -> bytes:
    """The container (blt.inference.container) of data coded under the model behind `feeds`;
    fingerprint (32 bytes) names that model."""
    check_layout(block_size, batch_blocks)
    data = bytes(data)
    array = np.frombuffer(data, dtype=np.uint8)
    coded = []
    with _progress(len(data), "compress", progress) as bar, one_thread():
        for spans in _batches(len(data), block_size, batch_blocks):
            blocks = [array[a:b] for a, b in spans]
            encoders = [Encoder() for _ in blocks]
            _code_blocks(feeds, [len(b) for b in blocks], _encode_step(blocks, encoders), bar)
            coded += [e.finish() for e in encoders]
    header = Header(len(data), block_size, fingerprint, hashlib.sha256(data).digest(), batch_blocks)
    return pack(header, coded)


def decompress(feeds: Feeds, blob: bytes, fingerprint: bytes, progress: bool = True) -> bytes:
    """The original bytes of a container made by `compress` with the same model. UserError
    (ContainerError) for another model's file, a damaged or truncated file, or another format."""
    header, coded = unpack(blob)
    if header.model_fingerprint != fingerprint:
        raise ContainerError(
            f"this file was compressed with another model (fingerprint {header.model_fingerprint.hex()[:16]}..., "
            f"this model's is {fingerprint.hex()[:16]}...)")
    if header.block_size > MAX_BLOCK_SIZE or header.batch_blocks > MAX_BATCH_BLOCKS:
        raise ContainerError(f"damaged header: block size {header.block_size}, {header.batch_blocks} blocks per batch")
    out = []
    with _progress(header.original_length, "decompress", progress) as bar, one_thread():
        for spans in _batches(header.original_length, header.block_size, header.batch_blocks):
            decoders = [Decoder(coded[len(out) + i]) for i in range(len(spans))]
            blocks = [np.zeros(b - a, dtype=np.uint8) for a, b in spans]
            _code_blocks(feeds, [len(b) for b in blocks], _decode_step(blocks, decoders), bar)
            out += blocks
    data = b"".join(b.tobytes() for b in out)
    if hashlib.sha256(data).digest() != header.content_sha256:
        raise ContainerError(
            "the decompressed bytes fail the file's checksum: the file is corrupted, or it was compressed "
            "by another toolkit or torch version or on another kind of machine")
    return data
