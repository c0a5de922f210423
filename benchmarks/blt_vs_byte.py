"""BLT against the byte-level transformer whose width and depth its latent shares.

Train the three runs (each at most 20 minutes on this CPU), then compare:

    blt train configs/compare/entropy.yaml --out runs/compare/entropy
    blt train configs/compare/byte.yaml    --out runs/compare/byte
    blt train configs/compare/blt.yaml     --out runs/compare/blt
    python benchmarks/blt_vs_byte.py --byte runs/compare/byte --blt runs/compare/blt \
        --report benchmarks/results/blt_vs_byte.md

Both models are scored on every byte of tiny shakespeare's validation split (last 10%).
FLOPs per byte come from blt.evaluation.flops with the BLT's mean patch size MEASURED on those bytes;
training FLOPs are 3 x forward; inference FLOPs for the BLT are given with and without its
entropy model (which a deployment must also run, once per byte).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from blt.data.corpus import open_corpus
from blt.evaluation.bpb import evaluate_split, patch_statistics, split_documents
from blt.evaluation.flops import blt_flops, byte_lm_flops, format_flops
from blt.runs.loading import open_run
from blt.train.metrics import read_metrics


def run_summary(run: Path) -> dict:
    rows = read_metrics(run / "metrics.jsonl")
    return {"steps": rows[-1]["step"], "train_seconds": rows[-1]["elapsed"], "train_bytes": rows[-1]["tokens"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--byte", type=Path, required=True, help="byte transformer run")
    ap.add_argument("--blt", type=Path, required=True, help="BLT run")
    ap.add_argument("--report", type=Path, help="write a markdown report here")
    args = ap.parse_args()

    results = {}
    for name, run in (("byte", args.byte), ("blt", args.blt)):
        opened = open_run(run, "cpu")
        model, cfg = opened.model, opened.cfg
        corpus = open_corpus(cfg.data)
        val = corpus.split("val")
        ev = evaluate_split(opened.scores, val)
        r = {"val_bpb": ev["bpb"], "val_bytes": ev["bytes"], **run_summary(run)}
        if cfg.model_kind == "blt":
            ent_run = Path(cfg.patching.entropy_run)
            rows = read_metrics(ent_run / "metrics.jsonl")
            r["entropy_run"] = {**run_summary(ent_run), "val_bpb_50k": rows[-1].get("val_bpb")}
            stats = patch_statistics(model, split_documents(val))
            f = blt_flops(cfg.blt, stats["mean_patch_size"], cfg.entropy_model)
            r.update(mean_patch_size=stats["mean_patch_size"], theta=cfg.patching.theta)
            r.update(latent=f"{cfg.blt.latent.n_layers} x {cfg.blt.latent.dim}")
        else:
            f = byte_lm_flops(cfg.model)
            r.update(latent=f"{cfg.model.n_layers} x {cfg.model.dim}")
        r.update(
            params=sum(p.numel() for n, p in model.named_parameters() if not n.startswith("entropy_model.")),
            train_flops_per_byte=f.train_per_byte,
            infer_flops_per_byte=f.forward_per_byte,
            infer_flops_per_byte_with_entropy=f.forward_per_byte_with_entropy,
            entropy_flops_per_byte=f.entropy_model_per_byte,
        )
        results[name] = r
        print(json.dumps({name: r}))

    if args.report:
        b, t = results["byte"], results["blt"]
        better = "BLT" if t["val_bpb"] < b["val_bpb"] else "the byte transformer"
        lines = [
            "# BLT vs byte transformer on tiny shakespeare (CPU)",
            "",
            "Commands (in this order):",
            "```",
            "blt train configs/compare/entropy.yaml --out runs/compare/entropy",
            "blt train configs/compare/byte.yaml --out runs/compare/byte",
            "blt train configs/compare/blt.yaml --out runs/compare/blt",
            f"python benchmarks/blt_vs_byte.py --byte {args.byte} --blt {args.blt} --report {args.report}",
            "```",
            "",
            "| | byte transformer | BLT (entropy patching) |",
            "|---|---|---|",
            f"| transformer over bytes / patches | {b['latent']} | {t['latent']} (latent) |",
            f"| parameters (entropy model excluded) | {b['params']:,} | {t['params']:,} |",
            f"| validation bpb (all {b['val_bytes']:,} val bytes) | **{b['val_bpb']:.4f}** | **{t['val_bpb']:.4f}** |",
            f"| mean patch size on val (theta = {t['theta']:.4f} nats) | 1 | {t['mean_patch_size']:.3f} |",
            f"| training steps / wall time | {b['steps']} / {b['train_seconds'] / 60:.1f} min "
            f"| {t['steps']} / {t['train_seconds'] / 60:.1f} min |",
            f"| training bytes seen | {b['train_bytes']:,} | {t['train_bytes']:,} |",
            f"| training FLOPs per byte | {format_flops(b['train_flops_per_byte'])} "
            f"| {format_flops(t['train_flops_per_byte'])} |",
            f"| inference FLOPs per byte, entropy model not counted | {format_flops(b['infer_flops_per_byte'])} "
            f"| {format_flops(t['infer_flops_per_byte'])} |",
            f"| inference FLOPs per byte, entropy model counted | {format_flops(b['infer_flops_per_byte'])} "
            f"| {format_flops(t['infer_flops_per_byte_with_entropy'])} |",
            "",
            f"Lower validation bpb: **{better}** "
            f"({min(b['val_bpb'], t['val_bpb']):.4f} against {max(b['val_bpb'], t['val_bpb']):.4f}).",
            f"BLT inference costs {t['infer_flops_per_byte_with_entropy'] / b['infer_flops_per_byte']:.2f}x "
            f"the byte transformer's FLOPs per byte with its entropy model, "
            f"{t['infer_flops_per_byte'] / b['infer_flops_per_byte']:.2f}x without.",
            "",
            f"The entropy model ({args.blt}'s patching.entropy_run) trained separately before the BLT: "
            f"{t['entropy_run']['steps']} steps in {t['entropy_run']['train_seconds'] / 60:.1f} min, "
            f"val bpb {t['entropy_run']['val_bpb_50k']:.4f} on the first 50,000 val bytes; that time is not in "
            "the BLT's wall time above. Each training run used one thread (OMP_NUM_THREADS=1) while other jobs "
            "shared the 2 cores, so wall times are upper bounds. Both models stop far from convergence: this is "
            "a 20-minute CPU budget, and at this scale the comparison says more about cost per byte than "
            "about which architecture wins.",
        ]
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
