"""`blt score RUN --input FILE --out FILE.npy`: the cost of every byte of a file.

The file is one document: BOS then its bytes, any bytes at all (text or binary). The output is
a float32 .npy array with one entry per byte: the nats the model spent on that byte given BOS
and every earlier byte (within its context: blt.evaluation.scorer). It is written under a
temporary name and renamed, so a failure never leaves half a file. stdout gets a one-line JSON
summary: {"input", "out", "bytes", "nats", "bpb", "step"}.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from blt.commands.common import add_device_arg
from blt.evaluation.bpb import bits_per_byte
from blt.files import check_output, read_input, temporary_name
from blt.runs.loading import open_run


def save_npy(array: np.ndarray, out: Path) -> None:
    tmp = temporary_name(out)
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, out)


def configure(p):
    p.add_argument("run", help="run directory")
    p.add_argument("--input", required=True, type=Path, help="file to score (any bytes)")
    p.add_argument("--out", required=True, type=Path, help="where to write the float32 .npy array")
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    data = read_input(args.input)
    check_output(args.out)
    opened = open_run(args.run, args.device, args.dtype)
    nats = opened.scores([np.frombuffer(data, dtype=np.uint8)])[0].astype(np.float32)  # (N,)
    save_npy(nats, args.out)
    total = float(nats.sum(dtype=np.float64))
    summary = {
        "input": str(args.input),
        "out": str(args.out),
        "bytes": len(data),
        "nats": total,
        "bpb": bits_per_byte(total, len(data)),
        "step": opened.step,
    }
    print(json.dumps(summary))
    return 0
