"""The study's learning rate, chosen on val: a byte model and a BLT at several peak rates.

    python benchmarks/study_lr_probe.py configs/study_cpu.yaml --work /tmp/lr_probe \
        --report benchmarks/results/study_lr_probe.md

The study trains every job at one peak learning rate (`optim.lr`). This probe trains, at the
--budget of training FLOPs (steps planned as the study plans them), the byte baseline in the
--shape rung and the space-patched BLT (the study's latent and local models; no entropy model
needed) at each rate of --lrs, and reports each run's bpb on the study's selection bytes of the
VAL split: the test bytes the study scores are never read. Two runs at a time, one thread each.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

from blt.config import from_dict, load_config, to_dict
from blt.data.corpus import open_corpus
from blt.experiments.study import StudyConfig, final_metrics, plan_job, train_to_end
from blt.experiments.study_config import Job
from blt.files import atomic_write_text
from released_blt import cpu_flags  # benchmarks/ is this script's first import path
from blt.runs.config import RunConfig


def probe(study: StudyConfig, job: Job, lr: float, work: Path) -> dict:
    """Train one job at peak rate lr; its bpb on the selection bytes of val."""
    torch.set_num_threads(1)
    study = replace(study, optim=replace(study.optim, lr=lr))
    corpus = open_corpus(study.data)
    run_dir = work / f"lr{lr:g}" / job.name
    cfg, plan = plan_job(study, job, run_dir, corpus, work / f"lr{lr:g}")
    tree = to_dict(cfg)
    tree["train"]["eval_bytes"] = study.selection_bytes  # the loop's final evaluation: val
    train_to_end(from_dict(RunConfig, tree), run_dir)  # a finished run (an earlier call) is kept
    last = final_metrics(run_dir)
    return {"cell": job.cell, "shape": job.shape, "lr": lr, "steps": plan["steps"], "val_bpb": last["val_bpb"],
            "seconds": last["elapsed"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--work", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--budget", type=float, default=1.9e12)
    p.add_argument("--shape", default="d64x2", help="the byte baseline's ladder rung")
    p.add_argument("--lrs", default="2e-3,3e-3,4.5e-3")
    args = p.parse_args(argv)
    study = load_config(StudyConfig, Path(args.config), [])
    if args.shape not in [s.name for s in study.shapes]:
        print(f"error: --shape {args.shape} is not a ladder rung of {args.config}", file=sys.stderr)
        return 2
    lrs = [float(x) for x in args.lrs.split(",")]
    jobs = [Job(args.budget, "byte", args.shape), Job(args.budget, "space")]
    work = Path(args.work)
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(probe, *zip(*[(study, j, lr, work) for j in jobs for lr in lrs])))
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [
        "# The study's learning rate, probed on val", "", f"```\n{command}\n```", "",
        f"CPU flags: {cpu_flags()}. OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; one thread per run.",
        "",
        f"Each run: the study's job at {args.budget:g} training FLOPs (its steps planned as `blt study` plans them), "
        f"peak learning rate as below, everything else from `{args.config}`; bpb on the first "
        f"{study.selection_bytes} bytes of the VAL split (the study's test bytes are not read).", "",
        "| cell | shape | steps | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
        "|---|---|---:|" + "---:|" * len(lrs),
    ]
    for job in jobs:
        rows = [r for r in results if r["cell"] == job.cell]
        best = min(r["val_bpb"] for r in rows)
        cells = [(f"**{r['val_bpb']:.4f}**" if r["val_bpb"] == best else f"{r['val_bpb']:.4f}") for r in rows]
        lines.append(f"| {job.cell} | {job.shape or '-'} | {rows[0]['steps']} | " + " | ".join(cells) + " |")
    lines += ["", "Training seconds per run: " + ", ".join(f"{r['cell']} lr {r['lr']:g} {r['seconds']:.0f}" for r in results), ""]
    atomic_write_text(Path(args.report), "\n".join(lines))
    print(args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
