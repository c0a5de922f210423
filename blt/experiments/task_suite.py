"""The local task suite (blt/evaluation/tasks) through the harness, and its comparison table.

    results = evaluate_tasks(HarnessLM(run="runs/blt_tiny", device="cpu"), ["blt_suite"], limit=20)
    print(comparison_table({"blt_tiny": results}))

Tasks are looked up in the suite's directory only: indexing the harness's own ~15k task entries
would add about 9 s and is not needed. Nothing reaches for the network: the suite's loader reads
the package's files (no `datasets.load_dataset`, no cache), its metrics are the harness's
built-in ones (no `evaluate.load`) and HarnessLM has no Hub tokenizer for the harness to probe;
tests/test_harness.py runs it with the network blocked.
"""
from __future__ import annotations

from blt.errors import UserError
from blt.evaluation.tasks import TASKS_DIR
from blt.experiments.harness import HarnessLM


def evaluate_tasks(lm: HarnessLM, tasks: list[str], limit: float | None = None) -> dict:
    """The harness's results for `tasks` (names or tags of the suite); limit: the first N
    documents of each task (or a fraction of them, below 1)."""
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be positive, got {limit}")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"no such task in the local suite: {', '.join(unknown)} "
                        f"(tasks and tags: {', '.join(sorted(manager.all_tasks))})")
    return simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False)


def scores(results: dict) -> dict[tuple[str, str], tuple[float, float | None]]:
    """{(task, 'metric,filter'): (value, standard error or None)} from harness results."""
    out = {}
    for task, row in results["results"].items():
        for key, value in row.items():
            metric, comma, filt = key.partition(",")
            if comma and not metric.endswith("_stderr"):
                stderr = row.get(f"{metric}_stderr,{filt}")
                out[(task, key)] = (value, stderr if isinstance(stderr, float) else None)
    return out


def comparison_table(runs: dict[str, dict], silent: frozenset = frozenset()) -> str:
    """A markdown table, one row per task and metric, one column per run (value +- standard
    error). `silent`: runs that cannot generate, whose generation tasks show n/a."""
    per_run = {name: scores(results) for name, results in runs.items()}
    output_type = {task: cfg["output_type"] for results in runs.values() for task, cfg in results["configs"].items()}
    size = {task: n["effective"] for results in runs.values() for task, n in results["n-samples"].items()}
    keys = sorted({key for s in per_run.values() for key in s})
    lines = [f"| task | items | metric | {' | '.join(runs)} |", f"|---|---:|---|{'---:|' * len(runs)}"]
    for task, key in keys:
        cells = []
        for name, s in per_run.items():
            if name in silent and output_type[task] == "generate_until":
                cells.append("n/a")
            elif (task, key) not in s:
                cells.append("")
            else:
                value, stderr = s[(task, key)]
                cells.append(f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else ""))
        lines.append(f"| {task} | {size[task]} | {key.removesuffix(',none')} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
