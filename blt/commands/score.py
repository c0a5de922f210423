"""`blt score RUN --input FILE --out FILE.npy`: the cost of every byte of a file.

The file is one document: BOS then its bytes, any bytes at all (text or binary). The output is
a float32 .npy array with one entry per byte: the nats the model spent on that byte given BOS
and every earlier byte (within its context, see ByteLM.score_documents). It is written under a
temporary name and renamed, so a failure never leaves half a file. stdout gets a one-line JSON
summary: {"input", "out", "bytes", "nats", "bpb", "step"}.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from blt.commands.eval import add_device_arg, open_run
from blt.errors import UserError
from blt.evaluate import bits_per_byte


def read_input(path: Path) -> bytes:
    if path.is_dir():
        raise UserError(f"{path} is a directory; --input takes one file")
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    data = path.read_bytes()
    if not data:
        raise UserError(f"{path} is empty: there are no bytes to score")
    return data


def check_output(out: Path) -> None:
    if not out.parent.is_dir():
        raise UserError(f"output directory not found: {out.parent}")
    if out.is_dir():
        raise UserError(f"{out} is a directory; --out takes a file name")


def save_npy(array: np.ndarray, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, out)


def add_parser(sub):
    p = sub.add_parser("score", help="nats per byte of a file under a trained run")
    p.add_argument("run", help="run directory")
    p.add_argument("--input", required=True, type=Path, help="file to score (any bytes)")
    p.add_argument("--out", required=True, type=Path, help="where to write the float32 .npy array")
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    data = read_input(args.input)
    check_output(args.out)
    model, _, step = open_run(args.run, args.device)
    nats = model.score_documents([np.frombuffer(data, dtype=np.uint8)])[0].astype(np.float32)  # (N,)
    save_npy(nats, args.out)
    total = float(nats.sum(dtype=np.float64))
    summary = {
        "input": str(args.input),
        "out": str(args.out),
        "bytes": len(data),
        "nats": total,
        "bpb": bits_per_byte(total, len(data)),
        "step": step,
    }
    print(json.dumps(summary))
    return 0
