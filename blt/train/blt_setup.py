"""Everything a BLT run needs before its first step, resolved once and stored in the run.

1. The entropy model (patching.entropy_run, a byte-level run) for entropy patchers: its
   architecture is copied into cfg.entropy_model, its weights go into the BLT (frozen).
2. The corpus's entropy file, <run>/entropies/, computed with that model (rank 0; the other
   ranks wait): training windows read their boundaries' entropies from it.
3. Thresholds left null are calibrated on the VALIDATION split (held-out bytes) so the mean
   patch size hits patching.target_patch_size; the value and the size achieved are written
   into config.yaml (the resolved config) and <run>/patching.json.
4. Causal-BPE patching: a vocabulary learned from the training split, <run>/bpe_vocab.json.
A resumed run finds all of these in its directory and recomputes nothing.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from blt.data.corpus import Corpus
from blt.errors import UserError
from blt.evaluate import split_documents
from blt.patching.bpe import load_bpe_vocab, save_bpe_vocab, train_bpe
from blt.patching.calibration import calibrate_config
from blt.patching.entropy import load_entropy_file, write_entropy_file
from blt.patching.patchers import build_patcher
from blt.patching.sampler import PatchedWindowSampler
from blt.run import RunConfig, load_run_config
from blt.train import distributed as D

ENTROPY_DIR = "entropies"
PATCHING_FILE = "patching.json"
BPE_FILE = "bpe_vocab.json"
CALIBRATION_BYTES = 1_000_000  # held-out bytes the threshold is fitted on (at most)


def entropy_run_config(cfg: RunConfig) -> RunConfig:
    run = cfg.patching.entropy_run
    if not run:
        raise UserError(f"patcher '{cfg.patching.kind}' needs an entropy model: set patching.entropy_run=RUN_DIR")
    ent = load_run_config(run)
    if ent.model_kind != "byte":
        raise UserError(f"patching.entropy_run {run} is a '{ent.model_kind}' run; it must be a byte-level run")
    return ent


def prepare_blt(cfg: RunConfig, corpus: Corpus, run_dir: Path, env) -> RunConfig:
    """Resolve entropy model, entropies, thresholds and BPE vocabulary; returns the config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    p = cfg.patching
    if p.needs_entropy:
        cfg = dataclasses.replace(cfg, entropy_model=entropy_run_config(cfg).model)
        ent_dir = run_dir / ENTROPY_DIR
        if env.rank == 0 and not (ent_dir / "entropies.json").is_file():
            write_entropy_file(p.entropy_run, corpus, ent_dir, device=str(env.device), progress=cfg.train.progress)
        D.barrier()
    if p.kind == "bpe" and not (run_dir / BPE_FILE).is_file():
        if env.rank == 0:
            save_bpe_vocab(train_bpe(corpus.split("train").data, p.bpe_vocab_size, p.bpe_sample_bytes), run_dir / BPE_FILE)
        D.barrier()
    unresolved = (p.kind in ("entropy", "entropy_relative") and p.theta is None) or (
        p.kind in ("relative", "entropy_relative") and p.theta_r is None
    )
    if unresolved:
        cfg = dataclasses.replace(cfg, patching=calibrated(cfg, corpus, run_dir))
    return cfg


def calibrated(cfg: RunConfig, corpus: Corpus, run_dir: Path):
    """The patching config with its threshold fitted on held-out (validation) bytes."""
    ents = load_entropy_file(run_dir / ENTROPY_DIR, corpus)
    val = corpus.split("val")
    docs = split_documents(val, CALIBRATION_BYTES)
    val_ents = ents.split("val")
    doc_ents, offset = [], 0
    for i, doc in enumerate(docs):
        doc_ents.append(val_ents.data[offset : offset + len(doc)].astype("float32"))
        offset += len(doc)
    patching, achieved = calibrate_config(cfg.patching, docs, doc_ents)
    info = {
        "kind": patching.kind,
        "theta": patching.theta,
        "theta_r": patching.theta_r,
        "target_patch_size": patching.target_patch_size,
        "calibration_mean_patch_size": achieved,
        "calibration_bytes": int(sum(len(d) for d in docs)),
        "calibration_split": "val",
    }
    (run_dir / PATCHING_FILE).write_text(json.dumps(info, indent=1) + "\n")
    print(
        f"blt train: calibrated {patching.kind} threshold theta={patching.theta} theta_r={patching.theta_r} -> "
        f"mean patch size {achieved:.3f} on {info['calibration_bytes']:,} held-out bytes "
        f"(target {patching.target_patch_size})"
    )
    return patching


def blt_sampler(cfg: RunConfig, corpus: Corpus, run_dir: Path, rank: int) -> PatchedWindowSampler:
    """Training batches {'ids', 'targets', 'starts'} for a prepared BLT run."""
    vocab = load_bpe_vocab(run_dir / BPE_FILE) if cfg.patching.kind == "bpe" else None
    patcher = build_patcher(cfg.patching, vocab)
    entropies = load_entropy_file(run_dir / ENTROPY_DIR, corpus).split("train") if patcher.needs_entropy else None
    return PatchedWindowSampler(
        corpus.split("train"), entropies, patcher, cfg.blt.context, cfg.data.batch_size, cfg.train.seed, rank
    )


def load_entropy_weights(model, cfg: RunConfig) -> None:
    """Copy the entropy run's weights into a freshly initialised BLT's frozen entropy model."""
    if model.entropy_model is None:
        return
    from blt.checkpoint import latest_checkpoint, load_weights

    load_weights(model.entropy_model, latest_checkpoint(cfg.patching.entropy_run))
