"""The local task suite (character tasks, noised cloze) on several runs, as one markdown report.

    python benchmarks/char_tasks.py byte=runs/study_cpu/cells/6e12/byte-d32x2 \
        bpe=runs/study_cpu/cells/6e12/bpe-d64x2 blt=runs/study_cpu/cells/6e12/entropy \
        --report benchmarks/results/char_tasks.md

Each run (NAME=RUN_DIR, or RUN_DIR named by its directory) goes through lm-evaluation-harness with
the `blt` model (blt.experiments.harness) on the tasks of blt/evaluation/tasks (default: all of
them); the report holds the exact command, the CPU's flags, each run's kind, size and training
steps (and, for a study cell, the bpb the study measured), the seconds each run took, and one row
per task and metric with value +- standard error per run. BPE-token runs cannot generate, so
their generation tasks read n/a.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from blt.evaluation.tasks import SUITE
from blt.files import atomic_write_text
from released_blt import cpu_flags  # benchmarks/ is this script's first import path
from blt.experiments.harness import HarnessLM
from blt.experiments.task_suite import comparison_table, evaluate_tasks, scores

STUDY_RESULT = "result.json"  # what `blt study` leaves in each cell (blt.experiments.study)
CHAR_TASKS = ["spell", "reverse", "insert", "delete", "substitute", "swap", "ith_letter"]


def describe(name: str, lm: HarnessLM, seconds: float) -> str:
    run = lm.run
    params = sum(p.numel() for n, p in run.model.named_parameters() if not n.startswith("entropy_model."))
    result = run.path / STUDY_RESULT
    bpb = f"{json.loads(result.read_text())['bpb']:.3f}" if result.is_file() else "-"
    return f"| {name} | `{run.path}` | {run.kind.name} | {params:,} | {run.step} | {bpb} | {seconds:.0f} |"


SUMMARY = [  # (row label, metric key, tasks averaged)
    ("character tasks, multiple choice (7): mean acc", "acc,none", [f"blt_{t}_mc" for t in CHAR_TASKS]),
    ("character tasks, generation (7): mean exact match", "exact_match,strip", [f"blt_{t}" for t in CHAR_TASKS]),
    ("cloze, clean context: acc", "acc,none", ["blt_cloze"]),
    ("cloze, random-case context: acc", "acc,none", ["blt_cloze_noised_case"]),
    ("cloze, repeated-character context: acc", "acc,none", ["blt_cloze_noised_repeat"]),
]


def summary_table(results: dict[str, dict], silent: set[str]) -> str:
    """Means over task groups, one column per run (only groups whose tasks all ran)."""
    per_run = {name: scores(r) for name, r in results.items()}
    lines = [f"| | {' | '.join(results)} |", f"|---|{'---:|' * len(results)}"]
    for label, key, tasks in SUMMARY:
        if all((t, key) in s for s in per_run.values() for t in tasks):
            cells = ["n/a" if name in silent and key.startswith("exact_match")
                     else f"{sum(s[(t, key)][0] for t in tasks) / len(tasks):.3f}" for name, s in per_run.items()]
            lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="[NAME=]RUN_DIR")
    ap.add_argument("--tasks", nargs="+", default=[SUITE], help="tasks or tags of the local suite")
    ap.add_argument("--limit", type=int, help="the first N items of each task")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--report", type=Path, required=True, help="where to write the markdown report")
    args = ap.parse_args()

    results, rows, silent = {}, [], set()
    for spec in args.runs:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).name
        start = time.time()
        lm = HarnessLM(run=path, device=args.device, batch_size=args.batch_size)
        results[name] = evaluate_tasks(lm, args.tasks, args.limit)
        rows.append(describe(name, lm, time.time() - start))
        if not lm.run.kind.generates:
            silent.add(name)
        print(f"{name}: done in {time.time() - start:.0f} s", file=sys.stderr, flush=True)

    command = shlex.join(["python", "benchmarks/char_tasks.py", *sys.argv[1:]])
    lines = [
        "# The local task suite through lm-evaluation-harness",
        "",
        "```",
        command,
        "```",
        "",
        f"CPU flags: {cpu_flags()}. Tasks: {', '.join(args.tasks)}"
        + (f", first {args.limit} items each." if args.limit else ", every item."),
        "",
        "| run | directory | kind | parameters (entropy model excluded) | steps | study bpb | seconds |",
        "|---|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        "Chance is 0.25 on every multiple-choice task (four choices). Generation tasks score exact match "
        "after stripping whitespace; n/a: BPE-token runs do not generate in this toolkit.",
        "",
        summary_table(results, silent),
        comparison_table(results, frozenset(silent)),
    ]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.report, "\n".join(lines))


if __name__ == "__main__":
    main()
