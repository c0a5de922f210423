"""The study's report: results.csv, results.md and two PNG plots, rebuilt from the cell results.

results.csv   one row per cell (every column listed in COLUMNS, noise columns per kind)
results.md    the setup, the entropy model's own cost, a table per budget, the ranking by
              bpb at each budget, and how each figure was measured
bpb_vs_train_flops.png       bpb against the training FLOPs each cell actually spent
bpb_vs_inference_flops.png   bpb against inference FLOPs per byte: filled markers for the
                             model alone, hollow ones (dotted link) with the entropy model
The plots use matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from blt.evaluation.flops import format_flops
from blt.files import atomic_write_text, open_output

COLUMNS = (
    "cell", "budget", "steps", "train_flops", "flops_vs_budget", "bpb", "eval_bytes", "flops_per_byte",
    "flops_per_byte_with_entropy", "bytes_per_patch", "train_bytes_per_patch", "params", "train_seconds",
    "eval_seconds", "clean_pair_bpb",
)
MARKERS = {"byte": "o", "bpe": "s", "static": "^", "space": "v", "entropy": "D", "relative": "P", "equal_info": "X"}


def _noise_kinds(results: list[dict]) -> list[str]:
    kinds: list[str] = []
    for r in results:
        kinds += [k for k in r.get("noise", {}) if k not in kinds]
    return kinds


def table_rows(results: list[dict]) -> list[dict]:
    """Flat rows (COLUMNS plus noise_<kind> = bpb increase) in grid order."""
    kinds = _noise_kinds(results)
    rows = []
    for r in results:
        row = {c: r.get(c) for c in COLUMNS}
        if r.get("train_flops") is not None:
            row["flops_vs_budget"] = r["train_flops"] / r["budget"]
        for k in kinds:
            row[f"noise_{k}"] = r.get("noise", {}).get(k)
        rows.append(row)
    return rows


def write_csv(path: Path, results: list[dict]) -> None:
    rows = table_rows(results)
    fields = list(COLUMNS) + [f"noise_{k}" for k in _noise_kinds(results)]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(path, text.getvalue())


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def write_markdown(path: Path, study, results: list[dict], entropy_info: dict | None) -> None:
    m, loc = study.model, study.local
    kinds = _noise_kinds(results)
    lines = [
        "# BLT study: equal training-FLOP budgets",
        "",
        f"- data: `{study.data.corpus}` (splits {study.data.splits}, first {study.data.max_bytes or 'all'} bytes), "
        f"{study.data.batch_size} windows of {m.context} bytes per step",
        f"- shared transformer (byte model, BPE model, BLT latent): dim {m.dim}, {m.n_layers} layers, "
        f"{m.n_heads} heads",
        f"- BLT local models: dim {loc.dim}, encoder {loc.encoder_layers} / decoder {loc.decoder_layers} layers, "
        f"window {loc.window}, k {loc.k}; patch size target {study.patch_size} "
        f"(static: {max(1, round(study.patch_size))})",
        f"- budgets (training FLOPs, 3 x forward): {', '.join(format_flops(b) for b in sorted(study.budgets))}",
        f"- evaluation: the first {study.eval_bytes or 'all'} bytes of the val split, the same for every cell",
    ]
    if entropy_info:
        e = entropy_info
        lines.append(
            f"- entropy model (shared, trained once, not in the cells' budgets): {e['params']:,} parameters, "
            f"{e['steps']} steps, {format_flops(e['train_flops'] or 0)} training, val bpb {_fmt(e['val_bpb'])}, "
            f"{e['train_seconds']:.0f} s + {e['entropy_file_seconds']:.0f} s for the entropy file, "
            f"{format_flops(e['flops_per_byte'])}/byte at inference"
        )
    head = ["cell", "steps", "train FLOPs (x budget)", "bpb", "infer. FLOP/byte", "with entropy model",
            "bytes/patch", "params", "train s", "eval s"] + [f"+bpb {k}" for k in kinds]
    for budget in sorted({r["budget"] for r in results}):
        cells = [r for r in results if r["budget"] == budget]
        lines += ["", f"## Budget {format_flops(budget)}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for r in cells:
            spent = r.get("train_flops")
            cols = [
                r["cell"], str(r["steps"]),
                "-" if spent is None else f"{format_flops(spent)} ({spent / budget:.2f})",
                _fmt(r["bpb"], 4), format_flops(r["flops_per_byte"]), format_flops(r["flops_per_byte_with_entropy"]),
                _fmt(r.get("bytes_per_patch"), 2), f"{r['params']:,}", f"{r['train_seconds']:.0f}",
                f"{r['eval_seconds']:.0f}",
            ] + [_fmt(r.get("noise", {}).get(k)) for k in kinds]
            lines.append("| " + " | ".join(cols) + " |")
        ranking = sorted(cells, key=lambda r: r["bpb"])
        lines += ["", "Ranking by bpb (lower is better): " + " < ".join(f"{r['cell']} {r['bpb']:.4f}" for r in ranking)]
    lines += [
        "",
        "![bpb vs training FLOPs](bpb_vs_train_flops.png)",
        "![bpb vs inference FLOPs per byte](bpb_vs_inference_flops.png)",
        "",
        "## How the figures were measured",
        "",
        "- steps = budget / training FLOPs per step (blt.evaluation.flops, 3 x forward), a BLT's patch size measured on its "
        "first training batches; *train FLOPs* is what the training loop counted (metrics.jsonl `train_flops`), "
        "each step charged with the patch size of its own batch.",
        "- *bpb*: bits per byte over the evaluation bytes; *infer. FLOP/byte*: forward FLOPs per byte at the "
        "patch size the model's patcher cuts those bytes into (*bytes/patch*; bytes per token for BPE, 1 for bytes); "
        "*with entropy model* adds the entropy model's forward pass.",
        "- *+bpb KIND*: robustness (blt/evaluation/noise.py): bpb of clean continuations after a noised prefix minus bpb of the "
        f"same continuations after the clean prefix, on {study.noise.max_pairs} or fewer pairs of "
        f"{study.noise.prefix} + {study.noise.continuation} bytes cut from the evaluation bytes.",
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_plots(out_dir: Path, results: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in MARKERS if any(r["cell"] == c for r in results)]
    paths = [out_dir / "bpb_vs_train_flops.png", out_dir / "bpb_vs_inference_flops.png"]

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for c in cells:
        rs = sorted((r for r in results if r["cell"] == c and r.get("train_flops")), key=lambda r: r["train_flops"])
        ax.plot([r["train_flops"] for r in rs], [r["bpb"] for r in rs], marker=MARKERS[c], label=c)
    ax.set(xscale="log", xlabel="training FLOPs spent", ylabel="bits per byte (val)",
           title="bpb at equal training budgets")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with open_output(paths[0]) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, c in enumerate(cells):
        color = f"C{i}"
        rs = [r for r in results if r["cell"] == c]
        ax.scatter([r["flops_per_byte"] for r in rs], [r["bpb"] for r in rs], marker=MARKERS[c], color=color, label=c)
        with_entropy = [r for r in rs if r["flops_per_byte_with_entropy"] > r["flops_per_byte"]]
        for r in with_entropy:
            ax.plot([r["flops_per_byte"], r["flops_per_byte_with_entropy"]], [r["bpb"]] * 2, ":", color=color)
        ax.scatter([r["flops_per_byte_with_entropy"] for r in with_entropy], [r["bpb"] for r in with_entropy],
                   marker=MARKERS[c], facecolors="none", edgecolors=color)
    ax.set(xscale="log", xlabel="inference FLOPs per byte (hollow: with entropy model)", ylabel="bits per byte (val)",
           title="bpb against inference cost")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with open_output(paths[1]) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return paths


def write_report(out_dir: Path, study, results: list[dict], entropy_info: dict | None) -> None:
    out_dir = Path(out_dir)
    write_csv(out_dir / "results.csv", results)
    write_markdown(out_dir / "results.md", study, results, entropy_info)
    if results:
        write_plots(out_dir, results)
