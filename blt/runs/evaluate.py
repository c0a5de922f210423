"""Evaluate an open run: bits per byte on a split of its corpus (or another), with its FLOPs
and its kind's own figures, and robustness to noise on the same bytes.

`evaluate_run` gives {'bpb', 'bytes', 'nats', 'split', 'corpus', 'params', 'seconds',
'flops_per_byte', 'flops_per_byte_with_entropy', 'train_flops_per_byte'} plus the kind's
figures (a BLT's patcher, thresholds and the mean patch size it cuts the scored bytes into; a
BPE-token model's bytes per token). data=None takes the corpus and split fractions the run
trained on; another corpus gets its own default fractions.
"""
from __future__ import annotations

import sys
import time
from functools import partial

from blt.data.corpus import Corpus, load_corpus, open_corpus, resolve_corpus
from blt.errors import UserError
from blt.evaluation.bpb import evaluate_docs, split_documents
from blt.evaluation.noise import check_noise, robustness, scoring_pairs
from blt.runs.loading import OpenRun


def run_corpus(run: OpenRun, data: str | None = None) -> Corpus:
    """The run's own corpus (its fractions and prefix), or `data` with its default fractions."""
    if data is None and run.is_hf:
        raise UserError(f"{run.path} is a Hugging Face checkpoint, with no corpus of its own: pass --data")
    if data is None:
        return open_corpus(run.cfg.data)
    d = run.cfg.data
    return load_corpus(resolve_corpus(data), "auto", d.data_dir, d.format, d.text_field)


def eval_documents(run: OpenRun, data: str | None, split: str, max_bytes: int | None) -> tuple[Corpus, list]:
    if max_bytes is not None and max_bytes < 1:
        raise UserError(f"--max-bytes must be at least 1, got {max_bytes}")
    corpus = run_corpus(run, data)
    byte_split = corpus.split(split)
    if byte_split.n_bytes == 0:
        raise UserError(f"the {split} split of '{corpus.name}' holds no bytes")
    return corpus, split_documents(byte_split, max_bytes)


def evaluate_run(run: OpenRun, data: str | None = None, split: str = "val", max_bytes=None,
                 batch_size: int = 16) -> dict:
    """bpb of a run's model on (the first max_bytes of) a split: see the module docstring."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    corpus, docs = eval_documents(run, data, split, max_bytes)
    model = run.model
    params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("entropy_model."))
    device = next(model.parameters()).device
    n = sum(len(d) for d in docs)
    print(f"scoring {n:,} bytes of {corpus.name} [{split}] ({params:,} parameters, {device})", file=sys.stderr)
    t0 = time.time()
    result = evaluate_docs(partial(run.scores, batch_size=batch_size), docs)
    seconds = time.time() - t0
    print(f"{result['bytes'] / max(seconds, 1e-9):,.0f} bytes/s", file=sys.stderr)
    extra, flops = run.kind.describe(model, run.cfg, docs)
    extra.update(
        flops_per_byte=flops.forward_per_byte,
        flops_per_byte_with_entropy=flops.forward_per_byte_with_entropy,
        train_flops_per_byte=flops.train_per_byte,
    )
    return {**result, "split": split, "corpus": corpus.name, "params": params, "seconds": round(seconds, 3), **extra}


def noise_report(run: OpenRun, data: str | None, split: str, max_bytes: int | None, kind: str,
                 p: float | None = None, seed: int = 0, batch_size: int = 16) -> dict:
    """`blt eval --noise`: clean and noised bpb on pairs cut from the same bytes as
    evaluate_run (blt.evaluation.noise); flat keys for the command's JSON."""
    p = check_noise(kind, p)
    _, docs = eval_documents(run, data, split, max_bytes)
    r = robustness(partial(run.scores, batch_size=batch_size), scoring_pairs(docs), {kind: p}, seed)
    k = r["kinds"][kind]
    return {
        "noise": kind, "noise_p": p, "noise_seed": seed, "noise_pairs": r["pairs"], "noise_bytes": r["bytes"],
        "clean_pair_bpb": r["clean_bpb"], "noised_pair_bpb": k["bpb"], "noise_bpb_increase": k["increase"],
    }
