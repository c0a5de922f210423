"""`blt generate RUN --prompt TEXT`: continue a prompt with a trained run's model.

Prints prompt + continuation. Bytes that are not valid UTF-8 still print (as U+FFFD); --raw
writes the exact bytes (prompt + continuation, no newline) to stdout's binary buffer instead.
--stream prints bytes as the model produces them. A byte-level run cuts a prompt longer than
its context from the left (a note on stderr says so); a BLT run keeps it all (its windows
slide: see blt.inference.blt).
"""
from __future__ import annotations

import codecs
import sys
import warnings

from blt.commands.common import add_device_arg
from blt.inference.args import GenerationArgs
from blt.inference.byte_lm import PromptTruncated
from blt.runs.loading import open_run


class _Printer:
    """Writes bytes to stdout as text (lenient UTF-8, across chunk boundaries) or raw."""

    def __init__(self, raw: bool):
        self.raw = raw
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes, final: bool = False) -> None:
        if self.raw:
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(self.decoder.decode(data, final))
        sys.stdout.flush()

    def close(self) -> None:
        self.write(b"", final=True)
        if not self.raw:
            sys.stdout.write("\n")
            sys.stdout.flush()


def _note(message, *_, **__) -> None:
    print(f"blt generate: note: {message}", file=sys.stderr)


def configure(p):
    p.add_argument("run", help="run directory")
    p.add_argument("--prompt", default="", help="text to continue (UTF-8); empty = start of a document")
    p.add_argument("--max-new-bytes", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely bytes")
    p.add_argument("--top-p", type=float, help="sample among the most likely bytes holding probability p")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop before this string (repeatable)")
    p.add_argument("--raw", action="store_true", help="write the exact bytes, undecoded")
    p.add_argument("--stream", action="store_true", help="print bytes as they are generated")
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    prompt = args.prompt.encode("utf-8", errors="surrogateescape")  # non-UTF-8 argv bytes survive
    stops = tuple(s.encode("utf-8", errors="surrogateescape") for s in args.stop)
    gen = GenerationArgs(args.max_new_bytes, args.temperature, args.top_k, args.top_p, args.seed, stops).check()
    opened = open_run(args.run, args.device, args.dtype)
    if not args.raw:
        sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show a character gets '?'
    out = _Printer(args.raw)
    with warnings.catch_warnings():
        warnings.simplefilter("always", PromptTruncated)
        warnings.showwarning = _note
        if args.stream:
            out.write(prompt)
        (text,) = opened.generate(  # the run's kind: KV-cached bytes, or BLT's online patching
            [prompt], gen, on_bytes=(lambda _, data: out.write(data)) if args.stream else None
        )
        if not args.stream:
            out.write(prompt + text)
    out.close()
    return 0
