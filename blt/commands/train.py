"""`blt train CONFIG [--data PATH|NAME] [--out DIR] [--steps N] [--resume] [key=value ...]`

Trains the model a YAML config describes (see configs/), into a run directory (default
runs/<config stem>). `key=value` overrides any config entry (`optim.lr=3e-4`), --data sets
data.corpus and --steps sets train.steps. A directory that already holds a checkpoint is
only continued with --resume, which takes the run's own config.yaml (overrides and --steps
still apply, so --steps can extend a finished run); CONFIG may then be the run directory.
Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and exits with 128 + the
signal's number (130, 143); a closed stdout (`blt train ... | head`) drops the progress lines
and training goes on. Under torchrun every rank runs this command; rank 0 alone writes and
prints.
"""
from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path

from blt.commands.common import accept_late_overrides
from blt.config import from_dict, merge, parse_overrides, read_yaml
from blt.errors import UserError, signal_exit_status
from blt.files import print_line
from blt.runs import layout
from blt.runs.config import RunConfig
from blt.train.loop import train


def configure(p):
    p.description = __doc__.split("\n\n")[1]
    p.add_argument("config", help="YAML config (e.g. configs/tiny.yaml), or a run directory with --resume")
    p.add_argument("--data", help="corpus: a file, directory, glob, 'stdlib' or 'enwik8' (sets data.corpus)")
    p.add_argument("--out", help="run directory (default runs/<config stem>)")
    p.add_argument("--steps", type=int, help="total optimizer steps (sets train.steps)")
    p.add_argument("--resume", action="store_true", help="continue the newest checkpoint in the run directory")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=3e-4")
    p.set_defaults(func=run)
    accept_late_overrides(p)


def resolve_config(args) -> tuple[object, Path]:
    """(RunConfig, run directory) from the command line, checking every input."""
    source = Path(args.config)
    if source.is_dir():
        if not args.resume:
            raise UserError(f"{source} is a directory; pass a YAML config, or --resume to continue that run")
        out = Path(args.out) if args.out else source
    else:
        if not source.is_file():
            raise UserError(f"config file not found: {source}")
        out = Path(args.out) if args.out else Path("runs") / source.stem
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")

    if args.resume:
        if not (out / layout.CONFIG).is_file():
            raise UserError(f"nothing to resume: {out} is not a run directory (no {layout.CONFIG})")
        tree = read_yaml(out / layout.CONFIG)
    else:
        tree = read_yaml(source)
    tree = merge(tree, parse_overrides(args.overrides))
    if args.data is not None:
        tree = merge(tree, {"data": {"corpus": args.data}})
    if args.steps is not None:
        tree = merge(tree, {"train": {"steps": args.steps}})
    return from_dict(RunConfig, tree), out


def run(args) -> int:
    cfg, out = resolve_config(args)
    result = train(cfg, out, resume=args.resume)
    status = signal_exit_status(signal.Signals[result["signal"]]) if result.get("interrupted") else 0
    if result.get("rank", 0) != 0 or os.environ.get("RANK", "0") != "0":
        return status
    where = result.get("checkpoint", str(out))
    if result.get("interrupted"):
        print_line(
            f"stopped by {result['signal']} at step {result['step']}/{result['steps']}; "
            f"checkpoint saved to {where}\ncontinue with: blt train {shlex.quote(str(out))} --resume"
        )
        return status
    val = f", val bpb {result['val_bpb']:.4f} on {result['val_bytes']:,} bytes" if "val_bpb" in result else ""
    print_line(f"done: step {result['step']}, train bpb {result.get('bpb', float('nan')):.4f}{val}; checkpoint {where}")
    return 0
