"""The study's report: results.csv, results.md and two PNG plots, rebuilt from the job results.

results.csv   one row per job (every column listed in COLUMNS, noise columns per kind); `selected`
              marks the ladder shape that is its baseline cell's at that budget
results.md    the setup; the entropy model's own cost and its share of each budget; a table per
              budget (the selected baselines and every BLT cell, seed 0) with its ranking; the
              ladder (every shape's selection and test bpb); the seeds' spread at the largest
              budget; how each figure was measured
bpb_vs_train_flops.png       test bpb against the training FLOPs each cell actually spent
bpb_vs_inference_flops.png   test bpb against inference FLOPs per byte: filled markers for the
                             model alone, hollow ones (dotted link) with the entropy model
The plots use matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from blt.evaluation.flops import format_flops
from blt.experiments.study_config import BASELINES, CELLS, selected_shapes, uses_entropy_model
from blt.files import atomic_write_text, open_output

COLUMNS = (
    "job", "cell", "shape", "seed", "selected", "budget", "budget_with_entropy_model", "steps", "train_flops",
    "flops_vs_budget", "bpb", "selection_bpb", "train_bpb", "eval_bytes", "flops_per_byte",
    "flops_per_byte_with_entropy", "bytes_per_patch", "train_bytes_per_patch", "padding_charged", "params",
    "train_seconds", "eval_seconds", "clean_pair_bpb",
)
MARKERS = dict(zip(CELLS, "osv^DPXh*"))


def _noise_kinds(results: list[dict]) -> list[str]:
    kinds: list[str] = []
    for r in results:
        kinds += [k for k in r.get("noise", {}) if k not in kinds]
    return kinds


def entropy_cost(entropy_info: dict | None) -> float:
    """FLOPs of the shared entropy model: its training and its entropy file."""
    if not entropy_info:
        return 0.0
    return (entropy_info.get("train_flops") or 0.0) + entropy_info.get("entropy_file_flops", 0.0)


def annotate(results: list[dict], entropy_info: dict | None) -> list[dict]:
    """The results with `selected` (baselines) and `budget_with_entropy_model` filled in."""
    chosen = {b: selected_shapes(results, b) for b in {r["budget"] for r in results}}
    out = []
    for r in results:
        r = dict(r)
        if r["cell"] in BASELINES:
            r["selected"] = r.get("shape") == chosen[r["budget"]].get(r["cell"])
        extra = entropy_cost(entropy_info) if uses_entropy_model(r["cell"]) else 0.0
        r["budget_with_entropy_model"] = r["budget"] + extra
        if r.get("train_flops") is not None:
            r["flops_vs_budget"] = r["train_flops"] / r["budget"]
        out.append(r)
    return out


def main_rows(results: list[dict], budget: float, seed: int = 0) -> list[dict]:
    """The cells of one budget and seed: each baseline's selected shape, then every BLT cell."""
    rows = [r for r in results if r["budget"] == budget and r.get("seed", 0) == seed]
    return [r for r in rows if r["cell"] not in BASELINES or r.get("selected", True)]


def write_csv(path: Path, results: list[dict]) -> None:
    kinds = _noise_kinds(results)
    fields = list(COLUMNS) + [f"noise_{k}" for k in kinds]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    for r in results:
        row = {c: r.get(c) for c in COLUMNS} | {f"noise_{k}": r.get("noise", {}).get(k) for k in kinds}
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(path, text.getvalue())


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _setup_lines(study, entropy_info: dict | None) -> list[str]:
    m, loc = study.model, study.local
    shapes = ", ".join(f"{s.name} ({s.n_heads} heads)" for s in study.shapes)
    mem = study.memory
    lines = [
        "# BLT study: equal training-FLOP budgets",
        "",
        f"- data: `{study.data.corpus}` (first {study.data.max_bytes or 'all'} bytes, splits {study.data.splits}: "
        f"train / val / test), {study.data.batch_size} windows of {m.context} bytes per step",
        f"- BLT latent (every BLT cell): dim {m.dim}, {m.n_layers} layers, {m.n_heads} heads; local models: dim "
        f"{loc.dim}, encoder {loc.encoder_layers} / decoder {loc.decoder_layers} layers, window {loc.window}, "
        f"k {loc.k}, {loc.hash_buckets} hash buckets; patch size target {study.patch_size} "
        f"(static: {max(1, round(study.patch_size))})",
        f"- byte and BPE baselines: each trained at every budget in every shape of the ladder [{shapes}]; the "
        f"shape with the lowest bpb on the first {study.selection_bytes or 'all'} bytes of val is the cell's",
        f"- memory cell: the entropy BLT with {mem.layers} Memory+ layer(s) in its latent ({mem.keys}^2 slots, "
        f"{mem.heads} heads, top-{mem.topk}, key dim {mem.key_dim}); per_layer_cross: the entropy BLT whose "
        "decoder cross-attends before every layer",
        f"- budgets (training FLOPs, 3 x forward): {', '.join(format_flops(b) for b in sorted(study.budgets))}"
        + (f"; the largest with {study.seeds} seeds" if study.seeds > 1 else ""),
        f"- every job: AdamW, peak learning rate {study.optim.lr:g} (warm-up {study.train.warmup_fraction:.0%} of "
        f"its steps, cosine down to {study.optim.min_lr_ratio:g} x), the same for every cell and shape",
        f"- scored: the first {study.eval_bytes or 'all'} bytes of the TEST split, the same for every job; "
        "thresholds were calibrated and shapes selected on val",
    ]
    if entropy_info:
        e, cost = entropy_info, entropy_cost(entropy_info)
        shares = ", ".join(f"{cost / b:.0%} of {format_flops(b)}" for b in sorted(study.budgets))
        lines.append(
            f"- entropy model (shared by the entropy, relative, equal_info, per_layer_cross and memory cells, trained "
            f"once): {e['params']:,} parameters, {e['steps']} steps, {format_flops(e['train_flops'] or 0)} training "
            f"+ {format_flops(e.get('entropy_file_flops', 0))} for its entropy file (every byte of the corpus) = "
            f"{format_flops(cost)}, which is {shares}; val bpb {_fmt(e['val_bpb'])}; "
            f"{format_flops(e['flops_per_byte'])}/byte at inference. The paper leaves it out of the budgets; the "
            "column *with entropy model* adds it"
        )
    return lines


def _budget_table(results: list[dict], budget: float, kinds: list[str]) -> list[str]:
    head = ["cell", "shape", "steps", "train FLOPs (x budget)", "with entropy model", "test bpb", "train bpb",
            "infer. FLOP/byte", "with entropy model", "bytes/patch", "params"] + [f"+bpb {k}" for k in kinds]
    lines = ["", f"## Budget {format_flops(budget)}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells = main_rows(results, budget)
    for r in cells:
        spent = r.get("train_flops")
        cols = [
            r["cell"], r.get("shape") or "-", str(r["steps"]),
            "-" if spent is None else f"{format_flops(spent)} ({r['flops_vs_budget']:.2f})",
            format_flops(r["budget_with_entropy_model"]), _fmt(r["bpb"], 4), _fmt(r.get("train_bpb"), 3),
            format_flops(r["flops_per_byte"]), format_flops(r["flops_per_byte_with_entropy"]),
            _fmt(r.get("bytes_per_patch"), 2), f"{r['params']:,}",
        ] + [_fmt(r.get("noise", {}).get(k)) for k in kinds]
        lines.append("| " + " | ".join(cols) + " |")
    ranking = sorted(cells, key=lambda r: r["bpb"])
    lines += ["", "Ranking by test bpb (lower is better): " + " < ".join(f"{r['cell']} {r['bpb']:.4f}" for r in ranking)]
    return lines


def _ladder_table(results: list[dict]) -> list[str]:
    rungs = [r for r in results if r["cell"] in BASELINES and r.get("seed", 0) == 0]
    if not rungs:
        return []
    lines = ["", "## The baselines' size ladder", "",
             "Selection bpb (val) and test bpb of every shape; **bold**: the shape selected at that budget.", "",
             "| cell | budget | shape | params | steps | selection bpb | test bpb |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rungs, key=lambda r: (r["cell"], r["budget"], r["params"])):
        mark = (lambda s: f"**{s}**") if r.get("selected") else (lambda s: s)
        lines.append(f"| {r['cell']} | {format_flops(r['budget'])} | {mark(r['shape'])} | {r['params']:,} | "
                     f"{r['steps']} | {mark(_fmt(r.get('selection_bpb'), 4))} | {mark(_fmt(r['bpb'], 4))} |")
    return lines


def _seed_table(results: list[dict]) -> list[str]:
    seeds = sorted({r.get("seed", 0) for r in results})
    if len(seeds) < 2:
        return []
    budget = max(r["budget"] for r in results if r.get("seed", 0) == seeds[-1])
    lines = ["", f"## Seeds at {format_flops(budget)}", "",
             "| cell | " + " | ".join(f"seed {s} bpb" for s in seeds) + " | spread (max - min) |",
             "|" + "---|" * (len(seeds) + 2)]
    for r0 in main_rows(results, budget):
        same = [next((r for r in results if r["budget"] == budget and r["cell"] == r0["cell"]
                      and r.get("shape") == r0.get("shape") and r.get("seed", 0) == s), None) for s in seeds]
        values = [r["bpb"] for r in same if r is not None]
        lines.append(f"| {r0['cell']} | " + " | ".join(_fmt(r["bpb"] if r else None, 4) for r in same)
                     + f" | {_fmt(max(values) - min(values), 4)} |")
    return lines


def _session_lines(sessions: list[dict]) -> list[str]:
    """The commands that produced the results and the wall time they took."""
    if not sessions:
        return []
    lines = ["", "Produced by (each run of the command continues the study where the last one stopped):", ""]
    lines += [f"- `{s['command'] or 'run_study(...)'}`: {s['seconds'] / 60:.1f} min wall with {s['workers']} "
              f"worker(s), started {s['started']} UTC{'' if s['complete'] else ', stopped early'}" for s in sessions]
    total = sum(s["seconds"] for s in sessions)
    lines += ["", f"Total wall time: {total / 60:.1f} min."]
    return lines


def write_markdown(path: Path, study, results: list[dict], entropy_info: dict | None,
                   sessions: list[dict] | None = None) -> None:
    kinds = _noise_kinds(results)
    lines = _setup_lines(study, entropy_info) + _session_lines(sessions or [])
    for budget in sorted({r["budget"] for r in results}):
        lines += _budget_table(results, budget, kinds)
    lines += _ladder_table(results) + _seed_table(results)
    lines += [
        "",
        "![bpb vs training FLOPs](bpb_vs_train_flops.png)",
        "![bpb vs inference FLOPs per byte](bpb_vs_inference_flops.png)",
        "",
        "## How the figures were measured",
        "",
        "- steps = budget / training FLOPs per step (blt.evaluation.flops, 3 x forward), a BLT's measured on its first "
        "training batches as executed (patch slots and latent patches, padding included); *train FLOPs* is what the "
        "training loop counted (metrics.jsonl `train_flops`), each step charged what its own batch executed.",
        "- *test bpb*: bits per byte over the scored test bytes; *train bpb*: the last logged training interval, the nats "
        "of every scored target (EOS included) per real byte, the same definition for every kind; *infer. FLOP/byte*: "
        "forward FLOPs per byte at the patch size the model's patcher cuts the scored bytes into (*bytes/patch*; "
        "bytes per token for BPE, 1 for bytes); *with entropy model* adds the entropy model's forward pass.",
        "- *+bpb KIND*: robustness (blt/evaluation/noise.py): bpb of clean continuations after a noised prefix minus bpb "
        f"of the same continuations after the clean prefix, on {study.noise.max_pairs} or fewer pairs of "
        f"{study.noise.prefix} + {study.noise.continuation} bytes cut from the scored bytes.",
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _finish(plt, fig, ax, path: Path, xlabel: str, title: str) -> None:
    ax.set(xscale="log", xlabel=xlabel, ylabel="bits per byte (test)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with open_output(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_plots(out_dir: Path, results: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for b in sorted({r["budget"] for r in results}) for r in main_rows(results, b)]
    cells = [c for c in MARKERS if any(r["cell"] == c for r in rows)]
    paths = [out_dir / "bpb_vs_train_flops.png", out_dir / "bpb_vs_inference_flops.png"]

    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    for c in cells:
        rs = sorted((r for r in rows if r["cell"] == c and r.get("train_flops")), key=lambda r: r["train_flops"])
        ax.plot([r["train_flops"] for r in rs], [r["bpb"] for r in rs], marker=MARKERS[c], label=c)
    _finish(plt, fig, ax, paths[0], xlabel="training FLOPs spent",
            title="bpb at equal training budgets (baselines: selected shape)")

    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    for i, c in enumerate(cells):
        color = f"C{i}"
        rs = [r for r in rows if r["cell"] == c]
        ax.scatter([r["flops_per_byte"] for r in rs], [r["bpb"] for r in rs], marker=MARKERS[c], color=color, label=c)
        with_entropy = [r for r in rs if r["flops_per_byte_with_entropy"] > r["flops_per_byte"]]
        for r in with_entropy:
            ax.plot([r["flops_per_byte"], r["flops_per_byte_with_entropy"]], [r["bpb"]] * 2, ":", color=color)
        ax.scatter([r["flops_per_byte_with_entropy"] for r in with_entropy], [r["bpb"] for r in with_entropy],
                   marker=MARKERS[c], facecolors="none", edgecolors=color)
    _finish(plt, fig, ax, paths[1], xlabel="inference FLOPs per byte (hollow: with entropy model)",
            title="bpb against inference cost")
    return paths


def write_report(out_dir: Path, study, results: list[dict], entropy_info: dict | None,
                 sessions: list[dict] | None = None) -> None:
    out_dir = Path(out_dir)
    results = annotate(results, entropy_info)
    write_csv(out_dir / "results.csv", results)
    write_markdown(out_dir / "results.md", study, results, entropy_info, sessions or [])
    if results:
        write_plots(out_dir, results)
