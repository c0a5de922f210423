"""`blt score RUN --input FILE --out FILE.npy`: the cost of every byte of a file.

The file is one document: BOS then its bytes, any bytes at all (text or binary). The output is
a float32 .npy array with one entry per byte: the nats the model spent on that byte given BOS
and every earlier byte (within its context: blt.evaluation.scorer). It is written under a
temporary name and renamed, so a failure never leaves half a file; `--out -` writes it to
stdout, and a device or FIFO (/dev/null, a named pipe) is written directly. stdout (stderr
with `--out -`) gets a one-line JSON summary: {"input", "out", "bytes", "nats", "bpb", "step"}.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

from blt.commands.common import add_device_arg
from blt.evaluation.bpb import bits_per_byte
from blt.files import STDOUT, check_output, read_input, write_bytes
from blt.runs.loading import open_run


def save_npy(array: np.ndarray, out: Path) -> None:
    buffer = io.BytesIO()  # np.save wants a seekable file; a FIFO or a pipe is not one
    np.save(buffer, array)
    write_bytes(out, buffer.getvalue())


def configure(p):
    p.add_argument("run", help="run directory")
    p.add_argument("--input", required=True, type=Path, help="file to score (any bytes)")
    p.add_argument("--out", required=True, help="where to write the float32 .npy array ('-': stdout)")
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
    print(json.dumps(summary), file=sys.stderr if args.out == STDOUT else sys.stdout)
    return 0
