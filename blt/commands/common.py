"""What several command adapters share: --device/--dtype, late key=value overrides, and the
inputs and output of compress/decompress."""
from __future__ import annotations

import json
from pathlib import Path

from blt.files import check_output, read_input, write_bytes
from blt.runs.fingerprint import run_fingerprint
from blt.runs.loading import open_run


def add_device_arg(p, default: str = "auto", dtype: bool = True) -> None:
    p.add_argument("--device", default=default,
                   help=f"cpu, cuda, cuda:N, or auto (cuda if available); default {default}")
    if dtype:
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                       help="compute dtype (default: the checkpoint's; n-gram hash tables keep theirs)")


def accept_late_overrides(parser) -> None:
    """argparse fills positionals from one run of arguments only, so in
    `blt train c.yaml --steps 5 optim.lr=1e-3` the override would be 'unrecognized'; after
    this, such leftover key=value words are filed under `overrides` instead."""

    class LateOverrides(type(parser)):
        def parse_known_args(self, args=None, namespace=None):
            ns, extra = super().parse_known_args(args, namespace)
            late = [a for a in extra if "=" in a and not a.startswith("-")]
            ns.overrides = list(getattr(ns, "overrides", None) or []) + late
            return ns, [a for a in extra if a not in late]

    parser.__class__ = LateOverrides


def coding_args(p) -> None:
    """The arguments `blt compress` and `blt decompress` share."""
    p.add_argument("run", help="run directory of a byte-level model or a BLT: the same run for both directions")
    p.add_argument("input", type=Path, help="file to read (never modified)")
    p.add_argument("output", type=Path, help="file to write (written under a temporary name, then renamed)")
    add_device_arg(p, default="cpu", dtype=False)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def coding_setup(args) -> tuple[bytes, object, bytes]:
    """(input bytes, the run's feeds, its fingerprint) once the input and output check out."""
    data = read_input(args.input, empty_ok=True)
    check_output(args.output, source=args.input)
    opened = open_run(args.run, args.device)
    return data, opened.kind.feeds(opened.model), run_fingerprint(args.run)


def coding_report(args, data: bytes, out: bytes, seconds: float, **extra) -> None:
    """Write the output file atomically; one JSON line on stdout."""
    write_bytes(args.output, out)
    summary = {"input": str(args.input), "output": str(args.output), "input_bytes": len(data),
               "output_bytes": len(out), "seconds": round(seconds, 3), **extra}
    print(json.dumps(summary))
