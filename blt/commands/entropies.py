"""`blt entropies ENTROPY_RUN --data CORPUS --out DIR`: precompute next-byte entropies and surprisals.

ENTROPY_RUN is an ordinary byte-level run (`blt train` with model_kind byte), typically with a
sliding window. Every byte of every split document of the corpus gets the entropy of the
model's distribution predicting it and the surprisal of the byte before it (see
`blt.patching.entropy`); the result is float16 files aligned with the corpus bytes, which BLT
training reads to patch on the fly. The splits must be the ones the BLT run will use (--splits,
default auto). A progress bar goes to stderr; stdout gets one JSON line: {"bytes",
"mean_entropy", "mean_surprisal", "seconds", "out", "corpus", "entropy_run"} (mean_surprisal:
the model's nats per byte on the corpus).

Under torchrun (`torchrun --nproc_per_node N -m blt.cli entropies ...`) each process computes
its share of the corpus and writes it into the one file; rank 0 completes it and prints.
"""
from __future__ import annotations

import json
from pathlib import Path

from blt.commands.common import add_device_arg
from blt.data.corpus import load_corpus, resolve_corpus
from blt.data.shards import FORMATS
from blt.errors import UserError
from blt.runs.config import load_run_config
from blt.runs.kind_blt import write_run_entropies
from blt.train.distributed import init_distributed, shutdown


def configure(p):
    p.add_argument("entropy_run", help="run directory of a byte-level entropy model")
    p.add_argument("--data", required=True, help="corpus: file, directory, glob, stdlib or enwik8")
    p.add_argument("--out", required=True, type=Path, help="directory to write entropies.f16/.json into")
    p.add_argument("--splits", default="auto", help="split percentages, e.g. 90/5/5 (default: auto)")
    p.add_argument("--format", default="auto", choices=("auto", "files", *FORMATS),
                   help="files: a document per file; jsonl/parquet: a document per record (default: auto)")
    p.add_argument("--text-field", default="text", help="JSONL field or Parquet column of the text")
    p.add_argument("--data-dir", help="where pre-downloaded corpora (enwik8) live")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_arg(p, dtype=False)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"{args.out} exists and is not a directory; --out takes a directory")
    load_run_config(args.entropy_run)  # a wrong run directory fails before the corpus is read
    corpus = load_corpus(resolve_corpus(args.data), args.splits, args.data_dir, args.format, args.text_field)
    env = init_distributed(args.device)
    try:
        stats = write_run_entropies(args.entropy_run, corpus, args.out, args.batch_size, env.device,
                                    not args.no_progress)
    finally:
        shutdown(env)
    if env.rank == 0:
        print(json.dumps({**stats, "out": str(args.out), "corpus": corpus.name, "entropy_run": str(args.entropy_run)}))
    return 0
