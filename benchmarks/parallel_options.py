"""DDP against FSDP2, with and without activation checkpointing and torch.compile, on 2 CPU processes.

    OMP_NUM_THREADS=1 python benchmarks/parallel_options.py --work /tmp/parallel \
        --report benchmarks/results/parallel_options.md

Each of the 8 combinations trains the same BLT for --steps steps under
`torchrun --nproc_per_node 2 -m blt.cli train` (gloo, one thread per process): space patching
(no entropy model to prepare), local encoder 1 x 128 and decoder 2 x 128 with 128-byte windows,
latent 4 x 384, 512-byte windows, batch 4 per rank, and the hash tables of the paper's recipe
shape (6 n-gram sizes x 30,000 rows x 128: 23 M of the model's parameters, as at release scale
the tables hold most of the weights). Reported per combination, from the run's metrics.jsonl:
the median step time after the first --warmup steps (compilation happens in the first), the first
step's time, and peak_mem_mb (the larger of the two processes' peak resident memory: torch's
runtime included, so the differences are what the options change). The loss after the last step
is listed to show that every combination trains the same model on the same batches.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from released_blt import cpu_flags  # benchmarks/ is this script's first import path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "dickens.txt"


def config(steps: int) -> dict:
    local = {"dim": 128, "n_layers": 1, "n_heads": 4, "window": 128}
    return {
        "model_kind": "blt",
        "blt": {"context": 512, "encoder": local, "latent": {"dim": 384, "n_layers": 4, "n_heads": 6},
                "decoder": {**local, "n_layers": 2}, "k": 2, "hash_buckets": 30000},
        "patching": {"kind": "space"},
        "data": {"corpus": str(CORPUS), "batch_size": 4},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"steps": steps, "log_every": 1, "eval_every": 0, "ckpt_every": 0, "progress": False,
                  "device": "cpu"},
    }


def run(work: Path, name: str, overrides: list[str], steps: int) -> dict:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time, never a resumed one
    cfg = work / "config.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "blt.cli", "train", str(cfg), "--out", str(out), *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed"] for r in rows]
    return {"name": name, "rows": rows, "wall": time.time() - t0,
            # the last step also evaluates and writes the final checkpoint: left out
            "step_times": [b - a for a, b in zip(elapsed[:-1], elapsed[1:-1])], "first": elapsed[0]}


def parameter_counts(steps: int) -> tuple[int, int]:
    import torch

    from blt.config import from_dict
    from blt.runs.config import RunConfig
    from blt.runs.kinds import build_model

    with torch.device("meta"):
        model = build_model(from_dict(RunConfig, config(steps)))
    tables = sum(p.numel() for p in model.encoder.embed.tables.parameters())
    return sum(p.numel() for p in model.parameters()), tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "config.yaml").write_text(yaml.safe_dump(config(args.steps)))
    load_before = os.getloadavg()
    results = []
    for parallel in ("ddp", "fsdp"):
        for ac in (False, True):
            for compiled in (False, True):
                name = f"{parallel}{'-ac' if ac else ''}{'-compile' if compiled else ''}"
                overrides = [f"train.parallel={parallel}", f"train.activation_checkpointing={str(ac).lower()}",
                             f"train.compile={str(compiled).lower()}"]
                r = run(args.work, name, overrides, args.steps)
                r.update(parallel=parallel, ac=ac, compiled=compiled)
                results.append(r)
                print(f"{name}: {statistics.median(r['step_times'][args.warmup - 1:]):.2f} s/step, "
                      f"peak {r['rows'][-1]['peak_mem_mb']:.0f} MB", flush=True)
    write_report(args, results, load_before)


def write_report(args, results: list[dict], load_before) -> None:
    base = next(r for r in results if r["name"] == "ddp")
    base_step = statistics.median(base["step_times"][args.warmup - 1:])
    lines = [
        "# DDP vs FSDP2, activation checkpointing, torch.compile (2 CPU processes)",
        "",
        "```",
        f"OMP_NUM_THREADS=1 python benchmarks/parallel_options.py --work {args.work} --report {args.report}"
        + (f" --steps {args.steps}" if args.steps != 12 else ""),
        "```",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; CPU flags: {cpu_flags()}; "
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}. torch "
        f"{__import__('torch').__version__}, gloo, one thread per process.",
        "",
        "Model: BLT, space patching, encoder 1 x 128, latent 4 x 384, decoder 2 x 128, hash tables "
        "6 x 30,000 x 128, context 512, batch 4 per rank, fp32. "
        f"{args.steps} steps; step time = median over steps {args.warmup + 1}-{args.steps - 1} (the first "
        "steps compile; the last one also evaluates and saves). Inductor caches compiled kernels on disk "
        "(/tmp/torchinductor_*), so a combination compiled after another with the same blocks starts faster.",
        "",
        "| parallel | activation ckpt | compile | s/step | vs ddp | first step s | peak memory MB (max over ranks) "
        "| loss at last step |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        step = statistics.median(r["step_times"][args.warmup - 1:])
        lines.append(
            f"| {r['parallel']} | {'yes' if r['ac'] else 'no'} | {'yes' if r['compiled'] else 'no'} | {step:.2f} | "
            f"{step / base_step:.2f}x | {r['first']:.1f} | {r['rows'][-1]['peak_mem_mb']:.0f} | "
            f"{r['rows'][-1]['loss']:.5f} |"
        )
    n_params, n_tables = parameter_counts(args.steps)
    lines += [
        "",
        f"Parameters: {n_params / 1e6:.1f} M, of which {n_tables / 1e6:.1f} M in the hash tables. fp32 training "
        f"state (weights, gradients, AdamW's two moments: 16 bytes per parameter): {16 * n_params / 2**20:.0f} MB "
        f"per process under DDP, half of it per process under FSDP (plus the unit being gathered).",
    ]
    lines += [
        "",
        "Raw step times (s) per combination:",
        "",
        *[f"- {r['name']}: " + ", ".join(f"{t:.2f}" for t in r["step_times"]) for r in results],
        "",
    ]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines))
    print(f"report: {args.report}")


if __name__ == "__main__":
    main()
