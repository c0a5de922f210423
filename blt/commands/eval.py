"""`blt eval RUN`: bits per byte of a run's newest checkpoint over every byte of a split.

By default the corpus and splits are the ones the run trained on (its config.yaml) and the
split is val. Progress goes to stderr; the last line on stdout is one JSON object:
{"bpb", "bytes", "nats", "split", "corpus", "params", "step", "run", "seconds",
 "flops_per_byte", "flops_per_byte_with_entropy", "train_flops_per_byte"}; a BLT run adds
its patcher, the calibrated "theta" / "theta_r" and the "mean_patch_size" its patcher cuts
the scored bytes into (which is also the patch size its FLOPs per byte are computed with);
a BPE-token run adds the "bytes_per_token" its tokenizer achieves on the scored bytes (its
FLOPs per byte are its FLOPs per token divided by that).
`--noise KIND` adds the robustness figures of `blt.noise.noise_report` (clean and noised bpb
on the same clean continuations, and their difference) for the same bytes.

`open_run` (model + config + checkpoint step on a device) is shared by the inference commands.
Command modules import torch inside `run`, so `blt --help` stays fast.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from blt.errors import UserError


def open_run(run_dir: str, device: str = "auto"):
    """(model in eval mode, RunConfig, checkpoint step) of a run's newest checkpoint."""
    from blt.checkpoint import latest_checkpoint, load_model  # torch loads only when a command runs
    from blt.train.distributed import pick_device

    model, cfg = load_model(run_dir, pick_device(device, local_rank=0))
    step = int(latest_checkpoint(run_dir).name.split("_")[-1])
    return model, cfg, step


def add_device_arg(p) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda if available)")


def add_parser(sub):
    p = sub.add_parser("eval", help="bits per byte of a trained run on a data split")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", help="file, directory, glob, stdlib or enwik8 (default: the run's corpus)")
    p.add_argument("--split", default="val", choices=["train", "val", "test", "all"])
    p.add_argument("--max-bytes", type=int, help="score only the first N bytes of the split")
    p.add_argument("--batch-size", type=int, default=16, help="windows scored per forward pass")
    p.add_argument("--noise", metavar="KIND", help="also score robustness to this noise: "
                   "random_case, uppercase, drop, repeat or swap (see blt/noise.py)")
    p.add_argument("--noise-p", type=float, help="noise probability per character (default: the kind's own)")
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the noise")
    add_device_arg(p)
    p.set_defaults(func=run)


def evaluate_run(model, cfg, data: str | None = None, split: str = "val", max_bytes=None, batch_size=16) -> dict:
    """{'bpb', 'bytes', 'nats', 'split', 'corpus', 'params', 'seconds'} of a run's model on a split.

    data=None takes the corpus and split fractions the run trained on; another corpus gets
    its own default fractions.
    """
    from blt.data.corpus import load_corpus, open_corpus, resolve_corpus
    from blt.evaluate import evaluate_split, patch_statistics, split_documents
    from blt.flops import blt_flops, bpe_lm_flops, byte_lm_flops

    if max_bytes is not None and max_bytes < 1:
        raise UserError(f"--max-bytes must be at least 1, got {max_bytes}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    corpus = open_corpus(cfg.data) if data is None else load_corpus(resolve_corpus(data), "auto", cfg.data.data_dir)
    byte_split = corpus.split(split)
    if byte_split.n_bytes == 0:
        raise UserError(f"the {split} split of '{corpus.name}' holds no bytes")
    n = byte_split.n_bytes if max_bytes is None else min(byte_split.n_bytes, max_bytes)
    params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("entropy_model."))
    device = next(model.parameters()).device
    print(f"scoring {n:,} bytes of {corpus.name} [{split}] ({params:,} parameters, {device})", file=sys.stderr)
    t0 = time.time()
    result = evaluate_split(model, byte_split, max_bytes, batch_size)
    seconds = time.time() - t0
    print(f"{result['bytes'] / max(seconds, 1e-9):,.0f} bytes/s", file=sys.stderr)
    extra = {}
    if cfg.model_kind == "blt":
        p = cfg.patching
        stats = patch_statistics(model, split_documents(byte_split, max_bytes))
        extra = {"patcher": p.kind, "theta": p.theta, "theta_r": p.theta_r, "target_patch_size": p.target_patch_size}
        extra["mean_patch_size"] = stats["mean_patch_size"]
        flops = blt_flops(cfg.blt, stats["mean_patch_size"], cfg.entropy_model)
    elif cfg.model_kind == "bpe":
        extra["bytes_per_token"] = model.tokenizer.bytes_per_token(split_documents(byte_split, max_bytes))
        flops = bpe_lm_flops(cfg.bpe, cfg.bpe.vocab_size, extra["bytes_per_token"])
    else:
        flops = byte_lm_flops(cfg.model)
    extra.update(
        flops_per_byte=flops.forward_per_byte,
        flops_per_byte_with_entropy=flops.forward_per_byte_with_entropy,
        train_flops_per_byte=flops.train_per_byte,
    )
    return {**result, "split": split, "corpus": corpus.name, "params": params, "seconds": round(seconds, 3), **extra}


def run(args) -> int:
    if args.noise is not None:
        from blt.noise import check_noise, noise_report

        check_noise(args.noise, args.noise_p)  # before the long evaluation, not after it
    model, cfg, step = open_run(args.run, args.device)
    summary = evaluate_run(model, cfg, args.data, args.split, args.max_bytes, args.batch_size)
    if args.noise is not None:
        summary.update(noise_report(model, cfg, args.data, args.split, args.max_bytes, args.noise,
                                    args.noise_p, args.noise_seed, args.batch_size))
    print(json.dumps({**summary, "step": step, "run": str(Path(args.run))}))
    return 0
