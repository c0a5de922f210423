"""Lossless compression with trained models against gzip, bzip2, xz and zstd.

    python -m benchmarks.compression --report benchmarks/results/compression.md   # from the repository root

Models (trained on the Dickens train split if their run directory has no checkpoint yet, with
configs/compression/*.yaml, one torch thread): a byte LM (4 x 128, context 256) and a BLT
(latent 2 x 128, local 1 x 64, entropy patching at 4.5 bytes per patch, with its own small
entropy model). Files: the Dickens test split (its last 5%, which no model trained on) and the
text files of the Canterbury corpus (English, HTML, C, Lisp, a man page).

For each file and model: `blt.inference.compress` (the code behind `blt compress`) compresses
it, the result is decompressed and compared with the original, and both are timed. Columns:
- *coded bpb*: 8 x compressed size / original size, the container's header and block table
  included (*header bpb* is their share);
- *model bpb (file)*: the model's own bits per byte on the file as one document (the windowed
  scorer, blt.evaluation.scorer: what `blt score` reports); *model bpb (blocks)*: the same over
  the coder's blocks, each its own document from BOS, which is what the coder can reach;
- *coding overhead*: coded bpb - header bpb - model bpb (blocks): what the range coder and the
  quantised tables cost beyond the model's own probabilities. It can be negative: the tables
  give every byte value at least 2**-24, which caps a byte's cost at 24 bits where the model
  gives it less (a model of Dickens has seen one tab: on a file full of tabs that saves bits),
  and the model's mass on BOS/EOS/PAD, which never occur, goes to the bytes;
  *block restarts*: model bpb (blocks) - model bpb (file), the context lost at block starts;
- compress and decompress speed in bytes/s (the model runs on one thread whatever --threads
  says: blt.inference.compress pins it so files decode anywhere the same build runs).
Classical compressors run as the command-line tools with the flags in the table (whole file,
compressed size over original size, container overhead included).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from blt.files import atomic_write_text
from blt.inference.compress import DEFAULT_BATCH_BLOCKS, DEFAULT_BLOCK_SIZE, compress, decompress
from blt.inference.container import HEADER_SIZE, block_spans
from blt.runs.fingerprint import run_fingerprint
from blt.runs.layout import CHECKPOINTS, LATEST, METRICS
from blt.runs.loading import open_run

ROOT = Path(__file__).resolve().parents[1]
DATA_DIRS = [ROOT.parent / "shared" / "data", Path(os.environ.get("BLT_DATA_DIR", "/work/shared/data"))]
CANTERBURY_TEXT = ["alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt", "cp.html", "fields.c",
                   "grammar.lsp", "xargs.1"]
CLASSICAL = [("gzip -9", ["gzip", "-9", "-c"]), ("bzip2 -9", ["bzip2", "-9", "-c"]),
             ("xz -9e", ["xz", "-9e", "-c"]), ("zstd -19", ["zstd", "-19", "-c", "-q"])]
CONFIGS = ROOT / "configs" / "compression"


def data_dir() -> Path:
    for d in DATA_DIRS:
        if (d / "dickens.txt").is_file():
            return d
    sys.exit(f"no dickens.txt in {', '.join(map(str, DATA_DIRS))} (set BLT_DATA_DIR)")


def benchmark_files(data: Path, max_bytes: int | None) -> dict[str, bytes]:
    dickens = (data / "dickens.txt").read_bytes()
    files = {"dickens (test split)": dickens[len(dickens) - len(dickens) * 5 // 100 :]}
    files.update({name: (data / "canterbury" / name).read_bytes() for name in CANTERBURY_TEXT})
    return {name: content[:max_bytes] for name, content in files.items()}


def has_checkpoint(run: Path) -> bool:
    return (run / CHECKPOINTS / LATEST).is_file()


def train_missing(runs: dict[str, Path], data: Path) -> None:
    """Train the runs that have no checkpoint yet (the BLT's entropy model first)."""
    plan = [("entropy", runs["entropy"], []), ("byte", runs["byte"], []),
            ("blt", runs["blt"], [f"patching.entropy_run={runs['entropy']}"])]
    for name, run, extra in plan:
        if has_checkpoint(run):
            continue
        cmd = [sys.executable, "-m", "blt.cli", "train", str(CONFIGS / f"{name}.yaml"), "--out", str(run),
               "--data", str(data / "dickens.txt"), *extra]
        print("training:", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def run_summary(run: Path) -> dict:
    """Training steps, seconds and final val bpb from metrics.jsonl."""
    rows = [json.loads(line) for line in (run / METRICS).read_text().splitlines() if line.strip()]
    last = rows[-1]
    return {"steps": last["step"], "seconds": last["elapsed"], "val_bpb": last.get("val_bpb")}


def classical(data: bytes) -> dict[str, int]:
    return {name: len(subprocess.run(cmd, input=data, capture_output=True, check=True).stdout)
            for name, cmd in CLASSICAL}


def bits(nats: float) -> float:
    return nats / np.log(2)


def model_row(opened, feeds, fingerprint: bytes, data: bytes, block_size: int, batch_blocks: int) -> dict:
    n = len(data)
    t0 = time.perf_counter()
    blob = compress(feeds, data, fingerprint, block_size, batch_blocks, progress=False)
    t1 = time.perf_counter()
    back = decompress(feeds, blob, fingerprint, progress=False)
    t2 = time.perf_counter()
    if back != data:
        raise AssertionError("round trip failed")
    doc = np.frombuffer(data, dtype=np.uint8)
    file_bits = bits(float(opened.scores([doc])[0].sum(dtype=np.float64)))
    blocks = [doc[a:b] for a, b in block_spans(n, block_size)]
    block_bits = bits(sum(float(x.sum(dtype=np.float64)) for x in opened.scores(blocks)))
    header = HEADER_SIZE + 4 * len(blocks)
    return {
        "coded_bpb": 8 * len(blob) / n, "header_bpb": 8 * header / n, "model_file_bpb": file_bits / n,
        "model_blocks_bpb": block_bits / n, "overhead_bpb": (8 * (len(blob) - header) - block_bits) / n,
        "restarts_bpb": (block_bits - file_bits) / n, "compress_Bps": n / (t1 - t0), "decompress_Bps": n / (t2 - t1),
        "bytes": len(blob),
    }


def cpu_flags() -> str:
    flags = set(re.findall(r"\bavx[0-9a-z_]*", Path("/proc/cpuinfo").read_text()))
    return " ".join(sorted(flags))


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def report(args, runs, summaries, files, rows, sizes, started, seconds) -> str:
    versions = [subprocess.run([cmd[0], "--version"], capture_output=True, text=True, check=False)
                for _, cmd in CLASSICAL]
    tools = [(v.stdout or v.stderr).strip().splitlines()[0].strip("* ") for v in versions]
    lines = [
        "# Lossless compression: byte LM and BLT against gzip, bzip2, xz, zstd",
        "",
        f"Command (from the repository root): `OMP_NUM_THREADS=1 python -m benchmarks.compression "
        f"{' '.join(args.argv)}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores ({cpu_flags()}), torch {torch.__version__}, "
        f"one torch thread for the models, fp32, CPU. Shared machine: `uptime` before: `{started}`; after: `{load()}`. "
        f"Whole run: {seconds / 60:.0f} min.",
        "",
        f"Tools: {'; '.join(tools)}.",
        "",
        "Models (trained on the Dickens train split, the first 90% of dickens.txt, one thread):",
        "",
        "| model | run | parameters | training steps | training time | val bpb (100 kB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, (opened, _, _) in runs.items():
        params = sum(p.numel() for k, p in opened.model.named_parameters() if not k.startswith("entropy_model."))
        s = summaries[name]
        path = opened.path.relative_to(ROOT) if opened.path.is_relative_to(ROOT) else opened.path
        lines.append(f"| {name} | `{path}` | {params:,} | {s['steps']} | {s['seconds'] / 60:.1f} min | "
                     f"{fmt(s['val_bpb'])} |")
    lines += [
        "",
        f"Coder: blocks of {args.block_size:,} bytes, {args.batch_blocks} side by side; every file round-tripped "
        "exactly.",
        "",
        "## Bits per byte",
        "",
        "| file | bytes | " + " | ".join(name for name, _ in CLASSICAL) + " | " + " | ".join(runs) + " |",
        "|---|---:|" + "---:|" * (len(CLASSICAL) + len(runs)),
    ]
    for name, data in files.items():
        n = len(data)
        cells = [fmt(8 * sizes[name][c] / n) for c, _ in CLASSICAL] + [fmt(rows[name][m]["coded_bpb"]) for m in runs]
        lines.append(f"| {name} | {n:,} | " + " | ".join(cells) + " |")
    total = sum(len(d) for d in files.values())
    cells = [fmt(8 * sum(sizes[f][c] for f in files) / total) for c, _ in CLASSICAL]
    cells += [fmt(8 * sum(rows[f][m]["bytes"] for f in files) / total) for m in runs]
    lines.append(f"| **all files** | {total:,} | " + " | ".join(cells) + " |")
    xz = 8 * sum(sizes[f]["xz -9e"] for f in files) / total
    for m in runs:
        coded = 8 * sum(rows[f][m]["bytes"] for f in files) / total
        wins = sum(rows[f][m]["bytes"] < sizes[f]["xz -9e"] for f in files)
        lines.append(f"\n{m}: {coded:.3f} bpb over all files against xz -9e's {xz:.3f} ({coded / xz - 1:+.1%}); "
                     f"smaller than xz on {wins} of {len(files)} files.")
    lines += [
        "",
        "## The models' own bits, the coder's overhead, speed",
        "",
        "| file | model | coded bpb | header bpb | model bpb (file) | model bpb (blocks) | coding overhead | "
        "block restarts | compress B/s | decompress B/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in files:
        for m in runs:
            r = rows[name][m]
            lines.append(
                f"| {name} | {m} | {fmt(r['coded_bpb'])} | {fmt(r['header_bpb'], 4)} | {fmt(r['model_file_bpb'])} | "
                f"{fmt(r['model_blocks_bpb'])} | {fmt(r['overhead_bpb'], 4)} | {fmt(r['restarts_bpb'], 4)} | "
                f"{r['compress_Bps']:,.0f} | {r['decompress_Bps']:,.0f} |")
    lines += ["", __doc__.split("\n\n", 2)[2].strip(), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "compression",
                   help="directory of the runs byte/, entropy/, blt/ (trained if missing)")
    p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    p.add_argument("--batch-blocks", type=int, default=DEFAULT_BATCH_BLOCKS)
    p.add_argument("--max-bytes", type=int, help="only the first N bytes of each file (a quick check)")
    p.add_argument("--report", type=Path, help="write the markdown report here")
    p.add_argument("--threads", type=int, default=1, help="torch threads for scoring (the coder always uses one)")
    args = p.parse_args()
    args.argv = sys.argv[1:]
    torch.set_num_threads(args.threads)
    started, t0 = load(), time.time()
    data = data_dir()
    run_dirs = {name: args.runs / name for name in ("byte", "entropy", "blt")}
    train_missing(run_dirs, data)
    runs = {}
    for name in ("byte", "blt"):
        opened = open_run(run_dirs[name], "cpu")
        runs[name] = (opened, opened.kind.feeds(opened.model), run_fingerprint(run_dirs[name]))
    summaries = {name: run_summary(run_dirs[name]) for name in runs}
    files = benchmark_files(data, args.max_bytes)
    rows, sizes = {}, {}
    for name, content in files.items():
        sizes[name] = classical(content)
        rows[name] = {}
        for m, (opened, feeds, fingerprint) in runs.items():
            rows[name][m] = model_row(opened, feeds, fingerprint, content, args.block_size, args.batch_blocks)
            print(json.dumps({"file": name, "model": m, **rows[name][m]}), file=sys.stderr, flush=True)
    text = report(args, runs, summaries, files, rows, sizes, started, time.time() - t0)
    if args.report:
        atomic_write_text(args.report, text)
    print(text)


if __name__ == "__main__":
    main()
