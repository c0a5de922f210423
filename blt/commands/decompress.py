"""`blt decompress RUN INPUT OUTPUT`: the original bytes of a file made by `blt compress`.

RUN must be the run that compressed it (its fingerprint is checked first), on the same kind of
device. A file made with another model, a damaged or truncated file, or a file of another
format is refused with one line on stderr and exit status 2, and no output file is left:
the output is written under a temporary name and renamed once its checksum has passed. stdout
gets one JSON line: {"input", "output", "input_bytes", "output_bytes", "seconds"}.
"""
from __future__ import annotations

import time

from blt.commands.common import coding_args, coding_report, coding_setup
from blt.inference.compress import decompress


def configure(p):
    coding_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    blob, feeds, fingerprint = coding_setup(args)
    t0 = time.perf_counter()
    out = decompress(feeds, blob, fingerprint, not args.no_progress)
    coding_report(args, blob, out, time.perf_counter() - t0)
    return 0
