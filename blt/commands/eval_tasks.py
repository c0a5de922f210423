"""`blt eval-tasks RUN [RUN ...] [--tasks ...]`: the local task suite through lm-evaluation-harness.

Runs the suite's tasks (blt/evaluation/tasks; default: all of them, the `blt_suite` tag) on each
run with the `blt` harness model (blt.experiments.harness) and prints the harness's own table
per run; with several runs, a comparison table (markdown: task, items, metric, one column per
run) follows. Offline: the tasks are files of the package. Needs the optional package lm-eval
(`pip install 'blt-lm[eval]'`).
"""
from __future__ import annotations

from lm_eval.utils import make_table

from blt.commands.common import add_device_arg
from blt.evaluation.tasks import SUITE
from blt.experiments.harness import HarnessLM
from blt.experiments.task_suite import comparison_table, evaluate_tasks


def configure(p):
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--tasks", nargs="+", default=[SUITE], help=f"tasks or tags of the local suite (default {SUITE})")
    p.add_argument("--limit", type=float, help="the first N items of each task (a fraction if below 1)")
    p.add_argument("--batch-size", type=int, default=16, help="documents (or prompts) per forward pass")
    add_device_arg(p, dtype=False)
    p.set_defaults(func=run)


def run(args) -> int:
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results, silent = {}, set()
    for path in args.runs:
        lm = HarnessLM(run=path, device=args.device, batch_size=args.batch_size)
        results[path] = evaluate_tasks(lm, args.tasks, limit)
        if not lm.run.kind.generates:
            silent.add(path)
        print(f"{path} ({lm.run.kind.name}, step {lm.run.step})\n{make_table(results[path])}", flush=True)
    if len(results) > 1:
        print(comparison_table(results, frozenset(silent)))
    return 0
