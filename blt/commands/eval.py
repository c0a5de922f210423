"""`blt eval RUN`: bits per byte of a run's newest checkpoint over every byte of a split.

By default the corpus and splits are the ones the run trained on (its config.yaml) and the
split is val. Progress goes to stderr; the last line on stdout is one JSON object:
{"bpb", "bytes", "nats", "split", "corpus", "params", "step", "run", "seconds",
 "flops_per_byte", "flops_per_byte_with_entropy", "train_flops_per_byte"}; a BLT run adds
its patcher, the calibrated "theta" / "theta_r" and the "mean_patch_size" its patcher cuts
the scored bytes into (which is also the patch size its FLOPs per byte are computed with);
a BPE-token run adds the "bytes_per_token" its tokenizer achieves on the scored bytes (its
FLOPs per byte are its FLOPs per token divided by that).
`--noise KIND` adds the robustness figures of `blt.runs.evaluate.noise_report` (clean and
noised bpb on the same clean continuations, and their difference) for the same bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

from blt.commands.common import add_device_arg
from blt.evaluation.noise import check_noise
from blt.runs.evaluate import evaluate_run, noise_report
from blt.runs.loading import open_run


def configure(p):
    p.add_argument("run", help="run directory")
    p.add_argument("--data", help="file, directory, glob, stdlib or enwik8 (default: the run's corpus)")
    p.add_argument("--split", default="val", choices=["train", "val", "test", "all"])
    p.add_argument("--max-bytes", type=int, help="score only the first N bytes of the split")
    p.add_argument("--batch-size", type=int, default=16, help="windows scored per forward pass")
    p.add_argument("--noise", metavar="KIND", help="also score robustness to this noise: "
                   "random_case, uppercase, drop, repeat or swap (see blt/evaluation/noise.py)")
    p.add_argument("--noise-p", type=float, help="noise probability per character (default: the kind's own)")
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the noise")
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.noise is not None:
        check_noise(args.noise, args.noise_p)  # before the long evaluation, not after it
    opened = open_run(args.run, args.device, args.dtype)
    summary = evaluate_run(opened, args.data, args.split, args.max_bytes, args.batch_size)
    if args.noise is not None:
        summary.update(noise_report(opened, args.data, args.split, args.max_bytes, args.noise,
                                    args.noise_p, args.noise_seed, args.batch_size))
    print(json.dumps({**summary, "step": opened.step, "run": str(Path(args.run))}))
    return 0
