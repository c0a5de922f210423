"""The compressed file format: round trips, and a clear ContainerError for every kind of damage."""
import hashlib
import struct

import pytest

from blt.inference.container import (
    HEADER_SIZE,
    ContainerError,
    Header,
    block_spans,
    pack,
    unpack,
)

FINGERPRINT = hashlib.sha256(b"a model").digest()


def header_for(original: bytes, block_size: int) -> Header:
    return Header(len(original), block_size, FINGERPRINT, hashlib.sha256(original).digest())


def small_file() -> bytes:
    """10 bytes in blocks of 4, two per batch: three blocks, the middle one coded to nothing."""
    header = Header(10, 4, FINGERPRINT, hashlib.sha256(b"0123456789").digest(), batch_blocks=2)
    return pack(header, [b"ab", b"", b"xyz"])


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt):]


def rejects(data: bytes, message: str) -> None:
    with pytest.raises(ContainerError, match=message) as err:
        unpack(data)
    assert "\n" not in str(err.value)


def test_block_spans():
    assert block_spans(0, 4) == []
    assert block_spans(3, 4) == [(0, 3)]
    assert block_spans(8, 4) == [(0, 4), (4, 8)]
    assert block_spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError):
        block_spans(10, 0)


@pytest.mark.parametrize("original, block_size, blocks", [
    (b"", 4096, []),
    (b"hello", 4096, [b"\x01\x02\x03"]),
    (bytes(range(256)) * 5, 100, [bytes([i]) * i for i in range(13)]),  # block 0 codes to b""
])
def test_round_trip(original, block_size, blocks):
    header = header_for(original, block_size)
    data = pack(header, blocks)
    assert len(data) == HEADER_SIZE + 4 * len(blocks) + sum(map(len, blocks))
    assert unpack(data) == (header, blocks)
    assert header.n_blocks == len(block_spans(len(original), block_size)) == len(blocks)


def test_pack_refuses_what_it_cannot_store():
    with pytest.raises(ValueError, match="2 blocks"):
        pack(header_for(b"12345", 4), [b"a"])
    with pytest.raises(ValueError, match="32 bytes"):
        pack(Header(0, 4, FINGERPRINT[:31], FINGERPRINT), [])
    with pytest.raises(ValueError, match="flags"):
        pack(Header(0, 4, FINGERPRINT, FINGERPRINT, flags=1), [])
    with pytest.raises(ValueError, match="batch_blocks"):
        pack(Header(0, 4, FINGERPRINT, FINGERPRINT, batch_blocks=0), [])


def test_bad_magic():
    data = small_file()
    for other in (b"BLTX" + data[4:], b"PK\x03\x04" + data[4:], b"hello world", b"X", b"BX"):
        rejects(other, "^not a blt compressed file")


def test_unsupported_version_and_flags():
    rejects(patched(small_file(), 4, "<H", 2), "^unsupported blt container version 2 ")
    rejects(patched(small_file(), 6, "<H", 0x8000), "^unsupported flags 0x8000")


def test_every_truncation():
    data = small_file()
    for n in range(len(data)):
        rejects(data[:n], "^truncated blt compressed file: ")


def test_trailing_garbage():
    rejects(small_file() + b"\0", "^trailing garbage: 1 bytes after the last block")


def test_damaged_lengths():
    data = small_file()
    table = HEADER_SIZE  # the coded lengths of the three blocks: 2, 0, 3
    rejects(patched(data, table, "<B", 2 ^ 0x04), "^truncated .* the coded blocks")
    rejects(patched(data, table + 8, "<B", 3 ^ 0x01), "^trailing garbage: 1 bytes")
    rejects(patched(data, table + 7, "<B", 0x01), "^truncated")  # 2**24 bytes for block 1
    rejects(patched(data, 88, "<I", 4), "^inconsistent block layout: 10 bytes .* says 4$")
    rejects(patched(data, 8, "<Q", 13), "^inconsistent block layout: 13 bytes .* make 4 ")
    rejects(patched(data, 8, "<Q", 2**64 - 1), "^inconsistent block layout")
    rejects(patched(data, 80, "<I", 0), "^inconsistent block layout: block size 0")
    rejects(patched(data, 84, "<I", 0), "^inconsistent block layout: .* 0 blocks per batch")


def test_batch_blocks_round_trip():
    header, _ = unpack(small_file())
    assert header.batch_blocks == 2 and header.block_size == 4 and header.original_length == 10
