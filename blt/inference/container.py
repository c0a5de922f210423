"""The file format of `blt compress`: a fixed header, a table of block lengths, the coded blocks.

The original bytes are cut into blocks of `block_size` bytes (the last one may be shorter), and
each block is coded on its own from the model's BOS state. Consecutive blocks are coded side by
side in batches of `batch_blocks` (one model state per batch): the batch is part of the float
computation that produced each block's probabilities, so the decoder must group the blocks the
same way, and the header says how. All integers are little-endian:

    offset    size  type    field
    0         4     bytes   magic b"BLTZ"
    4         2     uint16  format version (1)
    6         2     uint16  flags (none defined in version 1: must be 0)
    8         8     uint64  original length in bytes
    16        32    bytes   model fingerprint (a sha256 chosen by the caller)
    48        32    bytes   sha256 of the original bytes
    80        4     uint32  block size in bytes (>= 1)
    84        4     uint32  blocks per batch (>= 1)
    88        4     uint32  number of blocks n = ceil(original length / block size)
    92        4*n   uint32  coded length of each block, in block order
    92 + 4*n  ...   bytes   the coded blocks, concatenated in block order; nothing after them

`unpack` checks the structure (magic, version, flags, lengths that add up exactly), not the
content: a damaged coded byte or original length shows only when the decompressed bytes are
compared with the stored sha256. Files are read whole; none is large enough to need streaming.
ContainerError is a UserError: a command reading a damaged file exits with its one line.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from blt.errors import UserError

MAGIC = b"BLTZ"
FORMAT_VERSION = 1
KNOWN_FLAGS = 0  # a reader must not guess at flags it does not know: they reject the file

_MAGIC_VERSION = struct.Struct("<4sH")
_REST = struct.Struct("<HQ32s32sIII")  # flags .. number of blocks
HEADER_SIZE = _MAGIC_VERSION.size + _REST.size  # 92
_U32 = 1 << 32


class ContainerError(UserError):
    """The bytes are not a well-formed blt compressed file; the message says why, in one line."""


@dataclass(frozen=True)
class Header:
    original_length: int  # bytes before compression
    block_size: int  # original bytes per block; the last block may hold fewer
    model_fingerprint: bytes  # 32 bytes identifying the model that coded the blocks
    content_sha256: bytes  # 32 bytes: sha256 of the original bytes
    batch_blocks: int = 1  # consecutive blocks coded side by side
    flags: int = 0

    @property
    def n_blocks(self) -> int:
        # Arithmetic, not len(block_spans(...)): a corrupt length may be huge.
        return -(-self.original_length // self.block_size)


def block_spans(n_bytes: int, block_size: int) -> list[tuple[int, int]]:
    """(start, end) of each block of an n_bytes input, all block_size long but the last.

    An empty input has no block.
    """
    if block_size < 1:
        raise ValueError(f"block size must be >= 1, got {block_size}")
    return [(start, min(start + block_size, n_bytes)) for start in range(0, n_bytes, block_size)]


def pack(header: Header, blocks: list[bytes]) -> bytes:
    """The file: header, length table, blocks. ValueError if the header cannot be stored."""
    for name in ("model_fingerprint", "content_sha256"):
        if len(getattr(header, name)) != 32:
            raise ValueError(f"{name} must be 32 bytes, got {len(getattr(header, name))}")
    for name in ("block_size", "batch_blocks"):
        if not 1 <= getattr(header, name) < _U32:
            raise ValueError(f"{name} must be in 1..2**32-1, got {getattr(header, name)}")
    if not 0 <= header.original_length < 1 << 64:
        raise ValueError(f"original length must fit in 64 bits, got {header.original_length}")
    if header.flags & ~KNOWN_FLAGS:
        raise ValueError(f"unknown flags 0x{header.flags:04x}")
    if len(blocks) != header.n_blocks:
        raise ValueError(f"{header.original_length} bytes in blocks of {header.block_size} make "
                         f"{header.n_blocks} blocks, got {len(blocks)}")
    if any(len(block) >= _U32 for block in blocks):
        raise ValueError("a coded block is 4 GiB or larger")
    head = _MAGIC_VERSION.pack(MAGIC, FORMAT_VERSION) + _REST.pack(
        header.flags, header.original_length, header.model_fingerprint, header.content_sha256,
        header.block_size, header.batch_blocks, len(blocks))
    table = struct.pack(f"<{len(blocks)}I", *map(len, blocks))
    return b"".join([head, table, *blocks])


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Header and coded blocks of a file made by pack. Raises ContainerError if malformed."""
    data = bytes(data)
    # A prefix of the magic is a truncated file, anything else is some other kind of file.
    if data[:4] != MAGIC[: len(data)]:
        raise ContainerError("not a blt compressed file (it does not start with b'BLTZ')")
    # The version is checked before the rest is read: another version may lay it out otherwise.
    _, version = _MAGIC_VERSION.unpack(_take(data, 0, _MAGIC_VERSION.size, "the header"))
    if version != FORMAT_VERSION:
        raise ContainerError(
            f"unsupported blt container version {version} (this reader knows {FORMAT_VERSION})")
    flags, length, fingerprint, checksum, block_size, batch_blocks, n_blocks = _REST.unpack(
        _take(data, _MAGIC_VERSION.size, _REST.size, "the header"))
    if flags & ~KNOWN_FLAGS:
        raise ContainerError(f"unsupported flags 0x{flags:04x} in a version {version} blt file")
    if block_size == 0 or batch_blocks == 0:
        raise ContainerError(f"inconsistent block layout: block size {block_size}, {batch_blocks} blocks per batch")
    header = Header(length, block_size, fingerprint, checksum, batch_blocks, flags)
    if n_blocks != header.n_blocks:
        raise ContainerError(f"inconsistent block layout: {length} bytes in blocks of {block_size} "
                             f"make {header.n_blocks} blocks, the file says {n_blocks}")
    table = _take(data, HEADER_SIZE, 4 * n_blocks, "the block length table")
    lengths = struct.unpack(f"<{n_blocks}I", table)
    start = HEADER_SIZE + 4 * n_blocks
    end = start + sum(lengths)
    _take(data, start, end - start, "the coded blocks")
    if len(data) > end:
        raise ContainerError(f"trailing garbage: {len(data) - end} bytes after the last block")
    blocks = []
    for n in lengths:
        blocks.append(data[start : start + n])
        start += n
    return header, blocks


def _take(data: bytes, start: int, size: int, what: str) -> bytes:
    if start + size > len(data):
        raise ContainerError(f"truncated blt compressed file: {what} needs bytes "
                             f"{start}..{start + size} but the file has {len(data)}")
    return data[start : start + size]
