"""`blt study CONFIG [--out DIR] [--workers N] [key=value ...]`: the equal-training-FLOP comparison grid.

Trains and evaluates every job of a study config (see blt/experiments/study.py and configs/study_*.yaml)
into DIR (default runs/<config stem>), N at a time (one process and one thread each), then writes
DIR/results.md, results.csv and the plots. Rerunning the same command skips finished jobs and
resumes interrupted ones (Ctrl-C or SIGTERM stops it with 130 or 143 once the jobs under way
have saved their checkpoints); `key=value`
overrides any study config entry (`budgets=[1e12,3e12]`, `model.dim=64`). On success the last
line on stdout is the path of results.md.
"""
from __future__ import annotations

import signal
from pathlib import Path

from blt.commands.common import accept_late_overrides
from blt.config import load_config
from blt.errors import UserError, signal_exit_status
from blt.experiments.study import StudyConfig, run_study


def configure(p):
    p.description = __doc__.split("\n\n")[1]
    p.add_argument("config", help="study YAML config (e.g. configs/study_cpu.yaml)")
    p.add_argument("--out", help="study directory (default runs/<config stem>)")
    p.add_argument("--workers", type=int, default=1, help="jobs trained at once, each in its own process (default 1)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. budgets=[1e12]")
    p.set_defaults(func=run)
    accept_late_overrides(p)


def run(args) -> int:
    source = Path(args.config)
    if not source.is_file():
        raise UserError(f"config file not found: {source}")
    study = load_config(StudyConfig, source, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / source.stem
    command = " ".join(["blt study", str(source), "--out", str(out), "--workers", str(args.workers), *args.overrides])
    summary = run_study(study, out, workers=args.workers, command=command)
    for r in summary["cells"]:
        print(f"{r['job']:>22} @ {r['budget']:.3g} FLOPs: {r['steps']:>6} steps, test bpb {r['bpb']:.4f}")
    if not summary["complete"]:
        print(f"stopped by {summary['signal']} before the grid was done; rerun the same command to continue ({out})")
        return signal_exit_status(signal.Signals[summary["signal"]])
    print(out / "results.md")
    return 0
