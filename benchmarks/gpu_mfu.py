"""Model FLOP utilisation of the byte transformer and the BLT at ~1 B-parameter shapes on one GPU,
trained through `blt train` with FSDP2 + bf16 + torch.compile.

    python benchmarks/gpu_mfu.py --work /tmp/mfu --report gpu_mfu.md          # on a GPU machine
    python benchmarks/gpu_mfu.py --work /tmp/mfu --report /tmp/mfu.md --tiny  # the same path, tiny, CPU

Shapes: a byte transformer of width 2048 and 20 layers (1.0 B parameters) over 2048-byte
windows; a BLT whose latent has that shape, local encoder 1 x 1024 and decoder 6 x 1024 with
512-byte windows, hash tables of 6 x 50,000 rows, 4096-byte windows, space patching (no entropy
model to train first). Each trains --steps steps on the `stdlib` corpus (every machine has it);
the achieved FLOP/s is the training loop's own count (metrics.jsonl `flops_per_s`: the FLOPs
executed, padding included, 3 x forward) over the steps after the first --warmup (compilation),
and MFU = achieved / the peak bf16 matmul FLOP/s measured in the same run (8192^3 products).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


SIZES = {  # latent / byte-model shape, local models, byte context, decoder layers, hash buckets, batch
    "tiny": ({"dim": 64, "n_layers": 2, "n_heads": 4}, {"dim": 32, "n_heads": 2, "window": 32}, 128, 1, 512, 2),
    "1b": ({"dim": 2048, "n_layers": 20, "n_heads": 16}, {"dim": 1024, "n_heads": 8, "window": 512}, 2048, 6, 50000, 8),
}


def shapes(tiny: bool) -> dict[str, dict]:
    """The byte transformer and the BLT whose latent has its shape (tiny: the CPU test's sizes)."""
    big, local, context, decoder_layers, buckets, batch = SIZES["tiny" if tiny else "1b"]
    return {
        "byte": {"model_kind": "byte", "model": {**big, "context": context}, "batch": batch},
        "blt": {"model_kind": "blt", "blt": {"context": 2 * context, "encoder": {**local, "n_layers": 1}, "latent": big,
                                             "decoder": {**local, "n_layers": decoder_layers}, "hash_buckets": buckets},
                "patching": {"kind": "space"}, "batch": batch},
    }


def peak_matmul_flops(device: str) -> float:
    """bf16 (GPU) or fp32 (CPU) matmul FLOP/s: the mean of ten products after three warm-ups."""
    n = 8192 if device == "cuda" else 1024
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 10 * 2 * n**3 / (time.perf_counter() - t0)


def train(work: Path, name: str, spec: dict, args) -> dict:
    spec = dict(spec)
    batch = spec.pop("batch")
    tree = {**spec, "data": {"corpus": "stdlib", "batch_size": batch},
            "optim": {"lr": 3e-4, "warmup_steps": 5},
            "train": {"steps": args.steps, "log_every": 1, "eval_every": 0, "ckpt_every": 0, "eval_bytes": 4096,
                      "progress": False, "device": args.device, "parallel": "fsdp", "compile": not args.no_compile,
                      "bf16": args.device == "cuda"}}
    cfg = work / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    out = work / name
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "blt.cli", "train", str(cfg), "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows[args.warmup:-1]] or rows[-1:]  # the last row also evaluates
    return {"name": name, "wall": time.time() - t0, "flops_per_s": statistics.median(r["flops_per_s"] for r in timed),
            "bytes_per_s": statistics.median(r["bytes_per_s"] for r in timed), "loss": rows[-1]["loss"],
            "peak_mem_mb": rows[-1]["peak_mem_mb"], "first_step_s": rows[0]["elapsed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (a check of this script on any machine)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    peak = peak_matmul_flops(args.device)
    results = [train(args.work, name, spec, args) for name, spec in shapes(args.tiny).items()]
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "none (CPU)"
    lines = [
        "# MFU at ~1 B-parameter shapes: FSDP2 + bf16 + torch.compile" + (" (TINY check run)" if args.tiny else ""),
        "",
        "```",
        "python benchmarks/gpu_mfu.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"GPU: {gpu}; torch {torch.__version__}; measured peak matmul {peak / 1e12:.1f} TFLOP/s "
        f"({'bf16 8192^3' if args.device == 'cuda' else 'fp32 1024^3'}). {args.steps} steps each, median over steps "
        f"{args.warmup + 1}-{args.steps - 1}.",
        "",
        "| model | achieved TFLOP/s | MFU | bytes/s | first step s (compile) | peak memory MB | final loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['flops_per_s'] / 1e12:.3g} | {r['flops_per_s'] / peak:.1%} | "
                     f"{r['bytes_per_s']:,.0f} | {r['first_step_s']:.1f} | {r['peak_mem_mb']:,.0f} | {r['loss']:.3f} |")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
