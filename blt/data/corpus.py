"""Byte corpora: where the bytes come from, how they split, what they were.

A corpus is one uint8 array (a memory map or `ShardedBytes`, never a Python list) holding its
documents back to back, plus the offsets where documents start. Sources:

- a file: one document, memory-mapped in place;
- a directory (recursive, sorted paths) or a glob: one document per file, concatenated once
  into a cache file and memory-mapped from there; a file reached twice (through a symlink, or
  a symlink loop) is one document, at its first path;
- JSONL or Parquet shards (a file, directory or glob of them; `data.format`, `data.text_field`):
  one document per record, read in place through a small cached index (`blt.data.shards`),
  never copied; `data` is then a `ShardedBytes`, which reads like a uint8 array;
- `stdlib`: the .py files of the running Python's standard library (site-packages left out),
  the embedded default corpus that every machine has offline;
- `enwik8`: the first 10^8 bytes of English Wikipedia, see `blt.data.enwik8`.

Splits cut the concatenated bytes at fixed fractions (no shuffling, so they never change):
90/10 (train/val) for tiny shakespeare as nanoGPT does, 90/5/5 (train/val/test) otherwise.
A document that straddles a cut becomes two documents, one in each split.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import json
import stat
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blt.data.cache import cache_dir
from blt.data import enwik8
from blt.data.shards import FORMATS, open_shards, shard_format
from blt.errors import UserError
from blt.files import atomic_write_text, make_directory, open_output, read_errors, read_json, sha256_file

SPLITS = ("train", "val", "test")


@dataclass
class ByteSplit:
    """Bytes of one split and its document starts (relative; docs[-1] == len(data))."""

    data: np.ndarray  # (N,) uint8 (or ShardedBytes)
    docs: np.ndarray  # (D+1,) int64

    @property
    def n_bytes(self) -> int:
        return int(self.data.shape[0])

    def documents(self):
        for a, b in zip(self.docs[:-1], self.docs[1:]):
            yield self.data[a:b]


@dataclass
class Corpus:
    name: str
    data: np.ndarray  # (N,) uint8, usually a np.memmap (or ShardedBytes)
    docs: np.ndarray  # (D+1,) int64 document start offsets, docs[-1] == N
    fractions: tuple[float, ...]  # cumulative cut points, e.g. (0.9, 1.0) or (0.9, 0.95, 1.0)
    fingerprint: dict

    def split_range(self, split: str) -> tuple[int, int]:
        n = len(self.data)
        names = SPLITS[: len(self.fractions)]
        if split == "all":
            return 0, n
        if split not in names:
            raise UserError(
                f"corpus '{self.name}' has no '{split}' split (it has: {', '.join(names)}, all)"
            )
        i = names.index(split)
        lo = 0 if i == 0 else int(n * self.fractions[i - 1])
        hi = int(n * self.fractions[i])
        return lo, hi

    def split(self, split: str) -> ByteSplit:
        lo, hi = self.split_range(split)
        inner = self.docs[(self.docs > lo) & (self.docs < hi)]
        docs = np.concatenate([[lo], inner, [hi]]).astype(np.int64) - lo
        return ByteSplit(self.data[lo:hi], docs)

    @property
    def split_names(self) -> tuple[str, ...]:
        return SPLITS[: len(self.fractions)]


def split_fractions(name: str, splits: str) -> tuple[float, ...]:
    """'auto' picks 90/10 for tiny shakespeare (nanoGPT's split) and 90/5/5 otherwise."""
    if splits == "auto":
        splits = "90/10" if "shakespeare" in Path(name).name.lower() else "90/5/5"
    try:
        parts = [float(p) for p in splits.split("/")]
    except ValueError:
        raise UserError(f"data.splits must look like 90/5/5 or 90/10, got '{splits}'") from None
    if len(parts) not in (2, 3) or abs(sum(parts) - 100) > 1e-6 or min(parts) <= 0:
        raise UserError(f"data.splits must be 2 or 3 positive percentages summing to 100, got '{splits}'")
    return tuple(float(x) for x in np.cumsum(parts) / 100.0)


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if p.is_file() and not skip & set(p.relative_to(root).parts))


def _concatenated(files: list[Path], label: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Concatenate files once into the cache; memory-map the result."""
    sizes = [p.stat().st_size for p in files]
    key_src = json.dumps([[str(p), s, p.stat().st_mtime_ns] for p, s in zip(files, sizes)])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    d = cache_dir() / "corpora"
    bin_path, meta_path = d / f"{key}.bin", d / f"{key}.json"
    if not (bin_path.exists() and meta_path.exists()):
        make_directory(d, "$BLT_CACHE_DIR")
        h = hashlib.sha256()
        with open_output(bin_path) as out:
            for p in files:
                with read_errors(p):
                    block = p.read_bytes()
                h.update(block)
                out.write(block)
        docs = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        meta = {"files": len(files), "bytes": int(docs[-1]), "sha256": h.hexdigest(), "docs": docs.tolist()}
        atomic_write_text(meta_path, json.dumps(meta))
    meta = read_json(meta_path)
    docs = np.asarray(meta["docs"], dtype=np.int64)
    data = np.memmap(bin_path, dtype=np.uint8, mode="r") if meta["bytes"] else np.zeros(0, np.uint8)
    fp = {"source": label, "files": meta["files"], "bytes": meta["bytes"], "sha256": meta["sha256"]}
    return data, docs, fp


def _unique_files(paths) -> list[Path]:
    """The regular files among paths, in order, each once (a file reached again through a
    symlink, or round a symlink loop, keeps its first path)."""
    seen, files = set(), []
    for p in paths:
        try:
            st = p.stat()
        except OSError:  # a broken link
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            files.append(p)
    return files


def _from_files(files: list[Path], label: str, splits: str, fmt: str = "files", text_field: str = "text") -> Corpus:
    files = _unique_files(files)
    if not files:
        raise UserError(f"no files found for corpus '{label}'")
    if sum(p.stat().st_size for p in files) == 0:
        raise UserError(f"corpus '{label}' is empty (0 bytes)")
    if fmt == "auto":
        fmt = shard_format(files) or "files"
    if fmt in FORMATS:
        data, docs, fp = open_shards(files, fmt, text_field)
        if not len(data):
            raise UserError(f"corpus '{label}' holds no text in field '{text_field}'")
        fp = {"source": label, **fp}
    elif len(files) == 1:
        path = files[0]
        with read_errors(path):
            data = np.memmap(path, dtype=np.uint8, mode="r")
            fp = {"source": label, "files": 1, "bytes": len(data), "sha256": sha256_file(path)}
        docs = np.array([0, len(data)], dtype=np.int64)
    else:
        data, docs, fp = _concatenated(files, label)
    return Corpus(label, data, docs, split_fractions(label, splits), fp)


REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_corpus(spec: str) -> str:
    """A relative corpus path is tried from the working directory, then from the repo root,
    so configs can name shared data as '../shared/data/x.txt' and run from anywhere."""
    if spec in ("stdlib", "enwik8") or Path(spec).expanduser().is_absolute():
        return spec
    is_glob = any(ch in spec for ch in "*?[")
    if Path(spec).exists() or (is_glob and globlib.glob(spec, recursive=True)):
        return spec
    alt = REPO_ROOT / spec
    if alt.exists() or (is_glob and globlib.glob(str(alt), recursive=True)):
        return str(alt)
    return spec


def open_corpus(data) -> Corpus:
    """The corpus a run's data config (blt.runs.config.DataConfig) names, cut to data.max_bytes."""
    corpus = load_corpus(resolve_corpus(data.corpus), data.splits, data.data_dir, data.format, data.text_field)
    return truncated(corpus, data.max_bytes)


def truncated(corpus: Corpus, max_bytes: int | None) -> Corpus:
    """The first max_bytes bytes of a corpus (splits are then cut from those), or itself."""
    if max_bytes is None or max_bytes >= len(corpus.data):
        return corpus
    if max_bytes < 1:
        raise UserError(f"data.max_bytes must be at least 1, got {max_bytes}")
    docs = np.concatenate([corpus.docs[corpus.docs < max_bytes], [max_bytes]]).astype(np.int64)
    fp = {**corpus.fingerprint, "max_bytes": int(max_bytes)}
    return Corpus(corpus.name, corpus.data[:max_bytes], docs, corpus.fractions, fp)


def load_corpus(spec: str, splits: str = "auto", data_dir: str | None = None, fmt: str = "auto",
                text_field: str = "text") -> Corpus:
    """Resolve a corpus name or path (file, directory, glob) to a Corpus. fmt: 'files' (one
    document per file), 'jsonl' or 'parquet' (one per record, the text in text_field), or
    'auto' (shards when every file ends in .jsonl, or every one in .parquet; files otherwise)."""
    if fmt not in ("auto", "files", *FORMATS):
        raise UserError(f"data.format must be one of auto, files, {', '.join(FORMATS)}; got '{fmt}'")
    if spec == "stdlib":
        return _from_files(stdlib_files(), "stdlib", splits)
    if spec == "enwik8":
        return _from_files([enwik8.enwik8_path(data_dir)], "enwik8", splits if splits != "auto" else "90/5/5")
    path = Path(spec).expanduser()
    if path.is_file():
        return _from_files([path], str(spec), splits, fmt, text_field)
    if path.is_dir():
        files = _unique_files(sorted(path.rglob("*")))
        if not files:
            raise UserError(f"directory {spec} holds no files")
        return _from_files(files, str(spec), splits, fmt, text_field)
    if any(ch in spec for ch in "*?["):
        files = _unique_files(sorted(Path(p) for p in globlib.glob(spec, recursive=True)))
        if not files:
            raise UserError(f"glob {spec} matches no files")
        return _from_files(files, str(spec), splits, fmt, text_field)
    raise UserError(f"data not found: '{spec}' is no file, directory, glob, or known corpus (stdlib, enwik8)")
