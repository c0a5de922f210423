"""Setup time and disk use of a 1 GB corpus of many shards: read in place vs concatenated.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/shard_corpus.py --out /tmp/shard_corpus \
        --report benchmarks/results/shard_corpus.md

Writes a synthetic corpus (documents cut at random from Dickens, lengths log-normal around
4 KB) under --out as --shards JSONL shards, and as --shards Parquet shards twice: with pyarrow's
default row groups (one per shard here) and with row groups of --row-group records. Then, each with
a fresh cache directory ($BLT_CACHE_DIR):
- in place (`data.format` jsonl / parquet): the first open builds the per-record index, the
  second reuses it; the disk used is the index's;
- concatenated (`data.format: files`, what a directory of files meant before): the first open
  copies every byte into one cache file and memory-maps it;
and the time to draw training batches (8 windows of 512 bytes, random over the split) from each.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from blt.data.corpus import load_corpus
from blt.data.stream import WindowSampler
from released_blt import cpu_flags  # benchmarks/ is this script's first import path

SOURCE = "/work/shared/data/dickens.txt"


def make_documents(total_bytes: int, seed: int = 0):
    """Yield documents (str) of about total_bytes in all, cut from the source text."""
    text = Path(SOURCE).read_bytes().decode("utf-8", "replace")
    rng = np.random.default_rng(seed)
    made = 0
    while made < total_bytes:
        n = int(min(max(rng.lognormal(np.log(4000), 0.8), 50), 200_000))
        a = int(rng.integers(0, len(text) - n))
        doc = text[a : a + n]
        made += len(doc.encode())
        yield doc


def write_corpus(out: Path, total_bytes: int, n_shards: int, row_group: int) -> dict:
    """The documents as n_shards JSONL files and twice n_shards Parquet files; their sizes."""
    docs = list(make_documents(total_bytes))
    per = -(-len(docs) // n_shards)
    for kind in ("jsonl", "parquet", "parquet_groups"):
        (out / kind).mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        part = docs[s * per : (s + 1) * per]
        with open(out / "jsonl" / f"part-{s:05d}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(part))
        table = pa.table({"id": np.arange(len(part)), "text": part})
        pq.write_table(table, out / "parquet" / f"part-{s:05d}.parquet")
        pq.write_table(table, out / "parquet_groups" / f"part-{s:05d}.parquet", row_group_size=row_group)
    return {"documents": len(docs), "text_bytes": sum(len(d.encode()) for d in docs),
            "jsonl_bytes": du(out / "jsonl"), "parquet_bytes": du(out / "parquet")}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(path: Path, fmt: str, cache: Path) -> dict:
    """Open twice with a fresh cache (first: build; second: reuse), then draw batches."""
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["BLT_CACHE_DIR"] = str(cache)
    times = []
    for _ in range(2):
        tic = time.perf_counter()
        corpus = load_corpus(str(path), "90/5/5", fmt=fmt)
        times.append(time.perf_counter() - tic)
    sampler = WindowSampler(corpus.split("train"), 512, 8, seed=0)
    sampler.batch(0)
    tic = time.perf_counter()
    n = 50
    for step in range(1, n + 1):
        sampler.batch(step)
    return {"first_open_s": times[0], "second_open_s": times[1], "cache_bytes": du(cache),
            "batch_ms": (time.perf_counter() - tic) / n * 1000, "bytes": len(corpus.data),
            "documents": len(corpus.docs) - 1}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/shard_corpus"))
    ap.add_argument("--bytes", type=float, default=1e9)
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--row-group", type=int, default=100, help="records per row group, second Parquet copy")
    ap.add_argument("--report", type=Path)
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    tic = time.perf_counter()
    sizes = write_corpus(args.out, int(args.bytes), args.shards, args.row_group)
    sizes["write_s"] = time.perf_counter() - tic
    print(json.dumps(sizes), flush=True)
    rows = {}
    for label, sub, fmt in (("JSONL, in place", "jsonl", "jsonl"),
                            ("Parquet (default row groups), in place", "parquet", "parquet"),
                            (f"Parquet ({args.row_group}-record row groups), in place", "parquet_groups", "parquet"),
                            ("JSONL files, concatenated (format: files)", "jsonl", "files")):
        rows[label] = measure(args.out / sub, fmt, args.out / f"cache-{sub}-{fmt}")
        print(label, json.dumps(rows[label]), flush=True)
    if args.report:
        flags = cpu_flags()
        lines = [
            "# A 1 GB corpus of many shards: setup time and disk, read in place vs concatenated",
            "",
            "Command:",
            "```",
            f"PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/shard_corpus.py --out {args.out} "
            f"--bytes {args.bytes:g} --shards {args.shards} --row-group {args.row_group} --report {args.report}",
            "```",
            f"CPU flags: {flags}. Load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
            "cores (a shared machine); one run.",
            "",
            f"Corpus: {sizes['documents']:,} documents, {sizes['text_bytes'] / 1e9:.3f} GB of text (UTF-8), "
            f"as {args.shards} JSONL shards ({sizes['jsonl_bytes'] / 1e9:.3f} GB on disk) and {args.shards} "
            f"Parquet shards ({sizes['parquet_bytes'] / 1e9:.3f} GB, snappy, default row groups); all written in "
            f"{sizes['write_s']:.0f} s.",
            "",
            "| corpus | first open (s) | later opens (s) | extra disk (cache) | bytes seen "
            "| one batch of 8 x 512 (ms) |",
            "|---|---|---|---|---|---|",
        ]
        for label, r in rows.items():
            lines.append(f"| {label} | {r['first_open_s']:.1f} | {r['second_open_s']:.2f} "
                         f"| {r['cache_bytes'] / 1e6:,.1f} MB | {r['bytes'] / 1e9:.3f} GB, {r['documents']:,} docs "
                         f"| {r['batch_ms']:.2f} |")
        lines += [
            "",
            "In place, the first open reads every shard once (parsing each record, hashing its text for the "
            "corpus fingerprint) and writes only the per-record index; the concatenated form copies every "
            "byte into the cache (and, for JSONL files read as files, trains on the JSON syntax as text). "
            "Batches from shards decode the records their windows touch (recent records and Parquet row "
            "groups are cached); from the concatenation they are memory-map reads. A Parquet read decodes the "
            "window's whole row group (pyarrow reads column chunks): random windows over shards written with "
            "one large row group each cost a row-group decode per window, so shards meant for training are "
            "best written with small row groups (a hundred records here, ~0.5 MB).",
        ]
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
