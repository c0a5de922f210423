"""Corpora shipped as shards of records (JSONL or Parquet), read in place.

Large corpora come as directories of many JSONL files (one JSON object per line, the text in
a field, "text" by default) or Parquet files (the text in a string column). Such a corpus is
read where it lies: no concatenated copy is ever written. One pass over the shards builds a
small INDEX, cached in $BLT_CACHE_DIR/shards/ and keyed by the shards' paths, sizes and
modification times, the format and the field:

    per record: shard, where it is (JSONL: offset and length of its line; Parquet: row group
    and row), and the length in bytes of its text (UTF-8)

plus the sha256 of every text's bytes in order (the corpus fingerprint). Documents are the
records in shard order (sorted paths), then record order; a null or missing-from-record text is
an empty document. The index costs 32 bytes per document on disk.

`ShardedBytes` shows the documents laid back to back as one read-only uint8 array, the form
every corpus has (blt.data.corpus): `len`, slices (lazy views, so splits and documents cost
nothing until read), integer-array gathers (the window sampler's reads) and `np.asarray` (a
view's bytes). A read decodes only the records it touches: a JSONL line is read and parsed, a
Parquet row group's text column is read once and kept in a small LRU cache, as are the last
decoded documents, so a training window costs a few record reads.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np

from blt.data.cache import cache_dir
from blt.errors import UserError
from blt.files import temporary_name

FORMATS = ("jsonl", "parquet")
SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet"}
INDEX_VERSION = 1


class LRU(OrderedDict):
    """A dict that keeps its `size` most recently used entries."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def fetch(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > self.size:
            self.popitem(last=False)
        return value


def text_of(record, text_field: str, where: str) -> bytes:
    """The UTF-8 bytes of a record's text field ('' when null); UserError if it is no string."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: a JSONL record must be a JSON object")
    value = record.get(text_field)
    if value is None:
        return b""
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{text_field}' is {type(value).__name__}, not a string")
    return value.encode("utf-8", "surrogatepass")


def _index_jsonl(path: Path, text_field: str, h) -> np.ndarray:
    """(R, 3) int64: line offset, line length, text length of every non-blank line."""
    rows, at = [], 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{number}: not valid JSON ({e.msg})") from None
                text = text_of(record, text_field, f"{path}:{number}")
                h.update(text)
                rows.append((at, len(line), len(text)))
            at += len(line)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def _parquet_file(path: Path, text_field: str):
    """An open Parquet file, checked to hold the text column."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading Parquet shards needs pyarrow: pip install 'blt-lm[parquet]'") from None
    f = pq.ParquetFile(path)
    if text_field not in f.schema_arrow.names:
        raise UserError(f"{path}: no column '{text_field}' (it has: {', '.join(f.schema_arrow.names)})")
    return f


def _row_group_texts(path: Path, text_field: str, group: int, f=None) -> tuple[np.ndarray, np.ndarray]:
    """The texts of one row group: (offsets (n+1,), their bytes)."""
    f = f or _parquet_file(path, text_field)
    return _utf8_parts(f.read_row_group(group, columns=[text_field]).column(0).combine_chunks())


def _utf8_parts(column) -> tuple[np.ndarray, np.ndarray]:
    """An arrow string array -> (offsets (n+1,) relative to its first text, the texts' bytes)."""
    import pyarrow as pa

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise UserError(f"the text column is {column.type}, not a string column")
    if column.null_count:
        column = column.fill_null("")
    kind = np.int64 if pa.types.is_large_string(column.type) else np.int32
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=kind)[column.offset : column.offset + len(column) + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets - offsets[0], data[offsets[0] : offsets[-1]]


def _index_parquet(path: Path, text_field: str, h) -> np.ndarray:
    """(R, 3) int64: row group, row within it, text length of every row."""
    f = _parquet_file(path, text_field)
    parts = []
    for g in range(f.num_row_groups):
        offsets, data = _row_group_texts(path, text_field, g, f)
        h.update(data.tobytes())
        n = len(offsets) - 1
        parts.append(np.stack([np.full(n, g), np.arange(n), np.diff(offsets)], axis=1))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 3), np.int64)


class ShardIndex:
    """Where every document of a sharded corpus is, and its fingerprint (see the module docstring)."""

    def __init__(self, files: list[Path], fmt: str, text_field: str, records: np.ndarray, sha256: str):
        self.files, self.format, self.text_field = files, fmt, text_field
        self.records = records  # (D, 4) int64: shard, location a, location b, text length
        self.sha256 = sha256
        self.docs = np.concatenate([[0], np.cumsum(records[:, 3])]).astype(np.int64)  # (D+1,)

    @staticmethod
    def key(files: list[Path], fmt: str, text_field: str) -> str:
        stats = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        return hashlib.sha256(json.dumps([INDEX_VERSION, fmt, text_field, stats]).encode()).hexdigest()[:24]

    @classmethod
    def build(cls, files: list[Path], fmt: str, text_field: str) -> "ShardIndex":
        h = hashlib.sha256()
        index_file = _index_jsonl if fmt == "jsonl" else _index_parquet
        parts = []
        for i, path in enumerate(files):
            rows = index_file(path, text_field, h)
            parts.append(np.concatenate([np.full((len(rows), 1), i, dtype=np.int64), rows], axis=1))
        return cls(files, fmt, text_field, np.concatenate(parts), h.hexdigest())

    @classmethod
    def open(cls, files: list[Path], fmt: str, text_field: str) -> "ShardIndex":
        """The cached index of these shards, built (once) if there is none."""
        path = cache_dir() / "shards" / f"{cls.key(files, fmt, text_field)}.npz"
        if path.is_file():
            with np.load(path) as z:
                return cls(files, fmt, text_field, z["records"], str(z["sha256"]))
        index = cls.build(files, fmt, text_field)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(path)
        with open(tmp, "wb") as f:
            np.savez(f, records=index.records, sha256=np.array(index.sha256))
        tmp.replace(path)
        return index


class ShardReader:
    """Reads documents' bytes from the shard files, keeping recent ones in LRU caches."""

    def __init__(self, index: ShardIndex, cached_docs: int = 256, cached_groups: int = 4):
        self.index = index
        self.docs = LRU(cached_docs)
        self.groups = LRU(cached_groups)  # Parquet: (shard, row group) -> (offsets, bytes)

    def document(self, d: int) -> np.ndarray:
        """Document d's bytes, uint8 (d-th record of the index)."""
        return self.docs.fetch(d, lambda: self._read(d))

    def _read(self, d: int) -> np.ndarray:
        shard, a, b, n = (int(x) for x in self.index.records[d])
        path = self.index.files[shard]
        if self.index.format == "jsonl":
            with open(path, "rb") as f:
                f.seek(a)
                text = text_of(json.loads(f.read(b)), self.index.text_field, f"{path}@{a}")
        else:
            offsets, data = self.groups.fetch(
                (shard, a), lambda: _row_group_texts(path, self.index.text_field, a))
            text = data[offsets[b] : offsets[b + 1]].tobytes()
        if len(text) != n:
            raise UserError(f"{path} changed since it was indexed; delete {cache_dir() / 'shards'} and retry")
        return np.frombuffer(text, dtype=np.uint8)


class ShardedBytes:
    """Bytes [lo, hi) of a sharded corpus's documents laid back to back, as a read-only array."""

    dtype = np.dtype(np.uint8)
    ndim = 1

    def __init__(self, reader: ShardReader, lo: int = 0, hi: int | None = None):
        self.reader = reader
        self.lo = lo
        self.hi = int(reader.index.docs[-1]) if hi is None else hi

    def __len__(self) -> int:
        return self.hi - self.lo

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("sharded corpora support only contiguous slices")
            return ShardedBytes(self.reader, self.lo + start, self.lo + max(start, stop))
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([key]))[0]
        return self.take(np.asarray(key))

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Bytes at integer positions (any shape) of this view."""
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError("position out of range")
        at = np.where(positions < 0, positions + len(self), positions).ravel() + self.lo
        docs = self.reader.index.docs
        doc = np.searchsorted(docs, at, side="right") - 1
        out = np.empty(at.shape, dtype=np.uint8)
        for d in np.unique(doc):
            here = doc == d
            out[here] = self.reader.document(int(d))[at[here] - docs[d]]
        return out.reshape(positions.shape)

    def __array__(self, dtype=None, copy=None):
        docs = self.reader.index.docs
        first, last = np.searchsorted(docs, [self.lo, max(self.hi - 1, self.lo)], side="right") - 1
        parts = []
        for d in range(int(first), int(last) + 1):
            a, b = max(self.lo, docs[d]) - docs[d], min(self.hi, docs[d + 1]) - docs[d]
            if b > a:
                parts.append(self.reader.document(d)[a:b])
        out = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        return out if dtype is None else out.astype(dtype)

    def tobytes(self) -> bytes:
        return np.asarray(self).tobytes()


def shard_format(files: list[Path]) -> str | None:
    """'jsonl' or 'parquet' when every file has that suffix, else None (plain files)."""
    kinds = {SUFFIXES.get(p.suffix.lower()) for p in files}
    return kinds.pop() if len(kinds) == 1 and None not in kinds else None


def open_shards(files: list[Path], fmt: str, text_field: str) -> tuple[ShardedBytes, np.ndarray, dict]:
    """(bytes, document offsets, fingerprint) of sharded files read in place."""
    if fmt not in FORMATS:
        raise UserError(f"data.format must be one of auto, files, {', '.join(FORMATS)}; got '{fmt}'")
    index = ShardIndex.open(files, fmt, text_field)
    fp = {"files": len(files), "format": fmt, "text_field": text_field,
          "bytes": int(index.docs[-1]), "documents": len(index.records), "sha256": index.sha256}
    return ShardedBytes(ShardReader(index)), index.docs, fp
